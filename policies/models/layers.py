"""Transformer pieces written out by hand so the ONNX export stays plain MatMul/Softmax/LayerNorm."""

from __future__ import annotations

import math

import torch
from torch import nn

# Additive attention bias for padded prefix tokens: finite so that softmax never sees inf - inf, and
# within float16 range so that FP16 engines (TensorRT) do not turn it into -inf (and 0 * -inf into NaN).
MASKED = -1e4


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class EncoderBlock(nn.Module):
    """Pre-norm self-attention block over the prefix tokens, with an additive key bias for padding."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = MLP(dim, 4 * dim)

    def forward(self, x, key_bias):
        # x: [B, P, D]; key_bias: [B, P]
        b, p, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, p, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim) + key_bias[:, None, None, :]
        out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, p, d)
        x = x + self.proj(out)
        return x + self.mlp(self.norm2(x))


class ExpertBlock(nn.Module):
    """Action-expert block: action tokens attend to the shared prefix (precomputed K/V) and to each other.

    The prefix K/V have batch 1 and broadcast over the N candidates inside MatMul, so no copy of the
    prefix is made per candidate.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 4):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = MLP(dim, mlp_ratio * dim)

    def forward(self, x, prefix_k, prefix_v, prefix_bias):
        # x: [N, H, D]; prefix_k/v: [1, heads, P, hd]; prefix_bias: [1, P]
        n, h, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(n, h, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        scale = 1.0 / math.sqrt(self.head_dim)
        s_prefix = (q @ prefix_k.transpose(-1, -2)) * scale + prefix_bias[:, None, None, :]
        s_self = (q @ k.transpose(-1, -2)) * scale
        weights = torch.cat([s_prefix, s_self], dim=-1).softmax(-1)
        p = prefix_k.shape[-2]
        out = weights[..., :p] @ prefix_v + weights[..., p:] @ v
        x = x + self.proj(out.transpose(1, 2).reshape(n, h, d))
        return x + self.mlp(self.norm2(x))


def sinusoidal(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """float[N] times in [0, 1] -> float[N, dim] sinusoidal embedding (times scaled by 1000)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = (t.float() * 1000.0)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
