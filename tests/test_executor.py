"""The chunk executor hands out the action for each observation's time, replans every k actions, and
drops actions whose time has passed instead of executing them."""

import dataclasses

import numpy as np
import pytest

from policies import make_example_observation
from runtime import Engine
from runtime.executor import ChunkExecutor, ExecutorConfig


@pytest.fixture(scope="module")
def engine(exported):
    return Engine(exported("flow").bundle)


def at(obs, stamp):
    return dataclasses.replace(obs, stamp=stamp)


def test_replans_every_k_actions_and_follows_the_chunk(engine):
    obs = make_example_observation(engine.manifest)
    dt, k = engine.manifest.action_dt, 3
    ex = ChunkExecutor(engine, ExecutorConfig(n=2, execute=k))
    ex.reset(seed=4)
    actions = [ex.act(at(obs, i * dt)) for i in range(7)]
    assert len(ex.decisions) == 3  # steps 0, 3, 6
    for i, action in enumerate(actions):
        decision = ex.decisions[i // k]
        np.testing.assert_array_equal(action, decision.chunk[i % k])
        assert decision.times[i % k] == pytest.approx(i * dt)
    assert ex.dropped == 0 and ex.latencies_ms == [d.timings["total"] for d in ex.decisions]


def test_same_episode_seed_same_actions(engine):
    obs = make_example_observation(engine.manifest)
    dt = engine.manifest.action_dt
    runs = []
    for _ in range(2):
        ex = ChunkExecutor(engine, ExecutorConfig(n=3, execute=2))
        ex.reset(seed=9)
        runs.append(np.array([ex.act(at(obs, i * dt)) for i in range(5)]))
    np.testing.assert_array_equal(runs[0], runs[1])


def test_noise_streams_are_other_draws_and_stream_zero_is_the_default(engine):
    obs = make_example_observation(engine.manifest)
    dt = engine.manifest.action_dt

    def run(n, stream):
        ex = ChunkExecutor(engine, ExecutorConfig(n=n, execute=2, noise_stream=stream))
        ex.reset(seed=9)
        actions = np.array([ex.act(at(obs, i * dt)) for i in range(5)])
        return actions, [d.seed for d in ex.decisions]

    default, seeds = run(1, 0)
    # Stream 0 keeps the seeds results were recorded with: SeedSequence([episode seed, decision index]).
    assert seeds[0] == int(np.random.SeedSequence([9, 0]).generate_state(1, np.uint64)[0] >> 1)
    other, other_seeds = run(1, 1)
    assert set(seeds).isdisjoint(other_seeds) and not np.array_equal(default, other)
    np.testing.assert_array_equal(run(1, 1)[0], other)
    # The stream's N=1 action is its seed's chunk, and that noise is candidate 0 of any N on the same
    # seed (what pairs the arms of a comparison episode for episode).
    single = engine.infer(at(obs, 0.0), n=1, seed=other_seeds[0])
    np.testing.assert_array_equal(single.chunk[0], other[0])
    np.testing.assert_array_equal(engine.policy.noise(4, other_seeds[0])[0], engine.policy.noise(1, other_seeds[0])[0])
    with pytest.raises(ValueError, match="noise_stream"):
        ExecutorConfig(noise_stream=-1)


def test_stale_actions_are_dropped_not_executed(engine):
    obs = make_example_observation(engine.manifest)
    dt = engine.manifest.action_dt
    ex = ChunkExecutor(engine, ExecutorConfig(execute=engine.manifest.chunk_length))
    ex.reset(seed=0)
    ex.act(at(obs, 0.0))
    chunk = ex.decisions[0].chunk
    # The robot comes back three periods later: actions 1 and 2 are for times that have passed.
    action = ex.act(at(obs, 3 * dt))
    np.testing.assert_array_equal(action, chunk[3])
    assert ex.dropped == 2 and len(ex.decisions) == 1
    # Far past the chunk's end: everything left is stale, so it replans from the new observation.
    ex.act(at(obs, 100 * dt))
    assert len(ex.decisions) == 2 and ex.decisions[1].times[0] == pytest.approx(100 * dt)


def test_replans_when_the_chunk_runs_dry_and_rejects_k_beyond_it(engine):
    obs = make_example_observation(engine.manifest)
    h, dt = engine.manifest.chunk_length, engine.manifest.action_dt
    ex = ChunkExecutor(engine, ExecutorConfig(execute=h))
    ex.reset(seed=0)
    for i in range(h + 1):
        ex.act(at(obs, i * dt))
    assert len(ex.decisions) == 2
    with pytest.raises(ValueError, match="chunk length"):
        ChunkExecutor(engine, ExecutorConfig(execute=h + 1))
