"""ONNX Runtime and torch agree to 1e-4 (max abs) for both kinds, both sampler modes and N in {1, 7, 16}."""

import numpy as np
import pytest
import torch

from policies.export import example_inputs
from runtime import Engine

# Needs the train extra throughout: not collected by the robot-side run (tests/conftest.py).
pytestmark = pytest.mark.workstation

TOL = 1e-4


def torch_reference(policy, feeds, cams, noise):
    with torch.no_grad():
        prefix_kv, prefix_bias = policy.encode([torch.from_numpy(feeds[f"image_{c}"]) for c in cams],
                                               torch.from_numpy(feeds["state"]), torch.from_numpy(feeds["tokens"]))
        chunks, features = policy.sample(prefix_kv, prefix_bias, torch.from_numpy(noise))
    return prefix_kv.numpy(), chunks.numpy(), features.numpy()


@pytest.mark.parametrize("kind", ["flow", "diffusion"])
@pytest.mark.parametrize("sampler,size", [("unrolled", "tiny"), ("stepped", "tiny"), ("unrolled", "default")])
def test_onnx_matches_torch(exported, kind, sampler, size):
    ex = exported(kind, sampler, size)
    engine = Engine(ex.bundle)
    cfg = ex.policy.cfg
    images, state, tokens, _ = example_inputs(cfg, seed=7)
    feeds = {f"image_{c.name}": img.numpy() for c, img in zip(cfg.cameras, images)}
    feeds.update(state=state.numpy(), tokens=tokens.numpy())
    prefix = engine.policy.encode(feeds)
    prefix_kv = prefix["prefix_kv"]
    for n in (1, 7, 16):
        noise = engine.policy.noise(n, seed=n)
        chunks, features = engine.policy.sample(prefix, noise)
        ref_kv, ref_chunks, ref_features = torch_reference(ex.policy, feeds, engine.manifest.camera_names, noise)
        assert chunks.shape == (n, cfg.chunk_length, len(cfg.action_names))
        assert features.shape == (n, cfg.expert_dim)
        assert np.abs(prefix_kv - ref_kv).max() < TOL
        assert np.abs(chunks - ref_chunks).max() < TOL, f"N={n}"
        assert np.abs(features - ref_features).max() < TOL, f"N={n}"
        # The outputs depend on the noise: parity on a constant output would prove nothing.
        assert np.abs(chunks - noise).max() > 1e-3


def test_candidates_are_independent_of_batch_size(flow):
    """Candidate i gets the same chunk whether sampled alone or among 16 (the prefix is shared, not mixed)."""
    engine = Engine(flow.bundle)
    feeds = engine.policy.preprocess(__import__("policies").make_example_observation(engine.manifest))
    prefix = engine.policy.encode(feeds)
    noise = engine.policy.noise(16, seed=3)
    chunks, _ = engine.policy.sample(prefix, noise)
    alone, _ = engine.policy.sample(prefix, noise[5:6])
    np.testing.assert_allclose(alone[0], chunks[5], atol=1e-5)


@pytest.mark.parametrize("feature", ["mean_tokens", "first_token"])
def test_exported_feature_is_the_configured_readout(tmp_path, feature):
    """The ONNX `features` are the expert's final-step tokens, averaged or the first, as the manifest says."""
    from dataclasses import replace

    from policies.config import make_config
    from policies.export import export_bundle
    from policies.manifest import FEATURES
    from policies.models import build_policy
    from tiny_bundles import nontrivial_normalization

    cfg = make_config("tiny", "flow", feature=feature)
    policy = build_policy(cfg)
    bundle = export_bundle(policy, tmp_path / feature, normalization=nontrivial_normalization(cfg, 0))
    assert bundle.manifest.feature_description == FEATURES[feature]
    engine = Engine(bundle)
    images, state, tokens, noise = example_inputs(cfg, n=5, seed=1)
    feeds = {f"image_{c.name}": img.numpy() for c, img in zip(cfg.cameras, images)}
    feeds.update(state=state.numpy(), tokens=tokens.numpy())
    _, features = engine.policy.sample(engine.policy.encode(feeds), noise.numpy())
    captured = []
    hook = policy.expert.norm.register_forward_hook(lambda mod, inputs, out: captured.append(out))
    torch_reference(policy, feeds, engine.manifest.camera_names, noise.numpy())
    hook.remove()
    last = captured[-1].numpy()  # [N, H, D] at the final denoising step
    expected = last.mean(1) if feature == "mean_tokens" else last[:, 0]
    np.testing.assert_allclose(features, expected, atol=TOL)
    # The two readouts differ, so the test tells them apart.
    other = last[:, 0] if feature == "mean_tokens" else last.mean(1)
    assert np.abs(features - other).max() > 1e-2
    with pytest.raises(ValueError, match="feature"):
        replace(cfg, feature="last_token")
