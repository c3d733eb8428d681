"""`taco` subcommands of the simulation part: evaluation suites, recording, comparisons, the main job
(`taco demo`) and the whole artifacts pipeline.

Registered by the command line (`taco.cli`); arguments become `sim.evaluate.EvalConfig`,
`sim.record.RecordConfig`, `sim.demo.DemoConfig` and `sim.pipeline.ArtifactsConfig`. Only the standard
library is imported here, so `taco --help` lists these on a core-only install.
"""

from __future__ import annotations

import json
from pathlib import Path


def tasks(text: str) -> tuple[str, ...]:
    """'all' or comma-separated task names; unknown names are refused naming the registered ones."""
    from sim.tasks import TASKS

    names = tuple(sorted(TASKS)) if text == "all" else tuple(t for t in text.split(",") if t)
    for task in names:
        if task not in TASKS:
            raise ValueError(f"task: unknown {task!r} (registered: {', '.join(sorted(TASKS))})")
    return names


def cmd_eval(args) -> int:
    from sim.evaluate import EvalConfig, format_summary, run_suite

    episodes = min(args.episodes, 2) if args.quick else args.episodes
    config = EvalConfig(policy=args.policy, verifier=args.verifier, n=args.n, tasks=tasks(args.task), episodes=episodes,
                        seed=args.seed, execute=args.execute, workers=args.workers, backend=args.backend,
                        max_steps=args.max_steps, expert_mode=args.mode, action_noise=args.action_noise,
                        noise_stream=args.noise_stream, report=args.report, video_episodes=args.video_episodes,
                        asynchronous=args.asynchronous, delay_ms=args.delay_ms,
                        rtc=None if args.rtc is None else args.rtc == "on", continuity=args.continuity,
                        rtc_horizon=args.rtc_horizon, rtc_max_weight=args.rtc_max_weight,
                        log_decisions=args.log_decisions, log_max_mb=args.log_max_mb, explore=args.explore,
                        monitor=args.monitor, scene_perturb=tuple(args.scene_perturb or ()), prune=args.prune,
                        adaptive=args.adaptive)
    report = run_suite(config, json_path=args.json)
    print(format_summary(report))
    if args.json:
        print(f"wrote {args.json}")
    if args.report:
        print(f"wrote the report to {args.report} (index.md, plots, videos)")
    return 0


def cmd_calibrate_monitor(args) -> int:
    from sim.calibrate_monitor import CalibrateConfig, calibrate_monitor, format_calibration

    config = CalibrateConfig(policy=args.policy, out=args.out, verifier=args.verifier, n=args.n,
                             tasks=tasks(args.task), episodes=args.episodes, seed=args.seed, alpha=args.alpha,
                             execute=args.execute, max_steps=args.max_steps, workers=args.workers,
                             pseudocount=args.pseudocount, value=args.value, rollouts=args.rollouts,
                             embedding_components=args.embedding_components, accel=args.accel)
    print(format_calibration(calibrate_monitor(config)))
    return 0


def cmd_monitor_report(args) -> int:
    from sim.calibrate_monitor import format_rescore, rescore

    result = rescore(args.monitor, args.records)
    print(format_rescore(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


def cmd_record(args) -> int:
    from sim.record import RecordConfig, record

    config = RecordConfig(tasks=tasks(args.task), episodes=2 if args.quick else args.episodes, out=args.out,
                          seed=args.seed, keep_failures=args.keep_failures, mode=args.mode,
                          action_noise=args.action_noise, perturb=args.perturb)
    summary = record(config, progress=not args.no_progress)
    for task, s in summary.items():
        modes = ", ".join(f"{m} {c}" for m, c in sorted(s["modes"].items()))
        print(f"{task:<16} {s['episodes']} episodes ({s['successes']} successful), {s['frames']} frames; modes: {modes}")
    print(f"dataset: {args.out} (LeRobotDataset v3; per-episode seed, mode and success in meta/taco_episodes.jsonl)")
    return 0


def cmd_collect_outcomes(args) -> int:
    from sim.outcomes import OutcomeConfig, collect_outcomes

    names = tasks(args.task)
    if len(names) != 1:
        raise ValueError(f"task: one task per outcome file, got {args.task!r}")
    config = OutcomeConfig(policy=args.policy, task=names[0], seed=args.seed,
                           episodes=min(args.episodes, 2) if args.quick else args.episodes,
                           n=min(args.n, 4) if args.quick else args.n, every=args.every, execute=args.execute,
                           max_steps=args.max_steps, workers=args.workers)
    outcomes = collect_outcomes(config, args.out)
    ok = outcomes.success.reshape(-1, outcomes.n)
    differ = int((ok.any(1) & ~ok.all(1)).sum())
    print(f"labelled {outcomes.groups()} states x {outcomes.n} candidates in {config.episodes} episodes "
          f"(N=1 succeeded in {sum(outcomes.meta['episode_success'])}); candidates succeeded {ok.mean():.3f}, "
          f"{differ} states where some succeed and some fail; wrote {Path(args.out) / 'outcomes.npz'}")
    return 0


def cmd_artifacts(args) -> int:
    from dataclasses import replace

    from sim.pipeline import RECIPES, build_artifacts

    overrides = {name: getattr(args, name) for name in ARTIFACTS_OVERRIDES if getattr(args, name) is not None}
    flags = ", ".join(f"--{name.replace('_', '-')}" for name in sorted(overrides))
    if args.recipe == "taco":
        from sim.regime import RegimeConfig, build_regime

        if set(overrides) - {"steps"}:
            raise ValueError(f"--recipe taco: only --steps can be changed (got {flags})")
        if args.quick:
            regime = RegimeConfig(out=args.out, task_mode_episodes=1, off_task_episodes=1, perturbed_episodes=1,
                                  other_tasks=("lift_bar",), other_task_episodes=1, finetune_episodes=2, size="tiny",
                                  pretrain_steps=20, finetune_steps=10, batch_size=8, k=4, stride=20,
                                  verifier_epochs=2, value_episodes=2, value_n=4, value_steps=20, value_max_steps=60)
        else:
            regime = RegimeConfig(out=args.out, pretrain_steps=args.steps or RegimeConfig.pretrain_steps)
        built = build_regime(regime)
    else:
        names = list(RECIPES) if args.recipe == "shipped" else [args.recipe]
        if overrides and len(names) > 1:
            raise ValueError(f"{flags}: change one recipe at a time "
                             f"(--recipe {' or --recipe '.join(RECIPES)})")
        if "task" in overrides:
            overrides["tasks"] = tasks(overrides.pop("task"))
        if "kinds" in overrides:
            overrides["kinds"] = tuple(k for k in overrides["kinds"].split(",") if k)
        built = {}
        for name in names:
            config = replace(RECIPES[name], out=args.out, **overrides)
            if args.quick:
                # No monitor: its thresholds come from successful rollouts, which a 20-step policy never has.
                config = replace(config, episodes=1, recovery_episodes=min(1, config.recovery_episodes), size="tiny",
                                 steps=20, batch_size=8, k=4, stride=20, verifier_epochs=2,
                                 value_episodes=min(2, config.value_episodes), value_n=4, value_steps=20,
                                 value_max_steps=60, monitor_episodes=0)
            built.update(build_artifacts(config))
    for name, path in built.items():
        size = sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 1e6
        print(f"{name:<22} {path}  ({size:.1f} MB)")
    return 0


# `taco artifacts` flags that change a recipe's ArtifactsConfig field of the same name (`task` -> tasks).
ARTIFACTS_OVERRIDES = ("task", "episodes", "recovery_episodes", "perturb", "kinds", "steps", "k", "stride")


def paired_base(args, **fields):
    """The EvalConfig every arm of `taco compare` / `taco async-sweep` starts from (add_paired_flags)."""
    from sim.evaluate import EvalConfig

    return EvalConfig(policy=args.policy, tasks=tasks(args.task),
                      episodes=min(args.episodes, 2) if args.quick else args.episodes, seed=args.seed,
                      execute=args.execute, workers=args.workers, max_steps=args.max_steps, **fields)


def cmd_compare(args) -> int:
    from sim.compare import Arm, compare, format_compare

    arms = [Arm.parse(a) for a in args.arm]
    base = paired_base(args)
    report = compare(args.policy, arms, base, args.out, reference_streams=args.reference_streams)
    print(format_compare(report))
    print(f"wrote {args.out}/compare.json")
    return 0


def cmd_async_sweep(args) -> int:
    from sim.async_sweep import format_sweep, sweep

    delays = [float(v) for v in args.delays.split(",")]
    base = paired_base(args, verifier=args.verifier, n=args.n)
    summary = sweep(base, delays, args.out, continuity=args.continuity, rtc_horizon=args.rtc_horizon,
                    rtc_max_weight=args.rtc_max_weight)
    print(format_sweep(summary))
    print(f"wrote {args.out}/sweep.json")
    return 0


def cmd_demo(args) -> int:
    if args.example:
        from runtime.demo import run_demo

        return run_demo(out=Path(args.out or "build/example"), n=args.n or 16, quick=args.quick, seed=args.seed % 1000)
    from sim.compare import format_compare
    from sim.demo import DemoConfig, run_demo_suite

    config = DemoConfig(policy=args.policy, verifier=args.verifier, n=args.n, tasks=tasks(args.task),
                        episodes=2 if args.quick else args.episodes, seed=args.seed, workers=args.workers,
                        max_steps=150 if args.quick else None, out=args.out or "build/demo")
    report = run_demo_suite(config)
    print(format_compare(report))
    from verifiers.best import describe_best

    if report["best_verifier"]:
        print(f"recorded best verifier: {describe_best(report['best_verifier'])}")
    elif args.verifier == "best":
        print(f"no best verifier recorded for {report['policy']}: no verifier has beaten its pooled N=1 "
              f"(taco best-verifier); this demo shows {report['arms'][1]['arm']}")
    print(f"verdict: {report['verdict']}")
    print(f"report: {Path(config.out) / 'index.md'}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0


def _eval_needs(args) -> tuple[str, ...]:
    return ("sim", "ray") if args.backend == "ray" else ("sim",)


def _demo_needs(args) -> tuple[str, ...]:
    # --example runs no simulation; it exports its example bundle with torch when there is none yet.
    return ("train",) if args.example else ("sim",)


def add_paired_flags(p, task: str, episodes: int) -> None:
    """The episodes every arm of a paired run shares (read by paired_base)."""
    p.add_argument("--task", default=task)
    p.add_argument("--episodes", type=int, default=episodes)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--execute", type=int, default=8)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--workers", type=int, default=2)


def register(cli) -> None:
    p = cli.add("eval", "run an evaluation suite in simulation", run=cmd_eval, extras=("sim",),
                needs=_eval_needs)
    p.add_argument("--policy", required=True,
                   help="'scripted' (the tasks' experts), 'default' (the shipped policy) or a policy bundle")
    p.add_argument("--verifier", default=None,
                   help="none|best|random|cfn|rnd|knn|consensus (the verifiers shipped for the policy; best: its "
                        "recorded best) or a bundle / ONNX file")
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
    p.add_argument("--backend", choices=("local", "ray"), default="local", help="ray: the ray extra")
    p.add_argument("--workers", type=int, default=1, help="parallel worker processes")
    p.add_argument("--async", dest="asynchronous", action="store_true",
                   help="asynchronous execution: the robot keeps moving while the next chunk is computed")
    p.add_argument("--delay-ms", type=float, default=None,
                   help="with --async: the inference delay, injected on the simulated clock (default: measured)")
    p.add_argument("--rtc", choices=("on", "off"), default=None,
                   help="with --async: real-time chunking (default: on when the bundle takes it)")
    p.add_argument("--continuity", type=float, default=0.0,
                   help="with --async and RTC: weight of each candidate's coherence with the executing chunk")
    p.add_argument("--rtc-horizon", type=int, default=None,
                   help="with RTC: guide the new chunk's positions up to this one, at least the delay + 1 "
                        "(LeRobot's execution_horizon; default: all that is left of the executing chunk)")
    p.add_argument("--rtc-max-weight", type=float, default=None, metavar="W",
                   help="with RTC: cap on the guidance weight (default 10, LeRobot's; 5 keeps flow32's "
                        "success at 200 ms, docs/async.md)")
    cli.add_log_flags(p, "one episode per simulated episode, with the executed actions and the outcome")
    p.add_argument("--explore", type=float, default=0.0,
                   help="epsilon-greedy collection: take a uniformly random candidate with this probability")
    cli.add_saving_flags(p, auto=False)
    p.add_argument("--monitor", default=None,
                   help="a failure monitor bundle, or 'monitor' (the one shipped for the policy): each episode's "
                        "first alarm, and TPR / FPR / lead time in the summary")
    p.add_argument("--scene-perturb", action="append", metavar="KIND[:LEVEL]",
                   help="a scene the policy never saw: lighting, camera, distractor, object_range, table "
                        "(repeatable; levels in docs/monitor.md)")
    p.add_argument("--quick", action="store_true", help="at most 2 episodes per task (for tests)")

    p = cli.add("calibrate-monitor", "run successful rollouts of a policy and write a failure monitor bundle "
                                     "(signals, conformal alarm threshold, provenance; rerun to resume)",
                run=cmd_calibrate_monitor, extras=("sim",))
    p.add_argument("--policy", required=True, help="'default', a shipped policy's name or a policy bundle")
    p.add_argument("--verifier", default=None,
                   help="the selection verifier the monitor runs beside (none|best|cfn|... or a bundle)")
    p.add_argument("--n", type=int, default=1, help="candidates per decision the monitor is calibrated for")
    p.add_argument("--task", default="transfer_cube")
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--seed", type=int, default=900_000, help="calibration seeds seed..seed+episodes-1")
    p.add_argument("--alpha", type=float, default=0.1,
                   help="false-alarm rate bounded on successful episodes (split conformal)")
    p.add_argument("--execute", type=int, default=8)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--pseudocount", default="auto",
                   help="pseudo-count scorer: a verifier of the policy (cfn, rnd, knn or a bundle), 'auto' "
                        "(its cfn when shipped) or 'none'")
    p.add_argument("--value", default="auto",
                   help="value scorer: a value verifier of the policy, 'auto' (its value when shipped) or 'none'")
    p.add_argument("--rollouts", default=None, help="folder of the rollouts' records (default: OUT.rollouts)")
    p.add_argument("--embedding-components", type=int, default=16,
                   help="principal directions of the observations' embedding behind the novelty signal (0: none)")
    p.add_argument("--accel", choices=("auto", "on", "off"), default="auto",
                   help="the flow sampler's velocity roughness signal (OpenTau's accel): auto = on for a flow policy")
    p.add_argument("--out", required=True, help="the monitor bundle folder")

    p = cli.add("monitor-report", "a failure monitor replayed over an evaluation's recorded signals (taco eval "
                                  "--monitor --json): TPR, FPR and lead per detector, without rerunning episodes",
                run=cmd_monitor_report)
    p.add_argument("--monitor", required=True, help="monitor bundle (same policy, N, verifier and scorers)")
    p.add_argument("--records", required=True, help="the JSON that taco eval --monitor --json wrote")
    p.add_argument("--json", default=None, help="write the summary here")

    p = cli.add("record", "record scripted-expert episodes as a LeRobotDataset v3", run=cmd_record,
                extras=("sim", "train"))
    p.add_argument("--task", required=True, help="task name, comma-separated names, or 'all'")
    p.add_argument("--episodes", type=int, required=True, help="episodes to keep per task")
    p.add_argument("--out", required=True, help="dataset folder; an existing one is resumed")
    p.add_argument("--seed", type=int, default=0, help="first episode seed")
    p.add_argument("--mode", default=None,
                   help="force one expert mode, or draw from a mix 'clean:2,no_handover:1' (default: the "
                        "expert's mix of task modes); off-task modes no_handover, early_release, bar_lift "
                        "(transfer_cube) make broad pre-training corpora")
    p.add_argument("--action-noise", type=float, default=None, help="expert joint noise std, rad")
    p.add_argument("--keep-failures", action="store_true", help="keep episodes the expert failed (marked)")
    p.add_argument("--perturb", type=float, default=0.0,
                   help="DART-style: perturb executed joints by this std (rad), record the unperturbed actions")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--quick", action="store_true", help="2 episodes per task (for tests)")

    p = cli.add("collect-outcomes", "label N candidates per visited state with what happens when executed "
                                    "(success, best stage), for --kind outcome verifiers (rerun to resume)",
                run=cmd_collect_outcomes, extras=("sim",))
    p.add_argument("--policy", required=True, help="'default' or a policy bundle")
    p.add_argument("--task", required=True, help="one task name")
    p.add_argument("--episodes", type=int, default=20, help="episodes (episode i uses seed S+i)")
    p.add_argument("--seed", type=int, default=300_000,
                   help="first episode seed (keep apart from the evaluation seeds, 100000-)")
    p.add_argument("--n", type=int, default=16, help="candidates per labelled state")
    p.add_argument("--every", type=int, default=4, help="label every EVERY-th decision of the N=1 episode")
    p.add_argument("--execute", type=int, default=8, help="actions executed per chunk before replanning")
    p.add_argument("--max-steps", type=int, default=None, help="steps per episode (default: the task's)")
    p.add_argument("--workers", type=int, default=1, help="parallel worker processes")
    p.add_argument("--out", required=True, help="folder: per-episode labels (resumable) and outcomes.npz")
    p.add_argument("--quick", action="store_true", help="2 episodes, n at most 4 (for tests)")

    p = cli.add("artifacts", "record (clean + DART recovery episodes) -> train policies -> features -> verifiers "
                             "(rerun to resume)", run=cmd_artifacts, extras=("sim", "train"))
    p.add_argument("--out", default="artifacts")
    p.add_argument("--recipe", choices=("shipped", "flow", "diffusion", "flow32", "taco"), default="shipped",
                   help="shipped: every shipped bundle (flow, diffusion, flow32); flow (the default policy): 100 clean "
                        "+ 200 DART recovery transfer_cube episodes, a flow policy; diffusion: 50 clean episodes, a "
                        "diffusion policy; flow32: flow's episodes, 32-action chunks (for --async and RTC); taco: "
                        "TACO's regime (broad pre-training corpus, fine-tuned on 30 clean transfer_cube episodes, "
                        "verifiers on those; sim/regime.py). The flags below change one "
                        "recipe's settings (sim/pipeline.py RECIPES)")
    p.add_argument("--task", default=None, help="task or comma-separated tasks to record and train on")
    p.add_argument("--episodes", type=int, default=None, help="scripted episodes per task")
    p.add_argument("--recovery-episodes", type=int, default=None, help="DART-perturbed episodes per task, added")
    p.add_argument("--perturb", type=float, default=None,
                   help="perturbation std of the recovery episodes in free motion, rad (a tenth while grasping)")
    p.add_argument("--kinds", default=None, help="policy kinds to train, comma-separated")
    p.add_argument("--steps", type=int, default=None,
                   help="training steps per policy (default 5000; --recipe taco: pre-training steps, default 4000)")
    p.add_argument("--k", type=int, default=None, help="feature search: noises per frame (16)")
    p.add_argument("--stride", type=int, default=None, help="feature search: every STRIDE-th frame")
    p.add_argument("--quick", action="store_true",
                   help="one clean (+ one recovery) episode per task, tiny models (for tests)")

    p = cli.add("compare", "several verifier arms on the same episodes, with paired statistics", run=cmd_compare,
                extras=("sim",))
    p.add_argument("--policy", required=True)
    p.add_argument("--arm", action="append", required=True,
                   help="NAME:N[~pK/M|~aF/LEVEL][@STREAM][:VERIFIER], repeated; the first is the reference (e.g. "
                        "none:1; none2:1@2:none is N=1 on noise stream 2; p:16~p2/1:combined is best-of-16 "
                        "pruned to 1 after 2 steps, a:16~a4/0.1:combined adaptive from 4)")
    add_paired_flags(p, task="all", episodes=100)
    p.add_argument("--reference-streams", type=int, default=1, metavar="K",
                   help="also run the reference on noise streams 1..K-1 (same seeds), pool them, and test every "
                        "arm against the pooled rate too (one stream of a noisy policy can sit far off its mean)")
    p.add_argument("--out", required=True, help="folder for per-arm JSON (resumable) and compare.json")
    p.add_argument("--quick", action="store_true")

    p = cli.add("async-sweep", "synchronous against asynchronous execution (without RTC, with RTC, with RTC and "
                               "continuity selection) at several inference delays, on the same episodes",
                run=cmd_async_sweep, extras=("sim",))
    p.add_argument("--policy", default="default")
    p.add_argument("--verifier", default=None, help="verifier of every arm (a shipped name or a bundle path)")
    p.add_argument("--n", type=int, default=1)
    p.add_argument("--delays", default="0,100,200,300", help="inference delays, ms, comma-separated")
    p.add_argument("--continuity", type=float, default=1.0, help="weight of the continuity arm (0: no such arm)")
    p.add_argument("--rtc-horizon", type=int, default=None,
                   help="RTC execution horizon of the RTC arms (default: all that is left of the executing chunk)")
    p.add_argument("--rtc-max-weight", type=float, default=None, metavar="W",
                   help="guidance cap of the RTC arms (default 10, LeRobot's)")
    add_paired_flags(p, task="transfer_cube", episodes=50)
    p.add_argument("--out", required=True, help="folder for per-arm JSON (resumable) and sweep.json")
    p.add_argument("--quick", action="store_true")

    p = cli.add("demo", "the main job: the sim suite on the shipped default policy with and without its verifier, "
                        "table + report", run=cmd_demo, extras=("sim",), needs=_demo_needs)
    p.add_argument("--policy", default="default", help="policy bundle path or 'default'")
    p.add_argument("--verifier", default="best",
                   help="the verifier arm: 'best' (recorded in the policy bundle), a shipped name or a bundle path")
    p.add_argument("--n", type=int, default=None,
                   help="candidates per step in the verifier arm (default: the best verifier's recorded N, else 16)")
    p.add_argument("--task", default="transfer_cube", help="task name(s), comma-separated")
    p.add_argument("--episodes", type=int, default=100,
                   help="episodes per task per arm (same seeds in both)")
    p.add_argument("--seed", type=int, default=600_000,
                   help="first evaluation seed (default: the held-out range no choice was tuned on)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default=None, help="report folder (default build/demo, or build/example with --example)")
    p.add_argument("--json", default=None, help="also write the comparison (summary.success per arm) here")
    p.add_argument("--quick", action="store_true", help="2 episodes of 150 steps per arm (for tests)")
    p.add_argument("--example", action="store_true",
                   help="no simulation: one decision of an example bundle with random weights, and its timings "
                        "(the train extra)")
