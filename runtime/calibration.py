"""Fitting a failure monitor from rollouts: standardisation, detectors, conformal thresholds.

Input: per episode, each decision's raw signals (runtime.monitor.MonitorTrack.history), whether the
episode succeeded, and for the lead time the decision's control step and the step of the last progress.
The successful episodes are split in two, alternately in episode order: the first half sets each
signal's mean and standard deviation, the second half the thresholds (split conformal: the threshold
is an order statistic of rollouts the standardisation never saw). The failed episodes choose, among
the detectors (each signal alone, and every subset of the signals), the slack and the combination that
alarm in most of them, at thresholds set on the first half; only the chosen detector's threshold comes
from the second half, which the choice never saw, so the false-alarm bound on successful episodes
holds for it. With no failure to choose by, the
combined detector averages every signal. The main detector, `any`, keeps every signal apart: each one's
CUSUM (at its own detector's slack) divided by its threshold on the first half, the largest of them
thresholded on the second half. An `elapsed` detector (longer than the successful episodes)
comes with every fit as the baseline the others are measured against; it never joins the combination.

Numpy only: a robot computer can calibrate from its own decision logs.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass

import numpy as np

from runtime.monitor import Detector, conformal_rank, conformal_threshold, standardise

# CUSUM slacks tried per detector, in standard deviations of a successful rollout's decision.
DEFAULT_SLACKS = (0.0, 0.25, 0.5, 1.0)
# The combined detector is chosen among subsets of at most this many signals.
MAX_COMBINED = 4
# With no failed calibration rollout to choose by, each detector takes this slack and the combined one
# every signal.
NO_FAILURES_SLACK = 0.25
# The detector whose alarm acts: `any`, each signal on its own (`combined`, the best mean of a subset,
# and each signal's own detector are fitted and reported beside it).
MAIN_DETECTOR = "any"
# Floor of a signal's scale in the `any` detector (its CUSUM threshold on the fit half, in standard
# deviations x decisions): a signal that never rose on the fit half must not turn a small excursion into
# an unbounded ratio.
MIN_SCALE = 1.0


@dataclass
class CalibrationEpisode:
    """One rollout's monitor readings."""

    # Signal -> one raw value per decision (NaN where it has none).
    signals: dict[str, list[float]]
    success: bool
    # Each decision's control step, and the step the episode's best stage was reached (for lead times).
    decision_steps: list[int]
    progress_step: int = 0


@dataclass
class Fit:
    standardisation: dict[str, list[float]]
    detectors: dict[str, Detector]
    main: str
    # Per detector, on the calibration rollouts: alarms among failures and among the conformal successes.
    report: dict


def _first_alarm(path: np.ndarray, threshold: float) -> int | None:
    above = np.flatnonzero(path > threshold)
    return int(above[0]) if len(above) else None


def _elapsed(episodes, ok, failed, conformal_half, alpha: float, dt: float) -> tuple[Detector, dict]:
    """The baseline: an alarm once an episode has run longer than the successful ones (their last
    decision's elapsed seconds, split conformal)."""
    def elapsed(e):
        return (np.asarray(e.decision_steps, np.float64) - e.decision_steps[0]) * dt

    threshold = conformal_threshold([elapsed(e)[-1] for e in conformal_half], alpha)
    first = {id(e): _first_alarm(elapsed(e), threshold) for e in episodes}
    leads = [(e.progress_step - e.decision_steps[first[id(e)]]) * dt for e in failed if first[id(e)] is not None]
    report = {"failed_alarmed": sum(first[id(e)] is not None for e in failed), "failed": len(failed),
              "successful_alarmed": sum(first[id(e)] is not None for e in ok), "successful": len(ok),
              "lead_s_median": float(np.median(leads)) if leads else None}
    return Detector(signals=("elapsed",), slack=0.0, threshold=threshold, alpha=alpha, kind="elapsed"), report


def fit_monitor(episodes: list[CalibrationEpisode], signals: tuple[str, ...], alpha: float,
                slacks: tuple[float, ...] = DEFAULT_SLACKS, dt: float = 0.02) -> Fit:
    """Standardisation and detectors from calibration rollouts (see the module doc). Raises ValueError
    when the successful rollouts are too few for `alpha`, naming how many it needs."""
    ok = [e for e in episodes if e.success]
    failed = [e for e in episodes if not e.success]
    fit_half, conformal_half = ok[0::2], ok[1::2]
    try:
        rank = conformal_rank(len(conformal_half), alpha)
    except ValueError as err:
        raise ValueError(f"{err} in the conformal half ({len(ok)} successful rollouts in all, "
                         f"{len(episodes)} run): calibrate on more episodes") from None
    usable = []
    standardisation = {}
    for name in signals:
        values = np.concatenate([np.asarray(e.signals[name], np.float64) for e in fit_half])
        values = values[np.isfinite(values)]
        if len(values) < 2:
            continue  # never measured (the first decision's inconsistency, on one-decision episodes)
        mean, std = float(values.mean()), float(values.std())
        std = max(std, 1e-6 * max(1.0, abs(mean)))
        standardisation[name] = [mean, std]
        usable.append(name)
    if not usable:
        raise ValueError("no signal was measured on the successful rollouts")
    z_all = [{name: standardise(np.asarray(e.signals[name], np.float64), name, *standardisation[name])
              for name in usable} for e in episodes]
    index = {id(e): i for i, e in enumerate(episodes)}

    def judged(detector: Detector, thresholds_from) -> tuple[Detector, dict]:
        """The detector with its threshold set on `thresholds_from`'s peaks, and its alarms."""
        paths = {id(e): detector.path(z_all[index[id(e)]]) for e in episodes}
        threshold = conformal_threshold([paths[id(e)].max(initial=0.0) for e in thresholds_from], alpha)
        first = {id(e): _first_alarm(paths[id(e)], threshold) for e in episodes}
        leads = [(e.progress_step - e.decision_steps[first[id(e)]]) * dt for e in failed if first[id(e)] is not None]
        report = {"failed_alarmed": sum(first[id(e)] is not None for e in failed), "failed": len(failed),
                  "successful_alarmed": sum(first[id(e)] is not None for e in ok), "successful": len(ok),
                  "lead_s_median": float(np.median(leads)) if leads else None}
        return dataclasses.replace(detector, threshold=threshold), report

    def evaluate(subset: tuple[str, ...], slack: float, thresholds_from) -> tuple[Detector, dict]:
        return judged(Detector(signals=subset, slack=float(slack), threshold=0.0, alpha=alpha), thresholds_from)

    def best(subsets) -> tuple[Detector, dict]:
        if not failed:  # nothing to choose by: all the signals, the slack OpenTau's accel uses
            return evaluate(max(subsets, key=len), NO_FAILURES_SLACK, conformal_half)
        scored = []
        for subset in subsets:
            for slack in slacks:
                # Chosen at the fit half's own threshold: a choice made at the conformal half's would favour
                # the detectors whose conformal sample happened to set their threshold low, and their false
                # alarms would exceed alpha (they did: 0.11 at alpha 0.05 on held-out seeds).
                _, report = evaluate(subset, slack, fit_half)
                lead = -math.inf if report["lead_s_median"] is None else report["lead_s_median"]
                # Most failures caught; then the earliest alarm; then fewest signals, lowest slack.
                scored.append(((-report["failed_alarmed"], -lead, len(subset), slack), subset, slack))
        scored.sort(key=lambda row: row[0])
        _, subset, slack = scored[0]
        return evaluate(subset, slack, conformal_half)  # the threshold: the conformal half's, unseen by the choice

    detectors, report = {}, {}
    for name in usable:
        detectors[name], report[name] = best([(name,)])
    subsets = [s for k in range(1, min(MAX_COMBINED, len(usable)) + 1) for s in itertools.combinations(usable, k)]
    if not failed:
        subsets = [tuple(usable)]
    detectors["combined"], report["combined"] = best(subsets)
    # Every signal on its own CUSUM (its detector's slack), over its threshold on the fit half: the largest
    # ratio, thresholded on the conformal half. A mean lets familiar-looking readings cancel an anomalous
    # one (in the dark the inconsistency alarmed in all 100 episodes alone, the mean in 1); this cannot.
    scales = tuple(max(evaluate((name,), detectors[name].slack, fit_half)[0].threshold, MIN_SCALE) for name in usable)
    anything = Detector(signals=tuple(usable), slack=0.0, threshold=0.0, alpha=alpha, kind="any",
                        slacks=tuple(detectors[name].slack for name in usable), scales=scales)
    detectors["any"], report["any"] = judged(anything, conformal_half)
    detectors["elapsed"], report["elapsed"] = _elapsed(episodes, ok, failed, conformal_half, alpha, dt)
    report["split"] = {"fit": len(fit_half), "conformal": len(conformal_half), "failed": len(failed), "rank": rank}
    return Fit(standardisation=standardisation, detectors=detectors, main=MAIN_DETECTOR, report=report)
