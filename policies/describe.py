"""A policy bundle described for people: `taco inspect` and `taco export` print it."""

from __future__ import annotations

from pathlib import Path

from policies.bundle import PolicyBundle
from policies.sampler import SessionFactory, check_graph_signatures, cpu_session


def graph_signatures(folder: Path, files, session_factory: SessionFactory | None = None) -> tuple[list[str], dict]:
    """One line per ONNX file, `name: (inputs) -> (outputs)`, and the sessions that were opened to read them."""
    make_session = session_factory or cpu_session
    lines, sessions = [], {}
    for name in files:
        session = sessions[name] = make_session(Path(folder) / name)
        ins = ", ".join(f"{i.name}{i.shape}" for i in session.get_inputs())
        outs = ", ".join(f"{o.name}{o.shape}" for o in session.get_outputs())
        lines.append(f"graph           {name}: ({ins}) -> ({outs})")
    return lines, sessions


def describe_policy(bundle: PolicyBundle, session_factory: SessionFactory | None = None) -> str:
    """The manifest, every file with its size and checksum, and each graph's signature.

    Also checks the graphs against the manifest (raises BundleError naming the field), so a
    description that prints is one of a bundle the runtime will serve.
    """
    m = bundle.manifest
    lines = [
        f"policy bundle   {bundle.path}",
        f"name            {m.name}",
        f"kind            {m.kind} ({m.num_steps} steps, sampler {m.sampler})",
        f"fingerprint     {bundle.fingerprint}",
        "cameras         " + ", ".join(f"{c.name} {c.height}x{c.width}" for c in m.cameras),
        f"state           {m.state_dim}: {', '.join(m.state_names)}",
        f"action          {m.action_dim} x chunk {m.chunk_length} (dt {m.action_dt} s, "
        f"{m.chunk_length * m.action_dt * 1e3:.0f} ms)",
        "real-time chunk " + ("yes: the sampler takes rtc_target, rtc_weights, rtc_max_weight" if m.rtc
                              else "no (exported before RTC, or a policy LeRobot gives none)"),
        f"feature         {m.feature_dim}-d: {m.feature_description}",
        f"tokenizer       {m.tokenizer.to_dict()}",
    ]
    for name, digest in sorted(m.files.items()):
        size = bundle.file(name).stat().st_size
        lines.append(f"file            {name:<14} {size / 1e6:7.2f} MB  sha256 {digest[:16]}... ok")
    graphs, sessions = graph_signatures(bundle.path, sorted(f for f in m.files if f.endswith(".onnx")),
                                        session_factory)
    check_graph_signatures(m, sessions["encoder.onnx"], sessions[m.sampler_file])
    lines += graphs
    lines.append("graphs          match the manifest (names, dtypes, sizes, steps)")
    for key, value in m.provenance.items():
        lines.append(f"provenance      {key}: {value}")
    return "\n".join(lines)
