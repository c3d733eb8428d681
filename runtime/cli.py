"""The `taco` command line: one argparse layer over typed configs; heavy imports happen per command."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from policies.errors import SpecError
from runtime.sessions import ProviderError


def _int_list(text: str) -> tuple[int, ...]:
    """Comma-separated positive integers ('' for none)."""
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return values


def _ns(text: str) -> tuple[int, ...]:
    values = _int_list(text)
    if not values:
        raise argparse.ArgumentTypeError(f"candidate counts must be >= 1, got {text!r}")
    return values


def _tasks(text: str) -> tuple[str, ...]:
    """'all' or comma-separated task names."""
    from sim.tasks import TASKS

    return tuple(sorted(TASKS)) if text == "all" else tuple(t for t in text.split(",") if t)


def cmd_export(args) -> int:
    from policies.config import make_config
    from policies.export import export_bundle
    from policies.models import build_policy

    cfg = make_config(args.size, args.kind)
    policy = build_policy(cfg, seed=args.seed)
    bundle = export_bundle(policy, args.out, sampler=args.sampler, name=args.name, overwrite=args.overwrite,
                           provenance={"weights": f"random init, seed {args.seed} (untrained)"})
    print(f"wrote {bundle.manifest.kind} bundle {bundle.path} (fingerprint {bundle.fingerprint[:16]})")
    print(describe_policy(bundle))
    return 0


def describe_policy(bundle) -> str:
    m = bundle.manifest
    lines = [
        f"policy bundle   {bundle.path}",
        f"name            {m.name}",
        f"kind            {m.kind} ({m.num_steps} steps, sampler {m.sampler})",
        f"fingerprint     {bundle.fingerprint}",
        "cameras         " + ", ".join(f"{c.name} {c.height}x{c.width}" for c in m.cameras),
        f"state           {m.state_dim}: {', '.join(m.state_names)}",
        f"action          {m.action_dim} x chunk {m.chunk_length} (dt {m.action_dt} s)",
        f"feature         {m.feature_dim}-d: {m.feature_description}",
        f"tokenizer       {m.tokenizer.to_dict()}",
    ]
    for name, digest in sorted(m.files.items()):
        size = bundle.file(name).stat().st_size
        lines.append(f"file            {name:<14} {size / 1e6:7.2f} MB  sha256 {digest[:16]}... ok")
    lines += _signatures(bundle.path, sorted(m.files), m)
    lines.append("graphs          match the manifest (names, dtypes, sizes, steps)")
    for key, value in m.provenance.items():
        lines.append(f"provenance      {key}: {value}")
    return "\n".join(lines)


def _signatures(folder: Path, files, manifest=None) -> list[str]:
    from runtime.sessions import SessionConfig, make_session

    lines, sessions = [], {}
    for name in files:
        session = sessions[name] = make_session(Path(folder) / name, SessionConfig())
        ins = ", ".join(f"{i.name}{i.shape}" for i in session.get_inputs())
        outs = ", ".join(f"{o.name}{o.shape}" for o in session.get_outputs())
        lines.append(f"graph           {name}: ({ins}) -> ({outs})")
    if manifest is not None:
        from runtime.engine import check_graph_signatures

        check_graph_signatures(manifest, sessions["encoder.onnx"], sessions[manifest.sampler_file])
    return lines


def cmd_inspect(args) -> int:
    from policies import load_policy_bundle
    from policies.schema import read_manifest
    from verifiers import load_verifier

    path = Path(args.bundle)
    is_verifier = path.suffix == ".onnx" or (path.is_dir() and read_manifest(path).get("kind") == "verifier")
    if is_verifier:
        v = load_verifier(path)
        info = {"verifier": str(path), "name": v.name, "feature_dim": v.feature_dim,
                "policy_fingerprint": v.policy_fingerprint,
                "type": v.manifest.type if v.manifest else "onnx (bare file)",
                "provenance": v.manifest.provenance if v.manifest else {}}
        if args.json:
            print(json.dumps(info, indent=2))
        else:
            for key, value in info.items():
                print(f"{key:<18} {value}")
            print("\n".join(_signatures(path.parent if path.is_file() else path,
                                        [path.name] if path.is_file() else ["verifier.onnx"])))
        return 0
    bundle = load_policy_bundle(path)
    text = describe_policy(bundle)  # validates the graphs against the manifest too
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
                         provider=args.provider, threads=args.threads, naive=not args.no_naive)
    report = run_bench(config, progress=lambda msg: print(msg, file=sys.stderr))
    print(format_table(report))
    if args.json:
        write_report(report, args.json)
        print(f"wrote {args.json}")
    return 0


def cmd_eval(args) -> int:
    from sim.evaluate import EvalConfig, format_summary, run_suite

    tasks = _tasks(args.task)
    episodes = min(args.episodes, 2) if args.quick else args.episodes
    config = EvalConfig(policy=args.policy, verifier=args.verifier, n=args.n, tasks=tasks, episodes=episodes,
                        seed=args.seed, execute=args.execute, workers=args.workers, backend=args.backend,
                        max_steps=args.max_steps, expert_mode=args.mode, action_noise=args.action_noise,
                        noise_stream=args.noise_stream, report=args.report, video_episodes=args.video_episodes)
    report = run_suite(config, json_path=args.json)
    print(format_summary(report))
    if args.json:
        print(f"wrote {args.json}")
    if args.report:
        print(f"wrote the report to {args.report} (index.md, plots, videos)")
    return 0


def cmd_record(args) -> int:
    from sim.record import RecordConfig, record
    from sim.tasks import TASKS

    tasks = _tasks(args.task)
    for task in tasks:
        if task not in TASKS:
            raise ValueError(f"task: unknown {task!r} (registered: {', '.join(sorted(TASKS))})")
    config = RecordConfig(tasks=tasks, episodes=2 if args.quick else args.episodes, out=args.out, seed=args.seed,
                          keep_failures=args.keep_failures, mode=args.mode, action_noise=args.action_noise,
                          perturb=args.perturb)
    summary = record(config, progress=not args.no_progress)
    for task, s in summary.items():
        modes = ", ".join(f"{m} {c}" for m, c in sorted(s["modes"].items()))
        print(f"{task:<16} {s['episodes']} episodes ({s['successes']} successful), {s['frames']} frames; modes: {modes}")
    print(f"dataset: {args.out} (LeRobotDataset v3; per-episode seed, mode and success in meta/taco_episodes.jsonl)")
    return 0


def cmd_train_policy(args) -> int:
    from policies.train import TrainConfig, export_checkpoint, train_policy

    if args.export_checkpoint:
        bundle = export_checkpoint(args.export_checkpoint, args.out, sampler=args.sampler)
        print(f"exported {bundle.manifest.provenance['weights']} to {bundle.path}")
        return 0
    if args.dataset is None:
        raise ValueError("dataset: --dataset is required to train (or pass --export-checkpoint)")
    steps = args.steps if not args.quick else min(args.steps, 30)
    config = TrainConfig(dataset=args.dataset, out=args.out, kind=args.kind, size=args.size, steps=steps,
                         batch_size=args.batch_size if not args.quick else min(args.batch_size, 8), lr=args.lr,
                         val_every=args.val_every if not args.quick else 10,
                         checkpoint_every=args.checkpoint_every if not args.quick else 10, seed=args.seed,
                         threads=args.threads, sampler=args.sampler, warmup_steps=args.warmup,
                         init_from=args.init_from, keypoints=args.keypoints, future_steps=args.future_steps,
                         # Unset recipe flags keep TrainConfig's defaults (the recipe the shipped policy used).
                         **{key: getattr(args, key) for key in ("shift", "state_noise", "start_fraction",
                                                                 "start_frames") if getattr(args, key) is not None})
    path = train_policy(config)
    print(f"wrote policy bundle {path}")
    return 0


def cmd_collect_features(args) -> int:
    from verifiers.features import collect_features

    stride = max(args.stride, 25) if args.quick else args.stride
    features = collect_features(args.policy, args.dataset, k=args.k, stride=stride, seed=args.seed)
    path = features.save(args.out)
    print(f"wrote {len(features.features)} features ({features.features.shape[1]}-d, K={args.k}) to {path}; "
          f"mean best distance {features.distance.mean():.3f} (normalised action units)")
    return 0


def cmd_train_verifier(args) -> int:
    from verifiers.features import FeatureSet
    from verifiers.train import UNTRAINED_KINDS, VerifierTrainConfig, train_verifier, untrained_verifier

    untrained = args.policy is not None
    if (args.features is None) != untrained or (untrained and args.kind not in UNTRAINED_KINDS):
        raise SpecError("train-verifier", f"give --features (any kind) or, for --kind {'|'.join(UNTRAINED_KINDS)}, "
                                          "--policy BUNDLE")
    if untrained:
        from runtime.defaults import resolve_policy

        verifier = untrained_verifier(args.kind, resolve_policy(args.policy), args.out, overwrite=args.overwrite,
                                      seed=args.seed)
        print(f"wrote {args.kind} verifier {verifier.path} for policy {verifier.policy_fingerprint[:12]}")
        return 0
    config = VerifierTrainConfig(kind=args.kind, hidden=args.hidden, blocks=args.blocks, epochs=3 if args.quick
                                 else args.epochs, k=args.knn_k, max_points=args.max_points, seed=args.seed)
    verifier = train_verifier(FeatureSet.load(args.features), config, args.out, overwrite=args.overwrite)
    print(f"wrote {args.kind} verifier {verifier.path} for policy {verifier.policy_fingerprint[:12]}")
    return 0


def cmd_artifacts(args) -> int:
    from sim.pipeline import ArtifactsConfig, build_artifacts

    tasks = _tasks(args.task)
    if args.quick:
        config = ArtifactsConfig(out=args.out, tasks=tasks, episodes=1, recovery_episodes=1, perturb=args.perturb,
                                 kinds=tuple(args.kinds.split(",")), size="tiny", steps=20, batch_size=8, k=4,
                                 stride=20, verifier_epochs=2)
    else:
        config = ArtifactsConfig(out=args.out, tasks=tasks, episodes=args.episodes,
                                 recovery_episodes=args.recovery_episodes, perturb=args.perturb,
                                 kinds=tuple(args.kinds.split(",")), steps=args.steps, k=args.k, stride=args.stride)
    built = build_artifacts(config)
    for name, path in built.items():
        size = sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 1e6
        print(f"{name:<22} {path}  ({size:.1f} MB)")
    return 0


def cmd_compare(args) -> int:
    from sim.compare import Arm, compare, format_compare
    from sim.evaluate import EvalConfig

    tasks = _tasks(args.task)
    arms = [Arm.parse(a) for a in args.arm]
    base = EvalConfig(policy=args.policy, tasks=tasks, episodes=min(args.episodes, 2) if args.quick else args.episodes,
                      seed=args.seed, execute=args.execute, workers=args.workers, max_steps=args.max_steps)
    report = compare(args.policy, arms, base, args.out, reference_streams=args.reference_streams)
    print(format_compare(report))
    print(f"wrote {args.out}/compare.json")
    return 0


def cmd_list(args) -> int:
    from policies.registry import policy_kinds
    from verifiers.registry import verifier_kinds

    print("policy kinds:")
    for kind in policy_kinds().values():
        print(f"  {kind.name:<12} {kind.description}")
    print("verifier kinds:")
    for kind in verifier_kinds().values():
        print(f"  {kind.name:<12} {kind.description}  [{kind.source}]")
    try:
        from sim.tasks import TASKS
    except ImportError:
        print("tasks: (install the sim extra)")
    else:
        print("tasks:")
        for task in TASKS.values():
            print(f"  {task.name:<14} {task.instruction}")
    return 0


def cmd_demo(args) -> int:
    if args.example:
        from runtime.demo import run_demo

        return run_demo(out=Path(args.out or "build/example"), n=args.n, quick=args.quick, seed=args.seed % 1000)
    from sim.compare import format_compare
    from sim.demo import DemoConfig, run_demo_suite

    config = DemoConfig(policy=args.policy, verifier=args.verifier, n=args.n, tasks=_tasks(args.task),
                        episodes=2 if args.quick else args.episodes, seed=args.seed, workers=args.workers,
                        max_steps=150 if args.quick else None, out=args.out or "build/demo")
    report = run_demo_suite(config)
    print(format_compare(report))
    print(f"report: {Path(config.out) / 'index.md'}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from verifiers.train import VERIFIER_KINDS

    parser = argparse.ArgumentParser(prog="taco", description=(
        "Verified policy runtime: best-of-N sampling of ONNX flow/diffusion policies scored by a verifier."))
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("export", help="export a policy to a bundle (manifest.json + ONNX graphs)")
    p.add_argument("--kind", choices=("flow", "diffusion"), default="flow")
    p.add_argument("--size", choices=("default", "tiny"), default="default")
    p.add_argument("--sampler", choices=("unrolled", "stepped"), default="unrolled",
                   help="unrolled: all denoising steps in one graph; stepped: the runtime loops over a step graph")
    p.add_argument("--seed", type=int, default=0, help="seed of the weight initialisation")
    p.add_argument("--name", default=None)
    p.add_argument("--out", required=True, help="bundle folder to write")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("inspect", help="validate a policy or verifier bundle and print it")
    p.add_argument("bundle")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("bench", help="per-stage latency of the runtime vs a naive PyTorch baseline")
    p.add_argument("--bundle", default=None, help="policy bundle (default: a fresh default-size flow policy)")
    p.add_argument("--kind", choices=("flow", "diffusion"), default="flow")
    p.add_argument("--size", choices=("default", "tiny"), default="default")
    p.add_argument("--n", type=_ns, default=(1, 4, 16, 64), help="candidate counts, e.g. 1,4,16,64")
    p.add_argument("--iters", type=int, default=None, help="timed rounds (default 50, 10 with --quick)")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime and torch intra-op threads")
    p.add_argument("--provider", choices=("cpu", "cuda", "tensorrt", "auto"), default="cpu")
    p.add_argument("--no-naive", action="store_true", help="skip the PyTorch baseline")
    p.add_argument("--json", default=None, help="write every row and the summary to this file")
    p.add_argument("--quick", action="store_true", help="fewer rounds: under a minute")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("eval", help="run an evaluation suite in simulation (the sim extra)")
    p.add_argument("--policy", required=True,
                   help="'scripted' (the tasks' experts), 'default' (the shipped policy) or a policy bundle")
    p.add_argument("--verifier", default=None,
                   help="none|random|cfn|rnd|knn|consensus (the verifiers shipped for the policy) or a bundle / ONNX file")
    p.add_argument("--n", type=int, default=1, help="candidates per replanning step")
    p.add_argument("--task", default="all", help="task name, comma-separated names, or 'all'")
    p.add_argument("--episodes", type=int, default=20, help="episodes per task (episode i uses seed S+i)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--execute", type=int, default=8, help="actions executed per chunk before replanning")
    p.add_argument("--noise-stream", type=int, default=0,
                   help="policies only: which stream of sampling noises the seeds open (another draw of the same policy)")
    p.add_argument("--max-steps", type=int, default=None, help="steps per episode (default: the task's)")
    p.add_argument("--mode", default=None, help="scripted only: force an expert mode (default: the mix)")
    p.add_argument("--action-noise", type=float, default=None, help="scripted only: joint noise std, rad")
    p.add_argument("--json", default=None, help="write per-episode records and the summary here")
    p.add_argument("--report", default=None, help="write plots and videos to this folder")
    p.add_argument("--video-episodes", type=int, default=1, help="episodes per task filmed for the report")
    p.add_argument("--backend", choices=("local", "ray"), default="local")
    p.add_argument("--workers", type=int, default=1, help="parallel worker processes")
    p.add_argument("--quick", action="store_true", help="at most 2 episodes per task (for tests)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("record", help="record scripted-expert episodes as a LeRobotDataset v3 (sim + train extras)")
    p.add_argument("--task", required=True, help="task name, comma-separated names, or 'all'")
    p.add_argument("--episodes", type=int, required=True, help="episodes to keep per task")
    p.add_argument("--out", required=True, help="dataset folder; an existing one is resumed")
    p.add_argument("--seed", type=int, default=0, help="first episode seed")
    p.add_argument("--mode", default=None, help="force one expert mode (default: the configured mix)")
    p.add_argument("--action-noise", type=float, default=None, help="expert joint noise std, rad")
    p.add_argument("--keep-failures", action="store_true", help="keep episodes the expert failed (marked)")
    p.add_argument("--perturb", type=float, default=0.0,
                   help="DART-style: perturb executed joints by this std (rad), record the unperturbed actions")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--quick", action="store_true", help="2 episodes per task (for tests)")
    p.set_defaults(func=cmd_record)

    p = sub.add_parser("train-policy", help="train a policy on a LeRobotDataset and export a bundle (train extra)")
    p.add_argument("--dataset", default=None, help="LeRobotDataset v3 folder (e.g. from taco record)")
    p.add_argument("--kind", choices=("flow", "diffusion"), default="flow")
    p.add_argument("--size", choices=("default", "tiny"), default="default")
    p.add_argument("--out", required=True, help="bundle folder; checkpoints go to OUT.ckpt/ (rerun to resume)")
    p.add_argument("--steps", type=int, default=20_000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--warmup", type=int, default=500, help="linear learning-rate warm-up steps")
    p.add_argument("--init-from", default=None, metavar="CKPT",
                   help="start from this checkpoint's EMA weights (fine-tune), e.g. an earlier run's OUT.ckpt/last.pt")
    p.add_argument("--keypoints", type=int, default=None,
                   help="spatial-softmax keypoints per camera (default: the size preset's; 0: none)")
    p.add_argument("--start-fraction", type=float, default=None,
                   help="fraction of each batch drawn from the episodes' first --start-frames frames, where only "
                        "the camera tells episodes apart")
    p.add_argument("--start-frames", type=int, default=None)
    p.add_argument("--future-steps", type=_int_list, default=None, metavar="K,K,...",
                   help="auxiliary loss: predict the robot state these control steps ahead from the encoder "
                        "(default: the size preset's; '' for none)")
    p.add_argument("--shift", type=int, default=None, help="max random image shift in pixels (augmentation)")
    p.add_argument("--state-noise", type=float, default=None,
                   help="std of Gaussian noise on the normalised state input, so the policy must read the camera "
                        "instead of continuing the arm's motion")
    p.add_argument("--val-every", type=int, default=500)
    p.add_argument("--checkpoint-every", type=int, default=1000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sampler", choices=("unrolled", "stepped"), default="unrolled")
    p.add_argument("--export-checkpoint", default=None, metavar="CKPT",
                   help="only export the EMA weights of this checkpoint (e.g. OUT.ckpt/last.pt) to --out")
    p.add_argument("--quick", action="store_true", help="30 steps of batch 8 (for tests)")
    p.set_defaults(func=cmd_train_policy)

    p = sub.add_parser("collect-features", help="TACO's high-fidelity feature search over a dataset")
    p.add_argument("--policy", required=True, help="policy bundle")
    p.add_argument("--dataset", required=True, help="the LeRobotDataset the policy was trained on")
    p.add_argument("--k", type=int, default=16, help="fixed noises tried per frame")
    p.add_argument("--stride", type=int, default=1, help="use every STRIDE-th frame")
    p.add_argument("--seed", type=int, default=0, help="seed of the K fixed noises")
    p.add_argument("--out", required=True, help="features file (.npz)")
    p.add_argument("--quick", action="store_true", help="every 25th frame at most (for tests)")
    p.set_defaults(func=cmd_collect_features)

    p = sub.add_parser("train-verifier", help="train a verifier on collected features and write its bundle")
    p.add_argument("--kind", choices=VERIFIER_KINDS, default="cfn")
    p.add_argument("--features", default=None, help="features file from taco collect-features")
    p.add_argument("--policy", default=None,
                   help="consensus or random (they need no training data): the policy bundle to bind it to, or 'default'")
    p.add_argument("--out", required=True, help="verifier bundle folder")
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--blocks", type=int, default=3)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--knn-k", type=int, default=5)
    p.add_argument("--max-points", type=int, default=100_000, help="kNN index size (random subset beyond)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quick", action="store_true", help="3 epochs (for tests)")
    p.set_defaults(func=cmd_train_verifier)

    p = sub.add_parser("artifacts", help="record (clean + DART recovery episodes) -> train policies -> features -> "
                                         "verifiers (rerun to resume)")
    p.add_argument("--out", default="artifacts")
    p.add_argument("--task", default="transfer_cube", help="task or comma-separated tasks to record and train on")
    p.add_argument("--episodes", type=int, default=100, help="scripted episodes per task")
    p.add_argument("--recovery-episodes", type=int, default=200, help="DART-perturbed episodes per task, added")
    p.add_argument("--perturb", type=float, default=0.1,
                   help="perturbation std of the recovery episodes in free motion, rad (a tenth while grasping)")
    p.add_argument("--kinds", default="flow,diffusion", help="policy kinds to train, comma-separated")
    p.add_argument("--steps", type=int, default=5000, help="training steps per policy")
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--stride", type=int, default=4)
    p.add_argument("--quick", action="store_true", help="one clean + one recovery episode per task, tiny models")
    p.set_defaults(func=cmd_artifacts)

    p = sub.add_parser("compare", help="several verifier arms on the same episodes, with paired statistics")
    p.add_argument("--policy", required=True)
    p.add_argument("--arm", action="append", required=True,
                   help="NAME:N[@STREAM][:VERIFIER], repeated; the first is the reference (e.g. none:1; "
                        "none2:1@2:none is N=1 on noise stream 2)")
    p.add_argument("--task", default="all")
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--execute", type=int, default=8)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--reference-streams", type=int, default=1, metavar="K",
                   help="also run the reference on noise streams 1..K-1 (same seeds), pool them, and test every "
                        "arm against the pooled rate too (one stream of a noisy policy can sit far off its mean)")
    p.add_argument("--out", required=True, help="folder for per-arm JSON (resumable) and compare.json")
    p.add_argument("--quick", action="store_true")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("list", help="list registered policy kinds, verifier kinds and tasks")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("ros", help="start the ROS 2 nodes without `launch`: sim, robot, or a recorder (ros extra)")
    p.add_argument("target", choices=["sim", "robot", "record"],
                   help="sim: sim node + policy node; robot: policy node for a running robot; record: recorder only")
    p.add_argument("--policy", default="default", help="policy bundle path or 'default'")
    p.add_argument("--verifier", default="none", help="none|random|cfn|rnd|knn|consensus or a verifier bundle path")
    p.add_argument("--n", type=int, default=16, help="candidates per step")
    p.add_argument("--execute", type=int, default=8, help="actions executed per chunk before replanning")
    p.add_argument("--sink", default="interbotix", choices=["interbotix", "forward", "jtc"])
    p.add_argument("--profile", default="aloha_viperx")
    p.add_argument("--task", default="transfer_cube", help="sim task (sim) or instruction (robot)")
    p.add_argument("--episodes", type=int, default=0, help="sim: stop after this many episodes (0: run until Ctrl-C)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--record", default=None, metavar="PATH.mcap", help="also record the run to MCAP")
    p.add_argument("--discovery", default="LOCALHOST", choices=["LOCALHOST", "SUBNET", "SYSTEM_DEFAULT", "OFF"],
                   help="ROS_AUTOMATIC_DISCOVERY_RANGE when not already set (default: this host only)")
    p.set_defaults(func=cmd_ros)

    p = sub.add_parser("demo", help="the main job: the sim suite on the shipped default policy with and without "
                                    "its verifier, table + report (sim extra)")
    p.add_argument("--policy", default="default", help="policy bundle path or 'default'")
    p.add_argument("--verifier", default="cfn", help="the verifier arm: a shipped name or a bundle path")
    p.add_argument("--n", type=int, default=16, help="candidates per step in the verifier arm")
    p.add_argument("--task", default="transfer_cube", help="task name(s), comma-separated")
    p.add_argument("--episodes", type=int, default=20, help="episodes per task per arm (same seeds in both)")
    p.add_argument("--seed", type=int, default=100_000, help="first evaluation seed")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default=None, help="report folder (default build/demo, or build/example with --example)")
    p.add_argument("--json", default=None, help="also write the comparison (summary.success per arm) here")
    p.add_argument("--quick", action="store_true", help="2 episodes of 150 steps per arm (for tests)")
    p.add_argument("--example", action="store_true",
                   help="no simulation: one decision of an example bundle with random weights, and its timings")
    p.set_defaults(func=cmd_demo)
    return parser


def cmd_ros(args) -> int:
    from ros_nodes.launcher import Launch, node_command, ros_env
    from runtime.defaults import resolve_policy, resolve_verifier

    from policies.bundle import load_policy_bundle
    from verifiers.bundle import check_verifier, load_verifier

    # Refuse a bad policy or a verifier that does not belong to it here, before any node starts.
    policy = resolve_policy(args.policy)
    bundle = load_policy_bundle(policy)
    verifier = resolve_verifier(args.verifier, policy)
    if verifier is not None:
        check_verifier(load_verifier(verifier), bundle.manifest.feature_dim, bundle.fingerprint)
    commands = {}
    if args.target in ("sim", "robot"):
        params = {"policy": policy, "verifier": args.verifier, "n": args.n, "execute": args.execute,
                  "sink": args.sink, "profile": args.profile, "seed": args.seed}
        if args.target == "robot":
            params["task"] = args.task
        commands["policy"] = node_command("ros_nodes.policy_node", params)
    if args.target == "sim":
        commands["sim"] = node_command("ros_nodes.sim_node", {"task": args.task, "sink": args.sink,
                                                              "profile": args.profile, "episodes": args.episodes,
                                                              "seed": args.seed})
    record = args.record or ("taco_run.mcap" if args.target == "record" else None)
    if record:
        commands["recorder"] = node_command("ros_nodes.recorder", {"out": record, "profile": args.profile,
                                                                    "sink": args.sink})
    launch = Launch(commands, env=ros_env(args.discovery), until="sim" if args.target == "sim" and args.episodes else None)
    launch.start()
    return launch.wait()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (SpecError, ProviderError, FileExistsError, FileNotFoundError, ValueError, KeyError, RuntimeError) as err:
        print(f"taco {args.command}: error: {err}", file=sys.stderr)
        return 2
    except ImportError as err:
        print(f"taco {args.command}: {err}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
