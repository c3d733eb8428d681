"""What cross-client batching buys: B robots' requests in one engine call against B calls, and a server
with `--batch-window-ms` against one without.

    .venv/bin/python benchmarks/serve_batching.py --policy default --json build/serve_batching.json [--quick]

Engine: for B observations (B robots) at N candidates each, B `Engine.infer` calls against one
`Engine.infer_batch`, timed alternately in one run (median of the repetitions, and their ratio). Two
graphs of the same architecture: the policy as shipped (its sampler takes one shared prefix, so a batch
shares only the encoder call) and the same architecture exported today with random weights (its sampler
takes a prefix per candidate: one sampler call for the batch). The second needs the `train` extra
(torch) to export; without it that row is left out and says so.

Server: `taco serve` as its own process, 8 client threads each sending requests back to back (N=16,
one 480x640 camera), with batching off and with `--batch-window-ms`; requests per second and round
trip p50/p99 for each.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from serve_latency import _free_port, _wait_healthy  # noqa: E402


def _engine_rows(label, engine, batches, counts, repeats):
    from policies.observation import make_example_observation
    from runtime import BatchItem

    rows = []
    observations = [make_example_observation(engine.manifest, seed=s, image_size=(480, 640))
                    for s in range(max(batches))]
    for n in counts:
        for b in batches:
            items = [BatchItem(observations[i], n, 1000 + i) for i in range(b)]
            solo, batched = [], []
            for r in range(repeats + 2):
                t0 = time.perf_counter()
                for item in items:
                    engine.infer(item.observation, n=n, seed=item.seed)
                t1 = time.perf_counter()
                engine.infer_batch(items)
                t2 = time.perf_counter()
                if r >= 2:  # warm-up (a new batch shape allocates)
                    solo.append((t1 - t0) * 1e3)
                    batched.append((t2 - t1) * 1e3)
            rows.append({"graph": label, "n": n, "robots": b, "separate_ms": float(np.median(solo)),
                         "batched_ms": float(np.median(batched)),
                         "speedup": float(np.median(np.asarray(solo) / np.asarray(batched)))})
    return rows


def _random_weights_twin(bundle, out: Path):
    """The bundle's architecture exported now with random weights (a per-candidate prefix), or None
    without torch."""
    try:
        from policies.config import PolicyConfig
        from policies.export import export_bundle
        from policies.models import build_policy
    except ImportError:
        return None
    cfg = PolicyConfig.from_dict(bundle.manifest.model_config)
    return export_bundle(build_policy(cfg, seed=0), out / "twin", normalization=bundle.manifest.normalization)


def _server_row(policy, window_ms, clients, requests, n):
    from policies.bundle import load_policy_bundle
    from policies.observation import make_example_observation
    from policies.shipped import resolve_policy
    from serving.client import RemoteEngine

    port = _free_port()
    command = [sys.executable, "-m", "taco", "serve", "--policy", policy, "--port", str(port), "--n", str(n),
               "--metrics-every", "0", "--max-clients", str(clients), "--batch-window-ms", str(window_ms)]
    log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"serve_batching_{port}.log", "w")
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    manifest = load_policy_bundle(resolve_policy(policy)).manifest
    latencies, errors = [], []
    try:
        _wait_healthy(port, proc)
        barrier = threading.Barrier(clients + 1)

        def client(c):
            try:
                obs = make_example_observation(manifest, seed=c, image_size=(480, 640))
                with RemoteEngine(f"ws://127.0.0.1:{port}") as remote:
                    for k in range(3):  # warm-up
                        remote.infer(obs, n=n, seed=k)
                    barrier.wait(120)
                    for k in range(requests):
                        latencies.append(remote.infer(obs, n=n, seed=100 * c + k).timings["round_trip"])
            except Exception as err:  # noqa: BLE001 - reported below
                errors.append(err)
                barrier.abort()

        threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
        for t in threads:
            t.start()
        barrier.wait(300)
        started = time.perf_counter()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - started
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
    if errors:
        raise RuntimeError(f"a client failed: {errors[0]}")
    return {"batch_window_ms": window_ms, "clients": clients, "n": n, "requests": len(latencies),
            "requests_per_s": len(latencies) / seconds,
            "round_trip_ms": {"p50": float(np.percentile(latencies, 50)), "p99": float(np.percentile(latencies, 99))}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default="default")
    parser.add_argument("--robots", default="1,2,4,8", help="batch sizes B (engine part)")
    parser.add_argument("--n", default="1,16", help="candidates per robot (engine part)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--window-ms", type=float, default=5.0, help="the server's batch window")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=40, help="timed requests per client (server part)")
    parser.add_argument("--quick", action="store_true", help="5 repeats, 8 requests per client")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    repeats, requests = (5, 8) if args.quick else (args.repeats, args.requests)
    batches = [int(v) for v in args.robots.split(",")]
    counts = [int(v) for v in args.n.split(",")]

    from policies.shipped import resolve_policy
    from runtime import Engine

    shipped = Engine(resolve_policy(args.policy))
    rows = _engine_rows("shipped (shared prefix)", shipped, batches, counts, repeats)
    with tempfile.TemporaryDirectory() as scratch:
        twin = _random_weights_twin(shipped.bundle, Path(scratch))
        if twin is None:
            print("no torch (train extra): the per-candidate-prefix row is left out")
        else:
            rows += _engine_rows("same architecture, prefix per candidate", Engine(twin), batches, counts, repeats)
    server = [_server_row(args.policy, w, args.clients, requests, 16) for w in (0.0, args.window_ms)]

    print(f"Engine: B robots' decisions as B infer calls or one infer_batch, policy {args.policy}, "
          f"one 480x640 camera, median of {repeats} (ms)")
    print(f"{'graph':<40} {'N':>3} {'B':>3} {'separate':>9} {'batched':>8} {'speedup':>8}")
    for r in rows:
        print(f"{r['graph']:<40} {r['n']:>3} {r['robots']:>3} {r['separate_ms']:>9.2f} {r['batched_ms']:>8.2f} "
              f"{r['speedup']:>7.2f}x")
    print(f"\nServer: {args.clients} clients back to back, N=16, {requests} requests each")
    print(f"{'batch window':>13} {'requests/s':>11} {'round trip p50':>15} {'p99':>8}")
    for r in server:
        print(f"{r['batch_window_ms']:>10.1f} ms {r['requests_per_s']:>11.1f} {r['round_trip_ms']['p50']:>15.2f} "
              f"{r['round_trip_ms']['p99']:>8.2f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"policy": args.policy, "engine": rows, "server": server}, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
