"""Chunk execution against a clock, with inference on a worker thread: what a robot node runs.

The control loop calls `offer(observation, now)` as each complete new observation arrives (every part
of it new since the last), `observe(observation)` for one it assembles otherwise, and `action(now)` once
per control tick. `action` never waits for the engine: it hands out the current
chunk at time `now`, between the two actions whose times are around it (so a policy of 30 actions a
second plays at its own speed on a 50 Hz node), drops the actions whose time passed between two ticks
(never executed late), and asks the worker for a new chunk once `execute` actions of the current one
are used. The worker runs `Engine.infer` on the latest observation; when the new chunk arrives it
replaces the old one from the next tick on (and `on_decision` is called, so that the node can run that
tick at once). If the chunk runs dry before that, `action` returns None and the safety layer holds the
robot.

Where the time goes between an observation and its first command (benchmarks/ros_latency.py): asked for at
a tick, the worker would start from an observation up to one sensor period old, and its chunk would wait up
to one tick for its first command. So `offer` asks for the next chunk at the arrival of the last
observation before the tick that would ask for it (the sensors' period is measured from the offers), and
the inference starts from an observation a transport delay old; and the node runs a control step when the
decision arrives instead of at the next tick.

`invalidate` (an episode reset, an e-stop, a verifier swap, a hold) forgets the chunk and the
observation waiting, and a decision whose inference started before it is thrown away when it
arrives: nothing computed before the event reaches the robot after it. The control thread does no
preprocessing: observations of a policy with history are handed to the worker, which keeps them.

With an `AsyncConfig` it plans for the inference delay as `runtime.executor.AsyncChunkExecutor` does in
simulation: it measures each decision's wall time (a remote server's network time included), plans for
a high percentile of the recent ones (d control steps), asks for the next chunk once `execute - d`
actions of the current one are used, and with RTC guides the next chunk toward the current one
re-indexed to the new observation's time.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from policies.guidance import delay_steps
from policies.observation import Observation
from runtime.engine import Decision, Engine
from runtime.executor import AsyncConfig, DelayEstimator, ExecutorConfig, decision_seed


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

    # Offers kept to measure the sensors' period (the median interval).
    period_window = 16

    def __init__(self, engine: Engine, config: ExecutorConfig | None = None, seed: int = 0,
                 clock=time.monotonic, timing: AsyncConfig | None = None, on_decision=None):
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
        self._first: int | None = None  # index of the current chunk's first executed action
        self._offers: deque[float] = deque(maxlen=self.period_window)
        # Called (no arguments, on the worker thread, no lock held) when a decision is ready to execute.
        self._on_decision = on_decision
        self._wanted = True  # a new chunk is wanted
        self._reset_history = False  # the worker must empty the engine's history before the next inference
        self._started_at: float | None = None  # clock time the inference in flight started
        self._span: tuple[float | None, float | None] = (None, None)  # of the current decision
        self._count = 0
        self._closed = False
        # Bumped by `invalidate`; a decision started under an older epoch is discarded.
        self._epoch = 0
        # Observations for a policy with history, for the worker to keep (oldest first).
        self._pending: deque[Observation] = deque(maxlen=4 * max(1, engine.manifest.history))
        # Recent inference errors (e.g. an observation the bundle refuses); the node drains and logs them.
        self.errors: deque[Exception] = deque(maxlen=100)
        self.dropped = 0
        # Decisions thrown away because an invalidation came while they were computed.
        self.discarded = 0
        # Why each next chunk was asked for: at an arriving observation, at the tick it was due, or at a tick
        # that found the chunk run dry (most should be "offer"; benchmarks/ros_latency.py reports them).
        self.asked = {"offer": 0, "tick": 0, "dry": 0}
        self._worker = threading.Thread(target=self._run, name="taco-inference", daemon=True)
        self._worker.start()

    def offer(self, observation: Observation, now: float) -> None:
        """`observe` for an observation complete and new as it arrives at `now`; when the tick that would ask
        for the next chunk comes before the next arrival is expected, it is asked for now, from this one."""
        with self._wake:
            self._offers.append(now)
            if not self._wanted and self._first is not None and len(self._offers) >= 2:
                period = float(np.median(np.diff(self._offers)))
                # A tick asks once the action at index first + due - 1 is the one nearest it, that is half
                # an action before that action's time.
                k = min(self._first + self._due() - 1, len(self._decision.times) - 1)
                if now + period >= self._decision.times[k] - 0.5 * self.dt:
                    self._wanted = True
                    self.asked["offer"] += 1
            self._observe(observation)

    def observe(self, observation: Observation) -> None:
        """Makes `observation` the one the next inference uses (and, for a policy with history, one
        of those it encodes together). Cheap: the worker preprocesses it."""
        with self._wake:
            self._observe(observation)

    def _observe(self, observation: Observation) -> None:
        if self.engine.manifest.history > 1:
            self._pending.append(observation)
        self._latest = observation
        self._wake.notify()

    def reset(self) -> None:
        """Forgets the current chunk and the observation history (an episode start)."""
        self.invalidate(history=True)

    def invalidate(self, history: bool = False) -> None:
        """Forgets the current chunk and the observation waiting; the decision in flight, if any, is
        discarded when it arrives. `history`: also forget the observations a policy with history keeps."""
        with self._wake:
            self._epoch += 1
            self._decision, self._latest, self._wanted, self._fresh, self._first = None, None, True, False, None
            if history:
                self._pending.clear()
                self._reset_history = True
            self._wake.notify()

    def waiting(self) -> bool:
        """Whether an observation waits for the worker to take it (it is busy, or about to be)."""
        with self._wake:
            return self._wanted and self._latest is not None and not self._closed

    def inference_elapsed(self) -> float:
        """Seconds the inference in flight has been running (0 when none is)."""
        with self._wake:
            return 0.0 if self._started_at is None else self._clock() - self._started_at

    def action(self, now: float) -> Tick:
        with self._wake:
            elapsed = 0.0 if self._started_at is None else self._clock() - self._started_at
            decision = self._decision
            if decision is None:
                return Tick(None, None, False, elapsed)
            new, self._fresh = self._fresh, False
            span = self._span
            last = len(decision.times) - 1
            # Fractional index of `now` in the chunk; the action nearest it is the one in force.
            position = (now - decision.times[0]) / self.dt
            nearest = math.floor(position + 0.5)
            if abs(position - nearest) < 1e-6:  # a tick at an action's time executes that action exactly
                position = float(nearest)
            if nearest > last:
                self.dropped += max(0, last + 1 - self._next)
                self._next = last + 1
                self._wanted = True
                self.asked["dry"] += 1
                self._wake.notify()
                return Tick(None, decision, new, elapsed, *span)
            if nearest >= self._next:
                if self._first is None:
                    self._first = max(nearest, 0)
                self.dropped += nearest - self._next  # their time passed between two ticks
                self._next = nearest + 1
                self._executed += 1
                if self._executed >= self._due() and not self._wanted:
                    self._wanted = True
                    self.asked["tick"] += 1
                    self._wake.notify()
            position = min(max(position, 0.0), float(last))
            i = min(int(position), last - 1) if last > 0 else 0
            w = position - i
            chunk = decision.chunk
            action = chunk[i].astype(np.float64) if w == 0 or last == 0 else \
                (1 - w) * chunk[i].astype(np.float64) + w * chunk[i + 1].astype(np.float64)
            return Tick(action, decision, new, elapsed, *span)

    def upcoming(self, now: float, limit: int) -> tuple[np.ndarray, np.ndarray]:
        """The current chunk's actions for times after `now`, at most `limit`: (times float64[K],
        actions float64[K, A]), for trajectory sinks."""
        with self._wake:
            decision = self._decision
            if decision is None:
                return np.empty(0), np.empty((0, len(self.engine.manifest.action_names)))
            later = np.flatnonzero(decision.times > now)[:limit]
            return decision.times[later].copy(), decision.chunk[later].astype(np.float64)

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
                pending, self._pending = list(self._pending), deque(maxlen=self._pending.maxlen)
                reset_history, self._reset_history = self._reset_history, False
                epoch = self._epoch
                self._started_at = self._clock()
                seed = decision_seed(self._seed, self._count, self.config.noise_stream)
                self._count += 1
                guidance = self._guidance(observation)
            started = time.perf_counter()
            try:
                if reset_history:
                    self.engine.reset()
                for earlier in pending:  # a policy with history keeps the observations between decisions
                    if earlier is not observation:
                        self.engine.observe(earlier)
                decision = self.engine.infer(observation, n=self.config.n, seed=seed, guidance=guidance)
                wall = time.perf_counter() - started
            except Exception as exc:  # noqa: BLE001 - reported to the node, which logs it and holds
                with self._wake:
                    self.errors.append(exc)
                    self._started_at = None
                continue
            with self._wake:  # the control thread reads the delays (under this lock)
                self.delays.add(wall)
                started_at, self._started_at = self._started_at, None
                if epoch != self._epoch:  # invalidated while it was computed: never executed
                    self.discarded += 1
                    continue
                self._decision, self._fresh = decision, True
                self._next, self._executed, self._wanted, self._first = 0, 0, False, None
                self._span = (started_at, self._clock())
            if self._on_decision is not None:
                try:
                    self._on_decision()
                except Exception as exc:  # noqa: BLE001 - the worker goes on; the tick executes the decision
                    with self._wake:
                        self.errors.append(exc)
            if not getattr(decision, "signals_ready", True):
                # Deferred monitor scoring (EngineConfig.defer_monitor), now that the decision is out: the
                # worker is idle until the next observation, and the control thread reads the result.
                try:
                    decision.read_signals()
                except Exception as exc:  # noqa: BLE001 - reported like a failed decision; the chunk stands
                    with self._wake:
                        self.errors.append(exc)
