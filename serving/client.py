"""`RemoteEngine`: the Engine's `infer(observation, n, seed) -> Decision` against a `taco serve` server.

For a robot computer without a GPU: the ROS policy node (`server:=ws://HOST:8000`) and the chunk
executors take a RemoteEngine where they take an Engine. Requests and replies are openpi's protocol
(serving/server.py); the reply is checked before it becomes a Decision (shape, finiteness, the policy
fingerprint the connection started with), so a robot never gets a chunk from another policy or one
computed from garbage. A dropped connection is reopened once per call (`reconnects`); a server that
comes back with another policy is refused.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from policies.errors import ObservationError, SpecError
from policies.guidance import Guidance
from policies.manifest import CameraSpec
from policies.observation import Observation
from policies.preprocess import check_image_size, fit_uint8
from runtime.engine import Decision
from serving.wire import pack, unpack


def read_api_key(path: str | Path | None) -> str | None:
    """The key in a key file (surrounding whitespace dropped), None without a file; an empty file is refused."""
    if not path:
        return None
    key = Path(path).read_text().strip()
    if not key:
        raise ValueError(f"api key file {path} is empty")
    return key


class RemoteError(RuntimeError):
    """The server refused a request, failed, or could not be reached; the text says which."""


@dataclass(frozen=True)
class RemoteVerifier:
    """The server's verifier, by name (it cannot be swapped from the client)."""

    name: str


@dataclass(frozen=True)
class RemoteManifest:
    """What the server's metadata says about its policy (the fields executors and nodes read)."""

    kind: str
    name: str
    fingerprint: str
    chunk_length: int
    action_dt: float
    state_names: tuple[str, ...]
    action_names: tuple[str, ...]
    cameras: tuple[CameraSpec, ...]
    history: int
    # How the server fits camera frames to the encoder's size (PolicyManifest.image_resize).
    image_resize: str = "pad_center"
    # Whether the server's policy takes real-time chunking guidance (PolicyManifest.rtc).
    rtc: bool = False

    @property
    def state_dim(self) -> int:
        return len(self.state_names)

    @property
    def action_dim(self) -> int:
        return len(self.action_names)


class RemoteEngine:
    """A connection to a policy server that answers like an Engine."""

    def __init__(self, url: str, api_key: str | None = None, open_timeout: float = 30.0,
                 reply_timeout: float | None = 60.0, max_message_bytes: int = 16 << 20, resize_on_client: bool = False):
        """`resize_on_client`: send each camera frame already fitted to the policy's input size (rounded
        to uint8), as openpi's own clients do, instead of as captured: a 480x640 frame for a 96x128
        policy is 25x fewer bytes. The decision is then the local engine's for the fitted frame (the
        rounding moves each pixel by at most half a grey level); off, it is the local engine's for the
        frame as captured, bit for bit. Frames of the policy's size are sent as they are either way."""
        if not url.startswith(("ws://", "wss://")):
            raise ValueError(f"server: expected ws://HOST:PORT or wss://..., got {url!r}")
        self.url = url
        self._api_key = api_key
        self._open_timeout = open_timeout
        self._reply_timeout = reply_timeout
        self._max_bytes = max_message_bytes
        self.resize_on_client = resize_on_client
        self._ws = None
        self.reconnects = 0
        self.metadata = m = self._connect()
        try:
            self.fingerprint = m["policy_fingerprint"]
            self.manifest = RemoteManifest(
                kind=m["policy_kind"], name=m["policy_name"], fingerprint=self.fingerprint,
                chunk_length=int(m["chunk_length"]), action_dt=float(m["action_dt"]),
                state_names=tuple(m["state_names"]), action_names=tuple(m["action_names"]),
                cameras=tuple(CameraSpec(c["name"], int(c["height"]), int(c["width"])) for c in m["cameras"]),
                history=int(m["history"]), image_resize=str(m.get("image_resize", "pad_center")),
                rtc=bool(m.get("rtc", False)))
        except (KeyError, TypeError, ValueError) as err:
            self.close()
            raise RemoteError(f"{url} sent metadata without the policy's {err}") from err

    def _connect(self) -> dict:
        from websockets.sync.client import connect

        headers = {"Authorization": f"Api-Key {self._api_key}"} if self._api_key else None
        try:
            # Entered as a context manager (websockets 17 deprecates a bare connection); `close` leaves it.
            self._ws = connect(self.url, compression=None, max_size=self._max_bytes, open_timeout=self._open_timeout,
                               additional_headers=headers).__enter__()
            metadata = unpack(self._ws.recv(timeout=self._open_timeout), self._max_bytes)
        except Exception as err:
            self.close()
            raise RemoteError(f"cannot connect to the policy server at {self.url}: {type(err).__name__}: {err}") \
                from err
        if not isinstance(metadata, dict) or metadata.get("server") != "taco-runtime":
            self.close()
            raise RemoteError(f"{self.url} is not a taco-runtime policy server (metadata {str(metadata)[:200]})")
        return metadata

    @property
    def verifier(self) -> RemoteVerifier | None:
        name = self.metadata.get("verifier")
        return None if name is None else RemoteVerifier(name)

    def set_verifier(self, verifier) -> None:
        raise RemoteError("the policy server chooses the verifier (taco serve --verifier)")

    def close(self) -> None:
        if self._ws is not None:
            try:
                self._ws.close()
            finally:
                self._ws = None

    def __enter__(self) -> RemoteEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def reset(self) -> None:
        """A new episode: a policy with history keeps it per connection, so reconnect."""
        if self.manifest.history > 1:
            self.close()
            self._reopen()

    def observe(self, observation) -> None:
        if self.manifest.history > 1:
            raise NotImplementedError("observations between decisions are not sent to a server yet")

    def _reopen(self) -> None:
        metadata = self._connect()
        if metadata["policy_fingerprint"] != self.fingerprint:
            self.close()
            raise RemoteError(f"{self.url} now serves policy {metadata['policy_fingerprint'][:12]}, not "
                              f"{self.fingerprint[:12]}; refusing its chunks")
        self.metadata = metadata
        self.reconnects += 1

    def infer(self, observation: Observation | Mapping, n: int | None = None, seed: int | None = None,
              guidance: Guidance | None = None):
        """`Engine.infer` on the server; `guidance` (real-time chunking) travels with the request."""
        from websockets.exceptions import ConnectionClosed

        if isinstance(observation, Mapping):
            observation = Observation.from_dict(observation)
        request = {"images": self._images(observation.images),
                   "state": np.asarray(observation.state), "prompt": observation.task,
                   "stamp": float(observation.stamp)}
        if n is not None:
            request["n"] = int(n)
        if seed is not None:
            request["seed"] = int(seed)
        if guidance is not None:
            request.update(rtc_target=np.asarray(guidance.target, np.float32),
                           rtc_weights=np.asarray(guidance.weights, np.float32), rtc_delay=int(guidance.delay),
                           rtc_max_weight=float(guidance.max_weight))
        try:
            message = pack(request)
        except TypeError as err:
            raise ObservationError("observation", f"cannot be sent: {err}") from err
        started = time.perf_counter()
        for attempt in (0, 1):
            try:
                if self._ws is None:
                    self._reopen()
                self._ws.send(message)
                reply = self._ws.recv(timeout=self._reply_timeout)
                break
            except TimeoutError as err:  # an OSError too: caught first, a slow server is not a dropped one
                self.close()
                raise RemoteError(f"no reply from {self.url} within {self._reply_timeout} s") from err
            except (ConnectionClosed, OSError) as err:
                self.close()
                if attempt:
                    raise RemoteError(f"the policy server at {self.url} dropped the connection: {err}") from err
        round_trip = (time.perf_counter() - started) * 1e3
        if isinstance(reply, str):
            field, _, text = reply.partition(": ")
            if field == "ObservationError":
                name, _, why = text.partition(": ")
                raise ObservationError(name, why)
            raise RemoteError(f"the policy server refused the request: {reply[:2000]}")
        return self._decision(unpack(reply, self._max_bytes), round_trip)

    def _images(self, images: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The frames of the policy's cameras (all of them when one is missing: the server names it),
        fitted to the policy's size when `resize_on_client`."""
        sizes = {c.name: (c.height, c.width) for c in self.manifest.cameras}
        if not sizes.keys() <= images.keys():
            return {k: np.asarray(v) for k, v in images.items()}
        out = {}
        for name, (height, width) in sizes.items():
            image = np.asarray(images[name])
            if self.resize_on_client and image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3 \
                    and image.shape[:2] != (height, width):
                check_image_size(f"images[{name!r}]", image.shape[0], image.shape[1])
                image = fit_uint8(image, height, width, self.manifest.image_resize)
            out[name] = image
        return out

    def _decision(self, reply: dict, round_trip_ms: float) -> Decision:
        m = self.manifest
        if not isinstance(reply, dict) or reply.get("policy_fingerprint") != self.fingerprint:
            raise RemoteError("the reply is not from the policy this connection started with")
        chunk, times = reply.get("actions"), reply.get("times")
        if not isinstance(chunk, np.ndarray) or chunk.shape != (m.chunk_length, m.action_dim):
            raise SpecError("actions", f"expected float32[{m.chunk_length}, {m.action_dim}] from the server")
        if not np.isfinite(chunk).all() or not isinstance(times, np.ndarray) or times.shape != (m.chunk_length,) \
                or not np.isfinite(times).all():
            raise SpecError("actions", "the server sent non-finite actions or times; refusing them")
        scores = reply.get("scores")
        timings = {k: float(v) for k, v in reply.get("policy_timing", {}).items()}
        server = reply.get("server_timing", {})
        timings["server_total"] = float(server.get("total_ms", float("nan")))
        for key in ("decode_ms", "queue_ms"):  # the server's time outside the engine
            timings["server_" + key[:-3]] = float(server.get(key, float("nan")))
        timings["network"] = round_trip_ms - timings["server_total"]
        timings["round_trip"] = round_trip_ms
        return Decision(chunk=chunk.astype(np.float32), times=times.astype(np.float64), index=int(reply["index"]),
                             scores=None if scores is None else np.asarray(scores, np.float32), candidates=None,
                             features=None, timings=timings, n=int(reply["n"]), seed=int(reply["seed"]),
                             verifier=reply.get("verifier"), policy_fingerprint=self.fingerprint,
                             delay=int(reply.get("delay", 0)))
