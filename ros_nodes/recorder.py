"""Records ROS 2 topics to an MCAP file (ROS 2 CDR, `ros2msg` schemas): what `ros2 bag record -s mcap`
writes, readable by rosbag2's mcap plugin, Foxglove, and `mcap_ros2.reader`, with no rosbag2 install.

    python -m ros_nodes.recorder --ros-args -p out:=run.mcap -p topics:="['/taco/diagnostics', ...]"

Messages are taken serialized (raw subscriptions) and written as received: no decode/encode cost.
Topic types are looked up in the ROS graph; a topic that is not up yet is retried every second.

Nothing delivered is lost: each subscription queues up to `depth` messages while the recorder is busy,
and on SIGINT/SIGTERM it first takes what is still queued or arriving (`Recorder.drain`), then finishes,
flushes and closes the file. Two limits belong to DDS, not to the recorder: what a publisher sends
before the recorder has matched it is only delivered for latched topics, and a reliable message the
transport dropped is resent at the publisher's next heartbeat, which may come after the recorder has
stopped. A node that must be recorded whole waits for the recorder's status before it starts (the sim
node's `wait_for_recorder`) and for its subscribers' acknowledgements before it exits.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

import rclpy
from mcap.writer import Writer
from rclpy.node import Node
try:
    from rclpy.event_handler import SubscriptionEventCallbacks
except ImportError:  # Humble: rclpy.event_handler is Iron's name for rclpy.qos_event
    from rclpy.qos_event import SubscriptionEventCallbacks
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import String

from ros_nodes.common import (EPISODE_TOPIC, INSTRUCTION_TOPIC, LATCHED_QOS, RECORDER_STATUS_TOPIC, RESET_TOPIC,
                              dumps, init_ros, run_node)
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
    """Subscribes to the run's topics and writes every message it takes to one MCAP file.

    Made once by `main`; `drain` and `close` are called once when the process is asked to stop.
    Publishes its state on /taco/recorder/status (latched): which topics have matched how many
    publishers, so a node that must not publish before it is recorded (the sim node with
    `wait_for_recorder`) can wait for it.
    """

    def __init__(self):
        super().__init__("taco_recorder")
        self.out = Path(self.declare_parameter("out", "taco_run.mcap").value)
        profile = self.declare_parameter("profile", "aloha_viperx").value
        sink = self.declare_parameter("sink", "interbotix").value
        cameras = self.declare_parameter("cameras", ["cam_high"]).value
        # Messages a subscription holds for the recorder while it is busy; more are dropped oldest first.
        self.depth = int(self.declare_parameter("depth", 1000).value)
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
        # Topic -> publishers its subscription is matched with now.
        self.matched: dict[str, int] = {}
        self.taken = 0
        self._subs = []
        self.status_pub = self.create_publisher(String, RECORDER_STATUS_TOPIC, LATCHED_QOS)
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
            self.matched[topic] = 0
            if "image" in topic:
                # Cameras publish best effort (a reliable reader would match no camera), queued here
                # so that a busy recorder does not skip frames.
                qos = QoSProfile(depth=self.depth, reliability=ReliabilityPolicy.BEST_EFFORT)
            elif topic in LATCHED_TOPICS:
                # Latched: also what was published before the recorder matched the publisher.
                qos = QoSProfile(depth=self.depth, reliability=ReliabilityPolicy.RELIABLE,
                                 durability=DurabilityPolicy.TRANSIENT_LOCAL)
            else:
                qos = QoSProfile(depth=self.depth, reliability=ReliabilityPolicy.RELIABLE)
            events = SubscriptionEventCallbacks(matched=lambda status, t=topic: self._matched(t, status))
            self._subs.append(self.create_subscription(_import_type(type_name), topic,
                                                       lambda data, t=topic: self._write(t, data), qos, raw=True,
                                                       event_callbacks=events))
            self.get_logger().info(f"recording {topic} ({type_name})")
        self._publish_status()

    def _matched(self, topic: str, status) -> None:
        self.matched[topic] = int(status.current_count)
        self.get_logger().info(f"{topic}: {status.current_count} publisher(s) matched")
        self._publish_status()

    def _publish_status(self) -> None:
        self.status_pub.publish(String(data=dumps({"out": str(self.out), "matched": self.matched,
                                                     "node": self.get_fully_qualified_name()})))

    def _write(self, topic: str, data: bytes) -> None:
        now = time.time_ns()
        self.writer.add_message(channel_id=self.channels[topic], log_time=now, publish_time=now, data=data,
                                sequence=self.counts[topic])
        self.counts[topic] += 1
        self.taken += 1

    def drain(self, quiet_s: float = 0.5, limit_s: float = 10.0) -> None:
        """Takes what the subscriptions still hold or are still receiving after a stop was asked for.

        Messages published before the stop may be queued in the subscriptions (a busy recorder lags)
        or still on their way through the transport; they are taken until none has come for
        `quiet_s`, for at most `limit_s`.
        """
        end = time.monotonic() + limit_s
        last, taken = time.monotonic(), self.taken
        while time.monotonic() < end and time.monotonic() - last < quiet_s:
            rclpy.spin_once(self, timeout_sec=0.02)
            if self.taken != taken:
                last, taken = time.monotonic(), self.taken

    def close(self) -> None:
        self.writer.finish()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        # After Ctrl-C the ROS context may be gone: report on stderr, not through rosout.
        print(f"taco recorder: wrote {self.out}: {self.counts}", file=sys.stderr)


def main(args=None) -> int:
    init_ros(args)
    node = Recorder()
    stop = threading.Event()

    def request_stop(signum, frame):
        stop.set()

    # A stop is a flag, not an exception: an exception could land in the middle of writing a message.
    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    def spin() -> None:
        while rclpy.ok() and not stop.is_set():
            rclpy.spin_once(node, timeout_sec=0.1)
        if rclpy.ok():
            node.drain()

    return run_node(node, spin, node.close)


if __name__ == "__main__":
    sys.exit(main())
