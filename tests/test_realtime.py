"""The real-time executor: inference off the control thread, time-indexed actions, holds when dry."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import numpy as np
import pytest

from policies.errors import ObservationError
from policies.observation import make_example_observation
from runtime.engine import Engine
from runtime.executor import ExecutorConfig
from runtime.realtime import RealtimeExecutor


def _wait_for(executor, now, pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tick = executor.action(now)
        if pred(tick):
            return tick
        time.sleep(0.005)
    raise AssertionError("timed out waiting for the executor")


@pytest.fixture
def executor(flow):
    ex = RealtimeExecutor(Engine(flow.bundle), ExecutorConfig(n=2, execute=3), seed=5)
    yield ex
    ex.close()


def test_actions_follow_the_clock_and_replan_after_execute(executor, flow):
    dt = executor.dt
    obs = make_example_observation(flow.bundle.manifest, seed=1)
    assert executor.action(0.0).action is None  # nothing before the first decision
    executor.observe(replace(obs, stamp=0.0))
    first = _wait_for(executor, 0.0, lambda t: t.action is not None)
    assert first.new_decision
    np.testing.assert_array_equal(first.action, first.decision.chunk[0])
    # Two ticks late: the actions for dt and 2dt are dropped, never executed late.
    late = executor.action(3 * dt)
    np.testing.assert_array_equal(late.action, first.decision.chunk[3])
    assert executor.dropped == 2 and not late.new_decision
    times, rows = executor.upcoming(3 * dt, 2)
    np.testing.assert_array_equal(rows, first.decision.chunk[4:6])
    np.testing.assert_array_equal(times, first.decision.times[4:6])
    # `execute` = 3 actions handed out -> a new chunk is wanted; it comes from the next observation.
    executor.observe(replace(obs, stamp=4 * dt))
    second = _wait_for(executor, 4 * dt, lambda t: t.decision is not first.decision)
    assert second.new_decision and second.decision.times[0] == pytest.approx(4 * dt)
    np.testing.assert_array_equal(second.action, second.decision.chunk[0])
    assert second.decision.seed != first.decision.seed
    assert executor.asked == {"offer": 0, "tick": 1, "dry": 0}  # asked at a tick (no offers here)
    # No new observation: once the chunk's times are all past, the executor has nothing (robot holds).
    h = len(second.decision.chunk)
    assert executor.action(4 * dt + (h + 1) * dt).action is None


def test_an_arriving_observation_starts_the_next_chunk_when_the_due_tick_would_come_before_the_next(flow):
    """`offer`: with sensors every 20 ms, the tick that would ask for the next chunk (the one nearest the
    chunk's action first + execute - 1, from half an action before it) comes before the next arrival, so the
    arrival before it asks, and the inference starts from that observation, not an older one at the tick.
    `on_decision` is called as each decision is ready."""
    ready = threading.Semaphore(0)
    ex = RealtimeExecutor(Engine(flow.bundle), ExecutorConfig(n=1, execute=4), seed=5, on_decision=ready.release)

    def asked(current):
        """Whether a chunk after `current` was asked for: the observation still waits, the inference runs, or
        a newer chunk is installed (each set under the executor's lock as `offer` returns; no waiting)."""
        times, _ = ex.upcoming(-np.inf, 1)
        return ex.waiting() or ex.inference_elapsed() > 0 or times[0] != current.times[0]

    try:
        dt = ex.dt
        obs = make_example_observation(flow.bundle.manifest, seed=1)
        ex.offer(replace(obs, stamp=0.0), 0.001)
        assert ready.acquire(timeout=10), "on_decision was not called"
        first = ex.action(0.0).decision  # executes action 0: the next chunk is due at action 3 (t = 3 dt)
        # Arrivals every 20 ms (dt here): at 0.001 + dt the next one (0.001 + 2 dt) would still come before
        # the tick that asks (from 2.5 dt on): no ask. At 0.001 + 2 dt the next is after it: ask now.
        ex.offer(replace(obs, stamp=dt), 0.001 + dt)
        assert not asked(first), "asked for a chunk a whole arrival early"
        ex.offer(replace(obs, stamp=2 * dt), 0.001 + 2 * dt)
        assert ready.acquire(timeout=10), "the arrival before the due tick did not ask for the next chunk"
        second = ex.action(2 * dt).decision
        assert second is not first and second.times[0] == pytest.approx(2 * dt)
        assert ex.asked == {"offer": 1, "tick": 0, "dry": 0}  # what the node's diagnostics report
        # The chunk in force is the new one; its successor waits for its own due time.
        ex.offer(replace(obs, stamp=3 * dt), 0.001 + 3 * dt)
        assert not asked(second)
    finally:
        ex.close()


def test_a_failing_inference_is_reported_and_the_executor_goes_on(executor, flow):
    obs = make_example_observation(flow.bundle.manifest, seed=1)
    executor.observe(replace(obs, state=np.zeros(3, np.float32)))
    deadline = time.monotonic() + 10
    while not executor.errors and time.monotonic() < deadline:
        time.sleep(0.005)
    assert isinstance(executor.errors.popleft(), ObservationError)
    assert executor.action(0.0).action is None
    executor.observe(replace(obs, stamp=0.0))
    assert _wait_for(executor, 0.0, lambda t: t.action is not None).new_decision


def test_reset_forgets_the_chunk(executor, flow):
    obs = make_example_observation(flow.bundle.manifest, seed=2)
    executor.observe(obs)
    _wait_for(executor, obs.stamp, lambda t: t.action is not None)
    executor.reset()
    assert executor.action(obs.stamp).action is None


def test_inference_in_flight_reports_its_elapsed_time(flow):
    clock = {"t": 100.0}
    engine = Engine(flow.bundle)
    started, release = threading.Event(), threading.Event()
    real_infer = engine.infer

    def slow_infer(*args, **kwargs):
        started.set()
        release.wait(10)
        return real_infer(*args, **kwargs)

    engine.infer = slow_infer
    ex = RealtimeExecutor(engine, ExecutorConfig(n=1, execute=2), clock=lambda: clock["t"])
    try:
        ex.observe(make_example_observation(flow.bundle.manifest, seed=3))
        assert started.wait(10)
        clock["t"] += 0.7
        tick = ex.action(0.0)
        assert tick.action is None and tick.inference_elapsed == pytest.approx(0.7)
        release.set()
        _wait_for(ex, 0.0, lambda t: t.action is not None)
        assert ex.action(0.0).inference_elapsed == 0.0
    finally:
        release.set()
        ex.close()


@pytest.mark.workstation
def test_planning_for_the_measured_delay_asks_early_and_guides_the_next_chunk(flow):
    """With an AsyncConfig: the executor times each decision (here 60 ms, as over a network), plans for
    d = 4 control steps (or 5 on a slow machine), asks for the next chunk after execute - d actions, and
    guides it toward the current one."""
    from policies.guidance import delay_steps
    from runtime.executor import AsyncConfig

    engine = Engine(flow.bundle)
    guidances = []
    real_infer = engine.infer

    def remote_infer(observation, n=None, seed=None, guidance=None):
        time.sleep(0.065)
        guidances.append(guidance)
        return real_infer(observation, n=n, seed=seed, guidance=guidance)

    engine.infer = remote_infer
    ex = RealtimeExecutor(engine, ExecutorConfig(n=1, execute=6), seed=1, timing=AsyncConfig(rtc=True))
    dt = ex.dt
    obs = make_example_observation(flow.bundle.manifest, seed=1)
    try:
        ex.observe(replace(obs, stamp=0.0))
        first = _wait_for(ex, 0.0, lambda t: t.action is not None).decision
        d = delay_steps(ex.delays.seconds(), dt)
        assert 4 <= d <= 5 and ex._due() == 6 - d
        ex.observe(replace(obs, stamp=dt))
        ex.action(dt)  # the second action used: the next chunk is wanted by now, not after 6
        second = _wait_for(ex, dt, lambda t: t.decision is not first).decision
        assert guidances[0] is None and guidances[1] is not None and guidances[1].delay == d == second.delay
        np.testing.assert_array_equal(guidances[1].target, first.chunk[1:])  # re-indexed to the stamp dt
    finally:
        ex.close()
    with pytest.raises(ValueError, match="rtc"):
        from policies.export import export_bundle

        old = export_bundle(flow.policy, flow.path.parent / "old-sampler", normalization=flow.normalization,
                            rtc=False, overwrite=True)
        RealtimeExecutor(Engine(old), ExecutorConfig(n=1, execute=2), timing=AsyncConfig(rtc=True))
