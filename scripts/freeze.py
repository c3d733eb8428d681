"""Prints pins for the installed distributions that come from an index (dist-info), sorted.

Skips this project (editable) and the egg-info entries the ROS wheels carry inside them (rclpy,
builtin_interfaces, ...) and that our own message build adds: those are not installable on their own.
"""

import importlib.metadata as metadata

pins = set()
for dist in metadata.distributions():
    path = str(getattr(dist, "_path", ""))
    name = dist.metadata["Name"]
    if path.endswith(".egg-info") or name in ("taco-runtime", "pip", "setuptools", "wheel"):
        continue
    pins.add(f"{name}=={dist.version}")
print("\n".join(sorted(pins, key=str.lower)))
