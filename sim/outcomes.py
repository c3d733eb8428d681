"""Outcome labels from the simulator, for `taco train-verifier --kind outcome`.

The policy runs an episode at N=1 (decision d on the noise seed `decision_seed(seed, d)`, as `taco eval`
runs it). At every `every`-th decision the environment is snapshotted and N candidates are drawn from the
same seed (so candidate 0 is the policy's own N=1 chunk). Each candidate is executed from a restore of the
snapshot for `execute` steps, then the policy carries on at N=1 on the episode's own later seeds (the same
for every candidate: their labels differ by the candidate alone) to the end of the episode. The candidate
is labelled with the success and best stage of that branch. Then the snapshot is restored and the N=1
episode goes on.

Each episode's labels are written to `OUT/episodes/ep-XXXXXX.npz` as soon as it ends, so an interrupted
run resumes where it stopped; `OUT/outcomes.npz` joins them at the end.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from verifiers.outcomes import OutcomeSet


@dataclass(frozen=True)
class OutcomeConfig:
    # "default" or a policy bundle path.
    policy: str = "default"
    task: str = "transfer_cube"
    episodes: int = 20
    # Episode i runs seed `seed + i`; kept apart from the evaluation seeds (100000-) and training data.
    seed: int = 300_000
    # Candidates per labelled state.
    n: int = 16
    # Label every `every`-th decision of the N=1 episode.
    every: int = 4
    # Actions executed from each chunk before replanning (as `taco eval --execute`).
    execute: int = 8
    max_steps: int | None = None
    workers: int = 1

    def __post_init__(self):
        from policies.shipped import resolve_policy

        object.__setattr__(self, "policy", resolve_policy(self.policy))
        for name in ("episodes", "n", "every", "execute", "workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")


_WORKER: dict = {}


def _init(config: OutcomeConfig) -> None:
    from runtime.engine import Engine, EngineConfig
    from sim.env import AlohaSimEnv

    engine = Engine(config.policy, config=EngineConfig(return_candidates=True))
    if config.execute > engine.manifest.chunk_length:
        raise ValueError(f"execute: {config.execute} exceeds the policy's chunk length {engine.manifest.chunk_length}")
    env = AlohaSimEnv(config.task, cameras=engine.manifest.cameras, max_steps=config.max_steps)
    _WORKER.update(config=config, engine=engine, env=env)


def _execute(env, engine, chunk: np.ndarray, execute: int):
    """Executes the first `execute` actions of a chunk just decided; a policy with history is shown every
    later control step, as `ChunkExecutor` shows it. Returns the last observation, whether the episode
    ended, and the last step's info."""
    obs = None
    for j in range(execute):
        if j:
            engine.observe(obs)
        obs, _, done, info = env.step(chunk[j])
        if done:
            break
    return obs, done, info


def _carry_on(env, engine, seed: int, decision: int, chunk: np.ndarray, execute: int) -> dict:
    """Executes `chunk` (decided at `decision`), then replans at N=1 on the episode's seeds until
    the episode ends; returns the last step's info."""
    from runtime.executor import decision_seed

    while True:
        obs, done, info = _execute(env, engine, chunk, execute)
        if done:
            return info
        decision += 1
        chunk = engine.infer(obs, n=1, seed=decision_seed(seed, decision)).chunk


def label_episode(index: int) -> dict:
    """Runs episode `index` with its labelled states in this worker; returns its arrays and summary."""
    from runtime.executor import decision_seed

    config, engine, env = _WORKER["config"], _WORKER["engine"], _WORKER["env"]
    seed = config.seed + index
    started = time.perf_counter()
    mean, std = engine.policy.action_mean, engine.policy.action_std
    rows = {k: [] for k in ("features", "chunks", "success", "stage", "end_step", "decision", "step", "candidate")}
    obs = env.reset(seed)
    engine.reset()
    decision = 0
    while True:
        if decision % config.every == 0:
            snap, history = env.snapshot(), engine.history.snapshot()
            drawn = engine.infer(obs, n=config.n, seed=decision_seed(seed, decision))
            after = engine.history.snapshot()
            for i in range(config.n):
                env.restore(snap)
                engine.history.restore(after)
                info = _carry_on(env, engine, seed, decision, drawn.candidates[i], config.execute)
                rows["success"].append(bool(info["success"]))
                rows["stage"].append(int(env.best_stage))
                rows["end_step"].append(env.steps)
                rows["candidate"].append(i)
            rows["features"].append(drawn.features)
            rows["chunks"].append((drawn.candidates - mean) / std)
            rows["decision"] += [decision] * config.n
            rows["step"] += [snap.steps] * config.n
            obs = env.restore(snap)
            engine.history.restore(history)
        chunk = engine.infer(obs, n=1, seed=decision_seed(seed, decision)).chunk
        obs, done, info = _execute(env, engine, chunk, config.execute)
        if done:
            break
        decision += 1
    groups = len(rows["features"])
    return {
        "index": index, "seed": seed, "success": bool(info["success"]), "best_stage": int(env.best_stage),
        "steps": env.steps, "groups": groups, "wall_s": time.perf_counter() - started,
        "features": np.concatenate(rows["features"]).astype(np.float32) if groups else np.zeros((0, 0), np.float32),
        "chunks": np.concatenate(rows["chunks"]).astype(np.float32) if groups else np.zeros((0, 0, 0), np.float32),
        "candidate_success": np.asarray(rows["success"], bool),
        **{k: np.asarray(rows[k], np.int64) for k in ("stage", "end_step", "decision", "step", "candidate")},
    }


def _meta(config: OutcomeConfig, fingerprint: str, max_stage: int) -> dict:
    return {**asdict(config), "policy_fingerprint": fingerprint, "max_stage": max_stage}


def collect_outcomes(config: OutcomeConfig, out: str | Path, progress=None) -> OutcomeSet:
    """Labels `config.episodes` episodes (resuming from `out/episodes/` when it holds some) and writes
    `out/outcomes.npz`."""
    from policies.bundle import load_policy_bundle
    from sim.tasks import get_task

    progress = progress or (lambda msg: print(msg, file=sys.stderr, flush=True))
    out = Path(out)
    shards = out / "episodes"
    shards.mkdir(parents=True, exist_ok=True)
    meta = _meta(config, load_policy_bundle(config.policy).fingerprint, get_task(config.task).max_reward)
    recorded = out / "config.json"
    if recorded.exists():
        before = json.loads(recorded.read_text())
        changed = {k for k in set(before) | set(meta)
                   if k not in ("episodes", "workers") and before.get(k) != meta.get(k)}
        if changed:
            raise ValueError(f"{out}: holds outcomes of another run (differs in {', '.join(sorted(changed))}); "
                             "use a new --out")
    recorded.write_text(json.dumps(meta, indent=2) + "\n")
    todo = [i for i in range(config.episodes) if not (shards / f"ep-{i:06d}.npz").exists()]
    if len(todo) < config.episodes:
        progress(f"resuming: {config.episodes - len(todo)} of {config.episodes} episodes already labelled in {shards}")
    started, done = time.perf_counter(), 0

    def keep(result: dict) -> None:
        nonlocal done
        done += 1
        part = OutcomeSet(features=result["features"], chunks=result["chunks"], success=result["candidate_success"],
                          stage=result["stage"], end_step=result["end_step"],
                          episode=np.full(len(result["stage"]), result["index"], np.int64),
                          decision=result["decision"], step=result["step"], candidate=result["candidate"],
                          meta={**meta, "episode_success": result["success"],
                                "episode_best_stage": result["best_stage"], "episode_steps": result["steps"]})
        part.save(shards / f"ep-{result['index']:06d}.npz")
        rate = (time.perf_counter() - started) / done
        rate_ok = part.success.mean() if len(part.success) else float("nan")
        outcome = "success" if result["success"] else "failure"
        progress(f"[{done}/{len(todo)}] episode {result['index']}: N=1 {outcome}, "
                 f"{result['groups']} states labelled, candidates succeeded {rate_ok:.2f}, "
                 f"{result['wall_s']:.0f} s; eta {(len(todo) - done) * rate / 60:.1f} min")

    if todo and config.workers > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(config.workers, initializer=_init, initargs=(config,)) as pool:
            for result in pool.imap_unordered(label_episode, todo):
                keep(result)
    elif todo:
        _init(config)
        for index in todo:
            keep(label_episode(index))
    parts = [OutcomeSet.load(shards / f"ep-{i:06d}.npz") for i in range(config.episodes)]
    episode_success = [p.meta["episode_success"] for p in parts]
    parts = [p for p in parts if len(p.features)]
    if not parts:
        raise ValueError(f"no state was labelled in {config.episodes} episodes (each ended before its first "
                         "labelled decision?)")
    outcomes = OutcomeSet.concat(parts)
    outcomes.meta = {**meta, "episode_success": episode_success}
    outcomes.save(out / "outcomes.npz")
    return outcomes
