"""What a failure monitor adds to a decision: the engine with and without it, interleaved, on one thread.

    .venv/bin/python benchmarks/monitor_cost.py --policy default --monitor MONITOR --json build/monitor_cost.json [--quick]

The monitor's scorers (its pseudo-count and value verifiers) run on every decision; the per-episode part
(its track: the consistency with the previous chunk, the CUSUM) is timed on its own. Each N gets a
signals-only copy of the monitor's manifest at that N (its thresholds hold for one N only; their cost
does not depend on it). Prints p50/p99 of the decision with and without it and of the `monitor` stage,
and of the decision with the scoring deferred (`EngineConfig(defer_monitor=True)`: what the ROS node runs
unless its alarm action is `hold`; the scoring then runs after the chunk is out, `read_signals`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from policies import make_example_observation
from policies.shipped import resolve_policy
from runtime import Engine
from runtime.engine import EngineConfig
from runtime.monitor import read_monitor_manifest


def _at_n(monitor: Path, n: int, root: Path) -> Path:
    """The monitor's scorers with a signals-only manifest at N = n."""
    out = root / f"n{n}"
    shutil.copytree(monitor, out)
    manifest = dataclasses.replace(read_monitor_manifest(monitor), n=n, standardisation={}, detectors={}, main=None)
    (out / "manifest.json").write_text(json.dumps(manifest.to_dict(), indent=2))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default="default")
    parser.add_argument("--monitor", required=True, help="a monitor bundle of the policy (its scorers are timed)")
    parser.add_argument("--n", default="1,16")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    rounds = 20 if args.quick else 200
    policy = resolve_policy(args.policy)
    root = Path(tempfile.mkdtemp())
    rows = []
    for n in (int(v) for v in args.n.split(",")):
        plain = Engine(policy)
        watched = Engine(policy, monitor=_at_n(Path(args.monitor), n, root))
        deferred = Engine(policy, monitor=watched.monitor, config=EngineConfig(defer_monitor=True))
        observation = make_example_observation(plain.manifest, seed=0, image_size=(480, 640))
        track = watched.monitor.track(watched.manifest.action_dt)
        times = {"without": [], "with": [], "stage": [], "track": [], "deferred": [], "deferred_read": []}
        for i in range(rounds + 5):
            a = plain.infer(observation, n=n, seed=i)
            b = watched.infer(observation, n=n, seed=i)
            c = deferred.infer(observation, n=n, seed=i)
            c.read_signals()
            if c.signals != b.signals:
                raise SystemExit(f"N={n} seed {i}: the deferred signals differ from the inline ones")
            t0 = time.perf_counter()
            track.update(b)
            t_track = (time.perf_counter() - t0) * 1e3
            if i >= 5:  # warm-up
                times["without"].append(a.timings["total"])
                times["with"].append(b.timings["total"])
                times["stage"].append(b.timings["monitor"])
                times["track"].append(t_track)
                times["deferred"].append(c.timings["total"])
                times["deferred_read"].append(c.timings["monitor"])
        row = {"n": n, **{f"{k}_p50_ms": float(np.percentile(v, 50)) for k, v in times.items()},
               **{f"{k}_p99_ms": float(np.percentile(v, 99)) for k, v in times.items()}}
        row["ratio_with_over_without_p50"] = row["with_p50_ms"] / row["without_p50_ms"]
        row["ratio_deferred_over_without_p50"] = row["deferred_p50_ms"] / row["without_p50_ms"]
        rows.append(row)
    shutil.rmtree(root, ignore_errors=True)
    print(f"{'N':>3} {'without p50':>12} {'with p50':>9} {'ratio':>6} {'monitor stage p50/p99':>22} {'track p50':>10} "
          f"{'deferred p50':>13} {'ratio':>6} {'its scoring p50':>16}")
    for r in rows:
        print(f"{r['n']:>3} {r['without_p50_ms']:>12.2f} {r['with_p50_ms']:>9.2f} {r['ratio_with_over_without_p50']:>6.3f} "
              f"{r['stage_p50_ms']:>10.3f} / {r['stage_p99_ms']:<9.3f} {r['track_p50_ms']:>10.3f} "
              f"{r['deferred_p50_ms']:>13.2f} {r['ratio_deferred_over_without_p50']:>6.3f} {r['deferred_read_p50_ms']:>16.3f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"policy": policy, "monitor": args.monitor, "rounds": rounds,
                                               "rows": rows}, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
