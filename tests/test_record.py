"""`taco record` writes a LeRobotDataset v3 that lerobot reads back, and resumes where it stopped."""

import json

import numpy as np

from hardware.interface import CameraConfig
from sim.record import EPISODES_FILE, RecordConfig, record

SMALL = (CameraConfig("cam_high", 48, 64),)


def load(root):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    return LeRobotDataset(f"taco/{root.name}", root=root, video_backend="pyav")


def test_record_then_resume_and_read_back(tmp_path):
    root = tmp_path / "lift"
    config = RecordConfig(tasks=("lift_bar",), episodes=1, out=str(root), cameras=SMALL, mode="detour")
    summary = record(config, progress=False)
    assert summary["lift_bar"]["episodes"] == 1 and summary["lift_bar"]["modes"] == {"detour": 1}
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
