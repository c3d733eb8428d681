"""Tiny LeRobot checkpoints with random weights and non-trivial statistics, made offline by the tests.

Each is what `lerobot-train` leaves behind: `policy.save_pretrained(dir)` plus both processor pipelines.
Regenerate by calling the builders (they take about a second each); nothing is downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _stats(rng, shape, lo, hi) -> dict[str, np.ndarray]:
    a = rng.uniform(lo, hi, size=(2000, *shape)).astype(np.float32)
    out = {"mean": a.mean(0), "std": a.std(0), "min": a.min(0), "max": a.max(0)}
    for q in (1, 10, 90, 99):
        out[f"q{q:02d}"] = np.quantile(a, q / 100, axis=0).astype(np.float32)
    return out


def diffusion_checkpoint(out: str | Path, *, cameras=("cam_high", "cam_low"), scheduler: str = "DDIM",
                         n_obs_steps: int = 2, image_hw=(48, 64), seed: int = 0) -> Path:
    """A LeRobot Diffusion Policy: ResNet18 (GroupNorm) per frame, a small UNet, 5 denoising steps, horizon 16,
    8 executed actions, MIN_MAX state/action and per-camera MEAN_STD images."""
    import torch
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy
    from lerobot.policies.diffusion.processor_diffusion import make_diffusion_pre_post_processors

    h, w = image_hw
    cfg = DiffusionConfig(
        input_features={**{f"observation.images.{c}": PolicyFeature(FeatureType.VISUAL, (3, h, w)) for c in cameras},
                        "observation.state": PolicyFeature(FeatureType.STATE, (14,))},
        output_features={"action": PolicyFeature(FeatureType.ACTION, (14,))},
        pretrained_backbone_weights=None, use_group_norm=True, down_dims=(32, 64, 128), horizon=16,
        n_action_steps=8, n_obs_steps=n_obs_steps, noise_scheduler_type=scheduler, num_inference_steps=5,
        crop_shape=(h - 8, w - 8), spatial_softmax_num_keypoints=8, diffusion_step_embed_dim=32, device="cpu")
    torch.manual_seed(seed)
    policy = DiffusionPolicy(cfg).eval()
    rng = np.random.default_rng(seed)
    stats = {"observation.state": _stats(rng, (14,), -1.0, 1.0), "action": _stats(rng, (14,), -1.5, 1.2)}
    for c in cameras:
        stats[f"observation.images.{c}"] = {
            "mean": rng.uniform(0.3, 0.6, (3, 1, 1)).astype(np.float32),
            "std": rng.uniform(0.15, 0.3, (3, 1, 1)).astype(np.float32),
            "min": np.zeros((3, 1, 1), np.float32), "max": np.ones((3, 1, 1), np.float32)}
    stats = {k: {s: torch.from_numpy(np.asarray(v)) for s, v in d.items()} for k, d in stats.items()}
    pre, post = make_diffusion_pre_post_processors(cfg, dataset_stats=stats)
    out = Path(out)
    policy.save_pretrained(out)
    pre.save_pretrained(out)
    post.save_pretrained(out)
    return out
