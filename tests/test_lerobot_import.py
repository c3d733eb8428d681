"""`taco import lerobot`: a LeRobot checkpoint becomes a bundle that computes what LeRobot computes.

The reference is LeRobot itself, loaded from the checkpoint folder: its preprocessor, then
`predict_action_chunk(batch, noise=...)` one candidate at a time, then its postprocessor; the bundle runs in
the Engine with the same noise (and, for DDPM, the same per-step noise replayed into LeRobot's scheduler).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lerobot_checkpoints import diffusion_checkpoint
from policies import Observation
from runtime import Engine, EngineConfig

# Needs the train extra throughout: not collected by the robot-side run (tests/conftest.py).
pytestmark = pytest.mark.workstation

TOL = 1e-4


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("lerobot")
    return {
        "ddim": diffusion_checkpoint(root / "ddim", scheduler="DDIM", n_obs_steps=2, cameras=("cam_high", "cam_low")),
        "ddpm": diffusion_checkpoint(root / "ddpm", scheduler="DDPM", n_obs_steps=1, cameras=("cam_high",), seed=1),
    }


@pytest.fixture(scope="module")
def imported(checkpoints, tmp_path_factory):
    from policies.lerobot import import_lerobot
    from policies.manifest import ALOHA_JOINTS

    root = tmp_path_factory.mktemp("imported")
    return {name: import_lerobot(path, root / name, joint_names=ALOHA_JOINTS, fps=50)
            for name, path in checkpoints.items()}


def lerobot_reference(checkpoint, frames, states, noise, step_noise):
    """LeRobot's chunks (robot units) and UNet-bottleneck features for each candidate's noise."""
    import torch

    from lerobot.policies.factory import make_pre_post_processors
    from policies.lerobot import _replayed_step_noise, build_policy, read_checkpoint

    policy = build_policy(read_checkpoint(checkpoint))
    pre, post = make_pre_post_processors(policy.config, pretrained_path=str(checkpoint))
    cams = [k for k in policy.config.input_features if k.startswith("observation.images.")]
    batch = {k: torch.stack([torch.from_numpy(f[k.split(".")[-1]]).permute(2, 0, 1).float() / 255 for f in frames])[None]
             for k in cams}
    batch["observation.state"] = torch.from_numpy(np.stack(states))[None]  # [1, T, S]: LeRobot's history axis
    captured = []
    policy.diffusion.unet.mid_modules[-1].register_forward_hook(lambda m, i, out: captured.append(out))
    chunks, features = [], []
    for i in range(noise.shape[0]):
        policy.reset()
        step = None if step_noise is None else torch.from_numpy(step_noise[:, i:i + 1])
        with torch.no_grad(), _replayed_step_noise(step):
            actions = policy.predict_action_chunk(pre(dict(batch)), noise=torch.from_numpy(noise[i:i + 1]))
        chunks.append(post(actions)[0].numpy())
        features.append(captured[-1].mean(-1)[0].numpy())
    return np.stack(chunks), np.stack(features)


def _observations(manifest, rng):
    frames = [{c.name: rng.integers(0, 256, (c.height, c.width, 3), dtype=np.uint8) for c in manifest.cameras}
              for _ in range(manifest.history)]
    states = [rng.uniform(-1.0, 1.0, manifest.state_dim).astype(np.float32) for _ in range(manifest.history)]
    return frames, states


@pytest.mark.parametrize("name", ["ddim", "ddpm"])
def test_imported_diffusion_policy_matches_lerobot(name, checkpoints, imported):
    bundle = imported[name]
    m = bundle.manifest
    assert m.source["policy_type"] == "diffusion" and m.prefix == ("global_cond",)
    assert m.noise_dims == (16, 14) and m.chunk_length == 8 and m.step_noise == (name == "ddpm")
    engine = Engine(bundle, config=EngineConfig(return_candidates=True))
    rng = np.random.default_rng(3)
    frames, states = _observations(m, rng)
    for n in (1, 4, 16):
        engine.reset()
        for t in range(m.history - 1):  # the earlier observation of a two-step history
            engine.observe(Observation(frames[t], states[t], "unused", stamp=0.02 * t))
        noise = rng.standard_normal((n, *m.noise_dims)).astype(np.float32)
        decision = engine.infer(Observation(frames[-1], states[-1], "unused", stamp=0.02 * (m.history - 1)),
                                noise=noise, seed=11)
        step_noise = engine.policy.draw(n, 11, noise)[1]
        chunks, features = lerobot_reference(checkpoints[name], frames, states, noise, step_noise)
        assert decision.candidates.shape == chunks.shape == (n, 8, 14)
        assert np.abs(decision.candidates - chunks).max() < TOL, f"{name} N={n}"
        assert np.abs(decision.features - features).max() < TOL, f"{name} N={n}"
    # The chunks depend on the inputs: parity on a constant would prove nothing.
    assert np.ptp(decision.candidates, axis=0).max() > 1e-2
    assert not not_fp16_safe(bundle)


def test_ddpm_draws_its_per_step_noise_from_the_seed(imported):
    engine = Engine(imported["ddpm"])
    frames, states = _observations(engine.manifest, np.random.default_rng(0))
    obs = Observation(frames[0], states[0], "unused")
    noise = np.random.default_rng(1).standard_normal((2, *engine.manifest.noise_dims)).astype(np.float32)
    a, b, c = (engine.infer(obs, noise=noise, seed=s).chunk for s in (1, 1, 2))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3  # same initial noise, other per-step noise


def test_history_repeats_the_first_observation_until_it_is_full(imported):
    """At an episode start LeRobot fills its queues with the first observation; so does the engine."""
    engine = Engine(imported["ddim"])
    frames, states = _observations(engine.manifest, np.random.default_rng(0))
    first, second = (Observation(f, s, "unused", stamp=0.02 * i) for i, (f, s) in enumerate(zip(frames, states)))
    noise = np.random.default_rng(2).standard_normal((1, *engine.manifest.noise_dims)).astype(np.float32)
    fresh = engine.infer(first, noise=noise).chunk
    engine.reset()
    engine.observe(first)
    engine.observe(first)  # the same observation twice is kept once
    again = engine.infer(first, noise=noise).chunk
    np.testing.assert_array_equal(fresh, again)
    moved = engine.infer(second, noise=noise).chunk
    assert np.abs(moved - fresh).max() > 1e-4
    engine.reset()
    assert len(engine.history) == 0


@pytest.mark.parametrize("name", ["ddim", "ddpm"])
def test_a_batch_of_robots_each_with_its_history_gets_each_robots_solo_decision(name, imported):
    """Cross-client batching on an imported policy: a two-step history per robot (DDIM) and per-step noise
    drawn from each request's seed (DDPM). The imported sampler takes one shared prefix (LeRobot's
    wrappers expand row 0), so the batch shares the encoder call only."""
    from runtime import BatchItem

    engine = Engine(imported[name])
    m = engine.manifest
    assert not engine.policy.per_candidate_prefix
    robots = [_observations(m, np.random.default_rng(r)) for r in range(3)]
    steps = [[Observation(f, s, "unused", stamp=0.02 * t) for t, (f, s) in enumerate(zip(*robot))] for robot in robots]
    solo = []
    for r, frames in enumerate(steps):
        engine.reset()
        for obs in frames[:-1]:
            engine.observe(obs)
        solo.append(engine.infer(frames[-1], n=3, seed=40 + r).chunk)
    histories = [engine.policy.history() for _ in steps]
    for history, frames in zip(histories, steps):
        for obs in frames[:-1]:
            history.push(obs)
    batch = engine.infer_batch([BatchItem(frames[-1], 3, 40 + r, histories[r]) for r, frames in enumerate(steps)])
    for a, b in zip(solo, batch):
        np.testing.assert_allclose(b.chunk, a, atol=1e-5)
    assert np.abs(solo[0] - solo[1]).max() > 1e-3
    if m.history > 1:
        with pytest.raises(ValueError, match="own history"):
            engine.infer_batch([BatchItem(steps[0][-1], 1, 1), BatchItem(steps[1][-1], 1, 2)])


def not_fp16_safe(bundle) -> list[str]:
    """Graph nodes or weights of float64 (which TensorRT does not run), or constants below float16's
    range (masks that would become -inf, and NaN on a fully masked row, in an FP16 engine)."""
    import onnx

    found = []
    for name in bundle.manifest.files:
        if name.endswith(".onnx"):
            model = onnx.load(str(bundle.path / name), load_external_data=False)
            found += [f"{name}:{n.name}" for n in model.graph.node
                      if any(a.name == "to" and a.i == onnx.TensorProto.DOUBLE for a in n.attribute)]
            found += [f"{name}:{t.name}" for t in model.graph.initializer if t.data_type == onnx.TensorProto.DOUBLE]
            tensors = [a.t for n in model.graph.node for a in n.attribute if a.type == onnx.AttributeProto.TENSOR]
            tensors += [t for t in model.graph.initializer if t.data_location != onnx.TensorProto.EXTERNAL]
            found += [f"{name}:{t.name} below float16" for t in tensors if t.data_type == onnx.TensorProto.FLOAT
                      and (onnx.numpy_helper.to_array(t) < -65504).any()]
    return found


def _edit_json(path, edit):
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_refusals_name_what_is_wrong(checkpoints, tmp_path):
    from safetensors.numpy import load_file, save_file

    from policies.lerobot import ImportRefused, import_lerobot, read_checkpoint

    good = checkpoints["ddpm"]
    cases = {
        "config.json.type": lambda d: _edit_json(d / "config.json", lambda c: c.update(type="act")),
        "policy_preprocessor.json.steps[1]": lambda d: _edit_json(
            d / "policy_preprocessor.json", lambda c: c["steps"][1].update(registry_name="mystery_processor")),
        "stats.action.min": lambda d: save_file(
            {k: v for k, v in load_file(d / "policy_preprocessor_step_3_normalizer_processor.safetensors").items()
             if k != "action.min"}, d / "policy_preprocessor_step_3_normalizer_processor.safetensors"),
        "config.json.input_features": lambda d: _edit_json(
            d / "config.json", lambda c: c["input_features"].pop("observation.state")),
    }
    for field, damage in cases.items():
        ck = shutil.copytree(good, tmp_path / field)
        damage(ck)
        with pytest.raises(ImportRefused) as err:
            read_checkpoint(ck)
        assert err.value.field == field, (field, str(err.value))
    assert "not a flow or diffusion sampler" in str(pytest.raises(ImportRefused, read_checkpoint,
                                                                  tmp_path / "config.json.type").value)

    # Weights that do not load are refused, not replaced by random ones.
    ck = shutil.copytree(good, tmp_path / "weights")
    weights = load_file(ck / "model.safetensors")
    weights["diffusion.unet.renamed"] = weights.pop(sorted(weights)[0])
    save_file(weights, ck / "model.safetensors")
    with pytest.raises(ImportRefused, match="1 missing keys .* 1 unexpected"):
        import_lerobot(ck, tmp_path / "out-weights", joint_names=tuple("abcdefghijklmn"), fps=50)
    # Joint names are required, and must fit the policy.
    with pytest.raises(ImportRefused, match="--dataset DIR"):
        import_lerobot(good, tmp_path / "out", fps=50)
    with pytest.raises(ImportRefused, match="3 given"):
        import_lerobot(good, tmp_path / "out", joint_names=("a", "b", "c"), fps=50)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out-weights").exists()


def test_taco_import_then_eval_in_simulation(checkpoints, tmp_path, capsys):
    from taco.cli import main

    out = tmp_path / "bundle"
    assert main(["import", "lerobot", str(checkpoints["ddim"]), "--out", str(out), "--joint-names", "aloha",
                 "--fps", "50"]) == 0
    assert "imported diffusion" in capsys.readouterr().out
    assert main(["inspect", str(out)]) == 0
    assert "global_cond" in capsys.readouterr().out
    report = tmp_path / "eval.json"
    assert main(["eval", "--policy", str(out), "--n", "4", "--task", "transfer_cube", "--episodes", "1",
                 "--max-steps", "24", "--json", str(report)]) == 0
    episode = json.loads(report.read_text())["episodes"][0]
    assert episode["steps"] == 24 and len(episode["chosen_index"]) == 3  # replanned every 8 of 24 steps


def test_feature_search_and_a_verifier_through_an_imported_bundle(tiny_dataset, tmp_path):
    """TACO's feature search runs on the imported policy (two frames of history from the dataset, the DDPM
    per-step noise fixed with the K noises), and the verifier it trains scores that policy's candidates."""
    from policies.lerobot import import_lerobot
    from verifiers.features import FeatureSet, collect_features
    from verifiers.train import VerifierTrainConfig, train_verifier

    checkpoint = diffusion_checkpoint(tmp_path / "ck", cameras=("cam_high",), scheduler="DDPM", image_hw=(32, 32))
    bundle = import_lerobot(checkpoint, tmp_path / "bundle", dataset=tiny_dataset)
    assert bundle.manifest.action_dt == pytest.approx(0.02)  # the dataset's 50 fps
    features = collect_features(bundle.path, tiny_dataset, k=4, stride=40, seed=0, progress=lambda msg: None)
    assert features.features.shape[1] == bundle.manifest.feature_dim and len(features.features) >= 4
    assert np.isfinite(features.features).all() and features.policy_fingerprint == bundle.fingerprint
    again = collect_features(bundle.path, tiny_dataset, k=4, stride=40, seed=0, progress=lambda msg: None)
    np.testing.assert_array_equal(features.features, again.features)
    path = features.save(tmp_path / "features.npz")
    verifier = train_verifier(FeatureSet.load(path), VerifierTrainConfig(kind="knn"), tmp_path / "knn")
    engine = Engine(bundle, verifier=verifier.path)
    frames, states = _observations(bundle.manifest, np.random.default_rng(0))
    decision = engine.infer(Observation(frames[0], states[0], "lift"), n=8, seed=0)
    assert decision.verifier == "knn" and np.isfinite(decision.scores).all() and np.ptp(decision.scores) > 0


@pytest.mark.parametrize("mode", ["MEAN_STD", "MIN_MAX", "QUANTILES", "QUANTILE10", "IDENTITY"])
def test_normalisation_modes_convert_exactly(mode):
    """Each LeRobot normalisation mode becomes the manifest's (x - mean) / std, both ways, a constant
    dimension (zero spread) included."""
    import torch

    from lerobot.configs.types import FeatureType, NormalizationMode, PolicyFeature
    from lerobot.processor.normalize_processor import NormalizerProcessorStep
    from policies.lerobot import Checkpoint

    rng = np.random.default_rng(0)
    lo = rng.uniform(-1, 0, 6).astype(np.float32)
    stats = {"mean": lo + 0.5, "std": rng.uniform(0.1, 1, 6).astype(np.float32), "min": lo, "max": lo + 2.0,
             "q01": lo + 0.1, "q99": lo + 1.9, "q10": lo + 0.3, "q90": lo + 1.7}
    stats["std"][5] = 0.0  # dimension 5 has no spread
    for high, low in (("max", "min"), ("q99", "q01"), ("q90", "q10")):
        stats[high][5] = stats[low][5]
    step = NormalizerProcessorStep(features={"observation.state": PolicyFeature(FeatureType.STATE, (6,))},
                                   norm_map={FeatureType.STATE: NormalizationMode(mode)},
                                   stats={"observation.state": {k: torch.from_numpy(v) for k, v in stats.items()}})
    ck = Checkpoint(path=None, config={}, pre_steps=[{"registry_name": "normalizer_processor",
                                                      "config": {"norm_map": {"STATE": mode}, "eps": 1e-8}}],
                    post_steps=[], stats={f"observation.state.{k}": v for k, v in stats.items()}, weights_sha256="")
    x = rng.uniform(-2, 2, (10, 6)).astype(np.float32)
    theirs = step._apply_transform(torch.from_numpy(x), "observation.state", FeatureType.STATE).numpy()
    mean, std = ck.affine("observation.state", "STATE")
    np.testing.assert_allclose((x - mean) / std, theirs, rtol=1e-5, atol=1e-3 if mode == "MEAN_STD" else 1e-4)
    back = step._apply_transform(torch.from_numpy(theirs), "observation.state", FeatureType.STATE, inverse=True)
    mean, std = ck.affine("observation.state", "STATE", inverse=True)
    np.testing.assert_allclose(theirs * std + mean, back.numpy(), rtol=1e-5, atol=1e-4)


def _trainer_flags(family: str, tmp_path: Path) -> list[str]:
    """A few-step `lerobot-train` of each family on a 32x32 camera: a small UNet for diffusion, SmolVLA on a
    local four-layer VLM (`tiny_vlm`) instead of SmolVLM2 from the hub."""
    if family == "diffusion":
        return ["--policy.type=diffusion", "--policy.pretrained_backbone_weights=null", "--policy.use_group_norm=true",
                "--policy.down_dims=[16,32]", "--policy.crop_shape=[24,24]", "--policy.num_inference_steps=3",
                "--policy.noise_scheduler_type=DDIM", "--policy.horizon=16", "--policy.n_action_steps=8"]
    from lerobot_checkpoints import tiny_vlm, word_tokenizer

    vlm = tiny_vlm(tmp_path / "vlm", word_tokenizer(tmp_path / "tokenizer"))
    return ["--policy.type=smolvla", f"--policy.vlm_model_name={vlm}", "--policy.load_vlm_weights=false",
            "--policy.num_vlm_layers=4", "--policy.num_expert_layers=-1", "--policy.resize_imgs_with_padding=[64,64]",
            "--policy.chunk_size=16", "--policy.n_action_steps=8", "--policy.tokenizer_max_length=16"]


@pytest.mark.parametrize("family", ["diffusion", "smolvla"])
def test_lerobot_train_on_a_taco_dataset_then_import_and_eval(family, tiny_dataset, tmp_path, capsys):
    """LeRobot's own trainer on a dataset `taco record` wrote, a few steps, then the checkpoint it leaves is
    imported (names and rate from the dataset) and evaluated in simulation."""
    from taco.cli import main

    trainer = Path(sys.executable).parent / "lerobot-train"
    out = tmp_path / "train"
    result = subprocess.run(
        [str(trainer), "--dataset.repo_id=taco/lift", f"--dataset.root={tiny_dataset}",
         "--dataset.video_backend=pyav", "--steps=2", "--batch_size=2", f"--output_dir={out}",
         "--policy.push_to_hub=false", "--wandb.enable=false", "--policy.device=cpu", "--num_workers=0",
         "--save_freq=2", *_trainer_flags(family, tmp_path)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = out / "checkpoints" / "last" / "pretrained_model"
    bundle = tmp_path / "bundles" / "imported"  # a parent that does not exist yet
    assert main(["import", "lerobot", str(checkpoint), "--dataset", str(tiny_dataset), "--out", str(bundle)]) == 0
    assert "left_waist" in capsys.readouterr().out  # joint names from the dataset
    assert json.loads((bundle / "manifest.json").read_text())["source"]["policy_type"] == family
    report = tmp_path / "eval.json"
    assert main(["eval", "--policy", str(bundle), "--task", "lift_bar", "--episodes", "1", "--max-steps", "16",
                 "--json", str(report)]) == 0
    assert len(json.loads(report.read_text())["episodes"][0]["chosen_index"]) == 2


# ------------------------------------------------------------------------------------------------
# The VLAs: pi0, pi0.5 and SmolVLA, tiny and random, with a word-level stand-in for their tokenizers.

@pytest.fixture(scope="module")
def vlas(tmp_path_factory):
    """{family: (checkpoint, tokenizer folder, bundle)}; pi0 and pi05 shrunk by `tiny_pi` for the module."""
    from lerobot_checkpoints import pi_checkpoint, smolvla_checkpoint, tiny_pi, tiny_vlm, word_tokenizer
    from policies.lerobot import import_lerobot
    from policies.manifest import ALOHA_JOINTS

    patch = pytest.MonkeyPatch()
    tiny_pi(patch)
    root = tmp_path_factory.mktemp("vla")
    tok = word_tokenizer(root / "tokenizer")
    vlm = tiny_vlm(root / "vlm", tok)
    made = {"pi0": (pi_checkpoint(root / "pi0", tok, kind="pi0"), tok),
            "pi05": (pi_checkpoint(root / "pi05", tok, kind="pi05", cameras=("cam_high",)), tok),
            "smolvla": (smolvla_checkpoint(root / "smolvla", vlm), vlm)}
    out = {name: (ck, folder, import_lerobot(ck, root / f"{name}-bundle", joint_names=ALOHA_JOINTS, fps=50,
                                             tokenizer=folder if name != "smolvla" else None))
           for name, (ck, folder) in made.items()}
    yield out
    patch.undo()


def vla_reference(checkpoint, tokenizer, frame, state, task, noise):
    """LeRobot's chunks (robot units) and the input of action_out_proj at the last step, per candidate."""
    import torch

    policy, pre, post, batch = lerobot_vla(checkpoint, tokenizer, frame, state, task)
    ck_type = policy.config.type
    captured = []
    policy.model.action_out_proj.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
    chunks, features = [], []
    for i in range(noise.shape[0]):
        with torch.no_grad():
            actions = policy.predict_action_chunk(pre(dict(batch)), noise=torch.from_numpy(noise[i:i + 1]))
        chunks.append(post(actions)[0].numpy())
        out = captured[-1][0]
        features.append((out.mean(0) if ck_type == "smolvla" else out[0]).numpy())
    return np.stack(chunks), np.stack(features)


def lerobot_vla(checkpoint, tokenizer, frame, state, task, rtc=None):
    """LeRobot's own VLA from the checkpoint (with `rtc`, an RTCConfig, its RTC processor on), its pre- and
    post-processors, and the batch of one observation as LeRobot takes it."""
    import torch

    from lerobot.policies.factory import make_pre_post_processors
    from policies.lerobot import build_policy, read_checkpoint

    ck = read_checkpoint(checkpoint)
    policy = build_policy(ck)
    if rtc is not None:
        policy.config.rtc_config = rtc
        policy.init_rtc_processor()
    overrides = {} if ck.type == "smolvla" else {"tokenizer_processor": {"tokenizer_name": str(tokenizer)}}
    pre, post = make_pre_post_processors(policy.config, pretrained_path=str(checkpoint),
                                         preprocessor_overrides=overrides)
    batch = {f"observation.images.{name}": torch.from_numpy(image).permute(2, 0, 1).float()[None] / 255
             for name, image in frame.items()}
    batch.update({"observation.state": torch.from_numpy(state)[None], "task": [task]})
    return policy, pre, post, batch


@pytest.mark.parametrize("family", ["pi0", "pi05", "smolvla"])
def test_imported_vla_matches_lerobot(family, vlas):
    checkpoint, tokenizer, bundle = vlas[family]
    m = bundle.manifest
    assert m.kind == "flow" and m.source["policy_type"] == family and m.noise_dims == (16, 32)
    assert m.image_resize == ("pad_left_top" if family == "smolvla" else "pad_center")
    engine = Engine(bundle, config=EngineConfig(return_candidates=True))
    rng = np.random.default_rng(5)
    frame = {c.name: rng.integers(0, 256, (c.height, c.width, 3), dtype=np.uint8) for c in m.cameras}
    state = rng.uniform(-1, 1, m.state_dim).astype(np.float32)
    task = "pick up the red cube with the right arm"
    for n in (1, 4, 16):
        noise = rng.standard_normal((n, *m.noise_dims)).astype(np.float32)
        decision = engine.infer(Observation(frame, state, task), noise=noise)
        chunks, features = vla_reference(checkpoint, tokenizer, frame, state, task, noise)
        assert decision.candidates.shape == chunks.shape == (n, 16, 14)
        assert np.abs(decision.candidates - chunks).max() < TOL, f"{family} N={n}"
        assert np.abs(decision.features - features).max() < TOL, f"{family} N={n}"
    assert np.ptp(decision.candidates, axis=0).max() > 1e-2
    assert not not_fp16_safe(bundle), "no float64, and masks within float16's range"


@pytest.mark.parametrize("family,delay,horizon,schedule", [("pi0", 3, 10, "LINEAR"), ("pi05", 5, 8, "EXP"),
                                                            ("smolvla", 4, 12, "LINEAR"), ("pi0", 0, 6, "ONES")])
def test_imported_vla_real_time_chunking_matches_lerobots(family, delay, horizon, schedule, vlas):
    """RTC in the bundle's sampler against LeRobot's own: `predict_action_chunk(..., inference_delay=,
    prev_chunk_left_over=, execution_horizon=)` with `RTCConfig(enabled=True)`, for every candidate."""
    import torch

    from lerobot.configs import RTCAttentionSchedule
    from lerobot.policies.rtc.configuration_rtc import RTCConfig
    from policies.guidance import guidance_from, prefix_weights

    checkpoint, tokenizer, bundle = vlas[family]
    m = bundle.manifest
    assert m.rtc
    engine = Engine(bundle, config=EngineConfig(return_candidates=True))
    rng = np.random.default_rng(7)
    frame = {c.name: rng.integers(0, 256, (c.height, c.width, 3), dtype=np.uint8) for c in m.cameras}
    state = rng.uniform(-1, 1, m.state_dim).astype(np.float32)
    task = "pick up the red cube with the right arm"
    noise = rng.standard_normal((3, *m.noise_dims)).astype(np.float32)
    left = 12  # actions left of the executing chunk (normalised, as LeRobot's queue holds them)
    prev = rng.uniform(-1.5, 1.5, (left, m.action_dim)).astype(np.float32)
    norm = m.normalization
    executing = prev * np.asarray(norm.action_std, np.float32) + np.asarray(norm.action_mean, np.float32)
    times = 0.1 + m.action_dt * np.arange(left)
    guidance = guidance_from(executing, times, 0.1, m.action_dt, delay, horizon, schedule.lower(),
                             length=m.chunk_length)
    np.testing.assert_array_equal(guidance.target, executing)
    decision = engine.infer(Observation(frame, state, task, stamp=0.1), noise=noise, guidance=guidance)
    plain = engine.infer(Observation(frame, state, task, stamp=0.1), noise=noise)

    # LeRobot, with its RTC processor on and the same leftover.
    rtc = RTCConfig(enabled=True, execution_horizon=horizon, prefix_attention_schedule=RTCAttentionSchedule[schedule])
    policy, pre, post, batch = lerobot_vla(checkpoint, tokenizer, frame, state, task, rtc)
    np.testing.assert_allclose(prefix_weights(delay, min(horizon, left), m.chunk_length, schedule.lower()),
                               policy.rtc_processor.get_prefix_weights(delay, min(horizon, left), m.chunk_length),
                               atol=1e-6)
    for i in range(len(noise)):
        with torch.no_grad():
            actions = policy.predict_action_chunk(pre(dict(batch)), noise=torch.from_numpy(noise[i:i + 1]),
                                                  inference_delay=delay, prev_chunk_left_over=torch.from_numpy(prev),
                                                  execution_horizon=horizon)
        expected = post(actions)[0].numpy()
        assert np.abs(decision.candidates[i] - expected).max() < TOL, f"{family} candidate {i}"
    # Guidance moved the chunk toward the executing one where it is weighted, so parity is not of a no-op.
    weighted = guidance.weights[:left] > 0.5
    assert np.abs(decision.candidates - plain.candidates).max() > 1e-2
    assert (np.abs(decision.candidates[:, :left][:, weighted] - executing[weighted]).mean()
            < np.abs(plain.candidates[:, :left][:, weighted] - executing[weighted]).mean())


def test_pi05_writes_the_state_into_its_prompt(vlas):
    """pi0.5's tokens change with the state (256 bins of the normalised state), pi0's do not."""
    for family, changes in (("pi05", True), ("pi0", False)):
        engine = Engine(vlas[family][2])
        m = engine.manifest
        frame = {c.name: np.zeros((c.height, c.width, 3), np.uint8) for c in m.cameras}
        tokens = [engine.policy.preprocess(Observation(frame, np.full(m.state_dim, v, np.float32), "lift the bar"))
                  ["tokens"] for v in (-0.5, 0.5)]
        assert (not np.array_equal(*tokens)) == changes, family


def test_vla_refusals(vlas, tmp_path):
    from policies.lerobot import ImportRefused, import_lerobot

    pi0 = vlas["pi0"][0]
    with pytest.raises(ImportRefused, match="--tokenizer DIR"):
        import_lerobot(pi0, tmp_path / "a", joint_names=tuple("abcdefghijklmn"), fps=50)
    ck = shutil.copytree(pi0, tmp_path / "relative")
    _edit_json(ck / "policy_preprocessor.json", lambda c: next(
        s for s in c["steps"] if s["registry_name"] == "relative_actions_processor")["config"].update(enabled=True))
    with pytest.raises(ImportRefused, match="relative actions"):
        import_lerobot(ck, tmp_path / "b", joint_names=tuple("abcdefghijklmn"), fps=50, tokenizer=vlas["pi0"][1])
    ck = shutil.copytree(vlas["smolvla"][0], tmp_path / "novlm")
    _edit_json(ck / "config.json", lambda c: c.update(vlm_model_name="HuggingFaceTB/SmolVLM2-500M-Video-Instruct"))
    with pytest.raises(ImportRefused, match="not a local folder"):
        import_lerobot(ck, tmp_path / "c", joint_names=tuple("abcdefghijklmn"), fps=50)


def test_an_imported_vla_runs_in_simulation(vlas, tmp_path):
    from taco.cli import main

    report = tmp_path / "eval.json"
    bundle = vlas["smolvla"][2]
    assert main(["eval", "--policy", str(bundle.path), "--n", "4", "--task", "transfer_cube", "--episodes", "1",
                 "--max-steps", "16", "--json", str(report)]) == 0
    assert len(json.loads(report.read_text())["episodes"][0]["chosen_index"]) == 2


def test_large_weights_go_to_one_external_data_file(checkpoints, imported, tmp_path):
    """Above the threshold (1.5 GB by default; 0 here) each graph's weights go to `<graph>.onnx.data`,
    hashed in the manifest like the graphs, and the bundle computes exactly what the single-file one does."""
    from policies.lerobot import import_lerobot
    from policies.manifest import ALOHA_JOINTS

    bundle = import_lerobot(checkpoints["ddpm"], tmp_path / "external", joint_names=ALOHA_JOINTS, fps=50,
                            external_data_above=0)
    assert set(bundle.manifest.files) == {"encoder.onnx", "encoder.onnx.data", "sampler.onnx", "sampler.onnx.data"}
    assert (tmp_path / "external" / "encoder.onnx").stat().st_size < 1_000_000  # the graph without its weights
    frames, states = _observations(bundle.manifest, np.random.default_rng(0))
    obs = Observation(frames[0], states[0], "unused")
    a, b = (Engine(x).infer(obs, n=3, seed=4) for x in (bundle, imported["ddpm"]))
    np.testing.assert_array_equal(a.chunk, b.chunk)
    (tmp_path / "external" / "sampler.onnx.data").write_bytes(b"tampered")
    with pytest.raises(Exception, match="files.sampler.onnx.data"):
        Engine(tmp_path / "external")


def test_bench_measures_the_engine_beside_lerobot_itself(checkpoints, imported):
    from runtime.bench import BenchConfig, format_table, run_bench

    report = run_bench(BenchConfig(ns=(1, 2), iters=1, warmup=0, bundle=str(imported["ddim"].path),
                                   lerobot=str(checkpoints["ddim"])), progress=lambda msg: None)
    impls = {(r["impl"], r["n"]) for r in report["rows"]}
    assert {("lerobot-calls", 2), ("lerobot-batch", 2), ("runtime", 2)} <= impls
    assert all(r["total"]["p50"] > 0 for r in report["rows"])
    assert "lerobot-calls" in format_table(report) and not any("naive" in note for note in report["notes"])
    assert any("pruned rows skipped" in note for note in report["notes"])  # a diffusion policy
