"""`taco artifacts` (`make artifacts`): record -> train -> record recovery data -> fine-tune -> features -> verifiers.

The recipe that made the shipped default (see artifacts/README.md):

1. record `episodes` scripted episodes per task with the mixed behaviour modes;
2. train each policy kind on them (`<kind>-base`);
3. record `recovery_episodes` more per task with DART-style perturbation (executed joints perturbed by
   `perturb` rad, clean labels recorded), into the same dataset: a policy trained on clean data alone
   drifts off the demonstrations closed loop and was never shown the way back;
4. fine-tune each kind on the whole dataset from its base weights (`<kind>`, the shipped policy);
5. TACO's feature search on the whole dataset, then one verifier bundle per kind (cfn, rnd, knn, random).

Optional (`vision_steps` > 0, off for the shipped default): step 4 writes `<kind>-recovery` and one more
fine-tune with `vision_state_noise` on the state input and no image shift writes `<kind>`. Steps 2 and 4
learn to continue the arm's motion from the state and ignore the camera (copycat, see
benchmarks/policy_inputs.py); the vision fine-tune makes the camera move the actions, but on
transfer_cube it did not raise closed-loop success (README, "Reproducing TACO's test-time scaling").

Every stage is skipped when its output exists and belongs to its inputs (dataset fingerprint, policy
fingerprint, the base run's final step), and resumes when interrupted (recording and training
checkpoint themselves), so the same command can be rerun until everything is built. Outputs, under `--out`:

    data/sim/                  the LeRobotDataset of scripted episodes (clean, then recovery)
    bundles/<kind>-base/       phase-1 policies (clean episodes only), checkpoints in <kind>-base.ckpt/
    bundles/<kind>-recovery/   with vision_steps > 0: the recovery fine-tune the vision one starts from
    bundles/<kind>/            the shipped policy bundles (flow, diffusion)
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
    tasks: tuple[str, ...] = ("transfer_cube",)
    # Scripted episodes recorded per task (phase 1), then recovery episodes added (phase 2).
    episodes: int = 60
    recovery_episodes: int = 100
    # DART perturbation std of the recovery episodes, rad.
    perturb: float = 0.03
    kinds: tuple[str, ...] = ("flow", "diffusion")
    size: str = "default"
    steps: int = 5000
    batch_size: int = 32
    # Fine-tuning on the whole dataset from the base weights.
    finetune_steps: int = 3000
    finetune_lr: float = 2e-4
    finetune_warmup: int = 100
    # Optional vision fine-tune after the recovery one (0: none): noised state, no image shift.
    vision_steps: int = 0
    vision_lr: float = 3e-4
    vision_state_noise: float = 0.5
    vision_shift: int = 0
    # Feature search: noises per frame and frame stride.
    k: int = 16
    stride: int = 4
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
    total = config.episodes + config.recovery_episodes
    every = lambda steps: max(1, min(250, steps))  # noqa: E731 - validation and checkpoint period

    def train(kind: str, dest: Path, **overrides) -> None:
        settings = dict(dataset=str(data), out=str(dest), kind=kind, size=config.size, steps=config.steps,
                        batch_size=config.batch_size, seed=config.seed, val_every=every(config.steps),
                        checkpoint_every=every(config.steps))
        train_policy(TrainConfig(**{**settings, **overrides}), log=log)

    def up_to_date(policy: Path, fingerprint: str):
        bundle = _load_or_none(load_policy_bundle, policy)
        return bundle if bundle and bundle.manifest.provenance.get("dataset_fingerprint") == fingerprint else None

    final_fingerprint = dataset_fingerprint(data) if (data / "meta" / "info.json").is_file() else None
    finished = final_fingerprint and all(up_to_date(out / "bundles" / kind, final_fingerprint) for kind in config.kinds)
    if not finished:
        # Phase 1: clean episodes and the base policies. A rerun after phase 2 started skips it: the base
        # checkpoints are complete (their step counts are checked) and the dataset has grown past it.
        base_done = all(_checkpoint_step(out / "bundles" / f"{kind}-base") >= config.steps for kind in config.kinds)
        if not base_done:
            log(f"[record] {config.episodes} episodes per task of {', '.join(config.tasks)} -> {data}")
            record(RecordConfig(tasks=config.tasks, episodes=config.episodes, out=str(data), seed=config.seed),
                   progress=False)
            for kind in config.kinds:
                log(f"[train {kind}-base] {config.steps} steps on the clean episodes (resumable)")
                train(kind, out / "bundles" / f"{kind}-base")
        if config.recovery_episodes:
            log(f"[record] +{config.recovery_episodes} recovery episodes per task, perturbation "
                f"{config.perturb} rad -> {data}")
            record(RecordConfig(tasks=config.tasks, episodes=total, out=str(data), seed=config.seed,
                                perturb=config.perturb), progress=False)
    built["dataset"] = data
    fingerprint = dataset_fingerprint(data)

    for kind in config.kinds:
        policy = out / "bundles" / kind
        current = up_to_date(policy, fingerprint)
        if current is not None:
            log(f"[train {kind}] up to date: {policy}")
        else:
            ckpt = out / "bundles" / f"{kind}-base.ckpt" / "last.pt"
            if config.recovery_episodes:
                recovery = out / "bundles" / f"{kind}-recovery" if config.vision_steps else policy
                log(f"[train {recovery.name}] fine-tune {config.finetune_steps} steps on all episodes -> {recovery}")
                train(kind, recovery, steps=config.finetune_steps, lr=config.finetune_lr,
                      warmup_steps=config.finetune_warmup, init_from=str(ckpt),
                      val_every=every(config.finetune_steps), checkpoint_every=every(config.finetune_steps))
                ckpt = Path(str(recovery) + ".ckpt") / "last.pt"
            elif not config.vision_steps:
                train(kind, policy)
            if config.vision_steps:
                log(f"[train {kind}] vision fine-tune {config.vision_steps} steps (state noise "
                    f"{config.vision_state_noise}, no image shift) -> {policy}")
                train(kind, policy, steps=config.vision_steps, lr=config.vision_lr,
                      warmup_steps=config.finetune_warmup, init_from=str(ckpt),
                      state_noise=config.vision_state_noise, shift=config.vision_shift,
                      val_every=every(config.vision_steps), checkpoint_every=every(config.vision_steps))
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


def _checkpoint_step(bundle: Path) -> int:
    """The step of a training run's last checkpoint (0 when there is none)."""
    ckpt = Path(str(bundle) + ".ckpt") / "last.pt"
    if not ckpt.is_file():
        return 0
    import torch

    return int(torch.load(ckpt, weights_only=False, map_location="cpu")["step"])


def _load_or_none(loader, path: Path):
    if not Path(path).exists():
        return None
    try:
        return loader(path)
    except (BundleError, OSError, KeyError, ValueError):
        return None
