"""Whether two policy bundles compute the same thing: a re-export of the same weights with other graph
inputs must give the same candidates and features, or nothing bound to the old one (verifiers, results)
carries over. Used by `taco train-policy --export-checkpoint --like` and `taco rebind-verifier`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from policies.observation import make_example_observation
from policies.sampler import PolicySampler


def compare_policies(old: str | Path, new: str | Path, observations: int = 8, n: int = 16, seed: int = 0) -> dict:
    """The largest differences between two policies' candidates (normalised chunks, features, the action
    normalisation) for the same `observations` random observations and noise of `n` candidates each."""
    a, b = PolicySampler(old), PolicySampler(new)
    ma, mb = a.manifest, b.manifest
    for field in ("kind", "cameras", "state_names", "action_names", "chunk_length", "feature_dim", "history",
                  "noise_dims"):
        if getattr(ma, field) != getattr(mb, field):
            raise ValueError(f"{field}: {getattr(ma, field)!r} in {old}, {getattr(mb, field)!r} in {new}; "
                             "not a re-export of the same policy")
    diff = {"chunks": 0.0, "features": 0.0,
            "normalization": float(max(np.abs(a.action_mean - b.action_mean).max(),
                                       np.abs(a.action_std - b.action_std).max()))}
    for i in range(observations):
        noise, step = a.draw(n, seed + i)
        frames = [make_example_observation(ma, seed=seed + i)] * ma.history
        chunks_a, features_a = a.candidates(frames, noise, step)
        chunks_b, features_b = b.candidates(frames, noise, step)
        diff["chunks"] = max(diff["chunks"], float(np.abs(chunks_a - chunks_b).max()))
        diff["features"] = max(diff["features"], float(np.abs(features_a - features_b).max()))
    return diff
