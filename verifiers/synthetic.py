"""ONNX verifiers built directly with onnx.helper, for tests, benchmarks and the example demo.

These are untrained: they exercise the verifier signature and its cost, not TACO's selection quality.
Needs the `onnx` package (the `train` extra).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from policies.extras import require
from verifiers.bundle import CHUNKS_INPUT


def _save(nodes, inits: dict[str, np.ndarray], path: str | Path, feature_dim: int, chunks: bool = False) -> Path:
    """Writes a graph `features: float32[n, F] (, chunks: float32[n, h, a]) -> scores: float32[n]`;
    initializers keep their dtypes."""
    onnx = require("onnx")
    helper, TP = onnx.helper, onnx.TensorProto
    inputs = [helper.make_tensor_value_info("features", TP.FLOAT, ["n", feature_dim])]
    if chunks:
        inputs.append(helper.make_tensor_value_info(CHUNKS_INPUT, TP.FLOAT, ["n", "h", "a"]))
    graph = helper.make_graph(
        nodes, "verifier",
        inputs,
        [helper.make_tensor_value_info("scores", TP.FLOAT, ["n"])],
        initializer=[onnx.numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def linear_verifier_onnx(path: str | Path, weights: np.ndarray, bias: float = 0.0) -> Path:
    """scores = features @ weights + bias, for weights float[F]; its choice is easy to predict in tests."""
    helper = require("onnx").helper
    weights = np.asarray(weights, np.float32)
    nodes = [
        helper.make_node("MatMul", ["features", "w"], ["mm"]),
        helper.make_node("Add", ["mm", "b"], ["scores"]),
    ]
    return _save(nodes, {"w": weights, "b": np.array(bias, np.float32)}, path, weights.shape[0])


def mlp_verifier_onnx(path: str | Path, feature_dim: int, hidden: int = 256, blocks: int = 2, out_dim: int = 20,
                      seed: int = 0) -> Path:
    """A randomly initialised CFN-shaped verifier: residual MLP -> out_dim outputs, score = -||f(x)||^2.

    Its cost per candidate matches a CFN of the same width, which is what the benchmark needs.
    """
    helper = require("onnx").helper
    rng = np.random.default_rng(seed)

    def dense(n_in, n_out):
        return (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(np.float32), np.zeros(n_out, np.float32)

    inits = {}
    inits["w_in"], inits["b_in"] = dense(feature_dim, hidden)
    nodes = [helper.make_node("Gemm", ["features", "w_in", "b_in"], ["h0"])]
    for i in range(blocks):
        inits[f"w{i}"], inits[f"b{i}"] = dense(hidden, hidden)
        nodes += [
            helper.make_node("Relu", [f"h{i}"], [f"r{i}"]),
            helper.make_node("Gemm", [f"r{i}", f"w{i}", f"b{i}"], [f"d{i}"]),
            helper.make_node("Add", [f"h{i}", f"d{i}"], [f"h{i + 1}"]),
        ]
    inits["w_out"], inits["b_out"] = dense(hidden, out_dim)
    inits["axes"] = np.array([1], np.int64)
    nodes += [
        helper.make_node("Gemm", [f"h{blocks}", "w_out", "b_out"], ["out"]),
        helper.make_node("Mul", ["out", "out"], ["sq"]),
        helper.make_node("ReduceSum", ["sq", "axes"], ["norm"], keepdims=0),
        helper.make_node("Neg", ["norm"], ["scores"]),
    ]
    return _save(nodes, inits, path, feature_dim)


def knn_verifier_onnx(path: str | Path, points: np.ndarray, mean: np.ndarray, std: np.ndarray, k: int = 5,
                      projection: np.ndarray | None = None) -> Path:
    """score = -mean Euclidean distance to the k nearest `points`, in one graph.

    Features are standardised with `mean`/`std`, then projected with `projection` (float[F, P], e.g. PCA)
    when given; `points` are already in that space. Squared distances come from one MatMul
    (||z||^2 - 2 z.p + ||p||^2). Points are stored as float16 and cast once when the session loads
    (ONNX Runtime folds the cast), which halves the file.
    """
    helper = require("onnx").helper
    points16 = np.asarray(points, np.float16)
    points32 = points16.astype(np.float32)
    k = int(min(k, len(points32)))
    inits = {
        "mean": np.asarray(mean, np.float32), "std": np.asarray(std, np.float32),
        "points_t16": np.ascontiguousarray(points16.T), "points_sq": (points32 ** 2).sum(1).astype(np.float32),
        "minus2": np.array(-2.0, np.float32), "zero": np.array(0.0, np.float32),
        "k": np.array([k], np.int64), "axes": np.array([1], np.int64),
    }
    nodes = [
        helper.make_node("Sub", ["features", "mean"], ["centred"]),
        helper.make_node("Div", ["centred", "std"], ["z_full"]),
    ]
    if projection is not None:
        inits["projection"] = np.asarray(projection, np.float32)
        nodes.append(helper.make_node("MatMul", ["z_full", "projection"], ["z"]))
    else:
        nodes.append(helper.make_node("Identity", ["z_full"], ["z"]))
    nodes += [
        helper.make_node("Cast", ["points_t16"], ["points_t"], to=1),
        helper.make_node("MatMul", ["z", "points_t"], ["dot"]),
        helper.make_node("Mul", ["dot", "minus2"], ["m2dot"]),
        helper.make_node("Mul", ["z", "z"], ["zz"]),
        helper.make_node("ReduceSum", ["zz", "axes"], ["z_sq"], keepdims=1),
        helper.make_node("Add", ["m2dot", "z_sq"], ["partial"]),
        helper.make_node("Add", ["partial", "points_sq"], ["d2_raw"]),
        helper.make_node("Max", ["d2_raw", "zero"], ["d2"]),
        helper.make_node("TopK", ["d2", "k"], ["nearest", "nearest_idx"], largest=0, sorted=1),
        helper.make_node("Sqrt", ["nearest"], ["dist"]),
        helper.make_node("ReduceMean", ["dist"], ["mean_dist"], axes=[1], keepdims=0),  # opset 17: attribute
        helper.make_node("Neg", ["mean_dist"], ["scores"]),
    ]
    return _save(nodes, inits, path, len(mean))


def consensus_verifier_onnx(path: str | Path, feature_dim: int) -> Path:
    """score = -(distance of a candidate's chunk to the mean of the N candidates' chunks), per action
    averaged over the chunk, in normalised action units: the candidate nearest the policy's consensus.

    It needs no training: it ranks by the density of the policy's own samples around each candidate
    rather than by the data's, which resolves the small differences between candidates of one
    observation that a pseudo-count trained on dataset frames cannot (see the README's reproduction).
    Takes `chunks` next to the (unused) features; with N=1 every score is 0.
    """
    helper = require("onnx").helper
    nodes = [
        helper.make_node("ReduceMean", [CHUNKS_INPUT], ["centre"], axes=[0], keepdims=1),  # opset 17: attribute
        helper.make_node("Sub", [CHUNKS_INPUT, "centre"], ["offset"]),
        helper.make_node("Mul", ["offset", "offset"], ["sq"]),
        helper.make_node("ReduceSum", ["sq", "axis_a"], ["d2"], keepdims=0),
        helper.make_node("Sqrt", ["d2"], ["dist"]),
        helper.make_node("ReduceMean", ["dist"], ["mean_dist"], axes=[1], keepdims=0),
        helper.make_node("Neg", ["mean_dist"], ["scores"]),
    ]
    return _save(nodes, {"axis_a": np.array([2], np.int64)}, path, feature_dim, chunks=True)
