"""The one environment interface shared by the MuJoCo simulation and real robots (numpy only)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from policies.errors import SpecError
from policies.manifest import CameraSpec
from policies.observation import Observation


# A camera an environment renders or reads: the same (name, height, width) a policy bundle declares, so an
# env can be built straight from a manifest's cameras.
CameraConfig = CameraSpec


@dataclass(frozen=True)
class EnvSpec:
    """What an environment observes and takes; checked against a policy bundle before running it."""

    # Cameras rendered (simulation) or read (robot) each step.
    cameras: tuple[CameraConfig, ...]
    # Names of the 14 state entries: 6 joints + gripper per arm, left arm then right arm.
    state_names: tuple[str, ...]
    # Names of the 14 action entries, same layout: joint targets in radians, grippers in [0, 1] (1 = open).
    action_names: tuple[str, ...]
    # Control rate in Hz (one `step` per control period).
    control_hz: float
    # Steps after which an episode ends (simulation) or the run stops (robot).
    max_steps: int


@runtime_checkable
class Env(Protocol):
    """A dual-arm environment; the evaluation loop, the recorder and the ROS sim node drive it.

    `reset` is called once per episode, `step` once per control period with one action.
    """

    spec: EnvSpec

    def reset(self, seed: int) -> Observation:
        """Starts an episode (object poses drawn from `seed`) and returns its first observation."""
        ...

    def step(self, action: np.ndarray) -> tuple[Observation, float, bool, dict[str, Any]]:
        """Applies action float[14] for one control period.

        Returns (observation, reward, done, info); reward is the task's stage reward, done is set on
        success or when the episode runs out of steps, info holds at least `success` and `stage`.
        """
        ...

    def close(self) -> None:
        """Releases renderers, connections and other resources."""
        ...


def check_action(action, dim: int = 14) -> np.ndarray:
    """Validates one action: float[dim], finite. Raises SpecError naming `action` or `action[i]`."""
    if not isinstance(action, np.ndarray):
        try:
            action = np.asarray(action, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise SpecError("action", f"expected {dim} numbers, got {type(action).__name__}") from err
    if action.dtype.kind not in "fiu":
        raise SpecError("action", f"expected a numeric array, got dtype {action.dtype}")
    if action.shape != (dim,):
        raise SpecError("action", f"expected shape [{dim}], got {list(action.shape)}")
    bad = np.flatnonzero(~np.isfinite(action))
    if bad.size:
        raise SpecError(f"action[{int(bad[0])}]", f"not finite ({action[bad[0]]})")
    return action.astype(np.float64)
