"""`taco record`: scripted-expert episodes written as a LeRobotDataset v3 (through lerobot).

Per frame: the camera images (AV1 video), `observation.state`, `action`, `next.reward` (stage),
`next.success`, and the task string. Per episode, `meta/taco_episodes.jsonl` adds the seed, the
expert mode, success and best stage. An interrupted recording resumes: rerunning the same command
appends the missing episodes after the last saved one.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hardware.interface import CameraConfig
from policies.extras import require
from policies.manifest import ALOHA_JOINTS

EPISODES_FILE = "meta/taco_episodes.jsonl"
# Dropped (failed) expert episodes in a row after which recording stops instead of trying seeds forever.
MAX_FAILURES_IN_A_ROW = 20
# DART perturbation multiplier inside the expert's precise windows (ScriptedExpert.precision).
PRECISE_PERTURB_SCALE = 0.1


@dataclass(frozen=True)
class RecordConfig:
    # Tasks to record; episodes are recorded task after task.
    tasks: tuple[str, ...]
    # Episodes to keep per task.
    episodes: int
    # Dataset root folder.
    out: str
    # Episode seeds start here; each attempt uses the next seed.
    seed: int = 0
    # Cameras recorded (the default policy's camera and size).
    cameras: tuple[CameraConfig, ...] = (CameraConfig("cam_high", 96, 128),)
    # Keep episodes in which the expert failed (marked in the metadata); off: only successes are kept.
    keep_failures: bool = False
    # Expert settings: one behaviour mode, a mix to draw from ("clean:2,no_handover:1"), and joint noise
    # (None: the expert's own mix and noise).
    mode: str | None = None
    action_noise: float | None = None
    # DART-style perturbation (rad, smoothed over 10 steps): executed actions are perturbed, recorded ones
    # are not, so the data shows the expert pulling back towards its plan from states off the plan.
    perturb: float = 0.0

    def __post_init__(self):
        if self.episodes < 1:
            raise ValueError(f"episodes: must be >= 1, got {self.episodes}")


def dataset_features(cameras) -> dict:
    features = {
        f"observation.images.{c.name}": {"dtype": "video", "shape": (c.height, c.width, 3),
                                         "names": ["height", "width", "channels"]} for c in cameras
    }
    features["observation.state"] = {"dtype": "float32", "shape": (14,), "names": list(ALOHA_JOINTS)}
    features["action"] = {"dtype": "float32", "shape": (14,), "names": list(ALOHA_JOINTS)}
    features["next.reward"] = {"dtype": "float32", "shape": (1,), "names": None}
    features["next.success"] = {"dtype": "bool", "shape": (1,), "names": None}
    return features


def _open(config: RecordConfig, fps: int):
    require("lerobot")
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    root = Path(config.out)
    repo_id = f"taco/{root.name}"
    if (root / "meta" / "info.json").exists():
        dataset = LeRobotDataset.resume(repo_id, root=root)
        expected = dataset_features(config.cameras)
        for key, spec in expected.items():
            have = dataset.meta.features.get(key)
            if have is None or tuple(have["shape"]) != tuple(spec["shape"]):
                raise ValueError(f"{root}: existing dataset has feature {key} = {have}, this recording needs "
                                 f"{spec['shape']}; record into another folder")
        return dataset, True
    dataset = LeRobotDataset.create(repo_id, fps=fps, features=dataset_features(config.cameras), root=root,
                                    robot_type="aloha", use_videos=True, metadata_buffer_size=1)
    return dataset, False


def recorded_episodes(root: str | Path) -> list[dict]:
    """The per-episode rows (task, seed, mode, success, ...) of a recording; [] when there is none."""
    path = Path(root) / EPISODES_FILE
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


def record(config: RecordConfig, progress: bool | Callable[[str], None] = True) -> dict:
    """Records the episodes still missing from `config.out`; returns counts per task and mode.

    `progress`: a tqdm bar on stderr (True), nothing (False), or a log function that gets a line every
    twentieth of the run (how `taco artifacts` reports, its log being a file more often than a terminal)."""
    from sim.assets import CONTROL_HZ
    from sim.controllers import ScriptedController
    from sim.env import AlohaSimEnv
    from sim.experts import ExpertConfig

    root = Path(config.out)
    dataset, resumed = _open(config, CONTROL_HZ)
    done = recorded_episodes(root)
    saved = dataset.meta.total_episodes
    if len(done) != saved:
        # The dataset holds episodes whose metadata line was lost (or the reverse): trust the dataset.
        done = done[:saved]
        (root / EPISODES_FILE).write_text("".join(json.dumps(r) + "\n" for r in done))
    if resumed:
        print(f"resuming {root}: {saved} episodes already recorded", file=sys.stderr)
    noise = {} if config.action_noise is None else {"action_noise": config.action_noise}
    # One mode forced, or a mix to draw from ("a:2,b:1"), or the expert's own mix.
    mix = config.mode is not None and ("," in config.mode or ":" in config.mode)
    expert = ExpertConfig.from_mix(config.mode, **noise) if mix else ExpertConfig(**noise)
    total = len(config.tasks) * config.episodes
    bar = _progress(total, initial=len(done), enabled=progress)
    interrupted = []

    def stop(signum, frame):
        interrupted.append(signum)

    old = signal.signal(signal.SIGTERM, stop)
    try:
        for task in config.tasks:
            kept = [r for r in done if r["task"] == task]
            seed = max([r["seed"] for r in done if r["task"] == task], default=config.seed - 1) + 1
            env = AlohaSimEnv(task, cameras=config.cameras, stop_on_success=False, max_steps=10_000)
            controller = ScriptedController(task, expert, mode=None if mix else config.mode)
            failures_in_a_row = 0
            try:
                while len(kept) < config.episodes and not interrupted:
                    row = _record_episode(dataset, env, controller, task, seed, config.keep_failures, config.perturb)
                    seed += 1
                    if row is None:
                        failures_in_a_row += 1
                        if failures_in_a_row >= MAX_FAILURES_IN_A_ROW:
                            raise RuntimeError(
                                f"{task}: the expert failed {failures_in_a_row} episodes in a row (seeds up to "
                                f"{seed - 1}); lower --perturb/--action-noise, or pass --keep-failures")
                        continue
                    failures_in_a_row = 0
                    row["episode_index"] = dataset.meta.total_episodes - 1
                    with open(root / EPISODES_FILE, "a") as f:
                        f.write(json.dumps(row) + "\n")
                    kept.append(row)
                    done.append(row)
                    bar.set_postfix_str(f"{task} seed {row['seed']} {row['mode']} "
                                        f"{'ok' if row['success'] else 'failed'}")
                    bar.update(1)
            finally:
                env.close()
    except KeyboardInterrupt:
        interrupted.append(signal.SIGINT)
    finally:
        signal.signal(signal.SIGTERM, old)
        if dataset.has_pending_frames():
            dataset.clear_episode_buffer()
        dataset.finalize()
        normal_scheduling()
        bar.close()
    if interrupted:
        print(f"interrupted: {len(done)} episodes saved; rerun the same command to resume", file=sys.stderr)
    return summarize_recording(done)


def normal_scheduling() -> None:
    """Puts this thread back on the normal scheduling policy after a video was encoded.

    SVT-AV1, the AV1 encoder LeRobot writes dataset videos with, switches the thread that encodes to
    SCHED_FIFO at priority 99 when the process may (as root): after one `encode_video_frames` call,
    `os.sched_getscheduler(0)` is SCHED_FIFO. Every thread started afterwards inherits it, so a
    recording followed by training (`taco artifacts`) ran its torch threads at real-time priority and
    starved every other process on the machine (a test beside it got 5% of a core)."""
    if hasattr(os, "sched_getscheduler") and os.sched_getscheduler(0) != os.SCHED_OTHER:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


def _record_episode(dataset, env, controller, task: str, seed: int, keep_failures: bool,
                    perturb: float = 0.0) -> dict | None:
    obs = env.reset(seed)
    controller.reset(seed, env)
    offsets = _perturbation(controller.precision, perturb, np.random.default_rng([seed, 23]))
    best = 0
    for t in range(controller.plan_length):
        action = controller.act(obs)
        frame = {f"observation.images.{name}": image for name, image in obs.images.items()}
        frame["observation.state"] = obs.state.astype(np.float32)
        frame["action"] = action.astype(np.float32)
        obs, reward, _, info = env.step(action + offsets[t])
        best = max(best, int(reward))
        frame["next.reward"] = np.array([reward], np.float32)
        frame["next.success"] = np.array([reward == env.task.max_reward])
        frame["task"] = env.task.instruction
        dataset.add_frame(frame)
    success = env.succeeded
    if not success and not keep_failures:
        dataset.clear_episode_buffer()
        return None
    dataset.save_episode()
    normal_scheduling()
    return {"task": task, "seed": seed, "mode": controller.mode, "success": success, "best_stage": best,
            "frames": controller.plan_length, "perturb": perturb}


def _perturbation(precision: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    """float[T, 14]: smoothed offsets on the 12 arm joints (grippers untouched); zeros if std is 0.

    Scaled by PRECISE_PERTURB_SCALE where the expert works precisely (`precision`, float[T]): grasps and
    handovers fail when pushed by more than ~0.01 rad, and the approach is where a policy must learn to
    steer by what it sees (the state alone already tells where a clean approach is heading)."""
    if std <= 0:
        return np.zeros((len(precision), 14))
    from sim.experts import calm_scale, smoothed_arm_noise

    return smoothed_arm_noise(len(precision), std, 10, rng) * calm_scale(precision, PRECISE_PERTURB_SCALE)[:, None]


def summarize_recording(rows: list[dict]) -> dict:
    out: dict = {}
    for r in rows:
        t = out.setdefault(r["task"], {"episodes": 0, "successes": 0, "frames": 0, "modes": {}})
        t["episodes"] += 1
        t["successes"] += int(r["success"])
        t["frames"] += r["frames"]
        t["modes"][r["mode"]] = t["modes"].get(r["mode"], 0) + 1
    return out


class _NoBar:
    def update(self, n):
        pass

    def set_postfix_str(self, s):
        pass

    def close(self):
        pass


class _LogBar(_NoBar):
    """Logs `[record] n/total episodes (last one)` every twentieth of the run and at its end."""

    def __init__(self, log: Callable[[str], None], total: int, initial: int):
        self.log, self.total, self.n, self.postfix = log, total, initial, ""
        self.every = max(1, total // 20)

    def update(self, n):
        self.n += n
        if self.n % self.every == 0 or self.n == self.total:
            self.log(f"[record] {self.n}/{self.total} episodes ({self.postfix})")

    def set_postfix_str(self, s):
        self.postfix = s


def _progress(total: int, initial: int, enabled: bool | Callable[[str], None]):
    if callable(enabled):
        return _LogBar(enabled, total, initial)
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="episode", desc="recording", file=sys.stderr)
