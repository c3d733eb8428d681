"""Robot profiles: joint names, limits, gripper mapping, poses and cameras of a dual-arm robot."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from policies.manifest import ALOHA_JOINTS


@dataclass(frozen=True)
class GripperMapping:
    """Maps the normalised gripper command (0 closed, 1 open) to the gripper joint's own units."""

    # Gripper joint position (rad) when closed and when open.
    closed: float
    open: float

    def to_joint(self, normalised):
        return self.closed + np.asarray(normalised) * (self.open - self.closed)

    def to_normalised(self, joint):
        return (np.asarray(joint) - self.closed) / (self.open - self.closed)


@dataclass(frozen=True)
class RobotProfile:
    """Everything the safety layer and the ROS sinks need to know about one robot family.

    All arrays follow the 14-entry action layout: 6 arm joints (rad) + gripper (normalised 0..1) per
    arm, left arm then right arm.
    """

    name: str
    # Joint names in action order.
    joint_names: tuple[str, ...]
    # float[14]: position limits; arm joints in rad, grippers in normalised units.
    lower: tuple[float, ...]
    upper: tuple[float, ...]
    # float[14]: speed limits; rad/s for arm joints, normalised units/s for grippers.
    max_velocity: tuple[float, ...]
    # float[14]: the pose the robot starts tasks from, and the pose it is parked in.
    home: tuple[float, ...]
    sleep: tuple[float, ...]
    # Camera names as the robot publishes them.
    cameras: tuple[str, ...]
    # Gripper command mapping (normalised <-> the gripper joint the driver takes), shared by both arms.
    gripper: GripperMapping
    # Gripper state mapping (normalised <-> the finger position the driver reports in joint_states).
    gripper_state: GripperMapping
    # ROS namespaces of the arms (Interbotix convention), left then right.
    arm_namespaces: tuple[str, str] = ("follower_left", "follower_right")
    # Indices of the gripper entries in the 14-entry layout.
    gripper_indices: tuple[int, int] = (6, 13)
    control_hz: float = 50.0
    # Per-arm joint names as the driver publishes them in sensor_msgs/JointState (arm joints only).
    arm_joint_names: tuple[str, ...] = ("waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate")
    # The joint_states entry the gripper state is read from, and the joint the gripper command names.
    gripper_state_joint: str = "left_finger"
    gripper_command_joint: str = "gripper"
    # float[14]: acceleration limits (rad/s^2, normalised units/s^2 for grippers), and jerk limits (/s^3);
    # None: no such limit. A robot's URDF and joint_limits parameters may override them (hardware.limits).
    max_acceleration: tuple[float, ...] | None = None
    max_jerk: tuple[float, ...] | None = None

    def __post_init__(self):
        n = len(self.joint_names)
        for field in ("lower", "upper", "max_velocity", "home", "sleep", "max_acceleration", "max_jerk"):
            if getattr(self, field) is not None and len(getattr(self, field)) != n:
                raise ValueError(f"{self.name}.{field}: expected {n} values, got {len(getattr(self, field))}")
        lower, upper = np.asarray(self.lower), np.asarray(self.upper)
        if (lower >= upper).any():
            raise ValueError(f"{self.name}: lower must be below upper for every joint")
        if 2 * (len(self.arm_joint_names) + 1) != n:
            raise ValueError(f"{self.name}.arm_joint_names: {len(self.arm_joint_names)} arm joints + a gripper "
                             f"per arm do not make the {n} joints")
        for field in ("max_velocity", "max_acceleration", "max_jerk"):
            if getattr(self, field) is not None and (np.asarray(getattr(self, field)) <= 0).any():
                raise ValueError(f"{self.name}.{field}: must be > 0")
        for pose in ("home", "sleep"):
            p = np.asarray(getattr(self, pose))
            if ((p < lower) | (p > upper)).any():
                raise ValueError(f"{self.name}.{pose}: outside the joint limits")

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return (np.asarray(self.lower, np.float64), np.asarray(self.upper, np.float64),
                np.asarray(self.max_velocity, np.float64))


# ViperX 300 6DOF arms of ALOHA: position limits from the arm's joint ranges (as in gym-aloha's MJCF),
# speed limits pi rad/s (the XM540/XM430 servos' rated ~30 rev/min), grippers 0..1 in 0.2 s.
# Acceleration 80 rad/s^2: the scripted experts' recorded actions (the policies' training data, their
# smoothed noise included) reach at most 61 rad/s^2 (50 Hz, 12 episodes of transfer_cube and insertion),
# while a command that jumps to full speed in one 20 ms tick is 157 rad/s^2. Grippers 250 /s^2 (the
# experts open and close them at up to 187). No jerk limit by default: the recorded actions' jerk reaches
# thousands of rad/s^3 at 50 Hz, so a limit that leaves them alone would stop nothing; set one in the
# robot's joint_limits parameters.
_ARM_LOWER = (-3.14158, -1.85005, -1.76278, -3.14158, -1.8675, -3.14158)
_ARM_UPPER = (3.14158, 1.25664, 1.6057, 3.14158, 2.23402, 3.14158)
_ARM_HOME = (0.0, -0.96, 1.16, 0.0, -0.3, 0.0)
_ARM_SLEEP = (0.0, -1.85, 1.55, 0.0, 0.8, 0.0)

ALOHA_VIPERX = RobotProfile(
    name="aloha_viperx",
    joint_names=ALOHA_JOINTS,
    lower=(*_ARM_LOWER, 0.0) * 2,
    upper=(*_ARM_UPPER, 1.0) * 2,
    max_velocity=(np.pi,) * 6 + (5.0,) + (np.pi,) * 6 + (5.0,),
    home=(*_ARM_HOME, 1.0) * 2,
    sleep=(*_ARM_SLEEP, 0.0) * 2,
    max_acceleration=(80.0,) * 6 + (250.0,) + (80.0,) * 6 + (250.0,),
    cameras=("cam_high", "cam_low", "cam_left_wrist", "cam_right_wrist"),
    # ALOHA's follower grippers are commanded through the "gripper" joint (rad) but report their
    # opening as the "left_finger" position (m); both ranges are ACT's puppet gripper constants.
    gripper=GripperMapping(closed=-0.6213, open=1.4910),
    gripper_state=GripperMapping(closed=0.01844, open=0.05800),
)

PROFILES = {ALOHA_VIPERX.name: ALOHA_VIPERX}


def get_profile(name: str) -> RobotProfile:
    if name not in PROFILES:
        raise KeyError(f"robot profile: unknown {name!r} (known: {', '.join(PROFILES)})")
    return PROFILES[name]
