"""Turning a robot driver's raw joint states and camera frames into an `Observation`, and commands back.

Pure numpy, no ROS types: the ROS nodes pass message fields in, so every check here is unit-tested
without rclpy. Anything malformed raises `ObservationError` naming the field; nothing is guessed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from hardware.profiles import RobotProfile
from policies.errors import ObservationError
from policies.observation import Observation

# sensor_msgs/Image encodings we take: channels and whether the bytes are BGR.
IMAGE_ENCODINGS = {"rgb8": False, "bgr8": True}


def decode_image(field: str, encoding: str, height: int, width: int, step: int, data) -> np.ndarray:
    """A raw image buffer (sensor_msgs/Image fields) -> uint8[H, W, 3] RGB, after checking every field."""
    if encoding not in IMAGE_ENCODINGS:
        raise ObservationError(f"{field}.encoding", f"unsupported {encoding!r} (expected {', '.join(IMAGE_ENCODINGS)})")
    if height <= 0 or width <= 0:
        raise ObservationError(field, f"empty image {height}x{width}")
    if step < 3 * width:
        raise ObservationError(f"{field}.step", f"{step} bytes per row is less than 3 * width = {3 * width}")
    buf = np.frombuffer(data, np.uint8)
    if buf.size != step * height:
        raise ObservationError(f"{field}.data", f"{buf.size} bytes, but {height} rows x step {step} = {step * height}")
    image = buf.reshape(height, step)[:, : 3 * width].reshape(height, width, 3)
    return np.ascontiguousarray(image[..., ::-1] if IMAGE_ENCODINGS[encoding] else image)


@dataclass
class _ArmReading:
    position: np.ndarray  # float64[7]: arm joints (rad), gripper (normalised)
    stamp: float


class StateAssembler:
    """Keeps the latest joint state of each arm and assembles the 14-entry state of the action layout.

    `update(arm, names, positions, stamp)` takes one arm's sensor_msgs/JointState fields (any joint
    order; extra joints such as "right_finger" are ignored). The gripper is read from the profile's
    `gripper_state_joint` and normalised with `gripper_state`.
    """

    def __init__(self, profile: RobotProfile):
        self.profile = profile
        self._arms: list[_ArmReading | None] = [None, None]
        self._needed = (*profile.arm_joint_names, profile.gripper_state_joint)

    def update(self, arm: int, names: Sequence[str], positions: Sequence[float], stamp: float) -> None:
        side = self.profile.arm_namespaces[arm]
        field = f"{side}/joint_states"
        if len(names) != len(positions):
            raise ObservationError(f"{field}.position", f"{len(positions)} positions for {len(names)} names")
        index = {name: i for i, name in enumerate(names)}
        missing = [name for name in self._needed if name not in index]
        if missing:
            raise ObservationError(f"{field}.name", f"missing joints {missing} (got {list(names)})")
        values = np.array([positions[index[name]] for name in self._needed], np.float64)
        if not np.isfinite(values).all():
            bad = [name for name, v in zip(self._needed, values) if not np.isfinite(v)]
            raise ObservationError(f"{field}.position", f"non-finite values for {bad}")
        if not np.isfinite(stamp):
            raise ObservationError(f"{field}.header.stamp", f"not a finite time: {stamp}")
        values[-1] = float(self.profile.gripper_state.to_normalised(values[-1]))
        self._arms[arm] = _ArmReading(values, float(stamp))

    @property
    def ready(self) -> bool:
        return all(arm is not None for arm in self._arms)

    def stamps(self) -> list[float]:
        """The stamp of each arm's latest reading (arms not received yet left out)."""
        return [arm.stamp for arm in self._arms if arm is not None]

    def state(self) -> tuple[np.ndarray, float]:
        """float32[14] state and the oldest of the two arms' stamps."""
        for arm, reading in enumerate(self._arms):
            if reading is None:
                raise ObservationError(f"{self.profile.arm_namespaces[arm]}/joint_states", "no message received yet")
        state = np.concatenate([self._arms[0].position, self._arms[1].position]).astype(np.float32)
        return state, min(self._arms[0].stamp, self._arms[1].stamp)


def assemble_observation(state: np.ndarray, state_stamp: float, images: Mapping[str, tuple[np.ndarray, float]],
                         task: str) -> Observation:
    """An Observation stamped with its oldest part, so that staleness is judged by what is most out of date."""
    stamp = min([state_stamp, *(stamp for _, stamp in images.values())])
    return Observation(images={name: image for name, (image, _) in images.items()}, state=state, task=task,
                       stamp=stamp)


def split_command(profile: RobotProfile, command: np.ndarray) -> list[tuple[np.ndarray, float]]:
    """float[14] command -> per arm (arm joint positions float[6] in rad, gripper command in joint units)."""
    command = np.asarray(command, np.float64)
    arms = []
    per_arm = len(profile.arm_joint_names) + 1
    for arm in range(2):
        part = command[arm * per_arm: (arm + 1) * per_arm]
        arms.append((part[:-1].copy(), float(profile.gripper.to_joint(part[-1]))))
    return arms


def join_command(profile: RobotProfile, arms: Sequence[tuple[Sequence[float], float]]) -> np.ndarray:
    """The inverse of `split_command`: per-arm joints and gripper joint values -> float64[14]."""
    parts = []
    for joints, gripper in arms:
        parts.extend([np.asarray(joints, np.float64), [float(profile.gripper.to_normalised(gripper))]])
    return np.concatenate(parts)
