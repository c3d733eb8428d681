"""The policy node: robot observations in, safe commands out at the control rate.

    python -m ros_nodes.policy_node --ros-args -p policy:=default -p verifier:=cfn -p n:=16 -p sink:=interbotix

Subscribes to `/<ns>/joint_states` per arm, `/<camera>/image_raw` per camera of the bundle (best effort,
depth 1), `/taco/instruction` (std_msgs/String), `/taco/reset` (a new episode: forget the chunk, re-anchor
the safety filter on the measured position), `/taco/heartbeat` (std_msgs/Header, the operator's: without
one for `heartbeat_timeout` seconds the robot holds), `/taco/estop` (String reason; latches) and
`/taco/estop_reset` (String: the id of the latched e-stop, published on the latched `/taco/estop_state`).
Inference runs on a worker thread; a timer publishes one command per tick through the sink, always
through the safety layer, and a JSON diagnostics message per new decision on /taco/diagnostics (chosen
index, scores, latency per stage, holds, rejected messages, clock offsets), mirrored as the standard
diagnostic_msgs/DiagnosticArray on /diagnostics. With a failure monitor (`monitor`), its state is also
latched on /taco/monitor and an alarm does what `monitor_action` says (nothing, slow, hold until the
/taco/monitor_resume service). All of the logic is `runtime.control.ControlLoop`; this node converts
messages.

It is a lifecycle node: the engine is made in on_configure and released in on_cleanup; with
`autostart` (default) it configures and activates itself. Setting the `verifier` parameter checks the
bundle's manifest and its binding to the policy at once (a verifier of another policy, a bare ONNX file
or a missing bundle is refused, and the old verifier stays), then hashes and loads it on a thread of
its own while ticks go on, swaps it in and invalidates the chunk; if the load fails (a checksum that
does not match, a graph ONNX Runtime refuses), the parameter goes back to the old verifier, which never
stopped. (A second executor thread would do it too, but rclpy's MultiThreadedExecutor cannot keep up
with a 50 Hz tick and its messages on two cores: joint states queued 95 ms.) The robot's limits come from the profile, replaced joint by joint by
`robot_description` (the URDF text) or `urdf_file`, then `joint_limits_file` (ros2_control joint_limits
YAML) when given; position ranges are only ever narrowed.

With `server:=ws://HOST:8000` (and `api_key_file` when the server wants a key) the node runs no model:
each decision is asked of a `taco serve` server (`serving.RemoteEngine`), which chooses the policy and the
verifier; the watchdog's inference-time and staleness rules then count the network time too, since they
time the whole request.
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import numpy as np
import rclpy
from rcl_interfaces.msg import SetParametersResult
from rclpy.lifecycle import LifecycleNode, State, TransitionCallbackReturn
from sensor_msgs.msg import Image, JointState
from rclpy.parameter import Parameter
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from std_msgs.msg import Header, String
from std_srvs.srv import Trigger

from hardware.limits import limits_of
from hardware.profiles import get_profile
from hardware.safety import WatchdogConfig
from policies.errors import SpecError
from policies.guidance import DEFAULT_MAX_WEIGHT
from policies.bundle import load_policy_bundle
from policies.pruning import resolve_prune
from policies.shipped import resolve_policy
from policies.schema import content_id
from ros_nodes.common import (DIAGNOSTICS_TOPIC, EPISODE_TOPIC, EPISODES_QOS, ESTOP_RESET_TOPIC, ESTOP_STATE_TOPIC,
                              ESTOP_TOPIC, HEARTBEAT_TOPIC, IMAGE_QOS, IMAGE_TOPIC, INSTRUCTION_TOPIC, LATCHED_QOS,
                              MONITOR_RESUME_SERVICE, MONITOR_TOPIC, RESET_TOPIC, ROS_DIAGNOSTICS_TOPIC, dumps, init_ros,
                              joint_state_topic, run_node)
from ros_nodes.convert import image_from_msg, to_seconds
from ros_nodes.sinks import SINKS, Sink
from runtime.adaptive import Adaptive
from runtime.control import ControlConfig, ControlLoop
from runtime.engine import Engine, EngineConfig
from runtime.executor import AsyncConfig, ExecutorConfig
from runtime.monitor import check_monitor_use
from runtime.sessions import SessionConfig
from verifiers.shipped import resolve_monitor, resolve_verifier

# Parameters that may change on a running node; the others are read at configure.
LIVE_PARAMETERS = ("verifier", "task")


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
        p("task", "")  # instruction used until one arrives on /taco/instruction; settable live
        p("max_observation_age", 0.2)
        p("max_inference_time", 0.5)
        # An observation part stamped this far (s) after this computer's clock holds the robot (clock skew).
        p("max_future_stamp", 0.05)
        # Seconds without an operator heartbeat on /taco/heartbeat before the robot holds; 0: none required.
        p("heartbeat_timeout", 0.5)
        # The robot's URDF (the XML text, as robot_state_publisher's robot_description, or a file of it)
        # and a ros2_control joint_limits YAML file: they narrow the profile's limits (hardware.limits).
        p("robot_description", "")
        p("urdf_file", "")
        p("joint_limits_file", "")
        p("provider", "cpu")
        p("threads", 1)
        # Pruned best-of-N (policies.pruning): "k:m", every candidate runs k denoising steps and the
        # verifier's best m the rest; "auto" (2:1 for a flow policy without RTC inputs, with a verifier at
        # start and no monitor: policies.pruning.auto_prune); "none".
        p("prune", "auto")
        # Adaptive N (runtime.adaptive): "first:level", the other candidates only when the first round's
        # spread is above the level; "" for none.
        p("adaptive", "")
        p("seed", 0)
        p("server", "")  # ws://HOST:PORT of a `taco serve` server: inference there instead of here
        p("api_key_file", "")
        # With a server: send camera frames fitted to the policy's input size (25x fewer bytes for 480x640
        # into 96x128), as openpi's clients do; false sends them as captured.
        p("resize_on_client", True)
        # Real-time chunking (runtime.executor.AsyncConfig): "auto" (on when the policy takes it), "on", "off";
        # the executor plans for this percentile of the measured inference delays (network included);
        # rtc_horizon: LeRobot's execution_horizon, 0 for all that is left of the executing chunk;
        # rtc_max_weight: the guidance's cap (LeRobot's 10; `taco ros robot` passes 5, docs/async.md).
        p("rtc", "auto")
        p("delay_percentile", 95.0)
        p("rtc_horizon", 0)
        p("rtc_max_weight", DEFAULT_MAX_WEIGHT)
        # Decision log folder (verifiers.decision_log; "" none): each /taco/reset starts a logged episode,
        # named `<log_name>-<k>` (default: the profile's name); a simulation's summary on /taco/sim/episode
        # gives its outcome, a robot's is given afterwards with `taco label`. log_max_mb: bound on disk (0: none).
        p("log_decisions", "")
        p("log_max_mb", 0.0)
        p("log_name", "")
        # Failure monitor (runtime.monitor; docs/monitor.md): a monitor bundle calibrated for this policy, n and
        # verifier, or "monitor" (the policy's shipped one), "none". Its state goes to /diagnostics and the
        # latched /taco/monitor; monitor_action says what an alarm does: "none", "slow" (the safety layer's
        # speed limits times monitor_slow_scale) or "hold" (until the /taco/monitor_resume service is called).
        p("monitor", "none")
        p("monitor_action", "none")
        p("monitor_slow_scale", 0.5)
        self.loop: ControlLoop | None = None
        self.engine = None
        self.timer = None
        self._decided = None
        self._subs, self._pubs = [], []
        self._loading: threading.Thread | None = None  # a verifier being loaded
        self._reverting = False
        self.add_on_set_parameters_callback(self._on_parameters)

    # -- lifecycle ---------------------------------------------------------------------------------

    def on_configure(self, state: State) -> TransitionCallbackReturn:
        get = lambda name: self.get_parameter(name).value  # noqa: E731
        try:
            self.profile = get_profile(get("profile"))
            if get("sink") not in SINKS:
                raise ValueError(f"sink: must be one of {', '.join(SINKS)}, got {get('sink')!r}")
            urdf = get("robot_description") or _read_text("urdf_file", get("urdf_file")) or None
            limits = limits_of(self.profile, urdf, _read_yaml(get("joint_limits_file")))
            if get("server"):
                from serving.client import RemoteEngine, read_api_key

                policy = get("server")
                self.engine = RemoteEngine(policy, api_key=read_api_key(get("api_key_file")),
                                           resize_on_client=bool(get("resize_on_client")))
                if get("monitor") != "none":
                    raise ValueError("monitor: the policy server makes the decisions; run the monitor there "
                                     "(taco serve --monitor)")
            else:
                policy = resolve_policy(get("policy"))
                session = SessionConfig(provider=get("provider"), intra_op_threads=int(get("threads")))
                verifier = resolve_verifier(get("verifier"), policy)
                monitor = resolve_monitor(get("monitor"), policy)
                # The monitor scores after the chunk is out, on the inference worker, unless its alarm must
                # stop the decision that raised it (hold).
                adaptive = Adaptive.parse(get("adaptive")) if get("adaptive") else None
                prune = resolve_prune(get("prune"), load_policy_bundle(policy).manifest, int(get("n")),
                                      verifier is not None, monitor is not None, adaptive=adaptive is not None,
                                      logging=bool(get("log_decisions")))
                self.engine = Engine(policy, verifier, EngineConfig(session=session,
                                                                    return_candidates=bool(get("log_decisions")),
                                                                    defer_monitor=get("monitor_action") != "hold",
                                                                    prune=prune, adaptive=adaptive),
                                     monitor=monitor)
                if self.engine.monitor is not None:
                    check_monitor_use(self.engine.monitor.manifest, self.engine.bundle.fingerprint, int(get("n")),
                                      content_id(verifier), int(get("execute")))
            rtc = get("rtc")
            if rtc not in ("auto", "on", "off"):
                raise ValueError(f"rtc: must be auto, on or off, got {rtc!r}")
            rtc = bool(getattr(self.engine.manifest, "rtc", False)) if rtc == "auto" else rtc == "on"
            heartbeat = float(get("heartbeat_timeout"))
            config = ControlConfig(
                rate=float(get("rate")) or self.profile.control_hz,
                executor=ExecutorConfig(n=int(get("n")), execute=int(get("execute"))), seed=int(get("seed")),
                timing=AsyncConfig(rtc=rtc, percentile=float(get("delay_percentile")),
                                   horizon=int(get("rtc_horizon")) or None, max_weight=float(get("rtc_max_weight"))),
                watchdog=WatchdogConfig(float(get("max_observation_age")), float(get("max_inference_time")),
                                        float(get("max_future_stamp")), heartbeat if heartbeat > 0 else None),
                horizon=self.sink_horizon if get("sink") == "jtc" else 0,
                monitor_action=get("monitor_action"), monitor_slow=float(get("monitor_slow_scale")))
            # A decision runs a control step as it arrives (a guard condition wakes the executor's thread),
            # so its first command waits for no tick.
            self._decided = self.create_guard_condition(self._on_decided)
            self.loop = ControlLoop(self.engine, self.profile, config, limits, clock=self._now,
                                    log=self._decision_log(get), on_decision=self._decided.trigger)
        except Exception as exc:  # noqa: BLE001 - a bad parameter fails the transition with the reason logged
            self.get_logger().error(f"configure failed: {exc}")
            if self.engine is not None and hasattr(self.engine, "close"):
                self.engine.close()
            self.engine = None
            if self._decided is not None:
                self.destroy_guard_condition(self._decided)
                self._decided = None
            return TransitionCallbackReturn.FAILURE
        self.policy_path = policy
        self.rate = config.rate
        if heartbeat <= 0:
            self.get_logger().warning("heartbeat_timeout 0: no operator heartbeat required (the robot does not "
                                      "hold when the operator's console goes away)")
        self.loop.instruction(get("task"), self._now())
        self.rejected_messages = 0
        self.inference_errors = 0
        self.last_rejection: str | None = None
        self.last_hold_reason: str | None = None
        self._last_diagnostics = -np.inf
        self.image_delay_ms = float("nan")
        self.sink = Sink(self, get("sink"), self.profile)
        self._pubs = [self.create_publisher(String, DIAGNOSTICS_TOPIC, 10),
                      self.create_publisher(String, ESTOP_STATE_TOPIC, LATCHED_QOS),
                      self.create_publisher(DiagnosticArray, ROS_DIAGNOSTICS_TOPIC, 10),
                      self.create_publisher(String, MONITOR_TOPIC, LATCHED_QOS)]
        self._monitor_published = -1
        self._resume = self.create_service(Trigger, MONITOR_RESUME_SERVICE, self._on_monitor_resume)
        sub = self.create_subscription
        self._subs = [sub(JointState, joint_state_topic(ns), lambda m, a=arm: self._on_joint_state(a, m), 10)
                      for arm, ns in enumerate(self.profile.arm_namespaces)]
        self._subs += [sub(Image, IMAGE_TOPIC.format(camera=c), lambda m, c=c: self._on_image(c, m), IMAGE_QOS)
                       for c in self.loop.cameras]
        # The instruction twice: transient-local to get a latched one sent before we started, volatile so
        # that a plain `ros2 topic pub` (volatile, incompatible with a transient-local reader) gets through.
        self._subs += [sub(String, INSTRUCTION_TOPIC, self._on_instruction, LATCHED_QOS),
                       sub(String, INSTRUCTION_TOPIC, self._on_instruction, 10),
                       sub(Header, RESET_TOPIC, self._on_reset, LATCHED_QOS),
                       sub(Header, HEARTBEAT_TOPIC, self._on_heartbeat, 10),
                       sub(String, ESTOP_TOPIC, self._on_estop, 10),
                       sub(String, ESTOP_RESET_TOPIC, self._on_estop_reset, 10)]
        if self.loop.log is not None:
            self._subs.append(sub(String, EPISODE_TOPIC, self._on_episode, EPISODES_QOS))
            self.loop.log.start("", instruction=self.loop.task)  # until the first reset
            self.get_logger().info(f"logging decisions to {self.loop.log.log.root} as "
                                   f"{self.loop.log.name}-<k>, from episode {self.loop.log.index}")
        self._publish_estop_state()
        self._publish_monitor_state()
        verifier = self.engine.verifier.name if self.engine.verifier is not None else "none"
        sources = sorted(set(limits.sources))
        self.get_logger().info(f"configured: policy {policy} ({self.engine.manifest.fingerprint[:12]}), verifier "
                               f"{verifier}, n={get('n')}, sink {get('sink')}, {self.rate:g} Hz (policy "
                               f"{1 / self.engine.manifest.action_dt:g} actions/s), limits from {', '.join(sources)}")
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
        if getattr(self, "_resume", None) is not None:
            self.destroy_service(self._resume)
            self._resume = None
        if self.loop is not None:
            self.loop.close()  # joins the inference thread, the only one that triggers the guard condition
        if self._decided is not None:
            self.destroy_guard_condition(self._decided)
            self._decided = None
        self.loop, self.engine = None, None

    # -- inputs ------------------------------------------------------------------------------------

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _reject(self, what: str) -> None:
        self.rejected_messages += 1
        self.last_rejection = what
        self.get_logger().warning(f"rejected: {what}", throttle_duration_sec=1.0)

    def _on_joint_state(self, arm: int, msg: JointState) -> None:
        try:
            self.loop.joint_state(arm, msg.name, msg.position, to_seconds(msg.header.stamp), self._now())
        except SpecError as exc:
            self._reject(str(exc))

    def _on_image(self, camera: str, msg: Image) -> None:
        try:
            stamp, now = to_seconds(msg.header.stamp), self._now()
            self.loop.image(camera, image_from_msg(msg, IMAGE_TOPIC.format(camera=camera)), stamp, now)
            # How old frames are when this node gets to them (transport + executor queueing).
            self.image_delay_ms = (now - stamp) * 1e3
        except SpecError as exc:
            self._reject(str(exc))

    def _on_instruction(self, msg: String) -> None:
        self.loop.instruction(msg.data, self._now())

    def _decision_log(self, get):
        """The StreamLog of `log_decisions`, or None."""
        if not get("log_decisions"):
            return None
        if get("server"):
            raise ValueError("log_decisions: the policy server makes the decisions; log them there "
                             "(taco serve --log-decisions)")
        from verifiers.decision_log import DecisionLog, StreamLog

        log = DecisionLog.for_engine(get("log_decisions"), self.engine, float(get("log_max_mb")) or None,
                                     writer="taco policy node")
        return StreamLog(log, get("log_name") or self.profile.name, n=int(get("n")),
                         verifier=None if self.engine.verifier is None else self.engine.verifier.name)

    def _on_episode(self, msg: String) -> None:
        """A simulation's episode summary: the outcome of the logged episode its reset started."""
        try:
            summary = json.loads(msg.data)
            episode = str(summary["episode"])
            outcome = {"success": bool(summary["success"]), "best_stage": int(summary["best_stage"]),
                       "max_stage": summary.get("max_stage"), "sim_task": summary.get("task"),
                       "sim_seed": summary.get("seed")}
        except (ValueError, KeyError, TypeError) as exc:
            self._reject(f"{EPISODE_TOPIC}: not an episode summary ({exc})")
            return
        path = self.loop.episode_outcome(episode, **outcome)
        if path is not None:
            self.get_logger().info(f"logged episode {episode} ({'success' if outcome['success'] else 'failure'}) "
                                   f"-> {path}")

    def _on_reset(self, msg: Header) -> None:
        self.loop.reset(to_seconds(msg.stamp), self._now(), episode=msg.frame_id)
        self.get_logger().info(f"reset (episode {msg.frame_id})")

    def _on_heartbeat(self, msg: Header) -> None:
        self.loop.heartbeat(self._now())

    def _on_estop(self, msg: String) -> None:
        estop_id = self.loop.estop(msg.data or "e-stop", self._now())
        self.get_logger().error(f"E-STOP latched: {msg.data} (release: publish '{estop_id}' on {ESTOP_RESET_TOPIC})")
        self._publish_estop_state()

    def _on_estop_reset(self, msg: String) -> None:
        try:
            self.loop.estop_reset(msg.data.strip(), self._now())
        except ValueError as exc:
            self.get_logger().error(str(exc))
            self._publish_estop_state(refused=str(exc))
            return
        self.get_logger().warning("e-stop released")
        self._publish_estop_state()

    def _publish_estop_state(self, refused: str | None = None) -> None:
        safety = self.loop.safety
        self._pubs[1].publish(String(data=dumps({"latched": safety.estopped, "id": safety.estop_id,
                                                 "reason": safety.estop_reason, "stamp": self._now(),
                                                 "refused": refused})))

    def _on_monitor_resume(self, request, response):
        """The operator's resume after a monitor alarm (std_srvs/Trigger): refused, saying why, without one
        acted on or without the operator's heartbeat."""
        try:
            response.message = self.loop.monitor_resume(self._now())
            response.success = True
            self.get_logger().warning(f"monitor alarm: {response.message} by the operator")
        except (ValueError, AttributeError) as exc:
            response.success, response.message = False, str(exc)
        self._publish_monitor_state()
        return response

    def _publish_monitor_state(self) -> None:
        """The latched /taco/monitor, when the monitor's state changed since it was last published."""
        loop = self.loop
        if loop is None or loop.monitor is None or loop.monitor_changes == self._monitor_published:
            return
        self._monitor_published = loop.monitor_changes
        report = loop.monitor_report()
        if report["alarmed"]:
            self.get_logger().error(f"failure monitor alarm ({report['action']}): statistic "
                                    f"{report['statistic']:.2f} > {report['threshold']:.2f}")
        self._pubs[3].publish(String(data=dumps({**report, "stamp": self._now()})))

    def _on_parameters(self, params) -> SetParametersResult:
        for param in params:
            if self.loop is None or self._reverting:
                continue
            if param.name not in LIVE_PARAMETERS:
                return SetParametersResult(successful=False,
                                           reason=f"{param.name} is read at configure; cleanup and configure again")
            if param.name == "task":
                self.loop.instruction(str(param.value), self._now())
            elif param.name == "verifier":
                refused = self._swap_verifier(str(param.value))
                if refused:
                    self.get_logger().error(f"verifier {param.value!r} refused: {refused}")
                    return SetParametersResult(successful=False, reason=refused)
        return SetParametersResult(successful=True)

    def _swap_verifier(self, value: str) -> str | None:
        """Checks the new verifier's manifest here and loads it on a thread; returns why it is refused."""
        if self.get_parameter("server").value:
            return "the policy server chooses the verifier (taco serve --verifier)"
        if self._loading is not None and self._loading.is_alive():
            return "another verifier is still loading; set it again when it is in (see /taco/diagnostics)"
        try:
            path = resolve_verifier(value, self.policy_path)
            if path is not None:
                self.engine.check_verifier_bundle(path)
            if self.engine.monitor is not None:  # its thresholds hold for the verifier it was calibrated with
                check_monitor_use(self.engine.monitor.manifest, self.engine.bundle.fingerprint,
                                  self.engine.monitor.manifest.n, content_id(path))
        except Exception as exc:  # noqa: BLE001 - refused; the old verifier stays
            return str(exc)
        previous = self.get_parameter("verifier").value
        self._loading = threading.Thread(target=self._load_verifier, args=(path, value, previous),
                                         name="taco-verifier-load", daemon=True)
        self._loading.start()
        return None

    def _load_verifier(self, path: str | None, value: str, previous: str) -> None:
        engine, loop = self.engine, self.loop
        try:
            engine.set_verifier(None if path is None else engine.load_verifier(path))
        except Exception as exc:  # noqa: BLE001 - the old verifier stays, and so does the parameter
            self.get_logger().error(f"verifier {value!r} refused while loading: {exc}; keeping {previous!r}")
            self._reverting = True
            try:
                self.set_parameters([Parameter("verifier", value=previous)])
            finally:
                self._reverting = False
            return
        loop.invalidate(f"verifier swapped to {value!r}", self._now())
        self.get_logger().info(f"verifier swapped to {value!r}")

    # -- control loop ------------------------------------------------------------------------------

    # Seconds between diagnostics when no new decision comes (so a holding node still reports why).
    diagnostics_period = 0.5
    # Most future points a trajectory sink sends.
    sink_horizon = 16

    def _on_decided(self) -> None:
        if self.timer is not None and self.loop is not None:  # active
            self._tick()

    def _tick(self) -> None:
        now = self._now()
        result = self.loop.tick(now)
        while self.loop.executor.errors:
            self.inference_errors += 1
            self.get_logger().error(f"inference failed: {self.loop.executor.errors.popleft()}",
                                    throttle_duration_sec=1.0)
        report = result.report
        if result.command is not None:
            self.sink.send(result.command, result.upcoming)
        if report.held:
            if report.reason != self.last_hold_reason:
                self.get_logger().warning(f"holding: {report.reason}", throttle_duration_sec=1.0)
            self.last_hold_reason = report.reason
        else:
            self.last_hold_reason = None
        new = result.tick is not None and result.tick.new_decision
        self._publish_monitor_state()
        if new or now - self._last_diagnostics >= self.diagnostics_period:
            self._publish_diagnostics(result.tick if new else None, now, report)

    def _publish_diagnostics(self, tick, now: float, report) -> None:
        self._last_diagnostics = now
        loop = self.loop
        data = {"stamp": now, "held": report.held, "hold_reason": report.reason or self.last_hold_reason,
                "clamped": report.clamped, "rate_limited": report.rate_limited,
                "accel_limited": report.accel_limited, "jerk_limited": report.jerk_limited,
                "dropped_actions": loop.executor.dropped, "discarded_decisions": loop.executor.discarded,
                "asked": dict(loop.executor.asked),
                "last_event": loop.last_event, "last_rejection": self.last_rejection,
                "rejected_messages": self.rejected_messages, "clock_offsets_ms": loop.clock_offsets_ms(),
                "estop": loop.safety.estop_id, "inference_errors": self.inference_errors,
                "verifier": None if self.engine.verifier is None else self.engine.verifier.name, **loop.stats,
                "reasons": loop.reasons, "monitor": loop.monitor_report()}
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
        self._pubs[2].publish(diagnostic_array(self.get_clock().now().to_msg(), self.profile.name, data))


def diagnostic_array(stamp, hardware_id: str, data: dict) -> DiagnosticArray:
    """The standard /diagnostics message of one diagnostics report: a "taco_policy: control" status (OK, or
    WARN while holding, with the reason) and, with a monitor, "taco_policy: monitor" (OK; WARN once it has
    alarmed this episode; ERROR while its alarm holds the robot), each with its figures as key-values."""
    def values(pairs) -> list[KeyValue]:
        return [KeyValue(key=str(k), value="" if v is None else (f"{v:.6g}" if isinstance(v, float) else str(v)))
                for k, v in pairs]

    control = DiagnosticStatus(
        level=DiagnosticStatus.WARN if data["held"] else DiagnosticStatus.OK, name="taco_policy: control",
        message=f"holding: {data['hold_reason']}" if data["held"] else "commanding", hardware_id=hardware_id,
        values=values((k, data.get(k)) for k in ("verifier", "decisions", "held_ticks", "rejected_messages",
                                                  "inference_errors", "estop", "latency_ms", "inference_ms")))
    statuses = [control]
    monitor = data.get("monitor")
    if monitor is not None:
        if monitor["holding"]:
            level, message = DiagnosticStatus.ERROR, "alarm: holding until the operator resumes (/taco/monitor_resume)"
        elif monitor["alarmed"]:
            level = DiagnosticStatus.WARN
            message = "alarm: slowed" if monitor["speed_scale"] < 1 else "alarm: the policy may be failing"
        else:
            level, message = DiagnosticStatus.OK, "no alarm"
        signals = monitor.get("signals") or {}
        statuses.append(DiagnosticStatus(
            level=level, name="taco_policy: monitor", message=message, hardware_id=hardware_id,
            values=values([(k, monitor.get(k)) for k in ("name", "action", "statistic", "threshold", "decision",
                                                          "speed_scale")] + [(f"signal.{k}", v) for k, v in
                                                                             signals.items()])))
    return DiagnosticArray(header=Header(stamp=stamp), status=statuses)


def _read_text(parameter: str, path: str) -> str:
    """The text of the file a parameter names; "" for none."""
    if not path:
        return ""
    try:
        return Path(path).read_text()
    except OSError as err:
        raise ValueError(f"{parameter}: cannot read {path}: {err}") from err


def _read_yaml(path: str):
    """A ros2_control joint_limits YAML file, parsed; None for no file."""
    if not path:
        return None
    import yaml

    try:
        return yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"joint_limits_file: cannot read {path}: {err}") from err


def main(args=None) -> int:
    # The inference thread, woken when an observation arrives, needs the GIL while the executor thread goes
    # on through rclpy's (Python) executor; by default a thread holding it lets go after 5 ms, which was most
    # of the node's own latency (benchmarks/ros_latency.py). 0.5 ms hands it over at once.
    sys.setswitchinterval(5e-4)
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
