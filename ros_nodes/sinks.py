"""Command sinks (policy node -> robot) and the matching sources (sim node <- commands), per robot family.

- `interbotix`: per arm, interbotix_xs_msgs/JointGroupCommand "arm" (6 joints, rad) on
  `/<ns>/commands/joint_group` and JointSingleCommand "gripper" (joint units) on `/<ns>/commands/joint_single`,
  as ALOHA's interbotix_xs_sdk takes them (<ns> = follower_left, follower_right).
- `forward`: ros2_control forward_command_controller, std_msgs/Float64MultiArray: 6 arm joints on
  `/<side>_arm_controller/commands` and the gripper joint on `/<side>_gripper_controller/commands`.
- `jtc`: ros2_control joint_trajectory_controller, trajectory_msgs/JointTrajectory on
  `/<side>_arm_controller/joint_trajectory`: the tick's command at `time_from_start` 0, then the rest of
  the chunk at the times its actions are for (every point already through the safety filter). The
  header stamp is 0, which JTC reads as "start when it arrives": a trajectory stamped with this node's
  clock is dropped by JTC once it ends before the controller's clock (a one-point hold always does, and
  so does everything when the robot's clock runs ahead of ours), and the arm keeps executing the old one.
  A hold is one point, the position held, at `time_from_start` 0.

A source turns what it receives back into the 14-entry command at a given time; the sim node uses the
source of the sink the policy node publishes through, so a run in simulation exercises the same topics.
The `jtc` source is `ros_nodes.jtc.TrajectoryControllerModel`: JTC's own acceptance rules and sampling.
"""

from __future__ import annotations

import numpy as np
from builtin_interfaces.msg import Duration
from std_msgs.msg import Float64MultiArray
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from hardware.profiles import RobotProfile
from hardware.robot_io import join_command, split_command
from ros_nodes.jtc import TrajectoryControllerModel

SIDES = ("left", "right")
SINKS = ("interbotix", "forward", "jtc")


def _interbotix_types():
    try:
        from interbotix_xs_msgs.msg import JointGroupCommand, JointSingleCommand
    except ImportError as exc:
        raise RuntimeError("sink 'interbotix' needs the interbotix_xs_msgs package: `make ros` builds it from "
                           "ros_nodes/msgs into the virtual environment") from exc
    return JointGroupCommand, JointSingleCommand


def topics(sink: str, profile: RobotProfile) -> list[str]:
    """Every topic a sink publishes, for documentation and recording."""
    if sink == "interbotix":
        return [f"/{ns}/commands/{kind}" for ns in profile.arm_namespaces for kind in ("joint_group", "joint_single")]
    if sink == "forward":
        return [f"/{side}_{part}_controller/commands" for side in SIDES for part in ("arm", "gripper")]
    if sink == "jtc":
        return [f"/{side}_arm_controller/joint_trajectory" for side in SIDES]
    raise ValueError(f"sink: must be one of {', '.join(SINKS)}, got {sink!r}")


def arm_joint_names(profile: RobotProfile, arm: int) -> list[str]:
    """The joints of one arm's trajectory controller (6 arm joints and the gripper), in action order."""
    per_arm = len(profile.arm_joint_names) + 1
    return list(profile.joint_names[arm * per_arm: (arm + 1) * per_arm])


class Sink:
    """Publishes one safe 14-entry command per control tick (plus, for jtc, the safe rest of the chunk)."""

    def __init__(self, node, kind: str, profile: RobotProfile, qos: int = 10):
        self.kind, self.profile = kind, profile
        names = topics(kind, profile)
        if kind == "interbotix":
            group, single = _interbotix_types()
            self._types = (group, single)
            self._pubs = [node.create_publisher(group if "group" in t else single, t, qos) for t in names]
        elif kind == "forward":
            self._pubs = [node.create_publisher(Float64MultiArray, t, qos) for t in names]
        else:
            self._pubs = [node.create_publisher(JointTrajectory, t, qos) for t in names]

    def send(self, command: np.ndarray, upcoming: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """Publishes the tick's `command` float[14]; a trajectory sink also sends `upcoming`: (seconds after
        now float64[K], strictly increasing and > 0, commands float64[K, 14]), the safe rest of the chunk."""
        arms = split_command(self.profile, command)
        if self.kind == "interbotix":
            group, single = self._types
            for arm, (joints, gripper) in enumerate(arms):
                self._pubs[2 * arm].publish(group(name="arm", cmd=[float(j) for j in joints]))
                self._pubs[2 * arm + 1].publish(single(name=self.profile.gripper_command_joint, cmd=gripper))
        elif self.kind == "forward":
            for arm, (joints, gripper) in enumerate(arms):
                self._pubs[2 * arm].publish(Float64MultiArray(data=[float(j) for j in joints]))
                self._pubs[2 * arm + 1].publish(Float64MultiArray(data=[gripper]))
        else:
            offsets, rows = (np.empty(0), np.empty((0, len(command)))) if upcoming is None else upcoming
            if len(offsets) and not (offsets[0] > 0 and (np.diff(offsets) > 0).all()):
                raise ValueError(f"upcoming: times must be > 0 and strictly increasing, got {offsets}")
            per_point = [arms, *(split_command(self.profile, row) for row in rows)]
            for arm in range(2):
                msg = JointTrajectory()  # header.stamp 0: JTC starts it when it arrives
                msg.joint_names = arm_joint_names(self.profile, arm)
                for t, split in zip((0.0, *offsets), per_point):
                    joints, gripper = split[arm]
                    sec = int(t)
                    msg.points.append(JointTrajectoryPoint(
                        positions=[*map(float, joints), gripper],
                        time_from_start=Duration(sec=sec, nanosec=min(int(round((t - sec) * 1e9)), 999_999_999))))
                self._pubs[arm].publish(msg)


class CommandSource:
    """Subscribes to a sink's topics and answers `command(now, measured)`: the 14-entry command in force at
    `now` (None until every part has been received), as the robot's controllers would execute it.
    Malformed messages are counted and ignored; for `jtc` that is every message JTC's own rules refuse
    (`controllers[arm].refused` says why)."""

    def __init__(self, node, kind: str, profile: RobotProfile, qos: int = 10):
        self.kind, self.profile, self.node = kind, profile, node
        self.rejected = 0
        self.received = 0
        self._joints: list[np.ndarray | None] = [None, None]
        self._grippers: list[float | None] = [None, None]
        # jtc: one joint_trajectory_controller per arm, with JTC's acceptance rules and sampling.
        self.controllers = [TrajectoryControllerModel(arm_joint_names(profile, arm)) for arm in range(2)]
        names = topics(kind, profile)
        self._subs = []
        for i, topic in enumerate(names):
            if kind == "interbotix":
                group, single = _interbotix_types()
                arm, is_group = i // 2, i % 2 == 0
                self._subs.append(node.create_subscription(
                    group if is_group else single, topic,
                    (lambda m, a=arm: self._on_group(a, m.cmd)) if is_group else
                    (lambda m, a=arm: self._on_gripper(a, [m.cmd])), qos))
            elif kind == "forward":
                arm, is_arm = i // 2, i % 2 == 0
                self._subs.append(node.create_subscription(
                    Float64MultiArray, topic,
                    (lambda m, a=arm: self._on_group(a, m.data)) if is_arm else
                    (lambda m, a=arm: self._on_gripper(a, m.data)), qos))
            else:
                self._subs.append(node.create_subscription(
                    JointTrajectory, topic, lambda m, a=i: self._on_trajectory(a, m), qos))

    def _reject(self, what: str) -> None:
        self.rejected += 1
        self.node.get_logger().warning(f"command rejected: {what}", throttle_duration_sec=1.0)

    def _on_group(self, arm: int, values) -> None:
        values = np.asarray(values, np.float64)
        if values.shape != (len(self.profile.arm_joint_names),) or not np.isfinite(values).all():
            return self._reject(f"arm {arm}: expected {len(self.profile.arm_joint_names)} finite joints, got {values}")
        self._joints[arm] = values
        self.received += 1

    def _on_gripper(self, arm: int, values) -> None:
        values = np.asarray(values, np.float64)
        if values.shape != (1,) or not np.isfinite(values).all():
            return self._reject(f"gripper {arm}: expected one finite value, got {values}")
        self._grippers[arm] = float(values[0])
        self.received += 1

    def _on_trajectory(self, arm: int, msg: JointTrajectory) -> None:
        reason = self.controllers[arm].receive(msg, self._now())
        if reason is not None:
            return self._reject(f"trajectory {arm}: {reason}")
        self.received += 1

    def _now(self) -> float:
        return self.node.get_clock().now().nanoseconds * 1e-9

    def command(self, now: float, measured: np.ndarray | None = None) -> np.ndarray | None:
        """The command in force at `now`; `measured` float[14] is the robot's position (a trajectory
        controller interpolates from it to the first point of a new trajectory)."""
        if self.kind == "jtc":
            if measured is None:
                raise ValueError("the jtc source needs the measured position")
            measured_arms = split_command(self.profile, measured)
            arms = []
            for arm, controller in enumerate(self.controllers):
                joints, gripper = measured_arms[arm]
                positions = controller.command(now, [*joints, gripper])
                if positions is None:
                    return None
                arms.append((positions[:-1], positions[-1]))
            return join_command(self.profile, arms)
        if any(j is None for j in self._joints) or any(g is None for g in self._grippers):
            return None
        return join_command(self.profile, list(zip(self._joints, self._grippers)))
