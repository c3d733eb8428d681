"""The safety layer between the runtime and any robot: a command filter, a watchdog and an e-stop latch.

Nothing computed from NaN, a stale or future-stamped observation or an overrunning inference reaches
the robot, nor anything while the operator's heartbeat is missing or the e-stop is latched: the
`SafetyLayer` holds instead, and says why in its report.

A hold stops the commanded position where it is in force now: the last command sent, or, after a
trajectory sink sent the rest of a chunk ahead (`SafetyLayer.commit`), that trajectory's position at
this moment (the controller is already past the last tick's point; going back to it would reverse the
arm). A hold is a stop: the acceleration limits bound motion, not stopping.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field

import numpy as np

from hardware.limits import JointLimits, profile_limits
from hardware.profiles import RobotProfile


@dataclass
class FilterReport:
    """What the filter did to one command (or batch of commands)."""

    # The command held the last safe one because it (or the situation) was unsafe; why, if so.
    held: bool = False
    reason: str | None = None
    # Entries clamped to the position limits; entries slowed to the speed limit; entries whose change of
    # speed was bounded by the acceleration limits (braking to stop at the target included) or the jerk
    # limits.
    clamped: int = 0
    rate_limited: int = 0
    accel_limited: int = 0
    jerk_limited: int = 0


class SafetyFilter:
    """Clamps commands to the position limits and bounds each step's speed, acceleration and jerk.

    Works on one command float[14] or a batch float[B, 14] (one independent stream per row), so
    property tests can run many streams at once. `reset` must be called with the robot's measured
    position before the first command. The filter's speed and acceleration are those of its own output
    (the command stream), starting at rest.

    Precedence, per joint and step: the position limits always hold; then the speed limit; then the
    acceleration (and deceleration) limits, which also brake in time to stop at the target rather than
    overshoot it; the jerk limit holds whenever the others leave room for it (starting to move, changing
    direction), but braking to stop at the target, the speed limit or a position limit may take more.
    """

    def __init__(self, profile: RobotProfile, limits: JointLimits | None = None):
        self.profile = profile
        self.limits = limits or profile_limits(profile)
        lim = self.limits
        self.lower, self.upper, self.max_velocity = lim.lower, lim.upper, lim.max_velocity
        self.last: np.ndarray | None = None
        self.velocity: np.ndarray | None = None
        self.acceleration: np.ndarray | None = None
        # Fraction of the speed limits in force (1: the limits themselves): a failure monitor's "slow" action
        # lowers it. A lower limit is reached at the deceleration limits, never by a jump in speed.
        self.speed_scale = 1.0

    def reset(self, position: np.ndarray) -> None:
        position = np.asarray(position, np.float64)
        if position.shape[-1] != len(self.lower) or not np.isfinite(position).all():
            raise ValueError(f"position: expected finite float[..., {len(self.lower)}], got {position}")
        self.stop_at(np.clip(position, self.lower, self.upper))

    def stop_at(self, position: np.ndarray) -> None:
        """The command stream stops at `position` (inside the limits): held, at rest."""
        self.last = np.array(position, np.float64)
        self.velocity = np.zeros_like(self.last)
        self.acceleration = np.zeros_like(self.last)

    def hold(self) -> np.ndarray:
        """The last safe command (what a robot is told while something is wrong)."""
        if self.last is None:
            raise RuntimeError("SafetyFilter.reset(position) must be called before commanding")
        return self.last.copy()

    def copy(self) -> SafetyFilter:
        """A filter in the same state (to preview a sequence without moving this one)."""
        other = SafetyFilter(self.profile, self.limits)
        other.speed_scale = self.speed_scale
        if self.last is not None:
            other.last, other.velocity, other.acceleration = self.last.copy(), self.velocity.copy(), \
                self.acceleration.copy()
        return other

    def __call__(self, command, dt: float) -> tuple[np.ndarray, FilterReport]:
        """Returns the safe command for one control period of `dt` seconds."""
        if self.last is None:
            raise RuntimeError("SafetyFilter.reset(position) must be called before commanding")
        if not (isinstance(dt, (int, float)) and math.isfinite(dt) and dt > 0):
            raise ValueError(f"dt: expected seconds > 0, got {dt!r}")
        report = FilterReport()
        try:
            command = np.asarray(command, np.float64)
        except (TypeError, ValueError):
            report.held, report.reason = True, "command is not numeric"
            return self._stop_rows(np.ones(self.last.shape[:-1], bool)), report
        if command.shape != self.last.shape:
            report.held, report.reason = True, f"command shape {list(command.shape)} != {list(self.last.shape)}"
            return self._stop_rows(np.ones(self.last.shape[:-1], bool)), report
        finite = np.isfinite(command).all(axis=-1)
        if not finite.all():
            report.held, report.reason = True, "non-finite command"
            # Rows (streams) with a NaN/inf hold; the others proceed.
            command = np.where(finite[..., None], command, self.last)
        lim = self.limits
        p, v, a = self.last, self.velocity, self.acceleration
        target = np.clip(command, self.lower, self.upper)
        report.clamped = int((target != command).sum())
        distance = target - p
        wanted = distance / dt
        decel = lim.max_deceleration
        # Aim at a speed from which the joint can still stop at the target (with a jerk limit, early enough
        # for the deceleration to build up within it); the acceleration limits below take precedence, so a
        # target that jumps closer than the joint can stop for is overshot and then returned to.
        aim = np.minimum(np.abs(wanted), stopping_speed(np.abs(distance), decel, dt, lim.max_jerk,
                                                        np.maximum(a * np.sign(distance), 0.0)))
        desired = np.sign(wanted) * aim
        # Jerk: the change of acceleration per step.
        jerk = lim.max_jerk * dt * dt
        jerked = np.clip(desired, v + a * dt - jerk, v + a * dt + jerk)
        # Acceleration: speeding up by max_acceleration * dt, slowing down by max_deceleration * dt per step.
        up, down = lim.max_acceleration * dt, decel * dt
        lo = np.where(v > 0, np.maximum(v - down, -up), v - up)
        hi = np.where(v < 0, np.minimum(v + down, up), v + up)
        accelerated = np.clip(jerked, lo, hi)
        # Never faster than the joint can stop before the position limit it moves toward (hard: the limits do
        # not move, so the deceleration limit always leaves room for it).
        room = np.where(accelerated > 0, self.upper - p, p - self.lower)
        hard = stopping_speed(np.maximum(room, 0.0), decel, dt)
        braked = np.abs(accelerated) > hard
        accelerated = np.where(braked, np.sign(accelerated) * hard, accelerated)
        # The speed limit in force: scaled, but approached no faster than the joint may slow down.
        limit = np.minimum(self.max_velocity, np.maximum(self.max_velocity * self.speed_scale, np.abs(v) - down))
        velocity = np.clip(accelerated, -limit, limit)
        safe = np.clip(p + velocity * dt, self.lower, self.upper)
        report.jerk_limited = int((jerked != desired).sum())
        report.accel_limited = int(((accelerated != jerked) | braked | (aim < np.abs(wanted))).sum())
        report.rate_limited = int((velocity != accelerated).sum())
        velocity = (safe - p) / dt
        new_acceleration = (velocity - v) / dt
        # A stream that held (NaN) stops there.
        held = ~finite
        self.last = np.where(held[..., None], p, safe)
        self.velocity = np.where(held[..., None], 0.0, velocity)
        self.acceleration = np.where(held[..., None], 0.0, new_acceleration)
        return self.last.copy(), report

    def _stop_rows(self, rows: np.ndarray) -> np.ndarray:
        self.velocity = np.where(rows[..., None], 0.0, self.velocity)
        self.acceleration = np.where(rows[..., None], 0.0, self.acceleration)
        return self.last.copy()


def stopping_speed(gap: np.ndarray, decel: np.ndarray, dt: float, jerk: np.ndarray | None = None,
                   toward: np.ndarray | None = None) -> np.ndarray:
    """The fastest speed from which a joint still stops within `gap`, slowing by `decel` * dt a step: stepping
    at speed u (m = floor(u / (decel dt)) steps of slowing after this one) covers dt ((m + 1) u - decel dt
    m (m + 1) / 2). With a `jerk` limit J the deceleration has to build up first (from the acceleration
    `toward` the stop): about u^2 / (2 decel) + u s with s = (decel + toward) / J + dt, whose positive root
    is taken where it is lower. inf where decel is."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        m = np.floor(np.sqrt(0.25 + 2 * gap / (decel * dt * dt)) - 0.5)
        speed = np.minimum((m + 1) * decel * dt, gap / ((m + 1) * dt) + decel * dt * m / 2)
        if jerk is not None and np.isfinite(jerk).any():
            slack = (decel + (0.0 if toward is None else toward)) / jerk + dt
            speed = np.minimum(speed, np.where(np.isfinite(jerk), decel * (np.sqrt(slack ** 2 + 2 * gap / decel) - slack),
                                               np.inf))
    return np.where(np.isfinite(decel), speed, np.inf)


@dataclass(frozen=True)
class WatchdogConfig:
    # An observation older than this (s) when its command would be sent: hold position.
    max_observation_age: float = 0.2
    # An inference slower than this (s): hold position for that step.
    max_inference_time: float = 0.5
    # An observation stamped more than this (s) after this computer's clock: hold. Stamps come from the
    # drivers' clocks; one running ahead of ours would make every observation look fresh forever.
    max_future_stamp: float = 0.05
    # Seconds without an operator heartbeat before holding; None: no heartbeat required.
    heartbeat_timeout: float | None = None

    def __post_init__(self):
        if self.max_observation_age <= 0 or self.max_inference_time <= 0 or self.max_future_stamp < 0:
            raise ValueError("watchdog ages and times must be > 0 (max_future_stamp >= 0)")
        if self.heartbeat_timeout is not None and not self.heartbeat_timeout > 0:
            raise ValueError(f"heartbeat_timeout: expected seconds > 0 or None, got {self.heartbeat_timeout}")


@dataclass
class SafetyLayer:
    """Filter + watchdog + e-stop latch + operator heartbeat. `command` is called once per control tick with
    the runtime's action.

    `now`, `observation_stamp`, `inference_time` and heartbeat times are seconds; `now` and heartbeats on
    this computer's clock, stamps on the drivers' (hence the future-stamp check).
    """

    profile: RobotProfile
    watchdog: WatchdogConfig = field(default_factory=WatchdogConfig)
    limits: JointLimits | None = None
    estopped: bool = False
    estop_reason: str | None = None
    # The latched e-stop's id: a reset must name it (`reset_estop(id)`), so a stray or replayed message
    # cannot release the robot.
    estop_id: str | None = None

    def __post_init__(self):
        self.filter = SafetyFilter(self.profile, self.limits)
        self.dt = 1.0 / self.profile.control_hz
        self.last_heartbeat: float | None = None
        # What a trajectory sink already sent ahead: (times float64[K], commands float64[K, J]).
        self._plan: tuple[np.ndarray, np.ndarray] | None = None

    def reset(self, position: np.ndarray) -> None:
        self.filter.reset(position)
        self._plan = None

    def estop(self, reason: str) -> str:
        """Latches the e-stop: every later command holds until `reset_estop` names the returned id. A second
        e-stop while latched keeps the first's id."""
        if not self.estopped:
            self.estop_id = secrets.token_hex(4)
        self.estopped, self.estop_reason = True, reason
        return self.estop_id

    def reset_estop(self, estop_id: str) -> None:
        """Releases a latched e-stop; raises ValueError unless `estop_id` is its id (`ControlLoop.estop_reset`
        also requires the operator's heartbeat)."""
        if not self.estopped:
            raise ValueError("no e-stop is latched")
        if estop_id != self.estop_id:
            raise ValueError(f"e-stop reset names {estop_id!r}, but the latched e-stop is {self.estop_id!r} "
                             f"({self.estop_reason})")
        self.estopped, self.estop_reason, self.estop_id = False, None, None

    def heartbeat(self, now: float) -> None:
        """The operator's heartbeat arrived at `now` (this computer's clock)."""
        self.last_heartbeat = now

    def heartbeat_missing(self, now: float) -> str | None:
        """Why the heartbeat counts as missing at `now`, or None."""
        timeout = self.watchdog.heartbeat_timeout
        if timeout is None:
            return None
        if self.last_heartbeat is None:
            return "no operator heartbeat received yet"
        age = now - self.last_heartbeat
        if age > timeout:
            return f"operator heartbeat lost ({age * 1e3:.0f} ms since the last, limit {timeout * 1e3:.0f} ms)"
        return None

    def commit(self, times: np.ndarray, commands: np.ndarray) -> None:
        """Records what a trajectory sink sent ahead: `commands` float[K, J] for `times` float[K] (this
        computer's clock, the first one the tick's). A hold stops where that trajectory is then."""
        self._plan = (np.asarray(times, np.float64), np.asarray(commands, np.float64))

    def in_force(self, now: float) -> np.ndarray:
        """The position commanded at `now`: the committed trajectory's there, else the last command."""
        if self._plan is not None:
            times, commands = self._plan
            if len(times) > 1 and now > times[0]:
                return np.stack([np.interp(now, times, commands[:, j]) for j in range(commands.shape[1])])
        return self.filter.hold()

    def splice(self, now: float) -> np.ndarray | None:
        """Where the committed trajectory is at `now`, made the filter's state (that position, its speed
        there): the first point of the next trajectory, which a JointTrajectoryController executes from
        the moment it arrives (header stamp 0), so that it takes over where the last one has got to. None
        when no trajectory is in force (the next command is a plain step from the last one)."""
        if self._plan is None:
            return None
        times, commands = self._plan
        if len(times) < 2 or not now > times[0]:
            return None
        position = self.in_force(now)
        if now >= times[-1]:  # the controller came to the end of it and stopped there
            velocity = acceleration = np.zeros_like(position)
        else:
            k = int(np.searchsorted(times, now)) - 1
            slopes = np.diff(commands, axis=0) / np.diff(times)[:, None]
            velocity = slopes[k]
            acceleration = (slopes[k] - slopes[k - 1]) / (times[k + 1] - times[k]) if k > 0 else \
                self.filter.acceleration
        self.filter.last = np.clip(position, self.filter.lower, self.filter.upper)
        self.filter.velocity, self.filter.acceleration = velocity, np.asarray(acceleration, np.float64)
        self._plan = None
        return self.filter.hold()

    def hold(self, now: float) -> np.ndarray:
        """Stops the command stream at the position in force at `now` and returns it."""
        if self.filter.last is None:
            raise RuntimeError("SafetyFilter.reset(position) must be called before commanding")
        self.filter.stop_at(self.in_force(now))
        self._plan = None
        return self.filter.hold()

    def check(self, now: float, observation_stamp: float | None, inference_time: float | None = None,
              newest: tuple[str, float] | None = None) -> str | None:
        """Why no command may be computed now from an observation stamped `observation_stamp` (its oldest
        part), or None. `newest`: (name, stamp) of its most recent part, for the future-stamp check (the
        observation's own stamp when None)."""
        if self.estopped:
            return f"e-stop latched: {self.estop_reason}"
        missing = self.heartbeat_missing(now)
        if missing:
            return missing
        # The most basic fault first: a dead sensor stream explains a dry chunk, not the other way round.
        if observation_stamp is None or not np.isfinite(observation_stamp):
            return "observation has no valid stamp"
        name, latest = newest or ("observation", observation_stamp)
        if latest - now > self.watchdog.max_future_stamp:
            return (f"{name} stamped {(latest - now) * 1e3:.0f} ms in the future of this computer's clock (limit "
                    f"{self.watchdog.max_future_stamp * 1e3:.0f} ms): the drivers' clock runs ahead; sync the clocks")
        age = now - observation_stamp
        if age > self.watchdog.max_observation_age:
            return f"stale observation ({age * 1e3:.0f} ms old)"
        if inference_time is not None and inference_time > self.watchdog.max_inference_time:
            return f"inference overran ({inference_time * 1e3:.0f} ms)"
        return None

    def step(self, action, dt: float | None = None) -> tuple[np.ndarray, FilterReport]:
        """The filtered command for one tick (the checks passed): what goes to the robot. `dt`: seconds since
        the last command, when it is not one control period (a step run off the tick grid)."""
        self._plan = None
        return self.filter(action, self.dt if dt is None else dt)

    def command(self, action, now: float, observation_stamp: float | None,
                inference_time: float | None = None) -> tuple[np.ndarray, FilterReport]:
        """`check`, then `hold` or `step`: one tick's command for `action` (None: no action available)."""
        reason = self.check(now, observation_stamp, inference_time)
        if reason is None and action is None:
            reason = "no action available"
        if reason is not None:
            return self.hold(now), FilterReport(held=True, reason=reason)
        return self.step(action)


def preview(safety_filter: SafetyFilter, commands: np.ndarray, dt) -> np.ndarray:
    """Filters a sequence float[K, 14] of future commands from the filter's current state, without
    changing that state: what a trajectory sink sends ahead of time obeys the same limits per step.
    `dt`: seconds between consecutive commands, one number or float[K] (from the last command sent to
    the first, then between each)."""
    if safety_filter.last is None:
        raise RuntimeError("SafetyFilter.reset(position) must be called before commanding")
    commands = np.asarray(commands, np.float64)
    if not len(commands):
        return np.empty((0, len(safety_filter.lower)))
    steps = np.broadcast_to(np.asarray(dt, np.float64), (len(commands),))
    shadow = safety_filter.copy()
    return np.stack([shadow(c, float(s))[0] for c, s in zip(commands, steps)])
