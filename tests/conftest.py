"""Shared fixtures: tiny policies exported once per session, in both kinds and both sampler modes."""

from __future__ import annotations

import numpy as np
import pytest

from policies import Normalization


def nontrivial_normalization(cfg, seed: int = 0) -> Normalization:
    """Statistics far from identity, so tests catch a missing normalise or unnormalise."""
    rng = np.random.default_rng(seed)
    s, a = len(cfg.state_names), len(cfg.action_names)
    return Normalization(
        state_mean=tuple(rng.uniform(-1, 1, s)), state_std=tuple(rng.uniform(0.2, 2.0, s)),
        action_mean=tuple(rng.uniform(-1, 1, a)), action_std=tuple(rng.uniform(0.2, 2.0, a)),
        image_mean=(0.4, 0.45, 0.5), image_std=(0.25, 0.2, 0.3),
    )


class Exported:
    """A torch policy and its exported bundle."""

    def __init__(self, policy, bundle, normalization):
        self.policy, self.bundle, self.normalization = policy, bundle, normalization

    @property
    def path(self):
        return self.bundle.path


def export_policy(tmp_path_factory, kind: str, sampler: str = "unrolled", size: str = "tiny", seed: int = 0):
    from policies.config import make_config
    from policies.export import export_bundle
    from policies.models import build_policy

    cfg = make_config(size, kind)
    policy = build_policy(cfg, seed=seed)
    norm = nontrivial_normalization(cfg, seed)
    out = tmp_path_factory.mktemp("bundles") / f"{kind}-{size}-{sampler}"
    return Exported(policy, export_bundle(policy, out, normalization=norm, sampler=sampler), norm)


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """Returns a cached exporter: exported(kind, sampler="unrolled", size="tiny")."""
    cache = {}

    def get(kind: str, sampler: str = "unrolled", size: str = "tiny"):
        key = (kind, sampler, size)
        if key not in cache:
            cache[key] = export_policy(tmp_path_factory, kind, sampler, size)
        return cache[key]

    return get


@pytest.fixture
def flow(exported):
    return exported("flow")


# Cameras of the tiny recorded dataset: the tiny policy size takes 32x32 images.
def _tiny_cameras():
    from hardware.interface import CameraConfig

    return (CameraConfig("cam_high", 32, 32),)


TINY_CAMERAS = _tiny_cameras()


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """Two clean lift_bar episodes recorded with a 32x32 camera (a LeRobotDataset v3)."""
    from hardware.interface import CameraConfig
    from sim.record import RecordConfig, record

    root = tmp_path_factory.mktemp("data") / "lift"
    record(RecordConfig(tasks=("lift_bar",), episodes=2, out=str(root), cameras=(CameraConfig("cam_high", 32, 32),),
                        mode="clean"), progress=False)
    return root
