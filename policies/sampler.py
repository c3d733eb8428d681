"""A policy bundle's graphs run by ONNX Runtime: observation -> shared prefix -> candidates for given noise.

This is the policy as a sampler and nothing more: no verifier, no selection, no timing. The runtime's
`Engine` wraps it for serving (best-of-N, scores, decisions); feature collection uses it directly,
with the same fixed noises for every dataset frame. Needs numpy and onnxruntime only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort

from policies.bundle import PolicyBundle, load_policy_bundle
from policies.errors import BundleError
from policies.manifest import PolicyManifest
from policies.observation import Observation
from policies.preprocess import Preprocessor

# Makes one ONNX Runtime session from a graph file (the runtime passes its provider and thread settings).
SessionFactory = Callable[[Path], ort.InferenceSession]


def cpu_session(path: Path) -> ort.InferenceSession:
    """One CPU thread, spinning off: the session used when the caller sets no provider."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


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
        self.encoder = make_session(self.bundle.file("encoder.onnx"))
        self.sampler = make_session(self.bundle.file(self.manifest.sampler_file))
        check_graph_signatures(self.manifest, self.encoder, self.sampler)
        norm = self.manifest.normalization
        # float32[A]: normalised action units -> robot units (radians, gripper opening).
        self.action_mean = np.asarray(norm.action_mean, np.float32)
        self.action_std = np.asarray(norm.action_std, np.float32)

    def noise(self, n: int, seed: int) -> np.ndarray:
        """float32[N, H, A] standard normal noise from a PCG64 generator seeded with `seed`."""
        shape = (n, self.manifest.chunk_length, self.manifest.action_dim)
        return np.random.Generator(np.random.PCG64(seed)).standard_normal(shape, dtype=np.float32)

    def encode(self, feeds: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Preprocessed feeds -> (prefix_kv, prefix_bias), batch 1."""
        prefix_kv, prefix_bias = self.encoder.run(None, dict(feeds))
        return prefix_kv, prefix_bias

    def sample(self, prefix_kv: np.ndarray, prefix_bias: np.ndarray, noise: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Shared prefix + noise[N, H, A] -> (chunks[N, H, A] in normalised action units, features[N, F])."""
        if self.manifest.sampler == "unrolled":
            chunks, features = self.sampler.run(None, {"prefix_kv": prefix_kv, "prefix_bias": prefix_bias,
                                                       "noise": noise})
            return chunks, features
        x, features = noise, None
        for k in range(self.manifest.num_steps):
            x, features = self.sampler.run(None, {"prefix_kv": prefix_kv, "prefix_bias": prefix_bias, "x": x,
                                                  "step": np.array(k, dtype=np.int64)})
        return x, features

    def candidates(self, observation: Observation, noise: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One observation and noise[N, H, A] -> (chunks[N, H, A] normalised, features[N, F])."""
        return self.sample(*self.encode(self.preprocess(observation)), noise)

    def unnormalize(self, chunks: np.ndarray) -> np.ndarray:
        """Normalised action units -> robot units, for one chunk [H, A] or a batch [N, H, A]."""
        return chunks * self.action_std + self.action_mean
