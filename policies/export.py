"""Export of a torch chunk policy to a policy bundle (needs the `train` extra)."""

from __future__ import annotations

import datetime
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

from policies.bundle import hash_files, load_policy_bundle, write_manifest
from policies.extras import require
from policies.manifest import FEATURES, SAMPLER_FILES, Normalization, PolicyManifest
from policies.sampler import PREFIX_BATCH_KEY
from policies.schema import staged_folder

torch = require("torch")
require("onnx")

OPSET = 17
# The sampler's prefix inputs take a batch of 1 (one observation shared by every candidate) or of N (one
# prefix per candidate: several observations sampled in one call, `Engine.infer_batch`).
PREFIX_AXES = {"prefix_kv": {0: "prefix_batch"}, "prefix_bias": {0: "prefix_batch"}}


class _EncoderGraph(torch.nn.Module):
    def __init__(self, policy):
        super().__init__()
        self.policy = policy

    def forward(self, *inputs):
        *images, state, tokens = inputs
        return self.policy.encode(list(images), state, tokens)


class _SamplerGraph(torch.nn.Module):
    def __init__(self, policy):
        super().__init__()
        self.policy = policy

    def forward(self, prefix_kv, prefix_bias, noise, *rtc):
        return self.policy.sample(prefix_kv, prefix_bias, noise, rtc or None)


class _StepGraph(torch.nn.Module):
    def __init__(self, policy):
        super().__init__()
        self.policy = policy

    def forward(self, prefix_kv, prefix_bias, x, step, *rtc):
        return self.policy.step(prefix_kv, prefix_bias, x, step, rtc or None)


# Real-time chunking inputs of the sampler (policies.manifest: `rtc`): the previous chunk re-indexed to the
# observation's time [1 or N, H, A], per-position weights [1 or N, H], and the guidance cap (a scalar).
RTC_INPUTS = ("rtc_target", "rtc_weights", "rtc_max_weight")
RTC_AXES = {"rtc_target": {0: "prefix_batch"}, "rtc_weights": {0: "prefix_batch"}}


def rtc_example(length: int, width: int):
    """Tracing inputs of the RTC graph inputs for a noise of [length, width]: no guidance (all-zero weights)."""
    return torch.zeros(1, length, width), torch.zeros(1, length), torch.tensor(10.0)


def example_inputs(cfg, batch: int = 1, n: int = 2, seed: int = 0):
    """Random normalised encoder inputs and noise for a config (export tracing and parity tests)."""
    g = torch.Generator().manual_seed(seed)
    images = [torch.randn(batch, 3, c.height, c.width, generator=g) for c in cfg.cameras]
    state = torch.randn(batch, len(cfg.state_names), generator=g)
    tokens = torch.randint(3, 259, (batch, cfg.max_text_len), generator=g)
    tokens[:, cfg.max_text_len // 2:] = 0  # padding, so the export sees the mask path
    noise = torch.randn(n, cfg.chunk_length, len(cfg.action_names), generator=g)
    return images, state, tokens, noise


# Graphs whose weights exceed this many bytes keep them in one external file, `<graph>.onnx.data`, next to
# the graph (protobuf caps one file at 2 GB: pi0's encoder holds about 11 GB in float32).
EXTERNAL_DATA_BYTES = 1_500_000_000


def _export(module, args, path: Path, input_names, output_names, dynamic_axes, metadata: dict[str, str],
            external_above: int = EXTERNAL_DATA_BYTES) -> list[str]:
    """Exports `module` to `path` and returns the names of the files written (the graph, and its external
    data file when the weights are larger than `external_above` bytes)."""
    onnx = require("onnx")
    path = Path(path)
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        traced = Path(scratch) / path.name
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # The TorchScript exporter: 10x faster to export than dynamo for these graphs and gives the same
            # operators; parity tests guard the result. Above 2 GB it writes one file per weight.
            torch.onnx.export(
                module, args, str(traced), input_names=input_names, output_names=output_names,
                dynamic_axes=dynamic_axes, opset_version=OPSET, dynamo=False,
            )
        model = onnx.load(str(traced))
    # Facts the manifest repeats are written into the graph too, so the runtime can prove they agree
    # (the manifest itself carries no checksum).
    onnx.helper.set_model_props(model, metadata)
    weights = sum(len(t.raw_data) for t in model.graph.initializer)
    if weights <= external_above:
        onnx.save(model, str(path))
        return [path.name]
    data = f"{path.name}.data"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data,
                    size_threshold=1024)
    return [path.name, data]


def graph_metadata(cfg, graph: str) -> dict[str, str]:
    """ONNX metadata_props recorded in every exported graph (checked by policies.sampler.check_graph_signatures)."""
    facts = {PREFIX_BATCH_KEY: "per_candidate"} if graph in ("sampler", "step") else {}
    return {
        **facts,
        "taco.graph": graph,
        "taco.kind": cfg.kind,
        "taco.num_steps": str(cfg.num_steps),
        "taco.chunk_length": str(cfg.chunk_length),
        "taco.feature_dim": str(cfg.expert_dim),
    }


def export_bundle(
    policy,
    out_dir: str | Path,
    *,
    normalization: Normalization | None = None,
    sampler: str = "unrolled",
    name: str | None = None,
    provenance: dict | None = None,
    overwrite: bool = False,
    rtc: bool = True,
):
    """Writes `policy` as a bundle: encoder.onnx, sampler.onnx or step.onnx, manifest.json.

    Args:
        policy: a `ChunkPolicy` (flow or diffusion), in eval mode.
        out_dir: bundle folder; must not exist unless `overwrite`.
        normalization: statistics mapping robot units to normalised units; identity when None.
        sampler: "unrolled" (all steps in one graph) or "stepped" (one step; the runtime loops).
        name: bundle name; defaults to the folder name.
        provenance: how the bundle was made (command, dataset fingerprint); the command line is added.
        rtc: give the sampler real-time chunking inputs (RTC_INPUTS); False exports the sampler of
            bundles made before them (all-zero RTC weights compute exactly what it does).

    Returns:
        the loaded, validated PolicyBundle.
    """
    if sampler not in SAMPLER_FILES:
        raise ValueError(f"sampler: must be one of {', '.join(SAMPLER_FILES)}, got {sampler!r}")
    cfg = policy.cfg
    out = Path(out_dir)
    if out.exists():
        if not overwrite:
            raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
        shutil.rmtree(out)
    normalization = normalization or Normalization.identity(len(cfg.state_names), len(cfg.action_names))
    policy = policy.eval()
    # Write into a temporary sibling and rename, so an interrupted export never leaves a half bundle.
    with staged_folder(out) as tmp:
        images, state, tokens, noise = example_inputs(cfg)
        cam_inputs = [f"image_{c.name}" for c in cfg.cameras]
        with torch.no_grad():
            prefix_kv, prefix_bias = policy.encode(images, state, tokens)
            _export(
                _EncoderGraph(policy), (*images, state, tokens), tmp / "encoder.onnx",
                [*cam_inputs, "state", "tokens"], ["prefix_kv", "prefix_bias"],
                {name: {0: "batch"} for name in [*cam_inputs, "state", "tokens", "prefix_kv", "prefix_bias"]},
                graph_metadata(cfg, "encoder"),
            )
            guidance, guidance_names = (rtc_example(*noise.shape[1:]), list(RTC_INPUTS)) if rtc else ((), [])
            axes = {**PREFIX_AXES, **(RTC_AXES if rtc else {}), "features": {0: "n"}}
            if sampler == "unrolled":
                _export(
                    _SamplerGraph(policy), (prefix_kv, prefix_bias, noise, *guidance), tmp / "sampler.onnx",
                    ["prefix_kv", "prefix_bias", "noise", *guidance_names], ["chunks", "features"],
                    {**axes, "noise": {0: "n"}, "chunks": {0: "n"}}, graph_metadata(cfg, "sampler"),
                )
            else:
                _export(
                    _StepGraph(policy), (prefix_kv, prefix_bias, noise, torch.tensor(0, dtype=torch.long), *guidance),
                    tmp / "step.onnx", ["prefix_kv", "prefix_bias", "x", "step", *guidance_names],
                    ["x_next", "features"], {**axes, "x": {0: "n"}, "x_next": {0: "n"}}, graph_metadata(cfg, "step"),
                )
        files = ["encoder.onnx", SAMPLER_FILES[sampler]]
        manifest = PolicyManifest(
            kind=cfg.kind,
            name=name or out.name,
            cameras=cfg.cameras,
            state_names=cfg.state_names,
            action_names=cfg.action_names,
            chunk_length=cfg.chunk_length,
            num_steps=cfg.num_steps,
            feature_dim=cfg.expert_dim,
            feature_description=FEATURES[cfg.feature],
            action_dt=cfg.action_dt,
            sampler=sampler,
            normalization=normalization,
            tokenizer=_tokenizer(cfg),
            files=hash_files(tmp, files),
            rtc=rtc,
            model_config=cfg.to_dict(),
            provenance={
                "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "torch": torch.__version__,
                "opset": OPSET,
                **(provenance or {}),
            },
        )
        write_manifest(tmp, manifest)
    return load_policy_bundle(out)


def _tokenizer(cfg):
    from policies.tokenizer import ByteTokenizer

    return ByteTokenizer(max_length=cfg.max_text_len)


def onnx_size_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).glob("*.onnx"))


__all__ = ["export_bundle", "example_inputs", "onnx_size_bytes"]
