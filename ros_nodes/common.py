"""Topic names, QoS profiles and the node entry-point plumbing shared by the nodes."""

from __future__ import annotations

import json

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

INSTRUCTION_TOPIC = "/taco/instruction"
RESET_TOPIC = "/taco/reset"
ESTOP_TOPIC = "/taco/estop"
ESTOP_RESET_TOPIC = "/taco/estop_reset"
# The e-stop latch's state (JSON, latched): {"latched", "id", "reason", "stamp", "refused"}.
ESTOP_STATE_TOPIC = "/taco/estop_state"
# The operator's heartbeat (std_msgs/Header): without one within `heartbeat_timeout`, the robot holds.
HEARTBEAT_TOPIC = "/taco/heartbeat"
DIAGNOSTICS_TOPIC = "/taco/diagnostics"
# The standard diagnostics topic (diagnostic_msgs/DiagnosticArray), which diagnostic_aggregator and rqt read.
ROS_DIAGNOSTICS_TOPIC = "/diagnostics"
# The failure monitor's state (JSON, latched, on each change): {"name", "action", "alarmed", "holding", ...}.
MONITOR_TOPIC = "/taco/monitor"
# The operator's resume after a monitor alarm (std_srvs/Trigger).
MONITOR_RESUME_SERVICE = "/taco/monitor_resume"
EPISODE_TOPIC = "/taco/sim/episode"
# The recorder's state (JSON, latched): {"out": path, "matched": {topic: publishers matched}}.
RECORDER_STATUS_TOPIC = "/taco/recorder/status"
IMAGE_TOPIC = "/{camera}/image_raw"

# Cameras: newest frame only, never a queue of old ones (as robot camera drivers publish).
IMAGE_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT, history=HistoryPolicy.KEEP_LAST)
# Late joiners still get the instruction and the finished episodes.
LATCHED_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
EPISODES_QOS = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE,
                          durability=DurabilityPolicy.TRANSIENT_LOCAL)


def joint_state_topic(namespace: str) -> str:
    return f"/{namespace}/joint_states"


def dumps(data: dict) -> str:
    return json.dumps(data, separators=(",", ":"), allow_nan=False, default=float)


def init_ros(args=None) -> None:
    """rclpy.init without rclpy's signal handlers: Ctrl-C and SIGTERM raise KeyboardInterrupt in the
    main thread, so a node's `finally` runs with the context still valid (the recorder finishes its
    MCAP file, the sim closes its renderer) instead of callbacks failing on a shut-down context."""
    import signal

    import rclpy
    from rclpy.signals import SignalHandlerOptions

    def _interrupt(signum, frame):
        raise KeyboardInterrupt

    # SIGINT too: a shell starting a node in the background leaves SIGINT ignored, which Python keeps.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)


def run_node(node, spin, release=None) -> int:
    """Runs `spin()` until it returns, Ctrl-C/SIGTERM or an outside shutdown; then `release()`, destroys
    the node and shuts rclpy down. Returns spin's exit code (0 when it returns None or is interrupted)."""
    import rclpy
    from rclpy.executors import ExternalShutdownException

    try:
        return spin() or 0
    except (KeyboardInterrupt, ExternalShutdownException):
        return 0
    finally:
        if release is not None:
            release()
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
