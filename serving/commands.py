"""`taco serve`: the policy server (serving/server.py).

Registered by the command line (`taco.cli`); arguments become `serving.server.ServeConfig`. Only the
standard library is imported here, so `taco --help` lists the command on a core-only install.
"""

from __future__ import annotations

import logging


def cmd_serve(args) -> int:
    from serving.client import read_api_key
    from serving.server import PolicyServer, ServeConfig

    api_key = read_api_key(args.api_key_file)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("websockets").setLevel(logging.WARNING)
    config = ServeConfig(policy=args.policy, verifier=None if args.verifier == "none" else args.verifier, n=args.n,
                         max_n=args.max_n, host=args.host, port=args.port, api_key=api_key,
                         max_clients=args.max_clients, max_message_bytes=args.max_message_mb << 20, task=args.task,
                         send_tracebacks=args.send_tracebacks, metrics_every_s=args.metrics_every,
                         provider=args.provider, threads=args.threads, batch_window_ms=args.batch_window_ms,
                         log_decisions=args.log_decisions, log_max_mb=args.log_max_mb,
                         monitor=None if args.monitor == "none" else args.monitor,
                         prune=args.prune, adaptive=args.adaptive or None)
    PolicyServer(config).run()
    return 0


def register(cli) -> None:
    p = cli.add("serve", "serve a policy (with its verifier) over openpi's websocket protocol, for openpi-client, "
                         "RemoteEngine and `taco ros robot --server`", run=cmd_serve, extras=("serve",))
    p.add_argument("--policy", default="default", help="policy bundle path or a shipped name ('default')")
    p.add_argument("--verifier", default="none", help="verifier bundle path or a shipped name (cfn, best, ...)")
    p.add_argument("--n", type=int, default=16, help="candidates per decision when a request does not say")
    p.add_argument("--monitor", default="none",
                   help="failure monitor bundle, or 'monitor' (the policy's shipped one), calibrated for --n and "
                        "--verifier: each reply carries its reading")
    cli.add_saving_flags(p, auto=True)
    p.add_argument("--max-n", type=int, default=256, help="largest n a request may ask for")
    p.add_argument("--host", default="127.0.0.1",
                   help="bind address; loopback by default (0.0.0.0 exposes the server, and is logged as such)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (openpi's default; 0 picks a free one)")
    p.add_argument("--api-key-file", default=None,
                   help="file holding the key clients must send as 'Authorization: Api-Key <key>'")
    p.add_argument("--max-clients", type=int, default=8, help="connections served at once; more are refused")
    p.add_argument("--max-message-mb", type=int, default=16, help="largest request, MiB")
    p.add_argument("--task", default="", help="task text for requests without a prompt")
    p.add_argument("--send-tracebacks", action="store_true",
                   help="send internal errors' tracebacks to clients (debugging only)")
    p.add_argument("--metrics-every", type=float, default=10.0, help="seconds between metrics lines (0: none)")
    p.add_argument("--provider", default="cpu", help="ONNX Runtime provider: cpu, cuda, tensorrt or auto")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads of the engine's sessions")
    p.add_argument("--batch-window-ms", type=float, default=0.0,
                   help="infer requests of several clients arriving within this window together: one encoder call, "
                        "and one sampler call when the bundle allows (0: off; see docs/serving.md)")
    cli.add_log_flags(p, "an episode per connection, or per value of a request's `episode` field; label them with "
                         "`taco label`")
    p.add_argument("--verbose", action="store_true", help="log every request")
