"""Observation-to-command latency through ROS 2 on loopback: the policy node at N candidates.

    .venv/bin/python benchmarks/ros_latency.py --policy default --n 16 --json build/ros_latency.json [--quick]

This process plays the robot: it publishes both arms' joint states and a 480x640 camera frame at
50 Hz, stamped when published, and the policy node (a separate process, as on a robot) answers
through the interbotix sink. For every decision the node publishes diagnostics right after the
first command computed from it (stamped with that control step's time); latency = the arrival here of
the last of that step's four command messages - the observation's stamp, so it holds transport in,
waiting for a free inference slot, inference, waiting for the control step, and transport out. The
node's own inference time is reported beside it (same decisions), so the overhead is their
difference; the part of it spent in the node, from the frame's arrival there to the command's
publication, is reported too (the rest is the frame's transport, about 4 ms for a 480x640 frame over
Fast DDS on loopback here, and the command's). p50/p99 over all decisions after a warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default="default")
    parser.add_argument("--verifier", default="none")
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--image", default="480x640", help="published camera frame, HxW")
    parser.add_argument("--quick", action="store_true", help="8 s of decisions")
    parser.add_argument("--burners", type=int, default=0,
                        help="CPU-bound processes running beside the node while it is measured")
    parser.add_argument("--hold", action="store_true",
                        help="measure the node holding: no operator heartbeat after the warm-up (command rate only)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    seconds = 8.0 if args.quick else args.seconds
    height, width = (int(v) for v in args.image.split("x"))

    from ros_nodes.launcher import ros_env

    # The DDS settings `taco ros` gives its nodes (shared memory for camera frames), here and in the node.
    os.environ.update(ros_env("LOCALHOST", domain_id=random.randint(101, 200)))
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import Header, String

    from hardware.profiles import ALOHA_VIPERX as PROFILE
    from ros_nodes.common import (DIAGNOSTICS_TOPIC, HEARTBEAT_TOPIC, IMAGE_QOS, IMAGE_TOPIC, INSTRUCTION_TOPIC,
                                  LATCHED_QOS, joint_state_topic)
    from ros_nodes.convert import image_to_cdr, joint_state_msg
    from ros_nodes.launcher import node_command
    from policies.shipped import resolve_policy

    policy = resolve_policy(args.policy)
    rclpy.init()
    node = rclpy.create_node("taco_latency_bench")
    states = [node.create_publisher(JointState, joint_state_topic(ns), 10) for ns in PROFILE.arm_namespaces]
    camera = node.create_publisher(Image, IMAGE_TOPIC.format(camera="cam_high"), IMAGE_QOS)
    heartbeat = node.create_publisher(Header, HEARTBEAT_TOPIC, 10)  # the operator's: without it the node holds
    node.create_publisher(String, INSTRUCTION_TOPIC, LATCHED_QOS).publish(String(data="transfer the cube"))
    frame = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    names = [*PROFILE.arm_joint_names, PROFILE.gripper_state_joint, "right_finger"]
    home = np.asarray(PROFILE.home)
    rows, lock, holding = [], threading.Lock(), threading.Event()

    def publish():
        now = node.get_clock().now().nanoseconds * 1e-9
        for arm, pub in enumerate(states):
            finger = float(PROFILE.gripper_state.to_joint(home[7 * arm + 6]))
            pub.publish(joint_state_msg(names, [*home[7 * arm: 7 * arm + 6], finger, -finger], now))
        # Serialized directly, as a C++ camera driver would: rclpy's own Image conversion costs ~30 ms
        # for 480x640 and would be counted as latency.
        camera.publish(image_to_cdr(frame, now, "cam_high"))
        if not holding.is_set():
            heartbeat.publish(Header(stamp=node.get_clock().now().to_msg()))

    last = {}  # the node's latest diagnostics (its counters)

    from ros_nodes.sinks import _interbotix_types, topics

    commands = {t: [] for t in topics("interbotix", PROFILE)}  # arrival times here, per command topic
    for topic, kind in zip(commands, _interbotix_types() * 2):
        node.create_subscription(kind, topic, lambda m, t=topic: commands[t].append(
            node.get_clock().now().nanoseconds * 1e-9), 100)

    def on_diagnostics(msg):
        arrived = node.get_clock().now().nanoseconds * 1e-9
        data = json.loads(msg.data)
        with lock:
            last.update(data)
        if data.get("decision"):
            with lock:
                rows.append({"observation_stamp": data["observation_stamp"], "step_stamp": data["stamp"],
                             "diagnostics_latency_ms": (arrived - data["observation_stamp"]) * 1e3,
                             "engine_ms": data["timings_ms"]["total"], "n": data["n"],
                             **{k: data[k] for k in ("wait_for_inference_ms", "inference_ms", "wait_for_tick_ms",
                                                      "image_delay_ms")}})

    node.create_timer(1.0 / PROFILE.control_hz, publish)
    node.create_subscription(String, DIAGNOSTICS_TOPIC, on_diagnostics, 100)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    proc = subprocess.Popen(node_command("ros_nodes.policy_node", {"policy": policy, "verifier": args.verifier,
                                                                   "n": args.n, "sink": "interbotix"}),
                            env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while len(rows) < 5:  # warm-up: the first decisions include session start-up
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"policy node did not start deciding:\n{proc.stderr.read()[-3000:]}")
            time.sleep(0.1)
        if args.hold:
            holding.set()  # the heartbeat stops: the node holds after its heartbeat_timeout (0.5 s)
            deadline = time.monotonic() + 10
            while "operator heartbeat" not in str(last.get("hold_reason")):
                if time.monotonic() > deadline:
                    raise SystemExit(f"the node did not hold without a heartbeat; its last diagnostics: {last}")
                time.sleep(0.05)
        burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.burners)]
        with lock:
            rows.clear()
            before = dict(last)
        start = node.get_clock().now().nanoseconds * 1e-9
        time.sleep(seconds)
        end = node.get_clock().now().nanoseconds * 1e-9
        with lock:
            measured = list(rows)
            after = dict(last)
    finally:
        for burner in locals().get("burners", []):
            burner.kill()
            burner.wait()
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        executor.shutdown()
        spinner.join(timeout=5)
        node.destroy_node()
        rclpy.shutdown()

    # The step's command: on each topic, the first message to arrive after the step began.
    for r in measured:
        sent = [next((t for t in times if t >= r["step_stamp"]), np.nan) for times in commands.values()]
        r["latency_ms"] = (max(sent) - r["observation_stamp"]) * 1e3
        r["command_out_ms"] = (max(sent) - r["step_stamp"]) * 1e3
        # The first of the four: the rest is this process taking them one by one through rclpy's executor
        # (a C++ controller takes each on its own).
        r["first_command_out_ms"] = (min(sent) - r["step_stamp"]) * 1e3
    measured = [r for r in measured if np.isfinite(r["latency_ms"])]
    # The command stream itself (one arm's joint group topic) over the measured seconds.
    sent = np.array([t for t in next(iter(commands.values())) if start <= t <= end])
    gaps = np.diff(sent) * 1e3
    rate = {"commands_per_s": len(sent) / (end - start), "command_interval_p50_ms": float(np.median(gaps)),
            "command_interval_p99_ms": float(np.percentile(gaps, 99)), "command_interval_max_ms": float(gaps.max())}
    for r in measured:
        r["overhead_ms"] = r["latency_ms"] - r["inference_ms"]
        # In the node: from the frame's arrival to the worker's start, and from its end to the control step.
        r["in_node_ms"] = r["wait_for_inference_ms"] - r["image_delay_ms"] + r["wait_for_tick_ms"]
    columns = ["latency_ms", "overhead_ms", "image_delay_ms", "in_node_ms", "command_out_ms", "first_command_out_ms",
               "wait_for_inference_ms", "inference_ms", "engine_ms", "wait_for_tick_ms", "diagnostics_latency_ms"]
    result = {"policy": policy, "verifier": args.verifier, "n": args.n, "image": [height, width],
              "decisions": len(measured), "seconds": seconds, "burners": args.burners, "hold": args.hold, **rate}
    for c in columns if measured else ():
        values = np.array([r[c] for r in measured])
        result[f"{c[:-3]}_p50_ms"], result[f"{c[:-3]}_p99_ms"] = (float(np.percentile(values, q)) for q in (50, 99))
    # What the node did besides deciding, over the measured seconds (its counters, from its diagnostics).
    for key in ("ticks", "held_ticks", "invalidations", "discarded_decisions", "dropped_actions"):
        result[key] = after.get(key, 0) - before.get(key, 0)
    result["asked"] = {k: v - before.get("asked", {}).get(k, 0) for k, v in after.get("asked", {}).items()}
    for kind in ("held", "invalidated"):
        counts = {k: v - before.get("reasons", {}).get(kind, {}).get(k, 0)
                  for k, v in after.get("reasons", {}).get(kind, {}).items()}
        result[f"{kind}_by_reason"] = {k: v for k, v in counts.items() if v}
    print(f"N={args.n}, {len(measured)} decisions over {seconds:g} s, {height}x{width} camera frames, "
          f"{args.burners} CPU burners{', holding' if args.hold else ''}; p50 / p99 ms")
    print(f"{'commands':<28} {rate['commands_per_s']:>8.1f} /s, interval {rate['command_interval_p50_ms']:.1f} / "
          f"{rate['command_interval_p99_ms']:.1f} ms, max {rate['command_interval_max_ms']:.1f} ms")
    labels = {} if not measured else {"latency": "observation -> command", "inference": "  inference (worker thread)",
              "engine": "    of which Engine.infer", "overhead": "  over inference",
              "image_delay": "    frame transport in", "in_node": "    in the node", "command_out": "    command out",
              "first_command_out": "      its first message",
              "wait_for_inference": "  wait for inference start", "wait_for_tick": "  wait for control step"}
    for key, label in labels.items():
        print(f"{label:<28} {result[f'{key}_p50_ms']:>8.1f} {result[f'{key}_p99_ms']:>8.1f}")
    print(f"ticks {result['ticks']}, held {result['held_ticks']}, invalidations {result['invalidations']}, "
          f"decisions discarded {result['discarded_decisions']}, actions dropped {result['dropped_actions']}"
          f"\nnext chunk asked for at: " + ", ".join(f"{k} {v}" for k, v in result["asked"].items())
          + "".join(f"\n  {kind}: {reason}: {k}" for kind in ("held", "invalidated")
                    for reason, k in sorted(result[f"{kind}_by_reason"].items())))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
