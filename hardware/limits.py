"""Joint limits as ros2_control states them: from the robot's URDF and its `joint_limits` parameters.

ros2_control (`joint_limits` package, `joint_limits_urdf.hpp` and `joint_limits_rosparam.hpp`) reads a
joint's limits in two layers, and so do we:

- the URDF: `<joint name=... type="revolute"><limit lower= upper= velocity= effort=/></joint>` gives
  position limits (revolute and prismatic joints only; a continuous joint has none) and a velocity limit;
  it has no acceleration or jerk;
- the `joint_limits` parameters, usually a YAML file, override them field by field:

      joint_limits:
        left_waist:
          has_velocity_limits: true
          max_velocity: 2.0
          has_acceleration_limits: true
          max_acceleration: 40.0
          has_deceleration_limits: true
          max_deceleration: 60.0
          has_jerk_limits: true
          max_jerk: 2000.0

  A value counts only with its `has_*_limits` flag true, and `has_*_limits: false` removes a limit, as
  ros2_control's `getJointLimits` does (position limits need both min_position and max_position).

Whatever neither names stays at the robot profile's default. Joints are matched by the names of the
profile (the names the command sinks publish and the controllers are configured with). Gripper entries
are converted from the gripper joint's units to the normalised opening the action layout uses.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from hardware.profiles import RobotProfile

# Limit fields, each with the ros2_control flag that enables it.
FIELDS = {"max_velocity": "has_velocity_limits", "max_acceleration": "has_acceleration_limits",
          "max_deceleration": "has_deceleration_limits", "max_jerk": "has_jerk_limits"}


@dataclass(frozen=True)
class JointLimits:
    """float64[J] arrays in the action layout (rad and rad/s... for arm joints, normalised units for grippers);
    `inf` where a joint has no such limit. Made by `limits_of(profile, urdf, joint_limits)`."""

    lower: np.ndarray
    upper: np.ndarray
    max_velocity: np.ndarray
    max_acceleration: np.ndarray
    # Limit while slowing down (ros2_control's max_deceleration); the acceleration limit where unset.
    max_deceleration: np.ndarray
    max_jerk: np.ndarray
    # Where each joint's limits came from: "profile", "urdf", "joint_limits" (per field, for diagnostics).
    sources: tuple[str, ...] = ()

    def __post_init__(self):
        n = len(self.lower)
        for name in ("upper", "max_velocity", "max_acceleration", "max_deceleration", "max_jerk"):
            values = getattr(self, name)
            if values.shape != (n,) or np.isnan(values).any() or (name != "upper" and (values <= 0).any()):
                raise ValueError(f"joint limits {name}: expected {n} positive numbers, got {values}")
        if not (np.isfinite(self.lower).all() and np.isfinite(self.upper).all() and (self.lower < self.upper).all()):
            raise ValueError(f"joint limits: lower must be finite and below upper, got {self.lower} / {self.upper}")


def profile_limits(profile: RobotProfile) -> JointLimits:
    """The profile's own limits (what a robot without a URDF or joint_limits file gets)."""
    n = len(profile.joint_names)
    lower, upper, velocity = profile.arrays()
    acceleration = np.full(n, np.inf) if profile.max_acceleration is None else np.asarray(profile.max_acceleration, float)
    jerk = np.full(n, np.inf) if profile.max_jerk is None else np.asarray(profile.max_jerk, float)
    return JointLimits(lower, upper, velocity, acceleration, acceleration.copy(), jerk, ("profile",) * n)


def _gripper_scale(profile: RobotProfile, index: int) -> float | None:
    """Normalised units per gripper joint unit for a gripper entry, None for arm joints."""
    if index not in profile.gripper_indices:
        return None
    return 1.0 / (profile.gripper.open - profile.gripper.closed)


def _to_layout(profile: RobotProfile, index: int, lower: float, upper: float) -> tuple[float, float]:
    if _gripper_scale(profile, index) is None:
        return lower, upper
    a, b = profile.gripper.to_normalised(lower), profile.gripper.to_normalised(upper)
    return float(min(a, b)), float(max(a, b))


def urdf_limits(text: str) -> dict[str, dict]:
    """Joint name -> {"lower", "upper", "max_velocity"} from a URDF's <joint><limit/> elements (what
    ros2_control's getJointLimits takes from it)."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as err:
        raise ValueError(f"robot_description: not a URDF ({err})") from err
    out = {}
    for joint in root.iter("joint"):
        limit = joint.find("limit")
        if limit is None or "name" not in joint.attrib:
            continue
        entry = {}
        if joint.get("type") in ("revolute", "prismatic"):
            entry["lower"], entry["upper"] = float(limit.get("lower", 0.0)), float(limit.get("upper", 0.0))
        if limit.get("velocity") is not None:
            entry["max_velocity"] = abs(float(limit.get("velocity")))
        out[joint.attrib["name"]] = entry
    return out


def rosparam_limits(data: Mapping) -> dict[str, dict]:
    """Joint name -> the limits a `joint_limits` parameter mapping sets (a ros2_control YAML's
    `joint_limits:` block, or a whole parameter file holding one), flags applied: a field whose flag is
    false is None (the limit removed)."""
    block = _find_joint_limits(data)
    if block is None:
        raise ValueError("joint_limits: no `joint_limits:` mapping found")
    out = {}
    for joint, spec in block.items():
        if not isinstance(spec, Mapping):
            raise ValueError(f"joint_limits.{joint}: expected a mapping, got {spec!r}")
        entry = {}
        if "has_position_limits" in spec:
            if spec["has_position_limits"] and "min_position" in spec and "max_position" in spec:
                entry["lower"], entry["upper"] = float(spec["min_position"]), float(spec["max_position"])
            elif not spec["has_position_limits"]:
                raise ValueError(f"joint_limits.{joint}: has_position_limits false; the safety layer needs "
                                 "position limits for every joint")
        for name, flag in FIELDS.items():
            if flag in spec:
                if spec[flag] and name in spec:
                    entry[name] = float(spec[name])
                elif not spec[flag]:
                    entry[name] = None
        out[str(joint)] = entry
    return out


def _find_joint_limits(data) -> Mapping | None:
    if not isinstance(data, Mapping):
        return None
    if isinstance(data.get("joint_limits"), Mapping):
        return data["joint_limits"]
    for value in data.values():  # node_name: {ros__parameters: {joint_limits: ...}}
        found = _find_joint_limits(value)
        if found is not None:
            return found
    return None


def limits_of(profile: RobotProfile, urdf: str | None = None, joint_limits: Mapping | None = None) -> JointLimits:
    """The profile's limits, overridden by the URDF's, overridden by the joint_limits parameters'.

    A joint of the profile that a given URDF or joint_limits does not name keeps the profile's limits;
    a URDF or joint_limits that names none of the profile's joints is refused (it is another robot's).
    A source may only narrow the profile's position range, never widen it: the profile's ranges are the
    mechanical ones of the arm the policy was trained for.
    """
    base = profile_limits(profile)
    arrays = {name: getattr(base, name).copy() for name in ("lower", "upper", "max_velocity", "max_acceleration",
                                                            "max_deceleration", "max_jerk")}
    decel_set = np.zeros(len(profile.joint_names), bool)
    sources = list(base.sources)
    for label, table in (("urdf", urdf_limits(urdf) if urdf else None),
                         ("joint_limits", rosparam_limits(joint_limits) if joint_limits is not None else None)):
        if table is None:
            continue
        if not set(table) & set(profile.joint_names):
            raise ValueError(f"{label}: names none of the profile's joints ({', '.join(profile.joint_names[:3])}, "
                             f"...); got {', '.join(list(table)[:5])}")
        for i, joint in enumerate(profile.joint_names):
            entry = table.get(joint)
            if not entry:
                continue
            sources[i] = label
            scale = _gripper_scale(profile, i) or 1.0
            if "lower" in entry:
                lo, hi = _to_layout(profile, i, entry["lower"], entry["upper"])
                arrays["lower"][i], arrays["upper"][i] = max(lo, base.lower[i]), min(hi, base.upper[i])
            for name in FIELDS:
                if name not in entry:
                    continue
                value = entry[name]
                arrays[name][i] = math.inf if value is None else value * scale
                if name == "max_deceleration":
                    decel_set[i] = value is not None
    # ros2_control falls back to the acceleration limit where no deceleration limit is given.
    arrays["max_deceleration"] = np.where(decel_set, arrays["max_deceleration"], arrays["max_acceleration"])
    if not np.isfinite(arrays["max_velocity"]).all():
        raise ValueError("joint limits: every joint needs a velocity limit (the safety layer bounds each step)")
    return JointLimits(**arrays, sources=tuple(sources))

