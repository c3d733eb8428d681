"""`taco calibrate-monitor`: rollouts of a policy in simulation, then a calibrated monitor bundle.

1. The monitor's scorers (a pseudo-count verifier and a value verifier of the policy) are copied into the
   output folder with a manifest that computes signals and raises no alarm.
2. `taco eval` runs the calibration episodes with it (resumable: its records go to `<out>.rollouts/`).
3. `runtime.calibration.fit_monitor` fits the standardisation and the detectors; the manifest is
   rewritten with them, the split-conformal thresholds and the provenance.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from policies.schema import content_id, sha256_file

# Scorer roles and the shipped verifier each takes by default ("auto": that one when shipped for the policy).
DEFAULT_SCORERS = {"pseudocount": "cfn", "value": "value"}


@dataclass(frozen=True)
class CalibrateConfig:
    policy: str
    out: str
    # The selection verifier the monitor will run beside (its choices shape the signals), and N.
    verifier: str | None = None
    n: int = 1
    tasks: tuple[str, ...] = ("transfer_cube",)
    episodes: int = 100
    # Calibration seeds: seed .. seed + episodes - 1 (keep them apart from the seeds it is evaluated on).
    seed: int = 900_000
    # False-alarm rate the thresholds bound on successful episodes.
    alpha: float = 0.1
    execute: int = 8
    max_steps: int | None = None
    workers: int = 2
    # Scorer bundles: a shipped verifier name, a path, "auto" (the shipped default when it exists) or "none".
    pseudocount: str = "auto"
    value: str = "auto"
    # The rollouts' folder (eval JSON, resumable); None: `<out>.rollouts`.
    rollouts: str | None = None
    # Fit an embedding model of the observations (the `novelty` signal) on this many principal directions
    # of the successful rollouts' pooled encoder prefixes; 0: none.
    embedding_components: int = 16
    # The flow sampler's velocity roughness (the `accel` signal): "auto" (on for a flow policy whose
    # sampler's Euler velocities can be read), "on" or "off".
    accel: str = "auto"


def _scorers(config: CalibrateConfig, policy: str) -> dict[str, str]:
    from policies.errors import BundleError
    from verifiers.shipped import resolve_verifier

    out = {}
    for role, default in DEFAULT_SCORERS.items():
        choice = getattr(config, role)
        if choice == "none":
            continue
        if choice == "auto":
            try:
                out[role] = resolve_verifier(default, policy)
            except BundleError:
                continue  # none shipped for this policy
        else:
            out[role] = resolve_verifier(choice, policy)
    return out


def resolve_accel(choice: str, policy: str, progress=None) -> bool:
    """Whether the monitor reads the sampler's velocities: `choice` "on" (refused, saying why, for a
    policy that has none), "off", or "auto" (on when the policy has them)."""
    from policies.errors import BundleError
    from policies.sampler import PolicySampler

    if choice not in ("auto", "on", "off"):
        raise ValueError(f"accel: must be auto, on or off, got {choice!r}")
    if choice == "off":
        return False
    try:
        PolicySampler(policy).expose_velocities()
    except BundleError as err:
        if choice == "on":
            raise
        if progress is not None:
            progress(f"no accel signal: {err}")
        return False
    return True


def _write(out: Path, manifest) -> None:
    (out / "manifest.json").write_text(json.dumps(manifest.to_dict(), indent=2) + "\n")


def calibrate_monitor(config: CalibrateConfig, progress=None) -> dict:
    """Runs the rollouts, fits, writes the monitor bundle; returns the fit's report."""
    from policies.bundle import load_policy_bundle
    from policies.shipped import resolve_policy
    from runtime.calibration import CalibrationEpisode, fit_monitor
    from runtime.monitor import MonitorManifest, conformal_rank, load_monitor
    from sim.evaluate import EvalConfig, last_progress_step, run_suite
    from verifiers.shipped import resolve_verifier

    progress = progress or (lambda msg: print(msg, file=sys.stderr, flush=True))
    try:  # refuse at once a run that cannot reach alpha even if every rollout succeeds
        conformal_rank(config.episodes // 2, config.alpha)
    except ValueError as err:
        raise ValueError(f"episodes: {config.episodes} rollouts are too few for alpha {config.alpha:g} (half of the "
                         f"successful ones set the threshold): {err}") from None
    policy = resolve_policy(config.policy)
    bundle = load_policy_bundle(policy)
    verifier = resolve_verifier(config.verifier, policy)
    scorers = _scorers(config, policy)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    shas = {}
    for role, source in scorers.items():
        target = out / role
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(source, target)
        shas[role] = sha256_file(target / "manifest.json")
    selection = None if verifier is None else {"name": Path(verifier).name, "content": content_id(verifier)}
    accel = resolve_accel(config.accel, policy, progress)
    base = MonitorManifest(name=out.name, policy_fingerprint=bundle.fingerprint, n=config.n, verifier=selection,
                           scorers={role: role for role in scorers}, scorer_manifests=shas,
                           record_embeddings=config.embedding_components > 0, accel=accel,
                           accel_window=config.execute if accel else None)
    _write(out, base)  # signals only, no alarm: what the rollouts record
    rollouts = Path(config.rollouts) if config.rollouts else out.with_name(out.name + ".rollouts")
    eval_config = EvalConfig(policy=policy, verifier=verifier, n=config.n, tasks=config.tasks,
                             episodes=config.episodes, seed=config.seed, execute=config.execute,
                             max_steps=config.max_steps, workers=config.workers, monitor=str(out))
    started = time.perf_counter()
    done = rollouts / "calibration.json"
    report = json.loads(done.read_text()) if done.is_file() else None
    if report is not None and report.get("fingerprint") == eval_config.fingerprint():
        progress(f"reusing the {len(report['episodes'])} rollouts of {done}")  # a refit (another alpha)
    else:
        report = run_suite(eval_config, json_path=done, progress=progress)
    episodes = [CalibrationEpisode(signals=r["monitor"]["signals"], success=r["success"],
                                   decision_steps=r["monitor"]["decision_steps"], progress_step=last_progress_step(r))
                for r in report["episodes"]]
    for e in episodes:  # JSON nulls back to NaN
        e.signals = {k: [float("nan") if v is None else v for v in vals] for k, vals in e.signals.items()}
    embedding = None
    if config.embedding_components:
        # Fitted on the successes that set the standardisation (fit_monitor's first half: the same split),
        # so the conformal half's novelty is of observations the model never saw.
        import numpy as np

        from runtime.monitor import EMBEDDING_FILE, fit_embedding, novelty

        ok = [r for r in report["episodes"] if r["success"]]
        model = fit_embedding(np.concatenate([np.asarray(r["monitor"]["embeddings"]) for r in ok[0::2]]),
                              config.embedding_components)
        np.savez(out / EMBEDDING_FILE, **model)
        embedding = {"file": EMBEDDING_FILE, "sha256": sha256_file(out / EMBEDDING_FILE),
                     "components": int(len(model["scale"])), "dim": int(len(model["mean"]))}
        for e, r in zip(episodes, report["episodes"]):
            e.signals["novelty"] = [novelty(model, v) for v in r["monitor"]["embeddings"]]
    signals = dataclasses.replace(base, embedding=embedding, record_embeddings=False).signals
    fit = fit_monitor(episodes, signals, config.alpha, dt=report["episodes"][0]["monitor"]["dt"])
    overall = report["summary"]["overall"]
    calibration = {
        "episodes": len(episodes), "successes": overall["successes"], "tasks": list(config.tasks),
        "seeds": [config.seed, config.seed + config.episodes - 1], "alpha": config.alpha, "execute": config.execute,
        "split": fit.report["split"], "rollout_minutes": round(report["run"]["wall_s"] / 60, 2),
        "on_calibration_rollouts": {k: v for k, v in fit.report.items() if k != "split"},
    }
    provenance = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["taco", *sys.argv[1:]]),
        "policy": Path(policy).name, "scorers": {role: Path(src).name for role, src in scorers.items()},
        "settings": asdict(config),
    }
    final = MonitorManifest(name=out.name, policy_fingerprint=bundle.fingerprint, n=config.n, verifier=selection,
                            scorers=base.scorers, scorer_manifests=shas, standardisation=fit.standardisation,
                            detectors=fit.detectors, main=fit.main, calibration=calibration, provenance=provenance,
                            embedding=embedding, accel=accel, accel_window=base.accel_window)
    _write(out, final)
    load_monitor(out)  # what was written reads back
    progress(f"calibrated in {(time.perf_counter() - started) / 60:.1f} min")
    return {"monitor": str(out), "calibration": calibration,
            "detectors": {k: d.to_dict() for k, d in fit.detectors.items()}}


def format_calibration(result: dict) -> str:
    cal = result["calibration"]
    split = cal["split"]
    lines = [f"{cal['episodes']} rollouts, {cal['successes']} successful ({split['fit']} standardise, "
             f"{split['conformal']} set thresholds at rank {split['rank']}, alpha {cal['alpha']:g}), "
             f"{split['failed']} failed; {cal['rollout_minutes']:.1f} min",
             f"{'detector':<18} {'signals':<44} {'slack':>5} {'threshold':>9} {'failed alarmed':>15} {'lead s':>7}"]
    for name, d in result["detectors"].items():
        r = cal["on_calibration_rollouts"][name]
        lead = "-" if r["lead_s_median"] is None else f"{r['lead_s_median']:+.2f}"
        slack = "each" if d["kind"] == "any" else f"{d['slack']:.2f}"  # its signals' own (their rows above)
        lines.append(f"{name:<18} {','.join(d['signals']):<44} {slack:>5} {d['threshold']:>9.3f} "
                     f"{r['failed_alarmed']:>7}/{r['failed']:<7} {lead:>7}")
    lines.append(f"wrote {result['monitor']} (use it with --monitor {result['monitor']})")
    return "\n".join(lines)


def rescore(monitor: str, records: str) -> dict:
    """A monitor's detectors replayed over an evaluation's recorded signals (`taco eval --monitor ...
    --json`, any monitor with the same scorers, calibrated for the same policy, N and verifier): the
    summary `taco eval --monitor` would have printed, without running the episodes again."""
    from policies.bundle import load_policy_bundle
    from policies.errors import BundleError
    from runtime.monitor import check_monitor_use, read_monitor_manifest, replay
    from sim.evaluate import monitor_summary

    manifest = read_monitor_manifest(monitor)
    report = json.loads(Path(records).read_text())
    config = report["config"]
    check_monitor_use(manifest, load_policy_bundle(config["policy"]).fingerprint, config["n"],
                      content_id(config["verifier"]), config.get("execute"))
    rescored = []
    for r in report["episodes"]:
        mon = r.get("monitor")
        if mon is None:
            raise BundleError("records", f"{records}: episode {r['task']} {r['episode']} has no monitor signals; "
                                         "evaluate with --monitor")
        missing = sorted(set(manifest.standardisation) - set(mon["signals"]))
        if missing:
            raise BundleError("records", f"{records}: the monitor reads {missing}, which the records do not hold")
        replayed = replay(manifest, mon["signals"], mon["decision_steps"], mon["dt"])
        rescored.append({**r, "monitor": {**mon, "main": manifest.main,
                                          "peak": {k: v[0] for k, v in replayed.items()},
                                          "first_alarm_step": {k: v[1] for k, v in replayed.items()}}})
    tasks = sorted({r["task"] for r in rescored})
    return {"monitor": str(monitor), "records": str(records), "config": config,
            "overall": monitor_summary(rescored),
            "per_task": {t: monitor_summary([r for r in rescored if r["task"] == t]) for t in tasks}}


def format_rescore(result: dict) -> str:
    lines = [f"{'detector':<18} {'TPR':>6} {'FPR':>6} {'failed alarmed':>15} {'successful alarmed':>19} {'lead s':>7}"]
    for name, d in result["overall"]["by_detector"].items():
        def rate(v):
            return "-" if v is None else f"{v:.3f}"

        lead = "-" if d["lead_s_median"] is None else f"{d['lead_s_median']:+.2f}"
        lines.append(f"{name:<18} {rate(d['tpr']):>6} {rate(d['fpr']):>6} {d['failed_alarmed']:>7}/{d['failed']:<7} "
                     f"{d['successful_alarmed']:>9}/{d['successful']:<9} {lead:>7}")
    return "\n".join(lines)
