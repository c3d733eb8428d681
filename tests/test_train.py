"""`taco train-policy`: trains on a recorded LeRobotDataset, resumes bit-for-bit from a checkpoint, and
exports a bundle that the engine runs in the simulation it was recorded in."""

import json

import numpy as np
import pytest

from conftest import TINY_CAMERAS as CAMS
from policies import load_policy_bundle
from policies.schema import portable
from policies.train import TrainConfig, train_policy

# Needs the train extra throughout: not collected by the robot-side run (tests/conftest.py).
pytestmark = pytest.mark.workstation


@pytest.fixture
def dataset(tiny_dataset):
    return tiny_dataset


class Interrupt(Exception):
    pass


def test_training_resumes_exactly_and_exports_a_working_bundle(dataset, tmp_path):
    from runtime import Engine
    from sim.env import AlohaSimEnv

    common = dict(dataset=str(dataset), kind="flow", size="tiny", steps=20, batch_size=4, warmup_steps=5,
                  val_every=10, checkpoint_every=10, threads=1)
    straight = train_policy(TrainConfig(out=str(tmp_path / "straight"), **common), log=lambda m: None)

    def stop_at_10(message):
        if message.startswith("step 10/"):
            raise Interrupt

    config = TrainConfig(out=str(tmp_path / "resumed"), **common)
    with pytest.raises(Interrupt):
        train_policy(config, log=stop_at_10)
    assert (tmp_path / "resumed.ckpt" / "last.pt").is_file() and not (tmp_path / "resumed").exists()
    messages = []
    resumed = train_policy(config, log=messages.append)
    assert any("resuming from" in m and "at step 10" in m for m in messages)

    a, b = load_policy_bundle(straight), load_policy_bundle(resumed)
    assert a.manifest.files == b.manifest.files, "a resumed run must reproduce the uninterrupted one"
    prov = a.manifest.provenance
    assert prov["dataset_fingerprint"] and prov["training"]["final"]["step"] == 20
    assert np.isfinite(prov["training"]["final"]["val_loss"])
    history = json.loads((tmp_path / "straight.ckpt" / "history.json").read_text())
    assert [h["step"] for h in history] == [10, 20]
    # Normalisation comes from the data: the gripper's action mean is not 0 (identity would be).
    assert a.manifest.normalization.action_mean[6] != 0.0
    # The bundle runs in the simulation with the dataset's camera.
    engine = Engine(a.path)
    env = AlohaSimEnv("lift_bar", cameras=CAMS)
    decision = engine.infer(env.reset(0), n=4, seed=0)
    assert decision.chunk.shape == (8, 14) and np.isfinite(decision.chunk).all()
    env.close()


def test_a_checkpoint_exports_to_the_same_bundle_as_the_run(dataset, tmp_path):
    from taco.cli import main

    common = dict(dataset=str(dataset), out=str(tmp_path / "run"), size="tiny", steps=6, batch_size=2, val_every=3,
                  checkpoint_every=3, threads=1)
    path = train_policy(TrainConfig(**common), log=lambda m: None)
    assert main(["train-policy", "--export-checkpoint", str(tmp_path / "run.ckpt" / "last.pt"),
                 "--out", str(tmp_path / "from_ckpt")]) == 0
    assert load_policy_bundle(tmp_path / "from_ckpt").manifest.files == load_policy_bundle(path).manifest.files


def test_like_re_exports_a_bundle_with_rtc_inputs_keeping_its_provenance_and_refuses_other_weights(dataset, tmp_path,
                                                                                                   capsys):
    """`--export-checkpoint CKPT --like B`: B was exported from CKPT before real-time chunking; the new
    export takes RTC inputs, keeps B's name and provenance, and samples B's candidates bit for bit."""
    import torch

    from policies.config import PolicyConfig
    from policies.export import export_bundle
    from policies.models import build_policy
    from taco.cli import main

    train_policy(TrainConfig(dataset=str(dataset), out=str(tmp_path / "run"), size="tiny", steps=4, batch_size=2,
                             val_every=2, checkpoint_every=2, threads=1), log=lambda m: None)
    ckpt = tmp_path / "run.ckpt" / "last.pt"
    run = load_policy_bundle(tmp_path / "run")
    state = torch.load(ckpt, weights_only=False)
    model = build_policy(PolicyConfig.from_dict(state["policy_config"]))
    model.load_state_dict(state["ema"])
    provenance = {**run.manifest.provenance, "best_verifier": {"name": "consensus", "n": 16}}
    before = export_bundle(model.eval(), tmp_path / "shipped", normalization=run.manifest.normalization,
                           name="shipped", rtc=False, provenance=provenance)
    assert main(["train-policy", "--export-checkpoint", str(ckpt), "--like", str(before.path),
                 "--out", str(tmp_path / "again")]) == 0
    again = load_policy_bundle(tmp_path / "again")
    assert again.manifest.rtc and not before.manifest.rtc and again.fingerprint != before.fingerprint
    assert again.manifest.name == "shipped" and again.manifest.provenance["best_verifier"]["name"] == "consensus"
    reexported = again.manifest.provenance["reexported"]
    # Provenance names no folder of the machine: the checkpoint as policies.schema.portable writes it.
    assert reexported["from_fingerprint"] == before.fingerprint and reexported["checkpoint"] == portable(str(ckpt))
    assert reexported["max_difference"] == {"chunks": 0.0, "features": 0.0, "normalization": 0.0}

    with torch.no_grad():
        next(model.parameters()).add_(1e-3)
    other = export_bundle(model.eval(), tmp_path / "other", normalization=run.manifest.normalization, rtc=False,
                          provenance=provenance)
    assert main(["train-policy", "--export-checkpoint", str(ckpt), "--like", str(other.path),
                 "--out", str(tmp_path / "refused")]) != 0
    assert "holds other weights" in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()


def test_resume_refuses_another_configuration(dataset, tmp_path):
    common = dict(dataset=str(dataset), out=str(tmp_path / "p"), size="tiny", batch_size=2, val_every=5,
                  checkpoint_every=5, threads=1)
    train_policy(TrainConfig(steps=5, **common), log=lambda m: None)
    with pytest.raises(ValueError, match="another configuration"):
        train_policy(TrainConfig(steps=5, lr=1e-3, **common), log=lambda m: None)


def test_loss_goes_down_on_the_recorded_data(dataset, tmp_path):
    config = TrainConfig(dataset=str(dataset), out=str(tmp_path / "fit"), size="tiny", steps=150, batch_size=16,
                         warmup_steps=10, lr=1e-3, val_every=50, checkpoint_every=150, threads=2)
    train_policy(config, log=lambda m: None)
    history = json.loads((tmp_path / "fit.ckpt" / "history.json").read_text())
    assert history[-1]["train_loss"] < 0.6 * history[0]["train_loss"], history


def test_init_from_starts_at_the_checkpoint_weights_and_refuses_another_model(dataset, tmp_path):
    from runtime import Engine
    from policies.observation import make_example_observation

    common = dict(dataset=str(dataset), size="tiny", batch_size=2, val_every=3, checkpoint_every=3, threads=1)
    first = train_policy(TrainConfig(out=str(tmp_path / "first"), steps=6, **common), log=lambda m: None)
    ckpt = str(tmp_path / "first.ckpt" / "last.pt")
    # lr 0: the fine-tune cannot move, so its export must act exactly like the checkpoint's weights.
    messages = []
    tuned = train_policy(TrainConfig(out=str(tmp_path / "tuned"), steps=3, lr=0.0, init_from=ckpt, **common),
                         log=messages.append)
    assert any("initialised from" in m for m in messages)
    obs = make_example_observation(load_policy_bundle(first).manifest, seed=1)
    a, b = Engine(first).infer(obs, n=3, seed=7), Engine(tuned).infer(obs, n=3, seed=7)
    np.testing.assert_allclose(a.chunk, b.chunk, atol=1e-5)
    assert load_policy_bundle(tuned).manifest.provenance["training"]["init_from"] == portable(ckpt)
    # A fresh run from scratch differs: the init really came from the checkpoint.
    fresh = train_policy(TrainConfig(out=str(tmp_path / "fresh"), steps=3, lr=0.0, seed=1, **common),
                         log=lambda m: None)
    assert np.abs(Engine(fresh).infer(obs, n=3, seed=7).chunk - a.chunk).max() > 1e-3
    with pytest.raises(ValueError, match="init_from"):
        train_policy(TrainConfig(out=str(tmp_path / "bad"), steps=3, init_from=ckpt, kind="diffusion", **common),
                     log=lambda m: None)


def test_state_noise_perturbs_only_the_state_input(dataset):
    from policies.config import make_config
    from policies.data import load_dataset
    from policies.train import Batcher

    data = load_dataset(dataset)
    cfg = make_config("tiny", "flow", cameras=data.cameras, state_names=data.state_names,
                      action_names=data.action_names)
    norm = data.normalization()
    eps = list(range(len(data.episodes)))
    clean = Batcher(data, eps, cfg, norm, 0, None).sample(256, np.random.default_rng(3))
    noisy = Batcher(data, eps, cfg, norm, 0, None, state_noise=0.5).sample(256, np.random.default_rng(3))
    for a, b in zip(clean[0], noisy[0]):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_array_equal(clean[2].numpy(), noisy[2].numpy())
    np.testing.assert_array_equal(clean[3].numpy(), noisy[3].numpy())
    diff = (noisy[1] - clean[1]).numpy()
    assert abs(diff.std() - 0.5) < 0.05 and abs(diff.mean()) < 0.05
    with pytest.raises(ValueError, match="state_noise"):
        TrainConfig(dataset=str(dataset), out="x", state_noise=-1.0)


def test_future_state_targets_and_loss(dataset):
    """The auxiliary targets are the recorded states k steps ahead (the last one past the end), and only a
    model built with future_steps pays the extra loss; the head is not part of what the runtime runs."""
    import torch

    from policies.config import make_config
    from policies.data import load_dataset
    from policies.models import build_policy
    from policies.train import Batcher

    data = load_dataset(dataset)
    cfg = make_config("tiny", "flow", cameras=data.cameras, state_names=data.state_names,
                      action_names=data.action_names, future_steps=(3, 1000))
    norm = data.normalization()
    batcher = Batcher(data, [0], cfg, norm, 0, None, state_noise=0.5)
    images, state, tokens, actions, future = batcher.sample(64, np.random.default_rng(0))
    ep = data.episodes[0]
    s_mean, s_std = np.asarray(norm.state_mean, np.float32), np.asarray(norm.state_std, np.float32)
    normalised = (ep.state - s_mean) / s_std
    # Identify each sample's frame by its (clean) action chunk, then check its targets.
    for i in range(64):
        t = int(np.argmin([np.abs(ep.chunk(u, cfg.chunk_length) - (actions[i].numpy() * np.asarray(norm.action_std)
                                                                      + np.asarray(norm.action_mean))).max()
                           for u in range(len(ep))]))
        np.testing.assert_allclose(future[i, 0].numpy(), normalised[min(t + 3, len(ep) - 1)], atol=1e-5)
        np.testing.assert_allclose(future[i, 1].numpy(), normalised[-1], atol=1e-5)
    model = build_policy(cfg).train()
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    with_aux = model.loss(images, state, tokens, actions, future, generator=g())
    without = model.loss(images, state, tokens, actions, None, generator=g())
    assert with_aux.item() > without.item()
    with_aux.backward()
    assert model.future_head[0].weight.grad.abs().sum() > 0
    plain = make_config("tiny", "flow", cameras=data.cameras, state_names=data.state_names,
                        action_names=data.action_names, future_steps=())
    assert Batcher(data, [0], plain, norm, 0, None).sample(4, np.random.default_rng(0))[4] is None
    assert not hasattr(build_policy(plain), "future_head")


def test_start_fraction_draws_that_share_of_frames_from_the_episode_starts(dataset):
    from policies.config import make_config
    from policies.data import load_dataset
    from policies.train import Batcher

    data = load_dataset(dataset)
    cfg = make_config("tiny", "flow", cameras=data.cameras, state_names=data.state_names,
                      action_names=data.action_names)
    norm = data.normalization()
    ep = data.episodes[0]
    s_mean, s_std = np.asarray(norm.state_mean, np.float32), np.asarray(norm.state_std, np.float32)
    normalised = (ep.state - s_mean) / s_std

    def frames(fraction):
        state = Batcher(data, [0], cfg, norm, 0, None, start_fraction=fraction, start_frames=3).sample(
            400, np.random.default_rng(1))[1].numpy()
        return np.array([np.argmin(np.abs(normalised - s).max(axis=1)) for s in state])

    assert frames(1.0).max() < 3
    early = (frames(0.5) < 3).mean()
    assert 0.4 < early < 0.6 + 3 / len(ep)
    assert (frames(0.0) < 3).mean() < 0.1
    with pytest.raises(ValueError, match="start_fraction"):
        TrainConfig(dataset=str(dataset), out="x", start_fraction=1.5)


def test_init_from_accepts_a_checkpoint_older_than_a_config_field(dataset, tmp_path):
    """A checkpoint written before `PolicyConfig.feature` existed still initialises a run (with the default)."""
    import torch

    common = dict(dataset=str(dataset), size="tiny", batch_size=2, val_every=3, checkpoint_every=3, threads=1)
    train_policy(TrainConfig(out=str(tmp_path / "old"), steps=3, **common), log=lambda m: None)
    ckpt = tmp_path / "old.ckpt" / "last.pt"
    state = torch.load(ckpt, weights_only=False)
    del state["policy_config"]["feature"]
    torch.save(state, ckpt)
    messages = []
    train_policy(TrainConfig(out=str(tmp_path / "new"), steps=3, init_from=str(ckpt), **common), log=messages.append)
    assert any("initialised from" in m for m in messages)
    # One without the keypoint head (as before `keypoints` existed): the head starts fresh, the rest loads.
    del state["policy_config"]["keypoints"]
    state["ema"] = {k: v for k, v in state["ema"].items() if not k.startswith("encoder.keypoint_")}
    torch.save(state, ckpt)
    messages = []
    lr0 = train_policy(TrainConfig(out=str(tmp_path / "kp"), steps=2, lr=0.0, init_from=str(ckpt), **common),
                       log=messages.append)
    assert any("keypoints start fresh" in m for m in messages)
    loaded = torch.load(tmp_path / "kp.ckpt" / "last.pt", weights_only=False)["ema"]
    for k, v in state["ema"].items():
        torch.testing.assert_close(loaded[k], v)
    assert load_policy_bundle(lr0).manifest.model_config["keypoints"] == 4


def test_load_dataset_reads_what_lerobot_reads(dataset):
    """The training loader reads the parquet columns directly; every frame must equal LeRobot's own reading
    (state, action, task, and the decoded camera frame), episode by episode."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from policies.data import load_dataset

    data = load_dataset(dataset)
    ds = LeRobotDataset(f"taco/{dataset.name}", root=dataset, video_backend="pyav")
    assert len(data.episodes) == ds.num_episodes and sum(map(len, data.episodes)) == ds.num_frames
    offset = 0
    for ep in data.episodes:
        for t in (0, len(ep) // 2, len(ep) - 1):
            item = ds[offset + t]
            assert int(item["episode_index"]) == ep.index and int(item["frame_index"]) == t
            np.testing.assert_array_equal(ep.state[t], item["observation.state"].numpy())
            np.testing.assert_array_equal(ep.action[t], item["action"].numpy())
            assert ep.task == item["task"]
            frame = (item["observation.images.cam_high"].numpy().transpose(1, 2, 0) * 255).round()
            np.testing.assert_array_equal(ep.images["cam_high"][t], frame.astype(np.uint8))
        offset += len(ep)
