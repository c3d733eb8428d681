"""The MuJoCo simulation as a ROS 2 node: publishes joint states and camera images the way the robot's
drivers do, takes commands through the same sinks, and runs episodes back to back.

    python -m ros_nodes.sim_node --ros-args -p task:=transfer_cube -p sink:=interbotix -p episodes:=5

Per episode it publishes a std_msgs/Header on /taco/reset (frame_id = episode number) when it starts and
a JSON summary on /taco/sim/episode when it ends. Physics waits for the first command, so a policy node
that is still loading does not lose the first episode; with `wait_for_listeners` it also waits for that
many subscribers of the episode summaries; with `wait_for_recorder` it also waits until the
recorder has matched every topic of the run (its /taco/recorder/status) and its own joint state and
camera publishers have matched every subscriber the graph shows, so the recording holds the episode
from its first step, and before exiting it waits until every matched subscriber has
acknowledged the episode summaries, resets and joint states.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import rclpy
from rclpy.duration import Duration
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Header, String

from hardware.interface import CameraConfig
from hardware.profiles import get_profile
from ros_nodes.common import (EPISODES_QOS, EPISODE_TOPIC, HEARTBEAT_TOPIC, IMAGE_QOS, IMAGE_TOPIC, INSTRUCTION_TOPIC,
                              LATCHED_QOS, RECORDER_STATUS_TOPIC, RESET_TOPIC, dumps, init_ros, joint_state_topic,
                              run_node)
from ros_nodes.convert import image_to_cdr, joint_state_msg, to_stamp
from ros_nodes.sinks import CommandSource, topics


def _qualified(namespace: str, name: str) -> str:
    """A node's fully qualified name, as `Node.get_fully_qualified_name` gives it."""
    return f"{namespace.rstrip('/')}/{name}"


class SimNode(Node):
    def __init__(self):
        super().__init__("taco_sim")
        p = self.declare_parameter
        self.task = p("task", "transfer_cube").value
        self.seed = int(p("seed", 0).value)
        self.episodes = int(p("episodes", 0).value)  # 0: run until stopped
        self.profile = get_profile(p("profile", "aloha_viperx").value)
        self.rate = float(p("rate", self.profile.control_hz).value)
        cameras = list(p("cameras", ["cam_high"]).value)
        height, width = int(p("image_height", 240).value), int(p("image_width", 320).value)
        self.camera_every = max(1, round(self.rate / float(p("camera_hz", 25.0).value)))
        self.max_steps = int(p("max_steps", 0).value) or None
        self.wait_for_commands = bool(p("wait_for_commands", True).value)
        # Start the first episode only once the recorder has matched every topic of the run.
        self.wait_for_recorder = bool(p("wait_for_recorder", False).value)
        # Start the first episode only once this many subscribers have matched the episode summaries' topic
        # (a test harness or a script that reads them): a short episode can end before discovery does.
        self.wait_for_listeners = int(p("wait_for_listeners", 0).value)
        # The operator's heartbeat the policy node requires, at this rate (Hz; 0: none). In simulation the
        # sim stands in for the operator's console.
        heartbeat_hz = float(p("heartbeat_hz", 10.0).value)
        self.heartbeat_every = max(1, round(self.rate / heartbeat_hz)) if heartbeat_hz > 0 else 0
        sink = p("sink", "interbotix").value

        from sim.env import AlohaSimEnv  # mujoco stays out of the import path of the other nodes

        self.env = AlohaSimEnv(self.task, cameras=tuple(CameraConfig(c, height, width) for c in cameras),
                               max_steps=self.max_steps)
        self.cameras = [(c, height, width) for c in cameras]
        self.source = CommandSource(self, sink, self.profile)
        self.state_pubs = [self.create_publisher(JointState, joint_state_topic(ns), 10)
                           for ns in self.profile.arm_namespaces]
        self.image_pubs = {c: self.create_publisher(Image, IMAGE_TOPIC.format(camera=c), IMAGE_QOS) for c in cameras}
        self.reset_pub = self.create_publisher(Header, RESET_TOPIC, LATCHED_QOS)
        self.heartbeat_pub = self.create_publisher(Header, HEARTBEAT_TOPIC, 10)
        self.episode_pub = self.create_publisher(String, EPISODE_TOPIC, EPISODES_QOS)
        instruction = self.create_publisher(String, INSTRUCTION_TOPIC, LATCHED_QOS)
        instruction.publish(String(data=self.env.task.instruction))
        # Topics the recorder must have matched before the first step: ours, and the policy's commands.
        self.run_topics = [*(joint_state_topic(ns) for ns in self.profile.arm_namespaces),
                           *(IMAGE_TOPIC.format(camera=c) for c in cameras), RESET_TOPIC, EPISODE_TOPIC,
                           *(topics(sink, self.profile) if self.wait_for_commands else ())]
        self.recorder_matched: dict[str, int] = {}
        self.recorder_node = ""
        if self.wait_for_recorder:
            self.create_subscription(String, RECORDER_STATUS_TOPIC, self._on_recorder_status, LATCHED_QOS)
        self.episode = -1
        self.finished = False
        self.started = False
        self._start_episode()
        self.timer = self.create_timer(1.0 / self.rate, self._tick)

    def _on_recorder_status(self, msg: String) -> None:
        status = json.loads(msg.data)
        self.recorder_matched, self.recorder_node = status["matched"], status.get("node", "")

    def recorder_waits_for(self) -> list[str]:
        """Topics of the run the recorder records but has not matched a publisher on yet (all of them
        until its status arrives), and topics of ours whose publisher has not yet matched the recorder's
        subscription: a reader matches a writer before the writer matches it, and a volatile message
        published in between does not reach it. The graph (from ROS's discovery topic) and the writer's
        match count (from DDS's endpoint discovery) arrive on their own schedules, so ours waits until the
        graph shows the recorder's subscription and the writer has matched every subscription it shows."""
        if not self.recorder_matched:
            return list(self.run_topics)
        waiting = [t for t in self.run_topics if t in self.recorder_matched and not self.recorder_matched[t]]
        ours = {**{joint_state_topic(ns): pub for ns, pub in zip(self.profile.arm_namespaces, self.state_pubs)},
                **{IMAGE_TOPIC.format(camera=c): pub for c, pub in self.image_pubs.items()}}
        for topic, pub in ours.items():
            if topic not in self.recorder_matched:
                continue
            readers = self.get_subscriptions_info_by_topic(topic)
            shown = any(_qualified(r.node_namespace, r.node_name) == self.recorder_node for r in readers)
            if not shown or pub.get_subscription_count() < len(readers):
                waiting.append(topic)
        return waiting

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Waits until every matched subscriber has acknowledged the episode summaries, the resets and the
        joint states: a reliable sample the transport dropped is only resent at the writer's next heartbeat
        (Fast DDS: every 3 s), and a writer destroyed before then takes it with it."""
        deadline = time.monotonic() + timeout_s
        return all(pub.wait_for_all_acked(Duration(seconds=max(0.0, deadline - time.monotonic())))
                   for pub in (self.episode_pub, self.reset_pub, *self.state_pubs))

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _start_episode(self) -> None:
        self.episode += 1
        self.env.reset(self.seed + self.episode)
        self.held = self.env.state().astype(np.float64)
        self.episode_started = time.monotonic()
        self.commanded_steps = 0
        self.reset_pub.publish(Header(stamp=to_stamp(self._now()), frame_id=str(self.episode)))
        self.ticks = 0
        self._publish_observation(self._now())

    def _publish_observation(self, now: float) -> None:
        state = self.env.state()
        per_arm = len(self.profile.arm_joint_names) + 1
        names = [*self.profile.arm_joint_names, self.profile.gripper_state_joint, "right_finger"]
        for arm, pub in enumerate(self.state_pubs):
            part = state[arm * per_arm: (arm + 1) * per_arm].astype(np.float64)
            finger = float(self.profile.gripper_state.to_joint(part[-1]))
            pub.publish(joint_state_msg(names, [*part[:-1], finger, -finger], now))
        if self.heartbeat_every and self.ticks % self.heartbeat_every == 0:
            self.heartbeat_pub.publish(Header(stamp=to_stamp(now), frame_id="taco_sim"))
        if self.ticks % self.camera_every == 0:
            for camera, height, width in self.cameras:
                self.image_pubs[camera].publish(image_to_cdr(self.env.render(camera, height, width), now, camera))

    def _tick(self) -> None:
        if self.finished:
            return
        now = self._now()
        command = self.source.command(now, self.env.state().astype(np.float64))
        unrecorded = self.recorder_waits_for() if self.wait_for_recorder and not self.started else []
        if unrecorded:
            self.get_logger().info(f"waiting for the recorder to match {unrecorded}", throttle_duration_sec=5.0)
        unheard = not self.started and self.episode_pub.get_subscription_count() < self.wait_for_listeners
        if ((command is None and self.wait_for_commands) or unrecorded or unheard) and not self.started:
            self._publish_observation(now)  # keep the observation fresh while the policy and recorder come up
            self.ticks += 1
            return
        self.started = True
        if command is not None:
            self.held = command
            self.commanded_steps += 1
        _, _, done, info = self.env.step(self.held)
        self.ticks += 1
        self._publish_observation(self._now())
        if done:
            summary = {"episode": self.episode, "seed": self.seed + self.episode, "task": self.task,
                       "success": bool(info["success"]), "best_stage": int(self.env.best_stage),
                       "max_stage": int(self.env.task.max_reward),
                       "steps": int(info["steps"]), "commanded_steps": self.commanded_steps,
                       "wall_s": round(time.monotonic() - self.episode_started, 3),
                       "received_commands": self.source.received, "rejected_commands": self.source.rejected}
            self.episode_pub.publish(String(data=dumps(summary)))
            self.get_logger().info(f"episode {summary}")
            if self.episodes and self.episode + 1 >= self.episodes:
                self.finished = True
                return
            self._start_episode()


def main(args=None) -> int:
    init_ros(args)
    node = SimNode()

    def spin() -> None:
        while rclpy.ok() and not node.finished:
            rclpy.spin_once(node, timeout_sec=0.1)
        if not node.flush():
            node.get_logger().warning("a subscriber did not acknowledge the episodes, resets or states within 10 s")
        # Subscribers not matched yet get the latched summaries if they match within this second.
        end = time.monotonic() + 1.0
        while rclpy.ok() and time.monotonic() < end:
            rclpy.spin_once(node, timeout_sec=0.1)

    return run_node(node, spin, node.env.close)

if __name__ == "__main__":
    sys.exit(main())
