"""Decision logs: every decision a run makes and what came of it, the training data of value verifiers.

A log is a folder (numpy only, so a robot computer writes one without torch):

    meta.json              the policy's fingerprint, feature size and chunk shape; every episode agrees
    episodes/<key>.npz     one file per episode, written whole when the episode ends (atomically)
    labels.jsonl           outcomes given afterwards (`taco label`), one line each; the last line of a key wins

An episode file holds, per decision d (D of them): `features` float32[D, N, F] and `chunks`
float32[D, N, H, A] (every candidate, in the policy's normalised action units: what a verifier takes),
`scores` float32[D, N] (NaN without a verifier), `chosen` int64[D], `seed` int64[D], `step` int64[D]
(the control step the decision was made at) and `state` float32[D, S] (the robot state it saw); per
control step (T of them) `actions` float32[T, A] (robot units, what was executed), `rewards`
float32[T] (the simulator's stage reward; NaN on a robot) and `states` float32[T, S] (the state each
action was executed from; NaN where the run did not see it); and `meta`, a JSON string: key, task, seed,
n, verifier, steps, and the outcome when it is known (`success`, `best_stage`, `max_stage`, optionally
`progress` in [0, 1]), else `success` null until labelled.

Bounded on disk: a log given `max_bytes` stops taking episodes once its files reach it, and says so
once; what it holds stays whole. Several processes may write one log (each its own episodes).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

META_FILE, LABELS_FILE, EPISODES_DIR = "meta.json", "labels.jsonl", "episodes"
# What must agree between a log's meta.json and every run that writes to it.
_BINDING = ("policy_fingerprint", "feature_dim", "chunk_length", "action_dim")
_DECISION_ARRAYS = ("features", "chunks", "scores", "chosen", "seed", "step", "state")


def episode_key(task: str, seed: int) -> str:
    """The file name (without .npz) of the episode of `task` started from `seed`."""
    if not task or any(c in task for c in "/\\") or task.startswith("."):
        raise ValueError(f"task: {task!r} cannot name a log file")
    return f"{task}-{int(seed):09d}"


class DecisionLog:
    """Writes episodes into a log folder; one per run (or per worker process of a run).

    Args:
        root: the folder (made if missing).
        policy_fingerprint, feature_dim, chunk_length, action_dim: the policy the decisions came from;
            an existing log of another policy (or shape) is refused, naming what differs.
        action_mean, action_std: float[A], to store the candidates in normalised units.
        max_bytes: stop taking episodes once the episode files reach this size (None: no bound).
    """

    def __init__(self, root: str | Path, *, policy_fingerprint: str, feature_dim: int, chunk_length: int,
                 action_dim: int, action_mean: np.ndarray, action_std: np.ndarray, max_bytes: int | None = None,
                 writer: str = "", action_dt: float | None = None):
        if max_bytes is not None and max_bytes <= 0:
            raise ValueError(f"max_bytes: expected > 0, got {max_bytes}")
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.full = False
        self._mean = np.asarray(action_mean, np.float32)
        self._std = np.asarray(action_std, np.float32)
        meta = {"policy_fingerprint": policy_fingerprint, "feature_dim": int(feature_dim),
                "chunk_length": int(chunk_length), "action_dim": int(action_dim)}
        (self.root / EPISODES_DIR).mkdir(parents=True, exist_ok=True)
        path = self.root / META_FILE
        if path.exists():
            before = json.loads(path.read_text())
            differ = [k for k in _BINDING if before.get(k) != meta[k]]
            if differ:
                raise ValueError(f"{self.root}: a decision log of another policy (differs in {', '.join(differ)}: "
                                 f"{before.get(differ[0])!r} there, {meta[differ[0]]!r} here); use a new folder")
        else:
            tmp = path.with_name(f".{META_FILE}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({**meta, "writer": writer, "action_dt": action_dt}, indent=2) + "\n")
            tmp.replace(path)

    @classmethod
    def for_engine(cls, root: str | Path, engine, max_mb: float | None = None, writer: str = "") -> DecisionLog:
        """The log of a runtime.engine.Engine's decisions (its policy's fingerprint, shapes and action
        normalisation); `max_mb`: the bound on disk in megabytes (None: none)."""
        if max_mb is not None and not max_mb > 0:
            raise ValueError(f"log_max_mb: expected > 0 megabytes, got {max_mb}")
        config = getattr(engine, "config", None)
        if getattr(config, "prune", None) is not None or getattr(config, "adaptive", None) is not None:
            raise ValueError("log_decisions: a log keeps N fully denoised candidates per decision, which a pruned "
                             "or adaptive engine does not sample; log without --prune / --adaptive")
        m = engine.manifest
        return cls(root, policy_fingerprint=engine.bundle.fingerprint, feature_dim=m.feature_dim,
                   chunk_length=m.chunk_length, action_dim=m.action_dim, action_mean=engine.policy.action_mean,
                   action_std=engine.policy.action_std, max_bytes=None if max_mb is None else int(max_mb * 2**20),
                   writer=writer, action_dt=float(m.action_dt))

    def next_index(self, name: str) -> int:
        """The first episode number after every `<name>-<number>` episode already in the log (so a run that
        numbers its episodes itself, a robot's, goes on where the last run stopped)."""
        episode_key(name, 0)
        numbers = [int(p.stem[len(name) + 1:]) for p in (self.root / EPISODES_DIR).glob(f"{name}-*.npz")
                   if p.stem[len(name) + 1:].isdigit()]
        return max(numbers, default=-1) + 1

    def normalise(self, actions: np.ndarray) -> np.ndarray:
        """Robot units -> the policy's normalised action units (what a verifier's `chunks` input takes)."""
        return ((actions - self._mean) / self._std).astype(np.float32)

    def bytes_used(self) -> int:
        with os.scandir(self.root / EPISODES_DIR) as entries:
            return sum(e.stat().st_size for e in entries if e.name.endswith(".npz"))

    def episode(self, task: str, seed: int, **meta) -> EpisodeRecorder:
        """A recorder for one episode; nothing is written until its `end`."""
        return EpisodeRecorder(self, episode_key(task, seed), {"task": task, "seed": int(seed), **meta})

    def _write(self, key: str, arrays: dict, meta: dict) -> Path | None:
        if self.full:
            return None
        if self.max_bytes is not None and self.bytes_used() >= self.max_bytes:
            self.full = True
            return None
        path = self.root / EPISODES_DIR / f"{key}.npz"
        tmp = path.with_name(f".{key}.{os.getpid()}.tmp.npz")
        np.savez_compressed(tmp, **arrays, meta=json.dumps(meta))
        tmp.replace(path)
        return path


class EpisodeRecorder:
    """Collects one episode's decisions and steps; called by the loop that runs the episode."""

    def __init__(self, log: DecisionLog, key: str, meta: dict):
        self.log, self.key, self.meta = log, key, meta
        self._decisions: list[tuple] = []
        self._actions: list[np.ndarray] = []
        self._rewards: list[float] = []
        self._states: list[np.ndarray | None] = []

    def decision(self, decision, step: int, state: np.ndarray) -> None:
        """Records an engine Decision made at control step `step` from robot state `state`; the decision
        must carry its candidates and features (EngineConfig(return_candidates=True))."""
        if decision.candidates is None or decision.features is None:
            raise ValueError("decision log: the engine must return candidates (EngineConfig(return_candidates=True))")
        scores = (np.full(decision.n, np.nan, np.float32) if decision.scores is None
                  else np.asarray(decision.scores, np.float32))
        self._decisions.append((np.asarray(decision.features, np.float32), self.log.normalise(decision.candidates),
                                scores, int(decision.index), int(decision.seed), int(step),
                                np.asarray(state, np.float32)))

    def step(self, action: np.ndarray, reward: float = float("nan"), state: np.ndarray | None = None) -> None:
        """Records the action executed at the next control step, the reward it earned and the robot state
        it was executed from (None: not seen)."""
        self._actions.append(np.asarray(action, np.float32))
        self._rewards.append(float(reward))
        self._states.append(None if state is None else np.asarray(state, np.float32))

    def end(self, **outcome) -> Path | None:
        """Writes the episode with its outcome (`success`, `best_stage`, `max_stage`, ...; `success=None`
        when only an operator can tell). Returns the file, or None when the log is full or the episode
        made no decision."""
        if not self._decisions:
            return None
        columns = list(zip(*self._decisions))
        arrays = {name: np.stack(col) for name, col in zip(_DECISION_ARRAYS, columns)}
        arrays["actions"] = np.stack(self._actions) if self._actions else np.zeros((0, len(self.log._mean)), np.float32)
        arrays["rewards"] = np.asarray(self._rewards, np.float32)
        s = arrays["state"].shape[1]
        arrays["states"] = np.stack([np.full(s, np.nan, np.float32) if x is None else x for x in self._states]) \
            if self._states else np.zeros((0, s), np.float32)
        meta = {**self.meta, "key": self.key, "n": int(arrays["features"].shape[1]), "steps": len(self._actions),
                **outcome}
        return self.log._write(self.key, arrays, meta)


class StreamLog:
    """The episodes of a run that is told where episodes start, not how they end: a ROS policy node (its
    /taco/reset) or a policy server (a connection, or a request's `episode`).

    `start` ends the episode being logged and begins the next; episodes are numbered `<name>-<k>` after
    the log's last one as they are written (one without a decision is not). The one that ended waits
    for its outcome (`outcome`: the simulation's episode summary, which may arrive before or after the
    next start). Episodes whose outcome never comes are written with `success`
    null when `pending` newer ones have ended, and at `close`, for an operator to label (`taco label`).
    Not thread-safe: the caller holds its own lock.
    """

    def __init__(self, log: DecisionLog, name: str, pending: int = 4, by_time: bool = False, **meta):
        # by_time: a run that never sees the actions executed (a server): each decision's step is where its
        # observation stamp falls, in action periods after the episode's first decision's.
        self.log, self.name, self.meta, self.max_pending, self.by_time = log, name, meta, pending, by_time
        self._first_stamp: float | None = None
        self.index = log.next_index(name)
        self.current: tuple[str, EpisodeRecorder] | None = None
        self.pending: list[tuple[str, EpisodeRecorder]] = []
        self.written: list[Path] = []

    def start(self, episode_id: str = "", **meta) -> None:
        """Begins an episode (`episode_id`: the run's own name for it, matched by `outcome`)."""
        self._retire()
        recorder = self.log.episode(self.name, self.index, episode_id=str(episode_id),
                                    started=time.strftime("%Y-%m-%dT%H:%M:%S%z"), **self.meta, **meta)
        self.current = (str(episode_id), recorder)
        self._first_stamp = None

    @property
    def active(self) -> bool:
        return self.current is not None

    def decision(self, decision, state: np.ndarray) -> None:
        """A decision whose first action executes at the next `step` (`by_time`: at its stamp)."""
        if self.current is None:
            return
        recorder = self.current[1]
        step = len(recorder._actions)
        if self.by_time:
            stamp, dt = float(decision.times[0]), float(decision.times[1] - decision.times[0])
            self._first_stamp = stamp if self._first_stamp is None else self._first_stamp
            step = max(0, round((stamp - self._first_stamp) / dt))
        recorder.decision(decision, step, state)

    def step(self, action: np.ndarray, reward: float = float("nan"), state: np.ndarray | None = None) -> None:
        if self.current is not None:
            self.current[1].step(action, reward, state)

    def outcome(self, episode_id: str, **outcome) -> Path | None:
        """Ends the episode the run called `episode_id` with its outcome; None when none is waiting for one
        (it ended long ago, or was never logged)."""
        episode_id = str(episode_id)
        if self.current is not None and self.current[0] == episode_id:
            recorder, self.current = self.current[1], None
        else:
            match = [item for item in self.pending if item[0] == episode_id]
            if not match:
                return None
            self.pending.remove(match[0])
            recorder = match[0][1]
        return self._end(recorder, outcome)

    def close(self) -> None:
        """Writes every episode still open or waiting, unlabelled."""
        self._retire()
        while self.pending:
            self._end(self.pending.pop(0)[1], {})

    def _retire(self) -> None:
        if self.current is not None:
            self.pending.append(self.current)
            self.current = None
        while len(self.pending) > self.max_pending:
            self._end(self.pending.pop(0)[1], {})

    def _end(self, recorder: EpisodeRecorder, outcome: dict) -> Path | None:
        if not recorder._decisions:
            return None
        # Several streams may write one log under one name (a server's connections): number by the files.
        self.index = max(self.index, self.log.next_index(self.name))
        recorder.key, recorder.meta["seed"] = episode_key(self.name, self.index), self.index
        path = recorder.end(**{"success": None, **outcome})
        if path is not None:
            self.index += 1
            self.written.append(path)
        return path


@dataclass
class LoggedEpisode:
    """One episode read back from a log (arrays as described in the module docstring)."""

    features: np.ndarray
    chunks: np.ndarray
    scores: np.ndarray
    chosen: np.ndarray
    seed: np.ndarray
    step: np.ndarray
    state: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    meta: dict = field(default_factory=dict)
    # float32[T, S]: the state each action was executed from (NaN where unseen; None in older logs).
    states: np.ndarray | None = None

    @property
    def success(self) -> bool | None:
        return self.meta.get("success")

    @property
    def progress(self) -> float | None:
        """The outcome in [0, 1]: an operator's progress score if given, else (best stage + success) /
        (max stage + 1) in simulation, else 1 or 0 for a success or failure; None when unlabelled."""
        if self.meta.get("progress") is not None:
            return float(self.meta["progress"])
        if self.success is None:
            return None
        if self.meta.get("max_stage") is not None and self.meta.get("best_stage") is not None:
            return (int(self.meta["best_stage"]) + bool(self.success)) / (int(self.meta["max_stage"]) + 1)
        return float(bool(self.success))


def read_meta(root: str | Path) -> dict:
    path = Path(root) / META_FILE
    if not path.is_file():
        raise ValueError(f"{root}: not a decision log (no {META_FILE}); write one with `taco eval --log-decisions`")
    return json.loads(path.read_text())


def labels(root: str | Path) -> dict[str, dict]:
    """key -> the last label given to it in `labels.jsonl` (lines cut by an interruption are skipped)."""
    out: dict[str, dict] = {}
    path = Path(root) / LABELS_FILE
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and isinstance(row.get("key"), str):
                out[row["key"]] = row
    return out


def add_label(root: str | Path, key: str, success: bool, progress: float | None = None) -> dict:
    """Marks logged episode `key` succeeded or failed (and its progress in [0, 1]); the label overrides the
    outcome the run recorded."""
    root = Path(root)
    read_meta(root)
    if not (root / EPISODES_DIR / f"{key}.npz").is_file():
        known = sorted(p.stem for p in (root / EPISODES_DIR).glob("*.npz"))
        raise ValueError(f"label: no episode {key!r} in {root} (it holds {len(known)}: "
                         f"{', '.join(known[:5])}{' ...' if len(known) > 5 else ''})")
    if progress is not None and not 0.0 <= progress <= 1.0:
        raise ValueError(f"progress: expected a number in [0, 1], got {progress}")
    row = {"key": key, "success": bool(success), **({} if progress is None else {"progress": float(progress)})}
    with open(root / LABELS_FILE, "a") as f:
        f.write(json.dumps(row) + "\n")
    return row


def read_episodes(roots: Iterable[str | Path]) -> tuple[dict, list[LoggedEpisode]]:
    """The episodes of one or more logs of the same policy, labels applied, in key order per log.

    Returns (the logs' shared meta, the episodes). Refuses logs of different policies.
    """
    roots = [Path(r) for r in roots]
    if not roots:
        raise ValueError("logs: give at least one decision log folder")
    metas = [read_meta(r) for r in roots]
    for root, meta in zip(roots[1:], metas[1:]):
        differ = [k for k in _BINDING if meta.get(k) != metas[0].get(k)]
        if differ:
            raise ValueError(f"logs: {root} and {roots[0]} come from different policies "
                             f"(differ in {', '.join(differ)})")
    episodes = []
    for root in roots:
        given = labels(root)
        for path in sorted((root / EPISODES_DIR).glob("*.npz")):
            if path.name.startswith("."):
                continue
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                meta.update({k: v for k, v in given.get(path.stem, {}).items() if k != "key"})
                meta["log"] = str(root)
                episodes.append(LoggedEpisode(**{name: z[name] for name in (*_DECISION_ARRAYS, "actions", "rewards")},
                                              meta=meta, states=z["states"] if "states" in z.files else None))
    return metas[0], episodes
