"""The flow sampler's own velocities as a graph output: what the failure monitor's roughness signal reads.

An unrolled flow sampler integrates its velocity field with K Euler steps inside one graph, x_{k+1} =
x_k -/+ u_k * c (c a constant: 1/K, or -dt), from `noise` to `chunks`. OpenTau's `accel` failure signal is
the roughness of those u_k along the integration; they are intermediate tensors that the graph does not
output. A bundle's sampler may output them itself (`velocities`, float32[N, K, Hn, D], step order, in the
graph's own sign and scale); for one that does not, `with_velocities` finds the Euler chain by walking
back from `chunks` and adds the output. Nothing else in the graph changes, so the chunks and features are
computed by the same nodes (a test checks them bit for bit) and the bundle's files and fingerprint stay.

Needs the `onnx` package (the `verifiers` extra); the inference path proper does not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from policies.errors import BundleError

# The optional sampler output: each candidate's velocity at each of the K Euler steps.
VELOCITIES = "velocities"


def _scalar_constant(name: str, producers: dict, initializers: dict) -> float | None:
    """The value of tensor `name` when it is a one-element constant (a Constant node's value or an
    initializer); else None."""
    from onnx import numpy_helper

    if name in initializers:
        value = numpy_helper.to_array(initializers[name])
    else:
        node = producers.get(name)
        if node is None or node.op_type != "Constant":
            return None
        attribute = next((a for a in node.attribute if a.name == "value"), None)
        if attribute is None:
            return None
        value = numpy_helper.to_array(attribute.t)
    return float(value.reshape(-1)[0]) if value.size == 1 else None


@dataclass(frozen=True)
class EulerStep:
    """One Euler step of an unrolled sampler: x_next = x + scale * u (names of graph tensors)."""

    x: str
    velocity: str
    x_next: str
    # The signed multiplier of the velocity: -1/K for our exporter's x - v / K, dt for LeRobot's x + dt * v.
    scale: float


def euler_chain(graph, chunks: str = "chunks", noise: str = "noise") -> list[EulerStep]:
    """The Euler steps from input `noise` to output `chunks`, in step order (x of the first is `noise`, x_next
    of the last produces `chunks`). Raises BundleError when the graph is not such a chain."""
    producers = {out: node for node in graph.node for out in node.output}
    initializers = {t.name: t for t in graph.initializer}
    steps, x = [], chunks
    # A chunk cut from the last x (LeRobot's pi0 / SmolVLA pad the actions to a wider x and slice them out).
    while producers.get(x) is not None and producers[x].op_type in ("Slice", "Identity"):
        x = producers[x].input[0]
    while x != noise:
        node = producers.get(x)
        while node is not None and node.op_type == "Identity":
            x = node.input[0]
            node = producers.get(x)
        if x == noise:
            break
        if node is None or node.op_type not in ("Add", "Sub") or len(node.input) != 2:
            raise BundleError("sampler", f"{x!r} is not an Euler step (x -/+ u * c) on the way from {noise!r} to "
                                         f"{chunks!r}: the sampler's Euler steps cannot be found")
        found = None
        for position in (1, 0):  # which input is the step u * c (the other is the previous x)
            step = producers.get(node.input[position])
            if step is None or step.op_type not in ("Div", "Mul") or len(step.input) != 2:
                continue
            if node.op_type == "Sub" and position == 0:
                continue  # c * u - x is not a step of x
            for u, c in ((step.input[0], step.input[1]), (step.input[1], step.input[0])):
                if step.op_type == "Div" and u != step.input[0]:
                    continue  # c / u is not a step
                value = _scalar_constant(c, producers, initializers)
                if value is not None and value != 0:
                    scale = value if step.op_type == "Mul" else 1.0 / value
                    found = EulerStep(node.input[1 - position], u, x, -scale if node.op_type == "Sub" else scale)
                    break
            if found:
                break
        if found is None:
            raise BundleError("sampler", f"{node.name or node.op_type} ({x!r}) adds no constant multiple of a "
                                         "velocity to the previous x: the sampler's Euler steps cannot be found")
        steps.append(found)
        x = found.x
    if not steps:
        raise BundleError("sampler", f"{chunks!r} is {noise!r} itself: no Euler step to read velocities from")
    return steps[::-1]


def euler_velocities(graph, chunks: str = "chunks", noise: str = "noise") -> list[str]:
    """Names of the velocity tensors u_0 .. u_{K-1} of the Euler chain from input `noise` to output
    `chunks`, in step order. Raises BundleError when the graph is not such a chain."""
    return [step.velocity for step in euler_chain(graph, chunks, noise)]


def with_velocities(model, num_steps: int):
    """A copy of the unrolled flow sampler `model` (onnx.ModelProto) with the output `velocities`
    float32[N, K, Hn, D]. Refuses a graph whose Euler chain has another number of steps than the manifest's."""
    import onnx
    from onnx import TensorProto, helper

    if any(o.name == VELOCITIES for o in model.graph.output):
        return model
    names = euler_velocities(model.graph)
    if len(names) != num_steps:
        raise BundleError("num_steps", f"the sampler's Euler chain has {len(names)} steps, the manifest says "
                                       f"{num_steps}")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    opset = next((o.version for o in out.opset_import if o.domain in ("", "ai.onnx")), 13)
    axes = "taco_velocities_axes"
    if opset >= 13:
        graph.initializer.append(helper.make_tensor(axes, TensorProto.INT64, [1], [1]))
    expanded = []
    for k, name in enumerate(names):
        target = f"taco_velocity_{k}"
        if opset >= 13:
            graph.node.append(helper.make_node("Unsqueeze", [name, axes], [target], name=f"taco_unsqueeze_{k}"))
        else:
            graph.node.append(helper.make_node("Unsqueeze", [name], [target], axes=[1], name=f"taco_unsqueeze_{k}"))
        expanded.append(target)
    graph.node.append(helper.make_node("Concat", expanded, [VELOCITIES], axis=1, name="taco_velocities"))
    chunks = next(o for o in graph.output if o.name == "chunks")
    dims = [d.dim_param or d.dim_value for d in chunks.type.tensor_type.shape.dim]
    graph.output.append(helper.make_tensor_value_info(VELOCITIES, TensorProto.FLOAT,
                                                      [dims[0], num_steps, *dims[1:]]))
    return out


def sampler_with_velocities(path: Path, num_steps: int) -> bytes:
    """The serialized sampler graph at `path` with the `velocities` output (`with_velocities`), for an
    ONNX Runtime session. Raises BundleError for a graph too large to hold in one protobuf (2 GB)."""
    try:
        import onnx
    except ImportError as err:
        raise BundleError("sampler", "reading the sampler's velocities (the monitor's accel signal) needs the "
                                     "onnx package: pip install 'taco-runtime[verifiers]'") from err
    model = onnx.load(str(path))
    data = with_velocities(model, num_steps).SerializeToString()
    if len(data) >= 2**31 - 1:
        raise BundleError("sampler", f"{path.name} is over 2 GB with its weights: its velocities cannot be added "
                                     "in memory; export the bundle with a `velocities` output")
    return data


def roughness(velocities: np.ndarray, rows: np.ndarray | None = None, prefix: int | None = None) -> float:
    """OpenTau's `accel` of one candidate: p * sum_{t=1}^{p-1} |u_t - u_{t-1}| / sum_{t=0}^{p-1} |u_t| over
    its velocities float[K, H, A] at the first p = `prefix` (default K - 1) Euler steps, |.| the Euclidean
    norm over the chunk positions `rows` scores (bool[H]; None: all) and every action dimension. OpenTau
    scores the positions that execute and are not frozen by RTC (`executed_rows`). 0 for a field that
    does not change along the integration; NaN when the scored velocities are all zero or not finite."""
    u = np.asarray(velocities, np.float64)
    k = len(u)
    p = k - 1 if prefix is None else int(prefix)
    if not 2 <= p <= k:
        raise ValueError(f"prefix: expected 2 <= p <= K = {k}, got {p}")
    if rows is not None:
        u = u[:, np.asarray(rows, bool)]
    u = u[:p].reshape(p, -1)
    size = float(np.linalg.norm(u, axis=1).sum())
    if not math.isfinite(size) or size <= 1e-12:
        return math.nan
    return float(p * np.linalg.norm(np.diff(u, axis=0), axis=1).sum() / size)


def executed_rows(length: int, delay: int = 0, window: int | None = None,
                  weights: np.ndarray | None = None) -> np.ndarray:
    """bool[length]: the chunk positions whose velocities `roughness` scores, as OpenTau's sampler masks
    them: those that execute, [delay, delay + window) (the actions before `delay` run while inference
    does; those after the window are replanned before they run), less the ones RTC freezes (guidance
    weight 1). `window` None: to the chunk's end."""
    positions = np.arange(length)
    rows = (positions >= delay) & (positions < (length if window is None else delay + window))
    if weights is not None:
        rows &= ~(np.asarray(weights[:length], np.float64) >= 1.0)
    return rows
