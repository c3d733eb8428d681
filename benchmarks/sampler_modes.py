"""Unrolled vs stepped denoising loops: is the step loop better inside the ONNX graph or in the runtime?

Exports the same weights both ways, then times `Engine.infer` for each N, interleaving the two engines
round by round so machine noise hits both alike. Prints a table and writes JSON.

    .venv/bin/python benchmarks/sampler_modes.py --json build/sampler_modes.json [--quick]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from policies import make_example_observation
from policies.config import make_config
from policies.export import export_bundle
from policies.models import build_policy
from runtime import Engine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=("flow", "diffusion"), default="flow")
    parser.add_argument("--size", default="default")
    parser.add_argument("--n", default="1,4,16,64")
    parser.add_argument("--iters", type=int, default=40)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    ns = [int(v) for v in args.n.split(",")]
    iters = 8 if args.quick else args.iters
    policy = build_policy(make_config(args.size, args.kind), seed=0)
    tmp = Path(tempfile.mkdtemp(prefix="sampler-modes-"))
    engines = {mode: Engine(export_bundle(policy, tmp / mode, sampler=mode)) for mode in ("unrolled", "stepped")}
    obs = make_example_observation(engines["unrolled"].manifest, seed=0)
    times = {(mode, n): [] for mode in engines for n in ns}
    for engine in engines.values():  # warm-up
        for n in ns:
            engine.infer(obs, n, seed=0)
    for _ in range(iters):
        for n in ns:
            for mode, engine in engines.items():
                t0 = time.perf_counter()
                engine.infer(obs, n, seed=0)
                times[(mode, n)].append((time.perf_counter() - t0) * 1e3)
    rows = []
    print(f"{'N':>4} {'unrolled p50 ms':>16} {'stepped p50 ms':>15} {'stepped/unrolled':>17}")
    for n in ns:
        u, s = np.median(times[("unrolled", n)]), np.median(times[("stepped", n)])
        rows.append({"n": n, "unrolled_p50_ms": u, "stepped_p50_ms": s, "ratio_stepped_over_unrolled": s / u})
        print(f"{n:>4} {u:>16.2f} {s:>15.2f} {s / u:>17.3f}")
    sizes = {mode: sum(e.bundle.file(f).stat().st_size for f in e.manifest.files) for mode, e in engines.items()}
    print("bundle bytes:", sizes)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"kind": args.kind, "size": args.size, "iters": iters, "rows": rows,
                                               "bundle_bytes": sizes}, indent=2) + "\n")


if __name__ == "__main__":
    main()
