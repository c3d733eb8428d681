"""A policy bundle's graphs run by ONNX Runtime: observation -> shared prefix -> candidates for given noise.

This is the policy as a sampler and nothing more: no verifier, no selection, no timing. The runtime's
`Engine` wraps it for serving (best-of-N, scores, decisions); feature collection uses it directly,
with the same fixed noises for every dataset frame. Needs numpy and onnxruntime only.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from policies.bundle import PolicyBundle, load_policy_bundle
from policies.errors import BundleError, ObservationError
from policies.guidance import Guidance
from policies.manifest import PolicyManifest
from policies.observation import Observation
from policies.preprocess import Preprocessor
from policies.pruning import Prune, cut_sampler
from policies.velocities import VELOCITIES, sampler_with_velocities

# Graph metadata of a sampler whose prefix inputs take a batch of 1 (shared by every candidate) or of N
# (one per candidate): value "per_candidate". Written by `policies.export`.
PREFIX_BATCH_KEY = "taco.prefix_batch"

# Makes one ONNX Runtime session from a graph file, or a serialized graph (the runtime passes its provider
# and thread settings).
SessionFactory = Callable[[Path | bytes], ort.InferenceSession]


def cpu_session(path: Path | bytes, threads: int = 1) -> ort.InferenceSession:
    """One CPU thread (or `threads` intra-op threads), spinning off: the session used when the caller sets no
    provider."""
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(path if isinstance(path, bytes) else str(path), sess_options=options,
                                providers=["CPUExecutionProvider"])


def check_graph_signatures(manifest: PolicyManifest, encoder, sampler) -> None:
    """Refuses a bundle whose ONNX graphs do not take and produce what its manifest says.

    Checksums prove the files are the ones the manifest lists; this proves the manifest describes them:
    input and output names, dtypes and sizes, and the facts export records in each graph's metadata
    (kind, denoising steps, chunk length, feature size). Raises BundleError naming the manifest field.
    """
    m = manifest
    history = [m.history] if m.history > 1 else []
    expected = {f"image_{c.name}": ("tensor(float)", [*history, 3, c.height, c.width], f"cameras[{i}]")
                for i, c in enumerate(m.cameras)}
    expected["state"] = ("tensor(float)", [*history, m.state_dim], "state.names")
    if m.tokenizer.max_length:
        expected["tokens"] = ("tensor(int64)", [m.tokenizer.max_length], "tokenizer.max_length")
    # A policy that reads the state from its prompt (pi0.5) may have an encoder without a state input.
    optional = {"state"} if getattr(m.tokenizer, "needs_state", False) else set()
    _check_inputs(encoder, "encoder.onnx", expected, unknown_field="cameras", optional=optional)
    produced = {o.name for o in encoder.get_outputs()}
    for name in m.prefix:
        if name not in produced:
            raise BundleError("prefix", f"encoder.onnx has no output {name!r} (it produces {', '.join(sorted(produced))})")
    step_inputs = {name: (None, None, "prefix") for name in m.prefix}  # any dtype: a KV cache, a boolean mask
    noise_dims = list(m.noise_dims)
    if m.sampler == "unrolled":
        step_inputs["noise"] = ("tensor(float)", noise_dims, "noise.shape")
        if m.step_noise:
            step_inputs["step_noise"] = ("tensor(float)", None, "noise.step_noise")
    else:
        step_inputs["x"] = ("tensor(float)", noise_dims, "noise.shape")
        step_inputs["step"] = ("tensor(int64)", None, "sampler")
    if m.rtc:
        step_inputs["rtc_target"] = ("tensor(float)", noise_dims, "rtc")
        step_inputs["rtc_weights"] = ("tensor(float)", noise_dims[:1], "rtc")
        step_inputs["rtc_max_weight"] = ("tensor(float)", None, "rtc")
    _check_inputs(sampler, m.sampler_file, step_inputs, unknown_field="sampler")
    if m.step_noise:
        dims = next(i.shape for i in sampler.get_inputs() if i.name == "step_noise")
        _check_dims(dims[2:], noise_dims, "noise.step_noise", f"{m.sampler_file} input step_noise [steps-1, n, ...]")
    outputs = {o.name: o.shape for o in sampler.get_outputs()}
    chunk_name = "chunks" if m.sampler == "unrolled" else "x_next"
    for name in (chunk_name, "features"):
        if name not in outputs:
            raise BundleError("sampler", f"{m.sampler_file} has no output {name!r}")
    _check_dims(outputs[chunk_name][1:], [m.chunk_length, m.action_dim], "chunk_length/action.names",
                f"{m.sampler_file} output {chunk_name}")
    _check_dims(outputs["features"][1:], [m.feature_dim], "feature.dim", f"{m.sampler_file} output features")
    facts = {"taco.kind": ("kind", m.kind), "taco.num_steps": ("num_steps", str(m.num_steps)),
             "taco.chunk_length": ("chunk_length", str(m.chunk_length)),
             "taco.feature_dim": ("feature.dim", str(m.feature_dim))}
    for graph_file, session in (("encoder.onnx", encoder), (m.sampler_file, sampler)):
        recorded = session.get_modelmeta().custom_metadata_map
        for key, (where, value) in facts.items():
            if key not in recorded:
                raise BundleError(f"files.{graph_file}", f"graph metadata lacks {key!r}; re-export the bundle")
            if recorded[key] != value:
                raise BundleError(where, f"manifest says {value}, {graph_file} was exported with {recorded[key]}")


def _check_inputs(session, graph_file: str, expected: dict, unknown_field: str, optional=frozenset()) -> None:
    inputs = {i.name: (i.type, i.shape) for i in session.get_inputs()}
    for name in inputs:
        if name not in expected:
            raise BundleError(unknown_field, f"{graph_file} takes input {name!r}, which the manifest does not describe")
    for name, (dtype, dims, where) in expected.items():
        if name not in inputs:
            if name in optional:
                continue
            raise BundleError(where, f"{graph_file} has no input {name!r}")
        if dtype is not None and inputs[name][0] != dtype:
            raise BundleError(where, f"{graph_file} input {name!r} is {inputs[name][0]}, expected {dtype}")
        if dims is not None:
            _check_dims(inputs[name][1][1:], dims, where, f"{graph_file} input {name}")


def _check_dims(actual, expected, field, where):
    if len(actual) != len(expected) or any(isinstance(a, int) and a != e for a, e in zip(actual, expected)):
        raise BundleError(field, f"{where} has shape [batch, {', '.join(map(str, actual))}], "
                                 f"the manifest says [batch, {', '.join(map(str, expected))}]")


class PolicySampler:
    """Samples candidate chunks of one policy bundle for noise the caller gives.

    Made once per process by the runtime's `Engine` (with its session settings) or by feature
    collection (one CPU thread); `encode` is called once per observation and `sample` once per batch
    of noises against that prefix. Loading validates the manifest, every checksum, and that the graphs
    take and produce what the manifest says.
    """

    def __init__(self, policy: str | Path | PolicyBundle, session_factory: SessionFactory | None = None):
        make_session = session_factory or cpu_session
        self.bundle = policy if isinstance(policy, PolicyBundle) else load_policy_bundle(policy)
        self.manifest = self.bundle.manifest
        self.preprocess = Preprocessor(self.manifest)
        self._make_session = make_session
        self.encoder = make_session(self.bundle.file("encoder.onnx"))
        self.sampler = make_session(self.bundle.file(self.manifest.sampler_file))
        check_graph_signatures(self.manifest, self.encoder, self.sampler)
        # Whether `sample(..., velocities=True)` can give the flow's Euler velocities (`expose_velocities`).
        self.velocities = False
        # Step k -> the pruned sessions of `prepare_pruning` (None: the step-wise graph runs any steps).
        self._pruned: dict[int, tuple | None] = {}
        self._prefix = list(self.manifest.prefix)
        # The encoder is fed only what it takes (a pi0.5 encoder reads the state from its prompt).
        self._encoder_inputs = {i.name for i in self.encoder.get_inputs()}
        # Whether the sampler takes one prefix per candidate as well as one shared by all: exporters say so
        # in the graph's metadata (a dynamic batch axis alone does not prove the graph does not, say, read
        # row 0 of a prefix it expands), and the prefix inputs must have a free batch axis.
        self.per_candidate_prefix = (
            self.sampler.get_modelmeta().custom_metadata_map.get(PREFIX_BATCH_KEY) == "per_candidate"
            and all(not isinstance(i.shape[0], int) for i in self.sampler.get_inputs() if i.name in self._prefix))
        norm = self.manifest.normalization
        # float32[A]: normalised action units -> robot units (radians, gripper opening).
        self.action_mean = np.asarray(norm.action_mean, np.float32)
        self.action_std = np.asarray(norm.action_std, np.float32)

    def noise(self, n: int, seed: int) -> np.ndarray:
        """float32[N, Hn, D] standard normal noise from a PCG64 generator seeded with `seed`."""
        return self.draw(n, seed)[0]

    def draw(self, n: int, seed: int, noise: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """The noise of one decision seeded `seed`: (noise float32[N, Hn, D], step_noise float32[S-1, N, Hn, D]
        or None when the sampler takes none). Both come from one PCG64 generator, the initial noise first;
        a given `noise` replaces the initial draw (the per-step noise stays the seed's)."""
        shape = (n, *self.manifest.noise_dims)
        rng = np.random.Generator(np.random.PCG64(seed))
        drawn = rng.standard_normal(shape, dtype=np.float32)
        if noise is not None:
            if noise.shape != shape:
                raise ObservationError("noise", f"expected shape {list(shape)}, got {list(noise.shape)}")
            if noise.dtype != np.float32 or not np.isfinite(noise).all():
                raise ObservationError("noise", f"expected finite float32, got {noise.dtype}")
            drawn = noise
        step = None
        if self.manifest.step_noise:
            step = rng.standard_normal((self.manifest.num_steps - 1, *shape), dtype=np.float32)
        return drawn, step

    def encode(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Preprocessed feeds (batch 1) -> the prefix the sampler takes, by name."""
        values = self.encoder.run(self._prefix, {k: v for k, v in feeds.items() if k in self._encoder_inputs})
        return dict(zip(self._prefix, values))

    def rtc_feeds(self, guidance: Guidance | None) -> dict[str, np.ndarray]:
        """The sampler's RTC inputs for a guidance in robot units ({} for a bundle without them, which
        refuses a guidance): the target normalised and zero-padded to the noise's [Hn, D], the weights
        zero-padded to Hn, batch 1. No guidance gives all-zero weights: the unguided sampler."""
        if not self.manifest.rtc:
            if guidance is not None:
                raise BundleError("rtc", f"the sampler of {self.manifest.name!r} takes no real-time chunking inputs "
                                         "(exported before them, or a policy LeRobot gives no RTC); re-export it")
            return {}
        hn, width = self.manifest.noise_dims
        target, weights = np.zeros((1, hn, width), np.float32), np.zeros((1, hn), np.float32)
        max_weight = np.array(0.0, np.float32)
        if guidance is not None:
            guidance.check(self.manifest.chunk_length, self.manifest.action_dim)
            k = min(len(guidance.target), hn)
            target[0, :k, :self.manifest.action_dim] = (guidance.target[:k] - self.action_mean) / self.action_std
            weights[0, :min(len(guidance.weights), hn)] = guidance.weights[:hn]
            max_weight = np.array(guidance.max_weight, np.float32)
        return {"rtc_target": target, "rtc_weights": weights, "rtc_max_weight": max_weight}

    def expose_velocities(self) -> None:
        """Makes `sample(..., velocities=True)` available: each candidate's velocity at each Euler step of a
        flow sampler (the failure monitor's roughness signal, `policies.velocities`). An unrolled graph that
        does not output them is rebuilt in memory with that output (the bundle's files stay); a step-wise
        one gives them as the difference of consecutive x. Raises BundleError for a policy that is not a
        flow sampler integrated by Euler steps."""
        if self.velocities:
            return
        if self.manifest.kind != "flow":
            raise BundleError("kind", f"{self.manifest.name!r} is a {self.manifest.kind} policy: only a flow sampler "
                                      "has velocities to read (the monitor's accel signal)")
        if self.manifest.sampler == "unrolled" and VELOCITIES not in {o.name for o in self.sampler.get_outputs()}:
            graph = self.bundle.file(self.manifest.sampler_file)
            self.sampler = self._make_session(sampler_with_velocities(graph, self.manifest.num_steps))
        self.velocities = True

    def prepare_pruning(self, prune: Prune) -> None:
        """Makes `prune_head` and `finish` available for `prune` (policies.pruning): the unrolled sampler is
        cut into its head, last step and tail in memory (the bundle's files stay). Raises BundleError for a
        policy that is not a flow sampler of deterministic Euler steps, or a k outside [1, K-1]."""
        m = self.manifest
        prune.check(m.num_steps)
        if m.kind != "flow" or m.step_noise:
            raise BundleError("kind", f"{m.name!r} is a {m.kind} policy{' with per-step noise' if m.step_noise else ''}: "
                                      "pruning judges candidates by the flow's Euler prediction, which only a "
                                      "deterministic flow sampler has")
        if prune.steps in self._pruned:
            return
        if m.sampler != "unrolled":
            self._pruned[prune.steps] = None  # the step graph runs any range of steps itself
            return
        graphs = cut_sampler(self.bundle.file(m.sampler_file), prune.steps, m.num_steps)
        last = self._make_session(graphs.last)
        tail = last if graphs.tail is graphs.last else self._make_session(graphs.tail)
        self._pruned[prune.steps] = (graphs, self._make_session(graphs.head), last, tail)

    def prune_head(self, prefix: Mapping[str, np.ndarray], noise: np.ndarray, steps: int,
                   rtc: Mapping[str, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The first `steps` (k) denoising steps of every candidate (after `prepare_pruning`): (x_k[N, Hn, D],
        the predicted start of the last step x^_{K-1}[N, Hn, D], which `finish(..., start=K-1)` completes)."""
        feeds = self._step_feeds(prefix, rtc)
        cut = self._pruned[steps]
        if cut is None:
            xs = [noise]
            for k in range(steps):
                xs.append(self.sampler.run(["x_next"], {**feeds, "x": xs[-1], "step": np.array(k, dtype=np.int64)})[0])
            before, x_k, factor = xs[-2], xs[-1], float(self.manifest.num_steps - steps)  # uniform steps
        else:
            graphs, head = cut[0], cut[1]
            out = head.run(None, _only(head, {**feeds, "noise": noise}))  # [x_{k-1},] x_k
            before, x_k = (out[0], out[1]) if graphs.x_before else (noise, out[0])
            factor = graphs.factor
        return x_k, (before + np.float32(factor) * (x_k - before)).astype(np.float32)

    def finish(self, prefix: Mapping[str, np.ndarray], x: np.ndarray, start: int, steps: int,
               rtc: Mapping[str, np.ndarray] | None = None, noise: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Denoising steps `start` .. K-1 from x[M, Hn, D] (start = k: the kept candidates' x_k; start = K-1:
        a predicted x^_{K-1}) for a policy prepared for pruning after `steps` -> (chunks[M, H, A],
        features[M, F]), as `sample` returns them. `noise`: the same candidates' initial noise, for a graph
        whose later steps read it (required then)."""
        feeds = self._step_feeds(prefix, rtc)
        cut = self._pruned[steps]
        last = self.manifest.num_steps - 1
        if cut is None:
            features = None
            for k in range(start, last + 1):
                x, features = self.sampler.run(["x_next", "features"],
                                               {**feeds, "x": x, "step": np.array(k, dtype=np.int64)})
            return x, features
        graphs, _, last_session, tail = cut
        if start not in (steps, last):
            raise ValueError(f"finish: start must be the pruning step {steps} or the last step {last}, got {start}")
        session, name = (last_session, graphs.x_last) if start == last else (tail, graphs.x_k)
        feeds = _only(session, {**feeds, name: x, **({} if noise is None else {"noise": noise})})
        if "noise" in {i.name for i in session.get_inputs()} and noise is None:
            raise ValueError("finish: this sampler's later steps read the initial noise; pass the candidates' own")
        chunks, features = session.run(["chunks", "features"], feeds)
        return chunks, features

    def _step_feeds(self, prefix: Mapping[str, np.ndarray], rtc: Mapping[str, np.ndarray] | None) -> dict:
        feeds = dict(prefix)
        if self.manifest.rtc:
            feeds.update(rtc or self.rtc_feeds(None))
        return feeds

    def sample(self, prefix: Mapping[str, np.ndarray], noise: np.ndarray,
               step_noise: np.ndarray | None = None, rtc: Mapping[str, np.ndarray] | None = None,
               velocities: bool = False) -> tuple[np.ndarray, ...]:
        """Shared prefix + noise[N, Hn, D] -> (chunks[N, H, A] in normalised action units, features[N, F]),
        and with `velocities` (after `expose_velocities`) a third, float32[N, K, Hn, D]: each Euler step's
        velocity, in the graph's sign and scale. `rtc`: the sampler's RTC inputs (`rtc_feeds`); None feeds no
        guidance to a sampler that takes it."""
        if velocities and not self.velocities:
            raise BundleError("sampler", "velocities asked for before expose_velocities()")
        feeds = self._step_feeds(prefix, rtc)
        if self.manifest.sampler == "unrolled":
            feeds["noise"] = noise
            if self.manifest.step_noise:
                feeds["step_noise"] = step_noise
            return tuple(self.sampler.run(["chunks", "features", *[VELOCITIES] * velocities], feeds))
        x, features, xs = noise, None, [noise]
        for k in range(self.manifest.num_steps):
            x, features = self.sampler.run(["x_next", "features"], {**feeds, "x": x, "step": np.array(k, dtype=np.int64)})
            xs.append(x)
        if velocities:  # x_k - x_{k+1}: each step's velocity times its step size
            return x, features, np.stack([a - b for a, b in zip(xs[:-1], xs[1:])], axis=1)
        return x, features

    def sample_many(self, prefix: Mapping[str, np.ndarray], noises: Sequence[np.ndarray],
                    step_noises: Sequence[np.ndarray | None], rtcs: Sequence[Mapping | None] | None = None,
                    velocities: bool = False) -> list[tuple[np.ndarray, ...]]:
        """Prefixes of B observations ([B, ...] by name) and each one's noise[N_i, Hn, D] (and step noise,
        and RTC inputs) -> each one's (chunks[N_i, H, A], features[N_i, F]). One sampler call, each
        candidate with its own observation's prefix, when the sampler takes a prefix per candidate; else
        one call per observation. One observation is sampled exactly as `sample` does (its prefix shared,
        not repeated)."""
        rtcs = list(rtcs or [None] * len(noises))
        if len(noises) == 1:
            return [self.sample(prefix, noises[0], step_noises[0], rtcs[0], velocities)]
        caps = {float(r["rtc_max_weight"]) for r in rtcs if r}
        if not self.per_candidate_prefix or len(caps) > 1:  # the guidance cap is one graph input per call
            return [self.sample({k: v[i:i + 1] for k, v in prefix.items()}, noise, step, rtc, velocities)
                    for i, (noise, step, rtc) in enumerate(zip(noises, step_noises, rtcs))]
        counts = [len(noise) for noise in noises]
        repeated = {k: np.repeat(v, counts, axis=0) for k, v in prefix.items()}
        rtc = None
        if self.manifest.rtc:
            feeds = [r or self.rtc_feeds(None) for r in rtcs]
            rtc = {name: np.concatenate([np.repeat(f[name], c, axis=0) for f, c in zip(feeds, counts)])
                   for name in ("rtc_target", "rtc_weights")}
            rtc["rtc_max_weight"] = np.array(caps.pop() if caps else 0.0, np.float32)
        step = None if step_noises[0] is None else np.concatenate(step_noises, axis=1)
        outputs = self.sample(repeated, np.concatenate(noises), step, rtc, velocities)
        cuts = np.cumsum(counts)[:-1]
        return list(zip(*(np.split(out, cuts) for out in outputs)))

    def history(self) -> History:
        """An empty observation history for this policy (one per episode or robot session)."""
        return History(self.manifest.history, self.preprocess)

    def candidates(self, observations: Observation | Sequence[Observation], noise: np.ndarray,
                   step_noise: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """One observation (or the last ones, oldest first, for a policy with history) and noise[N, Hn, D]
        -> (chunks[N, H, A] normalised, features[N, F])."""
        frames = [observations] if isinstance(observations, Observation) else list(observations)
        feeds = stack_history([self.preprocess(f) for f in frames[-self.manifest.history:]], self.manifest.history)
        if step_noise is None and self.manifest.step_noise:
            raise ObservationError("step_noise", "this policy samples with per-step noise; pass it (see draw)")
        return self.sample(self.encode(feeds), noise, step_noise)

    def unnormalize(self, chunks: np.ndarray) -> np.ndarray:
        """Normalised action units -> robot units, for one chunk [H, A] or a batch [N, H, A]."""
        return chunks * self.action_std + self.action_mean


def _only(session: ort.InferenceSession, feeds: dict) -> dict:
    """The feeds a session takes (a part cut from a sampler may read fewer inputs than the whole)."""
    names = {i.name for i in session.get_inputs()}
    return {k: v for k, v in feeds.items() if k in names}


class History:
    """The observations a policy with `history` > 1 encodes together: the current one and those of the
    control steps before it. Pushed once per control step (`Engine.observe`, `Engine.infer`), emptied at
    an episode start. Until `steps` have been pushed the oldest is repeated, as LeRobot fills its queues."""

    def __init__(self, steps: int, preprocess: Preprocessor):
        self.steps = steps
        self._preprocess = preprocess
        self._frames: deque[dict[str, np.ndarray]] = deque(maxlen=steps)
        self._stamps: deque[float] = deque(maxlen=steps)
        self._lock = threading.Lock()

    def push(self, observation: Observation | Mapping) -> dict[str, np.ndarray]:
        """Validates and preprocesses one observation and keeps it in stamp order; returns its feeds. The
        same observation pushed twice (same stamp: observed, then inferred on) is kept once; one older
        than every observation kept when the history is full is not kept."""
        if isinstance(observation, Mapping):
            observation = Observation.from_dict(observation)
        feeds = self._preprocess(observation)
        stamp = observation.stamp
        with self._lock:
            stamps = list(self._stamps)
            if stamp in stamps:
                self._frames[stamps.index(stamp)] = feeds
            elif not stamps or stamp > stamps[-1] or self.steps == 1:
                self._frames.append(feeds)
                self._stamps.append(stamp)
            elif len(stamps) < self.steps or stamp > stamps[0]:
                # Arrived late (a worker thread pushing after the control thread): into its place in time.
                at = int(np.searchsorted(stamps, stamp))
                frames = list(self._frames)
                frames.insert(at, feeds)
                stamps.insert(at, stamp)
                self._frames = deque(frames[-self.steps:], maxlen=self.steps)
                self._stamps = deque(stamps[-self.steps:], maxlen=self.steps)
        return feeds

    def clear(self) -> None:
        with self._lock:
            self._frames.clear()
            self._stamps.clear()

    def snapshot(self) -> tuple:
        """The observations kept now, to `restore` later (the frames are not copied: they are never
        changed in place)."""
        with self._lock:
            return tuple(self._frames), tuple(self._stamps)

    def restore(self, snapshot: tuple) -> None:
        frames, stamps = snapshot
        with self._lock:
            self._frames.clear()
            self._stamps.clear()
            self._frames.extend(frames)
            self._stamps.extend(stamps)

    def __len__(self) -> int:
        return len(self._frames)

    def feeds(self, until: float | None = None) -> dict[str, np.ndarray]:
        """The encoder's feeds for the observations kept (see `stack_history`); `until`: only those
        stamped at or before it (an inference on an observation older than the newest kept)."""
        with self._lock:
            frames = [f for f, t in zip(self._frames, self._stamps) if until is None or t <= until]
            oldest = self._stamps[0] if self._stamps else None
        if not frames and oldest is not None:
            raise ObservationError("stamp", f"{until} is older than every observation the history keeps "
                                            f"(oldest {oldest})")
        if not frames:
            raise ObservationError("observation", "no observation has been pushed yet")
        return stack_history(frames, self.steps)


def stack_history(frames: list[dict[str, np.ndarray]], steps: int) -> dict[str, np.ndarray]:
    """Per-observation feeds (oldest first) -> the encoder's feeds: for one step the last observation's;
    else images [1, T, 3, H, W] and state [1, T, S], the oldest repeated until there are T, and the other
    inputs (tokens) from the last observation."""
    if steps == 1:
        return frames[-1]
    frames = [frames[0]] * (steps - len(frames)) + frames[-steps:]
    out = dict(frames[-1])
    for name in frames[-1]:
        if name.startswith("image_") or name == "state":
            out[name] = np.stack([f[name] for f in frames], axis=1)
    return out
