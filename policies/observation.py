"""The observation a robot or simulation hands the policy each control step."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

import numpy as np

from policies.errors import ObservationError


@dataclass
class Observation:
    """One timestamped observation; made by `Robot.read` / `Env.step`, consumed by `Engine.infer`."""

    # Camera name -> uint8[H, W, 3] RGB image. Any size: the policy resizes to its manifest's size.
    images: Mapping[str, np.ndarray]
    # float32[S] (S = 14 for dual-arm ALOHA): joint positions in radians and gripper openings,
    # left arm then right arm, in the order of the bundle manifest's `state.names`.
    state: np.ndarray
    # Natural-language task instruction, e.g. "transfer the cube to the right arm".
    task: str
    # Seconds: when the observation was captured, on the clock the action executor uses.
    stamp: float = 0.0

    @classmethod
    def from_dict(cls, data: Mapping) -> Observation:
        """Builds an observation from a mapping (e.g. decoded from the network); unknown keys are errors."""
        if not isinstance(data, Mapping):
            raise ObservationError("observation", f"expected a mapping, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        for key in data:
            if key not in known:
                raise ObservationError(str(key), f"unknown field (expected {', '.join(sorted(known))})")
        for key in ("images", "state", "task"):
            if key not in data:
                raise ObservationError(key, "missing")
        return cls(**dict(data))


def make_example_observation(manifest, seed: int = 0, image_size: tuple[int, int] | None = None) -> Observation:
    """A valid random observation for a policy manifest; tests and benchmarks reuse it.

    Args:
        manifest: the PolicyManifest whose cameras and state the observation must match.
        seed: seeds the random images and state.
        image_size: (height, width) of the images; the manifest's own size when None. Robots send 480x640.
    """
    rng = np.random.default_rng(seed)
    images = {}
    for cam in manifest.cameras:
        h, w = image_size or (cam.height, cam.width)
        images[cam.name] = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    state = (np.asarray(manifest.normalization.state_mean, np.float32)
             + rng.standard_normal(manifest.state_dim).astype(np.float32)
             * np.asarray(manifest.normalization.state_std, np.float32))
    return Observation(images=images, state=state.astype(np.float32), task="transfer the cube", stamp=0.0)
