"""Chunk execution: turns the engine's chunks into one action per control step.

Each action carries the time it is for. The executor hands out the action for the observation's
time, drops actions whose time has passed (never executes stale ones), and replans once `execute`
actions of the current chunk have been used, or when the chunk runs dry.

`ChunkExecutor` is synchronous: the world waits while a chunk is computed (simulation's default).
`AsyncChunkExecutor` is what a robot does, on the simulation's clock: the robot keeps executing the
current chunk while the next is computed, the next arrives `delay` later, and execution switches to it
at its first action not yet in the past; with real-time chunking (RTC) the next chunk is guided toward
the part of the current one that still executes. Both record each switch's jump and the executed
actions, for `switch_jump_rad` and `jerk` in evaluations.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from policies.guidance import (DEFAULT_MAX_WEIGHT, DEFAULT_SCHEDULE, SCHEDULES, Guidance, delay_steps,
                               guidance_from)
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
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]) >> 1


@dataclass(frozen=True)
class AsyncConfig:
    """Asynchronous execution (AsyncChunkExecutor, and the ROS node's RealtimeExecutor)."""

    # Inference delay in ms, injected: a decision arrives this long after its observation, on the
    # simulation's clock, so results reproduce. None: measured, the wall-clock time of each decision.
    delay_ms: float | None = None
    # Guide each chunk toward the executing one (real-time chunking); needs a bundle with `rtc`.
    rtc: bool = True
    # RTC weights: 1 for the `delay` actions that execute during inference, then `schedule` down to 0 at
    # position `horizon` of the new chunk (LeRobot's execution_horizon; None: all that is left of the
    # executing chunk), capped guidance `max_weight`. Never below delay + 1, so the first action the new
    # chunk executes is always guided.
    horizon: int | None = None
    schedule: str = DEFAULT_SCHEDULE
    max_weight: float = DEFAULT_MAX_WEIGHT
    # The delay planned for: this percentile of the last `window` decisions' delays (measured delays only).
    percentile: float = 95.0
    window: int = 20

    def __post_init__(self):
        if self.delay_ms is not None and not (math.isfinite(self.delay_ms) and self.delay_ms >= 0):
            raise ValueError(f"delay_ms: expected a number of milliseconds >= 0, got {self.delay_ms}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule: must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.horizon is not None and self.horizon < 1:
            raise ValueError(f"horizon: expected >= 1, got {self.horizon}")
        if not (math.isfinite(self.max_weight) and self.max_weight >= 0):
            raise ValueError(f"max_weight: expected a finite guidance cap >= 0, got {self.max_weight}")
        if not 0 < self.percentile <= 100 or self.window < 1:
            raise ValueError("percentile must be in (0, 100] and window >= 1")

    def guidance(self, chunk: np.ndarray, times: np.ndarray, stamp: float, dt: float, delay: int,
                 length: int) -> Guidance | None:
        """RTC toward the executing `chunk` (robot units, action `times`) for a new chunk of `length` from an
        observation at `stamp`, planned for `delay` steps of inference; None without RTC."""
        if not self.rtc:
            return None
        horizon = length if self.horizon is None else max(self.horizon, delay + 1)
        return guidance_from(chunk, times, stamp, dt, delay, horizon, self.schedule, self.max_weight, length)

    def check_policy(self, manifest) -> None:
        """Refuses RTC for a policy whose sampler does not take it (an Engine's or a RemoteEngine's manifest)."""
        if self.rtc and not getattr(manifest, "rtc", False):
            raise ValueError(f"rtc: the sampler of {manifest.name!r} takes no real-time chunking inputs; re-export "
                             "it, or run without RTC")


def stale_actions(times: np.ndarray, start: int, now: float, dt: float) -> int:
    """How many actions from `start` on are for a time already past at `now` (half a step of slack): they
    are dropped, never executed late."""
    return int(np.sum(times[start:] < now - dt / 2))


class DelayEstimator:
    """The inference delay to plan for: the injected one, or a high percentile of the recent measured ones
    (wall-clock time around the whole request, so a remote server's network time counts)."""

    def __init__(self, config: AsyncConfig):
        self.config = config
        self._recent: deque[float] = deque(maxlen=config.window)
        # Planned once per decision, read every control step.
        self._planned = 0.0 if config.delay_ms is None else config.delay_ms / 1e3

    def add(self, seconds: float) -> None:
        self._recent.append(float(seconds))
        if self.config.delay_ms is None:
            self._planned = float(np.percentile(self._recent, self.config.percentile))

    def seconds(self) -> float:
        return self._planned


def arm_joints(names) -> np.ndarray:
    """Indices of the joints measured in radians (all but grippers), for switch jumps and jerk."""
    index = [i for i, name in enumerate(names) if "gripper" not in name]
    return np.asarray(index or range(len(names)))


class Motion:
    """The actions a robot executed in one episode: each switch's jump and the jerk of the whole."""

    def __init__(self, joints: np.ndarray, dt: float):
        self.joints, self.dt = joints, dt
        self.actions: list[np.ndarray] = []
        # Largest joint difference (rad) between the last action executed before a switch and the first after.
        self.switch_jumps: list[float] = []
        self._switched = False

    def switch(self) -> None:
        self._switched = True

    def executed(self, action: np.ndarray) -> None:
        if self._switched and self.actions:
            self.switch_jumps.append(float(np.abs(action[self.joints] - self.actions[-1][self.joints]).max()))
        self._switched = False
        self.actions.append(np.asarray(action, np.float64))

    def jerk_mean(self) -> float:
        """Mean over steps of the largest joint jerk |d3 q / dt3| (rad/s^3) of the executed commands."""
        if len(self.actions) < 4:
            return 0.0
        q = np.stack(self.actions)[:, self.joints]
        return float(np.abs(np.diff(q, n=3, axis=0)).max(axis=1).mean() / self.dt ** 3)


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
        self.motion = Motion(arm_joints(self.engine.manifest.action_names), self.dt)
        self.engine.reset()

    def _replan(self, observation: Observation) -> None:
        seed = decision_seed(self._seed, len(self.decisions), self.config.noise_stream)
        decision = self.engine.infer(observation, n=self.config.n, seed=seed)
        self.decisions.append(decision)
        self._chunk, self._times, self._next, self._executed = decision.chunk, decision.times, 0, 0
        self.motion.switch()

    def act(self, observation: Observation) -> np.ndarray:
        """The action for `observation.stamp`: float64[A], robot units."""
        if self._chunk is not None:
            stale = stale_actions(self._times, self._next, observation.stamp, self.dt)
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
        self.motion.executed(action)
        return action

    @property
    def latencies_ms(self) -> list[float]:
        return [d.timings["total"] for d in self.decisions]


class AsyncChunkExecutor:
    """The `act(observation) -> action` of a controller whose inference takes time on the world's clock.

    Each decision is computed when its observation arrives but becomes usable only `delay` later
    (injected, or its measured wall time): meanwhile the robot executes the current chunk, and holds its
    last action if that runs dry. The next inference starts once `execute - d` actions of the current
    chunk are executed (d = the delay in control steps), so that, like the synchronous executor, about
    `execute` actions of each chunk run. With RTC every candidate is guided toward the current chunk
    re-indexed to the new observation's time. Called once per control step by an evaluation loop.
    """

    def __init__(self, engine: Engine, config: ExecutorConfig | None = None, timing: AsyncConfig | None = None):
        self.engine = engine
        self.config = config or ExecutorConfig()
        self.timing = timing or AsyncConfig()
        m = engine.manifest
        if self.config.execute > m.chunk_length:
            raise ValueError(f"execute: {self.config.execute} exceeds the policy's chunk length {m.chunk_length}")
        self.timing.check_policy(m)
        self.dt = m.action_dt
        self.reset(0)

    def reset(self, seed: int, env=None) -> None:
        self._seed = int(seed)
        self._chunk: np.ndarray | None = None
        self._times: np.ndarray | None = None
        self._next = self._executed = 0
        self._pending: tuple[Decision, float] | None = None  # a decision and the time it arrives
        self._last: np.ndarray | None = None
        self.decisions: list[Decision] = []
        self.dropped = 0
        # Control steps with no action to execute (the chunk ran dry before the next arrived).
        self.held = 0
        self.delays = DelayEstimator(self.timing)
        self.motion = Motion(arm_joints(self.engine.manifest.action_names), self.dt)
        self.engine.reset()

    def _start(self, observation: Observation, d: int) -> None:
        guidance = None
        if self._chunk is not None:
            guidance = self.timing.guidance(self._chunk, self._times, observation.stamp, self.dt, d,
                                            self.engine.manifest.chunk_length)
        seed = decision_seed(self._seed, len(self.decisions), self.config.noise_stream)
        started = time.perf_counter()
        decision = self.engine.infer(observation, n=self.config.n, seed=seed, guidance=guidance)
        wall = time.perf_counter() - started
        self.delays.add(wall)
        self.decisions.append(decision)
        delay = self.timing.delay_ms / 1e3 if self.timing.delay_ms is not None else wall
        self._pending = (decision, observation.stamp + delay)

    def _arrive(self, now: float) -> None:
        if self._pending is not None and self._pending[1] <= now + self.dt / 2:
            decision = self._pending[0]
            self._pending = None
            self._chunk, self._times, self._next, self._executed = decision.chunk, decision.times, 0, 0
            self.motion.switch()

    def _drop_stale(self, now: float) -> None:
        if self._chunk is not None:
            stale = stale_actions(self._times, self._next, now, self.dt)
            self.dropped += stale
            self._next += stale

    def act(self, observation: Observation) -> np.ndarray:
        """The action for `observation.stamp` (float64[A], robot units): the current chunk's, or the last
        one held when none is left."""
        now = observation.stamp
        self._arrive(now)
        self._drop_stale(now)
        d = delay_steps(self.delays.seconds(), self.dt)
        due = self._chunk is None or self._executed >= max(1, self.config.execute - d) \
            or self._next >= len(self._chunk)
        if self._pending is None and due:
            self._start(observation, d)
            self._arrive(now)  # no delay: it is here now
            self._drop_stale(now)
        else:
            self.engine.observe(observation)
        if self._chunk is not None and self._next < len(self._chunk):
            action = self._chunk[self._next].astype(np.float64)
            self._next += 1
            self._executed += 1
        else:
            self.held += 1
            action = self._last if self._last is not None else np.asarray(observation.state, np.float64)
        self._last = action
        self.motion.executed(action)
        return action

    @property
    def latencies_ms(self) -> list[float]:
        return [d.timings["total"] for d in self.decisions]
