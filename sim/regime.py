"""`taco artifacts --recipe taco`: TACO's regime. Pre-train one policy on a broad, mixed-quality corpus,
fine-tune it on a few clean demonstrations of one task, and train the verifiers on the fine-tuning
data only (the value verifier, from the fine-tuned policy's own logged rollouts).

TACO's claim is about such a policy: pre-training leaves it modes that the fine-tuning data does not
support, and a pseudo-count fitted to the fine-tuning data steers away from them. The corpus, recorded
into one dataset (`data/broad`), part after part:

1. transfer_cube with the expert's task modes (clean, high approach, hesitant, detour, regrasp);
2. transfer_cube with off-task modes, failures kept: the handover never happens (`no_handover`), the
   right gripper lets go before the left has closed (`early_release`), and lift_bar's two-armed lift
   around the cube (`bar_lift`), all under the transfer task's instruction;
3. transfer_cube with heavy DART perturbation (0.3 rad in free motion), failures kept;
4. lift_bar and insertion with their task modes, failures kept: other tasks, other scenes.

Then `finetune_episodes` clean transfer_cube episodes on seeds of their own (`data/finetune`); the
policy pre-trained on the corpus (`bundles/pretrained`) is fine-tuned on them from its EMA weights with
a lower learning rate (`bundles/<name>`), and its features and verifiers come from `data/finetune`
alone. Every stage is skipped when its output is up to date and resumes when interrupted, as in
`sim.pipeline`.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

OFF_TASK_MIX = "no_handover:1,early_release:1,bar_lift:1"


@dataclass(frozen=True)
class RegimeConfig:
    out: str = "artifacts"
    # The fine-tuned policy's bundle name (bundles/<name>, verifiers bundles/<name>-<kind>).
    name: str = "taco"
    task: str = "transfer_cube"
    # Corpus parts, episodes each (see the module doc).
    task_mode_episodes: int = 40
    off_task_episodes: int = 40
    perturbed_episodes: int = 30
    perturb: float = 0.3
    other_tasks: tuple[str, ...] = ("lift_bar", "insertion")
    other_task_episodes: int = 20
    finetune_episodes: int = 30
    finetune_seed: int = 200_000
    kind: str = "flow"
    size: str = "default"
    pretrain_steps: int = 4000
    finetune_steps: int = 1500
    finetune_lr: float = 1e-4
    finetune_warmup: int = 100
    batch_size: int = 32
    k: int = 16
    stride: int = 2
    verifiers: tuple[str, ...] = ("cfn", "rnd", "knn", "consensus", "random")
    verifier_epochs: int = 40
    # The value verifier (bundles/<name>-value; 0 episodes: none), as sim.pipeline.ArtifactsConfig's:
    # episodes of the fine-tuned policy on `task` at N=`value_n` with uniform picks, then IQL.
    value_episodes: int = 500
    value_n: int = 16
    value_seed: int = 400_000
    value_steps: int = 20_000
    value_workers: int = 2
    value_max_steps: int | None = None
    seed: int = 0


def corpus_parts(config: RegimeConfig) -> list[tuple[tuple[str, ...], int, dict]]:
    """(tasks, episodes per task in the dataset after this part, RecordConfig settings) per part, in order."""
    t = config.task
    first = config.task_mode_episodes
    second = first + config.off_task_episodes
    third = second + config.perturbed_episodes
    parts = [((t,), first, {}),
             ((t,), second, {"mode": OFF_TASK_MIX, "keep_failures": True}),
             ((t,), third, {"perturb": config.perturb, "keep_failures": True})]
    if config.other_tasks and config.other_task_episodes:
        parts.append((config.other_tasks, config.other_task_episodes, {"keep_failures": True}))
    return parts


def build_regime(config: RegimeConfig, log=None) -> dict[str, Path]:
    """Builds (or finishes building) the corpus, both policies, the features and the verifiers."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    from sim.pipeline import features_and_verifiers, train_stage, value_stage
    from sim.record import RecordConfig, record, recorded_episodes

    out = Path(config.out)
    started = time.perf_counter()
    built: dict[str, Path] = {}
    broad, finetune = out / "data" / "broad", out / "data" / "finetune"
    for tasks, episodes, settings in corpus_parts(config):
        have = Counter(row["task"] for row in recorded_episodes(broad))
        if any(have[task] < episodes for task in tasks):
            log(f"[corpus] {', '.join(tasks)} up to {episodes} episodes each {settings or '(task modes)'} -> {broad}")
            record(RecordConfig(tasks=tasks, episodes=episodes, out=str(broad), seed=config.seed, **settings),
                   progress=log)
    if len(recorded_episodes(finetune)) < config.finetune_episodes:
        log(f"[finetune data] {config.finetune_episodes} clean {config.task} episodes from seed "
            f"{config.finetune_seed} -> {finetune}")
        record(RecordConfig(tasks=(config.task,), episodes=config.finetune_episodes, out=str(finetune),
                            seed=config.finetune_seed), progress=log)
    built["corpus"], built["finetune data"] = broad, finetune

    pretrained = out / "bundles" / "pretrained"
    common = dict(kind=config.kind, size=config.size, batch_size=config.batch_size, seed=config.seed)
    train_stage("pretrain", broad, pretrained, log, steps=config.pretrain_steps, **common)
    policy = out / "bundles" / config.name
    current = train_stage("finetune", finetune, policy, log, steps=config.finetune_steps, lr=config.finetune_lr,
                          warmup_steps=config.finetune_warmup,
                          init_from=str(Path(str(pretrained) + ".ckpt") / "last.pt"), **common)
    built["pretrained"], built[config.name] = pretrained, policy
    built.update(features_and_verifiers(current, finetune, out / "features" / f"{config.name}.npz", "features",
                                        out / "bundles", config.verifiers, log, k=config.k, stride=config.stride,
                                        seed=config.seed, epochs=config.verifier_epochs, threads=2))
    if config.value_episodes:
        built.update(value_stage(current, out, config, log, (config.task,)))
    log(f"regime complete in {time.perf_counter() - started:.0f} s")
    return built
