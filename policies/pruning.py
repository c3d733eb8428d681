"""Pruned best-of-N: every candidate runs the first k denoising steps, only the best m run the rest.

FASTER (arXiv 2604.19730) and FM-Steer score half-denoised candidates and finish only the chosen ones.
Here a candidate is judged at step k by its predicted chunk: from x_{k-1} the flow's velocity u_{k-1}
carried to the last step's start in one Euler step, x^_{K-1} = x_{k-1} + (s_{k-1} + ... + s_{K-2}) u_{k-1}
(s_j the signed step sizes; for uniform steps x_{k-1} + (K - k) (x_k - x_{k-1})), and then the sampler's
own last step run on it. That last step gives what the verifier was trained on: the chunk and the
features of the final denoising step, not of an intermediate one. The m best by the verifier then
continue from their own x_k through steps k .. K-1, and the decision is chosen among those. Cost, in
candidate-steps: N (k + 1) + m (K - k) against N K.

What a sampler graph must expose for it (docs/bundles.md): a flow policy; an unrolled graph whose
`chunks` output is reached from its `noise` input by K Euler steps x_{j+1} = x_j -/+ u_j * c_j
(`policies.velocities.euler_chain` finds them), or a step-wise graph (`x`, `step` -> `x_next`) with
uniform steps. Three sessions are cut from an unrolled graph in memory (the bundle's files and
fingerprint stay): the head (noise -> x_{k-1}, x_k), the last step (x_{K-1} -> chunks, features) and the
tail (x_k -> chunks, features). Needs the `onnx` package for an unrolled graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from policies.errors import BundleError


@dataclass(frozen=True)
class Prune:
    """`--prune k:m`: all N candidates run `steps` (k) denoising steps, the best `keep` (m) run the rest."""

    steps: int
    keep: int

    def __post_init__(self):
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"prune: the steps every candidate runs must be an integer >= 1, got {self.steps!r}")
        if isinstance(self.keep, bool) or not isinstance(self.keep, int) or self.keep < 1:
            raise ValueError(f"prune: the candidates kept must be an integer >= 1, got {self.keep!r}")

    @classmethod
    def parse(cls, text: str) -> Prune:
        """'k:m' -> Prune(k, m); raises ValueError naming what is wrong."""
        parts = str(text).split(":")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise ValueError(f"prune: expected k:m (steps every candidate runs : candidates finished), got {text!r}")
        return cls(int(parts[0]), int(parts[1]))

    def check(self, num_steps: int) -> None:
        """Refuses a k the policy's K steps leave nothing to prune after (k must be in [1, K-1])."""
        if not 1 <= self.steps <= num_steps - 1:
            raise BundleError("num_steps", f"prune {self}: k must be in [1, {num_steps - 1}] for a sampler of "
                                           f"{num_steps} steps")

    def __str__(self) -> str:
        return f"{self.steps}:{self.keep}"


# What `--prune auto` runs, and the setting `taco bench` measures first (its summary's
# ratio_n16_pruned_over_n1): on the shipped flow policy with its best verifier, best-of-16 pruned to one
# candidate after 2 of 10 steps kept full best-of-16's success (193/200 against 185/200 on seeds nobody
# tuned on) at 1.49x N=1's latency against 2.36x (docs/benchmarks.md#spending-less-on-n).
DEFAULT_PRUNE = Prune(2, 1)


def auto_prune(manifest, n: int, verifier: bool, monitor: bool, adaptive: bool = False,
               logging: bool = False) -> Prune | None:
    """`--prune auto`: DEFAULT_PRUNE where it was measured to keep best-of-N's success, else None. That is a
    flow policy with a deterministic sampler and no real-time chunking inputs (pruning under RTC guidance
    was not measured), a verifier choosing among more than the one it keeps, no failure monitor (its
    thresholds are calibrated on N fully denoised candidates), no adaptive N (one saving at a time), no
    decision log (a value verifier trains on every logged candidate: they must be finished ones), and
    enough steps to prune after."""
    if (manifest.kind != "flow" or manifest.step_noise or manifest.rtc or not verifier or monitor or adaptive
            or logging
            or n <= DEFAULT_PRUNE.keep or manifest.num_steps - 1 < DEFAULT_PRUNE.steps):
        return None
    return DEFAULT_PRUNE


def resolve_prune(setting: str | None, manifest, n: int, verifier: bool, monitor: bool,
                  adaptive: bool = False, logging: bool = False) -> Prune | None:
    """A `--prune` value: 'auto' (`auto_prune`), 'none' / '' / None (no pruning) or 'k:m', checked against the
    policy's steps."""
    if setting in (None, "", "none"):
        return None
    if setting == "auto":
        return auto_prune(manifest, n, verifier, monitor, adaptive, logging)
    prune = Prune.parse(setting)
    prune.check(manifest.num_steps)
    return prune


def _referenced(node) -> set[str]:
    """Every tensor a node reads, the outer-scope names its subgraphs (If, Loop, Scan) read included."""
    from onnx import AttributeProto

    names = set(node.input)
    for attribute in node.attribute:
        graphs = [attribute.g] if attribute.type == AttributeProto.GRAPH else (
            list(attribute.graphs) if attribute.type == AttributeProto.GRAPHS else [])
        for graph in graphs:
            inner = {t.name for t in graph.initializer} | {i.name for i in graph.input}
            for sub in graph.node:
                inner |= set(sub.output)
            for sub in graph.node:
                names |= _referenced(sub) - inner
    return names - {""}


def subgraph(model, inputs: list[str], outputs: list[str], like: str):
    """The part of `model` (onnx.ModelProto) that computes `outputs` from `inputs`: graph inputs by their
    own declaration, inner tensors typed as the graph input `like` (the noise: every x of the chain has its
    type and shape); inputs the part does not read are left out. Raises BundleError when the outputs need
    another graph input than `inputs`."""
    import onnx
    from onnx import helper

    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    initializers = {t.name: t for t in graph.initializer}
    declared = {i.name: i for i in graph.input}
    stop, needed, seen = set(inputs), set(), set()
    stack = list(outputs)
    while stack:
        name = stack.pop()
        if name in seen or name in stop or name in initializers:
            seen.add(name)
            continue
        seen.add(name)
        node = producers.get(name)
        if node is None:
            if name in declared:
                raise BundleError("sampler", f"{outputs} need the graph input {name!r}, which the pruned part "
                                             f"does not take ({', '.join(inputs)})")
            raise BundleError("sampler", f"no node produces {name!r}")
        if id(node) not in needed:
            needed.add(id(node))
            stack.extend(_referenced(node))
    order = [node for node in graph.node if id(node) in needed]  # the graph's own topological order
    used = set().union(*(_referenced(node) for node in order)) | set(outputs)
    typed = {v.name: v for v in [*graph.value_info, *graph.output]}

    def value_info(name: str, known: dict):
        if name in known:
            return known[name]
        value = onnx.ValueInfoProto()
        value.CopyFrom(declared[like])
        value.name = name
        return value

    # A prefix input this part never reads is left out.
    new_inputs = [value_info(name, declared) for name in inputs if name in used]
    new_outputs = [value_info(name, typed) for name in outputs]
    part = helper.make_graph(order, f"{graph.name}_part", new_inputs, new_outputs,
                             [t for name, t in initializers.items() if name in used])
    out = helper.make_model(part, opset_imports=list(model.opset_import), ir_version=model.ir_version,
                            producer_name=model.producer_name)
    for entry in model.metadata_props:
        out.metadata_props.append(entry)
    return out


@dataclass(frozen=True)
class PrunedGraphs:
    """The three serialized parts of an unrolled flow sampler cut at step k (`cut_sampler`)."""

    head: bytes
    last: bytes
    tail: bytes
    # Tensor names: x_{k-1} (None when it is the noise input: k = 1), x_k, x_{K-1}.
    x_before: str | None
    x_k: str
    x_last: str
    # x^_{K-1} = x_{k-1} + factor * (x_k - x_{k-1}).
    factor: float


def cut_sampler(path: Path, steps: int, num_steps: int, noise: str = "noise") -> PrunedGraphs:
    """Cuts the unrolled sampler graph at `path` for pruning after `steps` (k) Euler steps."""
    try:
        import onnx
    except ImportError as err:
        raise BundleError("sampler", "pruning an unrolled sampler needs the onnx package: "
                                     "pip install 'taco-runtime[verifiers]'") from err
    from policies.velocities import euler_chain

    model = onnx.load(str(path))
    chain = euler_chain(model.graph, noise=noise)
    if len(chain) != num_steps:
        raise BundleError("num_steps", f"the sampler's Euler chain has {len(chain)} steps, the manifest says {num_steps}")
    k = steps
    scales = [step.scale for step in chain]
    factor = sum(scales[k - 1:num_steps - 1]) / scales[k - 1]
    inputs = [i.name for i in model.graph.input if i.name != noise]
    before = None if chain[k - 1].x == noise else chain[k - 1].x
    head = subgraph(model, [*inputs, noise], [*([before] if before else []), chain[k - 1].x_next], like=noise)
    # The later steps may read the initial noise too (LeRobot's exports: its shape, its values under RTC):
    # those parts take it, each candidate's own.
    last = subgraph(model, [*inputs, noise, chain[-1].x], ["chunks", "features"], like=noise)
    tail = last if k == num_steps - 1 else subgraph(model, [*inputs, noise, chain[k].x], ["chunks", "features"],
                                                    like=noise)
    parts = [part.SerializeToString() for part in (head, last, tail)]
    if max(len(p) for p in parts) >= 2**31 - 1:
        raise BundleError("sampler", f"{path.name} is over 2 GB with its weights: it cannot be cut in memory")
    return PrunedGraphs(*parts, x_before=before, x_k=chain[k].x, x_last=chain[-1].x, factor=factor)
