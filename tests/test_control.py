"""The robot-side control loop (runtime.control): what the policy node runs, without ROS.

A fake engine makes every decision wait until the test lets it finish, so events can be placed while
an inference is in flight; each decision's chunk carries its own id, so every command the loop sends can
be traced back to the decision and the observation it came from.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hardware.profiles import ALOHA_VIPERX as PROFILE
from hardware.safety import WatchdogConfig
from runtime.control import ControlConfig, ControlLoop, check_robot
from runtime.engine import Decision
from runtime.executor import ExecutorConfig
from waiting import wait_until

HOME = np.asarray(PROFILE.home, np.float64)
CHUNK = 100


@dataclass
class FakeManifest:
    name: str = "fake"
    action_names: tuple = PROFILE.joint_names
    state_names: tuple = PROFILE.joint_names
    action_dt: float = 0.02
    chunk_length: int = CHUNK  # 2 s: events come while a chunk is executing
    history: int = 1
    rtc: bool = False
    cameras: tuple = ()


class FakeEngine:
    """Decisions on demand: `infer` blocks until `finish()`; decision k's chunk is HOME + k * 1e-4 (+ a ramp),
    and `made[k]` records when its inference started and the observation it was computed from."""

    def __init__(self, clock, manifest=None):
        self.manifest = manifest or FakeManifest()
        self.verifier = None
        self.clock = clock
        self.made: dict[int, tuple[float, object]] = {}
        self._go = threading.Semaphore(0)
        self.returned = 0
        self.entered = 0

    def observe(self, observation):
        pass

    def reset(self):
        pass

    def finish(self):
        self._go.release()

    def infer(self, observation, n=None, seed=None, guidance=None):
        k = len(self.made) + 1
        self.made[k] = (self.clock(), observation)
        self.entered += 1
        assert self._go.acquire(timeout=10), "the test never let the inference finish"
        m = self.manifest
        # Joint 0 carries the decision's id; the others move along the chunk.
        ramp = np.linspace(0, 0.002, m.chunk_length)[:, None] * np.r_[0, np.ones(5), 0, np.ones(6), 0]
        chunk = (HOME + k * 1e-4 * np.eye(14)[0] + ramp).astype(np.float64)
        self.returned += 1
        return Decision(chunk=chunk, times=observation.stamp + m.action_dt * np.arange(m.chunk_length),
                        index=0, scores=None, candidates=None, features=None, timings={"total": 0.0}, n=1,
                        seed=int(seed or 0), verifier=None, policy_fingerprint="f" * 64)


def decision_id(command) -> int:
    """Which decision a command came from (the filter passes these small steps unchanged)."""
    return int(round((command[0] - HOME[0]) / 1e-4))


class Robot:
    """The test's robot: a clock (shared with the loop's executor), and joint states delivered to the loop."""

    def __init__(self, loop, engine, clock):
        self.loop, self.engine, self.clock = loop, engine, clock
        self.arrivals: dict[float, float] = {}  # observation stamp -> when its parts arrived

    @property
    def now(self):
        return self.clock.now

    def publish(self, stamp_offset=0.0, heartbeat=True):
        stamp = self.now + stamp_offset
        names = [*PROFILE.arm_joint_names, PROFILE.gripper_state_joint]
        for arm in range(2):
            part = HOME[7 * arm: 7 * arm + 7]
            self.loop.joint_state(arm, names, [*part[:6], PROFILE.gripper_state.to_joint(part[6])], stamp, self.now)
        self.arrivals[stamp] = self.now
        if heartbeat:
            self.loop.heartbeat(self.now)

    def step(self, dt=0.02, **publish):
        """Time passes, fresh measurements arrive, one control tick."""
        self.clock.now += dt
        self.publish(**publish)
        return self.tick()

    def tick(self):
        """One control tick; returns once the worker has taken the observation it was handed, if any (so
        that which inference is in flight when the next event comes does not depend on scheduling)."""
        result = self.loop.tick(self.now)
        self.settle()
        return result

    def settle(self):
        """Waits until the worker has taken the observation waiting for it, if any."""
        wait_until(lambda: not self.loop.executor.waiting() or self.engine.entered > self.engine.returned,
                   10.0, "the worker to take the observation", poll=0.001)

    def decide(self):
        """Lets the inference in flight finish (waiting for it to start first) and be installed or dropped."""
        k = self.engine.returned + 1
        wait_until(lambda: self.engine.entered >= k, 10.0, "an inference to start", poll=0.001)
        self.engine.finish()
        _settle(self.loop, self.engine, k)


class Clock:
    def __init__(self, now=100.0):
        self.now = now


def make_loop(*, heartbeat=0.5, horizon=0, manifest=None, rate=50.0, log=None, engine_class=None, timing=None,
              on_decision=None):
    clock = Clock()
    engine = (engine_class or FakeEngine)(lambda: clock.now, manifest)
    watchdog = WatchdogConfig(max_observation_age=0.2, max_inference_time=5.0, max_future_stamp=0.05,
                              heartbeat_timeout=heartbeat)
    loop = ControlLoop(engine, PROFILE, ControlConfig(rate=rate, executor=ExecutorConfig(n=1, execute=8),
                                                      watchdog=watchdog, horizon=horizon, timing=timing),
                       clock=lambda: clock.now, log=log, on_decision=on_decision)
    loop.instruction("transfer the cube", clock.now)
    robot = Robot(loop, engine, clock)
    robot.publish()
    return loop, engine, robot


def _settle(loop, engine, k):
    """Waits until the worker has returned decision `k` and installed or discarded it."""
    wait_until(lambda: engine.returned >= k and loop.executor.inference_elapsed() == 0.0, 10.0, "the worker",
               poll=0.001)


@pytest.fixture
def started():
    """A loop that has made its first decision, and its robot."""
    loop, engine, robot = make_loop()
    robot.step()  # anchors on the measured position, asks for a decision
    robot.decide()
    yield loop, engine, robot
    for _ in range(3):
        engine.finish()
    loop.close()


# -- the robot's rules -----------------------------------------------------------------------------------


def test_a_policy_whose_joints_are_not_the_robots_is_refused_by_name():
    with pytest.raises(ValueError, match="orders its joints differently.*position 0: 'left_shoulder'"):
        names = (PROFILE.joint_names[1], PROFILE.joint_names[0], *PROFILE.joint_names[2:])
        check_robot(FakeManifest(action_names=names), PROFILE, 50.0, False)
    with pytest.raises(ValueError, match="state.names"):
        check_robot(FakeManifest(state_names=tuple(f"s{i}" for i in range(14))), PROFILE, 50.0, False)
    with pytest.raises(ValueError, match="rate: 25 Hz is slower than the policy's 50"):
        check_robot(FakeManifest(), PROFILE, 25.0, False)
    check_robot(FakeManifest(), PROFILE, 25.0, True)  # a trajectory sink sends each action at its time


def test_a_30_fps_policy_plays_at_its_own_speed_on_a_50_hz_loop():
    """Each tick commands the chunk at that moment (between the actions around it): 0.3 s after the
    observation the arm is where the policy's 10th action (0.3 s at 30 fps) puts it, not its 15th."""
    loop, engine, robot = make_loop(manifest=FakeManifest(action_dt=1 / 30))
    try:
        robot.step()
        robot.decide()
        while True:
            result = robot.step()
            decision = result.tick.decision
            if robot.now >= decision.times[0] + 0.3 - 1e-9:
                break
        np.testing.assert_allclose(result.command, decision.chunk[9], atol=1e-9)
        expected = [np.interp(robot.now, decision.times, decision.chunk[:, j]) for j in range(14)]
        np.testing.assert_allclose(result.command, expected, atol=1e-9)
        assert loop.executor.dropped == 1  # only action 0: its time had passed when the decision arrived
    finally:
        engine.finish()
        loop.close()


def test_the_trajectory_sink_gets_each_action_at_its_own_time():
    loop, engine, robot = make_loop(manifest=FakeManifest(action_dt=1 / 30), horizon=16, rate=20.0)
    try:
        robot.step(0.05)
        robot.decide()
        result = robot.step(0.05)
        offsets, rows = result.upcoming
        decision = result.tick.decision
        later = decision.times > robot.now
        np.testing.assert_allclose(offsets, decision.times[later][:16] - robot.now)
        np.testing.assert_allclose(rows, decision.chunk[later][:16], atol=1e-9)
        # What went ahead is what a hold stops at: the trajectory's position then, not the last tick's.
        robot.clock.now += 0.01
        held = loop.safety.hold(robot.now)
        times = np.concatenate([[robot.now - 0.01], decision.times[later][:16]])
        commands = np.vstack([result.command, rows])
        np.testing.assert_allclose(held, [np.interp(robot.now, times, commands[:, j]) for j in range(14)])
    finally:
        engine.finish()
        loop.close()


def test_a_trajectory_sink_takes_over_where_its_last_trajectory_has_got_to():
    """A JointTrajectoryController jumps to a new trajectory's first point on arrival, so that point is where
    the last trajectory is at that moment (its speed carried on), however long since it was sent, not a step
    from the last tick's command; past its end, the trajectory's end."""
    loop, engine, robot = make_loop(manifest=FakeManifest(action_dt=1 / 30), horizon=16, rate=20.0)
    try:
        robot.step(0.05)
        robot.decide()
        sent = robot.step(0.05)
        times = np.concatenate([[robot.now], robot.now + sent.upcoming[0]])
        commands = np.vstack([sent.command, sent.upcoming[1]])
        for late in (0.013, 0.05 + 0.013):  # an off-grid step; then one after a tick's worth more
            robot.clock.now += late
            result = loop.tick(robot.now)
            there = [np.interp(robot.now, times, commands[:, j]) for j in range(14)]
            np.testing.assert_allclose(result.command, there, atol=1e-12)
            times = np.concatenate([[robot.now], robot.now + result.upcoming[0]])
            commands = np.vstack([result.command, result.upcoming[1]])
        robot.clock.now = times[-1] + 1.0  # stalled past its end: the controller stopped there
        robot.publish()
        np.testing.assert_allclose(loop.tick(robot.now).command, commands[-1], atol=1e-12)
    finally:
        engine.finish()
        loop.close()


def test_reset_discards_the_inference_in_flight(started):
    loop, engine, robot = started
    assert not robot.step().report.held  # executing decision 1
    loop.executor.invalidate()  # (a replan is due; start decision 2 now)
    robot.step()
    wait_until(lambda: engine.entered == 2, 10.0, "decision 2 to start", poll=0.001)
    loop.reset(robot.now, robot.now)  # a new episode while decision 2 is computed
    robot.decide()
    assert loop.executor.discarded == 1
    for _ in range(5):
        result = robot.step()
        assert result.command is None or result.report.held  # nothing of the old episode's decisions
    robot.decide()
    result = robot.step()
    assert not result.report.held and decision_id(result.command) == 3


def test_estop_holds_and_needs_its_id_and_the_heartbeat_to_release(started):
    loop, engine, robot = started
    assert not robot.step().report.held
    estop = loop.estop("operator", robot.now)
    result = robot.step()
    assert result.report.held and "e-stop" in result.report.reason
    with pytest.raises(ValueError, match="names"):
        loop.estop_reset("0000", robot.now)
    robot.clock.now += 1.0  # the operator's console went quiet
    with pytest.raises(ValueError, match="heartbeat"):
        loop.estop_reset(estop, robot.now)
    robot.publish()
    loop.estop_reset(estop, robot.now)
    assert not loop.safety.estopped and not loop.anchored  # re-anchored on the next measured position
    result = robot.step()
    assert result.command is not None and result.report.held  # no decision made after the release yet
    robot.decide()
    result = robot.step()
    assert not result.report.held and decision_id(result.command) == 2


def test_a_future_stamped_observation_holds_with_the_part_named_and_the_offset_is_reported(started):
    loop, engine, robot = started
    result = robot.step(stamp_offset=0.3)  # the drivers' clock runs 300 ms ahead of ours
    assert result.report.held and "joint_states stamped 300 ms in the future" in result.report.reason
    for _ in range(4):
        robot.step(stamp_offset=0.3)
    assert loop.clock_offsets_ms()["follower_left/joint_states"] == pytest.approx(-300.0)


def test_a_lost_heartbeat_holds_until_a_decision_made_after_it_returns(started):
    loop, engine, robot = started
    last_heartbeat = robot.now
    for _ in range(40):  # 0.8 s of measurements without a heartbeat
        result = robot.step(heartbeat=False)
    assert result.report.held and "heartbeat lost" in result.report.reason
    result = robot.step()  # the heartbeat is back
    assert result.report.held  # decision 1 (and any started before the loss) never again
    for _ in range(5):
        if engine.entered > engine.returned:
            robot.decide()
        result = robot.step()
        if not result.report.held:
            break
    assert not result.report.held
    assert engine.made[decision_id(result.command)][0] > last_heartbeat + 0.5


# -- the failure monitor's alarm ----------------------------------------------------------------------------

class MonitoredEngine(FakeEngine):
    """A FakeEngine with a failure monitor at N=2 whose one signal, `spread`, the test sets: calibrated at
    mean 0 and std 1, an alarm once its CUSUM (slack 0.5) passes 3."""

    def __init__(self, clock, manifest=None, deferred=False):
        from runtime.monitor import Detector, Monitor, MonitorManifest

        super().__init__(clock, manifest)
        self.spread = 0.0
        # Deferred (EngineConfig.defer_monitor): the signals are scored when read; `gate`, when set, is a
        # semaphore the scoring waits for, so that the test says when it has finished.
        self.deferred, self.gate = deferred, None
        manifest = MonitorManifest(name="fake-monitor", policy_fingerprint="f" * 64, n=2, verifier=None, scorers={},
                                   scorer_manifests={}, standardisation={"spread": [0.0, 1.0]},
                                   detectors={"combined": Detector(("spread",), 0.5, 3.0, 0.1)}, main="combined")
        self.monitor = Monitor(manifest, None, {})

    def infer(self, observation, n=None, seed=None, guidance=None):
        decision = super().infer(observation, n=n, seed=seed, guidance=guidance)
        signals = {"spread": self.spread, "keystone": float("nan")}
        if not self.deferred:
            decision.signals = signals
            return decision
        gate = self.gate

        def score():
            assert gate is None or gate.acquire(timeout=10), "the test never let the scoring finish"
            return signals

        decision.pending_signals = score
        return decision


def monitored_loop(action: str, deferred: bool = False):
    clock = Clock()
    engine = MonitoredEngine(lambda: clock.now, deferred=deferred)
    watchdog = WatchdogConfig(max_observation_age=0.2, max_inference_time=5.0, max_future_stamp=0.05,
                              heartbeat_timeout=0.5)
    loop = ControlLoop(engine, PROFILE, ControlConfig(rate=50.0, executor=ExecutorConfig(n=2, execute=8),
                                                      watchdog=watchdog, monitor_action=action),
                       clock=lambda: clock.now)
    loop.instruction("transfer the cube", clock.now)
    robot = Robot(loop, engine, clock)
    robot.publish()
    return loop, engine, robot


def _run_decisions(robot, engine, count):
    """Steps until `count` more decisions were installed; returns the last tick's result."""
    start, result = engine.returned, None
    for _ in range(50 * count):
        if engine.entered > engine.returned:
            robot.decide()
        result = robot.step()
        if engine.returned >= start + count and not robot.loop.executor.waiting():
            break
    return result


@pytest.mark.parametrize("deferred", [False, True])
def test_a_monitor_alarm_holds_the_robot_until_the_operator_resumes(deferred):
    # Deferred scoring or not, the decision that raises the alarm never reaches the robot: with `hold` the
    # tick waits for the signals.
    loop, engine, robot = monitored_loop("hold", deferred)
    try:
        robot.step()
        result = _run_decisions(robot, engine, 3)
        assert not result.report.held and not loop.monitor_report()["alarmed"]
        engine.spread = 10.0  # the policy is lost: every later decision reads 10 standard deviations out
        for _ in range(200):
            if engine.entered > engine.returned:
                robot.decide()
            result = robot.step()
            if loop.monitor_hold is not None:
                break
        assert result.report.held and result.report.reason.startswith("monitor alarm (combined 9.50 > 3.00")
        alarmed_by = engine.returned
        for _ in range(30):  # it stays held, and reports why
            result = robot.step()
            assert result.report.held and "monitor_resume" in result.report.reason
        assert loop.monitor_report()["holding"] and loop.reasons["held"]["monitor alarm"] >= 30
        robot.clock.now += 1.0  # no heartbeat: the resume is refused
        with pytest.raises(ValueError, match="monitor resume refused: operator heartbeat lost"):
            loop.monitor_resume(robot.now)
        robot.publish()
        engine.spread = 0.0
        assert loop.monitor_resume(robot.now) == "hold released"
        with pytest.raises(ValueError, match="no monitor alarm"):
            loop.monitor_resume(robot.now)
        result = _run_decisions(robot, engine, 2)
        assert not result.report.held and decision_id(result.command) > alarmed_by
        assert not loop.monitor_report()["alarmed"]
    finally:
        for _ in range(3):
            engine.finish()
        loop.close()


def test_a_monitor_alarm_that_slows_scales_the_speed_limits_until_the_episode_ends():
    loop, engine, robot = monitored_loop("slow")
    try:
        robot.step()
        engine.spread = 10.0
        _run_decisions(robot, engine, 2)
        assert loop.safety.filter.speed_scale == 0.5 and loop.monitor_report()["alarmed"]
        assert not robot.step().report.held  # slowed, still moving
        loop.reset(robot.now, robot.now, episode="next")
        assert loop.safety.filter.speed_scale == 1.0 and loop.monitor_status is None
    finally:
        for _ in range(3):
            engine.finish()
        loop.close()


def test_deferred_monitor_scoring_never_delays_a_command_and_its_alarm_acts_once_scored():
    loop, engine, robot = monitored_loop("slow", deferred=True)
    try:
        robot.step()
        _run_decisions(robot, engine, 2)  # scored at once (no gate): read in order, no alarm
        assert loop.monitor_report()["decision"] == 1 and not loop.monitor_report()["alarmed"]
        engine.spread, engine.gate = 10.0, threading.Semaphore(0)
        first = engine.returned
        result = _run_decisions(robot, engine, 1)
        # The new decision is executing while its scoring waits on the worker: commands from it, full speed.
        assert decision_id(result.command) == first + 1 and not result.report.held
        assert loop.safety.filter.speed_scale == 1.0 and loop.monitor_report()["decision"] == 1
        for _ in range(5):
            assert not robot.step().report.held
        engine.gate.release()  # the worker's scoring finishes: the next tick reads the alarm
        for _ in range(200):
            robot.step()
            if loop.safety.filter.speed_scale != 1.0:
                break
        assert loop.safety.filter.speed_scale == 0.5 and loop.monitor_report()["alarmed"]
        assert loop.monitor_report()["decision"] == 2
    finally:
        engine.gate = None
        for _ in range(3):
            engine.finish()
        loop.close()


def test_a_monitor_action_needs_a_monitor_calibrated_at_the_loops_n():
    clock = Clock()
    with pytest.raises(ValueError, match="the engine has no failure monitor"):
        ControlLoop(FakeEngine(lambda: clock.now), PROFILE, ControlConfig(rate=50.0, monitor_action="hold"))
    with pytest.raises(ValueError, match="calibrated at N=2, the loop samples N=1"):
        ControlLoop(MonitoredEngine(lambda: clock.now), PROFILE, ControlConfig(rate=50.0))
    with pytest.raises(ValueError, match="monitor_action: must be one of none, slow, hold"):
        ControlConfig(rate=50.0, monitor_action="panic")


# -- no command computed before an event reaches the robot after it ---------------------------------------

EVENTS = ["tick", "tick", "tick", "finish", "finish", "stale", "future", "reset", "estop", "release", "swap",
          "instruction", "quiet"]


@settings(max_examples=150, deadline=None, derandomize=True)
@given(st.lists(st.sampled_from(EVENTS), min_size=5, max_size=50))
def test_no_command_computed_before_an_event_reaches_the_sink_after_it(events):
    loop, engine, robot = make_loop()
    last_event = -np.inf
    estop_id = None
    try:
        for event in ["tick", *events, "finish", "tick", "tick"]:
            if event == "finish":
                if engine.entered > engine.returned:
                    robot.decide()
                continue
            robot.clock.now += 0.02
            if event == "stale":
                robot.publish(stamp_offset=-1.0)
                last_event = robot.now  # the loop holds at this tick
            elif event == "future":
                robot.publish(stamp_offset=+1.0)
                last_event = robot.now
            elif event == "quiet":  # no heartbeat for longer than its timeout
                robot.clock.now += 0.6
                robot.publish(heartbeat=False)
                last_event = robot.now
            else:
                robot.publish()
            if event == "reset":
                loop.reset(robot.now, robot.now)
                last_event = robot.now
            elif event == "estop":
                estop_id = loop.estop("test", robot.now)
                last_event = robot.now
            elif event == "release" and estop_id is not None:
                loop.estop_reset(estop_id, robot.now)
                estop_id = None
                last_event = robot.now
            elif event == "swap":
                loop.invalidate("verifier swapped", robot.now)
                last_event = robot.now
            elif event == "instruction":
                loop.instruction(f"task at {robot.now}", robot.now)
                last_event = robot.now
            result = robot.tick()
            if result.command is not None and not result.report.held:
                k = decision_id(result.command)
                started_at, observation = engine.made[k]
                assert started_at > last_event, (event, k, started_at, last_event)
                assert robot.arrivals[observation.stamp] > last_event, (event, k)
    finally:
        for _ in range(engine.entered - engine.returned + 1):
            engine.finish()
        loop.close()


# -- decision logs (the policy node's --log-decisions) ---------------------------------------------------

N_CANDIDATES, FEATURES = 3, 5


class LoggingEngine(FakeEngine):
    """A FakeEngine whose decisions carry N candidates (the chosen one is candidate `k % N`, others offset)
    and their features, as an Engine with return_candidates does."""

    config = type("Config", (), {"return_candidates": True})()

    def infer(self, observation, n=None, seed=None, guidance=None):
        decision = super().infer(observation, n, seed, guidance)
        k = self.returned
        index = k % N_CANDIDATES
        candidates = np.stack([decision.chunk + 0.01 * (i - index) for i in range(N_CANDIDATES)]).astype(np.float32)
        features = np.full((N_CANDIDATES, FEATURES), float(k), np.float32) + np.arange(N_CANDIDATES)[:, None]
        return replace(decision, index=index, candidates=candidates, features=features, n=N_CANDIDATES)


def _stream_log(root):
    from verifiers.decision_log import DecisionLog, StreamLog

    log = DecisionLog(root, policy_fingerprint="f" * 64, feature_dim=FEATURES, chunk_length=CHUNK, action_dim=14,
                      action_mean=np.zeros(14), action_std=np.full(14, 0.5))
    return StreamLog(log, "aloha_viperx", n=N_CANDIDATES, verifier=None)


def test_the_control_loop_logs_each_episode_between_resets_with_its_outcome_when_it_comes(tmp_path):
    from verifiers.decision_log import add_label, read_episodes

    stream = _stream_log(tmp_path / "log")
    loop, engine, robot = make_loop(log=stream, engine_class=LoggingEngine)
    try:
        loop.reset(robot.now, robot.now, episode="0")
        robot.step()
        robot.decide()  # decision 1: chosen candidate 1
        sent = []
        while engine.entered == 1:  # until the executor replans
            sent.append(robot.step().command)
        robot.decide()  # decision 2, chosen 2
        sent += [robot.step().command for _ in range(3)]
        # A decision in flight when the next episode starts is never logged in it.
        while engine.entered == 2:
            sent.append(robot.step().command)
        loop.reset(robot.now, robot.now, episode="1")
        robot.decide()  # decision 3: discarded
        assert loop.episode_outcome("7", success=True) is None  # no such episode waits
        robot.step()
        robot.decide()  # decision 4, chosen 1
        for _ in range(4):
            robot.step()
        # The simulation's summary of episode 0 comes after episode 1 started: it still labels episode 0.
        path = loop.episode_outcome("0", success=True, best_stage=4, max_stage=4)
        assert path is not None and path.name == "aloha_viperx-000000000.npz"
    finally:
        engine.finish()
        loop.close()  # episode 1 is written unlabelled

    meta, (first, second) = read_episodes([tmp_path / "log"])
    assert first.success is True and first.meta["episode_id"] == "0" and first.progress == 1.0
    assert second.success is None and second.meta["episode_id"] == "1" and second.meta["seed"] == 1
    np.testing.assert_array_equal(first.chosen, [1, 2])
    np.testing.assert_array_equal(second.chosen, [1])
    assert first.features.shape == (2, N_CANDIDATES, FEATURES) and first.chunks.shape == (2, N_CANDIDATES, CHUNK, 14)
    np.testing.assert_array_equal(first.features[:, 0, 0], [1, 2])
    np.testing.assert_array_equal(second.features[:, 0, 0], [4])  # decision 3 never reached the robot
    # Candidates in the policy's normalised units: the chosen one is the chunk the commands came from.
    chosen = first.chunks[0, first.chosen[0]] * 0.5
    np.testing.assert_allclose(chosen[0, 0], HOME[0] + 1e-4, atol=1e-5)
    # Every command sent is an executed action, and each decision's step is where its commands start.
    logged = first.actions[first.step[0]:]
    np.testing.assert_allclose(logged[:len(sent)], np.asarray(sent, np.float32), atol=1e-6)
    assert decision_id(first.actions[first.step[1]]) == 2 and decision_id(first.actions[first.step[1] - 1]) == 1
    # The holds sent before the first decision came from none (exported as decision -1).
    from verifiers.log_dataset import step_decisions

    which = step_decisions(first)
    assert first.step[0] >= 1 and (which[:first.step[0]] == -1).all() and which[first.step[0]] == 0
    np.testing.assert_allclose(first.state[0], HOME, atol=1e-6)
    np.testing.assert_allclose(first.states, np.tile(HOME, (len(first.actions), 1)), atol=1e-6)  # measured per tick
    assert np.isnan(first.rewards).all()  # a robot's log has no per-step reward
    add_label(tmp_path / "log", second.meta["key"], success=False, progress=0.25)
    _, (_, labelled) = read_episodes([tmp_path / "log"])
    assert labelled.success is False and labelled.progress == 0.25


def test_a_new_run_numbers_its_episodes_after_the_logs_last_and_a_remote_engine_is_refused(tmp_path):
    stream = _stream_log(tmp_path / "log")
    recorder = stream.log.episode("aloha_viperx", 41)
    recorder.decision(type("D", (), {"candidates": np.zeros((1, CHUNK, 14)), "features": np.zeros((1, FEATURES)),
                                     "scores": None, "index": 0, "seed": 0, "n": 1})(), 0, HOME)
    recorder.end(success=None)
    assert _stream_log(tmp_path / "log").index == 42
    with pytest.raises(ValueError, match="must return its candidates.*taco serve --log-decisions"):
        make_loop(log=_stream_log(tmp_path / "other"))


@pytest.mark.parametrize("image_ms", [4.5, 13.0])
def test_inference_starts_as_each_observation_arrives_whatever_the_phase_of_the_ticks(image_ms, monkeypatch):
    """Sensors every 20 ms (joint states 1 ms after their stamp, the camera frame `image_ms` after), ticks every
    20 ms at each phase to them, inference 35 ms: every chunk after the first few is asked for as the
    observation it is computed from completes (`RealtimeExecutor.offer`), never at a tick from an older one."""
    import types

    import runtime.realtime as realtime
    from policies.manifest import CameraSpec
    from runtime.executor import AsyncConfig

    infer_s = 0.035
    for phase_ms in [2.5 * i for i in range(8)]:
        ready = threading.Semaphore(0)
        loop, engine, robot = make_loop(heartbeat=None, manifest=FakeManifest(cameras=(CameraSpec("cam_high", 4, 4),)),
                                        timing=AsyncConfig(rtc=False), on_decision=ready.release)
        clock = robot.clock
        # The worker times inference with perf_counter: the fake clock's, so delay planning sees 35 ms.
        monkeypatch.setattr(realtime, "time", types.SimpleNamespace(perf_counter=lambda: clock.now))
        t0, events = clock.now, []
        for j in range(75):  # 1.5 s
            stamp = t0 + 0.02 * j
            events += [(stamp + 0.001, 0, stamp), (stamp + image_ms / 1e3, 1, stamp),
                       (t0 + phase_ms / 1e3 + 0.02 * j, 2, None)]
        try:
            for at, kind, stamp in sorted(events):
                if engine.entered > engine.returned and engine.made[engine.returned + 1][0] + infer_s <= at:
                    clock.now = engine.made[engine.returned + 1][0] + infer_s
                    engine.finish()
                    assert ready.acquire(timeout=10), "the decision did not arrive"
                    robot.tick()  # the node's step as the decision arrives
                clock.now = at
                if kind == 0:
                    robot.publish(stamp_offset=stamp - at, heartbeat=False)
                elif kind == 1:
                    loop.image("cam_high", np.zeros((4, 4, 3), np.uint8), stamp, at)
                if kind == 2:
                    robot.tick()
                else:
                    robot.settle()
        finally:
            for _ in range(3):
                engine.finish()
            loop.close()
        waits = [round((started - observation.stamp) * 1e3, 6) for started, observation in engine.made.values()]
        assert len(waits) >= 6 and set(waits[2:]) == {image_ms}, (phase_ms, waits)
        assert loop.executor.asked["tick"] == 0 and loop.executor.asked["offer"] >= len(waits) - 2, \
            (phase_ms, loop.executor.asked)
