"""Records ROS 2 topics to an MCAP file (ROS 2 CDR, `ros2msg` schemas): what `ros2 bag record -s mcap`
writes, readable by rosbag2's mcap plugin, Foxglove, and `mcap_ros2.reader`, with no rosbag2 install.

    python -m ros_nodes.recorder --ros-args -p out:=run.mcap -p topics:="['/taco/diagnostics', ...]"

Messages are taken serialized (raw subscriptions) and written as received: no decode/encode cost.
Topic types are looked up in the ROS graph; a topic that is not up yet is retried every second.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import rclpy
from mcap.writer import Writer
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy

from ros_nodes.common import (EPISODES_QOS, EPISODE_TOPIC, IMAGE_QOS, INSTRUCTION_TOPIC, RESET_TOPIC, init_ros,
                              run_node)
from ros_nodes.launcher import record_topics

# Topics our nodes publish transient-local; recorded the same way so that earlier messages arrive too.
LATCHED_TOPICS = (INSTRUCTION_TOPIC, EPISODE_TOPIC, RESET_TOPIC)

PRIMITIVES = {"bool", "byte", "char", "float32", "float64", "int8", "uint8", "int16", "uint16", "int32", "uint32",
              "int64", "uint64", "string", "wstring"}
SEPARATOR = "=" * 80


def _msg_text(type_name: str) -> str:
    """The .msg file of pkg/msg/Name, from a sourced ROS install (AMENT_PREFIX_PATH) or the venv's prefix."""
    package, _, name = type_name.split("/")
    prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p] + [sys.prefix]
    for prefix in prefixes:
        path = Path(prefix) / "share" / package / "msg" / f"{name}.msg"
        if path.is_file():
            return path.read_text()
    raise FileNotFoundError(f"no definition of {type_name} under {prefixes}")


def _field_types(text: str, package: str) -> list[str]:
    """Complex types a .msg refers to, as pkg/msg/Name."""
    found = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or "=" in line.split()[-1] or (len(line.split()) > 1 and "=" in line.split()[1]):
            continue
        base = re.sub(r"\[.*\]$", "", line.split()[0])
        base = re.sub(r"<=\d+$", "", base)
        if base in PRIMITIVES:
            continue
        if "/" not in base:
            base = f"{package}/{base}" if base != "Header" else "std_msgs/Header"
        pkg, *rest = base.split("/")
        found.append(f"{pkg}/msg/{rest[-1]}")
    return found


def message_definition(type_name: str) -> str:
    """The full ros2msg definition of `pkg/msg/Name`: its .msg text then every nested type's, as rosbag2 writes."""
    text = _msg_text(type_name)
    parts, seen, queue = [text.rstrip("\n")], {type_name}, _field_types(text, type_name.split("/")[0])
    while queue:
        dep = queue.pop(0)
        if dep in seen:
            continue
        seen.add(dep)
        dep_text = _msg_text(dep)
        pkg, _, name = dep.split("/")
        parts.append(f"{SEPARATOR}\nMSG: {pkg}/{name}\n{dep_text.rstrip(chr(10))}")
        queue.extend(_field_types(dep_text, pkg))
    return "\n".join(parts) + "\n"


def _import_type(type_name: str):
    package, kind, name = type_name.split("/")
    module = __import__(f"{package}.{kind}", fromlist=[name])
    return getattr(module, name)


class Recorder(Node):
    def __init__(self):
        super().__init__("taco_recorder")
        self.out = Path(self.declare_parameter("out", "taco_run.mcap").value)
        profile = self.declare_parameter("profile", "aloha_viperx").value
        sink = self.declare_parameter("sink", "interbotix").value
        cameras = self.declare_parameter("cameras", ["cam_high"]).value
        # Types of the run's own topics are known up front: they are subscribed at once, not when the
        # graph shows them (which can be after a short episode is over). Others come from the graph.
        self.known = record_topics(profile, sink, cameras)
        # "auto": every topic of the run (see ros_nodes.launcher.record_topics).
        self.wanted = list(self.declare_parameter("topics", ["auto"]).value)
        if self.wanted == ["auto"]:
            self.wanted = list(self.known)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.out, "wb")
        self.writer = Writer(self._file)
        self.writer.start(profile="ros2", library="taco-runtime")
        self.channels: dict[str, int] = {}
        self.counts: dict[str, int] = {}
        self._subs = []
        self._resolve()
        self.timer = self.create_timer(1.0, self._resolve)

    def _resolve(self) -> None:
        types = dict(self.get_topic_names_and_types())
        for topic in self.wanted:
            if topic in self.channels:
                continue
            type_name = self.known.get(topic) or (types[topic][0] if topic in types else None)
            if type_name is None:
                continue
            schema = self.writer.register_schema(name=type_name.replace("/msg/", "/"), encoding="ros2msg",
                                                 data=message_definition(type_name).encode())
            self.channels[topic] = self.writer.register_channel(topic=topic, message_encoding="cdr",
                                                                schema_id=schema)
            self.counts[topic] = 0
            if "image" in topic:
                qos = IMAGE_QOS
            elif topic in LATCHED_TOPICS:
                qos = EPISODES_QOS  # latched: also what was published before the recorder started
            else:
                qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
            self._subs.append(self.create_subscription(_import_type(type_name), topic,
                                                       lambda data, t=topic: self._write(t, data), qos, raw=True))
            self.get_logger().info(f"recording {topic} ({type_name})")

    def _write(self, topic: str, data: bytes) -> None:
        now = time.time_ns()
        self.writer.add_message(channel_id=self.channels[topic], log_time=now, publish_time=now, data=data,
                                sequence=self.counts[topic])
        self.counts[topic] += 1

    def close(self) -> None:
        self.writer.finish()
        self._file.close()
        # After Ctrl-C the ROS context may be gone: report on stderr, not through rosout.
        print(f"taco recorder: wrote {self.out}: {self.counts}", file=sys.stderr)


def main(args=None) -> int:
    init_ros(args)
    node = Recorder()
    return run_node(node, lambda: rclpy.spin(node), node.close)

if __name__ == "__main__":
    sys.exit(main())
