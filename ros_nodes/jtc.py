"""ros2_controllers' joint_trajectory_controller (JTC) as it treats trajectory_msgs/JointTrajectory on its
`~/joint_trajectory` topic: which messages it accepts, and the position it commands at a given time.

This is the counterpart the `jtc` sink is judged against: the sim node drives its arms through it, and
the tests send every trajectory the policy node publishes through it. The rules are read from the
controller's source (ros-controls/ros2_controllers, branches humble and jazzy,
`joint_trajectory_controller.cpp`: `validate_trajectory_msg`, `topic_callback`, `update`, and
`trajectory.cpp`: `Trajectory::sample`), with their default parameters:

- a message is refused when its joint names are not the controller's joints (all of them, in any
  order: `allow_partial_joints_goal` false), when it has no joint names or no points, when the last
  point has a non-zero velocity (`allow_nonzero_velocity_at_trajectory_end`, false on jazzy), when its
  `header.stamp` is not 0 and stamp + the last point's `time_from_start` is before the controller's
  clock at arrival ("ends in the past"), when the points' `time_from_start` do not strictly increase,
  when a point's positions do not have one value per joint, or velocities / accelerations are neither
  empty nor one per joint, or it carries efforts (position command interface);
- an accepted message replaces the trajectory being executed (no queueing, no blending: jazzy and
  humble); it starts at its `header.stamp`, or, for stamp 0, at the controller update that first
  samples it;
- at that first update the controller takes its measured position as the point before the
  trajectory; before the first point's time it interpolates from there to the first point, between
  points it interpolates (positions only: linearly), and after the last point it holds the last point.

No ROS types are needed: messages are read by attribute (`msg.header.stamp.sec`, `msg.points[i].
positions`, ...), so a real rclpy message or any object of the same shape works.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The velocity JTC treats as zero at a trajectory's end: std::numeric_limits<float>::epsilon().
FLOAT_EPSILON = float(np.finfo(np.float32).eps)


def _seconds(duration) -> float:
    return duration.sec + duration.nanosec * 1e-9


@dataclass
class _Active:
    start: float | None  # controller time the trajectory starts at (None: stamp 0, set on first sample)
    offsets: np.ndarray  # float64[P]: each point's time_from_start
    positions: np.ndarray  # float64[P, J] in the controller's joint order
    before: np.ndarray | None = None  # the measured position at the first sample
    before_time: float | None = None


class TrajectoryControllerModel:
    """One joint_trajectory_controller (say `left_arm_controller` with its 7 joints).

    `receive(msg, now)` is its topic callback (`now`: the controller's clock when the message arrives);
    `command(now, measured)` is one controller update: the position it commands at `now`, given the
    joints' measured position, or None before any trajectory has been accepted.
    """

    def __init__(self, joints, allow_partial_joints_goal: bool = False,
                 allow_nonzero_velocity_at_trajectory_end: bool = False):
        self.joints = list(joints)
        self.allow_partial_joints_goal = allow_partial_joints_goal
        self.allow_nonzero_velocity_at_trajectory_end = allow_nonzero_velocity_at_trajectory_end
        self.accepted = 0
        # Every refusal, as (controller time, the reason JTC logs).
        self.refused: list[tuple[float, str]] = []
        self._pending: _Active | None = None
        self._active: _Active | None = None

    def validate(self, msg, now: float) -> str | None:
        """None if JTC accepts `msg` arriving at `now`, else the reason it logs (validate_trajectory_msg)."""
        names, points = list(msg.joint_names), list(msg.points)
        if not self.allow_partial_joints_goal and len(names) != len(self.joints):
            return "Joints on incoming trajectory don't match the controller joints."
        if not names:
            return "Empty joint names on incoming trajectory."
        if not points:
            return "Empty trajectory received."
        for name in names:
            if name not in self.joints:
                return f"Incoming joint {name} doesn't match the controller's joints."
        if not self.allow_nonzero_velocity_at_trajectory_end:
            for name, v in zip(names, points[-1].velocities):
                if abs(v) > FLOAT_EPSILON:
                    return f"Velocity of last trajectory point of joint {name} is not zero: {v:.15f}"
        start = _seconds(msg.header.stamp)
        if start != 0.0:
            end = start + _seconds(points[-1].time_from_start)
            if end < now:
                return (f"Received trajectory with non-zero start time ({start:f}) that ends in the past "
                        f"({end:f})")
        previous = 0.0
        for i, point in enumerate(points):
            t = _seconds(point.time_from_start)
            if i > 0 and t <= previous:
                return (f"Time between points {i - 1} and {i} is not strictly increasing, it is {previous:f} "
                        f"and {t:f} respectively")
            previous = t
            if len(point.positions) != len(names):
                return (f"Mismatch between joint_names size ({len(names)}) and positions ({len(point.positions)}) "
                        f"at point #{i}.")
            for field in ("velocities", "accelerations"):
                values = getattr(point, field)
                if len(values) and len(values) != len(names):
                    return (f"Mismatch between joint_names size ({len(names)}) and {field} ({len(values)}) "
                            f"at point #{i}.")
            if len(point.effort):
                return ("Trajectories with effort fields are only supported for controllers using the 'effort' "
                        "command interface.")
        return None

    def receive(self, msg, now: float) -> str | None:
        """The topic callback: an accepted message replaces the trajectory at the next update. Returns
        None when accepted, else why it was refused (the controller then keeps what it was doing)."""
        reason = self.validate(msg, now)
        if reason is not None:
            self.refused.append((now, reason))
            return reason
        names = list(msg.joint_names)
        order = [names.index(j) if j in names else None for j in self.joints]
        if None in order:  # partial goals (only when allowed) are not modelled
            raise NotImplementedError("partial joint goals")
        positions = np.array([[p.positions[k] for k in order] for p in msg.points], np.float64)
        offsets = np.array([_seconds(p.time_from_start) for p in msg.points])
        stamp = _seconds(msg.header.stamp)
        self._pending = _Active(None if stamp == 0.0 else stamp, offsets, positions)
        self.accepted += 1
        return None

    def command(self, now: float, measured) -> np.ndarray | None:
        """One update at controller time `now`: float64[J] positions commanded (controller joint order)."""
        if self._pending is not None:
            self._active, self._pending = self._pending, None
        active = self._active
        if active is None:
            return None
        if active.before is None:  # first sample: the point before the trajectory is the measured state
            active.before = np.asarray(measured, np.float64).copy()
            active.before_time = now
            if active.start is None:
                active.start = now
        times = active.start + active.offsets
        if now < active.before_time:
            return active.before.copy()
        if now < times[0]:
            span = times[0] - active.before_time
            w = 1.0 if span <= 0 else (now - active.before_time) / span
            return active.before + w * (active.positions[0] - active.before)
        if now >= times[-1]:
            return active.positions[-1].copy()
        i = int(np.searchsorted(times, now, side="right") - 1)
        w = (now - times[i]) / (times[i + 1] - times[i])
        return active.positions[i] + w * (active.positions[i + 1] - active.positions[i])
