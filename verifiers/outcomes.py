"""Outcome labels and the verifier that learns from them.

An `OutcomeSet` holds groups of N candidates drawn at one state the policy visited, each labelled with what
happened when it was executed and the policy carried on (`sim.outcomes` makes them in the simulator):
success and best stage. The outcome verifier is a small network trained on those labels: it takes the
candidates' features and, by default, their normalised chunks, and scores each with the log-odds of its
progress, (best stage + success) / (max stage + 1) as a soft label. Its loss is pointwise (cross-entropy
with the soft label) plus listwise within each group (the softmax of the group's scores against the
softmax of its labels): at run time a verifier only ever ranks the N candidates of one state, so what it
must learn is which candidate of a state does better, not which states are easy.

It exports one ONNX graph, `features[N, F], chunks[N, H, A] -> scores[N]`, like every other verifier.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from policies.extras import require
from verifiers.train import _export_torch, _stats

# Arrays of an outcome file, one row per candidate.
_ARRAYS = ("features", "chunks", "success", "stage", "end_step", "episode", "decision", "step", "candidate")


@dataclass
class OutcomeSet:
    """Labelled candidates, grouped by the state they were drawn at (rows of a group are contiguous, N each)."""

    features: np.ndarray  # float32[M, F]
    chunks: np.ndarray  # float32[M, H, A], the policy's normalised action units
    success: np.ndarray  # bool[M]
    stage: np.ndarray  # int64[M], the best stage the branch reached
    end_step: np.ndarray  # int64[M], the control step the branch's episode ended at
    episode: np.ndarray  # int64[M], episode index (seed = meta["seed"] + episode)
    decision: np.ndarray  # int64[M], the decision of the episode the group was drawn at
    step: np.ndarray  # int64[M], the control step of that decision
    candidate: np.ndarray  # int64[M], index in [0, N)
    meta: dict  # policy_fingerprint, task, max_stage, n, execute, seed, ...

    def __post_init__(self):
        m = len(self.features)
        for name in _ARRAYS:
            if len(getattr(self, name)) != m:
                raise ValueError(f"outcomes.{name}: {len(getattr(self, name))} rows, features has {m}")
        n = int(self.meta["n"])
        if m % n or not np.array_equal(self.candidate, np.tile(np.arange(n), m // n)):
            raise ValueError(f"outcomes: rows must come in groups of n={n} candidates, in order")

    @property
    def n(self) -> int:
        return int(self.meta["n"])

    @property
    def policy_fingerprint(self) -> str:
        return self.meta["policy_fingerprint"]

    @property
    def progress(self) -> np.ndarray:
        """float32[M]: (best stage + success) / (max stage + 1), 1 for a success."""
        return ((self.stage + self.success) / (int(self.meta["max_stage"]) + 1)).astype(np.float32)

    def groups(self) -> int:
        return len(self.features) // self.n

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp.npz")
        np.savez_compressed(tmp, **{name: getattr(self, name) for name in _ARRAYS}, meta=json.dumps(self.meta))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> OutcomeSet:
        with np.load(path, allow_pickle=False) as z:
            missing = [name for name in (*_ARRAYS, "meta") if name not in z.files]
            if missing:
                raise ValueError(f"{path}: not an outcome file (missing {', '.join(missing)})")
            return cls(**{name: z[name] for name in _ARRAYS}, meta=json.loads(str(z["meta"])))

    @classmethod
    def concat(cls, parts: list[OutcomeSet]) -> OutcomeSet:
        if not parts:
            raise ValueError("outcomes: nothing to concatenate")
        meta = parts[0].meta
        for p in parts[1:]:
            if p.policy_fingerprint != meta["policy_fingerprint"] or p.n != meta["n"]:
                raise ValueError("outcomes: parts of different policies or n cannot be joined")
        return cls(**{name: np.concatenate([getattr(p, name) for p in parts]) for name in _ARRAYS}, meta=meta)

    def subset(self, episodes) -> OutcomeSet:
        keep = np.isin(self.episode, np.asarray(list(episodes)))
        return OutcomeSet(**{name: getattr(self, name)[keep] for name in _ARRAYS}, meta=self.meta)


def pick_quality(scores: np.ndarray, outcomes: OutcomeSet) -> dict[str, float]:
    """How good the candidates a verifier's scores pick are, over the groups of `outcomes`: the success
    rate and mean progress of the top-scored candidate, against a uniform pick (the policy at N=1, in
    expectation) and the best candidate of each group (the oracle)."""
    n = outcomes.n
    s, y, ok = scores.reshape(-1, n), outcomes.progress.reshape(-1, n), outcomes.success.reshape(-1, n)
    top = np.argmax(s, axis=1)
    rows = np.arange(len(s))
    return {"groups": int(len(s)),
            "picked_success": float(ok[rows, top].mean()), "uniform_success": float(ok.mean()),
            "oracle_success": float(ok.any(axis=1).mean()),
            "picked_progress": float(y[rows, top].mean()), "uniform_progress": float(y.mean()),
            "oracle_progress": float(y.max(axis=1).mean()),
            # Groups where the candidates' outcomes differ: the only ones a verifier can change.
            "informative_groups": int((y.max(axis=1) > y.min(axis=1)).sum())}


@dataclass(frozen=True)
class OutcomeTrainConfig:
    hidden: int = 256
    blocks: int = 2
    epochs: int = 60
    # Groups per batch.
    batch_groups: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    # Whether the network also sees the candidate's normalised chunk (flattened), not only its feature.
    use_chunks: bool = True
    # Weight of the listwise (within-group) term, and the temperature of its target distribution.
    listwise: float = 1.0
    temperature: float = 0.1
    # Share of episodes held out to report pick quality on (0: train on all).
    holdout: float = 0.2
    seed: int = 0
    threads: int = 2


def _network(torch, n_features: int, chunk_shape: tuple[int, int] | None, mean, std, cmean, cstd, config):
    nn = torch.nn

    class OutcomeNet(nn.Module):
        """scores = MLP([standardised features, standardised flattened chunk]) -> the log-odds of progress."""

        def __init__(self):
            super().__init__()
            self.register_buffer("mean", torch.as_tensor(mean))
            self.register_buffer("std", torch.as_tensor(std))
            n_in = n_features
            if chunk_shape is not None:
                self.register_buffer("cmean", torch.as_tensor(cmean))
                self.register_buffer("cstd", torch.as_tensor(cstd))
                n_in += chunk_shape[0] * chunk_shape[1]
            layers = [nn.Linear(n_in, config.hidden), nn.GELU()]
            for _ in range(config.blocks):
                layers += [nn.LayerNorm(config.hidden), nn.Linear(config.hidden, config.hidden), nn.GELU()]
            self.net = nn.Sequential(*layers, nn.Linear(config.hidden, 1))

        def forward(self, features, chunks=None):
            z = (features - self.mean) / self.std
            if chunks is not None:
                c = (chunks.reshape(chunks.shape[0], -1) - self.cmean) / self.cstd
                z = torch.cat([z, c], dim=1)
            return self.net(z)[:, 0]

    return OutcomeNet()


def train_outcome_verifier(outcomes: OutcomeSet, out_dir: str | Path, config: OutcomeTrainConfig | None = None,
                           log=None, overwrite: bool = False):
    """Trains the outcome verifier on `outcomes` and writes its bundle, bound to the outcomes' policy.

    With `holdout` > 0 the last share of episodes is held out first and the pick quality on it (against a
    uniform pick and the oracle) is logged and recorded in the bundle's provenance; the bundle itself is
    then trained on every episode.
    """
    from verifiers.bundle import write_verifier_bundle

    config = config or OutcomeTrainConfig()
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    torch = require("torch")
    torch.set_num_threads(config.threads)
    started = time.perf_counter()
    info: dict = {"kind": "outcome", "settings": asdict(config), "groups": outcomes.groups(),
                  "outcomes": {k: outcomes.meta.get(k) for k in ("task", "n", "execute", "seed", "episodes")}}
    episodes = np.unique(outcomes.episode)
    held = episodes[len(episodes) - int(round(config.holdout * len(episodes))):] if config.holdout else episodes[:0]
    if len(held) and len(held) < len(episodes):
        model = _fit_outcomes(torch, outcomes.subset(np.setdiff1d(episodes, held)), config, log)
        test = outcomes.subset(held)
        quality = pick_quality(_scores(torch, model, test, config), test)
        info["holdout"] = {"episodes": [int(e) for e in held], **quality}
        log(f"held-out {len(held)} episodes, {quality['groups']} states ({quality['informative_groups']} where the "
            f"candidates' outcomes differ): picked success {quality['picked_success']:.3f}, uniform "
            f"{quality['uniform_success']:.3f}, oracle {quality['oracle_success']:.3f}; progress "
            f"{quality['picked_progress']:.3f} / {quality['uniform_progress']:.3f} / {quality['oracle_progress']:.3f}")
    model = _fit_outcomes(torch, outcomes, config, log)
    info["train_seconds"] = time.perf_counter() - started
    path = Path(tempfile.mkdtemp(prefix="verifier-")) / "verifier.onnx"
    _export(model, outcomes, config, path)
    verifier = write_verifier_bundle(path, out_dir, policy_fingerprint=outcomes.policy_fingerprint,
                                     feature_dim=outcomes.features.shape[1], type="outcome", overwrite=overwrite,
                                     provenance={"command": " ".join(["taco", *sys.argv[1:]]), **info})
    log(f"outcome: trained on {outcomes.groups()} states x {outcomes.n} candidates in {info['train_seconds']:.1f} s "
        f"-> {verifier.path}")
    return verifier


def _tensors(torch, outcomes: OutcomeSet, config: OutcomeTrainConfig):
    x = torch.from_numpy(outcomes.features.astype(np.float32))
    c = torch.from_numpy(outcomes.chunks.astype(np.float32)) if config.use_chunks else None
    return x, c


def _fit_outcomes(torch, outcomes: OutcomeSet, config: OutcomeTrainConfig, log):
    torch.manual_seed(config.seed)
    x, c = _tensors(torch, outcomes, config)
    model = _network(torch, x.shape[1], outcomes.chunks.shape[1:] if config.use_chunks else None,
                     *_stats(outcomes.features), *_stats(outcomes.chunks.reshape(len(outcomes.chunks), -1)), config)
    y = torch.from_numpy(outcomes.progress)
    n, groups = outcomes.n, outcomes.groups()
    optim = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    g = torch.Generator().manual_seed(config.seed)
    steps = max(1, int(np.ceil(groups / config.batch_groups)))
    sched = torch.optim.lr_scheduler.OneCycleLR(optim, max_lr=config.lr, total_steps=config.epochs * steps)
    bce = torch.nn.BCEWithLogitsLoss()
    model.train()
    for epoch in range(config.epochs):
        order = torch.randperm(groups, generator=g)
        total = 0.0
        for i in range(steps):
            batch = order[i * config.batch_groups:(i + 1) * config.batch_groups]
            rows = (batch[:, None] * n + torch.arange(n)).reshape(-1)
            logits = model(x[rows], None if c is None else c[rows])
            target = y[rows]
            loss = bce(logits, target)
            if config.listwise:
                # ListNet within each state: softmax of the scores against a sharpened softmax of the labels.
                s, t = logits.reshape(-1, n), target.reshape(-1, n)
                differ = (t.max(1).values > t.min(1).values)
                if differ.any():
                    p = torch.softmax(t[differ] / config.temperature, dim=1)
                    loss = loss + config.listwise * -(p * torch.log_softmax(s[differ], dim=1)).sum(1).mean()
            optim.zero_grad()
            loss.backward()
            optim.step()
            sched.step()
            total += loss.item()
        if (epoch + 1) % max(1, config.epochs // 4) == 0:
            log(f"  epoch {epoch + 1}/{config.epochs}  loss {total / steps:.4f}")
    return model.eval()


def _scores(torch, model, outcomes: OutcomeSet, config: OutcomeTrainConfig) -> np.ndarray:
    x, c = _tensors(torch, outcomes, config)
    with torch.no_grad():
        return model(x, c).numpy()


def _export(model, outcomes: OutcomeSet, config: OutcomeTrainConfig, path: Path) -> Path:
    return _export_torch(model, outcomes.features.shape[1], path,
                         tuple(outcomes.chunks.shape[1:]) if config.use_chunks else None)
