"""Evaluation suites: episodes of one or more tasks run by worker processes (local or Ray).

This is the driver side; `sim.episodes` is what each worker runs.

Every arm of a comparison uses the same seeds: episode i of a task starts from seed `seed + i`, so
object poses are identical across policies and verifiers. Finished episodes are appended to a
`.partial.jsonl` file next to the JSON output, and a rerun with the same settings resumes from it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from policies.schema import canonical_hash, content_id
from sim.episodes import init_worker, run_item

BACKENDS = ("local", "ray")


@dataclass(frozen=True)
class EvalConfig:
    """One evaluation suite; every field is recorded in the output JSON."""

    # "scripted" (the tasks' scripted experts), "default" (the shipped policy) or a policy bundle path.
    policy: str = "scripted"
    # None/"none", a shipped verifier name ("random", "cfn", "rnd", "knn", "consensus"), or a verifier bundle/ONNX path.
    verifier: str | None = None
    # Candidates per replanning step.
    n: int = 1
    # Tasks to run (registry names).
    tasks: tuple[str, ...] = ("transfer_cube",)
    # Episodes per task; episode i uses seed `seed + i`.
    episodes: int = 20
    seed: int = 0
    # Actions executed from each chunk before replanning.
    execute: int = 8
    # Noise stream of the policy's samples (runtime.executor.ExecutorConfig.noise_stream; 0: the default).
    noise_stream: int = 0
    # Worker processes (local) or Ray tasks in flight (ray).
    workers: int = 1
    backend: str = "local"
    # Steps per episode; None uses each task's own limit.
    max_steps: int | None = None
    # Scripted experts only: force one behaviour mode (None mixes them) and the action noise (None: default).
    expert_mode: str | None = None
    action_noise: float | None = None
    # Report folder (plots and videos); None for none.
    report: str | None = None
    # Episodes per task filmed for the report (the first ones).
    video_episodes: int = 1
    # Asynchronous execution (runtime.executor.AsyncChunkExecutor): the robot keeps moving while a chunk
    # is computed, which arrives `delay_ms` later on the simulation's clock (None: the measured wall time,
    # not reproducible). `rtc` guides each chunk toward the executing one (None: when the bundle can);
    # `continuity` weighs each candidate's coherence with it in selection. `rtc_horizon`: the RTC execution
    # horizon (runtime.executor.AsyncConfig.horizon; None: all that is left of the executing chunk);
    # `rtc_max_weight`: the guidance's cap (AsyncConfig.max_weight; None: LeRobot's 10).
    asynchronous: bool = False
    delay_ms: float | None = None
    rtc: bool | None = None
    continuity: float = 0.0
    rtc_horizon: int | None = None
    rtc_max_weight: float | None = None
    # Decision log folder (verifiers.decision_log): every decision's candidates, features, scores and pick,
    # the executed actions, rewards and the outcome, for `taco train-verifier --kind value`; None: none.
    log_decisions: str | None = None
    # Stop logging once the log's files reach this many megabytes (None: no bound).
    log_max_mb: float | None = None
    # Epsilon-greedy collection (verifiers.explore.Explore): with this probability a decision takes a
    # uniformly random candidate instead of the verifier's pick.
    explore: float = 0.0
    # Failure monitor (runtime.monitor): a monitor bundle, or "monitor" for the one shipped for the policy.
    # Each record then carries the decisions' signals and the first alarm; the summary its TPR, FPR and lead.
    monitor: str | None = None
    # Scene perturbations (sim.perturb, "KIND[:LEVEL]"): scenes the policy never saw, evaluation only.
    scene_perturb: tuple[str, ...] = ()
    # Pruned best-of-N (policies.pruning, "k:m"): every candidate runs k denoising steps, the best m the rest.
    prune: str | None = None
    # Adaptive N (runtime.adaptive, "first:level"): the other N - first candidates only when the first disagree.
    adaptive: str | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        from policies.shipped import resolve_policy
        from runtime.executor import ExecutorConfig
        from sim.tasks import TASKS
        from verifiers.shipped import resolve_monitor, resolve_verifier

        if self.policy != "scripted":
            # Names of shipped bundles ("default", "cfn", ...) become paths, so records show what ran.
            object.__setattr__(self, "policy", resolve_policy(self.policy))
            object.__setattr__(self, "verifier", resolve_verifier(self.verifier, self.policy))
            object.__setattr__(self, "monitor", resolve_monitor(self.monitor, self.policy))
        elif self.monitor is not None:
            raise ValueError("monitor: applies to policy bundles, not to --policy scripted")

        from sim.perturb import parse_all

        # Written out in full ("lighting" -> "lighting:0.35"), so records say what ran.
        object.__setattr__(self, "scene_perturb", tuple(str(p) for p in parse_all(self.scene_perturb)))
        for task in self.tasks:
            if task not in TASKS:
                raise ValueError(f"tasks: unknown task {task!r} (registered: {', '.join(sorted(TASKS))})")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend: must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.episodes < 1 or self.workers < 1 or self.n < 1 or self.execute < 1:
            raise ValueError("episodes, workers, n and execute must be >= 1")
        if not (isinstance(self.explore, (int, float)) and 0.0 <= self.explore <= 1.0):
            raise ValueError(f"explore: expected a probability in [0, 1], got {self.explore!r}")
        if self.log_max_mb is not None and not self.log_max_mb > 0:
            raise ValueError(f"log_max_mb: expected > 0 megabytes, got {self.log_max_mb}")
        if self.policy == "scripted" and (self.log_decisions or self.explore):
            raise ValueError("log_decisions and explore apply to policy bundles, not to --policy scripted")
        if self.asynchronous and self.log_decisions:
            raise ValueError("log_decisions: logs synchronous runs only for now (drop --async)")
        ExecutorConfig(noise_stream=self.noise_stream)  # the executor's own check of the stream
        if self.prune is not None:
            from policies.bundle import load_policy_bundle
            from policies.pruning import Prune

            if self.policy == "scripted":
                raise ValueError("prune applies to policy bundles, not to --policy scripted")
            prune = Prune.parse(self.prune)
            prune.check(load_policy_bundle(self.policy).manifest.num_steps)
            object.__setattr__(self, "prune", str(prune))
            if self.monitor is not None:
                raise ValueError("prune: a monitor is calibrated on fully denoised candidates; drop --monitor or --prune")
        if self.adaptive is not None:
            from runtime.adaptive import Adaptive

            if self.policy == "scripted":
                raise ValueError("adaptive applies to policy bundles, not to --policy scripted")
            if self.prune is not None:
                raise ValueError("prune and adaptive: choose one way of spending less on N candidates")
            if self.monitor is not None:
                raise ValueError("adaptive: a monitor is calibrated at a fixed N; drop --monitor or --adaptive")
            object.__setattr__(self, "adaptive", str(Adaptive.parse(self.adaptive)))
        if self.policy == "scripted" and (self.verifier is not None or self.n != 1 or self.noise_stream):
            raise ValueError("verifier, n and noise_stream apply to policy bundles, not to --policy scripted")
        if self.monitor is not None:
            from policies.bundle import load_policy_bundle
            from runtime.monitor import check_monitor_use, read_monitor_manifest

            check_monitor_use(read_monitor_manifest(self.monitor), load_policy_bundle(self.policy).fingerprint,
                              self.n, content_id(self.verifier), self.execute)
        if not self.asynchronous:
            if (self.delay_ms is not None or self.rtc or self.continuity or self.rtc_horizon is not None
                    or self.rtc_max_weight is not None):
                raise ValueError("delay_ms, rtc, rtc_horizon, rtc_max_weight and continuity apply to asynchronous "
                                 "execution (--async)")
        else:
            from policies.bundle import load_policy_bundle

            if self.policy == "scripted":
                raise ValueError("asynchronous execution applies to policy bundles, not to --policy scripted")
            if not (math.isfinite(self.continuity) and self.continuity >= 0):
                raise ValueError(f"continuity: expected a weight >= 0, got {self.continuity}")
            manifest = load_policy_bundle(self.policy).manifest
            rtc = manifest.rtc if self.rtc is None else bool(self.rtc)
            self.timing(rtc).check_policy(manifest)  # its own checks
            object.__setattr__(self, "rtc", rtc)
            if self.continuity and not self.rtc:
                raise ValueError("continuity: needs RTC (it scores candidates against the guided prefix)")
            if self.rtc_horizon is not None and not self.rtc:
                raise ValueError("rtc_horizon: needs RTC")
            if self.rtc_max_weight is not None and not self.rtc:
                raise ValueError("rtc_max_weight: needs RTC")

    def timing(self, rtc: bool | None = None):
        """The asynchronous executor's settings (runtime.executor.AsyncConfig)."""
        from policies.guidance import DEFAULT_MAX_WEIGHT
        from runtime.executor import AsyncConfig

        cap = DEFAULT_MAX_WEIGHT if self.rtc_max_weight is None else float(self.rtc_max_weight)
        return AsyncConfig(delay_ms=self.delay_ms, rtc=self.rtc if rtc is None else rtc, horizon=self.rtc_horizon,
                           max_weight=cap)

    def fingerprint(self) -> str:
        """Identifies the episodes' settings (not workers, backend or report), for resuming.

        Includes what the policy and verifier paths hold, so results are not reused after a bundle is
        rebuilt in place (e.g. a new shipped default under the same name).
        """
        data = dataclasses.asdict(self)
        for key in ("workers", "backend", "report", "video_episodes", "log_decisions", "log_max_mb"):
            data.pop(key)
        if not self.explore:  # results from before exploration existed still resume
            data.pop("explore")
        if not self.noise_stream:
            data.pop("noise_stream")  # the default stream: results from before streams existed still resume
        if not self.asynchronous:  # synchronous results from before asynchronous execution still resume
            for key in ("asynchronous", "delay_ms", "rtc", "continuity"):
                data.pop(key)
        for key in ("rtc_horizon", "rtc_max_weight"):  # nor asynchronous ones from before these were settings
            if data[key] is None:
                data.pop(key)
        data["policy_content"] = content_id(self.policy)
        data["verifier_content"] = content_id(self.verifier)
        if not self.scene_perturb:  # nor those from before scene perturbations
            data.pop("scene_perturb")
        if self.monitor is None:  # results from before monitors existed still resume
            data.pop("monitor")
        else:  # what it computes and decides, not when it was written
            from runtime.monitor import read_monitor_manifest

            data["monitor"] = read_monitor_manifest(self.monitor).identity()
        if self.prune is None:  # nor those from before pruning
            data.pop("prune")
        if self.adaptive is None:  # nor adaptive N
            data.pop("adaptive")
        return canonical_hash(data)


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95% by default)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _partial_path(json_path: Path | None) -> Path | None:
    return None if json_path is None else json_path.with_name(json_path.name + ".partial.jsonl")


def _load_partial(path: Path | None, fingerprint: str) -> dict[tuple[str, int], dict]:
    done = {}
    if path is None or not path.exists():
        return done
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by an interruption
        if row.get("fingerprint") == fingerprint:
            done[(row["record"]["task"], row["record"]["episode"])] = row["record"]
    return done


def run_suite(config: EvalConfig, json_path: str | Path | None = None, progress=None) -> dict:
    """Runs every episode (resuming from a partial file), then summarises, writes JSON and the report."""
    progress = progress or (lambda msg: print(msg, file=sys.stderr, flush=True))
    json_path = Path(json_path) if json_path else None
    fingerprint = config.fingerprint()
    partial = _partial_path(json_path)
    records = _load_partial(partial, fingerprint)
    items = [(t, i) for t in config.tasks for i in range(config.episodes) if (t, i) not in records]
    if records:
        progress(f"resuming: {len(records)} episodes already done, {len(items)} to go")
    if partial is not None:
        partial.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    total = len(items)
    for k, record in enumerate(_execute(config, items), start=1):
        records[(record["task"], record["episode"])] = record
        if partial is not None:
            with open(partial, "a") as f:
                f.write(json.dumps({"fingerprint": fingerprint, "record": record}) + "\n")
        elapsed = time.perf_counter() - started
        eta = elapsed / k * (total - k)
        progress(f"[{k}/{total}] {record['task']} ep {record['episode']}: "
                 f"{'success' if record['success'] else 'failure'} (stage {record['best_stage']}/{record['max_stage']},"
                 f" {record['steps']} steps, {record['wall_s']:.1f} s)  elapsed {elapsed:.0f} s, eta {eta:.0f} s")
    wall = time.perf_counter() - started
    ordered = [records[(t, i)] for t in config.tasks for i in range(config.episodes)]
    report = {
        "config": dataclasses.asdict(config),
        # Settings and bundle contents the episodes ran with (sim.compare reuses a report only if equal).
        "fingerprint": fingerprint,
        "summary": summarize(ordered, config),
        "run": {"wall_s": wall, "episodes_run": total, "workers": config.workers, "backend": config.backend,
                "episodes_per_minute": 60.0 * total / wall if total and wall > 0 else None},
        "episodes": ordered,
    }
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=1) + "\n")
        partial.unlink(missing_ok=True)
    if config.report:
        from sim.report import write_report

        write_report(report, Path(config.report))
    return report


def _execute(config: EvalConfig, items: list[tuple[str, int]]):
    """Yields records as episodes finish, in the backend's order."""
    if not items:
        return
    if config.backend == "ray":
        from sim.ray_backend import run_on_ray

        yield from run_on_ray(config, items)
    elif config.workers == 1:
        init_worker(config)
        for item in items:
            yield run_item(item)
    else:
        import multiprocessing as mp

        # spawn: a fork would share MuJoCo GL contexts and ONNX Runtime thread pools with the parent.
        with mp.get_context("spawn").Pool(config.workers, initializer=init_worker, initargs=(config,)) as pool:
            yield from pool.imap_unordered(run_item, items)


def _group_summary(records: list[dict]) -> dict:
    n = len(records)
    wins = sum(r["success"] for r in records)
    low, high = wilson_interval(wins, n)
    latencies = [v for r in records for v in r["latency_ms"]]
    out = {
        "episodes": n, "successes": wins, "success_rate": wins / n if n else 0.0,
        "wilson95": [low, high],
        "mean_stage_reward": float(np.mean([r["best_stage"] for r in records])) if n else 0.0,
        "mean_episode_wall_s": float(np.mean([r["wall_s"] for r in records])) if n else 0.0,
        "latency_ms_p50": float(np.percentile(latencies, 50)) if latencies else None,
        "latency_ms_p99": float(np.percentile(latencies, 99)) if latencies else None,
    }
    drawn = [v for r in records for v in r.get("candidates_drawn", [])]
    if drawn:
        out["candidates_drawn_mean"] = float(np.mean(drawn))
    jumps = [v for r in records for v in r.get("switch_jumps", [])]
    if any("jerk_mean" in r for r in records):
        out["switch_jump_rad_p50"] = float(np.percentile(jumps, 50)) if jumps else None
        out["switch_jump_rad_p95"] = float(np.percentile(jumps, 95)) if jumps else None
        out["jerk_mean"] = float(np.mean([r["jerk_mean"] for r in records]))
        out["held_steps_mean"] = float(np.mean([r.get("held_steps", 0) for r in records]))
    monitor = monitor_summary(records)
    if monitor is not None:
        out["monitor"] = monitor
    modes = sorted({r["mode"] for r in records if r.get("mode")})
    if modes:
        out["by_mode"] = {}
        for mode in modes:
            sub = [r for r in records if r.get("mode") == mode]
            wins_m = sum(r["success"] for r in sub)
            out["by_mode"][mode] = {"episodes": len(sub), "successes": wins_m, "success_rate": wins_m / len(sub),
                                    "wilson95": list(wilson_interval(wins_m, len(sub)))}
    return out


def last_progress_step(record: dict) -> int:
    """The control step at which an episode first reached its best stage (0 when it never left stage 0)."""
    stages = record["stages"]
    return next((i for i, stage in enumerate(stages) if stage >= record["best_stage"]), 0)


def monitor_summary(records: list[dict]) -> dict | None:
    """The failure monitor's record over episodes of a calibrated monitor (None without one): for the main
    detector and each other, `tpr` (failed episodes with an alarm), `fpr` (successful episodes with any
    alarm), `lead_s_median` (over alarmed failures, seconds from the first alarm to the step the episode's
    best stage was reached: positive when the alarm came before the failure's last progress)."""
    rows = [r for r in records if (r.get("monitor") or {}).get("main")]
    if not rows:
        return None

    def detector(name: str) -> dict:
        failed = [r for r in rows if not r["success"]]
        succeeded = [r for r in rows if r["success"]]
        first = [(r, r["monitor"]["first_alarm_step"][name]) for r in rows]
        alarmed_failed = [(r, step) for r, step in first if step is not None and not r["success"]]
        alarmed_ok = [r for r, step in first if step is not None and r["success"]]
        leads = [(last_progress_step(r) - step) * r["monitor"]["dt"] for r, step in alarmed_failed]
        return {"tpr": len(alarmed_failed) / len(failed) if failed else None,
                "fpr": len(alarmed_ok) / len(succeeded) if succeeded else None,
                "lead_s_median": float(np.median(leads)) if leads else None,
                "failed": len(failed), "failed_alarmed": len(alarmed_failed),
                "successful": len(succeeded), "successful_alarmed": len(alarmed_ok)}

    main = rows[0]["monitor"]["main"]
    out = {"detector": main, **detector(main)}
    out["by_detector"] = {name: detector(name) for name in rows[0]["monitor"]["peak"]}
    return out


def summarize(records: list[dict], config: EvalConfig) -> dict:
    """Success with a Wilson 95% interval, mean stage reward, wall time and latency, per task and overall."""
    return {
        "overall": _group_summary(records),
        "per_task": {t: _group_summary([r for r in records if r["task"] == t]) for t in config.tasks},
    }


def format_summary(report: dict) -> str:
    lines = [f"{'task':<16} {'success':>9} {'wilson 95%':>15} {'stage':>6} {'ep wall s':>10} {'lat p50':>8} {'lat p99':>8}"]
    rows = list(report["summary"]["per_task"].items()) + [("overall", report["summary"]["overall"])]
    for name, s in rows:
        lat50 = "-" if s["latency_ms_p50"] is None else f"{s['latency_ms_p50']:.1f}"
        lat99 = "-" if s["latency_ms_p99"] is None else f"{s['latency_ms_p99']:.1f}"
        lines.append(f"{name:<16} {s['successes']:>3}/{s['episodes']:<5} [{s['wilson95'][0]:.2f}, {s['wilson95'][1]:.2f}]"
                     f"{s['mean_stage_reward']:>7.2f} {s['mean_episode_wall_s']:>10.2f} {lat50:>8} {lat99:>8}")
    for name, s in report["summary"]["per_task"].items():
        for mode, m in s.get("by_mode", {}).items():
            lines.append(f"  {name} mode {mode:<14} {m['successes']:>3}/{m['episodes']:<4} "
                         f"[{m['wilson95'][0]:.2f}, {m['wilson95'][1]:.2f}]")
    overall = report["summary"]["overall"]
    if overall.get("switch_jump_rad_p95") is not None:
        lines.append(f"switch jump p50 {overall['switch_jump_rad_p50']:.3f} rad, "
                     f"p95 {overall['switch_jump_rad_p95']:.3f} rad; jerk mean {overall['jerk_mean']:.0f} rad/s^3; "
                     f"held {overall['held_steps_mean']:.1f} steps per episode")
    monitor = overall.get("monitor")
    if monitor is not None:
        def rate(v):
            return "-" if v is None else f"{v:.2f}"

        lead = "-" if monitor["lead_s_median"] is None else f"{monitor['lead_s_median']:+.2f} s"
        lines.append(f"monitor ({monitor['detector']}): alarms in {monitor['failed_alarmed']}/{monitor['failed']} "
                     f"failed episodes (TPR {rate(monitor['tpr'])}) and {monitor['successful_alarmed']}/"
                     f"{monitor['successful']} successful ones (FPR {rate(monitor['fpr'])}); lead median {lead}")
    run = report["run"]
    if run["episodes_per_minute"]:
        lines.append(f"{run['episodes_run']} episodes in {run['wall_s']:.1f} s with {run['workers']} "
                     f"{run['backend']} worker(s): {run['episodes_per_minute']:.1f} episodes/min")
    return "\n".join(lines)

