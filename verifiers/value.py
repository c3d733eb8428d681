"""Value verifiers: a critic learned offline from decision logs, scoring each candidate by the return it leads to.

The transitions are chunk-level: decision t of a logged episode is a state s_t, the candidate executed
is the action a_t, and the reward is the episode's outcome at its last decision (`reward="success"`: 1
for a success; `"progress"`: (best stage + success) / (max stage + 1), or an operator's progress label),
or, in simulation, that same progress paid as it is made (`"stage"`: each decision earns the rise of the
best stage during its chunk, / (max stage + 1), and the last one the success too: the same sum, paid
where the candidate that earned it was executed). The
state is what the verifier graph can see at run time: the mean of the N candidates' features (the
policy's reading of the observation, whatever the candidates); the action is the candidate's own feature
and normalised chunk. So the exported graph keeps the verifier signature, `features[N, F], chunks[N, H, A]
-> scores[N]`, and swaps, combines and binds like every other verifier.

Two methods:
- `iql`, Implicit Q-Learning (Kostrikov et al. 2021): V(s) is the tau-expectile of the target critics'
  Q(s, a) over the logged actions, and Q(s, a) regresses r + gamma * V(s'). The critic is trained on
  executed candidates only, never queried on actions no log holds; and at run time it ranks the policy's
  own samples, which is where those actions came from. Twin critics, the minimum of their targets.
- `mc`: Q(s_t, a_t) regresses the discounted Monte-Carlo return gamma^(T-1-t) r: the baseline IQL
  must beat (it values the logged behaviour, not the best of it).

Score = Q(s, a_i) (IQL: the minimum of the twin critics). A pessimistic variant, the value minus a
pseudo-count's uncertainty as TACO would have it, is `taco combine-verifiers` of this verifier with the
policy's CFN. Held-out episodes report how well the value of the executed candidate separates the
episodes that succeeded (AUC) and how well its advantage over the decision's other candidates does.
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from policies.extras import require
from verifiers.decision_log import LoggedEpisode, read_episodes
from verifiers.train import _export_torch, _stats

METHODS = ("iql", "mc")
REWARDS = ("success", "progress", "stage")


@dataclass(frozen=True)
class ValueTrainConfig:
    method: str = "iql"
    reward: str = "success"
    # Discount per decision (a decision every `execute` control steps: 8 x 20 ms by default).
    gamma: float = 0.97
    # IQL's expectile of V over the logged actions (0.5: the mean, the behaviour's value).
    expectile: float = 0.8
    # Polyak rate of the target critics.
    tau: float = 0.005
    hidden: int = 256
    layers: int = 3
    steps: int = 20_000
    batch_size: int = 256
    lr: float = 3e-4
    weight_decay: float = 1e-4
    # Share of episodes (the last ones, by log and key) held out to report on; the bundle is then trained
    # on every episode. 0: train on all, report nothing.
    holdout: float = 0.2
    seed: int = 0
    threads: int = 2

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method: must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.reward not in REWARDS:
            raise ValueError(f"reward: must be one of {', '.join(REWARDS)}, got {self.reward!r}")
        if not 0 < self.gamma <= 1 or not 0 < self.expectile < 1 or not 0 < self.tau <= 1:
            raise ValueError("gamma must be in (0, 1], expectile in (0, 1), tau in (0, 1]")
        if not 0 <= self.holdout < 1 or self.steps < 1 or self.batch_size < 1:
            raise ValueError("holdout must be in [0, 1); steps and batch_size >= 1")


@dataclass
class Transitions:
    """Chunk-level transitions of labelled episodes, one row per decision."""

    context: np.ndarray  # float32[T, F]: mean of the decision's candidates' features (the state)
    feature: np.ndarray  # float32[T, F]: the executed candidate's feature
    chunk: np.ndarray  # float32[T, H*A]: the executed candidate's normalised chunk, flattened
    reward: np.ndarray  # float32[T]
    done: np.ndarray  # float32[T]: 1 at an episode's last decision
    next_context: np.ndarray  # float32[T, F] (its own context where done)
    returns: np.ndarray  # float32[T]: discounted Monte-Carlo return
    episode: np.ndarray  # int64[T]: index into the episode list
    success: np.ndarray  # bool[T]: the episode's outcome

    def __len__(self) -> int:
        return len(self.reward)


def _outcome(episode: LoggedEpisode, reward: str) -> float:
    return float(bool(episode.success)) if reward == "success" else float(episode.progress)


def _stage_rewards(ep: LoggedEpisode) -> np.ndarray:
    """float32[D]: per decision, the rise of the episode's best stage over its chunk, and the success at the
    last, over (max stage + 1)."""
    if not len(ep.rewards) or not np.isfinite(ep.rewards).all() or ep.meta.get("max_stage") is None:
        raise ValueError(f"value: reward 'stage' needs the simulator's per-step rewards; episode "
                         f"{ep.meta.get('key')!r} "
                         f"of {ep.meta.get('log')} has none (a robot's log: use --reward success or progress)")
    best = np.maximum.accumulate(np.maximum(ep.rewards, 0))
    ends = np.append(ep.step[1:], len(best)) - 1  # the last step of each decision's chunk
    after = best[ends]
    before = np.concatenate([[0.0], after[:-1]])
    reward = (after - before).astype(np.float32)
    reward[-1] += bool(ep.success)
    return reward / (int(ep.meta["max_stage"]) + 1)


def transitions(episodes: list[LoggedEpisode], config: ValueTrainConfig) -> Transitions:
    """The transitions of the labelled episodes (unlabelled ones are skipped)."""
    parts = {k: [] for k in Transitions.__dataclass_fields__}
    for index, ep in enumerate(episodes):
        if ep.success is None:
            continue
        d = len(ep.chosen)
        rows = np.arange(d)
        context = ep.features.mean(axis=1)
        if config.reward == "stage":
            reward = _stage_rewards(ep)
        else:
            reward = np.zeros(d, np.float32)
            reward[-1] = _outcome(ep, config.reward)
        done = np.zeros(d, np.float32)
        done[-1] = 1.0
        parts["context"].append(context)
        parts["feature"].append(ep.features[rows, ep.chosen])
        parts["chunk"].append(ep.chunks[rows, ep.chosen].reshape(d, -1))
        parts["reward"].append(reward)
        parts["done"].append(done)
        parts["next_context"].append(np.concatenate([context[1:], context[-1:]]))
        discount = config.gamma ** (rows[None] - rows[:, None]) * (rows[None] >= rows[:, None])
        parts["returns"].append((discount @ reward).astype(np.float32))
        parts["episode"].append(np.full(d, index, np.int64))
        parts["success"].append(np.full(d, bool(ep.success)))
    if not parts["reward"]:
        raise ValueError("value: no labelled episode in the logs (label robot episodes with `taco label`)")
    return Transitions(**{k: np.concatenate(v) for k, v in parts.items()})


def _networks(torch, f: int, ha: int, stats: dict, config: ValueTrainConfig):
    nn = torch.nn

    def mlp(n_in: int):
        layers, width = [], n_in
        for _ in range(config.layers):
            layers += [nn.Linear(width, config.hidden), nn.LayerNorm(config.hidden), nn.GELU()]
            width = config.hidden
        return nn.Sequential(*layers, nn.Linear(width, 1))

    class Critic(nn.Module):
        """Q(s, a) from [context, the candidate's feature, its chunk], each standardised."""

        def __init__(self, heads: int):
            super().__init__()
            for name, value in stats.items():
                self.register_buffer(name, torch.as_tensor(value))
            self.heads = nn.ModuleList([mlp(2 * f + ha) for _ in range(heads)])

        def inputs(self, context, feature, chunk):
            return torch.cat([(context - self.f_mean) / self.f_std, (feature - self.f_mean) / self.f_std,
                              (chunk - self.c_mean) / self.c_std], dim=1)

        def all(self, context, feature, chunk):
            z = self.inputs(context, feature, chunk)
            return torch.stack([h(z)[:, 0] for h in self.heads])

        def forward(self, context, feature, chunk):
            return self.all(context, feature, chunk).min(dim=0).values

    class Value(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("f_mean", torch.as_tensor(stats["f_mean"]))
            self.register_buffer("f_std", torch.as_tensor(stats["f_std"]))
            self.net = mlp(f)

        def forward(self, context):
            return self.net((context - self.f_mean) / self.f_std)[:, 0]

    class Scorer(nn.Module):
        """The exported graph: features[N, F], chunks[N, H, A] -> Q of each candidate in its decision."""

        def __init__(self, critic):
            super().__init__()
            self.critic = critic

        def forward(self, features, chunks):
            context = features.mean(dim=0, keepdim=True).expand_as(features)
            return self.critic(context, features, chunks.reshape(chunks.shape[0], -1))

    return Critic, Value, Scorer


def _fit(torch, data: Transitions, config: ValueTrainConfig, log):
    """Trains the critic on `data`; returns it (eval mode)."""
    import copy

    torch.manual_seed(config.seed)
    f, ha = data.feature.shape[1], data.chunk.shape[1]
    f_mean, f_std = _stats(np.concatenate([data.context, data.feature]))
    c_mean, c_std = _stats(data.chunk)
    Critic, Value, Scorer = _networks(torch, f, ha, dict(f_mean=f_mean, f_std=f_std, c_mean=c_mean, c_std=c_std),
                                      config)
    t = {k: torch.from_numpy(np.ascontiguousarray(getattr(data, k), dtype=np.float32))
         for k in ("context", "feature", "chunk", "reward", "done", "next_context", "returns")}
    iql = config.method == "iql"
    critic = Critic(2 if iql else 1)
    params = list(critic.parameters())
    if iql:
        value, target = Value(), copy.deepcopy(critic)
        for p in target.parameters():
            p.requires_grad_(False)
        params += list(value.parameters())
    optim = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(optim, config.steps)
    g = torch.Generator().manual_seed(config.seed)
    every = max(1, config.steps // 4)
    total = 0.0
    for step in range(1, config.steps + 1):
        rows = torch.randint(len(data), (min(config.batch_size, len(data)),), generator=g)
        s, a, c = t["context"][rows], t["feature"][rows], t["chunk"][rows]
        if iql:
            with torch.no_grad():
                q_target = target(s, a, c)
                v_next = value(t["next_context"][rows])
            v = value(s)
            u = q_target - v
            v_loss = (torch.abs(config.expectile - (u < 0).float()) * u ** 2).mean()
            y = t["reward"][rows] + config.gamma * (1 - t["done"][rows]) * v_next
            q_loss = ((critic.all(s, a, c) - y[None]) ** 2).mean()
            loss = v_loss + q_loss
        else:
            loss = ((critic(s, a, c) - t["returns"][rows]) ** 2).mean()
        optim.zero_grad()
        loss.backward()
        optim.step()
        sched.step()
        if iql:
            with torch.no_grad():
                for p, q in zip(target.parameters(), critic.parameters()):
                    p.mul_(1 - config.tau).add_(q, alpha=config.tau)
        total += loss.item()
        if step % every == 0:
            log(f"  step {step}/{config.steps}  loss {total / every:.5f}")
            total = 0.0
    return Scorer(critic.eval()).eval()


def candidate_scores(torch, scorer, episodes: list[LoggedEpisode]) -> list[np.ndarray]:
    """float32[D, N] per episode: the scorer's score of every logged candidate of every decision."""
    out = []
    with torch.no_grad():
        for ep in episodes:
            out.append(np.stack([scorer(torch.from_numpy(ep.features[d]), torch.from_numpy(ep.chunks[d])).numpy()
                                 for d in range(len(ep.chosen))]))
    return out


def _auc(positive: np.ndarray, negative: np.ndarray) -> float | None:
    """P(a positive scores above a negative), ties half: the Mann-Whitney U over n1 * n2."""
    if not len(positive) or not len(negative):
        return None
    from scipy.stats import mannwhitneyu

    return float(mannwhitneyu(positive, negative).statistic / (len(positive) * len(negative)))


def holdout_quality(scores: list[np.ndarray], episodes: list[LoggedEpisode]) -> dict:
    """On held-out labelled episodes: the AUC of the executed candidate's value, averaged over each
    episode's decisions, for the episode's success; and the AUC of its advantage (its score minus the mean
    score of its decision's candidates): whether the value tells apart the picks that led to success."""
    value, advantage, ok = [], [], []
    for s, ep in zip(scores, episodes):
        if ep.success is None:
            continue
        rows = np.arange(len(ep.chosen))
        picked = s[rows, ep.chosen]
        value.append(float(picked.mean()))
        advantage.append(float((picked - s.mean(axis=1)).mean()))
        ok.append(bool(ep.success))
    value, advantage, ok = np.asarray(value), np.asarray(advantage), np.asarray(ok, bool)
    return {"episodes": int(len(ok)), "successes": int(ok.sum()),
            "value_auc": _auc(value[ok], value[~ok]), "advantage_auc": _auc(advantage[ok], advantage[~ok])}


def train_value_verifier(logs: list[str | Path], out_dir: str | Path, config: ValueTrainConfig | None = None,
                         log=None, overwrite: bool = False):
    """Trains a value verifier on decision logs and writes its bundle, bound to the logs' policy."""
    from verifiers.bundle import write_verifier_bundle

    config = config or ValueTrainConfig()
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    torch = require("torch")
    torch.set_num_threads(config.threads)
    started = time.perf_counter()
    meta, episodes = read_episodes(logs)
    labelled = [ep for ep in episodes if ep.success is not None]
    if len(labelled) < len(episodes):
        log(f"value: {len(episodes) - len(labelled)} of {len(episodes)} logged episodes have no outcome yet "
            "(label them with `taco label`); training on the rest")
    data = transitions(labelled, config)
    ok = np.mean([bool(ep.success) for ep in labelled])
    log(f"value ({config.method}, reward {config.reward}): {len(labelled)} episodes ({ok:.0%} succeeded), "
        f"{len(data)} decisions")
    info: dict = {"kind": "value", "settings": asdict(config), "logs": [str(p) for p in logs],
                  "episodes": len(labelled), "decisions": len(data), "success_rate": float(ok)}
    held = int(round(config.holdout * len(labelled)))
    if held and len(labelled) - held >= 2:
        train, test = labelled[:-held], labelled[-held:]
        scorer = _fit(torch, transitions(train, config), config, log)
        quality = holdout_quality(candidate_scores(torch, scorer, test), test)
        info["holdout"] = quality
        log(f"held-out {quality['episodes']} episodes ({quality['successes']} succeeded): value AUC "
            f"{_fmt(quality['value_auc'])}, advantage AUC {_fmt(quality['advantage_auc'])} "
            "(0.5: no better than chance)")
    scorer = _fit(torch, data, config, log)
    info["train_seconds"] = round(time.perf_counter() - started, 1)
    path = Path(tempfile.mkdtemp(prefix="verifier-")) / "verifier.onnx"
    _export_torch(scorer, meta["feature_dim"], path, (meta["chunk_length"], meta["action_dim"]))
    verifier = write_verifier_bundle(path, out_dir, policy_fingerprint=meta["policy_fingerprint"],
                                     feature_dim=meta["feature_dim"], type="value", overwrite=overwrite,
                                     provenance={"command": " ".join(["taco", *sys.argv[1:]]), **info})
    log(f"value: trained on {len(labelled)} episodes in {info['train_seconds']:.1f} s -> {verifier.path}")
    return verifier


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"

