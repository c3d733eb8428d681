"""The worker side of an evaluation suite: runs single episodes and returns their records.

A worker process (a local pool process or a Ray actor) is initialised once with the suite's
`EvalConfig` (`init_worker`), then runs episodes by (task, index) (`run_episode`). It makes one
environment and controller per task on first use and keeps them. `sim.evaluate` drives the workers;
this module does not import it, so the local and the Ray backends both depend on it alone.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

# Camera and size of the report videos.
VIDEO_CAMERA, VIDEO_SIZE = "cam_low", (240, 320)

# This process's suite config ("config") and, per task, its (environment, controller).
_WORKER: dict = {}


def init_worker(config) -> None:
    """Called once per worker process with the suite's `sim.evaluate.EvalConfig`."""
    _WORKER.clear()
    _WORKER["config"] = config


def _make(config, task: str):
    from sim.env import AlohaSimEnv

    if config.policy == "scripted":
        from sim.controllers import ScriptedController
        from sim.experts import ExpertConfig

        expert = ExpertConfig() if config.action_noise is None else ExpertConfig(action_noise=config.action_noise)
        controller = ScriptedController(task, expert, mode=config.expert_mode)
        cameras = ()
    else:
        from policies.pruning import Prune
        from runtime.adaptive import Adaptive
        from runtime.engine import Engine, EngineConfig
        from runtime.executor import AsyncChunkExecutor, ChunkExecutor, ExecutorConfig

        engine = Engine(config.policy, verifier=config.verifier, monitor=config.monitor,
                        config=EngineConfig(continuity=config.continuity,
                                            return_candidates=bool(config.log_decisions),
                                            prune=None if config.prune is None else Prune.parse(config.prune),
                                            adaptive=None if config.adaptive is None else Adaptive.parse(config.adaptive)))
        if config.explore:
            from verifiers.explore import Explore

            engine.set_verifier(Explore(engine.verifier, config.explore))
        execution = ExecutorConfig(n=config.n, execute=config.execute, noise_stream=config.noise_stream)
        if config.asynchronous:
            controller = AsyncChunkExecutor(engine, execution, config.timing())
        else:
            controller = ChunkExecutor(engine, execution)
        cameras = engine.manifest.cameras
    env = AlohaSimEnv(task, cameras=cameras, max_steps=config.max_steps, perturbations=config.scene_perturb)
    return env, controller, _decision_log(config, controller)


def _decision_log(config, controller):
    if not config.log_decisions:
        return None
    from verifiers.decision_log import DecisionLog

    return DecisionLog.for_engine(config.log_decisions, controller.engine, config.log_max_mb, writer="taco eval")


def run_episode(task: str, index: int) -> dict:
    """Runs episode `index` of `task` (seed `config.seed + index`) in this process and returns its record."""
    config = _WORKER["config"]
    if task not in _WORKER:
        _WORKER[task] = _make(config, task)
    env, controller, log = _WORKER[task]
    seed = config.seed + index
    film = config.report is not None and index < config.video_episodes
    started = time.perf_counter()
    obs = env.reset(seed)
    controller.reset(seed, env)
    episode = None if log is None else log.episode(task, seed, n=config.n, verifier=_verifier_name(controller),
                                                   explore=config.explore, noise_stream=config.noise_stream)
    monitor = None if config.policy == "scripted" else controller.engine.monitor
    track = None if monitor is None else monitor.track(controller.dt)
    decision_steps = []
    frames, stages, done, info = [], [], False, {"success": False}
    while not done:
        decided = len(getattr(controller, "decisions", ()))
        state, step = obs.state, env.steps
        action = controller.act(obs)
        obs, reward, done, info = env.step(action)
        stages.append(int(reward))
        new = len(getattr(controller, "decisions", ())) > decided
        if new and track is not None:
            track.update(controller.decisions[-1])
            decision_steps.append(step)
        if episode is not None:
            if new:
                episode.decision(controller.decisions[-1], step, state)
            episode.step(action, reward, state)
        if film:
            frames.append(env.render(VIDEO_CAMERA, *VIDEO_SIZE))
    record = {
        "task": task, "episode": index, "seed": seed, "success": bool(info["success"]),
        "best_stage": int(env.best_stage), "max_stage": env.task.max_reward, "steps": env.steps,
        "wall_s": time.perf_counter() - started, "latency_ms": [round(v, 3) for v in controller.latencies_ms],
        "mode": getattr(controller, "mode", None), "stages": stages,
    }
    decisions = getattr(controller, "decisions", [])
    if decisions:
        record["chosen_index"] = [d.index for d in decisions]
        record["candidates_drawn"] = [d.n for d in decisions]  # fewer than N where an adaptive decision stopped
        record["dropped_actions"] = controller.dropped
        record["switch_jumps"] = [round(v, 5) for v in controller.motion.switch_jumps]
        record["jerk_mean"] = round(controller.motion.jerk_mean(), 3)
        record["held_steps"] = getattr(controller, "held", 0)
    if track is not None:
        from sim.assets import CONTROL_HZ

        record["monitor"] = monitor_record(track, decision_steps, 1.0 / CONTROL_HZ)
    if episode is not None:
        full = log.full
        logged = episode.end(success=record["success"], best_stage=record["best_stage"], max_stage=record["max_stage"])
        record["logged"] = logged is not None
        if log.full and not full:
            print(f"decision log {log.root} reached {config.log_max_mb:g} MB: later episodes are not logged",
                  file=sys.stderr, flush=True)
    if film:
        record["video"] = _write_video(frames, Path(config.report) / "videos" / f"{task}-ep{index:03d}.mp4")
    return record


def monitor_record(track, decision_steps: list[int], dt: float) -> dict:
    """An episode's monitor readings for its record: each decision's control step and raw signals, and per
    detector the CUSUM peak and the step of the first alarm (None: none)."""
    manifest = track.monitor.manifest
    first = {name: (decision_steps[i] if i is not None else None)
             for name, i in ((name, track.first_alarm.get(name)) for name in manifest.detectors)}
    out = {"main": manifest.main, "dt": dt, "decision_steps": decision_steps,
           "signals": {name: [None if not np.isfinite(v) else round(float(v), 6) for v in values]
                       for name, values in track.history.items()},
           "peak": {name: round(track.peaks[name], 6) for name in manifest.detectors},
           "first_alarm_step": first}
    if track.embeddings:  # calibration rollouts: what the embedding model is fitted to
        out["embeddings"] = [[round(float(x), 5) for x in e] for e in track.embeddings]
    return out


def _verifier_name(controller) -> str | None:
    verifier = controller.engine.verifier
    return None if verifier is None else verifier.name


def run_item(item: tuple[str, int]) -> dict:
    """`run_episode` on a (task, index) pair, for pool maps."""
    return run_episode(*item)


def _write_video(frames: list[np.ndarray], path: Path) -> str:
    import imageio.v2 as imageio

    path.parent.mkdir(parents=True, exist_ok=True)
    with imageio.get_writer(path, fps=50, codec="libx264", quality=7, macro_block_size=8) as writer:
        for frame in frames:
            writer.append_data(frame)
    return str(path)
