"""`taco ros sim|robot|record`: starts the nodes as processes without ROS 2 `launch` (not installable from
the package registry), with the same parameters as ros_nodes/launch/*.launch.py.

Discovery stays on this host unless asked otherwise (ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST), the
way our servers bind to loopback by default. Ctrl-C stops every node; with `--episodes` the run ends
when the sim node has run them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from hardware.profiles import get_profile
from ros_nodes.common import (DIAGNOSTICS_TOPIC, EPISODE_TOPIC, IMAGE_TOPIC, INSTRUCTION_TOPIC, RESET_TOPIC,
                              joint_state_topic)


def _value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(f"'{v}'" if isinstance(v, str) else str(v) for v in value) + "]"
    return str(value)


def node_command(module: str, params: dict) -> list[str]:
    """python -m <module> --ros-args -p name:=value ..."""
    cmd = [sys.executable, "-m", module, "--ros-args"]
    for name, value in params.items():
        cmd += ["-p", f"{name}:={_value(value)}"]
    return cmd


# Shared memory for camera frames with Fast DDS (the file says why); used unless a profile is given.
LARGE_DATA_PROFILE = Path(__file__).with_name("fastdds_large_data.xml")
_DDS_SETTINGS = ("FASTRTPS_DEFAULT_PROFILES_FILE", "FASTDDS_DEFAULT_PROFILES_FILE", "FASTDDS_BUILTIN_TRANSPORTS")


def dds_env(env: dict) -> dict:
    """`env` with LARGE_DATA_PROFILE for Fast DDS, unless another RMW or a Fast DDS profile is chosen."""
    if env.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp").startswith("rmw_fastrtps") and \
            not any(env.get(k) for k in _DDS_SETTINGS):
        env["FASTRTPS_DEFAULT_PROFILES_FILE"] = str(LARGE_DATA_PROFILE)
    return env


def ros_env(discovery: str = "LOCALHOST", domain_id: int | None = None) -> dict:
    env = dds_env(dict(os.environ))
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", discovery)
    if domain_id is not None:
        env["ROS_DOMAIN_ID"] = str(domain_id)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def record_topics(profile_name: str, sink: str, cameras=("cam_high",)) -> dict[str, str]:
    """Topic -> message type of what a run publishes: joint states, cameras, the sink's commands,
    diagnostics, the instruction and the sim's episode summaries."""
    from ros_nodes.sinks import topics

    profile = get_profile(profile_name)
    command_type = {"interbotix": "interbotix_xs_msgs/msg/JointGroupCommand", "forward": "std_msgs/msg/Float64MultiArray",
                    "jtc": "trajectory_msgs/msg/JointTrajectory"}[sink]
    out = {joint_state_topic(ns): "sensor_msgs/msg/JointState" for ns in profile.arm_namespaces}
    out.update({IMAGE_TOPIC.format(camera=c): "sensor_msgs/msg/Image" for c in cameras})
    for topic in topics(sink, profile):
        out[topic] = ("interbotix_xs_msgs/msg/JointSingleCommand" if topic.endswith("joint_single") else command_type)
    out.update({DIAGNOSTICS_TOPIC: "std_msgs/msg/String", INSTRUCTION_TOPIC: "std_msgs/msg/String",
                EPISODE_TOPIC: "std_msgs/msg/String", RESET_TOPIC: "std_msgs/msg/Header"})
    return out


@dataclass
class Launch:
    """A set of node processes started together and stopped together."""

    commands: dict[str, list[str]]
    env: dict = field(default_factory=ros_env)
    # The node whose exit ends the launch (the sim node with --episodes); None: run until interrupted.
    until: str | None = None
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start(self) -> None:
        for name, cmd in self.commands.items():
            self.processes[name] = subprocess.Popen(cmd, env=self.env)

    def wait(self) -> int:
        try:
            while True:
                for name, proc in self.processes.items():
                    code = proc.poll()
                    if code is not None and (name == self.until or code != 0):
                        if code != 0:
                            print(f"taco ros: node {name} exited with {code}", file=sys.stderr)
                        return code
                time.sleep(0.2)
        except KeyboardInterrupt:
            return 130
        finally:
            self.stop()

    def stop(self, timeout: float = 10.0) -> None:
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + timeout
        for proc in self.processes.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
