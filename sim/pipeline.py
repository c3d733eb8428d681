"""`taco artifacts` (`make artifacts`): record -> train policies -> collect features -> train verifiers.

Every stage is skipped when its output exists and belongs to its inputs (dataset fingerprint, policy
fingerprint), and resumes when interrupted (recording and training checkpoint themselves), so the
same command can be rerun until everything is built. Outputs, under `--out`:

    data/sim/                  the LeRobotDataset of scripted episodes (all tasks)
    bundles/<kind>/            policy bundles (flow, diffusion)
    features/<kind>.npz        TACO feature-search results
    bundles/<kind>-<verifier>/ verifier bundles (cfn, rnd, knn, random)
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from policies.errors import BundleError


@dataclass(frozen=True)
class ArtifactsConfig:
    out: str = "artifacts"
    tasks: tuple[str, ...] = ("insertion", "lift_bar", "transfer_cube")
    # Scripted episodes recorded per task.
    episodes: int = 60
    kinds: tuple[str, ...] = ("flow", "diffusion")
    size: str = "default"
    steps: int = 5000
    batch_size: int = 32
    # Feature search: noises per frame and frame stride.
    k: int = 16
    stride: int = 2
    verifiers: tuple[str, ...] = ("cfn", "rnd", "knn", "random")
    verifier_epochs: int = 40
    seed: int = 0


def build_artifacts(config: ArtifactsConfig, log=None) -> dict[str, Path]:
    """Builds (or finishes building) every artifact; returns name -> path."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    from policies import load_policy_bundle
    from policies.data import dataset_fingerprint
    from policies.train import TrainConfig, train_policy
    from sim.record import RecordConfig, record
    from verifiers import load_verifier
    from verifiers.features import FeatureSet, collect_features
    from verifiers.train import VerifierTrainConfig, train_verifier

    out = Path(config.out)
    built: dict[str, Path] = {}
    started = time.perf_counter()

    data = out / "data" / "sim"
    log(f"[record] {config.episodes} episodes per task of {', '.join(config.tasks)} -> {data}")
    record(RecordConfig(tasks=config.tasks, episodes=config.episodes, out=str(data), seed=config.seed),
           progress=False)
    built["dataset"] = data
    fingerprint = dataset_fingerprint(data)

    for kind in config.kinds:
        policy = out / "bundles" / kind
        current = _load_or_none(load_policy_bundle, policy)
        if current is not None and current.manifest.provenance.get("dataset_fingerprint") == fingerprint:
            log(f"[train {kind}] up to date: {policy}")
        else:
            log(f"[train {kind}] {config.steps} steps -> {policy} (checkpoints in {policy}.ckpt, resumable)")
            train_policy(TrainConfig(dataset=str(data), out=str(policy), kind=kind, size=config.size,
                                     steps=config.steps, batch_size=config.batch_size, seed=config.seed,
                                     val_every=max(1, min(500, config.steps)),
                                     checkpoint_every=max(1, min(500, config.steps))), log=log)
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
