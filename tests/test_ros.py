"""The ROS 2 nodes with real rclpy: sim node and policy node as separate processes on loopback.

Each module run uses its own ROS_DOMAIN_ID with discovery limited to this host, so parallel runs on
one machine do not hear each other. Marked `ros`; `make test` and CI run them (the ros extra is part of
the test install).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time

import numpy as np
import pytest

from hardware.profiles import ALOHA_VIPERX as PROFILE
from waiting import wait_until

pytestmark = pytest.mark.ros

DT = 1.0 / PROFILE.control_hz


@pytest.fixture(scope="module")
def ros():
    """rclpy initialised on a private domain; yields the environment for node processes."""
    import rclpy

    from ros_nodes.launcher import ros_env

    # As `taco ros` starts nodes (its DDS settings included), this process too.
    env = ros_env("LOCALHOST", domain_id=random.Random(os.getpid()).randint(1, 100))
    os.environ.update(env)
    rclpy.init()
    yield env
    rclpy.shutdown()


class Nodes:
    """Node processes started by a test, stopped (SIGINT, then kill) at its end; logs kept for failures."""

    def __init__(self, env, tmp_path):
        self.env, self.tmp_path, self.procs = env, tmp_path, {}

    def start(self, name, module, params):
        from ros_nodes.launcher import node_command

        log = open(self.tmp_path / f"{name}.log", "w")
        self.procs[name] = (subprocess.Popen(node_command(module, params), env=self.env, stdout=log,
                                             stderr=subprocess.STDOUT), log)

    def alive(self, name):
        return self.procs[name][0].poll() is None

    def log(self, name):
        return (self.tmp_path / f"{name}.log").read_text()

    def stop(self, sig=signal.SIGINT):
        for proc, _ in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(sig)
        for name, (proc, log) in self.procs.items():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()


@pytest.fixture
def nodes(ros, tmp_path):
    n = Nodes(ros, tmp_path)
    yield n
    n.stop()


class Harness:
    """An in-test rclpy node spun on a background thread: records what arrives on chosen topics."""

    def __init__(self, name="taco_test"):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self.node = rclpy.create_node(name)
        self.received: dict[str, list] = {}
        self.lock = threading.Lock()
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _spin(self):
        while not self._stop.is_set():
            self.executor.spin_once(timeout_sec=0.05)

    def listen(self, msg_type, topic, qos=50):
        self.received[topic] = []
        self.node.create_subscription(msg_type, topic, lambda m: self._store(topic, m), qos)

    def _store(self, topic, msg):
        with self.lock:
            self.received[topic].append((time.monotonic(), msg))

    def messages(self, topic):
        with self.lock:
            return list(self.received[topic])

    def wait(self, pred, timeout, what, nodes=None, seen=None):
        """Waits for `pred()` with a deadline; on timeout says what it waited for, what it saw (`seen()`)
        and the nodes' logs."""
        logs = None if nodes is None else \
            (lambda: "\n".join(f"--- {n}:\n{nodes.log(n)[-3000:]}" for n in nodes.procs))
        wait_until(pred, timeout, what, seen=seen, poll=0.05, extra=logs)

    def diagnostics(self):
        from ros_nodes.common import DIAGNOSTICS_TOPIC

        return [json.loads(m.data) for _, m in self.messages(DIAGNOSTICS_TOPIC)]

    def close(self):
        # The spin thread ends before the executor and the node go: destroying the node under a running spin
        # raises InvalidHandle ("destruction was requested") in that thread, and shutting the executor down
        # under one races rclpy's own teardown (Jazzy's executor then calls trigger() on the guard condition
        # shutdown has just set to None: stress run 8's AttributeError in the spin thread).
        self._stop.set()
        self.thread.join(10)
        assert not self.thread.is_alive(), "the harness's spin thread did not stop"
        self.executor.shutdown()
        self.node.destroy_node()


@pytest.fixture
def harness(ros):
    h = Harness()
    yield h
    h.close()


def _arm_limits(arm):
    lower, upper, vmax = PROFILE.arrays()
    sl = slice(7 * arm, 7 * arm + 6)
    return lower[sl], upper[sl], vmax[sl]


def _check_arm_stream(stream, arm, what):
    """Joint commands of one arm over consecutive ticks: inside the limits, no step beyond the speed bound."""
    lower, upper, vmax = _arm_limits(arm)
    stream = np.asarray(stream)
    assert stream.shape[1] == 6, what
    assert np.isfinite(stream).all(), what
    assert (stream >= lower - 1e-6).all() and (stream <= upper + 1e-6).all(), what
    steps = np.abs(np.diff(stream, axis=0))
    # float32 on the wire (JointGroupCommand): allow its rounding.
    assert (steps <= vmax * DT + 1e-5).all(), f"{what}: step {steps.max()} over the bound"


def _check_jtc_splices(msgs, arm, what):
    """A JointTrajectoryController replaces the trajectory it executes by each new one on arrival (header
    stamp 0), jumping to the new one's first point: that point must be on the previous trajectory (where it
    had got to when the node sent the new one; the harness's arrival times jitter too much on a loaded
    machine to say exactly where), or one speed-bounded tick from a hold (a single point)."""
    _, _, vmax = _arm_limits(arm)
    for (_, old), (_, new) in zip(msgs, msgs[1:]):
        offsets = np.array([p.time_from_start.sec + p.time_from_start.nanosec * 1e-9 for p in old.points])
        points = np.array([p.positions[:6] for p in old.points])
        first = np.asarray(new.points[0].positions[:6])
        if len(points) == 1:
            gap, bound = np.abs(first - points[0]).max(), (vmax * DT).min() + 1e-5
        else:  # the trajectory at every 0.5 ms: within half a millisecond of motion of the right time
            dense = np.arange(0.0, offsets[-1] + 5e-4, 5e-4)
            path = np.stack([np.interp(dense, offsets, points[:, j]) for j in range(6)], axis=1)
            gap, bound = np.abs(path - first).max(axis=1).min(), (vmax * 5e-4).max() + 1e-5
        assert gap <= bound, f"{what}: the new trajectory starts {gap:.4f} rad off the last one (bound {bound:.4f})"


def _gripper_ok(values):
    lo, hi = sorted((PROFILE.gripper.closed, PROFILE.gripper.open))
    values = np.asarray(values)
    return bool(np.isfinite(values).all() and (values >= lo - 1e-5).all() and (values <= hi + 1e-5).all())


def _listen_to_sink(harness, sink):
    from std_msgs.msg import Float64MultiArray
    from trajectory_msgs.msg import JointTrajectory

    from ros_nodes.sinks import topics

    names = topics(sink, PROFILE)
    if sink == "interbotix":
        from interbotix_xs_msgs.msg import JointGroupCommand, JointSingleCommand

        for t in names:
            harness.listen(JointGroupCommand if "group" in t else JointSingleCommand, t)
    elif sink == "forward":
        for t in names:
            harness.listen(Float64MultiArray, t)
    else:
        for t in names:
            harness.listen(JointTrajectory, t)
    return names


def _command_streams(harness, sink, names):
    """Per arm: (arrival times, joint commands[T, 6], gripper commands[T])."""
    out = []
    for arm in range(2):
        if sink == "interbotix":
            group, single = harness.messages(names[2 * arm]), harness.messages(names[2 * arm + 1])
            out.append(([t for t, _ in group], [list(m.cmd) for _, m in group], [m.cmd for _, m in single]))
        elif sink == "forward":
            group, single = harness.messages(names[2 * arm]), harness.messages(names[2 * arm + 1])
            out.append(([t for t, _ in group], [list(m.data) for _, m in group], [m.data[0] for _, m in single]))
        else:
            msgs = harness.messages(names[arm])
            # The first point of each trajectory is the tick's command.
            out.append(([t for t, _ in msgs], [list(m.points[0].positions[:6]) for _, m in msgs],
                        [m.points[0].positions[6] for _, m in msgs]))
    return out


@pytest.mark.parametrize("sink", ["interbotix", "forward", "jtc"])
def test_sim_and_policy_nodes_run_an_episode_through_each_sink(sink, nodes, harness, exported, tmp_path):
    from std_msgs.msg import String

    from ros_nodes.common import DIAGNOSTICS_TOPIC, EPISODE_TOPIC, EPISODES_QOS

    names = _listen_to_sink(harness, sink)
    harness.listen(String, DIAGNOSTICS_TOPIC)
    harness.listen(String, EPISODE_TOPIC, EPISODES_QOS)
    steps = 100
    record = tmp_path / "run.mcap"
    if sink == "jtc":
        nodes.start("recorder", "ros_nodes.recorder", {"out": str(record), "sink": sink})
    # One sink's run also logs its decisions, labelled by the sim's episode summary.
    log = tmp_path / "decisions"
    logging = {"log_decisions": str(log), "log_name": "transfer_cube"} if sink == "forward" else {}
    nodes.start("policy", "ros_nodes.policy_node", {"policy": str(exported("flow").path), "n": 4, "sink": sink,
                                                    **logging})
    # The sim's physics starts with the first command; make sure this test hears the policy node by then.
    harness.wait(lambda: all(harness.node.count_publishers(t) for t in names), 60, "the policy node's publishers",
                 nodes)
    nodes.start("sim", "ros_nodes.sim_node", {"task": "transfer_cube", "sink": sink, "episodes": 1,
                                              "max_steps": steps, "image_height": 48, "image_width": 64,
                                              "wait_for_recorder": sink == "jtc", "wait_for_listeners": 1})
    harness.wait(lambda: harness.messages(EPISODE_TOPIC), 90, "the episode to end", nodes)
    summary = json.loads(harness.messages(EPISODE_TOPIC)[0][1].data)
    assert summary["steps"] == steps and summary["rejected_commands"] == 0
    assert summary["commanded_steps"] >= steps - 5  # commanded from (nearly) the first physics step on

    for arm, (times, joints, grippers) in enumerate(_command_streams(harness, sink, names)):
        assert len(joints) >= steps * 0.8, (f"{sink}: only {len(joints)} commands for arm {arm}; got "
                                            f"{ {k: len(v) for k, v in harness.received.items()} }, {summary}")
        if sink == "jtc":
            _check_jtc_splices(harness.messages(names[arm]), arm, f"jtc arm {arm}")
        else:
            _check_arm_stream(joints, arm, f"{sink} arm {arm}")
        assert _gripper_ok(grippers), f"{sink}: gripper command out of range"
        # The control rate: the median interval between commands is one tick (loaded CI machines jitter).
        assert np.median(np.diff(times)) == pytest.approx(DT, rel=0.3)
    if sink == "jtc":
        # The tick's command, then the chunk's later actions at their own times (one per action_dt = DT).
        _, msg = [m for m in harness.messages(names[0]) if len(m[1].points) > 2][-1]
        offsets = [p.time_from_start.sec + p.time_from_start.nanosec * 1e-9 for p in msg.points]
        assert offsets[0] == 0 and 0 < offsets[1] <= DT + 1e-6
        np.testing.assert_allclose(np.diff(offsets[1:]), DT, atol=1e-6)
        _check_arm_stream([p.positions[:6] for p in msg.points], 0, "jtc trajectory points")
    decisions = [d for d in harness.diagnostics() if d["decision"]]
    assert decisions and all(d["n"] == 4 and d["timings_ms"]["total"] > 0 for d in decisions)
    if logging:
        from verifiers.decision_log import read_episodes

        # What a reader sees: the episode's file and its entry in the log's index (written after it).
        harness.wait(lambda: read_episodes([log])[1], 30, "the logged episode", nodes)
        _, (episode,) = read_episodes([log])
        assert episode.meta["key"] == "transfer_cube-000000000" and episode.meta["episode_id"] == "0"
        assert episode.success == summary["success"] and episode.meta["best_stage"] == summary["best_stage"]
        assert episode.meta["sim_seed"] == summary["seed"] and episode.meta["max_stage"] == 4
        # Every decision that reached the robot, with its 4 candidates; a command per tick from the first,
        # and one more as each decision arrives (the step run then, off the tick grid). The node ticks on its
        # own clock: at least once per physics step the sim made, at most once per tick of the episode's wall
        # time (a loaded sim steps slower than its 50 Hz; run 4 of a stress run: 100 steps in 2.6 s, 119
        # ticks logged). A decision used just before the episode's end is logged before its diagnostics
        # reach this process: wait for them.
        decided = lambda: [d for d in harness.diagnostics() if d["decision"]]  # noqa: E731
        harness.wait(lambda: len(decided()) >= len(episode.chosen), 10, "a diagnostics message per logged decision",
                     nodes, seen=lambda: (len(decided()), len(episode.chosen)))
        assert len(episode.chosen) >= 1 and episode.chunks.shape[1] == 4 and episode.chunks.shape[3] == 14
        ticks = len(episode.actions) - len(episode.chosen)
        assert summary["commanded_steps"] - 5 <= ticks <= summary["wall_s"] / DT + 10, (ticks, summary)
        assert [int(i) for i in episode.chosen] == [d["index"] for d in decided()][:len(episode.chosen)]
    assert all(d["inference_errors"] == 0 for d in harness.diagnostics())
    if sink == "jtc":
        # The sim exits on its own after its episode, once the recorder has acknowledged what it sent.
        harness.wait(lambda: not nodes.alive("sim"), 30, "the sim to exit", nodes)
        nodes.stop()
        got = _read_mcap(record)
        # The sim waited for the recorder, so the recording holds the episode from its first step:
        # a state per arm per physics step (and the reset's), and a camera frame every second step.
        assert len(got["/left_arm_controller/joint_trajectory"]) >= summary["commanded_steps"]
        for ns in PROFILE.arm_namespaces:
            assert len(got[f"/{ns}/joint_states"]) >= steps + 1, {k: len(v) for k, v in got.items()}
        assert len(got["/cam_high/image_raw"]) >= steps // 2
        assert json.loads(got[EPISODE_TOPIC][0].data) == summary
        image = got["/cam_high/image_raw"][0]
        assert (image.height, image.width, len(image.data)) == (48, 64, 48 * 64 * 3)


def _read_mcap(path) -> dict[str, list]:
    """Topic -> decoded messages of an MCAP file (which must be complete: the reader needs its footer)."""
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory

    got = {}
    with open(path, "rb") as f:
        for _, channel, _, msg in make_reader(f, decoder_factories=[DecoderFactory()]).iter_decoded_messages():
            got.setdefault(channel.topic, []).append(msg)
    return got


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_the_recorder_keeps_a_burst_published_right_before_it_stops(stop_signal, nodes, harness, tmp_path):
    from rclpy.duration import Duration
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import JointState
    from std_msgs.msg import String

    from ros_nodes.common import DIAGNOSTICS_TOPIC, LATCHED_QOS, RECORDER_STATUS_TOPIC

    burst = 400  # per topic; the recorder queues up to 1000 per topic while it catches up
    topics = {DIAGNOSTICS_TOPIC: String, "/follower_left/joint_states": JointState}
    qos = QoSProfile(depth=burst, reliability=ReliabilityPolicy.RELIABLE)
    pubs = {topic: harness.node.create_publisher(kind, topic, qos) for topic, kind in topics.items()}
    harness.listen(String, RECORDER_STATUS_TOPIC, LATCHED_QOS)
    record = tmp_path / "burst.mcap"
    nodes.start("recorder", "ros_nodes.recorder", {"out": str(record)})

    def matched():
        status = [json.loads(m.data)["matched"] for _, m in harness.messages(RECORDER_STATUS_TOPIC)]
        return bool(status) and all(status[-1].get(topic, 0) > 0 for topic in topics)

    harness.wait(matched, 60, "the recorder to match our publishers", nodes)
    for i in range(burst):
        pubs[DIAGNOSTICS_TOPIC].publish(String(data=json.dumps({"i": i})))
        pubs["/follower_left/joint_states"].publish(JointState(name=["j"], position=[float(i)]))
    # Delivered: every message is in the recorder's subscriptions (a burst the transport dropped is
    # resent at the publisher's next heartbeat), though the recorder has likely not written them all yet.
    assert all(pub.wait_for_all_acked(Duration(seconds=30)) for pub in pubs.values())
    nodes.stop(stop_signal)
    assert nodes.procs["recorder"][0].returncode == 0, nodes.log("recorder")
    got = _read_mcap(record)
    assert [json.loads(m.data)["i"] for m in got[DIAGNOSTICS_TOPIC]] == list(range(burst))
    assert [m.position[0] for m in got["/follower_left/joint_states"]] == list(range(burst))
    assert f"'{DIAGNOSTICS_TOPIC}': {burst}" in nodes.log("recorder")


@pytest.mark.workstation
def test_an_imported_lerobot_diffusion_policy_drives_the_sim_through_the_nodes(nodes, harness, tmp_path):
    """A LeRobot Diffusion Policy (two cameras, two observations of history) imported as a bundle: the policy
    node feeds it every observation, replans, and the sim runs an episode on its commands."""
    from std_msgs.msg import String

    from lerobot_checkpoints import diffusion_checkpoint
    from policies.lerobot import import_lerobot
    from policies.manifest import ALOHA_JOINTS
    from ros_nodes.common import DIAGNOSTICS_TOPIC, EPISODE_TOPIC, EPISODES_QOS

    bundle = import_lerobot(diffusion_checkpoint(tmp_path / "ck"), tmp_path / "bundle", joint_names=ALOHA_JOINTS,
                            fps=PROFILE.control_hz)
    assert bundle.manifest.history == 2 and len(bundle.manifest.cameras) == 2
    names = _listen_to_sink(harness, "interbotix")
    harness.listen(String, DIAGNOSTICS_TOPIC)
    harness.listen(String, EPISODE_TOPIC, EPISODES_QOS)
    nodes.start("policy", "ros_nodes.policy_node", {"policy": str(bundle.path), "n": 4, "sink": "interbotix"})
    harness.wait(lambda: all(harness.node.count_publishers(t) for t in names), 60, "the policy node's publishers",
                 nodes)
    steps = 60
    nodes.start("sim", "ros_nodes.sim_node", {"task": "transfer_cube", "sink": "interbotix", "episodes": 1,
                                              "max_steps": steps, "image_height": 48, "image_width": 64,
                                              "cameras": ["cam_high", "cam_low"], "wait_for_listeners": 1})
    harness.wait(lambda: harness.messages(EPISODE_TOPIC), 90, "the episode to end", nodes)
    summary = json.loads(harness.messages(EPISODE_TOPIC)[0][1].data)
    assert summary["steps"] == steps and summary["commanded_steps"] >= steps - 5
    decisions = [d for d in harness.diagnostics() if d["decision"]]
    assert len(decisions) >= 3 and all(d["n"] == 4 for d in decisions)
    assert all(d["inference_errors"] == 0 for d in harness.diagnostics())
    for arm, (_, joints, _) in enumerate(_command_streams(harness, "interbotix", names)):
        _check_arm_stream(joints, arm, f"imported diffusion arm {arm}")


def _set_parameter(harness, name, value):
    from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters

    client = harness.node.create_client(SetParameters, "/taco_policy/set_parameters")
    assert client.wait_for_service(timeout_sec=30)
    request = SetParameters.Request(parameters=[Parameter(
        name=name, value=ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=value))])
    future = client.call_async(request)
    deadline = time.monotonic() + 30
    while not future.done() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert future.done(), "set_parameters did not answer"
    return future.result().results[0]


def test_live_verifier_swap_and_a_bad_bundle_is_refused(nodes, harness, exported, tmp_path):
    from std_msgs.msg import String

    from ros_nodes.common import DIAGNOSTICS_TOPIC
    from verifiers.bundle import write_verifier_bundle
    from verifiers.synthetic import linear_verifier_onnx

    flow = exported("flow")
    f = flow.bundle.manifest.feature_dim
    # Random weights: the feature is a LayerNorm output, so all-ones weights would score every candidate ~0.
    weights = np.random.default_rng(0).normal(size=f)
    good = write_verifier_bundle(linear_verifier_onnx(tmp_path / "good.onnx", weights), tmp_path / "good",
                                 policy_fingerprint=flow.bundle.fingerprint, feature_dim=f, name="good-linear")
    foreign = write_verifier_bundle(linear_verifier_onnx(tmp_path / "foreign.onnx", weights), tmp_path / "foreign",
                                    policy_fingerprint="0" * 64, feature_dim=f, name="foreign")
    harness.listen(String, DIAGNOSTICS_TOPIC)
    nodes.start("sim", "ros_nodes.sim_node", {"task": "transfer_cube", "max_steps": 100000, "image_height": 48,
                                              "image_width": 64})
    nodes.start("policy", "ros_nodes.policy_node", {"policy": str(flow.path), "n": 4})
    decided = lambda verifier: lambda: any(d["decision"] and d["verifier"] == verifier  # noqa: E731
                                           for d in harness.diagnostics()[-5:])
    harness.wait(decided(None), 60, "decisions without a verifier", nodes)

    result = _set_parameter(harness, "verifier", str(good.path))
    assert result.successful, result.reason
    harness.wait(decided("good-linear"), 60, "decisions scored by the new verifier", nodes)
    scored = [d for d in harness.diagnostics() if d["decision"] and d["verifier"] == "good-linear"][-1]
    assert len(scored["scores"]) == 4 and scored["index"] == int(np.argmax(scored["scores"]))
    assert np.ptp(scored["scores"]) > 0

    for bad in (str(foreign.path), str(tmp_path / "missing")):
        result = _set_parameter(harness, "verifier", bad)
        assert not result.successful and result.reason
    assert "fingerprint" in _set_parameter(harness, "verifier", str(foreign.path)).reason
    count = len(harness.diagnostics())
    harness.wait(lambda: len(harness.diagnostics()) > count + 3, 60, "more decisions", nodes)
    assert all(d["verifier"] == "good-linear" for d in harness.diagnostics()[count:])
    assert nodes.alive("policy")


def test_the_policy_node_runs_against_a_policy_server(nodes, harness, exported, tmp_path):
    """`server:=ws://...`: the node on the robot runs no model; a `taco serve` server (here in this process,
    with a key) decides, and the node's diagnostics count the network time in the inference time."""
    from std_msgs.msg import String

    from ros_nodes.common import DIAGNOSTICS_TOPIC, EPISODE_TOPIC, EPISODES_QOS
    from serving.server import ServeConfig, serve_in_thread

    flow = exported("flow")
    server, thread = serve_in_thread(ServeConfig(policy=str(flow.path), port=0, n=4, api_key="k3y",
                                                 metrics_every_s=0))
    key = tmp_path / "key"
    key.write_text("k3y\n")
    try:
        names = _listen_to_sink(harness, "interbotix")
        harness.listen(String, DIAGNOSTICS_TOPIC)
        harness.listen(String, EPISODE_TOPIC, EPISODES_QOS)
        nodes.start("policy", "ros_nodes.policy_node", {"server": f"ws://127.0.0.1:{server.port}",
                                                        "api_key_file": str(key), "n": 4, "rtc_horizon": 6})
        harness.wait(lambda: all(harness.node.count_publishers(t) for t in names), 60, "the policy node's publishers",
                     nodes)
        nodes.start("sim", "ros_nodes.sim_node", {"task": "transfer_cube", "episodes": 1, "max_steps": 60,
                                                  "image_height": 48, "image_width": 64, "wait_for_listeners": 1})
        harness.wait(lambda: harness.messages(EPISODE_TOPIC), 90, "the episode to end", nodes)
        summary = json.loads(harness.messages(EPISODE_TOPIC)[0][1].data)
        assert summary["rejected_commands"] == 0 and summary["commanded_steps"] >= 50
        for arm, (_, joints, grippers) in enumerate(_command_streams(harness, "interbotix", names)):
            _check_arm_stream(joints, arm, f"remote arm {arm}")
            assert _gripper_ok(grippers)
        decisions = [d for d in harness.diagnostics() if d["decision"]]
        assert decisions and all(d["n"] == 4 and d["inference_errors"] == 0 for d in decisions)
        for d in decisions:
            t = d["timings_ms"]
            assert t["round_trip"] >= t["server_total"] >= t["total"] > 0 and t["network"] > 0
            assert d["inference_ms"] >= t["round_trip"] - 1.0  # the node timed the whole request
        assert "policy ws://127.0.0.1" in nodes.log("policy")
        # The verifier is the server's: the node refuses to swap it.
        result = _set_parameter(harness, "verifier", "cfn")
        assert not result.successful and "taco serve --verifier" in result.reason
    finally:
        server.stop()
        thread.join(30)


class FakeRobot:
    """Publishes the robot's joint states and camera at 50 Hz from the test, and the operator's heartbeat;
    `mode` breaks them on purpose."""

    def __init__(self, harness, height=48, width=64, frame=None):
        from sensor_msgs.msg import Image, JointState
        from std_msgs.msg import Header

        from ros_nodes.common import HEARTBEAT_TOPIC, IMAGE_QOS, IMAGE_TOPIC, joint_state_topic

        node = harness.node
        self.node = node
        self.heartbeat = node.create_publisher(Header, HEARTBEAT_TOPIC, 10)
        self.states = [node.create_publisher(JointState, joint_state_topic(ns), 10) for ns in PROFILE.arm_namespaces]
        self.image = node.create_publisher(Image, IMAGE_TOPIC.format(camera="cam_high"), IMAGE_QOS)
        self.frame = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8) \
            if frame is None else frame
        self.mode = "ok"
        self.timer = node.create_timer(DT, self._tick)

    def _tick(self):
        from ros_nodes.convert import image_to_msg, joint_state_msg

        now = self.node.get_clock().now().nanoseconds * 1e-9
        stamp = now - 2.0 if self.mode == "stale" else now
        names = [*PROFILE.arm_joint_names, PROFILE.gripper_state_joint, "right_finger"]
        home = np.asarray(PROFILE.home)
        for arm, pub in enumerate(self.states):
            finger = float(PROFILE.gripper_state.to_joint(home[7 * arm + 6]))
            positions = [*home[7 * arm: 7 * arm + 6], finger, -finger]
            if self.mode == "nan":
                positions[2] = float("nan")
            msg = joint_state_msg(names[:5] if self.mode == "wrong_count" else names,
                                  positions[:5] if self.mode == "wrong_count" else positions, stamp)
            pub.publish(msg)
        self.heartbeat.publish(joint_state_msg([], [], now).header)
        image = image_to_msg(self.frame, stamp)
        if self.mode == "bad_image":
            image.height += 1  # data no longer matches height x step
        self.image.publish(image)


def test_bad_messages_are_rejected_the_robot_holds_and_the_node_keeps_running(nodes, harness, exported):
    from std_msgs.msg import String

    from ros_nodes.common import DIAGNOSTICS_TOPIC, INSTRUCTION_TOPIC, LATCHED_QOS

    harness.listen(String, DIAGNOSTICS_TOPIC)
    names = _listen_to_sink(harness, "forward")
    robot = FakeRobot(harness)
    harness.node.create_publisher(String, INSTRUCTION_TOPIC, LATCHED_QOS).publish(String(data="transfer the cube"))
    nodes.start("policy", "ros_nodes.policy_node", {"policy": str(exported("flow").path), "n": 2, "sink": "forward"})
    decisions = lambda: sum(d["decision"] for d in harness.diagnostics())  # noqa: E731
    harness.wait(lambda: decisions() >= 3, 60, "decisions from valid observations", nodes)

    for mode, rejected in [("wrong_count", True), ("nan", True), ("bad_image", True), ("stale", False)]:
        before = harness.diagnostics()[-1]["rejected_messages"]
        robot.mode = mode

        def holding_on_stale(mode=mode, before=before, rejected=rejected):
            last = harness.diagnostics()[-1]
            return (last["held"] and "stale" in (last["hold_reason"] or "")
                    and (last["rejected_messages"] > before) == rejected)

        # Past the 0.2 s observation age the robot holds; a loaded machine may take longer to say so.
        harness.wait(holding_on_stale, 30, f"the node to hold on stale observations ({mode})", nodes,
                     seen=lambda: harness.diagnostics()[-1])
        t_hold = time.monotonic()
        # Holding = the same safe command, tick after tick, however slowly a loaded machine ticks.
        held = lambda: [m.data for t, m in harness.messages(names[0]) if t > t_hold]  # noqa: E731
        harness.wait(lambda: len(held()) > 10, 30, f"ten held commands ({mode})", nodes, seen=lambda: len(held()))
        commands = held()
        assert all(list(h) == list(commands[0]) for h in commands), mode
        robot.mode = "ok"
        count = decisions()
        harness.wait(lambda: decisions() > count + 1, 60, f"decisions again after {mode}", nodes)
        assert nodes.alive("policy")
    assert "rejected" in nodes.log("policy")


@pytest.mark.parametrize("shape,frame_id", [((480, 640, 3), "cam_high"), ((3, 5, 3), ""), ((7, 3, 3), "ab")])
def test_fast_image_serialisation_decodes_like_rclpy_own(shape, frame_id):
    """image_to_cdr writes what rclpy's serializer writes (padding bytes aside, which CDR leaves undefined)."""
    from rclpy.serialization import deserialize_message, serialize_message
    from sensor_msgs.msg import Image

    from ros_nodes.convert import image_from_msg, image_to_cdr, image_to_msg

    frame = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
    ours = deserialize_message(image_to_cdr(frame, 12.345678, frame_id), Image)
    theirs = deserialize_message(serialize_message(image_to_msg(frame, 12.345678, frame_id)), Image)
    assert ours == theirs
    np.testing.assert_array_equal(image_from_msg(ours, "cam"), frame)
    assert (ours.header.stamp.sec, ours.header.stamp.nanosec) == (12, 345678000)


def test_a_monitor_alarm_is_on_diagnostics_and_latched_and_holds_until_the_operator_resumes(nodes, harness, exported,
                                                                                            tmp_path):
    """The tiny monitor was calibrated on other frames and states than this robot's: it alarms; with
    monitor_action hold the commands stop through the safety layer until /taco/monitor_resume is called."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
    from std_msgs.msg import String
    from std_srvs.srv import Trigger

    from ros_nodes.common import (DIAGNOSTICS_TOPIC, INSTRUCTION_TOPIC, LATCHED_QOS, MONITOR_RESUME_SERVICE,
                                  MONITOR_TOPIC, ROS_DIAGNOSTICS_TOPIC)
    from tiny_monitor import N, make_tiny_monitor

    flow = exported("flow")
    monitor = make_tiny_monitor(flow, tmp_path)
    harness.listen(String, DIAGNOSTICS_TOPIC)
    harness.listen(DiagnosticArray, ROS_DIAGNOSTICS_TOPIC)
    harness.listen(String, MONITOR_TOPIC, qos=LATCHED_QOS)
    names = _listen_to_sink(harness, "forward")
    FakeRobot(harness, frame=np.zeros((48, 64, 3), np.uint8))
    harness.node.create_publisher(String, INSTRUCTION_TOPIC, LATCHED_QOS).publish(String(data="transfer the cube"))
    nodes.start("policy", "ros_nodes.policy_node", {"policy": str(flow.path), "n": N, "sink": "forward",
                                                    "monitor": str(monitor), "monitor_action": "hold"})
    states = lambda: [json.loads(m.data) for _, m in harness.messages(MONITOR_TOPIC)]  # noqa: E731
    harness.wait(lambda: any(s["holding"] for s in states()), 60, "the monitor's latched alarm", nodes, seen=states)
    alarm = next(s for s in states() if s["holding"])
    assert alarm["alarmed"] and alarm["statistic"] > alarm["threshold"] and alarm["action"] == "hold"

    def monitor_status():
        arrays = harness.messages(ROS_DIAGNOSTICS_TOPIC)
        return None if not arrays else next((st for st in arrays[-1][1].status if st.name == "taco_policy: monitor"),
                                            None)

    harness.wait(lambda: monitor_status() is not None and monitor_status().level == DiagnosticStatus.ERROR, 30,
                 "/diagnostics to report the alarm's hold", nodes, seen=monitor_status)
    values = {kv.key: kv.value for kv in monitor_status().values}
    assert values["name"] == "tiny-monitor" and "signal.pseudocount" in values
    last = harness.diagnostics()[-1]
    assert last["held"] and last["hold_reason"].startswith("monitor alarm")
    # Holding: the same command, tick after tick.
    t_hold = time.monotonic()
    held = lambda: [list(m.data) for t, m in harness.messages(names[0]) if t > t_hold]  # noqa: E731
    harness.wait(lambda: len(held()) > 10, 30, "ten held commands", nodes, seen=lambda: len(held()))
    assert all(h == held()[0] for h in held())

    client = harness.node.create_client(Trigger, MONITOR_RESUME_SERVICE)
    assert client.wait_for_service(timeout_sec=30)
    before = len(states())
    future = client.call_async(Trigger.Request())
    harness.wait(future.done, 30, "the resume service to answer", nodes)
    assert future.result().success and future.result().message == "hold released"

    def released():
        later = states()[before:]
        return next((i for i, s in enumerate(later) if not s["holding"]), None)

    harness.wait(lambda: released() is not None, 30, "the latched state to say released", nodes, seen=states)
    # The same strange frames: after the resume, new decisions raise the alarm again.
    harness.wait(lambda: any(s["holding"] for s in states()[before + released():]), 60, "a second alarm", nodes,
                 seen=states)
    assert nodes.alive("policy")
