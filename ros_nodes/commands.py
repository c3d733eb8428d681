"""`taco ros`: the ROS 2 nodes started as processes (no `launch` needed), registered by `taco.cli`.

Only the standard library is imported here, so `taco --help` lists it on a core-only install.
"""

from __future__ import annotations


def cmd_ros(args) -> int:
    from policies.bundle import load_policy_bundle
    from policies.shipped import resolve_policy
    from ros_nodes.launcher import Launch, node_command, ros_env
    from verifiers.bundle import check_verifier, load_verifier
    from verifiers.shipped import resolve_monitor, resolve_verifier

    if args.server:
        # Inference on a `taco serve` server: check it answers (and the key) before any node starts.
        from serving.client import RemoteEngine, read_api_key

        if args.policy is not None or args.verifier != "none" or args.monitor != "none":
            raise ValueError("--server: the server chooses the policy, the verifier and the monitor "
                             "(taco serve --policy/--verifier/--monitor)")
        key = read_api_key(args.api_key_file)
        with RemoteEngine(args.server, api_key=key) as remote:
            print(f"policy server {args.server}: {remote.manifest.name} ({remote.fingerprint[:12]}), verifier "
                  f"{remote.metadata['verifier']}")
        policy = ""
    else:
        # Refuse a bad policy or a verifier that does not belong to it here, before any node starts. On a
        # robot, inference runs beside the control loop and its delay varies: the default is the policy whose
        # chunk outlasts it, with real-time chunking (the node's rtc=auto turns it on).
        policy = resolve_policy(args.policy or (ROBOT_POLICY if args.target == "robot" else "default"))
        bundle = load_policy_bundle(policy)
        verifier = resolve_verifier(args.verifier, policy)
        if verifier is not None:
            check_verifier(load_verifier(verifier), bundle.manifest.feature_dim, bundle.fingerprint)
        monitor = resolve_monitor(args.monitor, policy)
        if monitor is not None:  # calibrated for this policy, N and verifier, or refused before any node starts
            from policies.schema import content_id
            from runtime.monitor import check_monitor_use, read_monitor_manifest

            check_monitor_use(read_monitor_manifest(monitor), bundle.fingerprint, args.n, content_id(verifier),
                              args.execute)
    if args.monitor_action != "none" and args.monitor == "none":
        raise ValueError(f"--monitor-action {args.monitor_action}: needs a --monitor")
    commands = {}
    if args.target in ("sim", "robot"):
        params = {"policy": policy, "verifier": args.verifier, "n": args.n, "execute": args.execute,
                  "sink": args.sink, "profile": args.profile, "seed": args.seed}
        cap = args.rtc_max_weight if args.rtc_max_weight is not None else \
            (ROBOT_RTC_MAX_WEIGHT if args.target == "robot" else None)
        if cap is not None:
            from runtime.executor import AsyncConfig

            AsyncConfig(max_weight=float(cap))  # its check, before any node starts
            params["rtc_max_weight"] = float(cap)
        if args.server:
            params.update(server=args.server, api_key_file=args.api_key_file or "")
        if args.prune not in ("auto", "none"):
            if args.server:
                raise ValueError("--prune: with --server the server samples; prune there (taco serve --prune)")
            from policies.pruning import resolve_prune

            if args.monitor != "none":
                raise ValueError("--prune: a monitor is calibrated on fully denoised candidates; drop --monitor "
                                 "or --prune")
            params["prune"] = str(resolve_prune(args.prune, bundle.manifest, args.n, True, False))  # its checks
        elif not args.server and args.prune == "none":
            params["prune"] = "none"  # the node's own default is auto
        if args.adaptive:
            from runtime.adaptive import Adaptive

            if args.server:
                raise ValueError("--adaptive: with --server the server samples; set it there (taco serve --adaptive)")
            if args.prune not in ("auto", "none") or args.monitor != "none":
                raise ValueError("--adaptive: not with --prune or --monitor (a monitor is calibrated at a fixed N)")
            params["adaptive"] = str(Adaptive.parse(args.adaptive))
        if args.monitor != "none":
            params.update(monitor=args.monitor, monitor_action=args.monitor_action)
        if args.log_decisions:
            if args.server:
                raise ValueError("--log-decisions: with --server the server makes the decisions; log them there "
                                 "(taco serve --log-decisions)")
            if args.log_max_mb is not None and not args.log_max_mb > 0:
                raise ValueError(f"--log-max-mb: expected > 0 megabytes, got {args.log_max_mb}")
            # Episodes named after the sim task (its summaries label them) or, on a robot, the profile.
            params.update(log_decisions=str(args.log_decisions), log_max_mb=float(args.log_max_mb or 0.0),
                          log_name=(args.task or "transfer_cube") if args.target == "sim" else args.profile)
        if args.target == "robot":
            # No --task: the node waits for one on /taco/instruction (a sim task's name means nothing to a robot).
            params["task"] = args.task or ""
            if args.heartbeat_timeout is not None:
                params["heartbeat_timeout"] = args.heartbeat_timeout
            params.update(urdf_file=args.urdf or "", joint_limits_file=args.joint_limits or "")
        commands["policy"] = node_command("ros_nodes.policy_node", params)
    record = args.record or ("taco_run.mcap" if args.target == "record" else None)
    if args.target == "sim":
        # With a recorder, the sim's first step waits until the recorder has matched every topic of the run.
        commands["sim"] = node_command("ros_nodes.sim_node", {"task": args.task or "transfer_cube", "sink": args.sink,
                                                              "profile": args.profile, "episodes": args.episodes,
                                                              "seed": args.seed, "wait_for_recorder": bool(record)})
    if record:
        commands["recorder"] = node_command("ros_nodes.recorder", {"out": record, "profile": args.profile,
                                                                    "sink": args.sink})
    launch = Launch(commands, env=ros_env(args.discovery), until="sim" if args.target == "sim" and args.episodes else None)
    launch.start()
    return launch.wait()


# `taco ros robot`'s policy: 32-action chunks (640 ms) and RTC, measured at 200 ms of delay in docs/async.md,
# with the guidance capped at 5 instead of LeRobot's 10: at 200 ms that keeps flow32's success at the
# synchronous rate (114 and 117/150 against 115 on two seed blocks; 103 and 111 at 10) and its p95 switch
# jump 3x below no RTC.
ROBOT_POLICY = "flow32"
ROBOT_RTC_MAX_WEIGHT = 5.0


def _ros_needs(args) -> tuple[str, ...]:
    return ("ros",) + (("sim",) if args.target == "sim" else ()) + (("serve",) if args.server else ())


def register(cli) -> None:
    p = cli.add("ros", "start the ROS 2 nodes without `launch`: sim, robot, or a recorder", run=cmd_ros,
                extras=("ros",), needs=_ros_needs)
    p.add_argument("target", choices=["sim", "robot", "record"],
                   help="sim: sim node + policy node (also the sim extra); robot: policy node for a running robot; "
                        "record: recorder only")
    p.add_argument("--policy", default=None,
                   help=f"policy bundle path or shipped name (robot: {ROBOT_POLICY}, 32-action chunks with real-time "
                        "chunking, for the varying delay of inference beside a robot; sim: default)")
    p.add_argument("--verifier", default="none", help="none|random|cfn|rnd|knn|consensus or a verifier bundle path")
    p.add_argument("--n", type=int, default=16, help="candidates per step")
    p.add_argument("--execute", type=int, default=8, help="actions executed per chunk before replanning")
    p.add_argument("--monitor", default="none",
                   help="failure monitor bundle calibrated for this policy, --n and --verifier, or 'monitor' (the "
                        "policy's shipped one); its state on /diagnostics and /taco/monitor (docs/monitor.md)")
    cli.add_saving_flags(p, auto=True)
    p.add_argument("--monitor-action", default="none", choices=["none", "slow", "hold"],
                   help="what the monitor's alarm does: nothing, halve the speed limits, or hold until "
                        "/taco/monitor_resume is called")
    p.add_argument("--sink", default="interbotix", choices=["interbotix", "forward", "jtc"])
    p.add_argument("--profile", default="aloha_viperx")
    p.add_argument("--rtc-max-weight", type=float, default=None, metavar="W",
                   help=f"cap on the real-time chunking guidance (robot: {ROBOT_RTC_MAX_WEIGHT:g}, delay-robust for "
                        "flow32, docs/async.md; sim: the node's 10, LeRobot's)")
    p.add_argument("--task", default=None,
                   help="sim: the sim task (default transfer_cube); robot: the instruction (default: none until "
                        "one arrives on /taco/instruction)")
    p.add_argument("--heartbeat-timeout", type=float, default=None, metavar="S",
                   help="robot: hold when no operator heartbeat arrives on /taco/heartbeat for S seconds "
                        "(node default 0.5; 0 requires none). `taco ros sim` publishes its own")
    p.add_argument("--urdf", default=None, metavar="FILE", help="robot: URDF whose joint limits narrow the profile's")
    p.add_argument("--joint-limits", default=None, metavar="FILE",
                   help="robot: ros2_control joint_limits YAML whose limits narrow the profile's")
    p.add_argument("--episodes", type=int, default=0, help="sim: stop after this many episodes (0: run until Ctrl-C)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--server", default=None, metavar="ws://HOST:PORT",
                   help="run inference on a `taco serve` server instead of here (it chooses policy and verifier)")
    p.add_argument("--api-key-file", default=None, help="with --server: file holding the server's API key")
    p.add_argument("--record", default=None, metavar="PATH.mcap", help="also record the run to MCAP")
    cli.add_log_flags(p, "an episode per /taco/reset, with the commands sent; sim episodes carry their outcome, robot "
                         "episodes are labelled afterwards with `taco label`")
    p.add_argument("--discovery", default="LOCALHOST", choices=["LOCALHOST", "SUBNET", "SYSTEM_DEFAULT", "OFF"],
                   help="ROS_AUTOMATIC_DISCOVERY_RANGE when not already set (default: this host only)")
