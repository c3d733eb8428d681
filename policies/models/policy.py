"""Flow-matching and diffusion chunk policies sharing one prefix encoder and one action expert.

Conventions (normalised units everywhere; the runtime normalises inputs and unnormalises chunks):
- flow: x_t = t * noise + (1 - t) * actions, the expert predicts v = noise - actions, and sampling
  integrates x <- x - v / S from t = 1 (noise) to t = 0 in S Euler steps (pi0's convention).
- diffusion: cosine-schedule DDPM training with epsilon prediction; sampling is deterministic DDIM over
  S evenly spaced "leading" timesteps (90, 80, ..., 0 for T=100, S=10) with precomputed constants.
Real-time chunking (RTC; Black, Galliker and Levine 2025, as LeRobot 0.6.1 does it for pi0): `sample`
and `step` optionally take the previous chunk re-indexed to the new observation's time (`rtc_target
[1 or N, H, A]`), per-position weights (`rtc_weights [1 or N, H]`: 1 for actions that execute while
inference runs, decaying to 0) and the guidance cap (`rtc_max_weight`), and pull each step toward the
target where weighted. Flow: LeRobot's forward-only guidance v <- v - w(t) * W * (Y - (x - t v)).
Diffusion (our own analogue): the step's clean estimate x0 <- x0 + min(1, w(t) / S) * W * (Y - x0), with
t the step's noise fraction, before the DDIM update. All-zero weights leave every step unchanged.
Both return, per candidate, the verifier feature: the expert's last-layer output (after the final
norm) at the final denoising step, averaged over the action tokens ("mean_tokens") or at the first
one ("first_token", TACO's choice for pi0.5); `PolicyConfig.feature` picks.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from policies.config import PolicyConfig
from policies.models.layers import MASKED, EncoderBlock, ExpertBlock, sinusoidal
from policies.tokenizer import PAD_ID, VOCAB_SIZE


class PrefixEncoder(nn.Module):
    """Observation -> per-expert-layer prefix keys/values; run once per control step."""

    def __init__(self, cfg: PolicyConfig):
        super().__init__()
        d = cfg.enc_dim
        self.cfg = cfg
        self.stem = nn.Sequential(
            nn.Conv2d(3, 32, kernel_size=4, stride=4),
            nn.GELU(approximate="tanh"),
            nn.Conv2d(32, d, kernel_size=cfg.patch_size // 4, stride=cfg.patch_size // 4),
        )
        self.camera_embed = nn.Parameter(torch.randn(len(cfg.cameras), d) * 0.02)
        if cfg.keypoints:
            # Its own small conv net at stride 2 (the patch stem's stride-4 features quantise a 3-pixel
            # cube to 4 px, about 5 cm on the table): 3x3 convs, then one 1x1-conv heat map per keypoint.
            self.keypoint_conv = nn.Sequential(
                nn.Conv2d(3, 16, kernel_size=3, stride=2, padding=1), nn.GELU(approximate="tanh"),
                nn.Conv2d(16, 16, kernel_size=3, padding=1), nn.GELU(approximate="tanh"),
                nn.Conv2d(16, cfg.keypoints, kernel_size=1),
            )
            # Per-keypoint softmax sharpness (log scale), learned. Each heat map is standardised over the
            # image first, so the softmax starts peaked on the map's outliers (a small red cube on a grey
            # table is one for most colour filters) instead of flat: a flat softmax barely moves when a
            # filter changes, and the head did not learn (its keypoints moved 0.0007 between episodes).
            self.keypoint_scale = nn.Parameter(torch.full((cfg.keypoints,), math.log(3.0)))
            self.keypoint_proj = nn.Linear(2 * cfg.keypoints, d)
            for i, c in enumerate(cfg.cameras):
                h, w = (c.height + 1) // 2, (c.width + 1) // 2
                ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
                self.register_buffer(f"keypoint_grid_{i}", torch.stack([xs, ys], -1).reshape(h * w, 2),
                                     persistent=False)
        self.image_pos = nn.ParameterList(
            [nn.Parameter(torch.randn((c.height // cfg.patch_size) * (c.width // cfg.patch_size), d) * 0.02)
             for c in cfg.cameras]
        )
        self.state_proj = nn.Linear(len(cfg.state_names), d)
        self.text_embed = nn.Embedding(VOCAB_SIZE, d)
        self.text_pos = nn.Parameter(torch.randn(cfg.max_text_len, d) * 0.02)
        self.blocks = nn.ModuleList([EncoderBlock(d, cfg.enc_heads) for _ in range(cfg.enc_layers)])
        self.norm = nn.LayerNorm(d)
        self.kv = nn.ModuleList([nn.Linear(d, 2 * cfg.expert_dim) for _ in range(cfg.expert_layers)])

    def forward(self, images: list[torch.Tensor], state: torch.Tensor, tokens: torch.Tensor):
        """images: float[B, 3, H, W] per camera; state: float[B, S]; tokens: int64[B, L].

        Returns prefix_kv float[B, layers, 2, heads, P, head_dim] and prefix_bias float[B, P].
        """
        prefix_kv, prefix_bias, _ = self.encode_with_summary(images, state, tokens)
        return prefix_kv, prefix_bias

    def encode_with_summary(self, images, state, tokens):
        """As `forward`, plus summary float[B, D]: the state token's output, which has attended to the
        whole observation (what the training-only future-state head reads)."""
        parts = []
        for i, img in enumerate(images):
            feat = self.stem(img).flatten(2).transpose(1, 2)  # [B, T, D]
            parts.append(feat + self.image_pos[i] + self.camera_embed[i])
            if self.cfg.keypoints:
                parts.append((self.keypoints(img, i) + self.camera_embed[i])[:, None])
        state_index = sum(p.shape[1] for p in parts)
        parts.append(self.state_proj(state)[:, None])
        parts.append(self.text_embed(tokens) + self.text_pos)
        x = torch.cat(parts, dim=1)
        b, p = x.shape[0], x.shape[1]
        text_bias = (tokens == PAD_ID).to(x.dtype) * MASKED
        bias = torch.cat([torch.zeros(b, p - tokens.shape[1], dtype=x.dtype, device=x.device), text_bias], dim=1)
        for block in self.blocks:
            x = block(x, bias)
        x = self.norm(x)
        heads, hd = self.cfg.expert_heads, self.cfg.expert_dim // self.cfg.expert_heads
        kv = [proj(x).reshape(b, p, 2, heads, hd).permute(0, 2, 3, 1, 4) for proj in self.kv]
        return torch.stack(kv, dim=1), bias, x[:, state_index]

    def keypoints(self, img: torch.Tensor, camera: int) -> torch.Tensor:
        """Normalised image [B, 3, H, W] -> one token [B, D] from K spatial-softmax (x, y) expectations."""
        return self.keypoint_proj(self.keypoint_xy(img, camera).flatten(1))

    def keypoint_xy(self, img: torch.Tensor, camera: int) -> torch.Tensor:
        """[B, K, 2]: each keypoint's expected (x, y) in [-1, 1] image coordinates (x right, y down)."""
        heat = self.keypoint_conv(img).flatten(2)  # [B, K, h*w]
        mean = heat.mean(-1, keepdim=True)
        z = (heat - mean) / ((heat - mean).square().mean(-1, keepdim=True) + 1e-6).sqrt()
        return (z * self.keypoint_scale.exp()[None, :, None]).softmax(-1) @ getattr(self, f"keypoint_grid_{camera}")


class ActionExpert(nn.Module):
    """Noisy chunk + time -> model output (velocity or epsilon) and the verifier feature."""

    def __init__(self, cfg: PolicyConfig):
        super().__init__()
        d, a = cfg.expert_dim, len(cfg.action_names)
        self.cfg = cfg
        self.action_in = nn.Linear(a, d)
        self.time_mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.pos = nn.Parameter(torch.randn(cfg.chunk_length, d) * 0.02)
        self.blocks = nn.ModuleList(
            [ExpertBlock(d, cfg.expert_heads, cfg.expert_mlp_ratio) for _ in range(cfg.expert_layers)]
        )
        self.norm = nn.LayerNorm(d)
        self.action_out = nn.Linear(d, a)

    def forward(self, x, t, prefix_kv, prefix_bias):
        """x: [N, H, A]; t: [N] in [0, 1]; prefix_kv: [1 or N, L, 2, heads, P, hd]; prefix_bias: [1 or N, P]."""
        # The time embedding is computed once per candidate and added to every action token.
        temb = self.time_mlp(sinusoidal(t, self.cfg.expert_dim))
        tokens = self.action_in(x) + temb[:, None] + self.pos
        for i, block in enumerate(self.blocks):
            tokens = block(tokens, prefix_kv[:, i, 0], prefix_kv[:, i, 1], prefix_bias)
        tokens = self.norm(tokens)
        features = tokens.mean(1) if self.cfg.feature == "mean_tokens" else tokens[:, 0]
        return self.action_out(tokens), features


def guidance_weight(t: torch.Tensor, max_weight: torch.Tensor) -> torch.Tensor:
    """RTC's guidance weight at flow time t (1 = noise, 0 = data): ((1-tau)/tau) * ((1-tau)^2 + tau^2) /
    (1-tau)^2 with tau = 1 - t, i.e. (t^2 + (1-t)^2) / (t (1-t)), capped at `max_weight` (LeRobot's
    RTCProcessor; infinite at t = 1, where it is the cap)."""
    return torch.minimum((t * t + (1 - t) * (1 - t)) / (t * (1 - t)).clamp(min=1e-4), max_weight)


def guided_velocity(v: torch.Tensor, x: torch.Tensor, t: torch.Tensor, rtc) -> torch.Tensor:
    """A flow velocity v at (x, t) with real-time chunking `rtc` = (target, weights, max_weight): LeRobot's
    forward-only guidance v - w(t) * W * (Y - (x - t v)), x - t v being the step's clean estimate."""
    target, weights, max_weight = rtc
    return v - guidance_weight(t, max_weight) * weights[:, :, None] * (target - (x - t * v))


class ChunkPolicy(nn.Module):
    """Base of both kinds: `encode` once, then `sample` (all steps) or `step` (one step) per candidate batch."""

    def __init__(self, cfg: PolicyConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = PrefixEncoder(cfg)
        self.expert = ActionExpert(cfg)
        if cfg.future_steps:
            # Training only (never exported): the state the robot will be in `future_steps` from now.
            d, s = cfg.enc_dim, len(cfg.state_names)
            self.future_head = nn.Sequential(nn.Linear(d, d), nn.GELU(approximate="tanh"),
                                             nn.Linear(d, len(cfg.future_steps) * s))

    def encode(self, images, state, tokens):
        return self.encoder(images, state, tokens)

    def step(self, prefix_kv, prefix_bias, x, k, rtc=None):
        """One denoising step k in [0, S): returns (x_next, features). `rtc`: (target, weights,
        max_weight) for real-time chunking, or None."""
        raise NotImplementedError

    def sample(self, prefix_kv, prefix_bias, noise, rtc=None):
        """All S steps from noise[N, H, A]: returns (chunks[N, H, A], features[N, F]) in normalised units."""
        x, features = noise, None
        for k in range(self.cfg.num_steps):
            x, features = self.step(prefix_kv, prefix_bias, x, k, rtc)
        return x, features

    def loss(self, images, state, tokens, actions, future=None, generator=None):
        """Training loss for a batch of normalised actions[B, H, A] and, with `cfg.future_steps`, the
        normalised states future[B, len(future_steps), S] that far ahead (weighted by `cfg.future_weight`)."""
        prefix_kv, prefix_bias, summary = self.encoder.encode_with_summary(images, state, tokens)
        loss = self.denoising_loss(prefix_kv, prefix_bias, actions, generator)
        if self.cfg.future_steps and future is not None:
            predicted = self.future_head(summary).reshape(future.shape)
            loss = loss + self.cfg.future_weight * ((predicted - future) ** 2).mean()
        return loss

    def denoising_loss(self, prefix_kv, prefix_bias, actions, generator=None):
        """The kind's own loss (flow matching or epsilon prediction) given the encoded prefix."""
        raise NotImplementedError


class FlowPolicy(ChunkPolicy):
    def step(self, prefix_kv, prefix_bias, x, k, rtc=None):
        s = self.cfg.num_steps
        k = torch.as_tensor(k, dtype=torch.float32)
        t = (1.0 - k / s).reshape(1)
        v, features = self.expert(x, t.expand(x.shape[0]), prefix_kv, prefix_bias)
        if rtc is not None:
            v = guided_velocity(v, x, t, rtc)
        return x - v / s, features

    def denoising_loss(self, prefix_kv, prefix_bias, actions, generator=None):
        b = actions.shape[0]
        noise = torch.randn(actions.shape, generator=generator, device=actions.device)
        # pi0 samples t from Beta(1.5, 1) scaled to (0.001, 1): more weight on noisy times. Its CDF is
        # s^1.5, so s = u^(2/3) by inverse CDF, which keeps the draw on `generator`.
        u = torch.rand(b, generator=generator, device=actions.device)
        t = u ** (2.0 / 3.0) * 0.999 + 0.001
        x_t = t[:, None, None] * noise + (1 - t[:, None, None]) * actions
        # Prefix batch B equals the action batch here; MatMul pairs sample i with prefix i.
        v, _ = self.expert(x_t, t, prefix_kv, prefix_bias)
        return ((v - (noise - actions)) ** 2).mean()


class DiffusionPolicy(ChunkPolicy):
    def __init__(self, cfg: PolicyConfig):
        super().__init__(cfg)
        T, S = cfg.diffusion_train_steps, cfg.num_steps
        steps = torch.arange(T + 1, dtype=torch.float64)
        # Cosine schedule (Nichol & Dhariwal), betas capped at 0.999 as in diffusion_policy.
        f = torch.cos((steps / T + 0.008) / 1.008 * math.pi / 2) ** 2
        betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
        alphas_cumprod = torch.cumprod(1 - betas, dim=0)
        # "Leading" spacing (diffusers' and diffusion_policy's DDIM default): 90, 80, ..., 0. "Trailing"
        # (99, ..., 9) would start where the capped cosine schedule has alpha_bar ~ 1e-6, so the x0 estimate
        # (x - sqrt(1 - a) eps) / sqrt(a) amplifies float rounding ~1000x and ONNX/torch parity breaks;
        # at t=90 alpha_bar is 0.02, i.e. the input is 99% noise, close enough to the N(0, 1) it is fed.
        timesteps = torch.arange(S - 1, -1, -1, dtype=torch.long) * (T // S)
        a_t = alphas_cumprod[timesteps]
        prev = timesteps - T // S  # the last step lands on -T/S < 0, i.e. alpha = 1: the clean sample
        a_prev = torch.where(prev >= 0, alphas_cumprod[prev.clamp(min=0)], torch.ones_like(a_t))
        self.register_buffer("alphas_cumprod", alphas_cumprod.float(), persistent=False)
        self.register_buffer("ddim_t", (timesteps.float() / T), persistent=False)
        self.register_buffer("ddim_sqrt_a", a_t.sqrt().float(), persistent=False)
        self.register_buffer("ddim_sqrt_1ma", (1 - a_t).sqrt().float(), persistent=False)
        self.register_buffer("ddim_sqrt_aprev", a_prev.sqrt().float(), persistent=False)
        self.register_buffer("ddim_sqrt_1maprev", (1 - a_prev).sqrt().float(), persistent=False)

    def step(self, prefix_kv, prefix_bias, x, k, rtc=None):
        k = torch.as_tensor(k, dtype=torch.long).reshape(1)
        t = self.ddim_t.index_select(0, k)
        eps, features = self.expert(x, t.expand(x.shape[0]), prefix_kv, prefix_bias)
        sa, s1a = self.ddim_sqrt_a.index_select(0, k), self.ddim_sqrt_1ma.index_select(0, k)
        x0 = ((x - s1a * eps) / sa).clamp(-self.cfg.diffusion_clip, self.cfg.diffusion_clip)
        if rtc is not None:
            target, weights, max_weight = rtc
            gain = (guidance_weight(t, max_weight) / self.cfg.num_steps).clamp(max=1.0)
            x0 = x0 + gain * weights[:, :, None] * (target - x0)
        # Epsilon consistent with the clipped x0, so the update stays on the DDIM trajectory.
        eps = (x - sa * x0) / s1a
        x_next = self.ddim_sqrt_aprev.index_select(0, k) * x0 + self.ddim_sqrt_1maprev.index_select(0, k) * eps
        return x_next, features

    def denoising_loss(self, prefix_kv, prefix_bias, actions, generator=None):
        b = actions.shape[0]
        T = self.cfg.diffusion_train_steps
        noise = torch.randn(actions.shape, generator=generator, device=actions.device)
        ts = torch.randint(0, T, (b,), generator=generator, device=actions.device)
        a = self.alphas_cumprod[ts][:, None, None]
        x_t = a.sqrt() * actions + (1 - a).sqrt() * noise
        eps, _ = self.expert(x_t, ts.float() / T, prefix_kv, prefix_bias)
        return ((eps - noise) ** 2).mean()


def build_policy(cfg: PolicyConfig, seed: int = 0) -> ChunkPolicy:
    """A freshly initialised policy of the registered kind `cfg.kind`, its weights drawn from `seed`."""
    from policies.registry import policy_kinds

    kinds = policy_kinds()
    if cfg.kind not in kinds:
        raise ValueError(f"kind: {cfg.kind!r} is not a registered policy kind ({', '.join(kinds)})")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = kinds[cfg.kind].model_class()(cfg)
    return model.eval()
