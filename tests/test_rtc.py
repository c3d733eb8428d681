"""Real-time chunking: weights as LeRobot makes them, guidance in the exported samplers, selection by continuity."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from policies import make_example_observation
from policies.errors import BundleError, ObservationError
from policies.guidance import Guidance, delay_steps, guidance_from, prefix_weights
from runtime import BatchItem, Engine, EngineConfig

KINDS = [("flow", "unrolled"), ("flow", "stepped"), ("diffusion", "unrolled"), ("diffusion", "stepped")]


@pytest.mark.workstation
@pytest.mark.parametrize("schedule", ["ZEROS", "ONES", "LINEAR", "EXP"])
def test_prefix_weights_are_lerobots(schedule):
    from lerobot.configs import RTCAttentionSchedule
    from lerobot.policies.rtc.configuration_rtc import RTCConfig
    from lerobot.policies.rtc.modeling_rtc import RTCProcessor

    lerobot = RTCProcessor(RTCConfig(prefix_attention_schedule=RTCAttentionSchedule[schedule]))
    for length in (1, 8, 16, 50):
        for delay in range(0, length + 3, 3):
            for horizon in range(0, length + 4, 2):
                ours = prefix_weights(delay, horizon, length, schedule.lower())
                theirs = lerobot.get_prefix_weights(delay, horizon, length).numpy()
                assert ours.shape == theirs.shape == (length,), (delay, horizon, length)
                np.testing.assert_allclose(ours, theirs, atol=1e-6, err_msg=f"{delay} {horizon} {length}")


def test_prefix_weights_hold_the_delay_and_ramp_to_the_horizon():
    w = prefix_weights(3, 10, 16)
    assert (w[:3] == 1).all() and (w[10:] == 0).all() and (np.diff(w[2:11]) < 0).all()
    with pytest.raises(ValueError, match="schedule"):
        prefix_weights(1, 2, 4, "cosine")
    assert delay_steps(0.2, 0.02) == 10 and delay_steps(0.21, 0.02) == 11 and delay_steps(0.0, 0.02) == 0


def test_guidance_reindexes_the_executing_chunk_to_the_new_observations_time():
    chunk = np.arange(16 * 2, dtype=np.float32).reshape(16, 2)
    times = 1.0 + 0.02 * np.arange(16)
    g = guidance_from(chunk, times, 1.0 + 0.02 * 5, 0.02, delay=2, horizon=8)
    np.testing.assert_array_equal(g.target, chunk[5:])  # the action for the stamp first
    assert g.weights.shape == (16,) and g.delay == 2 and (g.weights[8:] == 0).all()
    short = guidance_from(chunk, times, 1.0 + 0.02 * 12, 0.02, delay=2, horizon=8)
    assert len(short.target) == 4 and (short.weights[4:] == 0).all()  # horizon cut to what is left
    # Fewer actions left than the delay: the robot holds the last one until the new chunk arrives.
    dry = guidance_from(chunk, times, 1.0 + 0.02 * 14, 0.02, delay=5, horizon=8)
    np.testing.assert_array_equal(dry.target, chunk[[14, 15, 15, 15, 15]])
    np.testing.assert_array_equal(dry.weights, prefix_weights(5, 5, 16))
    held = guidance_from(chunk, times, 2.0, 0.02, delay=2, horizon=8)  # ran dry: the robot holds the last
    np.testing.assert_array_equal(held.target, chunk[[15, 15]])
    assert guidance_from(chunk, times, 2.0, 0.02, delay=0, horizon=8) is None


@pytest.mark.workstation
@pytest.mark.parametrize("kind,sampler", KINDS)
def test_zero_weights_are_the_sampler_without_rtc_bit_for_bit(exported, kind, sampler, tmp_path):
    from policies.export import export_bundle

    policy = exported(kind, sampler).policy
    guided_bundle = exported(kind, sampler).bundle
    plain_bundle = export_bundle(policy, tmp_path / "plain", normalization=exported(kind, sampler).normalization,
                                 sampler=sampler, rtc=False)
    assert guided_bundle.manifest.rtc and not plain_bundle.manifest.rtc
    assert "rtc" not in plain_bundle.manifest.to_dict()  # bundles made before RTC keep their fingerprints
    guided, plain = Engine(guided_bundle), Engine(plain_bundle)
    obs = make_example_observation(guided.manifest, seed=2)
    for n, seed in ((1, 0), (5, 3)):
        np.testing.assert_array_equal(guided.infer(obs, n=n, seed=seed).chunk, plain.infer(obs, n=n, seed=seed).chunk)
    executing = guided.infer(make_example_observation(guided.manifest, seed=9), n=1, seed=1)
    zero = Guidance(executing.chunk, np.zeros(guided.manifest.chunk_length, np.float32), delay=0)
    np.testing.assert_array_equal(guided.infer(obs, n=5, seed=3, guidance=zero).chunk,
                                  plain.infer(obs, n=5, seed=3).chunk)
    with pytest.raises(BundleError, match="rtc"):
        plain.infer(obs, n=1, seed=0, guidance=zero)


@pytest.mark.workstation
@pytest.mark.parametrize("kind,sampler", KINDS)
def test_guided_sampler_matches_the_torch_policy_and_holds_the_executing_prefix(exported, kind, sampler):
    import torch

    bundle_info = exported(kind, sampler)
    engine = Engine(bundle_info.bundle, config=EngineConfig(return_candidates=True))
    m = engine.manifest
    obs = make_example_observation(m, seed=4)
    executing = engine.infer(make_example_observation(m, seed=5), n=1, seed=7)
    g = guidance_from(executing.chunk, executing.times, obs.stamp, m.action_dt, delay=3, horizon=6)
    guided = engine.infer(obs, n=4, seed=11, guidance=g)
    plain = engine.infer(obs, n=4, seed=11)
    # The torch policy with the same guidance.
    feeds = engine.policy.preprocess(obs)
    names = [f"image_{c.name}" for c in m.cameras]
    with torch.no_grad():
        prefix = bundle_info.policy.encode([torch.from_numpy(feeds[k]) for k in names],
                                           torch.from_numpy(feeds["state"]), torch.from_numpy(feeds["tokens"]))
        rtc = engine.policy.rtc_feeds(g)
        chunks, _ = bundle_info.policy.sample(*prefix, torch.from_numpy(engine.policy.noise(4, 11)),
                                              tuple(torch.from_numpy(rtc[k]) for k in
                                                    ("rtc_target", "rtc_weights", "rtc_max_weight")))
    np.testing.assert_allclose(guided.candidates, engine.policy.unnormalize(chunks.numpy()), atol=2e-4)
    frozen = np.abs(guided.candidates[:, :3] - g.target[:3]).mean()
    assert frozen < 0.5 * np.abs(plain.candidates[:, :3] - g.target[:3]).mean()
    assert guided.delay == 3 and guided.continuity.shape == (4,) and plain.continuity is None
    assert np.isfinite(guided.continuity).all() and (guided.continuity <= 0).all()


def test_continuity_selection_picks_the_candidate_closest_to_the_executing_chunk(exported, tmp_path):
    bundle = exported("flow").bundle
    obs = make_example_observation(bundle.manifest, seed=4)
    plain = Engine(bundle, config=EngineConfig(return_candidates=True))
    executing = plain.infer(make_example_observation(bundle.manifest, seed=5), n=1, seed=7)
    g = guidance_from(executing.chunk, executing.times, obs.stamp, bundle.manifest.action_dt, delay=2, horizon=6)
    weak = dataclasses.replace(g, max_weight=0.0)  # no pull: the candidates differ in continuity
    # A seed whose most coherent candidate is not the first, so choosing it shows.
    seed = next(s for s in range(20) if np.argmax(plain.infer(obs, n=8, seed=s, guidance=weak).continuity) != 0)
    off = plain.infer(obs, n=8, seed=seed, guidance=weak)
    on = Engine(bundle, config=EngineConfig(continuity=1.0)).infer(obs, n=8, seed=seed, guidance=weak)
    assert off.index == 0  # no verifier: the first valid candidate
    assert on.index == int(np.argmax(off.continuity)) != 0
    np.testing.assert_allclose(on.continuity, off.continuity)
    # By hand: minus the weighted mean Euclidean distance over the positions the target covers.
    k = len(g.target)
    distance = np.linalg.norm(off.candidates[:, :k] - g.target, axis=-1)
    np.testing.assert_allclose(off.continuity, -(distance * g.weights[:k]).sum(1) / g.weights[:k].sum(), rtol=1e-5)


def test_a_batch_with_guidance_gives_each_robot_its_guided_decision(exported):
    engine = Engine(exported("diffusion").bundle)
    m = engine.manifest
    observations = [make_example_observation(m, seed=s) for s in range(3)]
    executing = engine.infer(make_example_observation(m, seed=8), n=1, seed=1)
    g = guidance_from(executing.chunk, executing.times, observations[0].stamp, m.action_dt, delay=2, horizon=5)
    guidances = [g, None, dataclasses.replace(g, weights=prefix_weights(4, 7, m.chunk_length))]
    solo = [engine.infer(o, n=3, seed=s, guidance=gd) for s, (o, gd) in enumerate(zip(observations, guidances))]
    batch = engine.infer_batch([BatchItem(o, 3, s, guidance=gd)
                                for s, (o, gd) in enumerate(zip(observations, guidances))])
    for a, b in zip(solo, batch):
        np.testing.assert_allclose(b.chunk, a.chunk, atol=1e-5)
        assert b.delay == a.delay


def test_bad_guidance_is_refused_by_name(exported):
    engine = Engine(exported("flow").bundle)
    m = engine.manifest
    obs = make_example_observation(m, seed=1)
    good = Guidance(np.zeros((4, m.action_dim), np.float32), prefix_weights(1, 4, m.chunk_length), delay=1)
    for bad, field in ((dataclasses.replace(good, target=np.full((4, m.action_dim), np.nan, np.float32)), "target"),
                       (dataclasses.replace(good, target=np.zeros((4, 3), np.float32)), "target"),
                       (dataclasses.replace(good, weights=np.full(m.chunk_length, 2.0, np.float32)), "weights"),
                       (dataclasses.replace(good, weights=np.ones(3, np.float32)), "weights"),
                       (dataclasses.replace(good, max_weight=float("inf")), "max_weight")):
        with pytest.raises(ObservationError) as err:
            engine.infer(obs, n=2, seed=0, guidance=bad)
        assert err.value.field == f"guidance.{field}"
