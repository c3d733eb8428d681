"""Message <-> numpy conversion. Only field plumbing: the checks live in hardware.robot_io."""

from __future__ import annotations

import array

import numpy as np
from builtin_interfaces.msg import Time
from sensor_msgs.msg import Image, JointState

from hardware.robot_io import decode_image


def to_seconds(stamp: Time) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def to_stamp(seconds: float) -> Time:
    sec = int(np.floor(seconds))
    return Time(sec=sec, nanosec=min(int(round((seconds - sec) * 1e9)), 999_999_999))


def image_from_msg(msg: Image, field: str) -> np.ndarray:
    return decode_image(field, msg.encoding, msg.height, msg.width, msg.step, msg.data)


def image_to_msg(rgb: np.ndarray, stamp: float, frame_id: str = "") -> Image:
    """uint8[H, W, 3] RGB -> sensor_msgs/Image (rgb8). The buffer goes in as array.array: assigning
    bytes to `data` runs a per-byte check that costs ~45 ms for a 480x640 frame."""
    msg = Image()
    msg.header.stamp, msg.header.frame_id = to_stamp(stamp), frame_id
    msg.height, msg.width = int(rgb.shape[0]), int(rgb.shape[1])
    msg.encoding, msg.is_bigendian, msg.step = "rgb8", 0, 3 * int(rgb.shape[1])
    msg.data = array.array("B", np.ascontiguousarray(rgb, np.uint8).tobytes())
    return msg


def joint_state_msg(names, positions, stamp: float) -> JointState:
    msg = JointState()
    msg.header.stamp = to_stamp(stamp)
    msg.name = list(names)
    msg.position = [float(p) for p in positions]
    return msg
