"""What serving over the network adds: `taco serve` round trip minus the engine's own time, on loopback.

    .venv/bin/python benchmarks/serve_latency.py --policy default --n 1,16 --json build/serve_latency.json [--quick]

The server runs as its own process (`taco serve`, as on a GPU machine beside a robot); this process is
the robot: `serving.RemoteEngine` sends one 480x640 camera and the state per request, seeded, one
request at a time: the frame as captured, then (`resize_on_client`, as openpi's clients do) fitted to
the policy's input size first. For each request: the round trip measured here, the engine's time inside the server
(`policy_timing.total`), and the server's split of the rest (decode, queue, reply); overhead = round
trip - engine time, which is what a remote server costs against running the same engine on the
robot. p50/p99 per N after a warm-up. Goal: overhead p50 under 3 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(port: int, proc: subprocess.Popen, timeout: float = 180.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"taco serve exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.2)
    raise RuntimeError("taco serve did not become healthy")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default="default")
    parser.add_argument("--verifier", default="none")
    parser.add_argument("--n", default="1,16", help="comma-separated candidate counts")
    parser.add_argument("--requests", type=int, default=200, help="timed requests per N")
    parser.add_argument("--image", default="480x640", help="camera frame sent, HxW")
    parser.add_argument("--quick", action="store_true", help="30 requests per N")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    counts = [int(v) for v in args.n.split(",")]
    requests = 30 if args.quick else args.requests
    height, width = (int(v) for v in args.image.split("x"))

    from policies.observation import make_example_observation
    from serving.client import RemoteEngine

    port = _free_port()
    command = [sys.executable, "-m", "taco", "serve", "--policy", args.policy, "--verifier", args.verifier,
               "--port", str(port), "--n", str(counts[0]), "--max-n", str(max(counts)), "--metrics-every", "0"]
    log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"serve_latency_{port}.log", "w")
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    rows = []
    try:
        _wait_healthy(port, proc)
        from policies.bundle import load_policy_bundle
        from policies.shipped import resolve_policy

        manifest = load_policy_bundle(resolve_policy(args.policy)).manifest
        obs = make_example_observation(manifest, seed=0, image_size=(height, width))
        for resize, n in [(resize, n) for resize in (False, True) for n in counts]:
            with RemoteEngine(f"ws://127.0.0.1:{port}", resize_on_client=resize) as remote:
                samples = []
                for i in range(requests + 10):
                    started = time.perf_counter()
                    decision = remote.infer(obs, n=n, seed=i)
                    round_trip = (time.perf_counter() - started) * 1e3
                    if i >= 10:  # warm-up
                        t = decision.timings
                        samples.append((round_trip, t["total"], t["server_total"], t["server_decode"],
                                        t["server_queue"]))
                s = np.asarray(samples)
                overhead = s[:, 0] - s[:, 1]
                rows.append({"n": n, "resize_on_client": resize, "requests": len(s),
                             "round_trip_ms": {"p50": float(np.percentile(s[:, 0], 50)),
                                               "p99": float(np.percentile(s[:, 0], 99))},
                             "engine_ms": {"p50": float(np.percentile(s[:, 1], 50)),
                                           "p99": float(np.percentile(s[:, 1], 99))},
                             "overhead_ms": {"p50": float(np.percentile(overhead, 50)),
                                             "p99": float(np.percentile(overhead, 99))},
                             "outside_server_ms": {"p50": float(np.percentile(s[:, 0] - s[:, 2], 50))},
                             "server_decode_ms": {"p50": float(np.percentile(s[:, 3], 50))},
                             "server_queue_ms": {"p50": float(np.percentile(s[:, 4], 50))}})
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()

    print(f"taco serve on loopback, policy {args.policy}, verifier {args.verifier}, one {height}x{width} camera, "
          f"{requests} requests per N (ms)")
    print(f"{'frame sent':>12} {'N':>4} {'round trip p50':>15} {'p99':>8} {'engine p50':>11} {'overhead p50':>13} "
          f"{'p99':>8} {'decode p50':>11} {'queue p50':>10} {'outside server p50':>19}")
    for r in rows:
        sent = "fitted" if r["resize_on_client"] else "as captured"
        print(f"{sent:>12} {r['n']:>4} {r['round_trip_ms']['p50']:>15.2f} {r['round_trip_ms']['p99']:>8.2f} "
              f"{r['engine_ms']['p50']:>11.2f} {r['overhead_ms']['p50']:>13.2f} {r['overhead_ms']['p99']:>8.2f} "
              f"{r['server_decode_ms']['p50']:>11.2f} {r['server_queue_ms']['p50']:>10.2f} "
              f"{r['outside_server_ms']['p50']:>19.2f}")
    goal = {sent: all(r["overhead_ms"]["p50"] < 3.0 for r in rows if r["resize_on_client"] == resize)
            for sent, resize in (("as_captured", False), ("fitted", True))}
    print("goal (overhead p50 < 3 ms at every N): " + ", ".join(f"{'met' if ok else 'not met'} with the frame {k}"
                                                                 for k, ok in goal.items()))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"policy": args.policy, "verifier": args.verifier,
                                               "image": [height, width], "rows": rows, "goal_met": goal}, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
