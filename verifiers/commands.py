"""`taco` subcommands of the verifiers part: TACO's feature search, and verifier training.

Registered by the command line (`taco.cli`); arguments become `verifiers.train.VerifierTrainConfig`.
Nothing beyond numpy is imported here, so `taco --help` lists these on a core-only install.
"""

from __future__ import annotations

import os

from policies.errors import SpecError
from verifiers.train import VERIFIER_KINDS


def cmd_collect_features(args) -> int:
    from verifiers.features import collect_features

    stride = max(args.stride, 25) if args.quick else args.stride
    features = collect_features(args.policy, args.dataset, k=args.k, stride=stride, seed=args.seed,
                                threads=args.threads)
    path = features.save(args.out)
    print(f"wrote {len(features.features)} features ({features.features.shape[1]}-d, K={args.k}) to {path}; "
          f"mean best distance {features.distance.mean():.3f} (normalised action units)")
    return 0


def cmd_wrap_verifier(args) -> int:
    from policies.bundle import load_policy_bundle
    from policies.shipped import resolve_policy
    from verifiers.bundle import load_verifier, write_verifier_bundle

    bundle = load_policy_bundle(resolve_policy(args.policy))
    graph = load_verifier(args.onnx)  # the signature is checked before anything is written
    f = bundle.manifest.feature_dim
    if graph.feature_dim is not None and graph.feature_dim != f:
        raise SpecError("verifier.feature_dim", f"{args.onnx} takes {graph.feature_dim}-d features, the policy "
                                                f"exports {f}-d")
    verifier = write_verifier_bundle(args.onnx, args.out, policy_fingerprint=bundle.fingerprint, feature_dim=f,
                                     name=args.name, provenance={"wrapped": os.path.basename(args.onnx)},
                                     overwrite=args.overwrite)
    print(f"wrote verifier {verifier.path} ({verifier.name}) bound to policy {bundle.fingerprint[:12]}")
    return 0


def _given(value, default):
    """A flag's value, or the config's default when the flag was not given (0 is a value)."""
    return default if value is None else value


def cmd_train_verifier(args) -> int:
    from verifiers.features import FeatureSet
    from verifiers.train import UNTRAINED_KINDS, VerifierTrainConfig, train_verifier, untrained_verifier

    if args.kind == "value":
        from verifiers.value import ValueTrainConfig, train_value_verifier

        if not args.logs:
            raise SpecError("train-verifier", "--kind value learns from --logs DIR [DIR ...] (from taco eval "
                                              "--log-decisions)")
        d = ValueTrainConfig()
        config = ValueTrainConfig(method=args.method, reward=args.reward, gamma=args.gamma,
                                  expectile=args.expectile, hidden=_given(args.hidden, d.hidden),
                                  layers=_given(args.blocks, d.layers),
                                  steps=200 if args.quick else _given(args.steps, d.steps), seed=args.seed,
                                  holdout=_given(args.holdout, d.holdout))
        verifier = train_value_verifier(args.logs, args.out, config, overwrite=args.overwrite)
        print(f"wrote value verifier {verifier.path} for policy {verifier.policy_fingerprint[:12]}")
        return 0
    if args.logs:
        raise SpecError("train-verifier", "--logs is for --kind value")
    if args.kind == "outcome":
        from verifiers.outcomes import OutcomeSet, OutcomeTrainConfig, train_outcome_verifier

        if args.outcomes is None:
            raise SpecError("train-verifier", "--kind outcome learns from --outcomes FILE (from taco collect-outcomes)")
        d = OutcomeTrainConfig()
        config = OutcomeTrainConfig(hidden=_given(args.hidden, d.hidden), blocks=_given(args.blocks, d.blocks),
                                    epochs=5 if args.quick else _given(args.epochs, d.epochs), seed=args.seed,
                                    use_chunks=not args.features_only)
        verifier = train_outcome_verifier(OutcomeSet.load(args.outcomes), args.out, config, overwrite=args.overwrite)
        print(f"wrote outcome verifier {verifier.path} for policy {verifier.policy_fingerprint[:12]}")
        return 0
    if args.outcomes is not None:
        raise SpecError("train-verifier", "--outcomes is for --kind outcome")
    untrained = args.policy is not None
    if (args.features is None) != untrained or (untrained and args.kind not in UNTRAINED_KINDS):
        raise SpecError("train-verifier", f"give --features (any kind) or, for --kind {'|'.join(UNTRAINED_KINDS)}, "
                                          "--policy BUNDLE")
    if untrained:
        from policies.shipped import resolve_policy

        verifier = untrained_verifier(args.kind, resolve_policy(args.policy), args.out, overwrite=args.overwrite,
                                      seed=args.seed)
        print(f"wrote {args.kind} verifier {verifier.path} for policy {verifier.policy_fingerprint[:12]}")
        return 0
    d = VerifierTrainConfig()
    config = VerifierTrainConfig(kind=args.kind, hidden=_given(args.hidden, d.hidden),
                                 blocks=_given(args.blocks, d.blocks),
                                 epochs=3 if args.quick else _given(args.epochs, d.epochs), k=args.knn_k,
                                 max_points=args.max_points, seed=args.seed)
    verifier = train_verifier(FeatureSet.load(args.features), config, args.out, overwrite=args.overwrite)
    print(f"wrote {args.kind} verifier {verifier.path} for policy {verifier.policy_fingerprint[:12]}")
    return 0


def cmd_label(args) -> int:
    from verifiers.decision_log import add_label

    if args.success == args.failure:
        raise SpecError("label", "give exactly one of --success and --failure")
    for key in args.episode:
        row = add_label(args.log, key, success=args.success, progress=args.progress)
        print(f"{args.log}: {key} labelled {'success' if row['success'] else 'failure'}"
              + (f", progress {row['progress']:g}" if "progress" in row else ""))
    return 0


def cmd_export_log(args) -> int:
    from verifiers.log_dataset import export_log

    summary = export_log(args.logs, args.out, fps=args.fps, progress=print)
    print(f"wrote LeRobotDataset {summary['out']}: {summary['episodes']} episodes, {summary['frames']} frames at "
          f"{summary['fps']} fps" + (f"; {len(summary['skipped'])} episodes without executed steps skipped"
                                     if summary["skipped"] else ""))
    return 0


def cmd_combine_verifiers(args) -> int:
    from verifiers.combine import combine_verifiers

    weights = [float(w) for w in args.weights.split(",")] if args.weights else None
    verifier = combine_verifiers(args.verifier, args.out, weights=weights, overwrite=args.overwrite)
    print(f"wrote combined verifier {verifier.path} ({len(args.verifier)} components) for policy "
          f"{verifier.policy_fingerprint[:12]}")
    return 0


def cmd_rebind_verifier(args) -> int:
    from policies.shipped import resolve_policy
    from verifiers.rebind import rebind_verifier
    from verifiers.shipped import resolve_verifier

    old = resolve_policy(args.from_policy)
    verifier = rebind_verifier(resolve_verifier(args.verifier, old), old, resolve_policy(args.policy), args.out,
                               observations=args.observations, n=args.n, atol=args.atol, overwrite=args.overwrite)
    diff = verifier.manifest.provenance["rebound"]["max_difference"]
    print(f"wrote {verifier.path}, bound to policy {verifier.policy_fingerprint[:12]}; on {args.observations} "
          f"observations x {args.n} candidates the policies differ by at most "
          + ", ".join(f"{v:.3g} ({k})" for k, v in diff.items()))
    return 0


def cmd_best_verifier(args) -> int:
    import json
    import shlex
    import sys

    from policies.shipped import resolve_policy
    from verifiers.best import describe_best, record_best

    policy = resolve_policy(args.policy)
    report = json.loads(open(args.compare).read())
    record = record_best(policy, report, alpha=args.alpha, command=shlex.join(["taco", *sys.argv[1:]]))
    if record is None:
        print(f"no verifier arm of {args.compare} beats the pooled N=1 at p < {args.alpha}; nothing recorded for "
              f"{policy} (an earlier record, if any, was removed)")
        return 1
    print(f"recorded for {policy}: best verifier {describe_best(record)}")
    return 0


def _train_verifier_needs(args) -> tuple[str, ...]:
    # The consensus and the random pick are graphs written with onnx alone: a robot-side install makes them.
    return ("verifiers",) if args.kind in ("consensus", "random") else ("train",)


def register(cli) -> None:
    p = cli.add("best-verifier", "record a policy's best verifier (from a taco compare report with a pooled N=1) "
                                 "in its bundle, for --verifier best", run=cmd_best_verifier)
    p.add_argument("--policy", required=True, help="'default' or a policy bundle")
    p.add_argument("--compare", required=True, help="compare.json of `taco compare --reference-streams 3`")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level against the pooled N=1")

    p = cli.add("collect-features", "TACO's high-fidelity feature search over a policy's training dataset",
                run=cmd_collect_features, extras=("train",))
    p.add_argument("--policy", required=True, help="policy bundle")
    p.add_argument("--dataset", required=True, help="the LeRobotDataset the policy was trained on")
    p.add_argument("--k", type=int, default=16, help="fixed noises tried per frame")
    p.add_argument("--stride", type=int, default=1, help="use every STRIDE-th frame")
    p.add_argument("--seed", type=int, default=0, help="seed of the K fixed noises")
    p.add_argument("--out", required=True, help="features file (.npz)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="ONNX Runtime intra-op threads (default: every core)")
    p.add_argument("--quick", action="store_true", help="every 25th frame at most (for tests)")

    p = cli.add("train-verifier", "train a verifier on collected features and write its bundle",
                run=cmd_train_verifier, extras=("train",), needs=_train_verifier_needs)
    p.add_argument("--kind", choices=(*VERIFIER_KINDS, "outcome", "value"), default="cfn")
    p.add_argument("--features", default=None, help="features file from taco collect-features")
    p.add_argument("--outcomes", default=None, help="--kind outcome: outcomes.npz from taco collect-outcomes")
    p.add_argument("--logs", nargs="+", default=None, metavar="DIR",
                   help="--kind value: decision logs from taco eval --log-decisions (labelled with taco label)")
    p.add_argument("--method", choices=("iql", "mc"), default="iql",
                   help="--kind value: implicit Q-learning, or Monte-Carlo return regression")
    p.add_argument("--reward", choices=("success", "progress", "stage"), default="success",
                   help="--kind value: the episode's success, its progress (stage or operator score), or that "
                        "progress paid as each chunk makes it (simulation)")
    p.add_argument("--gamma", type=float, default=0.97, help="--kind value: discount per decision")
    p.add_argument("--expectile", type=float, default=0.8, help="--kind value, iql: the expectile of V")
    p.add_argument("--steps", type=int, default=None, help="--kind value: gradient steps (default 20000)")
    p.add_argument("--holdout", type=float, default=None,
                   help="--kind value: share of episodes held out to report on first (default 0.2; 0: none)")
    p.add_argument("--features-only", action="store_true",
                   help="--kind outcome: score from the features alone, not the chunks too")
    p.add_argument("--policy", default=None,
                   help="consensus or random (they need no training data): the policy bundle to bind it to, or 'default'")
    p.add_argument("--out", required=True, help="verifier bundle folder")
    p.add_argument("--hidden", type=int, default=None, help="network width (default: 512; outcome, value 256)")
    p.add_argument("--blocks", type=int, default=None, help="residual blocks (default: 3; outcome 2; value: layers, 3)")
    p.add_argument("--epochs", type=int, default=None, help="(default: 40; outcome 60)")
    p.add_argument("--knn-k", type=int, default=5)
    p.add_argument("--max-points", type=int, default=100_000, help="kNN index size (random subset beyond)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quick", action="store_true", help="3 epochs; value: 200 steps (for tests)")

    p = cli.add("label", "mark logged episodes succeeded or failed (a robot's outcome, told by its operator), "
                         "for taco train-verifier --kind value", run=cmd_label)
    p.add_argument("log", help="decision log folder")
    p.add_argument("episode", nargs="+", help="episode keys (the file names under DIR/episodes, without .npz)")
    p.add_argument("--success", action="store_true")
    p.add_argument("--failure", action="store_true")
    p.add_argument("--progress", type=float, default=None, help="how far it got, in [0, 1] (optional)")

    p = cli.add("export-log", "a decision log's executed steps as a LeRobotDataset v3 (state, action, reward, "
                              "success, and which decision and candidate each step came from)", run=cmd_export_log,
                extras=("train",))
    p.add_argument("logs", nargs="+", help="decision log folders (of one policy)")
    p.add_argument("--out", required=True, help="new dataset folder")
    p.add_argument("--fps", type=float, default=None,
                   help="frame rate (default: 1 / the policy's action period, recorded in the log)")

    p = cli.add("wrap-verifier", "bind an ONNX graph with the verifier signature (features[N, F] -> scores[N]) "
                                 "to a policy, as a verifier bundle", run=cmd_wrap_verifier)
    p.add_argument("onnx", help="the .onnx file")
    p.add_argument("--policy", required=True, help="the policy bundle whose features it scores, or 'default'")
    p.add_argument("--out", required=True, help="verifier bundle folder")
    p.add_argument("--name", default=None, help="its name (default: the folder's)")
    p.add_argument("--overwrite", action="store_true")

    p = cli.add("rebind-verifier", "bind a verifier to a re-export of its policy (e.g. with real-time chunking "
                                   "inputs), once both give the same candidates and features",
                run=cmd_rebind_verifier)
    p.add_argument("--verifier", required=True, help="verifier bundle, or a shipped name of --from-policy's")
    p.add_argument("--from-policy", required=True, help="the policy the verifier is bound to")
    p.add_argument("--policy", required=True, help="the re-exported policy")
    p.add_argument("--out", required=True, help="verifier bundle folder")
    p.add_argument("--observations", type=int, default=8, help="random observations compared")
    p.add_argument("--n", type=int, default=16, help="candidates per observation")
    p.add_argument("--atol", type=float, default=0.0, help="largest difference allowed (default: bit for bit)")
    p.add_argument("--overwrite", action="store_true")

    p = cli.add("combine-verifiers", "one verifier graph from several: the weighted sum of their scores, each "
                                     "standardised over the N candidates", run=cmd_combine_verifiers, extras=("verifiers",))
    p.add_argument("--verifier", action="append", required=True, help="a verifier bundle, repeated (two or more)")
    p.add_argument("--weights", default=None, help="comma-separated, one per --verifier (default: all 1)")
    p.add_argument("--out", required=True, help="verifier bundle folder")
    p.add_argument("--overwrite", action="store_true")
