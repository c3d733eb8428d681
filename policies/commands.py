"""`taco` subcommands of the policies part: export a policy, train one on a LeRobotDataset.

Registered by the command line (`taco.cli`); arguments become `policies.train.TrainConfig` and friends.
Only argparse is imported here, so `taco --help` lists these on a core-only install.
"""

from __future__ import annotations

import argparse


def int_list(text: str) -> tuple[int, ...]:
    """Comma-separated positive integers ('' for none)."""
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return values


def cmd_export(args) -> int:
    from policies.config import make_config
    from policies.describe import describe_policy
    from policies.export import export_bundle
    from policies.models import build_policy

    cfg = make_config(args.size, args.kind)
    policy = build_policy(cfg, seed=args.seed)
    bundle = export_bundle(policy, args.out, sampler=args.sampler, name=args.name, overwrite=args.overwrite,
                           provenance={"weights": f"random init, seed {args.seed} (untrained)"})
    print(f"wrote {bundle.manifest.kind} bundle {bundle.path} (fingerprint {bundle.fingerprint[:16]})")
    print(describe_policy(bundle))
    return 0


def cmd_train_policy(args) -> int:
    from policies.train import TrainConfig, export_checkpoint, train_policy

    if args.export_checkpoint:
        from policies.shipped import resolve_policy

        like = resolve_policy(args.like) if args.like else None
        bundle = export_checkpoint(args.export_checkpoint, args.out, sampler=args.sampler, like=like)
        print(f"exported {bundle.manifest.provenance['weights']} to {bundle.path} (fingerprint "
              f"{bundle.fingerprint[:12]})")
        if args.like:
            print(f"its candidates and features are {args.like}'s bit for bit; bind that bundle's verifiers to it "
                  "with taco rebind-verifier")
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
                         chunk_length=args.chunk_length,
                         # Unset recipe flags keep TrainConfig's defaults (the recipe the shipped policy used).
                         **{key: getattr(args, key) for key in ("shift", "state_noise", "start_fraction",
                                                                 "start_frames") if getattr(args, key) is not None})
    path = train_policy(config)
    print(f"wrote policy bundle {path}")
    return 0


def cmd_import(args) -> int:
    from policies.describe import describe_policy
    from policies.lerobot import import_lerobot
    from policies.manifest import ALOHA_JOINTS

    joints = None
    if args.joint_names:
        joints = ALOHA_JOINTS if args.joint_names == "aloha" else tuple(n for n in args.joint_names.split(",") if n)
    bundle = import_lerobot(args.checkpoint, args.out, joint_names=joints, fps=args.fps, dataset=args.dataset,
                            tokenizer=args.tokenizer, name=args.name, overwrite=args.overwrite)
    print(f"imported {bundle.manifest.source['policy_type']} from {args.checkpoint} as {bundle.path} "
          f"(fingerprint {bundle.fingerprint[:16]})")
    print(describe_policy(bundle))
    return 0


def cmd_quantize(args) -> int:
    from policies.quantize import quantize_bundle
    from policies.shipped import resolve_bundle

    graphs = tuple(g for g in args.graphs.split(",") if g)
    report = quantize_bundle(resolve_bundle(args.bundle), args.out, graphs=graphs, method=args.method,
                             dataset=args.dataset, frames=args.frames, overwrite=args.overwrite)
    for name, size in report["bytes"].items():
        print(f"{name}: {size['float'] / 1e6:.2f} MB float -> {size['int8'] / 1e6:.2f} MB int8")
    e = report["error"]
    print(f"error against the float bundle over {e['decisions']} decisions of {e['candidates']} candidates (same "
          f"noise): chunk max {e['chunk_max_abs']:.4f} / mean {e['chunk_mean_abs']:.5f} (robot units), features "
          f"max {e['features_max_abs']:.4f} ({e['features_max_rel']:.1%} of their mean magnitude)")
    print(f"wrote {report['out']} (fingerprint {report['fingerprint'][:16]}; quantization.json has the report)")
    return 0


def _quantize_needs(args) -> tuple[str, ...]:
    return ("train",) if args.dataset and args.method == "static" else ("verifiers",)


def register(cli) -> None:
    p = cli.add("quantize", "write an int8 copy of a policy bundle (ONNX Runtime's quantizer) with its error "
                            "against the float bundle", run=cmd_quantize, extras=("verifiers",), needs=_quantize_needs)
    p.add_argument("bundle", help="policy bundle folder or shipped name")
    p.add_argument("--out", required=True, help="the int8 bundle's folder")
    p.add_argument("--graphs", default="encoder", help="comma-separated: encoder, sampler (default: encoder)")
    p.add_argument("--method", choices=("dynamic", "static"), default="dynamic",
                   help="dynamic: int8 weights, activations quantized at run time; static: QDQ graphs with "
                        "activation ranges calibrated on --dataset frames (or example observations)")
    p.add_argument("--dataset", default=None, help="static: a LeRobotDataset to calibrate on (the train extra)")
    p.add_argument("--frames", type=int, default=32, help="frames to calibrate on and to measure the error on")
    p.add_argument("--overwrite", action="store_true")


    p = cli.add("export", "build a policy with random weights and write its bundle (manifest.json + ONNX graphs)",
                run=cmd_export, extras=("train",))
    p.add_argument("--kind", choices=("flow", "diffusion"), default="flow")
    p.add_argument("--size", choices=("default", "tiny"), default="default")
    p.add_argument("--sampler", choices=("unrolled", "stepped"), default="unrolled",
                   help="unrolled: all denoising steps in one graph; stepped: the runtime loops over a step graph")
    p.add_argument("--seed", type=int, default=0, help="seed of the weight initialisation")
    p.add_argument("--name", default=None)
    p.add_argument("--out", required=True, help="bundle folder to write")
    p.add_argument("--overwrite", action="store_true")

    p = cli.add("import", "import a policy trained elsewhere (a LeRobot checkpoint folder) as a bundle",
                run=cmd_import, extras=("train",))
    p.add_argument("framework", choices=("lerobot",), help="where the checkpoint comes from")
    p.add_argument("checkpoint", help="the folder save_pretrained wrote (config.json, model.safetensors, "
                                      "policy_preprocessor.json, policy_postprocessor.json and their state files)")
    p.add_argument("--out", required=True, help="bundle folder to write")
    p.add_argument("--dataset", default=None, help="the LeRobotDataset it was trained on: joint names and fps")
    p.add_argument("--joint-names", default=None,
                   help="comma-separated state/action names (or 'aloha'), when there is no --dataset")
    p.add_argument("--fps", type=float, default=None, help="control rate, Hz, when there is no --dataset")
    p.add_argument("--tokenizer", default=None, metavar="DIR",
                   help="pi0/pi05: a local folder with the PaliGemma tokenizer's tokenizer.json; smolvla: the local "
                        "SmolVLM folder (config, processor, tokenizer) when config.json names one that is not local")
    p.add_argument("--name", default=None)
    p.add_argument("--overwrite", action="store_true")

    p = cli.add("train-policy", "train a policy on a LeRobotDataset and export its bundle", run=cmd_train_policy,
                extras=("train",))
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
    p.add_argument("--chunk-length", type=int, default=None,
                   help="actions per chunk (default: the size preset's, 16); asynchronous execution at a delay "
                        "needs chunks longer than it")
    p.add_argument("--keypoints", type=int, default=None,
                   help="spatial-softmax keypoints per camera (default: the size preset's; 0: none)")
    p.add_argument("--start-fraction", type=float, default=None,
                   help="fraction of each batch drawn from the episodes' first --start-frames frames, where only "
                        "the camera tells episodes apart")
    p.add_argument("--start-frames", type=int, default=None)
    p.add_argument("--future-steps", type=int_list, default=None, metavar="K,K,...",
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
    p.add_argument("--like", default=None, metavar="BUNDLE",
                   help="with --export-checkpoint: re-export BUNDLE (made from this checkpoint before) with this "
                        "version's graph inputs, keeping its name, sampler and provenance; refused unless its "
                        "candidates and features come out bit for bit")
    p.add_argument("--quick", action="store_true", help="30 steps of batch 8 (for tests)")
