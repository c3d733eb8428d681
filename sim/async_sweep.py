"""`taco async-sweep`: one policy, synchronous and asynchronous, at several inference delays.

For each delay D (ms, injected on the simulated clock so runs reproduce): asynchronous execution without
RTC, with RTC, and with RTC plus continuity selection; and once, synchronous execution (the world waits
for every chunk: the policy's own success). Every arm runs the same seeds, as `taco compare` does, is
resumable (one JSON per arm), and is compared with the synchronous arm episode by episode (McNemar).
The table: success (Wilson 95%), switch jump p50/p95 (the largest arm-joint difference between the last
action executed before a chunk switch and the first one after), jerk, and steps held for want of a chunk.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from sim.compare import _finished, _paired
from sim.evaluate import EvalConfig, run_suite

# (name, rtc, continuity) of the asynchronous arms at each delay; None: the sweep's --continuity.
ASYNC_ARMS = (("async", False, 0.0), ("rtc", True, 0.0), ("rtc+cont", True, None))


def sweep(base: EvalConfig, delays: list[float], out_dir: str | Path, continuity: float = 1.0,
          rtc_horizon: int | None = None, rtc_max_weight: float | None = None, log=None) -> dict:
    """Runs the synchronous arm and the asynchronous arms at each delay; writes and returns `sweep.json`."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    arms = [("sync", None, dataclasses.replace(base, report=None))]
    for delay in delays:
        for name, rtc, weight in ASYNC_ARMS:
            weight = continuity if weight is None else weight
            if name == "rtc+cont" and weight == 0:
                continue
            arms.append((name, delay, dataclasses.replace(base, report=None, asynchronous=True, delay_ms=float(delay),
                                                          rtc=rtc, continuity=weight,
                                                          rtc_horizon=rtc_horizon if rtc else None,
                                                          rtc_max_weight=rtc_max_weight if rtc else None)))
    results = {}
    for name, delay, config in arms:
        key = name if delay is None else f"{name}@{delay:g}"
        path = out / f"arm-{key.replace('+', '_').replace('@', '-')}.json"
        done = _finished(path, config)
        if done is None:
            log(f"arm {key}: N={config.n}, verifier {config.verifier}")
            done = run_suite(config, path, progress=log)
        else:
            log(f"arm {key}: already complete in {path}")
        results[key] = (name, delay, config, done)
    sync = results["sync"][3]
    rows = []
    for key, (name, delay, config, report) in results.items():
        overall = report["summary"]["overall"]
        row = {"arm": name, "delay_ms": delay, "rtc": config.rtc, "rtc_horizon": config.rtc_horizon,
               "rtc_max_weight": config.rtc_max_weight,
               "continuity": config.continuity,
               "overall": {k: overall.get(k) for k in ("episodes", "successes", "success_rate", "wilson95",
                                                       "switch_jump_rad_p50", "switch_jump_rad_p95", "jerk_mean",
                                                       "held_steps_mean", "mean_stage_reward")}}
        if key != "sync":
            row["paired_vs_sync"] = _paired(sync["episodes"], report["episodes"])
        rows.append(row)
    summary = {"policy": base.policy, "verifier": base.verifier, "n": base.n, "tasks": list(base.tasks),
               "episodes": base.episodes, "seed": base.seed, "execute": base.execute, "delays_ms": delays,
               "rows": rows}
    (out / "sweep.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def format_sweep(summary: dict) -> str:
    lines = [f"{'arm':<9} {'delay ms':>8} {'success':>8} {'wilson 95%':>13} {'jump p50':>9} {'jump p95':>9} "
             f"{'jerk':>8} {'held':>6}   vs sync"]
    for row in summary["rows"]:
        s = row["overall"]
        delay = "-" if row["delay_ms"] is None else f"{row['delay_ms']:g}"
        jumps = [f"{s[k]:.3f}" if s[k] is not None else "-" for k in ("switch_jump_rad_p50", "switch_jump_rad_p95")]
        paired = row.get("paired_vs_sync")
        vs = f"+{paired['gained']} -{paired['lost']} (p={paired['p_value']:.3f})" if paired else ""
        lines.append(f"{row['arm']:<9} {delay:>8} {s['successes']:>3}/{s['episodes']:<4} "
                     f"[{s['wilson95'][0]:.2f}, {s['wilson95'][1]:.2f}] {jumps[0]:>9} {jumps[1]:>9} "
                     f"{s['jerk_mean']:>8.0f} {s['held_steps_mean']:>6.1f}   {vs}")
    return "\n".join(lines)
