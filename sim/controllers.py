"""Controllers: what produces one action per control step in an episode.

`reset(seed, env)` is called at episode start, `act(observation)` once per step. The runtime's
`ChunkExecutor` is the controller for policy bundles; `ScriptedController` replays a scripted expert.
"""

from __future__ import annotations

import numpy as np

from policies.observation import Observation
from sim.experts import ExpertConfig, ScriptedExpert


class ScriptedController:
    """Replays the expert's joint-space actions; holds the last one once the plan is done."""

    def __init__(self, task: str, config: ExpertConfig | None = None, mode: str | None = None):
        self.expert = ScriptedExpert(task, config)
        self.mode_override = mode
        self.mode: str | None = None
        self._actions: np.ndarray | None = None
        self._t = 0

    def reset(self, seed: int, env=None) -> None:
        if env is None or env.object_poses is None:
            raise ValueError("ScriptedController.reset needs the reset environment (it reads object poses)")
        self._actions, self.mode = self.expert.actions(env.object_poses, seed, self.mode_override)
        self._t = 0

    @property
    def precision(self) -> np.ndarray:
        """float[T]: per step of this episode, 0 in free motion and 1 where the expert works precisely
        (grasps, handovers, insertion); DART recording calms its perturbation there."""
        return self.expert.precision

    @property
    def plan_length(self) -> int:
        return 0 if self._actions is None else len(self._actions)

    def act(self, observation: Observation) -> np.ndarray:
        action = self._actions[min(self._t, len(self._actions) - 1)]
        self._t += 1
        return action

    @property
    def latencies_ms(self) -> list[float]:
        return []
