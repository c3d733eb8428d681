"""Chunk execution against a clock, with inference on a worker thread: what a robot node runs.

The control loop calls `observe(observation)` whenever a new observation is assembled and
`action(now)` once per control tick. `action` never waits for the engine: it hands out the action of
the current chunk whose time is `now` (actions whose time has passed are dropped, never executed
late), and asks the worker for a new chunk once `execute` actions of the current one are used. The
worker runs `Engine.infer` on the latest observation; when the new chunk arrives it replaces the old
one from the next tick on. If the chunk runs dry before that, `action` returns None and the safety
layer holds the robot.

With an `AsyncConfig` it plans for the inference delay as `runtime.executor.AsyncChunkExecutor` does in
simulation: it measures each decision's wall time (a remote server's network time included), plans for
a high percentile of the recent ones (d control steps), asks for the next chunk once `execute - d`
actions of the current one are used, and with RTC guides the next chunk toward the current one
re-indexed to the new observation's time.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from policies.guidance import delay_steps
from policies.observation import Observation
from runtime.engine import Decision, Engine
from runtime.executor import AsyncConfig, DelayEstimator, ExecutorConfig, decision_seed, stale_actions


@dataclass
class Tick:
    """What `RealtimeExecutor.action` returns for one control tick."""

    # float64[A] action in robot units, or None when no chunk covers `now` (the robot must hold).
    action: np.ndarray | None
    # The decision the action comes from (None before the first one).
    decision: Decision | None
    # True on the first tick that uses a new decision.
    new_decision: bool
    # Seconds the inference now in flight has been running (0 when none is): the watchdog's input.
    inference_elapsed: float
    # Clock times the decision's inference started and finished (None before the first decision).
    started_at: float | None = None
    finished_at: float | None = None


class RealtimeExecutor:
    """Thread-safe chunk executor for a control loop that must never block on inference."""

    def __init__(self, engine: Engine, config: ExecutorConfig | None = None, seed: int = 0,
                 clock=time.monotonic, timing: AsyncConfig | None = None):
        self.engine = engine
        self.config = config or ExecutorConfig()
        # Delay planning and RTC; None: neither (a new chunk is asked for after `execute` actions).
        self.timing = timing
        if timing is not None:
            timing.check_policy(engine.manifest)
        self.delays = DelayEstimator(timing or AsyncConfig())
        if self.config.execute > engine.manifest.chunk_length:
            raise ValueError(f"execute: {self.config.execute} exceeds the policy's chunk length "
                             f"{engine.manifest.chunk_length}")
        self.dt = engine.manifest.action_dt
        self._clock = clock
        self._seed = int(seed)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._latest: Observation | None = None
        self._decision: Decision | None = None
        self._fresh = False  # the decision has not been handed out yet
        self._next = 0
        self._executed = 0
        self._wanted = True  # a new chunk is wanted
        self._started_at: float | None = None  # clock time the inference in flight started
        self._span: tuple[float | None, float | None] = (None, None)  # of the current decision
        self._count = 0
        self._closed = False
        # Recent inference errors (e.g. an observation the bundle refuses); the node drains and logs them.
        self.errors: deque[Exception] = deque(maxlen=100)
        self.dropped = 0
        self._worker = threading.Thread(target=self._run, name="taco-inference", daemon=True)
        self._worker.start()

    def observe(self, observation: Observation) -> None:
        """Makes `observation` the one the next inference uses (and, for a policy with history, one
        of those it encodes together)."""
        try:
            self.engine.observe(observation)
        except Exception as exc:  # noqa: BLE001 - reported to the node like an inference error
            with self._wake:
                self.errors.append(exc)
            return
        with self._wake:
            self._latest = observation
            self._wake.notify()

    def reset(self) -> None:
        """Forgets the current chunk (e.g. at an episode start or after an e-stop reset)."""
        with self._wake:
            self._decision, self._latest, self._wanted = None, None, True
        self.engine.reset()

    def action(self, now: float) -> Tick:
        with self._wake:
            elapsed = 0.0 if self._started_at is None else self._clock() - self._started_at
            decision = self._decision
            if decision is None:
                return Tick(None, None, False, elapsed)
            times = decision.times
            stale = stale_actions(times, self._next, now, self.dt)
            self.dropped += stale
            self._next += stale
            new, self._fresh = self._fresh, False
            span = self._span
            if self._next >= len(times):
                self._wanted = True
                self._wake.notify()
                return Tick(None, decision, new, elapsed, *span)
            action = decision.chunk[self._next].astype(np.float64)
            self._next += 1
            self._executed += 1
            if self._executed >= self._due() and not self._wanted:
                self._wanted = True
                self._wake.notify()
            return Tick(action, decision, new, elapsed, *span)

    def upcoming(self, limit: int) -> np.ndarray:
        """float64[K, A]: the actions after the one last handed out, at most `limit` (for trajectory sinks)."""
        with self._wake:
            if self._decision is None:
                return np.empty((0, len(self.engine.manifest.action_names)))
            return self._decision.chunk[self._next: self._next + limit].astype(np.float64)

    def _due(self) -> int:
        """Actions of the current chunk used before the next is asked for: `execute`, less the delay planned
        for (in control steps) when planning for it, so the next arrives as `execute` have run."""
        if self.timing is None:
            return self.config.execute
        return max(1, self.config.execute - delay_steps(self.delays.seconds(), self.dt))

    def _guidance(self, observation: Observation):
        """RTC toward the current chunk for an inference on `observation` (under the lock), or None."""
        if self.timing is None or self._decision is None:
            return None
        return self.timing.guidance(self._decision.chunk, self._decision.times, observation.stamp, self.dt,
                                    delay_steps(self.delays.seconds(), self.dt), self.engine.manifest.chunk_length)

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._worker.join(timeout=5.0)

    def _run(self) -> None:
        while True:
            with self._wake:
                self._wake.wait_for(lambda: self._closed or (self._wanted and self._latest is not None))
                if self._closed:
                    return
                observation, self._latest = self._latest, None
                self._started_at = self._clock()
                seed = decision_seed(self._seed, self._count, self.config.noise_stream)
                self._count += 1
                guidance = self._guidance(observation)
            started = time.perf_counter()
            try:
                decision = self.engine.infer(observation, n=self.config.n, seed=seed, guidance=guidance)
                wall = time.perf_counter() - started
            except Exception as exc:  # noqa: BLE001 - reported to the node, which logs it and holds
                with self._wake:
                    self.errors.append(exc)
                    self._started_at = None
                continue
            with self._wake:  # the control thread reads the delays (under this lock)
                self.delays.add(wall)
                self._decision, self._fresh = decision, True
                self._next, self._executed, self._wanted = 0, 0, False
                self._span = (self._started_at, self._clock())
                self._started_at = None
