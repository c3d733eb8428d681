"""The MuJoCo dual-arm environment: 50 Hz joint-position control over 2 ms physics steps."""

from __future__ import annotations

import atexit
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from hardware.interface import CameraConfig, EnvSpec, check_action
from policies.manifest import ALOHA_JOINTS
from policies.observation import Observation
from sim.assets import CONTROL_HZ, PHYSICS_DT, START_ARM_POSE, mujoco, normalize_gripper, unnormalize_gripper
from sim.tasks import Task, get_task

# Observation camera name -> camera in gym-aloha's MJCF.
CAMERAS = {"cam_high": "top", "cam_low": "angle", "cam_left_wrist": "left_wrist", "cam_right_wrist": "right_wrist"}
# The default policy's camera and resolution (policies.config's default size).
DEFAULT_CAMERAS = (CameraConfig("cam_high", 96, 128),)


def _close_renderers(renderers: dict) -> None:
    for renderer in renderers.values():
        renderer.close()
    renderers.clear()


class LazyImages(Mapping):
    """Camera images of one step, rendered on first read (rendering is ~85% of a step's cost on a CPU).

    A controller that replans every k steps reads images once per k steps, so the others cost physics
    only. An observation is a snapshot: reading its images after the environment has stepped on raises,
    instead of silently rendering a later state.
    """

    def __init__(self, env: "AlohaSimEnv", step: int):
        self._env, self._step, self._cache = env, step, {}
        self._episode_of_creation = env.episode
        self._branch_of_creation = env.branch

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._cache:
            cam = next((c for c in self._env.spec.cameras if c.name == name), None)
            if cam is None:
                raise KeyError(name)
            if (self._env.steps != self._step or self._env.episode != self._episode_of_creation
                    or self._env.branch != self._branch_of_creation):
                raise RuntimeError(f"images[{name!r}] of step {self._step} are no longer available: the environment "
                                   f"has stepped on or been restored; read observation images before the next step")
            self._cache[name] = self._env.render(cam.name, cam.height, cam.width)
        return self._cache[name]

    def __iter__(self):
        return iter(c.name for c in self._env.spec.cameras)

    def __len__(self) -> int:
        return len(self._env.spec.cameras)


@dataclass(frozen=True)
class EnvSnapshot:
    """Everything an `AlohaSimEnv` needs to continue exactly from one moment of an episode: MuJoCo's whole
    `MjData` (the integration state and the quantities derived from it, which rendering and the task's
    stage read) and the episode's counters."""

    data: Any
    steps: int
    best_stage: int
    final_streak: int
    succeeded: bool
    object_poses: np.ndarray
    episode: int


class AlohaSimEnv:
    """A task on the ALOHA scene. Actions and states follow the ALOHA layout (see `EnvSpec`)."""

    def __init__(self, task: str | Task, cameras: tuple[CameraConfig, ...] = DEFAULT_CAMERAS,
                 max_steps: int | None = None, stop_on_success: bool = True, perturbations=()):
        """`perturbations`: scene perturbations (sim.perturb, 'KIND[:LEVEL]' texts or ScenePerturbations),
        for evaluation in scenes the policy never saw."""
        self.task = get_task(task) if isinstance(task, str) else task
        for cam in cameras:
            if cam.name not in CAMERAS:
                raise ValueError(f"cameras: unknown camera {cam.name!r} (available: {', '.join(CAMERAS)})")
        self.spec = EnvSpec(cameras=tuple(cameras), state_names=ALOHA_JOINTS, action_names=ALOHA_JOINTS,
                            control_hz=CONTROL_HZ, max_steps=max_steps or self.task.max_steps)
        self.stop_on_success = stop_on_success
        self.scene = None
        if perturbations:
            from sim.perturb import PerturbedScene, ScenePerturbation, parse_all

            parsed = tuple(p if isinstance(p, ScenePerturbation) else ScenePerturbation.parse(p) for p in perturbations)
            self.scene = PerturbedScene(parse_all(str(p) for p in parsed))
        self.model = self.task.build_model(end_effector=False, edit=None if self.scene is None else self.scene.edit)
        if self.scene is not None:
            self.scene.apply(self.model)
        self.data = mujoco.MjData(self.model)
        self.substeps = round(1.0 / (CONTROL_HZ * PHYSICS_DT))
        self._renderers = {}
        self._at_exit = None
        for cam in cameras:
            self._renderer(cam.height, cam.width)
        self._qpos_index, self._object_qpos = self.task.qpos_indices(self.model)
        self.steps = 0
        self.best_stage = 0
        self.final_streak, self.succeeded = 0, False
        # Episodes started so far (observations of an earlier episode are stale too).
        self.episode = 0
        # Restores so far: an observation from before a restore is stale even at the same step.
        self.branch = 0
        self.object_poses: np.ndarray | None = None

    def reset(self, seed: int) -> Observation:
        rng = np.random.default_rng(seed)
        mujoco.mj_resetData(self.model, self.data)
        self.data.qpos[:16] = START_ARM_POSE
        self.data.ctrl[:] = START_ARM_POSE
        self.object_poses = self.task.sample_objects(rng)
        if self.scene is not None:
            self.object_poses = self.scene.reset(self.model, seed, self.object_poses, self.task.spawn)
        self.data.qpos[self._object_qpos] = self.object_poses
        mujoco.mj_forward(self.model, self.data)
        self.steps, self.best_stage = 0, 0
        # Consecutive steps in the final stage so far, and whether it has held long enough (success).
        self.final_streak, self.succeeded = 0, False
        self.episode += 1
        return self._observe()

    def step(self, action) -> tuple[Observation, float, bool, dict[str, Any]]:
        if self.object_poses is None:
            raise RuntimeError("step() before reset()")
        action = check_action(action, 14)
        ctrl = np.empty(16)
        for arm in range(2):
            a, c = action[7 * arm: 7 * arm + 7], ctrl[8 * arm: 8 * arm + 8]
            c[:6] = a[:6]
            finger = unnormalize_gripper(a[6])
            c[6], c[7] = finger, -finger
        self.data.ctrl[:] = ctrl
        mujoco.mj_step(self.model, self.data, nstep=self.substeps)
        self.steps += 1
        stage = self.task.stage(self.model, self.data)
        self.best_stage = max(self.best_stage, stage)
        self.final_streak = self.final_streak + 1 if stage == self.task.max_reward else 0
        self.succeeded |= self.final_streak >= self.task.success_hold
        done = self.steps >= self.spec.max_steps or (self.succeeded and self.stop_on_success)
        info = {"stage": stage, "success": self.succeeded, "steps": self.steps}
        return self._observe(), float(stage), done, info

    def snapshot(self) -> EnvSnapshot:
        """The environment now, to `restore` later: stepping on from a restore with the same actions gives
        the same states and images, bit for bit (what outcome labelling branches on)."""
        if self.object_poses is None:
            raise RuntimeError("snapshot() before reset()")
        data = mujoco.MjData(self.model)
        mujoco.mj_copyData(data, self.model, self.data)
        return EnvSnapshot(data, self.steps, self.best_stage, self.final_streak, self.succeeded,
                           self.object_poses.copy(), self.episode)

    def restore(self, snapshot: EnvSnapshot) -> Observation:
        """Puts the environment back to `snapshot` (taken in this episode) and returns its observation."""
        if snapshot.episode != self.episode:
            raise RuntimeError(f"restore: the snapshot is of episode {snapshot.episode}, the environment is in "
                               f"episode {self.episode}")
        mujoco.mj_copyData(self.data, self.model, snapshot.data)
        self.steps, self.best_stage = snapshot.steps, snapshot.best_stage
        self.final_streak, self.succeeded = snapshot.final_streak, snapshot.succeeded
        self.object_poses = snapshot.object_poses.copy()
        self.branch += 1
        return self._observe()

    def state(self) -> np.ndarray:
        """float32[14]: arm joints (rad) and normalised gripper opening, left arm then right arm."""
        q = self.data.qpos[self._qpos_index]
        out = np.empty(14, np.float32)
        out[0:6], out[7:13] = q[0:6], q[7:13]
        out[6], out[13] = normalize_gripper(q[6]), normalize_gripper(q[13])
        return out

    def _renderer(self, height: int, width: int):
        key = (height, width)
        if key not in self._renderers:
            self._renderers[key] = mujoco.Renderer(self.model, height, width)
            if self._at_exit is None:
                # An env left open closes its GL contexts at interpreter exit, before mujoco terminates EGL:
                # atexit runs last-registered first, and mujoco registers its hook with the first context.
                self._at_exit = functools.partial(_close_renderers, self._renderers)
                atexit.register(self._at_exit)
        return self._renderers[key]

    def render(self, camera: str, height: int, width: int) -> np.ndarray:
        renderer = self._renderer(height, width)
        renderer.update_scene(self.data, camera=CAMERAS.get(camera, camera))
        renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        return renderer.render()

    def _observe(self) -> Observation:
        return Observation(images=LazyImages(self, self.steps), state=self.state(), task=self.task.instruction,
                           stamp=float(self.data.time))

    def close(self) -> None:
        _close_renderers(self._renderers)
        if self._at_exit is not None:
            atexit.unregister(self._at_exit)
            self._at_exit = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
