"""Message <-> numpy conversion. Only field plumbing: the checks live in hardware.robot_io."""

from __future__ import annotations

import array
import struct

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


def _cdr_string(out: bytearray, text: str) -> None:
    """Appends a CDR string (4-aligned uint32 length with the NUL, bytes, NUL) to `out`."""
    out.extend(b"\0" * (-len(out) % 4))
    data = text.encode() + b"\0"
    out.extend(struct.pack("<I", len(data)))
    out.extend(data)


def image_to_cdr(rgb: np.ndarray, stamp: float, frame_id: str = "") -> bytes:
    """uint8[H, W, 3] RGB -> a serialized sensor_msgs/Image (little-endian CDR), for `publisher.publish(bytes)`.

    rclpy's own conversion of a 480x640 frame costs ~8 ms to build the message and ~25 ms to serialize
    it (the data field goes element by element); this writes the same bytes in well under a millisecond,
    which is what a camera driver in C++ costs. Tested against rclpy's deserialiser.
    """
    rgb = np.ascontiguousarray(rgb, np.uint8)
    height, width = int(rgb.shape[0]), int(rgb.shape[1])
    t = to_stamp(stamp)
    out = bytearray(b"\x00\x01\x00\x00")  # encapsulation: CDR, little endian
    body = bytearray(struct.pack("<iI", t.sec, t.nanosec))
    _cdr_string(body, frame_id)
    body.extend(b"\0" * (-len(body) % 4))
    body.extend(struct.pack("<II", height, width))
    _cdr_string(body, "rgb8")
    body.extend(b"\0")  # is_bigendian
    body.extend(b"\0" * (-len(body) % 4))
    body.extend(struct.pack("<II", 3 * width, rgb.size))
    return bytes(out + body) + rgb.tobytes()


def joint_state_msg(names, positions, stamp: float) -> JointState:
    msg = JointState()
    msg.header.stamp = to_stamp(stamp)
    msg.name = list(names)
    msg.position = [float(p) for p in positions]
    return msg
