"""`taco serve`: openpi-client (the PyPI package, unchanged) against our server; RemoteEngine; hostile
messages; several clients at once."""

import dataclasses
import json
import re
import socket
import threading
import time
import urllib.error
import urllib.request

import msgpack
import numpy as np
import pytest

from policies.errors import ObservationError
from policies.observation import make_example_observation
from runtime import Engine
from serving.client import RemoteEngine, RemoteError
from serving.server import ServeConfig, serve_in_thread
from serving.wire import pack, unpack
from waiting import wait_until

# openpi's PyPI client, unchanged (`make test` installs it with --no-deps).
from openpi_client import websocket_client_policy as openpi_client


@pytest.fixture(scope="module")
def policy(exported):
    return exported("flow").path


@pytest.fixture(scope="module")
def server(policy):
    server, thread = serve_in_thread(ServeConfig(policy=str(policy), port=0, n=4, max_clients=12,
                                                 max_message_bytes=4 << 20, metrics_every_s=0.5))
    yield server
    server.stop()
    thread.join(30)
    assert not thread.is_alive()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _in_threads(client, count, timeout=120):
    """Runs client(0) .. client(count - 1) at once, each on its own thread, and waits for them."""
    threads = [threading.Thread(target=client, args=(c,)) for c in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)


def _url(server):
    return f"ws://127.0.0.1:{server.port}"


def _aloha(manifest, seed=0, chw=True, size=(224, 224)):
    """An ALOHA request as openpi's clients send it: every camera CHW uint8, float64 state, a prompt."""
    rng = np.random.default_rng(seed)
    images = {name: rng.integers(0, 256, (3, *size) if chw else (*size, 3), dtype=np.uint8)
              for name in ("cam_high", "cam_low", "cam_left_wrist", "cam_right_wrist")}
    return {"images": images, "state": rng.standard_normal(14), "prompt": "transfer the cube"}


def test_openpi_client_handshake_round_trip_and_errors(server, policy):
    client = openpi_client.WebsocketClientPolicy(host="127.0.0.1", port=server.port)
    local = Engine(policy)
    meta = client.get_server_metadata()
    assert meta["policy_fingerprint"] == local.bundle.fingerprint and meta["chunk_length"] == 8
    assert [c["name"] for c in meta["cameras"]] == ["cam_high"] and meta["verifier"] is None
    assert meta["state_names"] == list(local.manifest.state_names) and meta["action_dt"] == local.manifest.action_dt
    request = _aloha(local.manifest)
    reply = client.infer({**request, "seed": 11, "n": 3})
    assert reply["actions"].shape == (8, 14) and reply["actions"].dtype == np.float32
    assert reply["n"] == 3 and reply["seed"] == 11 and reply["policy_fingerprint"] == local.bundle.fingerprint
    assert {"infer_ms", "queue_ms", "total_ms"} <= set(reply["server_timing"]) and "total" in reply["policy_timing"]
    # The same decision as a local engine on the same observation (CHW turned HWC, extra cameras dropped).
    hwc = np.ascontiguousarray(request["images"]["cam_high"].transpose(1, 2, 0))
    mine = local.infer({"images": {"cam_high": hwc}, "state": request["state"], "task": request["prompt"]},
                       n=3, seed=11)
    np.testing.assert_array_equal(reply["actions"], mine.chunk)
    # A bad request: an error naming the field, and the next call on the same connection works.
    with pytest.raises(RuntimeError, match=r"ObservationError: state: expected shape \[14\]"):
        client.infer({**request, "state": np.zeros(13)})
    with pytest.raises(RuntimeError, match=r"ObservationError: bogus: unknown field"):
        client.infer({**request, "bogus": 1})
    with pytest.raises(RuntimeError, match=r"images\['cam_high'\]: missing"):
        client.infer({**request, "images": {"cam_low": request["images"]["cam_low"]}})
    with pytest.raises(RuntimeError, match=r"ObservationError: n: expected an integer in \[1, 256\]"):
        client.infer({**request, "n": 0})
    assert client.infer(request)["actions"].shape == (8, 14)
    # openpi's chunk broker slices every array of the reply by step: ours are all H-leading.
    from openpi_client.action_chunk_broker import ActionChunkBroker

    broker = ActionChunkBroker(client, action_horizon=8)
    for _ in range(8):
        step = broker.infer(request)
        assert step["actions"].shape == (14,)


def test_health_api_key_and_limits(policy, tmp_path):
    from openpi_client.websocket_client_policy import WebsocketClientPolicy
    from websockets.exceptions import ConnectionClosed, InvalidStatus
    from websockets.sync.client import connect

    server, thread = serve_in_thread(ServeConfig(policy=str(policy), port=0, n=2, api_key="s3cret", max_clients=1,
                                                 max_message_bytes=1 << 20, metrics_every_s=0))
    try:
        deadline = time.time() + 60
        while True:  # 503 while loading, then 200
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=5) as r:
                    assert r.status == 200 and r.read() == b"OK\n"
                    break
            except urllib.error.HTTPError as err:
                assert err.code == 503 and time.time() < deadline
                time.sleep(0.05)
        with pytest.raises(InvalidStatus, match="401"):
            connect(f"ws://127.0.0.1:{server.port}", additional_headers={"Authorization": "Api-Key wrong"})
        with pytest.raises(InvalidStatus, match="401"):
            connect(f"ws://127.0.0.1:{server.port}")
        client = WebsocketClientPolicy(host="127.0.0.1", port=server.port, api_key="s3cret")
        manifest = Engine(policy).manifest
        assert client.infer(_aloha(manifest, size=(32, 32)))["actions"].shape == (8, 14)
        # One client at most: a second is refused before the upgrade.
        with pytest.raises(InvalidStatus, match="503"):
            connect(f"ws://127.0.0.1:{server.port}", additional_headers={"Authorization": "Api-Key s3cret"})
        # A message over the limit closes that connection (1009); the server goes on.
        with pytest.raises(ConnectionClosed):
            client.infer(_aloha(manifest, size=(480, 640)))
        wait_until(lambda: not server.clients, 10, "the closed connection's slot to be freed",
                    seen=lambda: server.clients)
        client = WebsocketClientPolicy(host="127.0.0.1", port=server.port, api_key="s3cret")
        assert client.infer(_aloha(manifest, size=(32, 32)))["actions"].shape == (8, 14)
    finally:
        server.stop()
        thread.join(30)


def test_remote_engine_gives_the_local_engines_decision(server, policy):
    local = Engine(policy)
    obs = make_example_observation(local.manifest, seed=3, image_size=(480, 640))
    with RemoteEngine(_url(server)) as remote:
        assert remote.manifest.chunk_length == local.manifest.chunk_length
        assert remote.fingerprint == remote.manifest.fingerprint == local.bundle.fingerprint
        for n, seed in ((1, 0), (4, 7), (16, 2**62)):
            got, want = remote.infer(obs, n=n, seed=seed), local.infer(obs, n=n, seed=seed)
            np.testing.assert_array_equal(got.chunk, want.chunk)
            np.testing.assert_array_equal(got.times, want.times)
            assert (got.index, got.n, got.seed) == (want.index, want.n, want.seed)
            assert got.timings["round_trip"] >= got.timings["server_total"] > 0
        with pytest.raises(ObservationError) as err:
            remote.infer({"images": obs.images, "state": obs.state[:13], "task": "t"})
        assert err.value.field == "state"
        # Reconnects when the connection drops.
        remote._ws.close()
        np.testing.assert_array_equal(remote.infer(obs, n=2, seed=1).chunk, local.infer(obs, n=2, seed=1).chunk)
        assert remote.reconnects == 1
    with pytest.raises(RemoteError, match="cannot connect"):
        RemoteEngine(f"ws://127.0.0.1:{_free_port()}", open_timeout=2)


def test_a_pruning_server_gives_the_local_pruned_engines_decision(policy, tmp_path):
    from policies.pruning import Prune
    from runtime.engine import EngineConfig
    from verifiers import write_verifier_bundle
    from verifiers.synthetic import linear_verifier_onnx

    local = Engine(policy)
    dim = local.manifest.feature_dim
    verifier = write_verifier_bundle(linear_verifier_onnx(tmp_path / "v.onnx", np.linspace(-1, 1, dim)),
                                     tmp_path / "v", policy_fingerprint=local.bundle.fingerprint, feature_dim=dim)
    obs = make_example_observation(local.manifest, seed=4, image_size=(480, 640))
    # An explicit setting, and the default, auto, which does not prune a policy with RTC inputs (this one).
    assert local.manifest.rtc
    for setting, prune in (("2:2", Prune(2, 2)), ("auto", None)):
        pruned = Engine(policy, str(verifier.path), EngineConfig(prune=prune))
        server, thread = serve_in_thread(ServeConfig(policy=str(policy), verifier=str(verifier.path), port=0, n=8,
                                                     prune=setting, metrics_every_s=0))
        try:
            with RemoteEngine(_url(server)) as remote:
                for seed in (0, 5, 9):
                    got, want = remote.infer(obs, n=8, seed=seed), pruned.infer(obs, n=8, seed=seed)
                    np.testing.assert_array_equal(got.chunk, want.chunk)
                    assert got.index == want.index
                    assert (want.finished is None) if prune is None else (got.index in want.finished)
        finally:
            server.stop()
            thread.join(30)


def test_remote_engine_sends_real_time_chunking_guidance(server, policy):
    from policies.guidance import guidance_from

    local = Engine(policy)
    m = local.manifest
    executing = local.infer(make_example_observation(m, seed=8), n=1, seed=2)
    obs = make_example_observation(m, seed=3)
    guidance = guidance_from(executing.chunk, executing.times, obs.stamp, m.action_dt, delay=2, horizon=6)
    with RemoteEngine(_url(server)) as remote:
        assert remote.manifest.rtc
        got = remote.infer(obs, n=4, seed=5, guidance=guidance)
        np.testing.assert_array_equal(got.chunk, local.infer(obs, n=4, seed=5, guidance=guidance).chunk)
        assert got.delay == 2
        assert np.abs(got.chunk - remote.infer(obs, n=4, seed=5).chunk).max() > 1e-3
        bad = dataclasses.replace(guidance, weights=np.full(m.chunk_length, 2.0, np.float32))
        with pytest.raises(ObservationError) as err:
            remote.infer(obs, n=4, seed=5, guidance=bad)
        assert err.value.field == "guidance.weights"


def test_remote_engine_resizing_on_the_client_sends_less_and_gets_the_fitted_frames_decision(server, policy):
    """`resize_on_client`: frames go out at the policy's size; the decision is the local engine's for that
    fitted frame, and within half a grey level of the frame as captured."""
    from policies.preprocess import fit_uint8, resize_with_pad

    local = Engine(policy)
    m = local.manifest
    obs = make_example_observation(m, seed=3, image_size=(480, 640))
    obs.images["cam_extra"] = obs.images["cam_high"]  # a camera the policy does not take is not sent
    cam = m.cameras[0]
    fitted = fit_uint8(obs.images[cam.name], cam.height, cam.width, m.image_resize)
    assert fitted.shape == (cam.height, cam.width, 3)
    assert np.abs(fitted - resize_with_pad(obs.images[cam.name], cam.height, cam.width, m.image_resize)).max() <= 0.5
    with RemoteEngine(_url(server), resize_on_client=True) as remote:
        sent = remote._images(obs.images)
        assert set(sent) == {c.name for c in m.cameras}
        np.testing.assert_array_equal(sent[cam.name], fitted)
        got = remote.infer(obs, n=4, seed=5)
    want = local.infer(dataclasses.replace(obs, images={cam.name: fitted}), n=4, seed=5)
    np.testing.assert_array_equal(got.chunk, want.chunk)
    assert len(pack({"images": sent})) * 20 < len(pack({"images": {cam.name: obs.images[cam.name]}}))


def _hostile_messages(rng, valid: bytes, count: int):
    """Random bytes, truncations, spliced garbage, and well-formed msgpack with every field wrong."""
    arrays = [
        {b"__ndarray__": True, b"data": b"A" * 8, b"dtype": "|O", b"shape": [1]},
        {b"__ndarray__": True, b"data": b"A" * 16, b"dtype": [["a", "<f8"]], b"shape": [1]},
        {b"__ndarray__": True, b"data": b"", b"dtype": "<f4", b"shape": [2**40, 2**40]},
        {b"__ndarray__": True, b"data": b"\x00" * 8, b"dtype": "<f4", b"shape": [100]},
        {b"__ndarray__": True, b"data": b"\x00" * 8, b"dtype": "<f4", b"shape": [-2]},
        {b"__npgeneric__": True, b"data": b"x", b"dtype": "|O"},
        # Well-formed float32 arrays that make a bad guidance: NaN, too long, weights above 1.
        {b"__ndarray__": True, b"data": np.full((3, 14), np.nan, np.float32).tobytes(), b"dtype": "<f4",
         b"shape": [3, 14]},
        {b"__ndarray__": True, b"data": np.zeros((99, 14), np.float32).tobytes(), b"dtype": "<f4", b"shape": [99, 14]},
        {b"__ndarray__": True, b"data": np.full(8, 3.0, np.float32).tobytes(), b"dtype": "<f4", b"shape": [8]},
    ]
    wrong = [None, 1, -1, 2**70, 1.5, float("nan"), "x", b"x", [], {}, [1, 2], True, *arrays]
    fields = ("images", "state", "prompt", "n", "seed", "noise_stream", "stamp", "rtc_target", "rtc_weights",
              "rtc_delay", "rtc_max_weight")
    base = unpack(valid)
    for i in range(count):
        kind = i % 5
        if kind == 0:
            yield rng.bytes(int(rng.integers(0, 400)))
        elif kind == 1:
            yield valid[: int(rng.integers(0, len(valid)))]
        elif kind == 2:
            data = bytearray(valid)
            for _ in range(int(rng.integers(1, 6))):
                data[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
            yield bytes(data)
        elif kind == 3:
            message = dict(base)
            message[fields[int(rng.integers(0, len(fields)))]] = wrong[int(rng.integers(0, len(wrong)))]
            yield msgpack.packb(message, default=lambda o: o.tolist() if isinstance(o, np.ndarray) else str(o),
                                use_bin_type=True)
        else:
            cam = dict(base["images"])
            cam["cam_high"] = arrays[int(rng.integers(0, len(arrays)))]
            yield msgpack.packb({**base, "images": cam}, default=lambda o: o.tolist(), use_bin_type=True)


def test_fuzz_a_thousand_hostile_messages_leave_the_server_serving(server, policy):
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    manifest = Engine(policy).manifest
    valid = pack(_aloha(manifest, size=(32, 32)))
    rng = np.random.default_rng(0)
    answered = closed = 0
    ws = connect(_url(server), max_size=None).__enter__()
    ws.recv()
    for message in _hostile_messages(rng, valid, 1200):
        try:
            ws.send(message)
            reply = ws.recv(timeout=30)
        except ConnectionClosed:
            closed += 1
            ws = connect(_url(server), max_size=None).__enter__()
            ws.recv()
            continue
        answered += 1
        if isinstance(reply, bytes):  # a mutation that still makes a valid request gets a real answer
            assert unpack(reply)["actions"].shape == (8, 14)
        else:
            # A refusal by name; a mutated but well-formed number far out of range can also leave every
            # candidate non-finite, which the engine refuses the same way (nothing is executed).
            assert reply.startswith(("WireError: ", "ObservationError: ", "SpecError: chunks: ")), reply[:200]
    ws.close()
    assert answered + closed == 1200 and closed == 0
    # Still serving, correctly.
    with RemoteEngine(_url(server)) as remote:
        obs = make_example_observation(manifest, seed=5)
        np.testing.assert_array_equal(remote.infer(obs, n=4, seed=9).chunk,
                                      Engine(policy).infer(obs, n=4, seed=9).chunk)


def test_every_oversized_shape_is_refused_naming_its_field_without_the_servers_memory_growing(server, policy):
    """Each message fits the 4 MiB message limit; before the caps a [1, 1e6, 3] image built a dense
    224 x 1e6 float64 resize matrix (1.8 GB) and the server went silent."""
    import resource

    from websockets.sync.client import connect

    from policies.preprocess import MAX_IMAGE_SIDE, MAX_TASK_CHARS

    manifest = Engine(policy).manifest
    base = _aloha(manifest, size=(32, 32))
    side = MAX_IMAGE_SIDE + 1
    cases = {  # field -> replacement; each must be refused with the field's name
        "images['cam_high']": [np.zeros((1, 1_000_000, 3), np.uint8), np.zeros((3, 1, 1_000_000), np.uint8),
                               np.zeros((1_000_000, 1, 3), np.uint8), np.zeros((3, side, 2), np.uint8),
                               np.zeros((side, 3, 3), np.uint8), np.zeros((0, 8, 3), np.uint8),
                               np.zeros((3, 0, 8), np.uint8), np.zeros((40, 40, 4), np.uint8),
                               np.zeros((1, 4, 40, 40), np.uint8)],
        "state": [np.zeros(500_000, np.float32), np.zeros((14, 14)), np.zeros(0)],
        "prompt": ["x" * (MAX_TASK_CHARS + 1), "x" * 3_000_000],
        "rtc_target": [np.zeros((50_000, 14), np.float32)],
    }
    named = {"rtc_target": "guidance.target"}  # the engine's name for it
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB, the process's peak so far
    with connect(_url(server), max_size=None) as ws:
        ws.recv()
        for field, values in cases.items():
            for value in values:
                if field.startswith("images"):
                    message = {**base, "images": {**base["images"], "cam_high": value}}
                elif field == "rtc_target":
                    message = {**base, "rtc_target": value, "rtc_weights": np.ones(8, np.float32)}
                else:
                    message = {**base, field: value}
                ws.send(pack(message))
                reply = ws.recv(timeout=60)
                shape = getattr(value, "shape", len(value))
                assert isinstance(reply, str) and reply.startswith(f"ObservationError: {named.get(field, field)}"), (shape, reply[:200])
        ws.send(pack(base))
        assert unpack(ws.recv(timeout=60))["actions"].shape == (8, 14)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 256, grown_mib


def test_eight_clients_at_once_each_get_their_own_decision(server, policy):
    local = Engine(policy)
    observations = [make_example_observation(local.manifest, seed=s) for s in range(8)]
    expected = [local.infer(observations[c], n=4, seed=100 * c + k).chunk for c in range(8) for k in range(10)]
    got, errors, latencies = {}, [], []

    def client(c):
        try:
            with RemoteEngine(_url(server)) as remote:
                for k in range(10):
                    d = remote.infer(observations[c], n=4, seed=100 * c + k)
                    got[c * 10 + k] = d.chunk
                    latencies.append(d.timings["round_trip"])
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    _in_threads(client, 8)
    assert not errors, errors
    assert len(got) == 80
    for i, chunk in got.items():
        np.testing.assert_array_equal(chunk, expected[i])
    print(json.dumps({"round_trip_p50_ms": float(np.percentile(latencies, 50)),
                      "round_trip_p99_ms": float(np.percentile(latencies, 99))}))


def test_batching_server_infers_several_clients_together_and_each_gets_its_own_decision(policy):
    """`batch_window_ms`: requests of 8 clients share engine calls; every reply is its own request's decision,
    and a bad request in a batch is answered by name without failing the others."""
    server, thread = serve_in_thread(ServeConfig(policy=str(policy), port=0, n=4, batch_window_ms=50.0,
                                                 metrics_every_s=0))
    try:
        local = Engine(policy)
        observations = [make_example_observation(local.manifest, seed=s) for s in range(8)]
        expected = {(c, k): local.infer(observations[c], n=4, seed=100 * c + k) for c in range(8) for k in range(5)}
        got, errors = {}, []
        start = threading.Barrier(8)

        def client(c):
            try:
                with RemoteEngine(_url(server)) as remote:
                    start.wait(30)
                    for k in range(5):
                        if c == 3 and k == 2:
                            bad = dataclasses.replace(observations[c], state=observations[c].state[:5])
                            with pytest.raises(ObservationError, match="state"):
                                remote.infer(bad, n=4, seed=1)
                        got[c, k] = remote.infer(observations[c], n=4, seed=100 * c + k)
            except BaseException as err:  # noqa: BLE001 - reported below
                errors.append(err)

        _in_threads(client, 8)
        assert not errors, errors
        assert len(got) == 40
        for key, decision in got.items():
            np.testing.assert_allclose(decision.chunk, expected[key].chunk, atol=1e-5)
            assert decision.index == expected[key].index and decision.seed == expected[key].seed
        # 41 requests (one refused) in fewer engine calls: they were in fact batched.
        assert server.metrics.batches < server.metrics.batched == 41, server.metrics
    finally:
        server.stop()
        thread.join(30)


@pytest.mark.workstation
def test_a_logging_server_logs_each_episode_of_each_connection_for_a_value_verifier(policy, tmp_path):
    """`--log-decisions`: openpi's client names episodes with the `episode` field (two on one connection), a
    second connection sends none (its requests are one episode); each decision is logged with its
    candidates, placed by its observation stamp, and the chosen one is the chunk the client got."""
    from verifiers.decision_log import add_label, read_episodes

    log = tmp_path / "log"
    server, thread = serve_in_thread(ServeConfig(policy=str(policy), port=0, n=4, metrics_every_s=0,
                                                 log_decisions=str(log)))
    local = Engine(policy)
    request = _aloha(local.manifest)
    replies = {}
    client = openpi_client.WebsocketClientPolicy(host="127.0.0.1", port=server.port)
    try:
        for episode in ("pick-1", "pick-2"):
            for k in range(3):  # a request every 8 actions
                reply = client.infer({**request, "episode": episode, "stamp": 1000.0 + 0.16 * k, "seed": 10 + k})
                replies[episode, k] = reply
        with pytest.raises(RuntimeError, match="episode: expected a string or an integer"):
            client.infer({**request, "episode": [1]})
        with RemoteEngine(_url(server)) as remote:
            for k in range(2):
                remote.infer(make_example_observation(local.manifest, seed=k), n=4, seed=k)
    finally:
        client._ws.close()
        server.stop()
        thread.join(30)
    meta, episodes = read_episodes([log])
    assert meta["policy_fingerprint"] == local.bundle.fingerprint and meta["writer"] == "taco serve"
    by_id = {ep.meta["episode_id"]: ep for ep in episodes}
    assert sorted(by_id) == ["", "pick-1", "pick-2"] and len(episodes) == 3
    assert sorted(ep.meta["key"] for ep in episodes) == [f"serve-{k:09d}" for k in range(3)]
    for episode in ("pick-1", "pick-2"):
        ep = by_id[episode]
        assert ep.success is None and ep.chunks.shape == (3, 4, 8, 14) and ep.features.shape[:2] == (3, 4)
        np.testing.assert_array_equal(ep.step, [0, 8, 16])
        np.testing.assert_array_equal(ep.seed, [10, 11, 12])
        for k in range(3):
            reply = replies[episode, k]
            assert ep.chosen[k] == reply["index"]
            np.testing.assert_allclose(ep.chunks[k, ep.chosen[k]] * local.policy.action_std + local.policy.action_mean,
                                       reply["actions"], atol=1e-4)
        np.testing.assert_allclose(ep.state[0], request["state"], atol=1e-6)
    assert len(by_id[""].chosen) == 2
    # The server never sees what the robot executed: no frames to export as a LeRobotDataset.
    from verifiers.log_dataset import export_log

    with pytest.raises(ValueError, match="no episode holds executed steps"):
        export_log([log], tmp_path / "dataset")
    add_label(log, by_id["pick-2"].meta["key"], success=True)
    _, labelled = read_episodes([log])
    assert [ep.success for ep in labelled if ep.meta["episode_id"] == "pick-2"] == [True]


def test_taco_ros_robot_with_a_server_checks_the_server_before_starting_nodes(capsys):
    from taco.cli import main

    free = _free_port()
    assert main(["ros", "robot", "--server", f"ws://127.0.0.1:{free}"]) == 2
    assert "cannot connect to the policy server" in capsys.readouterr().err
    assert main(["ros", "robot", "--server", f"ws://127.0.0.1:{free}", "--verifier", "cfn"]) == 2
    assert "the server chooses the policy, the verifier and the monitor" in capsys.readouterr().err


def test_taco_serve_refuses_an_empty_key_file(tmp_path, capsys):
    from taco.cli import main

    (tmp_path / "key").write_text("\n")
    assert main(["serve", "--policy", "default", "--api-key-file", str(tmp_path / "key")]) == 2
    assert "is empty" in capsys.readouterr().err


def test_taco_serve_process_serves_logs_metrics_and_stops_cleanly_on_sigterm(policy, tmp_path):
    import signal
    import subprocess
    import sys

    port = _free_port()
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "taco", "serve", "--policy", str(policy), "--port", str(port),
                                 "--n", "2", "--metrics-every", "0.2"], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError):
                assert time.time() < deadline, log.read_text()
                time.sleep(0.1)
        with RemoteEngine(f"ws://127.0.0.1:{port}") as remote:
            manifest = Engine(policy).manifest
            for seed in range(5):
                assert remote.infer(make_example_observation(manifest), seed=seed).chunk.shape == (8, 14)
            # A metrics line counting the 5 requests, written while the client is connected.
            wait_until(lambda: sum(int(r) for r in re.findall(r"metrics requests=(\d+)", log.read_text())) >= 5,
                        30, "a metrics line counting the 5 requests", seen=log.read_text)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert f"listening on ws://127.0.0.1:{port}" in text and "engine warm" in text

    counted = [tuple(map(int, m)) for m in re.findall(r"metrics requests=(\d+) errors=(\d+)", text)]
    assert sum(r for r, _ in counted) == 5 and sum(e for _, e in counted) == 0, counted
    assert "shutting down" in text and "Traceback" not in text


def test_a_server_whose_engine_fails_to_load_exits_with_the_reason(tmp_path, capsys):
    from taco.cli import main

    assert main(["serve", "--policy", str(tmp_path / "missing"), "--port", "0"]) == 2
    assert "missing" in capsys.readouterr().err
    assert main(["serve", "--policy", "default", "--n", "300"]) == 2
    assert "n: expected an integer in [1, max_n=256]" in capsys.readouterr().err


def test_a_server_that_does_not_answer_in_time_is_a_timeout_not_a_dropped_connection(policy):
    """The client's reply timeout ends the wait with its own message, once: it neither reconnects nor sends
    the request a second time (websockets' TimeoutError is also an OSError, the dropped-connection case)."""
    server, thread = serve_in_thread(ServeConfig(policy=str(policy), port=0, n=1, metrics_every_s=0))
    release = threading.Event()
    calls = []
    infer = server._infer  # what the engine worker runs for each request

    def stalled(*args, **kwargs):
        calls.append(time.perf_counter())
        release.wait(30)
        return infer(*args, **kwargs)

    server._infer = stalled
    try:
        with RemoteEngine(_url(server), reply_timeout=0.5) as remote:
            observation = make_example_observation(Engine(policy).manifest, seed=0)
            with pytest.raises(RemoteError, match=r"no reply from .* within 0.5 s"):
                remote.infer(observation, n=1, seed=0)
            assert remote.reconnects == 0 and len(calls) == 1
    finally:
        release.set()
        server.stop()
        thread.join(30)
    assert not thread.is_alive()


def test_a_server_with_a_failure_monitor_reads_each_episode_and_alarms_on_a_strange_one(policy, tmp_path, exported,
                                                                                        capsys):
    from runtime.monitor import read_monitor_manifest
    from taco.cli import main
    from tiny_monitor import N, familiar, make_tiny_monitor, strange

    monitor = make_tiny_monitor(exported("flow"), tmp_path)
    assert main(["serve", "--policy", str(policy), "--monitor", str(monitor), "--n", "2", "--port", "0"]) == 2
    assert "calibrated at N=4, used at N=2" in capsys.readouterr().err
    server, thread = serve_in_thread(ServeConfig(policy=str(policy), port=0, n=N, monitor=str(monitor),
                                                 metrics_every_s=0))
    try:
        client = openpi_client.WebsocketClientPolicy(host="127.0.0.1", port=server.port)
        meta = client.get_server_metadata()["monitor"]
        threshold = read_monitor_manifest(monitor).detectors["any"].threshold
        assert meta == {"name": "tiny-monitor", "n": N, "signals": ["spread", "keystone", "pseudocount",
                                                                    "pseudocount_obs", "inconsistency", "novelty",
                                                                    "accel"],
                        "detector": "any", "threshold": threshold, "alpha": 0.1}
        manifest = Engine(policy).manifest
        rng = np.random.default_rng(3)

        def ask(obs, episode, n=N):
            return client.infer({"images": dict(obs.images), "state": obs.state, "prompt": obs.task,
                                 "episode": episode, "n": n, "seed": 5})["monitor"]

        readings = [ask(familiar(manifest, rng, 0.0), "a") for _ in range(3)]
        assert [r["decision"] for r in readings] == [0, 1, 2] and readings[0]["signals"]["inconsistency"] is None
        assert set(readings[2]["signals"]) == set(meta["signals"])
        assert readings[2]["threshold"] == pytest.approx(threshold, abs=1e-6)
        assert "calibrated at N=4, this request asked N=3" in ask(familiar(manifest, rng, 0.0), "a", n=3)["skipped"]
        odd = [ask(strange(manifest, 0.0), "b") for _ in range(4)]
        assert odd[0]["decision"] == 0  # a new episode starts a new track
        assert odd[-1]["alarmed"] and odd[-1]["statistic"] > threshold, odd
    finally:
        server.stop()
        thread.join(30)
