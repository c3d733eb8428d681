"""`taco artifacts` (`make artifacts`): record -> train -> features -> verifiers.

The recipes that made the shipped bundles (see artifacts/README.md), `RECIPES` below:

- `flow` (`bundles/flow`): 100 scripted transfer_cube episodes with the mixed behaviour modes, then 200
  more with DART-style perturbation (executed joints pushed off the plan by `perturb` rad in free
  motion, a tenth of it while grasping and handing over; the expert's plan is what is recorded);
- `diffusion` (`bundles/diffusion`, the shipped default): 50 clean episodes, no recovery ones, a
  diffusion head, features on every 2nd frame. A weaker policy whose samples spread, so that selection
  among them matters (docs/results.md, "The shipped default").

Each recipe then:

1. trains each policy kind on all of its dataset (`bundles/<kind>`), with the training settings that
   make the policy look at the scene (policies.train.TrainConfig's defaults: a keypoint head, the
   future-state loss, start frames oversampled, light state noise, no image shift);
2. runs TACO's feature search on the whole dataset, then builds one verifier bundle per kind (cfn, rnd,
   knn, consensus, random);
3. (`value_episodes` > 0, the flow recipe) runs the policy for that many episodes at N=16 with uniform
   picks, logging every decision (`taco eval --explore 1 --log-decisions`), and trains the value verifier
   on the logs (`taco train-verifier --kind value`, IQL): `bundles/<kind>-value`;
4. (`combined`, the flow recipe) combines shipped verifiers (the value and the consensus, 1:1) into
   `bundles/<kind>-combined` (`taco combine-verifiers`);
5. (`monitor_episodes` > 0, the flow recipe) calibrates a failure monitor on that many rollouts at N=16
   with the combined verifier choosing (`taco calibrate-monitor`): `bundles/<kind>-monitor`.

Every stage is skipped when its output exists and belongs to its inputs (dataset fingerprint, policy
fingerprint), and resumes when interrupted (recording and training checkpoint themselves), so the same
command can be rerun until everything is built. Outputs, under `--out`:

    data/<dataset>/            the recipe's LeRobotDataset of scripted episodes (clean, then recovery)
    bundles/<kind>/            the shipped policy bundles; checkpoints in <kind>.ckpt/
    features/<kind>.npz        TACO feature-search results
    bundles/<kind>-<verifier>/ verifier bundles (cfn, rnd, knn, consensus, random; value, combined)
    logs/<kind>/               decision logs the value verifier learned from (resumable, with <kind>.json)
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
    kinds: tuple[str, ...] = ("flow",)
    # The policy bundle's folder under `out`/bundles (None: its kind) and its chunk length (None: the
    # training default, 16 actions).
    name: str | None = None
    chunk_length: int | None = None
    size: str = "default"
    steps: int = 5000
    batch_size: int = 32
    # Feature search: noises per frame and frame stride.
    k: int = 16
    stride: int = 4
    verifiers: tuple[str, ...] = ("cfn", "rnd", "knn", "consensus", "random")
    verifier_epochs: int = 40
    # Value verifier (0 episodes: none): episodes logged at N=`value_n` with uniform picks, from seed
    # `value_seed` (apart from the evaluation seeds, 100000- and 600000-), by `value_workers` processes;
    # then IQL for `value_steps` steps. `value_max_steps`: steps per logged episode (None: the task's).
    value_episodes: int = 0
    value_n: int = 16
    value_seed: int = 400_000
    value_steps: int = 20_000
    value_workers: int = 2
    value_max_steps: int | None = None
    # `bundles/<kind>-combined` (empty: none): these shipped verifiers' scores, each standardised over the
    # candidates, weighted by `combined_weights` (`taco combine-verifiers`).
    combined: tuple[str, ...] = ()
    combined_weights: tuple[float, ...] = ()
    seed: int = 0
    # The dataset's folder under `out`/data (one per recipe, so recipes sharing `out` never mix episodes).
    dataset: str = "sim"
    # `bundles/<kind>-monitor` (0 episodes: none): a failure monitor calibrated on that many rollouts from
    # `monitor_seed` at N=`monitor_n` with the verifier `monitor_verifier` choosing (`taco calibrate-monitor`).
    monitor_episodes: int = 0
    monitor_n: int = 16
    monitor_verifier: str = "none"
    monitor_seed: int = 900_000
    monitor_alpha: float = 0.1


# The shipped recipes, in the order `make artifacts` builds them.
RECIPES = {
    # The value with the consensus 1:1: flow's best verifier (docs/results.md, "The value combined").
    # Its monitor is calibrated as the default runs verified (N=16 with its best verifier), at alpha 0.05: at
    # 0.1 the false-alarm rate of one calibration on 74 successes came out at 0.14 on held-out seeds
    # (docs/monitor.md).
    "flow": ArtifactsConfig(value_episodes=500, combined=("value", "consensus"), combined_weights=(1.0, 1.0),
                            monitor_episodes=200, monitor_verifier="combined", monitor_alpha=0.05),
    "diffusion": ArtifactsConfig(episodes=50, recovery_episodes=0, kinds=("diffusion",), stride=2,
                                 dataset="clean50"),
    # The flow recipe's dataset and training with 32-action chunks (640 ms): the policy for asynchronous
    # execution and real-time chunking, whose chunk outlasts 300 ms of inference (docs/async.md).
    "flow32": ArtifactsConfig(name="flow32", chunk_length=32, verifiers=("consensus", "random")),
}


def build_artifacts(config: ArtifactsConfig, log=None) -> dict[str, Path]:
    """Builds (or finishes building) every artifact; returns name -> path."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    from policies.data import dataset_fingerprint
    from sim.record import RecordConfig, record, recorded_episodes

    out = Path(config.out)
    built: dict[str, Path] = {}
    started = time.perf_counter()
    data = out / "data" / config.dataset

    # Recording resumes where it stopped (clean episodes first, then the recovery ones).
    recorded = Counter(row["task"] for row in recorded_episodes(data))
    if any(recorded[task] < config.episodes for task in config.tasks):
        log(f"[record] {config.episodes} episodes per task of {', '.join(config.tasks)} -> {data}")
        record(RecordConfig(tasks=config.tasks, episodes=config.episodes, out=str(data), seed=config.seed),
               progress=log)
    total = config.episodes + config.recovery_episodes
    if config.recovery_episodes and any(recorded[task] < total for task in config.tasks):
        log(f"[record] +{config.recovery_episodes} recovery episodes per task, perturbation "
            f"{config.perturb} rad -> {data}")
        record(RecordConfig(tasks=config.tasks, episodes=total, out=str(data), seed=config.seed,
                            perturb=config.perturb), progress=log)
    built["dataset"] = data
    fingerprint = dataset_fingerprint(data)

    if config.name is not None and len(config.kinds) != 1:
        raise ValueError(f"name {config.name!r}: one policy kind per named recipe (got {', '.join(config.kinds)})")
    for kind in config.kinds:
        name = config.name or kind
        policy = out / "bundles" / name
        current = train_stage(f"train {name}", data, policy, log, fingerprint=fingerprint,
                              description=f"{config.steps} steps on all episodes", kind=kind, size=config.size,
                              steps=config.steps, batch_size=config.batch_size, seed=config.seed,
                              chunk_length=config.chunk_length)
        built[name] = policy
        built.update(features_and_verifiers(current, data, out / "features" / f"{name}.npz", f"features {name}",
                                            out / "bundles", config.verifiers, log, k=config.k, stride=config.stride,
                                            seed=config.seed, epochs=config.verifier_epochs))
        if config.value_episodes:
            built.update(value_stage(current, out, config, log, config.tasks))
        if config.combined:
            built.update(combined_stage(current, out / "bundles", config.combined, config.combined_weights, log))
        if config.monitor_episodes:
            built.update(monitor_stage(current, out / "bundles", config, log))
    log(f"artifacts complete in {time.perf_counter() - started:.0f} s")
    return built


def train_stage(stage: str, data: Path, policy: Path, log, fingerprint: str | None = None, description: str = "",
                **train) -> object:
    """The policy bundle trained on `data`: the one at `policy` when it was made from this dataset, else
    trained (resuming its checkpoints) with TrainConfig(**train), validating and checkpointing every 250
    steps at most."""
    from policies import load_policy_bundle
    from policies.data import dataset_fingerprint
    from policies.train import TrainConfig, train_policy

    fingerprint = fingerprint or dataset_fingerprint(data)
    bundle = _load_or_none(load_policy_bundle, policy)
    if bundle is not None and bundle.manifest.provenance.get("dataset_fingerprint") == fingerprint:
        log(f"[{stage}] up to date: {policy}")
        return bundle
    every = max(1, min(250, train["steps"]))
    description = description or f"{train['steps']} steps on {data}"
    log(f"[{stage}] {description} -> {policy} (resumable)")
    train_policy(TrainConfig(dataset=str(data), out=str(policy), val_every=every, checkpoint_every=every, **train),
                 log=log)
    return load_policy_bundle(policy)


def features_and_verifiers(policy, data: Path, features_path: Path, stage: str, bundles: Path,
                           verifiers: tuple[str, ...], log, k: int, stride: int, seed: int, epochs: int,
                           threads: int = 1) -> dict[str, Path]:
    """TACO's feature search of `policy` (a loaded bundle) on `data`, then one verifier bundle per kind as
    `bundles/<policy>-<kind>`; each skipped when it already belongs to this policy."""
    from verifiers import load_verifier
    from verifiers.features import FeatureSet, collect_features
    from verifiers.train import UNTRAINED_KINDS, VerifierTrainConfig, train_verifier, untrained_verifier

    features = _load_or_none(FeatureSet.load, features_path)
    if all(vkind in UNTRAINED_KINDS for vkind in verifiers):
        log(f"[{stage}] not needed: {', '.join(verifiers)} learn from no features")
    elif features is not None and features.policy_fingerprint == policy.fingerprint:
        log(f"[{stage}] up to date: {features_path}")
    else:
        log(f"[{stage}] K={k}, every {stride}th frame of {data} -> {features_path}")
        features = collect_features(policy.path, data, k=k, stride=stride, seed=seed, progress=log, threads=threads)
        features.save(features_path)
    built = {}
    for vkind in verifiers:
        name = f"{Path(policy.path).name}-{vkind}"
        vpath = bundles / name
        existing = _load_or_none(load_verifier, vpath)
        if existing is not None and existing.policy_fingerprint == policy.fingerprint:
            log(f"[verifier {name}] up to date: {vpath}")
        elif vkind in UNTRAINED_KINDS:
            untrained_verifier(vkind, policy.path, vpath, overwrite=True, seed=seed)
        else:
            train_verifier(features, VerifierTrainConfig(kind=vkind, epochs=epochs, seed=seed), vpath, log=log,
                           overwrite=True)
        built[name] = vpath
    return built


def value_stage(policy, out: Path, config, log, tasks: tuple[str, ...]) -> dict[str, Path]:
    """`bundles/<policy>-value`: decision logs of `policy` (a loaded bundle) on `tasks` with uniform picks,
    then the value verifier trained on them; skipped when the bundle already belongs to this policy.
    `config`: the recipe's (ArtifactsConfig or sim.regime.RegimeConfig), its `value_*` fields."""
    import shutil

    from sim.evaluate import EvalConfig, run_suite
    from verifiers import load_verifier
    from verifiers.decision_log import read_meta
    from verifiers.value import ValueTrainConfig, train_value_verifier

    kind = Path(policy.path).name
    name, logs = f"{kind}-value", out / "logs" / kind
    vpath = out / "bundles" / name
    existing = _load_or_none(load_verifier, vpath)
    if existing is not None and existing.policy_fingerprint == policy.fingerprint:
        log(f"[verifier {name}] up to date: {vpath}")
        return {name: vpath}
    recorded = _load_or_none(read_meta, logs)
    if recorded is not None and recorded["policy_fingerprint"] != policy.fingerprint:
        log(f"[logs {kind}] {logs} holds another policy's decisions (the policy was retrained): removed")
        shutil.rmtree(logs)
    log(f"[logs {kind}] {config.value_episodes} episodes per task at N={config.value_n}, uniform picks, seeds "
        f"{config.value_seed}- -> {logs} (resumable)")
    run_suite(EvalConfig(policy=str(policy.path), n=config.value_n, tasks=tasks, seed=config.value_seed,
                         episodes=config.value_episodes, explore=1.0, log_decisions=str(logs),
                         workers=config.value_workers, max_steps=config.value_max_steps),
              json_path=out / "logs" / f"{kind}.json", progress=log)
    log(f"[verifier {name}] IQL, {config.value_steps} steps on {logs}")
    train_value_verifier([logs], vpath, ValueTrainConfig(steps=config.value_steps, seed=config.seed), log=log,
                         overwrite=True)
    return {name: vpath}


def combined_stage(policy, bundles: Path, parts: tuple[str, ...], weights: tuple[float, ...], log) -> dict[str, Path]:
    """`bundles/<policy>-combined`: the policy's verifiers `parts` (`bundles/<policy>-<part>`) combined with
    `weights`; skipped when it was made from exactly these components (their graph hashes) and weights."""
    from verifiers import load_verifier
    from verifiers.bundle import VERIFIER_FILE, read_verifier_manifest
    from verifiers.combine import combine_verifiers

    kind = Path(policy.path).name
    name, vpath = f"{kind}-combined", bundles / f"{kind}-combined"
    components = [bundles / f"{kind}-{part}" for part in parts]
    wanted = [(read_verifier_manifest(c).files[VERIFIER_FILE], float(w)) for c, w in zip(components, weights)]
    existing = _load_or_none(load_verifier, vpath)
    if existing is not None and existing.policy_fingerprint == policy.fingerprint:
        made = [(c.get("sha256"), c.get("weight")) for c in existing.manifest.provenance.get("components", [])]
        if made == wanted:
            log(f"[verifier {name}] up to date: {vpath}")
            return {name: vpath}
    log(f"[verifier {name}] {' + '.join(f'{w:g} {p}' for p, w in zip(parts, weights))}, standardised -> {vpath}")
    combine_verifiers([str(c) for c in components], vpath, weights=list(weights), overwrite=True)
    return {name: vpath}


def monitor_stage(policy, bundles: Path, config: ArtifactsConfig, log) -> dict[str, Path]:
    """`bundles/<policy>-monitor`; skipped when it was calibrated for this policy, N, selection verifier and
    scorers (their manifests' hashes) on these rollouts."""
    from policies.schema import content_id, sha256_file
    from runtime.monitor import read_monitor_manifest
    from sim.calibrate_monitor import CalibrateConfig, calibrate_monitor, resolve_accel
    from verifiers.shipped import resolve_verifier

    kind = Path(policy.path).name
    name, path = f"{kind}-monitor", bundles / f"{kind}-monitor"
    verifier = resolve_verifier(config.monitor_verifier, str(policy.path))
    settings = CalibrateConfig(policy=str(policy.path), out=str(path), verifier=verifier, n=config.monitor_n,
                               tasks=config.tasks, episodes=config.monitor_episodes, seed=config.monitor_seed,
                               alpha=config.monitor_alpha, workers=config.value_workers,
                               rollouts=str(bundles.parent / "logs" / name))
    existing = _load_or_none(read_monitor_manifest, path)
    if existing is not None and existing.main is not None:
        scorers = {role: sha256_file(bundles / f"{kind}-{verifier_name}" / "manifest.json")
                   for role, verifier_name in (("pseudocount", "cfn"), ("value", "value"))
                   if (bundles / f"{kind}-{verifier_name}" / "manifest.json").is_file()}
        same = (existing.policy_fingerprint == policy.fingerprint and existing.n == config.monitor_n
                and (existing.verifier or {}).get("content") == content_id(verifier)
                and existing.scorer_manifests == scorers
                and existing.calibration.get("seeds") == [config.monitor_seed,
                                                          config.monitor_seed + config.monitor_episodes - 1]
                and existing.calibration.get("alpha") == config.monitor_alpha
                and (existing.embedding is not None) == (settings.embedding_components > 0)
                and existing.accel == resolve_accel(settings.accel, str(policy.path))
                and existing.accel_window == (settings.execute if existing.accel else None))
        if same:
            log(f"[monitor {name}] up to date: {path}")
            return {name: path}
    log(f"[monitor {name}] {config.monitor_episodes} rollouts at N={config.monitor_n} with verifier "
        f"{config.monitor_verifier} -> {path}")
    calibrate_monitor(settings, progress=log)
    return {name: path}


def _load_or_none(loader, path: Path):
    if not Path(path).exists():
        return None
    try:
        return loader(path)
    except (BundleError, OSError, KeyError, ValueError):
        return None
