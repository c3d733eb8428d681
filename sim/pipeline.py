"""`taco artifacts` (`make artifacts`): record -> train -> features -> verifiers.

The recipe that made the shipped default (see artifacts/README.md):

1. record `episodes` scripted episodes per task with the mixed behaviour modes, then
   `recovery_episodes` more with DART-style perturbation (executed joints pushed off the plan by
   `perturb` rad in free motion, a tenth of it while grasping and handing over; the expert's plan is
   what is recorded), into one dataset;
2. train each policy kind on all of it (`bundles/<kind>`, the shipped policy), with the training
   settings that make the policy look at the scene (policies.train.TrainConfig's defaults: a keypoint
   head, the future-state loss, start frames oversampled, light state noise, no image shift);
3. TACO's feature search on the whole dataset, then one verifier bundle per kind (cfn, rnd, knn, random).

Every stage is skipped when its output exists and belongs to its inputs (dataset fingerprint, policy
fingerprint), and resumes when interrupted (recording and training checkpoint themselves), so the same
command can be rerun until everything is built. Outputs, under `--out`:

    data/sim/                  the LeRobotDataset of scripted episodes (clean, then recovery)
    bundles/<kind>/            the shipped policy bundles (flow, diffusion); checkpoints in <kind>.ckpt/
    features/<kind>.npz        TACO feature-search results
    bundles/<kind>-<verifier>/ verifier bundles (cfn, rnd, knn, random)
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from policies.errors import BundleError


@dataclass(frozen=True)
class ArtifactsConfig:
    out: str = "artifacts"
    tasks: tuple[str, ...] = ("transfer_cube",)
    # Scripted episodes recorded per task, then recovery (perturbed) episodes added.
    episodes: int = 100
    recovery_episodes: int = 200
    # DART perturbation std of the recovery episodes in free motion, rad.
    perturb: float = 0.1
    kinds: tuple[str, ...] = ("flow", "diffusion")
    size: str = "default"
    steps: int = 5000
    batch_size: int = 32
    # Feature search: noises per frame and frame stride.
    k: int = 16
    stride: int = 4
    verifiers: tuple[str, ...] = ("cfn", "rnd", "knn", "consensus", "random")
    verifier_epochs: int = 40
    seed: int = 0


def build_artifacts(config: ArtifactsConfig, log=None) -> dict[str, Path]:
    """Builds (or finishes building) every artifact; returns name -> path."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    from policies import load_policy_bundle
    from policies.data import dataset_fingerprint
    from policies.train import TrainConfig, train_policy
    from sim.record import RecordConfig, record, recorded_episodes
    from verifiers import load_verifier
    from verifiers.features import FeatureSet, collect_features
    from verifiers.train import VerifierTrainConfig, train_verifier

    out = Path(config.out)
    built: dict[str, Path] = {}
    started = time.perf_counter()
    data = out / "data" / "sim"
    every = max(1, min(250, config.steps))  # validation and checkpoint period

    def up_to_date(policy: Path, fingerprint: str):
        bundle = _load_or_none(load_policy_bundle, policy)
        return bundle if bundle and bundle.manifest.provenance.get("dataset_fingerprint") == fingerprint else None

    # Recording resumes where it stopped (clean episodes first, then the recovery ones).
    recorded = Counter(row["task"] for row in recorded_episodes(data))
    if any(recorded[task] < config.episodes for task in config.tasks):
        log(f"[record] {config.episodes} episodes per task of {', '.join(config.tasks)} -> {data}")
        record(RecordConfig(tasks=config.tasks, episodes=config.episodes, out=str(data), seed=config.seed),
               progress=log)
    total = config.episodes + config.recovery_episodes
    if any(recorded[task] < total for task in config.tasks):
        log(f"[record] +{config.recovery_episodes} recovery episodes per task, perturbation "
            f"{config.perturb} rad -> {data}")
        record(RecordConfig(tasks=config.tasks, episodes=total, out=str(data), seed=config.seed,
                            perturb=config.perturb), progress=log)
    built["dataset"] = data
    fingerprint = dataset_fingerprint(data)

    for kind in config.kinds:
        policy = out / "bundles" / kind
        current = up_to_date(policy, fingerprint)
        if current is not None:
            log(f"[train {kind}] up to date: {policy}")
        else:
            log(f"[train {kind}] {config.steps} steps on all episodes -> {policy} (resumable)")
            train_policy(TrainConfig(dataset=str(data), out=str(policy), kind=kind, size=config.size,
                                     steps=config.steps, batch_size=config.batch_size, seed=config.seed,
                                     val_every=every, checkpoint_every=every), log=log)
            current = load_policy_bundle(policy)
        built[kind] = policy

        features_path = out / "features" / f"{kind}.npz"
        features = _load_or_none(FeatureSet.load, features_path)
        if features is None or features.policy_fingerprint != current.fingerprint:
            log(f"[features {kind}] K={config.k}, every {config.stride}th frame -> {features_path}")
            features = collect_features(policy, data, k=config.k, stride=config.stride, seed=config.seed, progress=log)
            features.save(features_path)
        else:
            log(f"[features {kind}] up to date: {features_path}")

        for vkind in config.verifiers:
            vpath = out / "bundles" / f"{kind}-{vkind}"
            existing = _load_or_none(load_verifier, vpath)
            if existing is not None and existing.policy_fingerprint == current.fingerprint:
                log(f"[verifier {kind}-{vkind}] up to date: {vpath}")
            else:
                train_verifier(features, VerifierTrainConfig(kind=vkind, epochs=config.verifier_epochs,
                                                             seed=config.seed), vpath, log=log, overwrite=True)
            built[f"{kind}-{vkind}"] = vpath
    log(f"artifacts complete in {time.perf_counter() - started:.0f} s")
    return built


def _load_or_none(loader, path: Path):
    if not Path(path).exists():
        return None
    try:
        return loader(path)
    except (BundleError, OSError, KeyError, ValueError):
        return None
