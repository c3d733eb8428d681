"""The robot-side control loop without ROS: what the policy node runs, so that its rules are unit-tested.

The node converts each message and calls one method here (`joint_state`, `image`, `instruction`,
`reset`, `estop`, `estop_reset`, `heartbeat`, `invalidate` after a verifier swap) and, once per control
tick, `tick(now)`, whose result it publishes through its sink. Every command passes the safety layer.

The rule that ties events to commands: an episode reset, an e-stop (latched or released), a change of
instruction, a verifier swap, and every hold the watchdog decides (a stale or future-stamped
observation, a missing heartbeat, an overrunning inference) invalidate the chunk being executed and
the inference in flight. The robot then holds until a decision arrives whose inference started after
the event, from an observation every part of which arrived after it: no command computed before an
event reaches the robot after it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from hardware.limits import JointLimits
from hardware.profiles import RobotProfile
from hardware.robot_io import StateAssembler, assemble_observation
from hardware.safety import FilterReport, SafetyLayer, WatchdogConfig, preview
from policies.observation import Observation
from policies.tokenizer import NoTokenizer
from runtime.executor import AsyncConfig, ExecutorConfig
from runtime.realtime import RealtimeExecutor, Tick


def check_robot(manifest, profile: RobotProfile, rate: float, trajectory_sink: bool) -> None:
    """Refuses, naming the field, a policy (an Engine's or a RemoteEngine's manifest) that does not fit the
    robot: its state and action joints must be the profile's, in the profile's order; a sink that sends
    one command per tick must tick at least as often as the policy's actions come (else actions would be
    skipped; a trajectory sink sends them at their own times, so any rate works)."""
    for field_name, names in (("action.names", manifest.action_names), ("state.names", manifest.state_names)):
        names, robot = tuple(names), tuple(profile.joint_names)
        if names != robot:
            if sorted(names) == sorted(robot):
                i = next(k for k, (a, b) in enumerate(zip(names, robot)) if a != b)
                raise ValueError(f"{field_name}: the policy {manifest.name!r} orders its joints differently from "
                                 f"the robot profile {profile.name!r} (position {i}: {names[i]!r}, robot "
                                 f"{robot[i]!r}); re-export it in the robot's order")
            raise ValueError(f"{field_name}: the policy {manifest.name!r} has joints {list(names)}, the robot "
                             f"profile {profile.name!r} has {list(robot)}")
    policy_hz = 1.0 / manifest.action_dt
    if not trajectory_sink and rate < policy_hz * (1 - 1e-6):
        raise ValueError(f"rate: {rate:g} Hz is slower than the policy's {policy_hz:g} actions a second, so a "
                         f"sink that sends one command per tick would skip actions; run at >= {policy_hz:g} Hz "
                         "or use the jtc sink")


MONITOR_ACTIONS = ("none", "slow", "hold")


@dataclass(frozen=True)
class ControlConfig:
    """Settings of a ControlLoop (the policy node's parameters)."""

    # Control ticks per second: one command per tick.
    rate: float
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    # The session's noise seed (decision k draws decision_seed(seed, k)).
    seed: int = 0
    # Delay planning and real-time chunking; None: neither.
    timing: AsyncConfig | None = None
    watchdog: WatchdogConfig = field(default_factory=WatchdogConfig)
    # Future actions sent with each tick's command (trajectory sinks); 0: the command alone.
    horizon: int = 0
    # What the engine's failure monitor's alarm does (runtime.monitor): "none" (it is only reported), "slow"
    # (the safety layer's speed limits scale by `monitor_slow` until the episode ends or the operator
    # resumes) or "hold" (the robot holds until the operator resumes, `monitor_resume`).
    monitor_action: str = "none"
    monitor_slow: float = 0.5

    def __post_init__(self):
        if not self.rate > 0 or self.horizon < 0:
            raise ValueError(f"rate must be > 0 and horizon >= 0, got {self.rate}, {self.horizon}")
        if self.monitor_action not in MONITOR_ACTIONS:
            raise ValueError(f"monitor_action: must be one of {', '.join(MONITOR_ACTIONS)}, got {self.monitor_action!r}")
        if not 0.0 < self.monitor_slow <= 1.0:
            raise ValueError(f"monitor_slow: expected a fraction of the speed limits in (0, 1], got {self.monitor_slow}")


@dataclass
class TickResult:
    """What one control tick sends. `command` None: nothing is sent yet (no measured position to start from)."""

    # float64[J]: the safe command for now, robot units.
    command: np.ndarray | None
    report: FilterReport
    # Trajectory sinks: (seconds after now float64[K], safe commands float64[K, J]) of the rest of the chunk.
    upcoming: tuple[np.ndarray, np.ndarray] | None = None
    # The executor's tick (the decision the command comes from), or None when holding for an event.
    tick: Tick | None = None


class ControlLoop:
    """Observation assembly, chunk execution and the safety layer for one robot. Thread-safe: every method
    may be called from the node's callbacks while another thread ticks."""

    # Recent (arrival - stamp) offsets kept per source, for the clock diagnostics.
    offset_window = 50

    def __init__(self, engine, profile: RobotProfile, config: ControlConfig, limits: JointLimits | None = None,
                 clock=time.monotonic, trajectory_sink: bool | None = None, log=None, on_decision=None):
        """`on_decision`: called on the inference thread when a decision is ready, so that the caller can run
        `tick` at once (its first command then waits for no control tick)."""
        trajectory_sink = config.horizon > 0 if trajectory_sink is None else trajectory_sink
        check_robot(engine.manifest, profile, config.rate, trajectory_sink)
        self.engine, self.profile, self.config = engine, profile, config
        self.executor = RealtimeExecutor(engine, config.executor, seed=config.seed, clock=clock, timing=config.timing,
                                         on_decision=on_decision)
        self.safety = SafetyLayer(profile, config.watchdog, limits)
        self.safety.dt = 1.0 / config.rate
        self.assembler = StateAssembler(profile)
        self.cameras = [c.name for c in engine.manifest.cameras]
        self.task = ""
        # A policy without a tokenizer takes no instruction; every other one holds until it has one.
        self.needs_task = not isinstance(getattr(engine.manifest, "tokenizer", None), NoTokenizer)
        self._lock = threading.RLock()
        # Per observation part (arm joint states, cameras): the message's stamp and when it arrived.
        self._images: dict[str, tuple[np.ndarray, float]] = {}
        self._arrived: dict[str, float] = {}
        self._offsets: dict[str, deque[float]] = {}
        self.anchored = False  # the safety filter knows where the robot is
        self.reset_stamp = -np.inf
        # When the last invalidating event happened (this computer's clock), and what it was.
        self.invalidated_at = -np.inf
        self.last_event: str | None = None
        self.stats = {"ticks": 0, "held_ticks": 0, "decisions": 0, "invalidations": 0}
        # Held ticks and invalidations by reason (its words before any measured value in parentheses).
        self.reasons: dict[str, dict[str, int]] = {"held": {}, "invalidated": {}}
        # A verifiers.decision_log.StreamLog: each reset starts a logged episode; every decision, with
        # its candidates (the engine must return them), and every command sent are logged.
        self.log = log
        if log is not None and not getattr(getattr(engine, "config", None), "return_candidates", False):
            raise ValueError("log_decisions: the engine must return its candidates (EngineConfig(return_candidates="
                             "True)); a remote engine does not: log on the server (taco serve --log-decisions)")
        # (stamp, state) of the observations given to the executor, to log the state each decision saw.
        self._observed: deque[tuple[float, np.ndarray]] = deque(maxlen=64)
        self._tick_state: np.ndarray | None = None
        # Sources arrived since the last offer (an offer when all have), the part stamps of the last
        # observation given to the executor (never given twice), and when the last command was computed.
        self._new_parts: set[str] = set()
        self._given: tuple | None = None
        self._last_step_at: float | None = None
        # The failure monitor's track of this episode (the engine's monitor; None without one), its last
        # reading, the hold its alarm latched, and a counter of its state changes (for the node's latched topic).
        monitor = getattr(engine, "monitor", None)
        if monitor is None and config.monitor_action != "none":
            raise ValueError(f"monitor_action {config.monitor_action!r}: the engine has no failure monitor")
        if monitor is not None and monitor.manifest.n != config.executor.n:
            raise ValueError(f"monitor: {monitor.name!r} is calibrated at N={monitor.manifest.n}, the loop samples "
                             f"N={config.executor.n}")
        self.monitor = None if monitor is None else monitor.track(engine.manifest.action_dt)
        self.monitor_status = None
        self.monitor_hold: str | None = None
        self.monitor_changes = 0
        self._monitor_acted = False
        # Decisions executing whose deferred monitor signals were not scored yet when they arrived.
        self._monitor_waiting: deque = deque()

    # -- inputs ------------------------------------------------------------------------------------

    def joint_state(self, arm: int, names, positions, stamp: float, now: float) -> None:
        """One arm's sensor_msgs/JointState fields; raises ObservationError naming a bad field."""
        with self._lock:
            self.assembler.update(arm, names, positions, stamp)
            self._arrival(f"{self.profile.arm_namespaces[arm]}/joint_states", stamp, now)

    def image(self, camera: str, image: np.ndarray, stamp: float, now: float) -> None:
        with self._lock:
            self._images[camera] = (image, stamp)
            self._arrival(camera, stamp, now)

    def _arrival(self, source: str, stamp: float, now: float) -> None:
        self._arrived[source] = now
        self._offsets.setdefault(source, deque(maxlen=self.offset_window)).append(now - stamp)
        self._new_parts.add(source)
        if self._new_parts.issuperset(self._sources()):
            self._new_parts.clear()
            self._offer(now)

    def _offer(self, now: float) -> None:
        """Gives the executor the observation just completed, if a tick now would (a fresh observation, a
        state measured after the last reset, no reason to hold), so that inference can start from it at once."""
        observation, _ = self.observation()
        if observation is None or not self._arrived_after_event() or observation.stamp < self.reset_stamp:
            return
        if self.safety.check(now, observation.stamp, self.executor.inference_elapsed() or None,
                             self._newest_part()) is not None:
            return  # the next tick holds and says why
        self._give(observation, now)

    def _give(self, observation: Observation, now: float | None = None) -> None:
        """To the executor, once per observation: `offer` as it arrives (`now`), else `observe`."""
        parts = (*self.assembler.stamps(), *(self._images[c][1] for c in self.cameras))
        if parts == self._given:
            return
        self._given = parts
        if now is None:
            self.executor.observe(observation)
        else:
            self.executor.offer(observation, now)
        if self.log is not None:
            self._observed.append((observation.stamp, observation.state))

    def instruction(self, text: str, now: float) -> None:
        with self._lock:
            if text != self.task:
                self.task = text
                self.invalidate("instruction changed", now)

    def reset(self, stamp: float, now: float, episode: str = "") -> None:
        """A new episode (`episode`: its name, as the reset message gives it): the chunk and the history are
        forgotten, and commands start again only from a state measured at or after `stamp`."""
        with self._lock:
            if self.log is not None:
                self.log.start(episode, instruction=self.task)
            self.executor.reset()
            self._invalidated("episode reset", now)
            self.anchored = False
            self.reset_stamp = stamp
            if self.monitor is not None:  # a new episode: a new track; a latched hold stays until resumed
                self._monitor_waiting.clear()
                self.monitor.reset()
                self.monitor_status, self._monitor_acted = None, False
                self.safety.filter.speed_scale = 1.0
                self.monitor_changes += 1

    def monitor_resume(self, now: float) -> str:
        """The operator's resume after a failure monitor's alarm: releases its hold (commands resume from a
        freshly measured position, after a new decision) or its slowdown, and restarts its statistic.
        Raises ValueError saying why not (no alarm acted on; the operator's heartbeat missing)."""
        with self._lock:
            if self.monitor is None:
                raise ValueError("no failure monitor is running")
            if self.monitor_hold is None and self.safety.filter.speed_scale == 1.0:
                raise ValueError("no monitor alarm is holding or slowing the robot")
            missing = self.safety.heartbeat_missing(now)
            if missing:
                raise ValueError(f"monitor resume refused: {missing}")
            held, self.monitor_hold = self.monitor_hold, None
            self.safety.filter.speed_scale = 1.0
            self._monitor_waiting.clear()
            self.monitor.reset()
            self.monitor_status, self._monitor_acted = None, False
            self.monitor_changes += 1
            if held is not None:
                self.anchored = False
                self.invalidate("monitor alarm released", now)
                return "hold released"
            return "full speed restored"

    def _monitor_read(self, wait: bool) -> None:
        """Reads the decisions waiting for the monitor, in order, into its track. A decision whose signals
        the executor's worker is still scoring (EngineConfig.defer_monitor) waits for a later tick unless
        `wait` (the `hold` action: the decision that raises an alarm must not reach the robot)."""
        while self._monitor_waiting and (wait or getattr(self._monitor_waiting[0], "signals_ready", True)):
            self._monitor_decision(self._monitor_waiting.popleft())

    def _monitor_decision(self, decision) -> None:
        """Reads a new decision into the monitor's track and acts on its first alarm of the episode."""
        status = self.monitor.update(decision)
        self.monitor_status = status
        if not status.alarmed or self._monitor_acted:
            return
        self._monitor_acted = True
        self.monitor_changes += 1
        action = self.config.monitor_action
        if action == "slow":
            self.safety.filter.speed_scale = self.config.monitor_slow
        elif action == "hold":
            main = self.monitor.monitor.manifest.main
            self.monitor_hold = (f"monitor alarm ({main} {status.statistic:.2f} > {status.threshold:.2f} at decision "
                                 f"{status.decision} of the episode): resume with the monitor_resume service")

    def monitor_report(self) -> dict | None:
        """The monitor's state for diagnostics: None without a monitor."""
        if self.monitor is None:
            return None
        status = self.monitor_status
        return {"name": self.monitor.monitor.name, "action": self.config.monitor_action,
                "alarmed": bool(status is not None and status.alarmed), "holding": self.monitor_hold is not None,
                "speed_scale": self.safety.filter.speed_scale,
                **({} if status is None else {k: v for k, v in status.to_dict().items() if k != "alarmed"})}

    def estop(self, reason: str, now: float) -> str:
        """Latches the e-stop; returns its id, which `estop_reset` must name."""
        with self._lock:
            estop_id = self.safety.estop(reason)
            self.invalidate(f"e-stop: {reason}", now)
            return estop_id

    def estop_reset(self, estop_id: str, now: float) -> None:
        """Releases the e-stop if `estop_id` names it and the operator's heartbeat is alive; raises
        ValueError saying why not. Commands resume from a freshly measured position."""
        with self._lock:
            missing = self.safety.heartbeat_missing(now)
            if missing:
                raise ValueError(f"e-stop reset refused: {missing}")
            self.safety.reset_estop(estop_id)
            self.anchored = False  # re-anchored on a position measured after the release
            self.invalidate("e-stop released", now)

    def heartbeat(self, now: float) -> None:
        with self._lock:
            self.safety.heartbeat(now)

    def invalidate(self, why: str, now: float) -> None:
        """Forgets the chunk and the inference in flight (see the module docstring)."""
        with self._lock:
            self.executor.invalidate()
            self._invalidated(why, now)

    def _invalidated(self, why: str, now: float) -> None:
        self.stats["invalidations"] += 1
        _count(self.reasons["invalidated"], why)
        self.invalidated_at, self.last_event = now, why

    # -- the tick ----------------------------------------------------------------------------------

    def observation(self) -> tuple[Observation | None, str | None]:
        """The latest complete observation, or None and what is missing."""
        with self._lock:
            if not self.assembler.ready:
                return None, "joint states of both arms not received yet"
            missing = [c for c in self.cameras if c not in self._images]
            if missing:
                return None, f"no image yet from {missing}"
            if self.needs_task and not self.task:
                return None, "no task instruction (the task parameter or /taco/instruction)"
            state, stamp = self.assembler.state()
            return assemble_observation(state, stamp, {c: self._images[c] for c in self.cameras}, self.task), None

    def _sources(self) -> list[str]:
        return [f"{ns}/joint_states" for ns in self.profile.arm_namespaces] + self.cameras

    def _arrived_after_event(self) -> bool:
        return all(self._arrived.get(s, -np.inf) > self.invalidated_at for s in self._sources())

    def _newest_part(self) -> tuple[str, float] | None:
        """(name, stamp) of the observation's most recently stamped part."""
        parts = [(c, stamp) for c, (_, stamp) in self._images.items() if c in self.cameras]
        parts += [(f"{ns}/joint_states", stamp) for ns, stamp in zip(self.profile.arm_namespaces,
                                                                     self.assembler.stamps())]
        return max(parts, key=lambda p: p[1], default=None)

    def tick(self, now: float) -> TickResult:
        with self._lock:
            self.stats["ticks"] += 1
            observation, why = self.observation()
            self._tick_state = None if observation is None else observation.state  # logged with the command
            fresh = observation is not None and self._arrived_after_event()
            if not self.anchored:
                # No command before the filter knows where the robot is, from a state measured after a reset.
                if not fresh or observation.stamp < self.reset_stamp:
                    return TickResult(None, FilterReport(held=True, reason=why or "waiting for a state measured "
                                                                                  "after the last reset"))
                self.safety.reset(observation.state)
                self.anchored = True
            reason = self.safety.check(now, None if observation is None else observation.stamp,
                                       self.executor.inference_elapsed() or None, self._newest_part())
            if observation is None and reason == "observation has no valid stamp":
                reason = why
            if self._monitor_waiting:
                self._monitor_read(wait=False)
            if reason is None:
                reason = self.monitor_hold
            if reason is not None:
                self.invalidate(reason, now)
                return self._hold(now, reason)
            if fresh:
                self._give(observation)
            tick = self.executor.action(now)
            if tick.action is None:
                waiting = tick.decision is None and self.last_event is not None
                return self._hold(now, f"waiting for a decision made after: {self.last_event}" if waiting
                                  else "no action available", tick)
            if tick.new_decision:
                self.stats["decisions"] += 1
                if self.log is not None:
                    self._log_decision(tick.decision)
                if self.monitor is not None:
                    self._monitor_waiting.append(tick.decision)
                    self._monitor_read(wait=self.config.monitor_action == "hold")
                    if self.monitor_hold is not None:  # this decision raised it: none of it reaches the robot
                        self.invalidate(self.monitor_hold, now)
                        return self._hold(now, self.monitor_hold, tick)
            # A step off the tick grid (run when a decision arrived) moves the robot over the time since the
            # last command, at most one control period (a late tick is filtered as a punctual one).
            dt = None if self._last_step_at is None else min(max(now - self._last_step_at, 1e-4), self.safety.dt)
            self._last_step_at = now
            # A trajectory sink's command for now is where its last trajectory has got to (the controller is
            # there); the new chunk enters through the points after it.
            spliced = self.safety.splice(now) if self.config.horizon else None
            if spliced is not None:
                command, report = spliced, FilterReport()
            else:
                command, report = self.safety.step(tick.action, dt)
            upcoming = None
            if self.config.horizon:
                times, actions = self.executor.upcoming(now, self.config.horizon)
                rows = preview(self.safety.filter, actions, np.diff(np.concatenate([[now], times])))
                self.safety.commit(np.concatenate([[now], times]), np.vstack([command[None], rows]))
                upcoming = (times - now, rows)
            if self.log is not None:
                self.log.step(command, state=self._tick_state)
            return TickResult(command, report, upcoming, tick)

    def _hold(self, now: float, reason: str, tick: Tick | None = None) -> TickResult:
        self.stats["held_ticks"] += 1
        _count(self.reasons["held"], reason)
        command = self.safety.hold(now)
        if self.log is not None and command is not None:
            self.log.step(command, state=self._tick_state)
        return TickResult(command, FilterReport(held=True, reason=reason), None, tick)

    def _log_decision(self, decision) -> None:
        stamp = float(decision.times[0])
        state = next((s for t, s in reversed(self._observed) if t == stamp), None)
        if state is None:  # not one this loop observed (cannot happen with the executor's own stamps)
            state = np.full(len(self.profile.joint_names), np.nan, np.float32)
        self.log.decision(decision, state)

    def episode_outcome(self, episode: str, **outcome):
        """The outcome of logged episode `episode` (a simulation's summary): written with it."""
        with self._lock:
            return None if self.log is None else self.log.outcome(episode, **outcome)

    def clock_offsets_ms(self) -> dict[str, float]:
        """Per source, the median of (arrival on this computer's clock - message stamp) over recent messages,
        ms: transport latency when the clocks agree; negative when a driver's clock runs ahead."""
        with self._lock:
            return {s: round(float(np.median(v)) * 1e3, 3) for s, v in self._offsets.items() if v}

    def close(self) -> None:
        self.executor.close()
        with self._lock:
            if self.log is not None:
                self.log.close()


def _count(counts: dict[str, int], reason: str) -> None:
    key = reason.split(" (")[0]
    counts[key] = counts.get(key, 0) + 1
