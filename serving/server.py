"""`taco serve`: one Engine behind openpi's websocket protocol.

A robot computer without a GPU runs `openpi-client` (or `serving.RemoteEngine`, or the ROS policy node
with `server:=ws://...`) against a GPU machine running this server. The protocol is openpi's
(`../shared/research/serving2.md`): after the websocket upgrade the server sends one binary msgpack
frame of metadata, then answers each binary request (an ALOHA observation: `images`, `state`, `prompt`)
with one binary reply holding `actions [H, A]`. What is ours:

- safe by default: bound to loopback (`--host 0.0.0.0` is a choice, and logged as one); the API key
  openpi-client sends (`Authorization: Api-Key ...`) checked in constant time when one is set; requests
  decoded by `serving.wire` (a dtype allow-list, sizes that must add up, no pickle); a message size
  limit; at most `max_clients` connections, each with at most one request in flight;
- inference on one worker thread that owns the Engine, never on the event loop, so pings, health
  checks and other clients' handshakes go on while a decision is computed;
- a bad request (`WireError`, `ObservationError`) is answered with a text frame naming the field
  (openpi-client raises it as a RuntimeError) and the connection stays usable; any other error is
  logged, answered "Internal server error." and the connection closed (1011); `send_tracebacks` sends
  the traceback instead, for debugging;
- `GET /healthz`: 200 once the engine is loaded and warmed, 503 before; metadata goes to a client only
  once the engine is warm (its handshake waits);
- per-request timing in each reply, a metrics line every `metrics_every_s`, clean shutdown on SIGTERM.

Each connection is one session: a policy that encodes several observations (`manifest.history` > 1)
keeps a history per connection.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import logging
import signal
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from policies.errors import ObservationError, SpecError
from policies.guidance import DEFAULT_MAX_WEIGHT, Guidance
from policies.observation import Observation
from policies.preprocess import MAX_TASK_CHARS, check_image_size
from runtime.executor import decision_seed
from serving.wire import MAX_MESSAGE_BYTES, WireError, pack, unpack

log = logging.getLogger("taco.serve")

PROTOCOL = 1
# Request fields: openpi's ALOHA observation, and ours (all optional).
OPENPI_FIELDS = ("images", "state", "prompt")
TACO_FIELDS = ("n", "seed", "noise_stream", "stamp", "rtc_target", "rtc_weights", "rtc_delay", "rtc_max_weight",
               "episode")
# Largest N a client may ask for (the engine's own limit is far higher; a server shares its worker).
DEFAULT_MAX_N = 256


@dataclass(frozen=True)
class ServeConfig:
    # Policy and verifier: shipped names (`default`, `cfn`, `best`, ...) or bundle paths.
    policy: str = "default"
    verifier: str | None = None
    # Candidates per decision when a request does not say.
    n: int = 16
    max_n: int = DEFAULT_MAX_N
    host: str = "127.0.0.1"
    port: int = 8000
    # Checked against `Authorization: Api-Key <key>` when set.
    api_key: str | None = None
    max_clients: int = 8
    max_message_bytes: int = MAX_MESSAGE_BYTES
    # Task text for requests without a `prompt`.
    task: str = ""
    # Send tracebacks of internal errors to clients (debugging only: they describe the server).
    send_tracebacks: bool = False
    metrics_every_s: float = 10.0
    # ONNX Runtime provider ("cpu", "cuda", "tensorrt", "auto") and intra-op threads of the engine.
    provider: str = "cpu"
    threads: int = 1
    # Cross-client batching: requests arriving within this many ms of the first waiting one are inferred
    # together (one encoder call; one sampler call when the bundle allows). 0: each request alone.
    batch_window_ms: float = 0.0
    # Decision log folder (verifiers.decision_log; None: none): a connection's requests are one episode,
    # or, when requests carry `episode`, each value of it one episode; outcomes by `taco label`.
    log_decisions: str | None = None
    log_max_mb: float | None = None
    # Failure monitor (runtime.monitor): a monitor bundle or "monitor" (the policy's shipped one), calibrated
    # for `n` and the verifier; each reply then carries its reading. A connection is one episode, or, when
    # requests carry `episode`, each value of it.
    monitor: str | None = None
    # Pruned best-of-N (policies.pruning): "k:m", every candidate runs k denoising steps and the best m the rest;
    # "auto" (policies.pruning.auto_prune: 2:1 for a flow policy without RTC inputs, with a verifier and no
    # monitor, as measured on the shipped one); "none" or None for no pruning.
    prune: str | None = "auto"
    # Adaptive N (runtime.adaptive, "first:level"): the other candidates only when the first round disagrees.
    adaptive: str | None = None


@dataclass
class Request:
    observation: Observation
    n: int
    seed: int | None
    guidance: Guidance | None = None
    # The client's name for the episode this request belongs to (decision logs); None: the connection's.
    episode: str | None = None


@dataclass
class Pending:
    """A request waiting for the batcher, with its session's history and the future its handler awaits."""

    request: Request
    history: object
    submitted: float
    future: asyncio.Future


def parse_request(message: object, cameras: tuple[str, ...], default_n: int, max_n: int, task: str,
                  received: float) -> Request:
    """An openpi ALOHA request as an Observation, and our optional fields. Cameras the policy does not
    take are dropped (ALOHA clients send four); images may be CHW (openpi's clients) or HWC.

    Raises ObservationError naming the bad field."""
    if not isinstance(message, dict):
        raise ObservationError("request", f"expected a map, got {type(message).__name__}")
    unknown = sorted(set(message) - set(OPENPI_FIELDS) - set(TACO_FIELDS))
    if unknown:
        raise ObservationError(unknown[0], f"unknown field (expected {', '.join(OPENPI_FIELDS + TACO_FIELDS)})")
    for key in ("images", "state"):
        if key not in message:
            raise ObservationError(key, "missing")
    images = message["images"]
    if not isinstance(images, dict):
        raise ObservationError("images", f"expected a map of camera name to image, got {type(images).__name__}")
    taken = {}
    for name in cameras:
        if name not in images:
            raise ObservationError(f"images[{name!r}]", f"missing (the policy takes {', '.join(cameras)})")
        taken[name] = _hwc(images[name], f"images[{name!r}]")
    prompt = message.get("prompt", task)
    if not isinstance(prompt, str):
        raise ObservationError("prompt", f"expected a string, got {type(prompt).__name__}")
    if len(prompt) > MAX_TASK_CHARS:
        raise ObservationError("prompt", f"{len(prompt)} characters; at most {MAX_TASK_CHARS}")
    n = _integer(message.get("n", default_n), "n", 1, max_n)
    seed = message.get("seed")
    if seed is not None:
        seed = _integer(seed, "seed", 0, 2**63 - 1)
    stream = _integer(message.get("noise_stream", 0), "noise_stream", 0, 2**31 - 1)
    if stream:
        if seed is None:
            raise ObservationError("noise_stream", "needs a seed (the stream's draws are of that seed)")
        seed = decision_seed(seed, 0, stream)
    stamp = message.get("stamp", received)
    if isinstance(stamp, bool) or not isinstance(stamp, (int, float, np.integer, np.floating)) \
            or not np.isfinite(stamp):
        raise ObservationError("stamp", f"expected a finite number of seconds, got {stamp!r:.40}")
    state = message["state"]
    if not isinstance(state, np.ndarray):
        raise ObservationError("state", f"expected an array, got {type(state).__name__}")
    episode = message.get("episode")
    if episode is not None and (isinstance(episode, bool) or not isinstance(episode, (str, int))
                                or len(str(episode)) > 200):
        raise ObservationError("episode", f"expected a string or an integer naming the episode, got {episode!r:.40}")
    return Request(Observation(images=taken, state=state, task=prompt, stamp=float(stamp)), n, seed,
                   _guidance(message), None if episode is None else str(episode))


def _guidance(message: dict) -> Guidance | None:
    """Real-time chunking from a request: `rtc_target` float32[K, A] (the robot's executing chunk from the
    observation's stamp on, robot units) with `rtc_weights` float32[H], `rtc_delay` and optionally
    `rtc_max_weight`; the engine checks their sizes against the policy."""
    if "rtc_target" not in message and "rtc_weights" not in message:
        return None
    for key in ("rtc_target", "rtc_weights"):
        value = message.get(key)
        if not isinstance(value, np.ndarray) or value.dtype != np.float32:
            raise ObservationError(key, "expected a float32 array (rtc_target and rtc_weights go together)")
    delay = _integer(message.get("rtc_delay", 0), "rtc_delay", 0, 1 << 16)
    cap = message.get("rtc_max_weight", DEFAULT_MAX_WEIGHT)
    if isinstance(cap, bool) or not isinstance(cap, (int, float, np.floating)):
        raise ObservationError("rtc_max_weight", f"expected a number, got {cap!r:.40}")
    return Guidance(message["rtc_target"], message["rtc_weights"], delay, float(cap))


def _hwc(image: object, name: str) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3:
        what = f"{image.dtype}{list(image.shape)}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ObservationError(name, f"expected uint8[3, H, W] or uint8[H, W, 3], got {what}")
    if image.shape[0] == 3 and image.shape[-1] != 3:
        image = image.transpose(1, 2, 0)
    elif image.shape[-1] != 3:
        raise ObservationError(name, f"expected uint8[3, H, W] or uint8[H, W, 3], got uint8{list(image.shape)}")
    # Checked here, before the request waits for the batcher: no size a client sends costs the worker more
    # than the largest camera's resize.
    check_image_size(name, image.shape[0], image.shape[1])
    return np.ascontiguousarray(image)


def _integer(value: object, name: str, low: int, high: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
        raise ObservationError(name, f"expected an integer in [{low}, {high}], got {value!r:.40}")
    return int(value)


@dataclass
class Metrics:
    """Requests, errors and latencies since the last metrics line."""

    requests: int = 0
    errors: int = 0
    total_ms: list[float] = field(default_factory=list)
    # Engine calls made by the batcher, and the requests they held (batching only).
    batches: int = 0
    batched: int = 0

    def line(self, clients: int, seconds: float) -> str:
        p50, p99 = (np.percentile(self.total_ms, [50, 99]) if self.total_ms else (float("nan"),) * 2)
        line = (f"metrics requests={self.requests} errors={self.errors} clients={clients} window_s={seconds:.1f} "
                f"p50_ms={p50:.2f} p99_ms={p99:.2f}")
        if self.batches:
            line += f" batches={self.batches} mean_batch={self.batched / self.batches:.2f}"
        return line


class PolicyServer:
    """Loads the engine on its worker thread, then serves it; `run()` blocks until SIGTERM/SIGINT or
    `stop()`."""

    def __init__(self, config: ServeConfig):
        if not 1 <= config.n <= config.max_n:
            raise ValueError(f"n: expected an integer in [1, max_n={config.max_n}], got {config.n}")
        if config.max_clients < 1 or config.max_message_bytes < 1024 or not 0 <= config.port < 65536:
            raise ValueError("max_clients must be >= 1, max_message_bytes >= 1024 and port in [0, 65535]")
        if not 0 <= config.batch_window_ms <= 1000:
            raise ValueError(f"batch_window_ms: expected a number of milliseconds in [0, 1000], got "
                             f"{config.batch_window_ms}")
        self.config = config
        self.engine = None
        self.metadata: dict | None = None
        self.port: int | None = None
        self.clients = 0
        self.metrics = Metrics()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="taco-serve-engine")
        self._warm: asyncio.Event | None = None
        self._failed: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Requests waiting for the batcher (batching only), and the event that wakes it.
        self._pending: list[Pending] = []
        self._arrived: asyncio.Event | None = None
        self.ready = threading.Event()
        self.log = None  # the DecisionLog, made with the engine

    # --- engine (worker thread only) ---

    def _load(self) -> dict:
        from policies.observation import make_example_observation
        from policies.shipped import resolve_policy
        from runtime import Engine, EngineConfig, SessionConfig
        from verifiers.shipped import resolve_monitor, resolve_verifier

        c = self.config
        policy = resolve_policy(c.policy)
        verifier = resolve_verifier(c.verifier, policy) if c.verifier else None
        monitor = resolve_monitor(c.monitor, policy)
        session = SessionConfig(provider=c.provider, intra_op_threads=c.threads)
        from policies.bundle import load_policy_bundle
        from policies.pruning import resolve_prune
        from runtime.adaptive import Adaptive

        engine = Engine(policy, verifier=verifier, monitor=monitor,
                        config=EngineConfig(session=session, return_candidates=bool(c.log_decisions),
                                            prune=resolve_prune(c.prune, load_policy_bundle(policy).manifest, c.n,
                                                                verifier is not None, monitor is not None,
                                                                adaptive=c.adaptive is not None,
                                                                logging=bool(c.log_decisions)),
                                            adaptive=None if c.adaptive is None else Adaptive.parse(c.adaptive)))
        if engine.monitor is not None:
            from policies.schema import content_id
            from runtime.monitor import check_monitor_use

            check_monitor_use(engine.monitor.manifest, engine.bundle.fingerprint, c.n, content_id(verifier))
        m = engine.manifest
        # Warm-up: the first run of each graph allocates; no client should pay for it.
        for _ in range(2):
            engine.infer(make_example_observation(m, image_size=(480, 640)), n=c.n, seed=0)
        engine.reset()
        if c.log_decisions:
            from verifiers.decision_log import DecisionLog

            self.log = DecisionLog.for_engine(c.log_decisions, engine, c.log_max_mb, writer="taco serve")
        self.engine = engine
        v = engine.verifier
        return {
            "server": "taco-runtime", "protocol": PROTOCOL,
            "policy_fingerprint": engine.bundle.fingerprint, "policy_kind": m.kind, "policy_name": m.name,
            "verifier": None if v is None else v.name,
            "cameras": [dataclasses.asdict(cam) for cam in m.cameras],
            "image_layout": "uint8 [3, H, W] or [H, W, 3], any size",
            "state_names": list(m.state_names), "action_names": list(m.action_names),
            "chunk_length": m.chunk_length, "action_dt": m.action_dt, "history": m.history,
            "image_resize": m.image_resize, "rtc": m.rtc,
            "n_default": c.n, "n_max": c.max_n, "max_message_bytes": c.max_message_bytes,
            "request_fields": list(OPENPI_FIELDS + TACO_FIELDS), "task": c.task,
            "batch_window_ms": c.batch_window_ms,
            "monitor": None if engine.monitor is None else monitor_metadata(engine.monitor),
        }

    def _infer(self, request: Request, history, submitted: float):
        started = time.perf_counter()
        if history is not None:
            self.engine.history = history
        decision = self.engine.infer(request.observation, n=request.n, seed=request.seed, guidance=request.guidance)
        return decision, (started - submitted) * 1e3, (time.perf_counter() - started) * 1e3, 1

    def _infer_batch(self, batch: list[Pending]):
        from runtime import BatchItem

        started = time.perf_counter()
        results = self.engine.infer_batch([BatchItem(p.request.observation, p.request.n, p.request.seed, p.history,
                                                     p.request.guidance) for p in batch])
        return results, started, (time.perf_counter() - started) * 1e3

    def _log_decision(self, session, request: Request, decision) -> None:
        """Logs a decision into the connection's episode (worker thread: serialised with inference and
        writes, off the event loop). A new `episode` value starts the next episode."""
        episode = request.episode if request.episode is not None else ""
        if not session.active or session.current[0] != episode:
            session.start(episode, instruction=request.observation.task)
        session.decision(decision, request.observation.state)

    def _close_session(self, session) -> None:
        full = self.log.full
        session.close()
        for path in session.written:
            log.info("logged episode %s", path)
        if self.log.full and not full:
            log.warning("decision log %s reached --log-max-mb %g: later episodes are not logged", self.log.root,
                        self.config.log_max_mb)

    # --- batching (event loop) ---

    async def _submit(self, request: Request, history, submitted: float):
        """Queues a request for the batcher and waits for its decision (or raises its error)."""
        future = self._loop.create_future()
        self._pending.append(Pending(request, history, submitted, future))
        self._arrived.set()
        return await future

    async def _batcher(self) -> None:
        """Gathers waiting requests into one engine call: it waits `batch_window_ms` from the first one,
        or less when every connected client is already waiting (each has at most one request in flight),
        then sends them all to the worker. Requests that arrive meanwhile form the next batch."""
        window = self.config.batch_window_ms / 1e3
        while True:
            await self._arrived.wait()
            self._arrived.clear()
            if not self._pending:
                continue
            deadline = self._pending[0].submitted + window
            while len(self._pending) < self.clients and (left := deadline - time.perf_counter()) > 0:
                try:
                    await asyncio.wait_for(self._arrived.wait(), left)
                except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
                    break
                self._arrived.clear()
            batch, self._pending = [p for p in self._pending if not p.future.done()], []
            if not batch:
                continue
            try:
                results, started, infer_ms = await asyncio.wrap_future(self._worker.submit(self._infer_batch, batch))
            except Exception as err:  # an internal error fails every request of the batch
                results, started, infer_ms = [err] * len(batch), time.perf_counter(), 0.0
            self.metrics.batches += 1
            self.metrics.batched += len(batch)
            for pending, result in zip(batch, results):
                if pending.future.done():  # its client went away
                    continue
                if isinstance(result, BaseException):
                    pending.future.set_exception(result)
                else:
                    pending.future.set_result((result, (started - pending.submitted) * 1e3, infer_ms, len(batch)))

    # --- network ---

    def _respond_http(self, connection, request):
        """Health checks, the API key and the connection limit, before the websocket upgrade."""
        if request.path == "/healthz":
            if self._failed is not None:
                return connection.respond(503, "engine failed\n")
            return connection.respond(200, "OK\n") if self._warm.is_set() else connection.respond(503, "loading\n")
        key = self.config.api_key
        if key is not None:
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode("utf-8", "replace"), f"Api-Key {key}".encode()):
                log.warning("refused connection from %s: missing or wrong API key", connection.remote_address)
                return connection.respond(401, "missing or wrong API key\n")
        if self.clients >= self.config.max_clients:
            return connection.respond(503, f"too many clients (at most {self.config.max_clients})\n")
        return None

    async def _handle(self, ws) -> None:
        from websockets.exceptions import ConnectionClosed

        self.clients += 1
        peer = ws.remote_address
        session = None
        try:
            if self.clients > self.config.max_clients:
                await ws.close(1013, "too many clients")
                return
            await self._warm.wait()
            if self._failed is not None:
                await ws.close(1011, "engine failed to load")
                return
            await ws.send(pack(self.metadata))
            log.info("client connected: %s (%d connected)", peer, self.clients)
            history = self.engine.policy.history() if self.engine.manifest.history > 1 else None
            monitor = MonitorSession(self.engine.monitor, self.engine.manifest.action_dt)
            cameras = tuple(cam.name for cam in self.engine.manifest.cameras)
            previous_total = None
            if self.log is not None:
                from verifiers.decision_log import StreamLog

                # The server does not see what the robot executed: decisions are placed by their stamps.
                session = StreamLog(self.log, "serve", by_time=True, verifier=self.metadata["verifier"])
            while True:
                try:
                    message = await ws.recv()
                except ConnectionClosed:
                    return
                received = time.perf_counter()
                try:
                    if isinstance(message, str):
                        raise WireError("expected a binary msgpack frame, got text")
                    request = parse_request(unpack(message, self.config.max_message_bytes), cameras, self.config.n,
                                            self.config.max_n, self.config.task, time.time())
                    decoded = time.perf_counter()
                    if self.config.batch_window_ms > 0:
                        decision, queue_ms, infer_ms, batch = await self._submit(request, history, decoded)
                    else:
                        decision, queue_ms, infer_ms, batch = await asyncio.wrap_future(
                            self._worker.submit(self._infer, request, history, decoded))
                except (WireError, SpecError) as err:
                    # The client's mistake (or a policy that gave only non-finite chunks): say what, keep going.
                    self.metrics.errors += 1
                    log.info("bad request from %s: %s: %s", peer, type(err).__name__, err)
                    await ws.send(f"{type(err).__name__}: {err}")
                    continue
                except Exception:
                    self.metrics.errors += 1
                    log.exception("internal error serving %s", peer)
                    await ws.send(traceback.format_exc() if self.config.send_tracebacks else "Internal server error.")
                    await ws.close(1011, "internal server error")
                    return
                total_ms = (time.perf_counter() - received) * 1e3
                reply = {
                    "actions": decision.chunk.astype(np.float32),
                    "times": decision.times,
                    "index": decision.index,
                    "scores": None if decision.scores is None else [float(s) for s in decision.scores],
                    "n": decision.n, "seed": decision.seed, "verifier": decision.verifier,
                    "policy_fingerprint": decision.policy_fingerprint,
                    "policy_timing": {k: float(v) for k, v in decision.timings.items()},
                    "batch": batch, "delay": decision.delay,
                    "monitor": monitor.read(request, decision),
                    "server_timing": {"decode_ms": (decoded - received) * 1e3, "queue_ms": queue_ms,
                                      "infer_ms": infer_ms, "total_ms": total_ms,
                                      **({} if previous_total is None else {"prev_total_ms": previous_total})},
                }
                await ws.send(pack(reply))
                if session is not None:  # after the reply: logging never delays it
                    self._worker.submit(self._log_decision, session, request, decision)
                previous_total = (time.perf_counter() - received) * 1e3
                self.metrics.requests += 1
                self.metrics.total_ms.append(previous_total)
                log.debug("served %s n=%d seed=%d index=%d infer_ms=%.2f queue_ms=%.2f", peer, decision.n,
                          decision.seed, decision.index, infer_ms, queue_ms)
        except ConnectionClosed:
            return
        finally:
            self.clients -= 1
            log.info("client gone: %s (%d connected)", peer, self.clients)
            if session is not None:
                self._worker.submit(self._close_session, session)

    async def _report(self) -> None:
        every = self.config.metrics_every_s
        while every > 0:
            started = time.monotonic()
            await asyncio.sleep(every)
            metrics, self.metrics = self.metrics, Metrics()
            if metrics.requests or metrics.errors or self.clients:
                log.info(metrics.line(self.clients, time.monotonic() - started))

    async def serve(self) -> None:
        from websockets.asyncio.server import serve

        c = self.config
        self._loop = asyncio.get_running_loop()
        self._warm, self._stop, self._arrived = asyncio.Event(), asyncio.Event(), asyncio.Event()
        if not is_local(c.host):
            log.warning("listening on %s: reachable from other machines%s", c.host,
                        "" if c.api_key else " by anyone (no --api-key-file)")
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._loop.add_signal_handler(sig, self._stop.set)
            except (ValueError, RuntimeError):  # not the main thread (tests run the server in a thread)
                pass
        async with serve(self._handle, c.host, c.port, compression=None, max_size=c.max_message_bytes,
                         max_queue=2, process_request=self._respond_http) as server:
            self.port = server.sockets[0].getsockname()[1]
            log.info("listening on ws://%s:%d (loading %s)", c.host, self.port, c.policy)
            self.ready.set()
            reporter = asyncio.create_task(self._report())
            batcher = asyncio.create_task(self._batcher()) if c.batch_window_ms > 0 else None
            try:
                self.metadata = await asyncio.wrap_future(self._worker.submit(self._load))
                log.info("engine warm: policy %s (%s), verifier %s, n=%d", self.metadata["policy_name"],
                         self.metadata["policy_fingerprint"][:12], self.metadata["verifier"], c.n)
            except Exception as err:
                self._failed = err
                log.exception("the engine failed to load")
                self._warm.set()
                raise
            self._warm.set()
            await self._stop.wait()
            reporter.cancel()
            if batcher is not None:
                batcher.cancel()
            log.info("shutting down")
            server.close()
            await server.wait_closed()
        self._worker.shutdown(wait=True)

    def run(self) -> None:
        asyncio.run(self.serve())

    def stop(self) -> None:
        """Stops a server running in another thread."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)


def monitor_metadata(monitor) -> dict:
    """What a client learns of the server's monitor at connection."""
    m = monitor.manifest
    main = m.detectors.get(m.main) if m.main else None
    return {"name": m.name, "n": m.n, "signals": list(m.signals), "detector": m.main,
            "threshold": None if main is None else main.threshold, "alpha": None if main is None else main.alpha}


class MonitorSession:
    """One connection's failure-monitor track: a reading per reply, a fresh episode when the request's
    `episode` changes. Requests at another N than the monitor's are not read (the reply says why)."""

    def __init__(self, monitor, dt: float):
        self.monitor = monitor
        self.track = None if monitor is None else monitor.track(dt)
        self.episode: str | None = None

    def read(self, request: Request, decision) -> dict | None:
        if self.monitor is None:
            return None
        if decision.n != self.monitor.manifest.n:
            return {"skipped": f"the monitor is calibrated at N={self.monitor.manifest.n}, this request asked "
                               f"N={decision.n}"}
        if request.episode is not None and request.episode != self.episode:
            self.track.reset()
            self.episode = request.episode
        return self.track.update(decision).to_dict()


def serve_in_thread(config: ServeConfig, timeout: float = 120.0) -> tuple[PolicyServer, threading.Thread]:
    """Starts a server on a background thread and waits until it listens (tests, benchmarks)."""
    server = PolicyServer(config)
    errors: list[BaseException] = []

    def main():
        try:
            server.run()
        except BaseException as err:  # noqa: BLE001 - reported to the caller below
            errors.append(err)
            server.ready.set()

    thread = threading.Thread(target=main, name="taco-serve", daemon=True)
    thread.start()
    if not server.ready.wait(timeout) or errors:
        raise RuntimeError(f"the server did not start: {errors[0] if errors else 'timed out'}")
    return server, thread


def is_local(host: str) -> bool:
    """Whether a bind address is loopback only."""
    return host in ("127.0.0.1", "localhost", "::1")

