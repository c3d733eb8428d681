"""The safety layer between the runtime and any robot: a command filter, a watchdog and an e-stop latch.

Nothing computed from NaN, a stale observation or an overrunning inference reaches the robot: the
`SafetyLayer` holds the last safe command instead, and says why in its report.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hardware.profiles import RobotProfile


@dataclass
class FilterReport:
    """What the filter did to one command (or batch of commands)."""

    # The command held the last safe one because it (or the situation) was unsafe; why, if so.
    held: bool = False
    reason: str | None = None
    # Entries clamped to the position limits, and entries slowed to the speed limit.
    clamped: int = 0
    rate_limited: int = 0


class SafetyFilter:
    """Clamps commands to the profile's limits and bounds each step's change by max_velocity * dt.

    Works on one command float[14] or a batch float[B, 14] (one independent stream per row), so
    property tests can run many streams at once. `reset` must be called with the robot's measured
    position before the first command.
    """

    def __init__(self, profile: RobotProfile):
        self.profile = profile
        self.lower, self.upper, self.max_velocity = profile.arrays()
        self.last: np.ndarray | None = None

    def reset(self, position: np.ndarray) -> None:
        position = np.asarray(position, np.float64)
        if position.shape[-1] != len(self.lower) or not np.isfinite(position).all():
            raise ValueError(f"position: expected finite float[..., {len(self.lower)}], got {position}")
        self.last = np.clip(position, self.lower, self.upper).copy()

    def hold(self) -> np.ndarray:
        """The last safe command (what a robot is told while something is wrong)."""
        if self.last is None:
            raise RuntimeError("SafetyFilter.reset(position) must be called before commanding")
        return self.last.copy()

    def __call__(self, command, dt: float) -> tuple[np.ndarray, FilterReport]:
        """Returns the safe command for one control period of `dt` seconds."""
        if self.last is None:
            raise RuntimeError("SafetyFilter.reset(position) must be called before commanding")
        report = FilterReport()
        try:
            command = np.asarray(command, np.float64)
        except (TypeError, ValueError):
            report.held, report.reason = True, "command is not numeric"
            return self.hold(), report
        if command.shape != self.last.shape:
            report.held, report.reason = True, f"command shape {list(command.shape)} != {list(self.last.shape)}"
            return self.hold(), report
        finite = np.isfinite(command).all(axis=-1)
        if not finite.all():
            report.held, report.reason = True, "non-finite command"
            # Rows (streams) with a NaN/inf hold; the others proceed.
            command = np.where(finite[..., None], command, self.last)
        clamped = np.clip(command, self.lower, self.upper)
        report.clamped = int((clamped != command).sum())
        step = self.max_velocity * dt
        safe = np.clip(clamped, self.last - step, self.last + step)
        report.rate_limited = int((safe != clamped).sum())
        self.last = safe
        return safe.copy(), report


@dataclass(frozen=True)
class WatchdogConfig:
    # An observation older than this (s) when its command would be sent: hold position.
    max_observation_age: float = 0.2
    # An inference slower than this (s): hold position for that step.
    max_inference_time: float = 0.5

    def __post_init__(self):
        if self.max_observation_age <= 0 or self.max_inference_time <= 0:
            raise ValueError("watchdog ages and times must be > 0")


@dataclass
class SafetyLayer:
    """Filter + watchdog + e-stop latch. `command` is called once per control tick with the runtime's action.

    `now`, `observation_stamp` and `inference_time` are seconds on the robot's clock.
    """

    profile: RobotProfile
    watchdog: WatchdogConfig = field(default_factory=WatchdogConfig)
    estopped: bool = False
    estop_reason: str | None = None

    def __post_init__(self):
        self.filter = SafetyFilter(self.profile)
        self.dt = 1.0 / self.profile.control_hz

    def reset(self, position: np.ndarray) -> None:
        self.filter.reset(position)

    def estop(self, reason: str) -> None:
        """Latches the e-stop: every later command holds until `reset_estop`."""
        self.estopped, self.estop_reason = True, reason

    def reset_estop(self) -> None:
        self.estopped, self.estop_reason = False, None

    def command(self, action, now: float, observation_stamp: float | None,
                inference_time: float | None = None) -> tuple[np.ndarray, FilterReport]:
        if self.estopped:
            return self.filter.hold(), FilterReport(held=True, reason=f"e-stop latched: {self.estop_reason}")
        # The most basic fault first: a dead sensor stream explains a dry chunk, not the other way round.
        if observation_stamp is None or not np.isfinite(observation_stamp):
            return self.filter.hold(), FilterReport(held=True, reason="observation has no valid stamp")
        age = now - observation_stamp
        if age > self.watchdog.max_observation_age:
            return self.filter.hold(), FilterReport(held=True, reason=f"stale observation ({age * 1e3:.0f} ms old)")
        if inference_time is not None and inference_time > self.watchdog.max_inference_time:
            return self.filter.hold(), FilterReport(held=True,
                                                    reason=f"inference overran ({inference_time * 1e3:.0f} ms)")
        if action is None:
            return self.filter.hold(), FilterReport(held=True, reason="no action available")
        return self.filter(action, self.dt)


def preview(safety_filter: SafetyFilter, commands: np.ndarray, dt: float) -> np.ndarray:
    """Filters a sequence float[K, 14] of future commands from the filter's current state, without
    changing that state: what a trajectory sink sends ahead of time obeys the same limits per step."""
    if safety_filter.last is None:
        raise RuntimeError("SafetyFilter.reset(position) must be called before commanding")
    shadow = SafetyFilter(safety_filter.profile)
    shadow.last = safety_filter.last.copy()
    return np.stack([shadow(c, dt)[0] for c in np.asarray(commands, np.float64)]) if len(commands) else \
        np.empty((0, len(shadow.lower)))
