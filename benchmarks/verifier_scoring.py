"""Scoring latency of each verifier kind at N candidates (one CPU thread), kNN up to 10^5 features.

    .venv/bin/python benchmarks/verifier_scoring.py --json build/verifier_scoring.json [--quick]

Verifiers are trained briefly on random 96-d features (training quality is not measured here: only the
cost of `score` inside a control step); consensus and value (the critic of `--kind value`, default size,
trained a few steps on a random decision log) also read N random 16x14 chunks. p50/p99 over interleaved
rounds.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from verifiers.base import score_candidates
from verifiers.features import FeatureSet
from verifiers.train import VerifierTrainConfig, train_verifier


def _value_verifier(tmp: Path, rng, f: int):
    """A value verifier of the default size, trained for a few steps on a random log (its cost is the point)."""
    from types import SimpleNamespace

    from verifiers.decision_log import DecisionLog
    from verifiers.value import ValueTrainConfig, train_value_verifier

    log = DecisionLog(tmp / "log", policy_fingerprint="p" * 64, feature_dim=f, chunk_length=16, action_dim=14,
                      action_mean=np.zeros(14), action_std=np.ones(14))
    for e in range(4):
        episode = log.episode("random", e)
        for d in range(5):
            decision = SimpleNamespace(features=rng.standard_normal((16, f)), scores=None, index=0, seed=d, n=16,
                                       candidates=rng.standard_normal((16, 16, 14)))
            episode.decision(decision, step=8 * d, state=np.zeros(14))
        episode.end(success=bool(e % 2))
    return train_value_verifier([tmp / "log"], tmp / "value", ValueTrainConfig(steps=5, holdout=0), log=lambda m: None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    f, rounds = 96, (30 if args.quick else 200)
    rng = np.random.default_rng(0)
    tmp = Path(tempfile.mkdtemp())
    arms = {}
    for kind, size, extra in [("cfn", 20_000, {}), ("rnd", 20_000, {}), ("knn", 20_000, {}),
                              ("knn", 100_000, {"max_points": 100_000}), ("consensus", 1_000, {})]:
        x = rng.standard_normal((size, f)).astype(np.float32)
        fs = FeatureSet(x, np.zeros(size, np.int64), np.arange(size), np.zeros(size, np.float32),
                        np.zeros(size, np.int64), "p" * 64, "d" * 64, 16)
        cfg = VerifierTrainConfig(kind=kind, epochs=1, **extra)
        name = kind if kind == "consensus" else f"{kind} ({size // 1000}k features)"
        arms[name] = train_verifier(fs, cfg, tmp / f"{kind}-{size}", log=lambda m: None)
    arms["value"] = _value_verifier(tmp, rng, f)
    query = rng.standard_normal((args.n, f)).astype(np.float32)
    # consensus reads the candidates' chunks (H=16, A=14 as the shipped policy's) next to the features.
    chunks = rng.standard_normal((args.n, 16, 14)).astype(np.float32)
    times = {name: [] for name in arms}
    for name, v in arms.items():
        score_candidates(v, query, chunks, seed=0)
    for _ in range(rounds):
        for name, v in arms.items():
            t0 = time.perf_counter()
            score_candidates(v, query, chunks, seed=0)
            times[name].append((time.perf_counter() - t0) * 1e3)
    rows = []
    print(f"{'verifier':<24} {'N':>3} {'p50 ms':>8} {'p99 ms':>8} {'bundle MB':>10}")
    for name, v in arms.items():
        size = (v.path / "verifier.onnx").stat().st_size / 1e6
        p50, p99 = np.percentile(times[name], [50, 99])
        rows.append({"verifier": name, "n": args.n, "p50_ms": p50, "p99_ms": p99, "bundle_mb": size})
        print(f"{name:<24} {args.n:>3} {p50:>8.3f} {p99:>8.3f} {size:>10.1f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"rows": rows, "rounds": rounds}, indent=2) + "\n")


if __name__ == "__main__":
    main()
