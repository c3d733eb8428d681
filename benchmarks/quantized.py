"""What an int8 bundle (`taco quantize`) saves: its encoder and whole decisions against the float bundle's,
interleaved on one thread.

    .venv/bin/python benchmarks/quantized.py --float default --int8 B1[,B2...] --json build/quantized.json [--quick]

Prints p50/p99 of the encoder pass and of a decision at each N (no verifier) for the float bundle and each
int8 one, and each one's ratio float / int8 (above 1: the int8 is faster); the goal is 1.8x on the encoder.
The error each int8 bundle makes is in its own `quantization.json` (written by `taco quantize`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from policies import make_example_observation
from policies.shipped import resolve_bundle
from runtime import Engine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--float", dest="reference", default="default", help="the float bundle")
    parser.add_argument("--int8", required=True, help="comma-separated int8 bundles of it")
    parser.add_argument("--n", default="1,16")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    rounds = 10 if args.quick else 100
    names = {"float": resolve_bundle(args.reference), **{Path(p).name: p for p in args.int8.split(",") if p}}
    engines = {name: Engine(path) for name, path in names.items()}
    reference = engines["float"]
    observation = make_example_observation(reference.manifest, seed=0, image_size=(480, 640))
    feeds = reference.policy.preprocess(observation)
    ns = [int(v) for v in args.n.split(",")]
    times = {(name, what): [] for name in engines for what in ["encoder", *ns]}
    for i in range(rounds + 3):
        for name, engine in engines.items():
            started = time.perf_counter()
            engine.policy.encode(feeds)
            elapsed = {"encoder": time.perf_counter() - started}
            for n in ns:
                elapsed[n] = engine.infer(observation, n=n, seed=i).timings["total"] / 1e3
            if i >= 3:  # the first runs allocate
                for what, value in elapsed.items():
                    times[(name, what)].append(value * 1e3)
    rows = []
    for (name, what), values in times.items():
        base = np.percentile(times[("float", what)], 50)
        p50 = float(np.percentile(values, 50))
        rows.append({"bundle": name, "what": "encoder" if what == "encoder" else f"decision N={what}",
                     "p50_ms": p50, "p99_ms": float(np.percentile(values, 99)), "speedup": float(base / p50)})
    print(f"{'bundle':<28} {'what':<16} {'p50 ms':>8} {'p99 ms':>8} {'float/this':>10}")
    for r in rows:
        print(f"{r['bundle']:<28} {r['what']:<16} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['speedup']:>10.2f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        errors = {name: json.loads((Path(path) / "quantization.json").read_text())
                  for name, path in names.items() if name != "float" and (Path(path) / "quantization.json").is_file()}
        Path(args.json).write_text(json.dumps({"rows": rows, "rounds": rounds, "bundles": names,
                                               "quantization": errors}, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
