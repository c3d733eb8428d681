"""The best-of-N engine: one observation -> N candidate chunks -> verifier scores -> one Decision."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from policies import Observation, PolicyBundle, Preprocessor, load_policy_bundle
from policies.errors import BundleError, ObservationError, SpecError
from policies.manifest import PolicyManifest
from runtime.select import finite_candidates, select
from runtime.sessions import SessionConfig, make_session
from runtime.timing import StageTimer
from verifiers import check_verifier, load_verifier
from verifiers.base import Verifier, score_candidates

# Largest N accepted per step; more is almost surely a units mistake (and would exhaust memory).
MAX_CANDIDATES = 4096


@dataclass(frozen=True)
class EngineConfig:
    """Settings of an Engine."""

    # ONNX Runtime provider and threads for the policy and verifier sessions.
    session: SessionConfig = field(default_factory=SessionConfig)
    # Keep every candidate chunk and feature in the Decision (for diagnostics and recording).
    return_candidates: bool = False


@dataclass
class Decision:
    """The result of one `Engine.infer` call."""

    # float32[H, A]: the chosen chunk in robot units (radians, normalised gripper), left arm then right.
    chunk: np.ndarray
    # float64[H]: seconds, the time each action of `chunk` is for (observation stamp + i * action_dt).
    times: np.ndarray
    # Index of the chosen candidate in [0, n).
    index: int
    # float32[N]: every candidate's verifier score (higher = more in-distribution); None with no verifier.
    scores: np.ndarray | None
    # float32[N, H, A]: all candidates in robot units, when `return_candidates`; else None.
    candidates: np.ndarray | None
    # float32[N, F]: all candidates' verifier features, when `return_candidates`; else None.
    features: np.ndarray | None
    # Milliseconds per stage: preprocess, encode, sample, score, select, total.
    timings: dict[str, float]
    # Number of candidates sampled.
    n: int
    # The seed the noise was drawn from; the same seed gives the same decision.
    seed: int
    # Name of the verifier that scored the candidates, None if none did.
    verifier: str | None
    # Fingerprint of the policy bundle that produced the chunk.
    policy_fingerprint: str


def check_graph_signatures(manifest: PolicyManifest, encoder, sampler) -> None:
    """Refuses a bundle whose ONNX graphs do not take and produce what its manifest says.

    Checksums prove the files are the ones the manifest lists; this proves the manifest describes them:
    input and output names, dtypes and sizes, and the facts export records in each graph's metadata
    (kind, denoising steps, chunk length, feature size). Raises BundleError naming the manifest field.
    """
    m = manifest
    expected = {f"image_{c.name}": ("tensor(float)", [3, c.height, c.width], f"cameras[{i}]")
                for i, c in enumerate(m.cameras)}
    expected["state"] = ("tensor(float)", [m.state_dim], "state.names")
    expected["tokens"] = ("tensor(int64)", [m.tokenizer.max_length], "tokenizer.max_length")
    _check_inputs(encoder, "encoder.onnx", expected, unknown_field="cameras")
    step_inputs = {"prefix_kv": ("tensor(float)", None, "files.encoder.onnx"),
                   "prefix_bias": ("tensor(float)", None, "files.encoder.onnx")}
    if m.sampler == "unrolled":
        step_inputs["noise"] = ("tensor(float)", [m.chunk_length, m.action_dim], "chunk_length/action.names")
    else:
        step_inputs["x"] = ("tensor(float)", [m.chunk_length, m.action_dim], "chunk_length/action.names")
        step_inputs["step"] = ("tensor(int64)", None, "sampler")
    _check_inputs(sampler, m.sampler_file, step_inputs, unknown_field="sampler")
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


def _check_inputs(session, graph_file: str, expected: dict, unknown_field: str) -> None:
    inputs = {i.name: (i.type, i.shape) for i in session.get_inputs()}
    for name in inputs:
        if name not in expected:
            raise BundleError(unknown_field, f"{graph_file} takes input {name!r}, which the manifest does not describe")
    for name, (dtype, dims, where) in expected.items():
        if name not in inputs:
            raise BundleError(where, f"{graph_file} has no input {name!r}")
        if inputs[name][0] != dtype:
            raise BundleError(where, f"{graph_file} input {name!r} is {inputs[name][0]}, expected {dtype}")
        if dims is not None:
            _check_dims(inputs[name][1][1:], dims, where, f"{graph_file} input {name}")


def _check_dims(actual, expected, field, where):
    if len(actual) != len(expected) or any(isinstance(a, int) and a != e for a, e in zip(actual, expected)):
        raise BundleError(field, f"{where} has shape [batch, {', '.join(map(str, actual))}], "
                                 f"the manifest says [batch, {', '.join(map(str, expected))}]")


class Engine:
    """Serves one policy bundle and, optionally, one verifier.

    `infer` is called once per replanning step by the chunk executor, the policy server or a ROS node.
    `set_verifier` may be called from another thread between steps; a step always uses one verifier.
    """

    def __init__(self, policy: str | Path | PolicyBundle, verifier: str | Path | Verifier | None = None,
                 config: EngineConfig | None = None):
        self.config = config or EngineConfig()
        self.bundle = policy if isinstance(policy, PolicyBundle) else load_policy_bundle(policy)
        self.manifest = self.bundle.manifest
        self.preprocess = Preprocessor(self.manifest)
        self.encoder = make_session(self.bundle.file("encoder.onnx"), self.config.session)
        self.sampler = make_session(self.bundle.file(self.manifest.sampler_file), self.config.session)
        check_graph_signatures(self.manifest, self.encoder, self.sampler)
        norm = self.manifest.normalization
        self._action_mean = np.asarray(norm.action_mean, np.float32)
        self._action_std = np.asarray(norm.action_std, np.float32)
        self._seeds = np.random.SeedSequence()
        self._lock = threading.Lock()
        self._verifier: Verifier | None = None
        if verifier is not None:
            self.set_verifier(verifier)

    @property
    def verifier(self) -> Verifier | None:
        return self._verifier

    def load_verifier(self, verifier: str | Path | Verifier) -> Verifier:
        """Loads and checks a verifier against this policy without installing it."""
        if not isinstance(verifier, Verifier):
            verifier = load_verifier(verifier, lambda p: make_session(p, self.config.session))
        check_verifier(verifier, self.manifest.feature_dim, self.bundle.fingerprint)
        return verifier

    def set_verifier(self, verifier: str | Path | Verifier | None) -> Verifier | None:
        """Swaps the verifier between two steps. An invalid one raises and the old one stays."""
        new = None if verifier is None else self.load_verifier(verifier)
        with self._lock:
            self._verifier = new
        return new

    def encode(self, feeds: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Preprocessed feeds -> (prefix_kv, prefix_bias), batch 1."""
        prefix_kv, prefix_bias = self.encoder.run(None, dict(feeds))
        return prefix_kv, prefix_bias

    def sample(self, prefix_kv: np.ndarray, prefix_bias: np.ndarray, noise: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Shared prefix + noise[N, H, A] -> (chunks[N, H, A] normalised, features[N, F])."""
        if self.manifest.sampler == "unrolled":
            chunks, features = self.sampler.run(None, {"prefix_kv": prefix_kv, "prefix_bias": prefix_bias,
                                                       "noise": noise})
            return chunks, features
        x, features = noise, None
        for k in range(self.manifest.num_steps):
            x, features = self.sampler.run(None, {"prefix_kv": prefix_kv, "prefix_bias": prefix_bias, "x": x,
                                                  "step": np.array(k, dtype=np.int64)})
        return x, features

    @staticmethod
    def _score(verifier: Verifier, features: np.ndarray, chunks: np.ndarray, valid: np.ndarray, seed: int) -> np.ndarray:
        """Runs a verifier (ONNX or Python plugin) on the valid candidates and checks that it returned one
        number for each; invalid candidates score NaN (never chosen). A verifier that compares candidates
        with each other so never sees a NaN one."""
        scores = np.full(features.shape[0], np.nan, np.float32)
        if not valid.any():
            return scores
        got = np.asarray(score_candidates(verifier, features[valid], chunks[valid], seed))
        m = int(valid.sum())
        if got.shape != (m,) or not np.issubdtype(got.dtype, np.number):
            raise BundleError(f"verifier {verifier.name!r}.scores",
                              f"expected {m} numbers (shape [{m}]), got {got.dtype} of shape {list(got.shape)}")
        scores[valid] = got
        return scores

    def noise(self, n: int, seed: int) -> np.ndarray:
        """float32[N, H, A] standard normal noise from a PCG64 generator seeded with `seed`."""
        shape = (n, self.manifest.chunk_length, self.manifest.action_dim)
        return np.random.Generator(np.random.PCG64(seed)).standard_normal(shape, dtype=np.float32)

    def infer(self, observation: Observation | Mapping, n: int = 1, seed: int | None = None) -> Decision:
        """Samples N candidate chunks from one observation, scores them, and returns the best.

        Args:
            observation: the robot's observation (see `policies.Observation`).
            n: number of candidates; with no verifier the first (finite) candidate is returned.
            seed: seeds the candidates' noise; drawn from the engine's own sequence when None.

        Raises:
            ObservationError: naming the bad field of the observation.
            SpecError: if every candidate is non-finite.
        """
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= MAX_CANDIDATES:
            raise ObservationError("n", f"expected an integer in [1, {MAX_CANDIDATES}], got {n!r}")
        if seed is None:
            seed = int(self._seeds.spawn(1)[0].generate_state(1)[0])
        elif isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**63:
            raise ObservationError("seed", f"expected an integer in [0, 2**63), got {seed!r}")
        with self._lock:
            verifier = self._verifier
        timer = StageTimer()
        with timer.stage("preprocess"):
            if isinstance(observation, Mapping):
                observation = Observation.from_dict(observation)
            feeds = self.preprocess(observation)
            stamp = float(observation.stamp)
        with timer.stage("encode"):
            prefix_kv, prefix_bias = self.encode(feeds)
        with timer.stage("sample"):
            chunks, features = self.sample(prefix_kv, prefix_bias, self.noise(int(n), seed))
        with timer.stage("score"):
            valid = finite_candidates(chunks)
            if verifier is not None:
                # A NaN feature mapped to a finite score by a lenient verifier must not win either.
                valid &= np.isfinite(features).all(axis=1)
            scores = None if verifier is None else self._score(verifier, features, chunks, valid, seed)
        with timer.stage("select"):
            index = select(scores, valid)
            chunk = chunks[index] * self._action_std + self._action_mean
            if not np.isfinite(chunk).all():
                raise SpecError("chunk", "the chosen chunk overflows when unnormalised; refusing to return it")
        timings = timer.finish()
        keep = self.config.return_candidates
        return Decision(
            chunk=chunk,
            times=stamp + self.manifest.action_dt * np.arange(self.manifest.chunk_length, dtype=np.float64),
            index=index,
            scores=scores,
            candidates=chunks * self._action_std + self._action_mean if keep else None,
            features=features if keep else None,
            timings=timings,
            n=int(n),
            seed=seed,
            verifier=None if verifier is None else verifier.name,
            policy_fingerprint=self.bundle.fingerprint,
        )
