"""Real-time chunking (RTC): what a new chunk is guided toward while the robot executes the current one.

While a chunk is computed the robot keeps executing the one before; the first `delay` actions of the
new chunk are in the past by the time it arrives. RTC (Black, Galliker and Levine 2025) samples the new
chunk guided toward the part of the current one that still executes: weight 1 for the actions that run
while inference does, decaying to 0 at the execution horizon, 0 after. This module is the numpy side,
shared by the executors and the engine: the weights (exactly LeRobot 0.6.1's `get_prefix_weights`) and
the re-indexing of the executing chunk to the new observation's time. The guidance itself runs inside
the sampler graph (`policies.models.policy`, manifest field `rtc`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from policies.errors import ObservationError

SCHEDULES = ("zeros", "ones", "linear", "exp")
# LeRobot's RTCConfig defaults: the guidance cap and the schedule.
DEFAULT_MAX_WEIGHT = 10.0
DEFAULT_SCHEDULE = "linear"


def prefix_weights(delay: int, horizon: int, length: int, schedule: str = DEFAULT_SCHEDULE) -> np.ndarray:
    """float32[length]: 1 for the first `delay` positions, a ramp (linear, or exp: x (e^x - 1) / (e - 1))
    down to 0 at `horizon`, 0 from `horizon` on. `zeros`: 1 for the first `delay` only; `ones`: 1 up to
    `horizon`. A delay beyond the horizon is cut to it. LeRobot's RTCProcessor.get_prefix_weights."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule: must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    if delay < 0 or horizon < 0 or length < 1:
        raise ValueError(f"expected delay >= 0, horizon >= 0, length >= 1; got {delay}, {horizon}, {length}")
    start, end = min(delay, horizon), horizon
    weights = np.zeros(length, np.float32)
    if schedule == "zeros":
        weights[:start] = 1.0
        return weights
    if schedule == "ones":
        weights[:end] = 1.0
        return weights
    steps = min(end, length) - start
    if end > start and steps > 0:
        ramp = np.linspace(1.0, 0.0, steps + 2, dtype=np.float32)[1:-1]
        if schedule == "exp":
            ramp = ramp * np.expm1(ramp) / np.float32(math.e - 1)
        weights[start:start + steps] = ramp
    weights[:min(start, length)] = 1.0
    return weights


@dataclass(frozen=True)
class Guidance:
    """RTC for one decision: the chunk being executed, re-indexed to the new observation's time."""

    # float32[K, A], robot units: target[i] is the action executed (or to be) at the new observation's
    # stamp + i * action_dt; K <= the chunk length (the rest of the executing chunk).
    target: np.ndarray
    # float32[H]: how strongly each position of the new chunk is held to the target (see prefix_weights).
    weights: np.ndarray
    # Positions of the new chunk that execute before it arrives (its first usable action is `delay`).
    delay: int
    max_weight: float = DEFAULT_MAX_WEIGHT

    def check(self, chunk_length: int, action_dim: int) -> None:
        """Raises ObservationError naming what does not fit a policy of this chunk length and action size."""
        t, w = self.target, self.weights
        if not isinstance(t, np.ndarray) or t.ndim != 2 or t.shape[1] != action_dim or not 1 <= len(t) <= chunk_length:
            raise ObservationError("guidance.target", f"expected float32[K <= {chunk_length}, {action_dim}], got "
                                                      f"{getattr(t, 'shape', type(t).__name__)}")
        if not np.isfinite(t).all():
            raise ObservationError("guidance.target", "not finite")
        if not isinstance(w, np.ndarray) or w.shape != (chunk_length,) or not np.isfinite(w).all() \
                or (w < 0).any() or (w > 1).any():
            raise ObservationError("guidance.weights", f"expected {chunk_length} weights in [0, 1]")
        if not (np.isfinite(self.max_weight) and self.max_weight >= 0):
            raise ObservationError("guidance.max_weight", f"expected a finite number >= 0, got {self.max_weight}")


def guidance_from(chunk: np.ndarray, times: np.ndarray, stamp: float, dt: float, delay: int, horizon: int,
                  schedule: str = DEFAULT_SCHEDULE, max_weight: float = DEFAULT_MAX_WEIGHT,
                  length: int | None = None) -> Guidance | None:
    """The guidance toward an executing chunk (robot units, its action `times`) for a new chunk of `length`
    (default: the executing chunk's) from an observation at `stamp`: the executing chunk's actions from
    `stamp` on, and weights for `delay` steps of inference and the execution `horizon`, cut to the
    actions left as LeRobot does. None when none of the chunk is left."""
    left = np.flatnonzero(times >= stamp - dt / 2)
    if left.size == 0 and delay == 0:
        return None
    target = np.asarray(chunk[left[0]:] if left.size else chunk[-1:], np.float32)
    if len(target) < delay:
        # The chunk runs dry before the new one arrives and the robot holds its last action meanwhile: that
        # is what it executes, so the new chunk starts from there.
        target = np.concatenate([target, np.repeat(target[-1:], min(delay, length or len(chunk)) - len(target), 0)])
    weights = prefix_weights(delay, min(horizon, len(target)), length or len(chunk), schedule)
    return Guidance(target=target, weights=weights, delay=int(delay), max_weight=float(max_weight))


def delay_steps(seconds: float, dt: float) -> int:
    """Control steps an inference of `seconds` spans: ceil(seconds / dt), less a hair of float rounding."""
    return max(0, math.ceil(seconds / dt - 1e-6))
