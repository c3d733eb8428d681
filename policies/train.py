"""`taco train-policy`: trains a flow or diffusion chunk policy on a LeRobotDataset, then exports a bundle.

CPU-friendly: the whole dataset sits in memory as arrays; each step samples random frames, their
action chunks (padded with the episode's last action) and applies a small random image shift.
Checkpoints (model, EMA, optimiser, RNG states) are written every `checkpoint_every` steps into
`<out>.ckpt/`; rerunning the same command resumes from the last one. Validation loss on held-out
episodes is logged with the EMA weights, which are the ones exported.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from policies.extras import require

torch = require("torch")

from policies.config import PolicyConfig, make_config  # noqa: E402
from policies.data import TrainingData, load_dataset  # noqa: E402
from policies.manifest import Normalization  # noqa: E402
from policies.tokenizer import ByteTokenizer  # noqa: E402


@dataclass(frozen=True)
class TrainConfig:
    """One training run; recorded in the checkpoint and the bundle's provenance."""

    # LeRobotDataset v3 folder.
    dataset: str
    # Bundle folder written at the end.
    out: str
    kind: str = "flow"
    # Model size preset (policies.config.SIZES); cameras come from the dataset.
    size: str = "default"
    # Spatial-softmax keypoints per camera; None keeps the size preset's (PolicyConfig.keypoints).
    keypoints: int | None = None
    # Steps ahead of the auxiliary future-state loss; None keeps the size preset's (PolicyConfig.future_steps).
    future_steps: tuple[int, ...] | None = None
    # Actions per chunk; None keeps the size preset's (16). Asynchronous execution needs a chunk longer than
    # the inference delay plus the actions executed from it (docs/async.md).
    chunk_length: int | None = None
    steps: int = 20_000
    batch_size: int = 32
    lr: float = 3e-4
    weight_decay: float = 1e-4
    warmup_steps: int = 500
    # Exponential moving average of the weights, used for validation and export.
    ema_decay: float = 0.999
    # Fraction of episodes held out for validation (at least one).
    val_fraction: float = 0.05
    val_every: int = 500
    checkpoint_every: int = 1000
    # Max random image shift, pixels (augmentation). Off by default: the cameras are fixed, and a shift of
    # 4 px at 96x128 moves a 3-pixel cube by about 5 cm, which is more than a grasp tolerates.
    shift: int = 0
    # Std of Gaussian noise added to the normalised state input (training and validation batches).
    # Against copycat behaviour: along a scripted expert's trajectory the arm's position already tells
    # where the object is, so a policy can learn to continue the motion from the state and ignore the
    # camera, which fails closed loop from the reset pose. Large noise (0.5) makes the camera matter
    # but blurs where the arm is; the recovery episodes and `start_fraction` do most of that work, so
    # the default is light.
    state_noise: float = 0.1
    # Fraction of each batch drawn from the first `start_frames` frames of the episodes. Every episode
    # starts from the same reset pose, so there only the camera tells episodes apart, and the first chunk
    # sets the direction the arm then keeps (later the motion so far already points at the object): with
    # frames drawn uniformly those are ~2% of a batch, too few for the encoder to learn to look.
    start_fraction: float = 0.25
    start_frames: int = 10
    seed: int = 0
    # Torch intra-op threads.
    threads: int = 2
    sampler: str = "unrolled"
    # A training checkpoint (OUT.ckpt/last.pt) whose EMA weights start this run instead of a random init:
    # fine-tuning on more data (e.g. recovery episodes) without paying for the first run again. The
    # model sizes must match; optimiser, schedule and normalisation start fresh from this run's data.
    init_from: str | None = None

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be >= 1")
        if self.state_noise < 0 or self.shift < 0:
            raise ValueError(f"state_noise and shift must be >= 0, got {self.state_noise} and {self.shift}")
        if not 0 <= self.start_fraction <= 1 or self.start_frames < 1:
            raise ValueError(f"start_fraction: must be in [0, 1] and start_frames >= 1, got {self.start_fraction} "
                             f"and {self.start_frames}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction: must be in (0, 1), got {self.val_fraction}")


class Batcher:
    """Random training batches of (images, state, tokens, action chunk), normalised, as torch tensors."""

    def __init__(self, data: TrainingData, episodes: list[int], cfg: PolicyConfig, norm: Normalization,
                 shift: int, rng: np.random.Generator, state_noise: float = 0.0, start_fraction: float = 0.0,
                 start_frames: int = 10):
        self.data, self.episodes, self.cfg, self.shift, self.rng = data, episodes, cfg, shift, rng
        self.state_noise, self.start_fraction, self.start_frames = state_noise, start_fraction, start_frames
        self.s_mean, self.s_std = np.asarray(norm.state_mean, np.float32), np.asarray(norm.state_std, np.float32)
        self.a_mean, self.a_std = np.asarray(norm.action_mean, np.float32), np.asarray(norm.action_std, np.float32)
        self.i_mean = np.asarray(norm.image_mean, np.float32).reshape(1, 3, 1, 1)
        self.i_std = np.asarray(norm.image_std, np.float32).reshape(1, 3, 1, 1)
        tok = ByteTokenizer(cfg.max_text_len)
        self.tokens = {e: tok.encode(data.episodes[e].task) for e in episodes}
        lengths = np.array([len(data.episodes[e]) for e in episodes], np.float64)
        self.p = lengths / lengths.sum()

    def sample(self, batch: int, rng: np.random.Generator | None = None):
        rng = rng or self.rng
        h = self.cfg.chunk_length
        eps = rng.choice(self.episodes, size=batch, p=self.p)
        images = {c.name: [] for c in self.cfg.cameras}
        states, tokens, chunks, futures = [], [], [], []
        ahead = np.asarray(self.cfg.future_steps, np.int64)
        starts = rng.random(batch) < self.start_fraction
        for e, start in zip(eps, starts):
            ep = self.data.episodes[e]
            t = int(rng.integers(min(self.start_frames, len(ep)) if start else len(ep)))
            chunks.append(ep.chunk(t, h))
            states.append(ep.state[t])
            futures.append(ep.state[np.minimum(t + ahead, len(ep) - 1)])
            tokens.append(self.tokens[e])
            for c in self.cfg.cameras:
                images[c.name].append(self._shifted(ep.images[c.name][t], rng))
        as_t = torch.from_numpy
        img = [as_t(((np.stack(images[c.name]).transpose(0, 3, 1, 2) / np.float32(255.0)) - self.i_mean) / self.i_std)
               for c in self.cfg.cameras]
        state = (np.stack(states) - self.s_mean) / self.s_std
        if self.state_noise > 0:
            state = state + rng.normal(0.0, self.state_noise, state.shape).astype(np.float32)
        state = as_t(state.astype(np.float32))
        action = as_t((np.stack(chunks) - self.a_mean) / self.a_std)
        # The robot's state future_steps ahead (past the end: the last one), normalised, never noised.
        future = as_t(((np.stack(futures) - self.s_mean) / self.s_std).astype(np.float32)) if len(ahead) else None
        return img, state, as_t(np.stack(tokens)), action, future

    def _shifted(self, image: np.ndarray, rng) -> np.ndarray:
        if self.shift <= 0:
            return image.astype(np.float32)
        s = self.shift
        padded = np.pad(image, ((s, s), (s, s), (0, 0)), mode="edge")
        dy, dx = rng.integers(0, 2 * s + 1, size=2)
        return padded[dy: dy + image.shape[0], dx: dx + image.shape[1]].astype(np.float32)


def _lr(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _split(n_episodes: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    order = np.random.default_rng(seed).permutation(n_episodes)
    n_val = max(1, round(n_episodes * fraction)) if n_episodes > 1 else 0
    val = sorted(order[:n_val].tolist())
    train = sorted(order[n_val:].tolist())
    return train, (val or train)


def train_policy(config: TrainConfig, log=None) -> Path:
    """Trains (resuming from `<out>.ckpt/last.pt` when it matches this config) and exports the bundle."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    from policies.export import export_bundle
    from policies.models import build_policy

    torch.set_num_threads(config.threads)
    data = load_dataset(config.dataset, progress=lambda i, n: log(f"decoded episode {i}/{n}") if i == n else None)
    overrides = {} if config.keypoints is None else {"keypoints": config.keypoints}
    if config.future_steps is not None:
        overrides["future_steps"] = tuple(config.future_steps)
    if config.chunk_length is not None:
        overrides["chunk_length"] = config.chunk_length
    policy_cfg = make_config(config.size, config.kind, cameras=data.cameras, state_names=data.state_names,
                             action_names=data.action_names, action_dt=1.0 / data.fps, **overrides)
    norm = data.normalization()
    train_eps, val_eps = _split(len(data.episodes), config.val_fraction, config.seed)
    log(f"dataset {config.dataset}: {len(data.episodes)} episodes ({len(train_eps)} train, {len(val_eps)} val), "
        f"{sum(len(e) for e in data.episodes)} frames, fingerprint {data.fingerprint[:12]}")
    model = build_policy(policy_cfg, seed=config.seed).train()
    ema = copy.deepcopy(model).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    optim = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    rng = np.random.default_rng(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    ckpt_dir = Path(str(config.out).rstrip("/") + ".ckpt")
    ckpt = ckpt_dir / "last.pt"
    step, history = 0, []
    settings = dataclasses.asdict(config)
    if ckpt.is_file():
        state = torch.load(ckpt, weights_only=False)
        # Settings added since the checkpoint was written count as their defaults.
        saved = {**dataclasses.asdict(TrainConfig(dataset=config.dataset, out=config.out)), **state["config"]}
        if saved != settings or state["dataset_fingerprint"] != data.fingerprint:
            raise ValueError(f"{ckpt} was made by another configuration or dataset; delete {ckpt_dir} to start over")
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optim.load_state_dict(state["optim"])
        rng.bit_generator.state = state["numpy_rng"]
        gen.set_state(state["torch_rng"])
        step, history = state["step"], state["history"]
        log(f"resuming from {ckpt} at step {step}")
    elif config.init_from:
        init = torch.load(config.init_from, weights_only=False)
        # Through from_dict, so a checkpoint written before a config field existed compares with its default.
        init_cfg = PolicyConfig.from_dict(init["policy_config"])
        init_steps = init_cfg.future_steps
        # A run may add keypoints to a model that had none: those modules start fresh, the rest is loaded.
        adds_keypoints = init_cfg.keypoints == 0 and policy_cfg.keypoints > 0
        if adds_keypoints:
            init_cfg = dataclasses.replace(init_cfg, keypoints=policy_cfg.keypoints)
        # The future-state head is training-only: this run's settings apply, and a head it lacks starts fresh.
        init_cfg = dataclasses.replace(init_cfg, future_steps=policy_cfg.future_steps,
                                       future_weight=policy_cfg.future_weight)
        if init_cfg != policy_cfg:
            raise ValueError(f"init_from: {config.init_from} holds a {init['policy_config']['kind']} model of another "
                             f"size or layout than this run's")
        weights = {k: v for k, v in init["ema"].items()
                   if not k.startswith("future_head.") or policy_cfg.future_steps == init_steps}
        for target in (model, ema):
            missing, unexpected = target.load_state_dict(weights, strict=False)
            if unexpected or any(not k.startswith(("encoder.keypoint_", "future_head.")) for k in missing):
                raise ValueError(f"init_from: {config.init_from} does not fit this model (missing {missing}, "
                                 f"unexpected {unexpected})")
        if adds_keypoints:
            log(f"init_from: the checkpoint has no keypoint head; {policy_cfg.keypoints} keypoints start fresh")
        log(f"initialised from the EMA weights of {config.init_from} (step {init['step']})")
    batcher = Batcher(data, train_eps, policy_cfg, norm, config.shift, rng, config.state_noise,
                      config.start_fraction, config.start_frames)
    val_batcher = Batcher(data, val_eps, policy_cfg, norm, 0, np.random.default_rng(config.seed + 1), config.state_noise)
    val_batches = [val_batcher.sample(config.batch_size, np.random.default_rng([config.seed, i])) for i in range(4)]

    def validate() -> float:
        with torch.no_grad():
            g = torch.Generator().manual_seed(12345)
            return float(np.mean([ema.loss(*b, generator=g).item() for b in val_batches]))

    def save():
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        tmp = ckpt_dir / "last.pt.tmp"
        torch.save({"config": settings, "dataset_fingerprint": data.fingerprint, "step": step, "history": history,
                    "model": model.state_dict(), "ema": ema.state_dict(), "optim": optim.state_dict(),
                    "numpy_rng": rng.bit_generator.state, "torch_rng": gen.get_state(),
                    "policy_config": policy_cfg.to_dict(), "normalization": norm.to_dict()}, tmp)
        tmp.replace(ckpt)

    started, losses = time.perf_counter(), []
    start_step = step
    while step < config.steps:
        for group in optim.param_groups:
            group["lr"] = _lr(config, step)
        loss = model.loss(*batcher.sample(config.batch_size), generator=gen)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        with torch.no_grad():
            decay = min(config.ema_decay, (1 + step) / (10 + step))
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.mul_(decay).add_(pm.detach(), alpha=1 - decay)
        losses.append(loss.item())
        step += 1
        if step % config.checkpoint_every == 0 or step == config.steps:
            save()
        if step % config.val_every == 0 or step == config.steps:
            val = validate()
            rate = (step - start_step) / (time.perf_counter() - started)
            history.append({"step": step, "train_loss": float(np.mean(losses)), "val_loss": val})
            log(f"step {step}/{config.steps}  train loss {np.mean(losses):.4f}  val loss {val:.4f}  "
                f"lr {_lr(config, step - 1):.2e}  {rate:.1f} steps/s  eta {(config.steps - step) / rate / 60:.1f} min")
            losses = []
    provenance = {
        "command": " ".join(["taco", *sys.argv[1:]]) if sys.argv and "taco" in sys.argv[0] else None,
        "dataset": str(config.dataset), "dataset_fingerprint": data.fingerprint,
        "training": {**settings, "final": history[-1] if history else None},
        "weights": f"EMA after {step} steps",
    }
    bundle = export_bundle(ema, config.out, normalization=norm, sampler=config.sampler, overwrite=True,
                           provenance=provenance)
    (ckpt_dir / "history.json").write_text(json.dumps(history, indent=1) + "\n")
    log(f"exported {bundle.path} (fingerprint {bundle.fingerprint[:12]})")
    return bundle.path


def export_checkpoint(checkpoint: str | Path, out: str | Path, sampler: str = "unrolled",
                      like: str | Path | None = None):
    """Exports the EMA weights of a training checkpoint (e.g. mid-training, to evaluate it) as a bundle.

    `like`: the bundle these weights were exported to before. The new export takes this version's graph
    inputs (real-time chunking, a per-candidate prefix), with `like`'s name, sampler mode and provenance
    (its best verifier included), once its candidates and features agree with `like`'s bit for bit
    (`policies.compare.compare_policies`); else ValueError, and `out` is removed.
    """
    import datetime
    import shutil

    from policies.bundle import load_policy_bundle, write_manifest
    from policies.compare import compare_policies
    from policies.export import OPSET, export_bundle
    from policies.models import build_policy

    state = torch.load(checkpoint, weights_only=False)
    cfg = PolicyConfig.from_dict(state["policy_config"])
    model = build_policy(cfg)
    model.load_state_dict(state["ema"])
    n = state["normalization"]
    norm = Normalization(tuple(n["state"]["mean"]), tuple(n["state"]["std"]), tuple(n["action"]["mean"]),
                         tuple(n["action"]["std"]), tuple(n["image"]["mean"]), tuple(n["image"]["std"]))
    provenance = {"dataset": state["config"]["dataset"], "dataset_fingerprint": state["dataset_fingerprint"],
                  "training": {**state["config"], "final": state["history"][-1] if state["history"] else None},
                  "weights": f"EMA at step {state['step']} (checkpoint {checkpoint})"}
    if like is None:
        return export_bundle(model.eval(), out, normalization=norm, sampler=sampler, overwrite=True,
                             provenance=provenance)
    before = load_policy_bundle(like)
    if before.manifest.provenance.get("dataset_fingerprint") not in (None, state["dataset_fingerprint"]):
        raise ValueError(f"like: {like} was trained on dataset {before.manifest.provenance['dataset_fingerprint']}, "
                         f"the checkpoint on {state['dataset_fingerprint']}")
    reexported = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
                  "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  "torch": torch.__version__, "opset": OPSET, "checkpoint": str(checkpoint), "step": state["step"],
                  "from_fingerprint": before.fingerprint}
    bundle = export_bundle(model.eval(), out, normalization=norm, sampler=before.manifest.sampler,
                           name=before.manifest.name, overwrite=True,
                           provenance={**before.manifest.provenance, "reexported": reexported})
    try:
        diff = compare_policies(before.path, bundle.path)
        if max(diff.values()) > 0:
            raise ValueError(f"like: the checkpoint's export differs from {like} by up to {max(diff.values()):.3g} "
                             f"({', '.join(k for k, v in diff.items() if v > 0)}); it holds other weights")
    except ValueError:
        shutil.rmtree(bundle.path)
        raise
    # What was compared goes into the provenance, which is outside the fingerprint.
    provenance = bundle.manifest.provenance
    write_manifest(bundle.path, dataclasses.replace(bundle.manifest, provenance={
        **provenance, "reexported": {**provenance["reexported"], "max_difference": diff}}))
    return load_policy_bundle(bundle.path)
