"""Chunk execution: turns the engine's chunks into one action per control step.

Each action carries the time it is for. The executor hands out the action for the observation's
time, drops actions whose time has passed (never executes stale ones), and replans once `execute`
actions of the current chunk have been used, or when the chunk runs dry.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from policies.observation import Observation
from runtime.engine import Decision, Engine


@dataclass(frozen=True)
class ExecutorConfig:
    """How chunks are executed."""

    # Candidates sampled per replanning step (N).
    n: int = 1
    # Actions executed from each chunk before replanning (k); at most the chunk length.
    execute: int = 8
    # Which stream of noises the episode seed opens (0: the default). Candidate 0 of any N draws the same
    # noise as N=1, so a policy evaluated at N=1 is one stream; other streams give independent draws of
    # the same policy on the same seeds (a reference averaged over streams, for a high-variance policy).
    noise_stream: int = 0

    def __post_init__(self):
        if self.n < 1 or self.execute < 1:
            raise ValueError(f"n and execute must be >= 1, got n={self.n}, execute={self.execute}")
        if isinstance(self.noise_stream, bool) or not isinstance(self.noise_stream, int) or self.noise_stream < 0:
            raise ValueError(f"noise_stream: expected an integer >= 0, got {self.noise_stream!r}")


def decision_seed(seed: int, index: int, stream: int = 0) -> int:
    """The noise seed of replanning step `index` of an episode (or session) seeded `seed`, on `stream`."""
    entropy = [int(seed), int(index)] + ([int(stream)] if stream else [])
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> 1)


class ChunkExecutor:
    """Wraps an Engine with the per-step `act(observation) -> action` interface of a controller.

    Called once per control step by an evaluation loop or a robot node; `reset` at episode start.
    """

    def __init__(self, engine: Engine, config: ExecutorConfig | None = None):
        self.engine = engine
        self.config = config or ExecutorConfig()
        h = engine.manifest.chunk_length
        if self.config.execute > h:
            raise ValueError(f"execute: {self.config.execute} exceeds the policy's chunk length {h}")
        self.dt = engine.manifest.action_dt
        self.decisions: list[Decision] = []
        self.reset(0)

    def reset(self, seed: int, env=None) -> None:
        """Starts an episode: empties the queue; replanning seeds derive from `seed`."""
        self._seed = int(seed)
        self._chunk: np.ndarray | None = None
        self._times: np.ndarray | None = None
        self._next = 0  # index of the next action to hand out
        self._executed = 0  # actions handed out from the current chunk
        self.decisions = []
        # Actions skipped because their time had passed before they could be executed.
        self.dropped = 0
        self.engine.reset()

    def _replan(self, observation: Observation) -> None:
        seed = decision_seed(self._seed, len(self.decisions), self.config.noise_stream)
        decision = self.engine.infer(observation, n=self.config.n, seed=seed)
        self.decisions.append(decision)
        self._chunk, self._times, self._next, self._executed = decision.chunk, decision.times, 0, 0

    def act(self, observation: Observation) -> np.ndarray:
        """The action for `observation.stamp`: float64[A], robot units."""
        if self._chunk is not None:
            stale = int(np.sum(self._times[self._next:] < observation.stamp - self.dt / 2))
            self.dropped += stale
            self._next += stale
        h = 0 if self._chunk is None else len(self._chunk)
        if self._chunk is None or self._executed >= self.config.execute or self._next >= h:
            self._replan(observation)
        else:
            self.engine.observe(observation)  # a policy with history sees every control step
        action = self._chunk[self._next].astype(np.float64)
        self._next += 1
        self._executed += 1
        return action

    @property
    def latencies_ms(self) -> list[float]:
        return [d.timings["total"] for d in self.decisions]
