"""`taco record` writes a LeRobotDataset v3 that lerobot reads back, and resumes where it stopped."""

import json

import numpy as np
import pytest

from hardware.interface import CameraConfig
from sim.record import EPISODES_FILE, RecordConfig, record

# Needs the train extra throughout: not collected by the robot-side run (tests/conftest.py).
pytestmark = pytest.mark.workstation

SMALL = (CameraConfig("cam_high", 48, 64),)


def load(root):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    return LeRobotDataset(f"taco/{root.name}", root=root, video_backend="pyav")


def test_record_then_resume_and_read_back(tmp_path):
    root = tmp_path / "lift"
    config = RecordConfig(tasks=("lift_bar",), episodes=1, out=str(root), cameras=SMALL, mode="detour")
    summary = record(config, progress=False)
    assert summary["lift_bar"]["episodes"] == 1 and summary["lift_bar"]["modes"] == {"detour": 1}
    # The AV1 encoder left this thread at real-time priority (as root); the recording put it back, so
    # whatever runs next in the process (training, its torch threads) does not starve the machine.
    import os

    assert os.sched_getscheduler(0) == os.SCHED_OTHER
    # Same command with more episodes: resumes, keeps the first, appends the next seed.
    summary = record(RecordConfig(tasks=("lift_bar",), episodes=2, out=str(root), cameras=SMALL, mode="clean"),
                     progress=False)
    rows = [json.loads(line) for line in (root / EPISODES_FILE).read_text().splitlines()]
    assert [(r["seed"], r["mode"], r["episode_index"]) for r in rows] == [(0, "detour", 0), (1, "clean", 1)]
    assert all(r["success"] for r in rows)

    ds = load(root)
    assert ds.num_episodes == 2 and ds.num_frames == sum(r["frames"] for r in rows)
    first = ds[0]
    assert tuple(first["observation.images.cam_high"].shape) == (3, 48, 64)
    assert first["task"].startswith("grasp the green bar")
    # The recorded actions are the expert's, frame by frame.
    from sim.env import AlohaSimEnv
    from sim.experts import ExpertConfig, ScriptedExpert

    env = AlohaSimEnv("lift_bar", cameras=SMALL)
    obs = env.reset(1)
    expected, _ = ScriptedExpert("lift_bar", ExpertConfig()).actions(env.object_poses, 1, "clean")
    start = rows[0]["frames"]
    got = np.stack([ds[start + i]["action"].numpy() for i in (0, 50, 100)])
    np.testing.assert_allclose(got, expected[[0, 50, 100]], atol=1e-5)
    np.testing.assert_allclose(ds[start]["observation.state"].numpy(), obs.state, atol=1e-6)
    # Video frames decode close to what the camera rendered (AV1 is lossy).
    image = ds[start]["observation.images.cam_high"].numpy().transpose(1, 2, 0) * 255
    assert np.abs(image - obs.images["cam_high"]).mean() < 12
    rewards = np.array([float(ds[start + i]["next.reward"]) for i in range(rows[1]["frames"])])
    assert rewards.max() == 4 and bool(ds[start + int(np.argmax(rewards))]["next.success"])
    env.close()


def test_perturbed_recording_labels_the_unperturbed_actions(tmp_path):
    """DART-style: the states wander off the plan, the recorded actions stay the expert's."""
    root = tmp_path / "dart"
    record(RecordConfig(tasks=("lift_bar",), episodes=1, out=str(root), cameras=SMALL, mode="clean", perturb=0.03,
                        keep_failures=True), progress=False)
    rows = [json.loads(line) for line in (root / EPISODES_FILE).read_text().splitlines()]
    assert rows[0]["perturb"] == 0.03 and rows[0]["seed"] == 0
    ds = load(root)
    from sim.env import AlohaSimEnv
    from sim.experts import ExpertConfig, ScriptedExpert

    env = AlohaSimEnv("lift_bar", cameras=SMALL)
    env.reset(0)
    expected, _ = ScriptedExpert("lift_bar", ExpertConfig()).actions(env.object_poses, 0, "clean")
    env.close()
    frames = [ds[i] for i in (40, 80, 120)]
    np.testing.assert_allclose(np.stack([f["action"].numpy() for f in frames]), expected[[40, 80, 120]], atol=1e-5)
    # The executed arm was pushed away from where the clean replay would have put it.
    states = np.stack([f["observation.state"].numpy() for f in frames])
    assert np.abs(states[:, :6] - expected[[39, 79, 119], :6]).max() > 0.01


def test_recording_stops_when_the_expert_keeps_failing(tmp_path, monkeypatch):
    import pytest

    import sim.record

    monkeypatch.setattr(sim.record, "MAX_FAILURES_IN_A_ROW", 2)
    with pytest.raises(RuntimeError, match="failed 2 episodes in a row"):
        record(RecordConfig(tasks=("lift_bar",), episodes=1, out=str(tmp_path / "bad"), cameras=SMALL, mode="clean",
                            perturb=0.5), progress=False)


def test_perturbation_calms_down_where_the_expert_works_precisely(tmp_path):
    """Recovery data perturbs the free-motion approach; grasps and handovers get a tenth of it."""
    from sim.env import AlohaSimEnv
    from sim.experts import ExpertConfig, ScriptedExpert

    root = tmp_path / "dart"
    record(RecordConfig(tasks=("transfer_cube",), episodes=1, out=str(root), cameras=SMALL, mode="clean",
                        perturb=0.1, keep_failures=True), progress=False)
    ds = load(root)
    env = AlohaSimEnv("transfer_cube", cameras=SMALL)
    env.reset(0)
    expert = ScriptedExpert("transfer_cube", ExpertConfig())
    expected, _ = expert.actions(env.object_poses, 0, "clean")
    env.close()
    assert expert.precision[:90].max() == 0.0 and expert.precision[110:].min() == 1.0
    states = np.stack([ds[i]["observation.state"].numpy() for i in range(len(expected))])
    # Joint-space distance of the executed arms from the clean plan (one step behind: position control).
    arms = np.r_[0:6, 7:13]
    off = np.abs(states[1:, arms] - expected[:-1, arms]).max(axis=1)
    approach, precise = off[30:90].mean(), off[150:350].mean()
    assert approach > 0.05 and precise < approach / 4, (approach, precise)
