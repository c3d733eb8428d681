"""Analytic FLOP counts of the chunk policies (multiply-adds x 2; matmuls and convolutions only)."""

from __future__ import annotations

from policies.config import PolicyConfig


def encoder_flops(cfg: PolicyConfig) -> int:
    """FLOPs of one encoder pass (batch 1): conv stem, transformer blocks, per-expert-layer K/V projections."""
    d, p = cfg.enc_dim, cfg.prefix_length
    macs = 0
    for cam in cfg.cameras:
        macs += (cam.height // 4) * (cam.width // 4) * 32 * 3 * 16
        macs += (cam.height // cfg.patch_size) * (cam.width // cfg.patch_size) * d * 32 * (cfg.patch_size // 4) ** 2
    macs += len(cfg.state_names) * d
    per_block = p * (3 * d * d + d * d + 8 * d * d) + 2 * p * p * d
    macs += cfg.enc_layers * per_block
    macs += cfg.expert_layers * p * d * 2 * cfg.expert_dim
    return 2 * macs


def expert_step_flops(cfg: PolicyConfig) -> int:
    """FLOPs of one action-expert pass for one candidate (one denoising step)."""
    d, h, a, p = cfg.expert_dim, cfg.chunk_length, len(cfg.action_names), cfg.prefix_length
    macs = h * a * d + 2 * d * d + h * d * a  # action in, time MLP (once per candidate), action out
    per_block = h * (3 * d * d + d * d + 2 * cfg.expert_mlp_ratio * d * d) + 2 * h * (p + h) * d
    macs += cfg.expert_layers * per_block
    return 2 * macs


def candidate_flops(cfg: PolicyConfig) -> int:
    """FLOPs to sample one candidate chunk (all denoising steps), given the shared prefix."""
    return cfg.num_steps * expert_step_flops(cfg)
