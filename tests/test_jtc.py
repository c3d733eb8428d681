"""The jtc sink judged by joint_trajectory_controller's own rules (ros_nodes.jtc, read from ros2_controllers).

The model is tested against the rules as written in the controller's source first; then every trajectory
the sink sends (a normal tick, the end of a chunk, a hold, an e-stop) must be accepted by it, whatever
the transport delay and however far the robot's clock is from ours, and a hold must stop the arm.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("rclpy")  # message types; the model itself needs none

from builtin_interfaces.msg import Duration, Time  # noqa: E402
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint  # noqa: E402

from hardware.profiles import ALOHA_VIPERX as PROFILE  # noqa: E402
from ros_nodes.jtc import TrajectoryControllerModel  # noqa: E402
from ros_nodes.sinks import Sink, arm_joint_names  # noqa: E402

JOINTS = arm_joint_names(PROFILE, 0)
DT = 1.0 / PROFILE.control_hz


def _duration(t: float) -> Duration:
    return Duration(sec=int(t), nanosec=int(round((t - int(t)) * 1e9)))


def trajectory(offsets, positions, stamp=0.0, names=JOINTS, velocities=None, effort=None) -> JointTrajectory:
    msg = JointTrajectory(joint_names=list(names))
    sec = int(np.floor(stamp))
    msg.header.stamp = Time(sec=sec, nanosec=int(round((stamp - sec) * 1e9)))
    for i, (t, p) in enumerate(zip(offsets, positions)):
        point = JointTrajectoryPoint(positions=[float(x) for x in p], time_from_start=_duration(t))
        if velocities is not None:
            point.velocities = [float(v) for v in velocities[i]]
        if effort is not None:
            point.effort = [float(e) for e in effort[i]]
        msg.points.append(point)
    return msg


HOME = np.array([*PROFILE.home[:6], PROFILE.gripper.open])


@pytest.mark.parametrize("build,reason", [
    (lambda: trajectory([0.0], [HOME], names=JOINTS[:-1]), "don't match the controller joints"),
    (lambda: trajectory([0.0], [HOME], names=[*JOINTS[:-1], "elbow"]), "Incoming joint elbow"),
    (lambda: trajectory([], []), "Empty trajectory"),
    (lambda: trajectory([0.0, 0.1], [HOME, HOME], velocities=[np.zeros(7), np.full(7, 0.5)]), "is not zero"),
    # The old sink's hold: stamped with the sender's clock, one point at 0, arriving 1 ms later.
    (lambda: trajectory([0.0], [HOME], stamp=100.0), "ends in the past"),
    (lambda: trajectory([0.0, 0.02, 0.02], [HOME] * 3), "not strictly increasing"),
    (lambda: trajectory([0.0], [HOME[:6]]), "positions (6)"),
    (lambda: trajectory([0.0], [HOME], effort=[np.zeros(7)]), "effort"),
])
def test_the_model_refuses_what_joint_trajectory_controller_refuses(build, reason):
    jtc = TrajectoryControllerModel(JOINTS)
    assert reason in (jtc.receive(build(), now=100.001) or "")
    assert jtc.command(100.002, HOME) is None  # nothing accepted: the controller keeps holding


def test_the_model_starts_stamp_zero_on_arrival_interpolates_and_holds_the_last_point():
    jtc = TrajectoryControllerModel(JOINTS)
    measured = HOME.copy()
    target = HOME + 0.1
    # Joint names in another order are fine: JTC sorts them into its own.
    order = list(reversed(range(7)))
    msg = trajectory([0.1, 0.2], [target[order], (target + 0.1)[order]], names=[JOINTS[i] for i in order])
    assert jtc.receive(msg, now=5.0) is None
    np.testing.assert_allclose(jtc.command(5.0, measured), measured)  # first sample: the measured position
    np.testing.assert_allclose(jtc.command(5.05, measured), HOME + 0.05)  # toward the first point
    np.testing.assert_allclose(jtc.command(5.15, measured), target + 0.05)
    np.testing.assert_allclose(jtc.command(9.0, measured), target + 0.1)  # after the end: the last point
    # A stamped trajectory that has not ended is accepted and replaces the old one at once.
    assert jtc.receive(trajectory([0.0, 1.0], [HOME, HOME + 1.0], stamp=9.5), now=10.0) is None
    np.testing.assert_allclose(jtc.command(10.0, measured), HOME + 0.5)


class _Publisher:
    def __init__(self):
        self.sent = []

    def publish(self, msg):
        self.sent.append(msg)


class _Node:
    """Just enough of an rclpy node for a Sink: publishers that keep what they are given."""

    def __init__(self):
        self.publishers = {}

    def create_publisher(self, msg_type, topic, qos):
        return self.publishers.setdefault(topic, _Publisher())


def _jtc_sink():
    node = _Node()
    return node, Sink(node, "jtc", PROFILE)


@pytest.mark.parametrize("delay", [0.0, 0.001, 0.05])
@pytest.mark.parametrize("skew", [-1.0, 0.0, 1.0])
def test_every_trajectory_the_sink_sends_is_accepted_and_a_hold_stops_the_arm(delay, skew):
    """A tick with the rest of the chunk, a dry chunk's last command and a hold (the e-stop's too) all
    reach the controller, with the network's delay and the robot's clock `skew` seconds off ours."""
    node, sink = _jtc_sink()
    command = np.asarray(PROFILE.home, np.float64)
    rows = command + np.linspace(0.01, 0.16, 16)[:, None] * np.r_[np.ones(6), 0, np.ones(6), 0]
    offsets = 0.013 + DT * np.arange(16)  # actions at their own times, the first one 13 ms away
    now = 1000.0
    sink.send(command, (offsets, rows))      # a tick with the rest of the chunk
    sink.send(rows[-1])                       # the chunk ran dry: its last command alone
    held = rows[2]
    sink.send(held)                           # a hold (stale observation, e-stop): one point
    controllers = [TrajectoryControllerModel(arm_joint_names(PROFILE, arm)) for arm in range(2)]
    for arm, topic in enumerate(["/left_arm_controller/joint_trajectory", "/right_arm_controller/joint_trajectory"]):
        sent = node.publishers[topic].sent
        assert len(sent) == 3
        robot_now = now + skew + delay
        for msg in sent:
            assert controllers[arm].receive(msg, robot_now) is None, controllers[arm].refused
        # The hold came last: from now on the arm is commanded to the held position, not the old trajectory.
        measured = np.array([*rows[1][7 * arm: 7 * arm + 6], PROFILE.gripper.to_joint(rows[1][7 * arm + 6])])
        for later in (0.0, 0.05, 0.3):
            commanded = controllers[arm].command(robot_now + later, measured)
            np.testing.assert_allclose(commanded[:6], held[7 * arm: 7 * arm + 6])


def test_the_old_stamped_hold_was_dropped_by_the_controller():
    """What the sink sent before (header.stamp = now, a single point at 0): JTC refuses it on arrival, so the
    previous trajectory (up to 0.34 s of motion) kept running. Kept as the reason for stamp 0."""
    jtc = TrajectoryControllerModel(JOINTS)
    moving = trajectory(DT * np.arange(17), [HOME + 0.01 * i for i in range(17)])
    assert jtc.receive(moving, now=50.0) is None
    jtc.command(50.0, HOME)
    old_hold = trajectory([0.0], [HOME + 0.01], stamp=50.02)
    assert "ends in the past" in jtc.receive(old_hold, now=50.021)
    assert jtc.command(50.3, HOME)[0] > HOME[0] + 0.1  # still moving along the old trajectory


def test_the_source_models_the_controllers_and_counts_refusals():
    from ros_nodes.sinks import CommandSource

    node = SimpleNamespace(create_subscription=lambda *a, **k: None, get_logger=lambda: SimpleNamespace(
        warning=lambda *a, **k: None), get_clock=lambda: SimpleNamespace(now=lambda: SimpleNamespace(
            nanoseconds=int(100.001e9))))
    source = CommandSource(node, "jtc", PROFILE)
    measured = np.asarray(PROFILE.home, np.float64)
    assert source.command(100.0, measured) is None
    source._on_trajectory(0, trajectory([0.0], [HOME], stamp=100.0))  # the old hold: refused
    assert source.rejected == 1 and "ends in the past" in source.controllers[0].refused[0][1]
    source._on_trajectory(1, trajectory([0.0], [HOME]))  # the left arm's joints on the right arm's controller
    assert source.rejected == 2 and "doesn't match" in source.controllers[1].refused[0][1]
    for arm in range(2):
        source._on_trajectory(arm, trajectory([0.0], [HOME], names=arm_joint_names(PROFILE, arm)))
    np.testing.assert_allclose(source.command(100.01, measured), measured, atol=1e-12)
