"""Shared fixtures: tiny policies exported once per session, in both kinds and both sampler modes
(tests/tiny_bundles.py; read back from $TACO_TEST_BUNDLES on an install without torch)."""

from __future__ import annotations

import pytest

from tiny_bundles import export_policy, have_torch, read_back

# Modules marked `workstation` throughout that import torch or lerobot at the top: an install without torch (the
# robot-side run of `make test` on Python 3.10, which deselects `workstation`) cannot even collect them.
collect_ignore = [] if have_torch() else ["test_parity.py", "test_pipeline.py", "test_sampling_math.py",
                                           "test_train.py", "test_lerobot_import.py", "test_record.py"]


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """Returns a cached exporter: exported(kind, sampler="unrolled", size="tiny")."""
    cache = {}

    def get(kind: str, sampler: str = "unrolled", size: str = "tiny"):
        key = (kind, sampler, size)
        if key not in cache:
            if have_torch():
                out = tmp_path_factory.mktemp("bundles") / f"{kind}-{size}-{sampler}"
                cache[key] = export_policy(out, kind, sampler, size)
            else:  # a robot-side install (the Python 3.10 run): exported beforehand by a full one
                cache[key] = read_back(kind, sampler, size)
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
