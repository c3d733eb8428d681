"""One verifier made of several: their graphs side by side in one ONNX graph, no Python at run time.

Each component's scores are standardised over the N candidates of the decision (minus their mean, over
their standard deviation), so components on different scales (a pseudo-count's -||f||^2, a distance, a
log-odds) weigh by their `weights` alone, and the weighted sum is the score. Standardising within a
decision keeps each component's ranking: with one component the combined verifier picks what it picks.
The graph takes every input any component takes (`features`, and `chunks` / `seed` when needed).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from policies.extras import require
from verifiers.bundle import CHUNKS_INPUT, OPTIONAL_INPUTS, VERIFIER_FILE, load_verifier, write_verifier_bundle

# Added to each component's variance over the candidates: N identical scores standardise to 0, not NaN.
EPSILON = 1e-6


def combine_verifiers(components: list[str | Path], out_dir: str | Path, weights: list[float] | None = None,
                      overwrite: bool = False):
    """Writes a verifier bundle scoring sum_k w_k * standardise(score_k) over the components' bundles."""
    onnx = require("onnx")
    from onnx import TensorProto, compose, helper

    if len(components) < 2:
        raise ValueError("combine: give at least two verifiers")
    weights = list(weights) if weights is not None else [1.0] * len(components)
    if len(weights) != len(components):
        raise ValueError(f"combine: {len(weights)} weights for {len(components)} verifiers")
    loaded = [load_verifier(c) for c in components]
    first = loaded[0]
    for v in loaded[1:]:
        if (v.policy_fingerprint, v.feature_dim) != (first.policy_fingerprint, first.feature_dim):
            raise ValueError(f"combine: {v.name!r} is bound to policy {str(v.policy_fingerprint)[:12]} with "
                             f"{v.feature_dim}-d features, {first.name!r} to {str(first.policy_fingerprint)[:12]} "
                             f"with {first.feature_dim}-d")
    if first.path is None or any(v.manifest is None for v in loaded):
        raise ValueError("combine: components must be verifier bundles (folders), so the result can be bound")

    models = [onnx.load(str(Path(v.path) / VERIFIER_FILE)) for v in loaded]
    opset = max(next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) for m in models)

    def reduce_mean(x: str, y: str):
        # ReduceMean's axes became an input in opset 18.
        if opset >= 18:
            return helper.make_node("ReduceMean", [x, "c_axes"], [y], keepdims=1)
        return helper.make_node("ReduceMean", [x], [y], axes=[0], keepdims=1)

    nodes, inputs = [], {}
    initializers = [helper.make_tensor("c_axes", TensorProto.INT64, [1], [0])] if opset >= 18 else []
    for k, (v, model) in enumerate(zip(loaded, models)):
        model = compose.add_prefix(model, prefix=f"v{k}_")
        graph = model.graph
        for inp in graph.input:
            shared = inp.name.removeprefix(f"v{k}_")
            inputs.setdefault(shared, inp)
            nodes.append(helper.make_node("Identity", [shared], [inp.name]))
        nodes.extend(graph.node)
        initializers.extend(graph.initializer)
        s = graph.output[0].name
        # This graph's own names start with "c": every component's start with "v".
        mean, dev, sq, var, var_eps, std, z = (f"c{k}_{n}" for n in ("mean", "dev", "sq", "var", "var_eps", "std", "z"))
        nodes += [reduce_mean(s, mean),
                  helper.make_node("Sub", [s, mean], [dev]),
                  helper.make_node("Mul", [dev, dev], [sq]),
                  reduce_mean(sq, var),
                  helper.make_node("Add", [var, "c_eps"], [var_eps]),
                  helper.make_node("Sqrt", [var_eps], [std]),
                  helper.make_node("Div", [dev, std], [z]),
                  helper.make_node("Mul", [z, f"c{k}_weight"], [f"c{k}_weighted"])]
        initializers.append(helper.make_tensor(f"c{k}_weight", TensorProto.FLOAT, [], [float(weights[k])]))
    initializers.append(helper.make_tensor("c_eps", TensorProto.FLOAT, [], [EPSILON]))
    total = "c0_weighted"
    for k in range(1, len(loaded)):
        nodes.append(helper.make_node("Add", [total, f"c{k}_weighted"], [f"c_sum{k}"]))
        total = f"c_sum{k}"
    nodes.append(helper.make_node("Identity", [total], ["scores"]))
    order = ["features", *[name for name in OPTIONAL_INPUTS if name in inputs]]
    graph_inputs = []
    for name in order:
        inp = onnx.ValueInfoProto()
        inp.CopyFrom(inputs[name])
        inp.name = name
        graph_inputs.append(inp)
    output = helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["n"])
    graph = helper.make_graph(nodes, "combined_verifier", graph_inputs, [output], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = min(model.ir_version, 9)
    onnx.checker.check_model(model)
    path = Path(tempfile.mkdtemp(prefix="verifier-")) / VERIFIER_FILE
    onnx.save(model, str(path))
    # Each component's graph hash, so a pipeline can tell a combination made from older components.
    parts = [{"name": v.name, "type": v.manifest.type, "path": str(v.path), "weight": w,
              "sha256": v.manifest.files[VERIFIER_FILE]} for v, w in zip(loaded, weights)]
    return write_verifier_bundle(path, out_dir, policy_fingerprint=first.policy_fingerprint,
                                 feature_dim=first.feature_dim, type="combined", overwrite=overwrite,
                                 provenance={"command": " ".join(["taco", *sys.argv[1:]]), "components": parts,
                                             "takes_chunks": CHUNKS_INPUT in inputs})
