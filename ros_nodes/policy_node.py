"""The policy node: robot observations in, safe commands out at the control rate.

    python -m ros_nodes.policy_node --ros-args -p policy:=default -p verifier:=cfn -p n:=16 -p sink:=interbotix

Subscribes to `/<ns>/joint_states` per arm, `/<camera>/image_raw` per camera of the bundle (best effort,
depth 1), `/taco/instruction` (std_msgs/String), `/taco/reset` (a new episode: forget the chunk, re-anchor
the safety filter on the measured position), `/taco/estop` (String reason; latches) and `/taco/estop_reset`.
Inference runs on a worker thread (`runtime.realtime`); a timer publishes one command per tick through the
sink, always through the safety layer, and a JSON diagnostics message per new decision on /taco/diagnostics
(chosen index, scores, latency per stage, holds, rejected messages).

It is a lifecycle node: the engine is made in on_configure and released in on_cleanup; with
`autostart` (default) it configures and activates itself. Setting the `verifier` parameter swaps the
verifier between two steps; a bundle that does not load or does not belong to the policy is refused and
the old verifier stays.

With `server:=ws://HOST:8000` (and `api_key_file` when the server wants a key) the node runs no model:
each decision is asked of a `taco serve` server (`serving.RemoteEngine`), which chooses the policy and the
verifier; the watchdog's inference-time and staleness rules then count the network time too, since they
time the whole request.
"""

from __future__ import annotations

import sys

import numpy as np
import rclpy
from rcl_interfaces.msg import SetParametersResult
from rclpy.lifecycle import LifecycleNode, State, TransitionCallbackReturn
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Empty, Header, String

from hardware.profiles import get_profile
from hardware.robot_io import StateAssembler, assemble_observation
from hardware.safety import FilterReport, SafetyLayer, WatchdogConfig, preview
from policies.errors import SpecError
from policies.shipped import resolve_policy
from ros_nodes.common import (DIAGNOSTICS_TOPIC, ESTOP_RESET_TOPIC, ESTOP_TOPIC, IMAGE_QOS, IMAGE_TOPIC,
                              INSTRUCTION_TOPIC, LATCHED_QOS, RESET_TOPIC, dumps, init_ros, joint_state_topic,
                              run_node)
from ros_nodes.convert import image_from_msg, to_seconds
from ros_nodes.sinks import SINKS, Sink
from runtime.engine import Engine, EngineConfig
from runtime.executor import AsyncConfig, ExecutorConfig
from runtime.realtime import RealtimeExecutor
from runtime.sessions import SessionConfig
from verifiers.shipped import resolve_verifier


class PolicyNode(LifecycleNode):
    def __init__(self):
        super().__init__("taco_policy")
        p = self.declare_parameter
        p("policy", "default")
        p("verifier", "none")
        p("n", 1)
        p("execute", 8)
        p("rate", 0.0)  # Hz; 0: the robot profile's control rate
        p("profile", "aloha_viperx")
        p("sink", "interbotix")
        p("task", "")  # instruction used until one arrives on /taco/instruction
        p("max_observation_age", 0.2)
        p("max_inference_time", 0.5)
        p("provider", "cpu")
        p("threads", 1)
        p("seed", 0)
        p("server", "")  # ws://HOST:PORT of a `taco serve` server: inference there instead of here
        p("api_key_file", "")
        # With a server: send camera frames fitted to the policy's input size (25x fewer bytes for 480x640
        # into 96x128), as openpi's clients do; false sends them as captured.
        p("resize_on_client", True)
        # Real-time chunking (runtime.executor.AsyncConfig): "auto" (on when the policy takes it), "on", "off";
        # the executor plans for this percentile of the measured inference delays (network included);
        # rtc_horizon: LeRobot's execution_horizon, 0 for all that is left of the executing chunk.
        p("rtc", "auto")
        p("delay_percentile", 95.0)
        p("rtc_horizon", 0)
        self.engine: Engine | None = None
        self.executor_: RealtimeExecutor | None = None
        self.timer = None
        self._subs, self._pubs = [], []
        self.add_on_set_parameters_callback(self._on_parameters)

    # -- lifecycle ---------------------------------------------------------------------------------

    def on_configure(self, state: State) -> TransitionCallbackReturn:
        get = lambda name: self.get_parameter(name).value  # noqa: E731
        try:
            self.profile = get_profile(get("profile"))
            if get("sink") not in SINKS:
                raise ValueError(f"sink: must be one of {', '.join(SINKS)}, got {get('sink')!r}")
            if get("server"):
                from serving.client import RemoteEngine, read_api_key

                policy = get("server")
                self.engine = RemoteEngine(policy, api_key=read_api_key(get("api_key_file")),
                                           resize_on_client=bool(get("resize_on_client")))
            else:
                policy = resolve_policy(get("policy"))
                session = SessionConfig(provider=get("provider"), intra_op_threads=int(get("threads")))
                self.engine = Engine(policy, resolve_verifier(get("verifier"), policy), EngineConfig(session=session))
            rtc = get("rtc")
            if rtc not in ("auto", "on", "off"):
                raise ValueError(f"rtc: must be auto, on or off, got {rtc!r}")
            rtc = bool(getattr(self.engine.manifest, "rtc", False)) if rtc == "auto" else rtc == "on"
            timing = AsyncConfig(rtc=rtc, percentile=float(get("delay_percentile")),
                                 horizon=int(get("rtc_horizon")) or None)
            self.executor_ = RealtimeExecutor(self.engine, ExecutorConfig(n=int(get("n")), execute=int(get("execute"))),
                                              seed=int(get("seed")), clock=self._now, timing=timing)
        except Exception as exc:  # noqa: BLE001 - a bad parameter fails the transition with the reason logged
            self.get_logger().error(f"configure failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        self.policy_path = policy
        self.rate = float(get("rate")) or self.profile.control_hz
        self.safety = SafetyLayer(self.profile, WatchdogConfig(float(get("max_observation_age")),
                                                               float(get("max_inference_time"))))
        self.safety.dt = 1.0 / self.rate
        self.assembler = StateAssembler(self.profile)
        self.cameras = [c.name for c in self.engine.manifest.cameras]
        self.images: dict[str, tuple[np.ndarray, float]] = {}
        self.task = get("task")
        self.anchored = False  # the safety filter knows where the robot is
        self.stats = {"ticks": 0, "held_ticks": 0, "rejected_messages": 0, "decisions": 0, "inference_errors": 0}
        self.last_hold_reason: str | None = None
        self.last_rejection: str | None = None
        self._last_diagnostics = -np.inf
        self.reset_stamp = -np.inf
        self.image_delay_ms = float("nan")
        self.sink = Sink(self, get("sink"), self.profile)
        self._pubs = [self.create_publisher(String, DIAGNOSTICS_TOPIC, 10)]
        sub = self.create_subscription
        self._subs = [sub(JointState, joint_state_topic(ns), lambda m, a=arm: self._on_joint_state(a, m), 10)
                      for arm, ns in enumerate(self.profile.arm_namespaces)]
        self._subs += [sub(Image, IMAGE_TOPIC.format(camera=c), lambda m, c=c: self._on_image(c, m), IMAGE_QOS)
                       for c in self.cameras]
        # The instruction twice: transient-local to get a latched one sent before we started, volatile so
        # that a plain `ros2 topic pub` (volatile, incompatible with a transient-local reader) gets through.
        self._subs += [sub(String, INSTRUCTION_TOPIC, self._on_instruction, LATCHED_QOS),
                       sub(String, INSTRUCTION_TOPIC, self._on_instruction, 10),
                       sub(Header, RESET_TOPIC, self._on_reset, LATCHED_QOS),
                       sub(String, ESTOP_TOPIC, self._on_estop, 10),
                       sub(Empty, ESTOP_RESET_TOPIC, self._on_estop_reset, 10)]
        verifier = self.engine.verifier.name if self.engine.verifier is not None else "none"
        self.get_logger().info(f"configured: policy {policy} ({self.engine.manifest.fingerprint[:12]}), verifier "
                               f"{verifier}, n={get('n')}, sink {get('sink')}, {self.rate:g} Hz")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        self.timer = self.create_timer(1.0 / self.rate, self._tick)
        return super().on_activate(state)

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        if self.timer is not None:
            self.destroy_timer(self.timer)
            self.timer = None
        return super().on_deactivate(state)

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def _release(self) -> None:
        if self.timer is not None:
            self.destroy_timer(self.timer)
            self.timer = None
        for sub in self._subs:
            self.destroy_subscription(sub)
        for pub in self._pubs + getattr(getattr(self, "sink", None), "_pubs", []):
            self.destroy_publisher(pub)
        self._subs, self._pubs = [], []
        if self.executor_ is not None:
            self.executor_.close()
        self.executor_, self.engine = None, None

    # -- inputs ------------------------------------------------------------------------------------

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _reject(self, what: str) -> None:
        self.stats["rejected_messages"] += 1
        self.last_rejection = what
        self.get_logger().warning(f"rejected: {what}", throttle_duration_sec=1.0)

    def _on_joint_state(self, arm: int, msg: JointState) -> None:
        try:
            self.assembler.update(arm, msg.name, msg.position, to_seconds(msg.header.stamp))
        except SpecError as exc:
            self._reject(str(exc))

    def _on_image(self, camera: str, msg: Image) -> None:
        try:
            stamp = to_seconds(msg.header.stamp)
            self.images[camera] = (image_from_msg(msg, IMAGE_TOPIC.format(camera=camera)), stamp)
            # How old frames are when this node gets to them (transport + executor queueing).
            self.image_delay_ms = (self._now() - stamp) * 1e3
        except SpecError as exc:
            self._reject(str(exc))

    def _on_instruction(self, msg: String) -> None:
        self.task = msg.data

    def _on_reset(self, msg: Header) -> None:
        if self.executor_ is not None:
            self.executor_.reset()
        self.anchored = False
        self.reset_stamp = to_seconds(msg.stamp)
        self.get_logger().info(f"reset (episode {msg.frame_id})")

    def _on_estop(self, msg: String) -> None:
        self.safety.estop(msg.data or "e-stop")
        self.get_logger().error(f"E-STOP latched: {msg.data}")

    def _on_estop_reset(self, msg: Empty) -> None:
        self.safety.reset_estop()
        self.anchored = False
        self.get_logger().warning("e-stop reset")

    def _on_parameters(self, params) -> SetParametersResult:
        for param in params:
            if param.name == "verifier" and self.engine is not None:
                if self.get_parameter("server").value:
                    return SetParametersResult(successful=False, reason="the policy server chooses the verifier "
                                                                        "(taco serve --verifier)")
                try:
                    self.engine.set_verifier(resolve_verifier(param.value, self.policy_path))
                except Exception as exc:  # noqa: BLE001 - refused; the old verifier stays
                    self.get_logger().error(f"verifier {param.value!r} refused: {exc}")
                    return SetParametersResult(successful=False, reason=str(exc))
                self.get_logger().info(f"verifier swapped to {param.value!r}")
            elif param.name not in ("verifier", "task") and self.engine is not None:
                return SetParametersResult(successful=False,
                                           reason=f"{param.name} is read at configure; cleanup and configure again")
        return SetParametersResult(successful=True)

    # -- control loop ------------------------------------------------------------------------------

    def _observation(self, now: float):
        """The latest complete observation, or None (and why) when something is missing."""
        if not self.assembler.ready:
            return None, "joint states of both arms not received yet"
        missing = [c for c in self.cameras if c not in self.images]
        if missing:
            return None, f"no image yet from {missing}"
        if not self.task:
            return None, "no task instruction (set the `task` parameter or publish /taco/instruction)"
        state, stamp = self.assembler.state()
        return assemble_observation(state, stamp, {c: self.images[c] for c in self.cameras}, self.task), None

    def _tick(self) -> None:
        now = self._now()
        self.stats["ticks"] += 1
        observation, why = self._observation(now)
        if observation is not None and now - observation.stamp <= self.safety.watchdog.max_observation_age:
            self.executor_.observe(observation)
        if not self.anchored:
            # No command before the filter knows where the robot is, and only from a state measured after a reset.
            if observation is None or observation.stamp < self.reset_stamp:
                self.last_hold_reason = why or "waiting for a state measured after the reset"
                if now - self._last_diagnostics >= self.diagnostics_period:
                    self._publish_diagnostics(None, now, FilterReport(held=True, reason=self.last_hold_reason))
                return
            self.safety.reset(observation.state)
            self.anchored = True
        tick = self.executor_.action(now)
        while self.executor_.errors:
            self.stats["inference_errors"] += 1
            self.get_logger().error(f"inference failed: {self.executor_.errors.popleft()}",
                                    throttle_duration_sec=1.0)
        command, report = self.safety.command(tick.action, now, None if observation is None else observation.stamp,
                                              tick.inference_elapsed or None)
        upcoming = None
        if self.sink.kind == "jtc" and not report.held:
            upcoming = preview(self.safety.filter, self.executor_.upcoming(self.sink_horizon), 1.0 / self.rate)
        self.sink.send(command, now, upcoming, 1.0 / self.rate)
        if report.held:
            self.stats["held_ticks"] += 1
            reason = report.reason if observation is not None else why
            if reason != self.last_hold_reason:
                self.get_logger().warning(f"holding: {reason}", throttle_duration_sec=1.0)
            self.last_hold_reason = reason
        else:
            self.last_hold_reason = None
        if tick.new_decision:
            self.stats["decisions"] += 1
        if tick.new_decision or now - self._last_diagnostics >= self.diagnostics_period:
            self._publish_diagnostics(tick if tick.new_decision else None, now, report)

    # Seconds between diagnostics when no new decision comes (so a holding node still reports why).
    diagnostics_period = 0.5
    # Most future points a trajectory sink sends.
    sink_horizon = 16

    def _publish_diagnostics(self, tick, now: float, report) -> None:
        self._last_diagnostics = now
        data = {"stamp": now, "held": report.held, "hold_reason": report.reason or self.last_hold_reason,
                "clamped": report.clamped, "rate_limited": report.rate_limited,
                "dropped_actions": self.executor_.dropped, "last_rejection": self.last_rejection,
                "verifier": None if self.engine.verifier is None else self.engine.verifier.name, **self.stats}
        if tick is not None:
            decision, observed = tick.decision, float(tick.decision.times[0])
            data.update({
                "decision": True,
                "observation_stamp": observed,
                # Observation -> this first command from it, and where that time went: waiting for the
                # inference slot, inference (stages in timings_ms), waiting for the control tick.
                "latency_ms": round((now - observed) * 1e3, 3),
                "wait_for_inference_ms": round((tick.started_at - observed) * 1e3, 3),
                "inference_ms": round((tick.finished_at - tick.started_at) * 1e3, 3),
                "wait_for_tick_ms": round((now - tick.finished_at) * 1e3, 3),
                "image_delay_ms": round(self.image_delay_ms, 3),
                "index": decision.index, "n": decision.n, "seed": decision.seed,
                "scores": None if decision.scores is None else [float(s) for s in decision.scores],
                "verifier": decision.verifier, "timings_ms": decision.timings,
            })
        else:
            data["decision"] = False
        self._pubs[0].publish(String(data=dumps(data)))


def main(args=None) -> int:
    init_ros(args)
    node = PolicyNode()
    autostart = node.declare_parameter("autostart", True).value

    def spin() -> int:
        if autostart:
            if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                return 1
            node.trigger_activate()
        rclpy.spin(node)
        return 0

    return run_node(node, spin, node._release)

if __name__ == "__main__":
    sys.exit(main())
