"""ONNX verifiers built directly with onnx.helper, for tests, benchmarks and the example demo.

These are untrained: they exercise the verifier signature and its cost, not TACO's selection quality.
Needs the `onnx` package (the `train` extra).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from policies.extras import require
from verifiers.bundle import CHUNKS_INPUT, SEED_INPUT


def _save(nodes, inits: dict[str, np.ndarray], path: str | Path, feature_dim: int, chunks: bool = False,
          seed: bool = False) -> Path:
    """Writes a graph `features: float32[n, F] (, chunks: float32[n, h, a]) (, seed: int64) -> scores: float32[n]`;
    initializers keep their dtypes."""
    onnx = require("onnx")
    helper, TP = onnx.helper, onnx.TensorProto
    inputs = [helper.make_tensor_value_info("features", TP.FLOAT, ["n", feature_dim])]
    if chunks:
        inputs.append(helper.make_tensor_value_info(CHUNKS_INPUT, TP.FLOAT, ["n", "h", "a"]))
    if seed:
        inputs.append(helper.make_tensor_value_info(SEED_INPUT, TP.INT64, []))
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


# The random verifier's integer hash: a prime modulus below 2**31 (so x * x fits in int64), MINSTD's multiplier.
_HASH_PRIME = 2_147_483_647
_HASH_MULTIPLIER = 48_271


def random_verifier_onnx(path: str | Path, feature_dim: int, salt: int = 0) -> Path:
    """A uniform pick among the N candidates that never looks at them: score i is a hash of (the decision's
    seed, i, salt), so the pick is reproducible and, the candidates being i.i.d., it is the N=1 policy in
    distribution. (A hash of the features would tie candidates that are nearly alike to nearly alike
    scores, so which one wins would depend on what the candidates are.)

    x = (seed + 40503 i + salt + 1) mod p, then three rounds of x <- (x * 48271) mod p, x <- (x * x + 12345)
    mod p; score = (x mod 2**24) / 2**24, exact in float32.
    """
    if not 0 <= salt < 2**31:
        raise ValueError(f"salt: expected an integer in [0, 2**31), got {salt}")
    helper = require("onnx").helper
    nodes = [
        helper.make_node("Shape", ["features"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["n"], axis=0),
        helper.make_node("Range", ["zero", "n", "one"], ["index"]),
        helper.make_node("Mul", ["index", "stride"], ["spread"]),
        helper.make_node("Mod", [SEED_INPUT, "prime"], ["seed_mod"]),
        helper.make_node("Add", ["spread", "seed_mod"], ["x0a"]),
        helper.make_node("Add", ["x0a", "offset"], ["x0b"]),
        helper.make_node("Mod", ["x0b", "prime"], ["x0"]),
    ]
    x = "x0"
    for r in range(3):
        nodes += [
            helper.make_node("Mul", [x, "multiplier"], [f"m{r}"]),
            helper.make_node("Mod", [f"m{r}", "prime"], [f"l{r}"]),
            helper.make_node("Mul", [f"l{r}", f"l{r}"], [f"q{r}"]),
            helper.make_node("Add", [f"q{r}", "increment"], [f"qa{r}"]),
            helper.make_node("Mod", [f"qa{r}", "prime"], [f"x{r + 1}"]),
        ]
        x = f"x{r + 1}"
    nodes += [
        helper.make_node("Mod", [x, "mantissa"], ["low"]),
        helper.make_node("Cast", ["low"], ["lowf"], to=1),  # FLOAT
        helper.make_node("Div", ["lowf", "mantissa_f"], ["scores"]),
    ]
    i64 = lambda v: np.array(v, np.int64)  # noqa: E731
    inits = {"zero": i64(0), "one": i64(1), "stride": i64(40_503), "prime": i64(_HASH_PRIME),
             "offset": i64(salt + 1), "multiplier": i64(_HASH_MULTIPLIER), "increment": i64(12_345),
             "mantissa": i64(2**24), "mantissa_f": np.array(2**24, np.float32)}
    return _save(nodes, inits, path, feature_dim, seed=True)
