"""The ALOHA bimanual ViperX MJCF shipped by gym-aloha, loaded with the plain mujoco API.

gym-aloha's own environment classes are not used: they render three 480x640 cameras every step.
Only its XML files and meshes are read, found by package location without importing the package.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

# Headless rendering: must be set before mujoco is imported anywhere in the process.
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

from policies.extras import require  # noqa: E402

mujoco = require("mujoco")

# ALOHA joint order per arm: 6 arm joints then the gripper.
ARM_JOINTS = ("waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate")
# Home pose: 6 arm joints + both finger joints per arm (gym-aloha's START_ARM_POSE).
START_ARM_POSE = (0.0, -0.96, 1.16, 0.0, -0.3, 0.0, 0.02239, -0.02239) * 2
# Finger joint travel (m) that normalised gripper 0 (closed) and 1 (open) map to.
GRIPPER_CLOSE, GRIPPER_OPEN = 0.01844, 0.05800
# Seconds per physics step and control steps per second (50 Hz over 2 ms physics steps).
PHYSICS_DT = 0.002
CONTROL_HZ = 50


def assets_dir() -> Path:
    spec = importlib.util.find_spec("gym_aloha")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("gym-aloha (its MJCF assets) is not installed; install the 'sim' extra: "
                          "pip install -e '.[sim]'")
    path = Path(spec.submodule_search_locations[0]) / "assets"
    if not (path / "scene.xml").is_file():
        raise FileNotFoundError(f"gym-aloha assets missing at {path}")
    return path


def apply_mujoco3_fixes(model) -> None:
    """Settings that make ACT-style scripted experts work on MuJoCo >= 3.

    Multi-CCD contacts make the grasped objects slip; mocap welds need a higher torque scale to keep
    the gripper orientation (weld eq_data[10] is the torquescale).
    """
    model.opt.disableflags |= int(mujoco.mjtDisableBit.mjDSBL_MULTICCD)
    for i in range(model.neq):
        if model.eq_type[i] == mujoco.mjtEq.mjEQ_WELD:
            model.eq_data[i, 10] = 5.0
    model.opt.timestep = PHYSICS_DT


def fast_rendering(model) -> None:
    """No multisampling (shadows are switched off per scene at render time): ~5-10 ms a frame on llvmpipe."""
    model.vis.quality.offsamples = 0


def normalize_gripper(finger_position: float) -> float:
    return (finger_position - GRIPPER_CLOSE) / (GRIPPER_OPEN - GRIPPER_CLOSE)


def unnormalize_gripper(value: float) -> float:
    return value * (GRIPPER_OPEN - GRIPPER_CLOSE) + GRIPPER_CLOSE
