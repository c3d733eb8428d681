"""Engine behaviour: determinism, N=1 equals the policy's sample, verifier-driven selection, timings."""

import numpy as np
import pytest
import torch

from policies import SpecError, make_example_observation
from runtime import Engine, EngineConfig
from runtime.select import finite_candidates, select
from verifiers import write_verifier_bundle
from verifiers.synthetic import linear_verifier_onnx


@pytest.fixture(scope="module")
def observation(exported):
    return make_example_observation(exported("flow").bundle.manifest, seed=4, image_size=(64, 64))


def linear_verifier(tmp_path, bundle, weights, name="linear"):
    path = linear_verifier_onnx(tmp_path / f"{name}.onnx", weights)
    return write_verifier_bundle(path, tmp_path / name, policy_fingerprint=bundle.fingerprint,
                                 feature_dim=bundle.manifest.feature_dim)


def test_same_seed_same_decision_and_different_seed_differs(flow, observation):
    a, b = Engine(flow.bundle), Engine(flow.bundle)
    d1, d2 = a.infer(observation, n=8, seed=11), b.infer(observation, n=8, seed=11)
    np.testing.assert_array_equal(d1.chunk, d2.chunk)
    assert d1.index == d2.index
    d3 = a.infer(observation, n=8, seed=12)
    assert np.abs(d3.chunk - d1.chunk).max() > 1e-4


def test_unseeded_calls_draw_fresh_noise_and_report_the_seed(flow, observation):
    engine = Engine(flow.bundle)
    d1, d2 = engine.infer(observation, n=1), engine.infer(observation, n=1)
    assert d1.seed != d2.seed
    np.testing.assert_array_equal(engine.infer(observation, n=1, seed=d1.seed).chunk, d1.chunk)


@pytest.mark.parametrize("kind", ["flow", "diffusion"])
def test_n1_without_verifier_returns_the_policys_sample_in_robot_units(exported, observation, kind):
    ex = exported(kind)
    engine = Engine(ex.bundle)
    decision = engine.infer(observation, n=1, seed=5)
    assert decision.index == 0 and decision.scores is None and decision.verifier is None
    feeds = engine.preprocess(observation)
    with torch.no_grad():
        kv, bias = ex.policy.encode([torch.from_numpy(feeds["image_cam_high"])], torch.from_numpy(feeds["state"]),
                                    torch.from_numpy(feeds["tokens"]))
        chunk, _ = ex.policy.sample(kv, bias, torch.from_numpy(engine.noise(1, 5)))
    norm = ex.normalization
    expected = chunk[0].numpy() * np.array(norm.action_std, np.float32) + np.array(norm.action_mean, np.float32)
    np.testing.assert_allclose(decision.chunk, expected, atol=1e-4)


def test_verifier_picks_the_highest_scoring_candidate(flow, observation, tmp_path):
    weights = np.random.default_rng(0).standard_normal(flow.bundle.manifest.feature_dim)
    verifier = linear_verifier(tmp_path, flow.bundle, weights)
    engine = Engine(flow.bundle, verifier=verifier.path, config=EngineConfig(return_candidates=True))
    decision = engine.infer(observation, n=16, seed=3)
    expected_scores = decision.features @ weights
    np.testing.assert_allclose(decision.scores, expected_scores, rtol=1e-4, atol=1e-4)
    assert decision.index == int(np.argmax(expected_scores))
    assert decision.index != 0 or np.argmax(expected_scores) == 0
    np.testing.assert_array_equal(decision.chunk, decision.candidates[decision.index])
    assert decision.verifier == "linear" and decision.candidates.shape == (16, *decision.chunk.shape)
    # Negated weights choose the opposite end.
    engine.set_verifier(linear_verifier(tmp_path, flow.bundle, -weights, name="negated").path)
    assert engine.infer(observation, n=16, seed=3).index == int(np.argmin(expected_scores))


def test_ties_go_to_the_lowest_index(flow, observation, tmp_path):
    verifier = linear_verifier(tmp_path, flow.bundle, np.zeros(flow.bundle.manifest.feature_dim))
    decision = Engine(flow.bundle, verifier=verifier.path).infer(observation, n=9, seed=1)
    assert (decision.scores == 0).all() and decision.index == 0


def test_select_skips_non_finite_candidates_and_scores():
    chunks = np.zeros((4, 2, 3), np.float32)
    chunks[1, 0, 2] = np.nan
    scores = np.array([0.0, 9.0, np.nan, 1.0], np.float32)
    assert select(scores, finite_candidates(chunks)) == 3
    assert select(None, finite_candidates(chunks)) == 0
    chunks[:] = np.inf
    with pytest.raises(SpecError, match="non-finite"):
        select(scores, finite_candidates(chunks))


def test_timings_and_action_times(flow, observation):
    observation.stamp = 12.5
    decision = Engine(flow.bundle).infer(observation, n=4, seed=0)
    assert set(decision.timings) == {"preprocess", "encode", "sample", "score", "select", "total"}
    assert all(v >= 0 for v in decision.timings.values())
    assert decision.timings["total"] >= decision.timings["encode"] + decision.timings["sample"]
    dt = flow.bundle.manifest.action_dt
    np.testing.assert_allclose(decision.times, 12.5 + dt * np.arange(flow.bundle.manifest.chunk_length))
    assert decision.policy_fingerprint == flow.bundle.fingerprint


def test_unrolled_and_stepped_bundles_give_the_same_decision(exported, observation):
    unrolled, stepped = exported("diffusion", "unrolled"), exported("diffusion", "stepped")
    a = Engine(unrolled.bundle).infer(observation, n=5, seed=2)
    b = Engine(stepped.bundle).infer(observation, n=5, seed=2)
    np.testing.assert_allclose(a.chunk, b.chunk, atol=1e-5)
