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
    assert seeds[0] == int(np.random.SeedSequence([9, 0]).generate_state(1, np.uint64)[0]) >> 1
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


# --- asynchronous execution ---------------------------------------------------------------------------

def _run_async(engine, obs, steps, delay_ms, rtc=True, execute=4, seed=3, n=2):
    from runtime.executor import AsyncChunkExecutor, AsyncConfig

    ex = AsyncChunkExecutor(engine, ExecutorConfig(n=n, execute=execute), AsyncConfig(delay_ms=delay_ms, rtc=rtc))
    ex.reset(seed=seed)
    dt = engine.manifest.action_dt
    return ex, np.array([ex.act(at(obs, round(i * dt, 9))) for i in range(steps)])


def test_async_with_no_delay_is_the_synchronous_executor(engine):
    obs = make_example_observation(engine.manifest)
    sync = ChunkExecutor(engine, ExecutorConfig(n=2, execute=4))
    sync.reset(seed=3)
    expected = np.array([sync.act(at(obs, round(i * engine.manifest.action_dt, 9))) for i in range(13)])
    ex, actions = _run_async(engine, obs, 13, 0.0, rtc=False)
    np.testing.assert_array_equal(actions, expected)
    assert ex.held == 0 and ex.dropped == 0 and len(ex.decisions) == len(sync.decisions) == 4
    assert ex.motion.switch_jumps == sync.motion.switch_jumps and len(ex.motion.switch_jumps) == 3


def test_async_keeps_executing_while_a_chunk_is_computed_and_switches_at_its_first_unexecuted_action(engine):
    """delay 3 steps, execute 4: the first chunk arrives at step 3 (the robot holds its own pose before),
    its actions for steps 0-2 are dropped; the next inference starts once execute - d = 1 of its actions
    ran (step 4), and arrives at step 7, used from its action for step 7: 4 actions of each chunk run."""
    m = engine.manifest
    dt = m.action_dt
    obs = make_example_observation(m)
    ex, actions = _run_async(engine, obs, 12, 3 * dt * 1e3, rtc=False)
    np.testing.assert_array_equal(actions[:3], np.repeat(obs.state[None].astype(np.float64), 3, axis=0))
    assert ex.held == 3
    first, second, third = ex.decisions[:3]
    np.testing.assert_array_equal(actions[3:7], first.chunk[3:7])
    assert second.times[0] == pytest.approx(4 * dt) and third.times[0] == pytest.approx(8 * dt)
    np.testing.assert_array_equal(actions[7:11], second.chunk[3:7])
    np.testing.assert_array_equal(actions[11], third.chunk[3])
    assert ex.dropped == 9 and len(ex.motion.switch_jumps) == 3


def _deviation_at_switches(ex, dt):
    """Per switch: how far the new chunk's first action used is from what the executing chunk had for that
    time (what RTC holds; an untrained policy's chunks are too jagged for the jump itself to show it)."""
    out = []
    for prev, new in zip(ex.decisions[1:-1], ex.decisions[2:]):
        d = new.delay
        j = int(round((new.times[0] - prev.times[0]) / dt)) + d
        if j < len(prev.chunk):
            out.append(np.abs(new.chunk[d] - prev.chunk[j]).max())
    return np.asarray(out)


@pytest.mark.parametrize("kind", ["flow", "diffusion"])
def test_async_with_rtc_continues_the_executing_chunk_at_each_switch(exported, kind):
    engine = Engine(exported(kind).bundle)
    dt = engine.manifest.action_dt
    obs = make_example_observation(engine.manifest)
    plain, _ = _run_async(engine, obs, 40, 2 * dt * 1e3, rtc=False, seed=5, n=1)
    guided, _ = _run_async(engine, obs, 40, 2 * dt * 1e3, rtc=True, seed=5, n=1)
    assert all(d.delay == 2 for d in guided.decisions[1:]) and guided.decisions[0].delay == 0
    assert all(d.continuity is not None for d in guided.decisions[1:]) and plain.decisions[1].continuity is None
    assert len(_deviation_at_switches(guided, dt)) >= 5
    assert _deviation_at_switches(guided, dt).mean() < 0.25 * _deviation_at_switches(plain, dt).mean()


@pytest.mark.workstation
def test_async_refuses_rtc_on_a_bundle_without_it_and_bad_settings(exported, tmp_path):
    from policies.export import export_bundle
    from runtime.executor import AsyncChunkExecutor, AsyncConfig

    flow = exported("flow")
    old = export_bundle(flow.policy, tmp_path / "old", normalization=flow.normalization, rtc=False)
    with pytest.raises(ValueError, match="rtc"):
        AsyncChunkExecutor(Engine(old), ExecutorConfig(execute=4), AsyncConfig(delay_ms=20, rtc=True))
    AsyncChunkExecutor(Engine(old), ExecutorConfig(execute=4), AsyncConfig(delay_ms=20, rtc=False))
    for bad in ({"delay_ms": -1.0}, {"delay_ms": float("nan")}, {"schedule": "cosine"}, {"horizon": 0}):
        with pytest.raises(ValueError):
            AsyncConfig(**bad)


def test_the_rtc_horizon_ends_the_guidance_but_never_before_the_first_action_executed():
    from runtime.executor import AsyncConfig

    dt, length = 0.02, 16
    chunk = np.arange(length * 2, dtype=np.float32).reshape(length, 2)
    times = 1.0 + dt * np.arange(length)
    whole = AsyncConfig(delay_ms=60).guidance(chunk, times, 1.0 + 4 * dt, dt, 3, length)
    assert np.flatnonzero(whole.weights).max() == 11  # the 12 actions left, ramping from position 3
    short = AsyncConfig(delay_ms=60, horizon=6).guidance(chunk, times, 1.0 + 4 * dt, dt, 3, length)
    assert (short.weights[:3] == 1).all() and 0 < short.weights[5] < short.weights[3] < 1
    assert (short.weights[6:] == 0).all()
    np.testing.assert_array_equal(short.target, whole.target)
    # A horizon inside the delay would leave the new chunk's first executed action (position 3) free.
    floor = AsyncConfig(delay_ms=60, horizon=2).guidance(chunk, times, 1.0 + 4 * dt, dt, 3, length)
    assert (floor.weights[:3] == 1).all() and floor.weights[3] == 0.5 and (floor.weights[4:] == 0).all()
    assert AsyncConfig(delay_ms=60, rtc=False, horizon=6).guidance(chunk, times, 1.0, dt, 3, length) is None


def test_measured_delay_plans_for_a_high_percentile_of_recent_decisions():
    from runtime.executor import AsyncConfig, DelayEstimator

    est = DelayEstimator(AsyncConfig(delay_ms=None, percentile=95, window=5))
    assert est.seconds() == 0.0
    for s in (0.01, 0.02, 0.03, 0.04, 0.05, 0.30):
        est.add(s)
    assert est.seconds() == pytest.approx(np.percentile([0.02, 0.03, 0.04, 0.05, 0.30], 95))
    assert DelayEstimator(AsyncConfig(delay_ms=120)).seconds() == 0.12


def test_motion_measures_switch_jumps_on_arm_joints_and_jerk():
    from runtime.executor import Motion, arm_joints

    joints = arm_joints(["a_waist", "a_gripper", "b_waist"])
    np.testing.assert_array_equal(joints, [0, 2])
    motion = Motion(joints, dt=0.5)
    for i in range(3):
        motion.executed(np.array([i, 100.0 * i, 0.0]))  # the gripper's moves are not a joint jump
    motion.switch()
    motion.executed(np.array([2.0, 0.0, 0.25]))
    assert motion.switch_jumps == [0.25]
    # q = 0, 1, 2, 2: third difference -1, over dt^3 = 0.125.
    assert motion.jerk_mean() == pytest.approx(1 / 0.125)
