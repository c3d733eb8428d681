"""Training of verifiers from collected features; each exports `verifier.onnx` (features[N, F] -> scores[N]).

- cfn: Coin Flipping Network pseudo-count (Lobel et al. 2023; TACO). Each training feature gets a fixed
  random +-1 vector of length d; a residual MLP regresses it (MSE). A frozen random prior network, its
  output standardised with statistics of the training features, is added to the prediction, so inputs
  unlike the data keep a large output. Count ~ d / ||f(x)||^2; score = -||f(x)||^2 (argmax score =
  argmax count).
- rnd: random network distillation; score = -||predictor(x) - target(x)||^2.
- knn: score = -mean distance to the k nearest training features (brute force MatMul + TopK in ONNX).
- consensus: needs no training; score = -distance of the candidate's chunk to the mean of the N
  candidates' chunks (the graph takes `chunks` next to the features): the density of the policy's own
  samples rather than the data's.
- random: a uniform pick that never looks at the candidates (a hash of the decision's seed and the
  candidate's index; `--seed` salts it): reproducible, and the N=1 policy in distribution. The baseline
  that best-of-N must beat. (An earlier version hashed the features; see `random_verifier_onnx`.)
Features are standardised with the training set's mean and std inside every graph.
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from policies.extras import require
from verifiers.features import FeatureSet

VERIFIER_KINDS = ("cfn", "rnd", "knn", "consensus", "random")


@dataclass(frozen=True)
class VerifierTrainConfig:
    kind: str = "cfn"
    # Hidden width and residual blocks of the CFN / RND networks (TACO's reference: 1536 and 3).
    hidden: int = 512
    blocks: int = 3
    # CFN coin-flip dimension d; RND embedding size.
    out_dim: int = 20
    epochs: int = 40
    batch_size: int = 512
    lr: float = 1e-3
    # kNN: neighbours averaged, and most training features kept in the index (random subset beyond).
    k: int = 5
    max_points: int = 100_000
    # kNN: features are projected on this many principal components when they have more.
    pca_dims: int = 32
    seed: int = 0
    threads: int = 2

    def __post_init__(self):
        if self.kind not in VERIFIER_KINDS:
            raise ValueError(f"kind: must be one of {', '.join(VERIFIER_KINDS)}, got {self.kind!r}")


def _stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return x.mean(0).astype(np.float32), np.maximum(x.std(0), 1e-6).astype(np.float32)


def _torch_nets():
    torch = require("torch")
    nn = torch.nn

    class Residual(nn.Module):
        def __init__(self, width):
            super().__init__()
            self.norm, self.fc1, self.fc2 = nn.LayerNorm(width), nn.Linear(width, width), nn.Linear(width, width)

        def forward(self, x):
            return x + self.fc2(torch.relu(self.fc1(self.norm(x))))

    class MLP(nn.Module):
        """Residual MLP: in -> hidden -> blocks -> out."""

        def __init__(self, n_in, hidden, blocks, n_out):
            super().__init__()
            self.inp = nn.Linear(n_in, hidden)
            self.blocks = nn.Sequential(*[Residual(hidden) for _ in range(blocks)])
            self.out = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, n_out))

        def forward(self, x):
            return self.out(self.blocks(self.inp(x)))

    class Standardise(nn.Module):
        def __init__(self, mean, std):
            super().__init__()
            self.register_buffer("mean", torch.as_tensor(mean))
            self.register_buffer("std", torch.as_tensor(std))

        def forward(self, x):
            return (x - self.mean) / self.std

    class CFN(nn.Module):
        """f(x) = net(z) + prior_standardised(z), z = standardised features; score = -||f||^2."""

        def __init__(self, mean, std, hidden, blocks, d):
            super().__init__()
            self.norm = Standardise(mean, std)
            self.net = MLP(len(mean), hidden, blocks, d)
            self.prior = MLP(len(mean), hidden, 1, d)
            for p in self.prior.parameters():
                p.requires_grad_(False)
            self.register_buffer("prior_mean", torch.zeros(d))
            self.register_buffer("prior_std", torch.ones(d))

        def output(self, x):
            z = self.norm(x)
            return self.net(z) + (self.prior(z) - self.prior_mean) / self.prior_std

        def forward(self, x):
            return -(self.output(x) ** 2).sum(-1)

    class RND(nn.Module):
        def __init__(self, mean, std, hidden, blocks, d):
            super().__init__()
            self.norm = Standardise(mean, std)
            self.predictor = MLP(len(mean), hidden, blocks, d)
            self.target = MLP(len(mean), hidden, 1, d)
            for p in self.target.parameters():
                p.requires_grad_(False)

        def error(self, x):
            z = self.norm(x)
            return ((self.predictor(z) - self.target(z)) ** 2).sum(-1)

        def forward(self, x):
            return -self.error(x)

    return torch, CFN, RND


def _export_torch(module, feature_dim: int, path: Path, chunk_shape: tuple[int, int] | None = None) -> Path:
    """Exports `module` as a verifier graph: features[N, F] (and, with `chunk_shape` (H, A), chunks[N, H, A])
    -> scores[N], N dynamic. Every trained kind (cfn, rnd, outcome, value) is written by this one call."""
    torch = require("torch")
    import warnings

    from verifiers.bundle import CHUNKS_INPUT

    module.eval()
    args = (torch.zeros(2, feature_dim),) + (() if chunk_shape is None else (torch.zeros(2, *chunk_shape),))
    names = ["features"] + ([] if chunk_shape is None else [CHUNKS_INPUT])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), input_names=names, output_names=["scores"],
                          dynamic_axes={name: {0: "n"} for name in (*names, "scores")}, opset_version=17, dynamo=False)
    return path


def _fit(model, params, loss_fn, n: int, config: VerifierTrainConfig, log) -> list[float]:
    torch = require("torch")
    steps_per_epoch = max(1, int(np.ceil(n / config.batch_size)))
    optim = torch.optim.Adam(params, lr=config.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(optim, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch)
    g = torch.Generator().manual_seed(config.seed)
    history = []
    for epoch in range(config.epochs):
        order = torch.randperm(n, generator=g)
        total = 0.0
        for i in range(steps_per_epoch):
            idx = order[i * config.batch_size:(i + 1) * config.batch_size]
            loss = loss_fn(idx)
            optim.zero_grad()
            loss.backward()
            optim.step()
            sched.step()
            total += loss.item() * len(idx)
        history.append(total / n)
        if (epoch + 1) % max(1, config.epochs // 5) == 0:
            log(f"  epoch {epoch + 1}/{config.epochs}  loss {history[-1]:.4f}")
    return history


# Kinds that need no training data: only the policy's fingerprint and feature size to bind to.
UNTRAINED_KINDS = ("consensus", "random")


def _untrained_onnx(kind: str, path: Path, feature_dim: int, seed: int) -> Path:
    """The graph of a kind that needs no training data (see UNTRAINED_KINDS)."""
    from verifiers.synthetic import consensus_verifier_onnx, random_verifier_onnx

    if kind == "consensus":
        return consensus_verifier_onnx(path, feature_dim)
    return random_verifier_onnx(path, feature_dim, salt=seed)


def untrained_verifier(kind: str, policy: str | Path, out_dir: str | Path, overwrite: bool = False, seed: int = 0):
    """The consensus or random verifier for a policy bundle, which needs no features (`seed` salts random)."""
    from policies.bundle import load_policy_bundle
    from verifiers.bundle import write_verifier_bundle

    if kind not in UNTRAINED_KINDS:
        raise ValueError(f"kind: {kind!r} learns from features; without them only {', '.join(UNTRAINED_KINDS)}")
    bundle = load_policy_bundle(policy)
    f = bundle.manifest.feature_dim
    path = _untrained_onnx(kind, Path(tempfile.mkdtemp(prefix="verifier-")) / "verifier.onnx", f, seed)
    provenance = {"command": " ".join(["taco", *sys.argv[1:]]), "kind": kind}
    if kind == "random":
        provenance["seed"] = seed
    return write_verifier_bundle(path, out_dir, policy_fingerprint=bundle.fingerprint, feature_dim=f, type=kind,
                                 overwrite=overwrite, provenance=provenance)


def train_verifier(features: FeatureSet, config: VerifierTrainConfig, out_dir: str | Path, log=None,
                   overwrite: bool = False):
    """Trains one verifier on `features` and writes a bundle bound to the features' policy."""
    from verifiers.bundle import write_verifier_bundle

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    x = features.features.astype(np.float32)
    mean, std = _stats(x)
    tmp = Path(tempfile.mkdtemp(prefix="verifier-"))
    onnx_path = tmp / "verifier.onnx"
    started = time.perf_counter()
    info: dict = {"kind": config.kind, "train_features": int(len(x)), "settings": config.__dict__}
    if config.kind == "knn":
        from verifiers.synthetic import knn_verifier_onnx

        rng = np.random.default_rng(config.seed)
        keep = x if len(x) <= config.max_points else x[rng.choice(len(x), config.max_points, replace=False)]
        z = (keep - mean) / std
        projection = None
        if z.shape[1] > config.pca_dims:
            # PCA keeps the index small and fast at 10^5 points; distances in the top components.
            _, _, vt = np.linalg.svd(z[rng.choice(len(z), min(len(z), 20_000), replace=False)], full_matrices=False)
            projection = vt[: config.pca_dims].T.astype(np.float32)
            z = z @ projection
        knn_verifier_onnx(onnx_path, z, mean, std, k=config.k, projection=projection)
        info["index_points"] = int(len(keep))
        info["index_dims"] = int(z.shape[1])
    elif config.kind in UNTRAINED_KINDS:
        _untrained_onnx(config.kind, onnx_path, x.shape[1], config.seed)
    else:
        torch, CFN, RND = _torch_nets()
        torch.set_num_threads(config.threads)
        torch.manual_seed(config.seed)
        xt = torch.from_numpy(x)
        if config.kind == "cfn":
            model = CFN(mean, std, config.hidden, config.blocks, config.out_dim)
            with torch.no_grad():  # standardise the frozen prior's output over the data
                prior = model.prior(model.norm(xt))
                model.prior_mean.copy_(prior.mean(0))
                model.prior_std.copy_(prior.std(0).clamp_min(1e-6))
            coins = torch.from_numpy(np.random.default_rng(config.seed).choice([-1.0, 1.0], size=(len(x), config.out_dim))
                                     .astype(np.float32))
            history = _fit(model, model.net.parameters(),
                           lambda idx: ((model.output(xt[idx]) - coins[idx]) ** 2).sum(-1).mean(), len(x), config, log)
            info["loss_history"] = history
        else:  # rnd
            model = RND(mean, std, config.hidden, config.blocks, config.out_dim)
            history = _fit(model, model.predictor.parameters(), lambda idx: model.error(xt[idx]).mean(), len(x),
                           config, log)
            info["loss_history"] = history
        _export_torch(model, x.shape[1], onnx_path)
    info["train_seconds"] = time.perf_counter() - started
    verifier = write_verifier_bundle(onnx_path, out_dir, policy_fingerprint=features.policy_fingerprint,
                                     feature_dim=x.shape[1], type=config.kind, overwrite=overwrite,
                                     provenance={"dataset_fingerprint": features.dataset_fingerprint,
                                                 "command": " ".join(["taco", *sys.argv[1:]]), **info})
    log(f"{config.kind}: trained on {len(x)} features in {info['train_seconds']:.1f} s -> {verifier.path}")
    return verifier
