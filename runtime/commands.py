"""`taco` subcommands of the runtime part: validate and describe a bundle, benchmark the engine.

Registered by the command line (`taco.cli`); arguments become `runtime.bench.BenchConfig`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from policies.pruning import DEFAULT_PRUNE


def candidate_counts(text: str) -> tuple[int, ...]:
    """Comma-separated candidate counts, each >= 1."""
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"candidate counts must be >= 1, got {text!r}")
    return values


def cmd_inspect(args) -> int:
    from policies import load_policy_bundle
    from policies.describe import describe_policy, graph_signatures
    from policies.schema import read_manifest
    from policies.shipped import resolve_bundle
    from runtime.sessions import SessionConfig, make_session
    from verifiers import load_verifier

    session = lambda path: make_session(path, SessionConfig())  # noqa: E731 (the engine's default settings)
    path = Path(resolve_bundle(args.bundle))
    kind = read_manifest(path).get("kind") if path.is_dir() else None
    if kind == "monitor":
        from runtime.monitor import load_monitor

        monitor = load_monitor(path, session)  # checks its scorers against their recorded hashes
        m = monitor.manifest
        if args.json:
            print(json.dumps(m.to_dict(), indent=2))
            return 0
        print(f"{'monitor':<18} {path}\n{'policy_fingerprint':<18} {m.policy_fingerprint}\n{'n':<18} {m.n}\n"
              f"{'verifier':<18} {None if m.verifier is None else m.verifier.get('name')}\n"
              f"{'scorers':<18} {', '.join(f'{r}: {s.name}' for r, s in monitor.scorers.items()) or 'none'}\n"
              f"{'signals':<18} {', '.join(m.signals)}")
        for name, d in m.detectors.items():
            mark = " (main)" if name == m.main else ""
            if d.kind == "any":
                each = ", ".join(f"{s} (slack {k:g}, scale {c:.4g})" for s, k, c in zip(d.signals, d.slacks, d.scales))
                print(f"detector {name}{mark}: any of {each}, threshold {d.threshold:.4g}, alpha {d.alpha:g}")
            else:
                print(f"detector {name}{mark}: {d.kind} of {', '.join(d.signals)}, slack {d.slack:g}, threshold "
                      f"{d.threshold:.4g}, alpha {d.alpha:g}")
        if not m.detectors:
            print("uncalibrated: signals only, no alarm")
        return 0
    is_verifier = path.suffix == ".onnx" or kind == "verifier"
    if is_verifier:
        v = load_verifier(path, session)
        info = {"verifier": str(path), "name": v.name, "feature_dim": v.feature_dim,
                "policy_fingerprint": v.policy_fingerprint,
                "type": v.manifest.type if v.manifest else "onnx (bare file)",
                "provenance": v.manifest.provenance if v.manifest else {}}
        if args.json:
            print(json.dumps(info, indent=2))
        else:
            for key, value in info.items():
                print(f"{key:<18} {value}")
            folder, files = (path.parent, [path.name]) if path.is_file() else (path, ["verifier.onnx"])
            print("\n".join(graph_signatures(folder, files, session)[0]))
        return 0
    bundle = load_policy_bundle(path)
    text = describe_policy(bundle, session)  # validates the graphs against the manifest too
    if args.json:
        print(json.dumps({"path": str(bundle.path), "fingerprint": bundle.fingerprint, **bundle.manifest.to_dict()},
                         indent=2))
    else:
        print(text)
    return 0


def cmd_bench(args) -> int:
    from runtime.bench import BenchConfig, format_table, run_bench, write_report

    iters, warmup = (args.iters or 10, 2) if args.quick else (args.iters or 50, 5)
    config = BenchConfig(ns=args.n, iters=iters, warmup=warmup, bundle=args.bundle, kind=args.kind, size=args.size,
                         provider=args.provider, threads=args.threads, naive=not args.no_naive,
                         lerobot=args.lerobot, tokenizer=args.tokenizer,
                         prunes=tuple(p for p in args.prune.split(",") if p))
    report = run_bench(config, progress=lambda msg: print(msg, file=sys.stderr))
    print(format_table(report))
    if args.json:
        write_report(report, args.json)
        print(f"wrote {args.json}")
    return 0


def cmd_calibrate_adaptive(args) -> int:
    from runtime.adaptive import calibrate_level

    result = calibrate_level(args.logs, args.first, args.stop)
    same = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    print(f"--adaptive {result['adaptive']}: stops {result['stop_share']:.0%} of {result['decisions']} decisions "
          f"({result['episodes']} episodes) after {args.first} of {result['n']} candidates, "
          f"{result['expected_candidates']:.1f} drawn on average")
    print(f"the first round held the verifier's pick of all {result['n']}: {same(result['same_pick_when_stopped'])} "
          f"of the decisions it stops, {same(result['same_pick_otherwise'])} of the others")
    print("first-round spread quantiles: " + ", ".join(f"{q}: {v:.4f}" for q, v in result["spread_quantiles"].items()))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def _bench_needs(args) -> tuple[str, ...]:
    return ("train",) if args.bundle is None or args.lerobot else ("verifiers",)


def register(cli) -> None:
    p = cli.add("inspect", "validate a policy or verifier bundle (checksums, graphs) and print it", run=cmd_inspect)
    p.add_argument("bundle", help="a bundle folder, a shipped policy's name (default, flow, diffusion) or a shipped "
                                   "verifier's (flow-cfn, flow-combined, ...)")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")

    # The benchmark's verifier is an ONNX graph built with `onnx`; without --bundle the policy is built and the
    # baseline runs in PyTorch (train), with one only onnx is needed (a robot-side install).
    p = cli.add("bench", "per-stage latency of the runtime vs a naive PyTorch baseline", run=cmd_bench,
                extras=("train",), needs=_bench_needs)
    p.add_argument("--bundle", default=None, help="policy bundle (default: a fresh default-size flow policy)")
    p.add_argument("--kind", choices=("flow", "diffusion"), default="flow")
    p.add_argument("--size", choices=("default", "tiny"), default="default")
    p.add_argument("--n", type=candidate_counts, default=(1, 4, 16, 64), help="candidate counts, e.g. 1,4,16,64")
    p.add_argument("--iters", type=int, default=None, help="timed rounds (default 50, 10 with --quick)")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime and torch intra-op threads")
    p.add_argument("--provider", choices=("cpu", "cuda", "tensorrt", "auto"), default="cpu")
    p.add_argument("--no-naive", action="store_true", help="skip the PyTorch baseline")
    p.add_argument("--lerobot", default=None, metavar="CHECKPOINT",
                   help="with --bundle imported from it: LeRobot's own inference as the baselines")
    p.add_argument("--tokenizer", default=None, metavar="DIR", help="as given to taco import lerobot")
    p.add_argument("--prune", default=str(DEFAULT_PRUNE), metavar="K:M[,K:M...]",
                   help=f"pruned settings measured with the verifier, flow policies (default {DEFAULT_PRUNE}; '' for none)")
    p.add_argument("--json", default=None, help="write every row and the summary to this file")
    p.add_argument("--quick", action="store_true", help="fewer rounds: under a minute")

    p = cli.add("calibrate-adaptive", "the adaptive-N level from decision logs of best-of-N (taco eval "
                                      "--log-decisions): the first-round spread that stops a given share of decisions",
                run=cmd_calibrate_adaptive)
    p.add_argument("--logs", action="append", required=True, help="decision log folder (repeat for several)")
    p.add_argument("--first", type=int, default=4, help="candidates of the first round")
    p.add_argument("--stop", type=float, default=0.5, help="share of decisions to stop after the first round")
    p.add_argument("--json", default=None, help="write the level and its statistics here")
