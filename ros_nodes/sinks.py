"""Command sinks (policy node -> robot) and the matching sources (sim node <- commands), per robot family.

- `interbotix`: per arm, interbotix_xs_msgs/JointGroupCommand "arm" (6 joints, rad) on
  `/<ns>/commands/joint_group` and JointSingleCommand "gripper" (joint units) on `/<ns>/commands/joint_single`,
  as ALOHA's interbotix_xs_sdk takes them (<ns> = follower_left, follower_right).
- `forward`: ros2_control forward_command_controller, std_msgs/Float64MultiArray: 6 arm joints on
  `/<side>_arm_controller/commands` and the gripper joint on `/<side>_gripper_controller/commands`.
- `jtc`: ros2_control joint_trajectory_controller, trajectory_msgs/JointTrajectory on
  `/<side>_arm_controller/joint_trajectory`: the tick's command and the rest of the chunk, one point per
  action with `time_from_start` (every point already through the safety filter).

A source turns what it receives back into the 14-entry command at a given time; the sim node uses the
source of the sink the policy node publishes through, so a run in simulation exercises the same topics.
"""

from __future__ import annotations

import numpy as np
from builtin_interfaces.msg import Duration
from std_msgs.msg import Float64MultiArray
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from hardware.profiles import RobotProfile
from hardware.robot_io import join_command, split_command
from ros_nodes.convert import to_seconds, to_stamp

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


def _arm_joint_names(profile: RobotProfile, arm: int) -> list[str]:
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

    def send(self, command: np.ndarray, now: float, upcoming: np.ndarray | None = None, dt: float = 0.02) -> None:
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
            rows = [command] if upcoming is None or not len(upcoming) else [command, *upcoming]
            per_tick = [split_command(self.profile, row) for row in rows]
            for arm in range(2):
                msg = JointTrajectory()
                msg.header.stamp = to_stamp(now)
                msg.joint_names = _arm_joint_names(self.profile, arm)
                for i, split in enumerate(per_tick):
                    joints, gripper = split[arm]
                    t = i * dt
                    msg.points.append(JointTrajectoryPoint(
                        positions=[*map(float, joints), gripper],
                        time_from_start=Duration(sec=int(t), nanosec=int(round((t - int(t)) * 1e9)))))
                self._pubs[arm].publish(msg)


class CommandSource:
    """Subscribes to a sink's topics and answers `command(now)`: the 14-entry command in force at `now`
    (None until every part has been received). Malformed messages are counted and ignored."""

    def __init__(self, node, kind: str, profile: RobotProfile, qos: int = 10):
        self.kind, self.profile, self.node = kind, profile, node
        self.rejected = 0
        self.received = 0
        self._joints: list[np.ndarray | None] = [None, None]
        self._grippers: list[float | None] = [None, None]
        self._trajectories: list[tuple[float, np.ndarray, np.ndarray] | None] = [None, None]
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
        expected = _arm_joint_names(self.profile, arm)
        if list(msg.joint_names) != expected or not msg.points:
            return self._reject(f"trajectory {arm}: joints {list(msg.joint_names)} (expected {expected}), "
                                f"{len(msg.points)} points")
        positions = np.array([p.positions for p in msg.points], np.float64)
        if positions.shape != (len(msg.points), len(expected)) or not np.isfinite(positions).all():
            return self._reject(f"trajectory {arm}: malformed or non-finite positions")
        offsets = np.array([to_seconds(p.time_from_start) for p in msg.points])
        self._trajectories[arm] = (to_seconds(msg.header.stamp), offsets, positions)
        self.received += 1

    def command(self, now: float) -> np.ndarray | None:
        if self.kind == "jtc":
            arms = []
            for traj in self._trajectories:
                if traj is None:
                    return None
                start, offsets, positions = traj
                i = int(np.clip(np.searchsorted(start + offsets, now + 1e-6, side="right") - 1, 0, len(offsets) - 1))
                arms.append((positions[i, :-1], positions[i, -1]))
            return join_command(self.profile, arms)
        if any(j is None for j in self._joints) or any(g is None for g in self._grippers):
            return None
        return join_command(self.profile, list(zip(self._joints, self._grippers)))
