"""`taco export-log`: a decision log as a LeRobotDataset v3, written by lerobot itself.

What fits LeRobot's frame-per-step layout goes into it, one frame per executed control step:
`observation.state` (the state the action was executed from), `action` (what was executed, robot
units), `next.reward` (the simulator's stage; NaN on a robot), `next.success` (the episode's outcome, on
its last frame), and where the step's action came from: `decision.index` (the decision of the episode,
0..D-1; -1 for the holds a robot sends before the first decision arrives), `decision.new` (its first
step), `decision.chosen` (the candidate it executed, -1 in a hold) and `decision.score` (that
candidate's verifier score, NaN without one). The episode's task is the logged
instruction (else the log's task name). `meta/taco_log_episodes.jsonl` keeps each episode's log key,
outcome and labels, one line per dataset episode, in order.

What does not fit stays in the decision log: every candidate chunk and feature (N x H x A and N x F a
decision), which is what the value verifier trains on. Logs without executed steps (a policy server's)
cannot be exported, and say so. Needs lerobot (the train extra).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from policies.extras import require
from policies.manifest import ALOHA_JOINTS
from verifiers.decision_log import LoggedEpisode, read_episodes

EPISODES_FILE = "meta/taco_log_episodes.jsonl"


def dataset_features(state_dim: int, action_dim: int) -> dict:
    names = list(ALOHA_JOINTS)
    return {
        "observation.state": {"dtype": "float32", "shape": (state_dim,),
                              "names": names if state_dim == len(names) else None},
        "action": {"dtype": "float32", "shape": (action_dim,), "names": names if action_dim == len(names) else None},
        "next.reward": {"dtype": "float32", "shape": (1,), "names": None},
        "next.success": {"dtype": "bool", "shape": (1,), "names": None},
        "decision.index": {"dtype": "int64", "shape": (1,), "names": None},
        "decision.new": {"dtype": "bool", "shape": (1,), "names": None},
        "decision.chosen": {"dtype": "int64", "shape": (1,), "names": None},
        "decision.score": {"dtype": "float32", "shape": (1,), "names": None},
    }


def step_decisions(ep: LoggedEpisode) -> np.ndarray:
    """int64[T]: per executed step, the decision its action came from (the last one made at or before it;
    -1 before the first)."""
    return np.searchsorted(ep.step, np.arange(len(ep.actions)), side="right") - 1


def export_log(logs: list[str | Path], out: str | Path, fps: float | None = None, progress=None) -> dict:
    """Writes the logs' episodes (labels applied) to a new LeRobotDataset at `out`; returns a summary."""
    require("lerobot")
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    meta, episodes = read_episodes(logs)
    out = Path(out)
    if out.exists():
        raise ValueError(f"--out: {out} exists; export into a new folder")
    dt = meta.get("action_dt")
    if fps is None:
        if not dt:
            raise ValueError("--fps: the log does not record its policy's action period (a log written before "
                             "2026-12-06); give the control rate the actions were executed at")
        fps = 1.0 / float(dt)
    if round(fps) != fps:
        raise ValueError(f"--fps: LeRobotDataset needs an integer frame rate, got {fps:g}")
    empty = [ep.meta["key"] for ep in episodes if not len(ep.actions)]
    if len(empty) == len(episodes):
        raise ValueError(f"{', '.join(str(r) for r in logs)}: no episode holds executed steps (a policy server's log "
                         "records decisions only); nothing to export as frames")
    first = next(ep for ep in episodes if len(ep.actions))
    dataset = LeRobotDataset.create(f"taco/{out.name}", fps=int(fps), root=out, robot_type="aloha", use_videos=False,
                                    features=dataset_features(first.state.shape[1], first.actions.shape[1]))
    rows = []
    for ep in episodes:
        if not len(ep.actions):
            continue
        which = step_decisions(ep)
        states = ep.states if ep.states is not None else np.full((len(ep.actions), ep.state.shape[1]), np.nan)
        task = ep.meta.get("instruction") or ep.meta.get("task") or ""
        last = len(ep.actions) - 1
        for t in range(len(ep.actions)):
            d = int(which[t])  # -1: a hold before the episode's first decision arrived (a robot's log)
            dataset.add_frame({
                "observation.state": np.asarray(states[t], np.float32),
                "action": np.asarray(ep.actions[t], np.float32),
                "next.reward": np.array([ep.rewards[t]], np.float32),
                "next.success": np.array([bool(ep.success) and t == last]),
                "decision.index": np.array([d], np.int64),
                "decision.new": np.array([d >= 0 and t == int(ep.step[d])]),
                "decision.chosen": np.array([int(ep.chosen[d]) if d >= 0 else -1], np.int64),
                "decision.score": np.array([ep.scores[d, ep.chosen[d]] if d >= 0 else np.nan], np.float32),
                "task": task,
            })
        dataset.save_episode()
        rows.append({"episode_index": len(rows), "key": ep.meta["key"], "log": ep.meta["log"],
                     "success": ep.success, "progress": ep.progress, "best_stage": ep.meta.get("best_stage"),
                     "decisions": len(ep.chosen), "frames": len(ep.actions), "n": ep.meta.get("n"),
                     "verifier": ep.meta.get("verifier")})
        if progress:
            progress(f"[export] {len(rows)} episodes ({ep.meta['key']}, {len(ep.actions)} frames)")
    dataset.finalize()
    (out / EPISODES_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"episodes": len(rows), "frames": sum(r["frames"] for r in rows), "skipped": empty, "fps": int(fps),
            "out": str(out)}
