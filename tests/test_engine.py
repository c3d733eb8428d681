"""Engine behaviour: determinism, N=1 equals the policy's sample, verifier-driven selection, timings."""

import dataclasses
import time

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from policies import ObservationError, SpecError, make_example_observation
from runtime import BatchItem, Engine, EngineConfig
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


@pytest.mark.workstation
@pytest.mark.parametrize("kind", ["flow", "diffusion"])
def test_n1_without_verifier_returns_the_policys_sample_in_robot_units(exported, observation, kind):
    import torch

    ex = exported(kind)
    engine = Engine(ex.bundle)
    decision = engine.infer(observation, n=1, seed=5)
    assert decision.index == 0 and decision.scores is None and decision.verifier is None
    feeds = engine.policy.preprocess(observation)
    with torch.no_grad():
        kv, bias = ex.policy.encode([torch.from_numpy(feeds["image_cam_high"])], torch.from_numpy(feeds["state"]),
                                    torch.from_numpy(feeds["tokens"]))
        chunk, _ = ex.policy.sample(kv, bias, torch.from_numpy(engine.policy.noise(1, 5)))
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
    np.testing.assert_array_equal(decision.chunk, decision.candidates[decision.index])
    assert decision.verifier == "linear" and decision.candidates.shape == (16, *decision.chunk.shape)
    # Negated weights choose the opposite end.
    engine.set_verifier(linear_verifier(tmp_path, flow.bundle, -weights, name="negated").path)
    assert engine.infer(observation, n=16, seed=3).index == int(np.argmin(expected_scores))


class FixedScores:
    """A Python plugin verifier returning given scores, whatever the features."""

    feature_dim = None
    policy_fingerprint = None

    def __init__(self, scores, name="fixed"):
        self.scores, self.name = np.asarray(scores), name

    def score(self, features):
        return self.scores


def test_ties_go_to_the_lowest_index(flow, observation):
    scores = [0.0, 1.0, 2.0, 5.0, 1.0, 5.0, 0.0, 4.0, -1.0]
    decision = Engine(flow.bundle, verifier=FixedScores(scores)).infer(observation, n=9, seed=1)
    assert decision.index == 3 and decision.verifier == "fixed"


@pytest.mark.parametrize("scores", [np.zeros((4, 1)), np.float32(1.0), np.zeros(3), np.array(["a"] * 4)])
def test_a_verifier_returning_the_wrong_shape_is_an_error_naming_it(flow, observation, scores):
    engine = Engine(flow.bundle, verifier=FixedScores(scores, name="plugin"))
    with pytest.raises(SpecError) as info:
        engine.infer(observation, n=4, seed=0)
    assert info.value.field == "verifier 'plugin'.scores"


def test_nan_scores_are_never_chosen(flow, observation):
    decision = Engine(flow.bundle, verifier=FixedScores([np.nan, 1.0, np.inf * 0, 0.5])).infer(observation, 4, seed=0)
    assert decision.index == 1
    with pytest.raises(SpecError, match="non-finite"):
        Engine(flow.bundle, verifier=FixedScores([np.nan] * 4)).infer(observation, 4, seed=0)


class ChunkSpread:
    """A Python plugin verifier that asks for the chunks and keeps what it was given."""

    feature_dim = None
    policy_fingerprint = None
    takes_chunks = True
    name = "spread"

    def score(self, features, chunks):
        self.features, self.chunks = features, chunks
        return -np.abs(chunks - chunks.mean(0)).sum(axis=(1, 2))


class SeedEcho:
    """A Python plugin verifier that asks for the decision's seed and prefers slot seed % N."""

    feature_dim = None
    policy_fingerprint = None
    takes_seed = True
    name = "seed-echo"

    def score(self, features, seed):
        self.seed = seed
        return -np.abs(np.arange(len(features)) - seed % len(features)).astype(np.float32)


def test_a_verifier_that_takes_the_seed_gets_the_decisions_seed(flow, observation):
    verifier = SeedEcho()
    engine = Engine(flow.bundle, verifier=verifier)
    for seed in (5, 2**62 + 3):
        decision = engine.infer(observation, n=4, seed=seed)
        assert verifier.seed == seed == decision.seed and decision.index == seed % 4


def test_a_verifier_sees_only_the_finite_candidates(flow, observation, monkeypatch):
    verifier = ChunkSpread()
    engine = Engine(flow.bundle, verifier=verifier, config=EngineConfig(return_candidates=True))
    sample = engine.policy.sample

    def one_nan_candidate(prefix, noise, step_noise=None, rtc=None, velocities=False):
        chunks, features = sample(prefix, noise, step_noise, rtc, velocities)
        chunks = chunks.copy()
        chunks[2, 3, 1] = np.nan
        return chunks, features

    monkeypatch.setattr(engine.policy, "sample", one_nan_candidate)
    decision = engine.infer(observation, n=6, seed=0)
    # The NaN candidate would have made every comparison with the candidates' mean NaN.
    assert verifier.chunks.shape[0] == verifier.features.shape[0] == 5 and np.isfinite(verifier.chunks).all()
    assert np.isnan(decision.scores[2]) and np.isfinite(np.delete(decision.scores, 2)).all()
    assert decision.index != 2 and decision.index == int(np.nanargmax(decision.scores))
    m = flow.bundle.manifest.normalization
    expected = (np.delete(decision.candidates, 2, axis=0) - np.asarray(m.action_mean)) / np.asarray(m.action_std)
    np.testing.assert_allclose(verifier.chunks, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("seed", [-1, 1.5, "7", 2**64])
def test_bad_seed_is_an_error_naming_it(flow, observation, seed):
    with pytest.raises(SpecError) as info:
        Engine(flow.bundle).infer(observation, n=1, seed=seed)
    assert info.value.field == "seed"


def test_verifier_swaps_racing_inference_never_mix_verifiers(flow, observation):
    """Each decision's scores come wholly from the verifier it names, while another thread swaps."""
    import threading

    plus, minus = FixedScores(np.arange(6.0), "plus"), FixedScores(-np.arange(6.0), "minus")
    engine = Engine(flow.bundle, verifier=plus)
    stop = threading.Event()

    def swap():
        while not stop.is_set():
            engine.set_verifier(plus)
            time.sleep(0.0002)  # yield the GIL so that inference makes progress
            engine.set_verifier(minus)
            time.sleep(0.0002)

    thread = threading.Thread(target=swap)
    thread.start()
    try:
        seen = set()
        for i in range(60):
            d = engine.infer(observation, n=6, seed=i)
            expected = {"plus": (np.arange(6.0), 5), "minus": (-np.arange(6.0), 0)}[d.verifier]
            np.testing.assert_array_equal(d.scores, expected[0])
            assert d.index == expected[1]
            seen.add(d.verifier)
    finally:
        stop.set()
        thread.join()
    assert seen == {"plus", "minus"}


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
    observation = dataclasses.replace(observation, stamp=12.5)
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


@given(scores=arrays(np.float32, st.integers(1, 40), elements=st.floats(width=32, allow_nan=True, allow_infinity=True)),
       data=st.data())
def test_select_property_returns_the_first_best_finite_candidate(scores, data):
    valid = data.draw(arrays(bool, scores.shape))
    chunks = np.zeros((scores.size, 2, 2), np.float32)
    chunks[~valid] = np.nan
    ok = valid & np.isfinite(scores)
    if not ok.any():
        with pytest.raises(SpecError):
            select(scores, finite_candidates(chunks))
        return
    index = select(scores, finite_candidates(chunks))
    assert ok[index]
    assert scores[index] == scores[ok].max()
    assert not (ok[:index] & (scores[:index] == scores[index])).any()


def _counting_sample_calls(engine):
    calls = []
    sample = engine.policy.sample

    def counted(prefix, noise, step_noise=None, rtc=None, velocities=False):
        calls.append({k: v.shape[0] for k, v in prefix.items()})
        return sample(prefix, noise, step_noise, rtc, velocities)

    engine.policy.sample = counted
    return calls


@pytest.mark.parametrize("kind,sampler", [("flow", "unrolled"), ("flow", "stepped"), ("diffusion", "unrolled"),
                                          ("diffusion", "stepped")])
def test_a_batch_of_observations_is_one_sampler_call_and_each_gets_its_solo_decision(exported, kind, sampler,
                                                                                   tmp_path):
    bundle = exported(kind, sampler).bundle
    verifier = linear_verifier(tmp_path, bundle, np.linspace(-1, 1, bundle.manifest.feature_dim))
    engine = Engine(bundle, verifier=verifier, config=EngineConfig(return_candidates=True))
    assert engine.policy.per_candidate_prefix
    observations = [make_example_observation(bundle.manifest, seed=s, image_size=(48, 64)) for s in range(3)]
    ns, seeds = [2, 5, 3], [7, 8, 2**62]
    solo = [engine.infer(o, n=n, seed=s) for o, n, s in zip(observations, ns, seeds)]
    calls = _counting_sample_calls(engine)
    batch = engine.infer_batch([BatchItem(o, n, s) for o, n, s in zip(observations, ns, seeds)])
    assert calls == [{"prefix_kv": 10, "prefix_bias": 10}]  # one call, each candidate with its own prefix
    for a, b in zip(solo, batch):
        assert (b.n, b.seed, b.index, b.verifier) == (a.n, a.seed, a.index, a.verifier)
        np.testing.assert_allclose(b.candidates, a.candidates, atol=1e-5)
        np.testing.assert_allclose(b.scores, a.scores, atol=1e-5)
        np.testing.assert_allclose(b.times, a.times)
        assert set(b.timings) == set(a.timings)
    # The observations differ, so their candidates must too (a batch that used one prefix would not).
    assert np.abs(batch[0].candidates[0] - batch[2].candidates[0]).max() > 1e-3


def test_a_bad_observation_in_a_batch_is_returned_in_its_place(flow, observation):
    engine = Engine(flow.bundle)
    bad = dataclasses.replace(observation, state=np.full(observation.state.shape, np.nan, np.float32))
    results = engine.infer_batch([BatchItem(observation, 2, 1), BatchItem(bad, 2, 2), BatchItem(observation, 0, 3),
                                  BatchItem(observation, 2, 4)])
    assert isinstance(results[1], ObservationError) and results[1].field.startswith("state")
    assert isinstance(results[2], ObservationError) and results[2].field == "n"
    np.testing.assert_array_equal(results[0].chunk, engine.infer(observation, n=2, seed=1).chunk)
    np.testing.assert_array_equal(results[3].chunk, engine.infer(observation, n=2, seed=4).chunk)
    assert engine.infer_batch([BatchItem(bad, 2, 2)])[0].field.startswith("state")


def test_a_bundle_with_a_shared_prefix_only_batches_its_encoder_call():
    """Bundles exported before per-candidate prefixes (the shipped flow policy) take a prefix of batch 1:
    the batch shares the encoder call and samples each observation on its own."""
    from policies.shipped import resolve_policy

    engine = Engine(resolve_policy("flow"))
    assert not engine.policy.per_candidate_prefix
    observations = [make_example_observation(engine.manifest, seed=s) for s in range(3)]
    solo = [engine.infer(o, n=4, seed=s).chunk for s, o in enumerate(observations)]
    calls = _counting_sample_calls(engine)
    batch = engine.infer_batch([BatchItem(o, 4, s) for s, o in enumerate(observations)])
    assert calls == [{"prefix_kv": 1, "prefix_bias": 1}] * 3
    for a, b in zip(solo, batch):
        np.testing.assert_allclose(b.chunk, a, atol=1e-5)


def test_a_history_keeps_observations_in_time_order_whoever_pushes_them_last():
    """The control thread observes t=2 while the worker still pushes the t=1 it infers on: the history stays
    t=0, 1, 2 and an inference on t=1 encodes t=0, 1, not 2 (it used to append t=1 after t=2)."""
    from policies.observation import Observation
    from policies.sampler import History

    history = History(3, lambda o: {"state": np.asarray(o.state, np.float32)[None]})

    def obs(t):
        return Observation(images={}, state=np.array([t], np.float32), task="", stamp=float(t))

    for t in (0, 2, 1):
        history.push(obs(t))
    np.testing.assert_array_equal(history.feeds()["state"][0, :, 0], [0, 1, 2])
    np.testing.assert_array_equal(history.feeds(until=1.0)["state"][0, :, 0], [0, 0, 1])
    history.push(obs(3))
    history.push(obs(0.5))  # older than all kept of a full history: not kept
    np.testing.assert_array_equal(history.feeds()["state"][0, :, 0], [1, 2, 3])
    with pytest.raises(ObservationError, match="older than every observation"):
        history.feeds(until=0.5)
    single = History(1, lambda o: {"state": np.asarray(o.state, np.float32)[None]})
    single.push(obs(5))
    single.push(obs(4))  # one step: the observation pushed is the one encoded, whatever its stamp
    assert single.feeds(until=4.0)["state"][0, 0] == 4
