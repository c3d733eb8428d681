"""`taco quantize`: a policy bundle with int8 graphs, validated like any other, with its error measured.

ONNX Runtime's own quantizer does the work (`onnxruntime.quantization`): `dynamic` stores the weights
of MatMul-heavy graphs as int8 and quantizes activations at run time (no calibration data; on CPU the
weight MatMuls become MatMulInteger); `static` writes QDQ graphs (QuantizeLinear/DequantizeLinear
around every quantized op, the format TensorRT also runs) with activation ranges calibrated on frames
of a dataset. The graphs are chosen by name: the encoder (most of a decision's cost at small N), the
sampler, or both. The quantized bundle is a new bundle (its files, so its fingerprint, differ); its
manifest's provenance says what it was quantized from and how. Verifiers trained on the float bundle's
features are bound to the float fingerprint: rebind one (`taco rebind-verifier`) after checking it.

The error is measured per decision against the float bundle: the same observations (the calibration
frames, or example observations) and the same noise, the chosen chunk in robot units and the features.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np

from policies.bundle import PolicyBundle, hash_files, load_policy_bundle, write_manifest
from policies.errors import BundleError
from policies.schema import staged_folder

GRAPHS = ("encoder", "sampler")
METHODS = ("dynamic", "static")


def _graph_file(bundle: PolicyBundle, graph: str) -> str:
    return "encoder.onnx" if graph == "encoder" else bundle.manifest.sampler_file


def _require_quantization():
    try:
        import onnx  # noqa: F401
        from onnxruntime import quantization
    except ImportError as err:
        raise BundleError("quantize", "quantizing needs the onnx package: pip install 'taco-runtime[verifiers]'") from err
    return quantization


class _Frames:
    """ONNX Runtime's CalibrationDataReader over a list of feed dicts (the graph's inputs by name)."""

    def __init__(self, feeds: list[dict], names: set[str]):
        self._feeds = iter([{k: v for k, v in f.items() if k in names} for f in feeds])

    def get_next(self):
        return next(self._feeds, None)


def calibration_observations(bundle: PolicyBundle, dataset: str | Path | None, frames: int, seed: int = 0) -> list:
    """`frames` observations to calibrate and measure on: evenly spread over a LeRobotDataset's episodes (the
    train extra reads it), or, without a dataset, example observations (`make_example_observation`)."""
    from policies.observation import make_example_observation

    if dataset is None:
        return [make_example_observation(bundle.manifest, seed=seed + i) for i in range(frames)]
    from policies.data import load_dataset

    data = load_dataset(dataset)
    names = set(bundle.manifest.camera_names)
    missing = names - {c.name for c in data.cameras}
    if missing:
        raise BundleError("cameras", f"the dataset {dataset} has no camera {', '.join(sorted(missing))} of the policy")
    index = [(e, t) for e, episode in enumerate(data.episodes) for t in range(len(episode))]
    picks = np.linspace(0, len(index) - 1, min(frames, len(index))).round().astype(int)
    return [data.episodes[index[i][0]].observation(index[i][1], bundle.manifest.cameras) for i in picks]


def _feeds(bundle: PolicyBundle, observations: list, n: int, seed: int) -> tuple[list[dict], list[dict]]:
    """The float bundle's encoder feeds of each observation and its sampler feeds (prefix and the noise of
    a decision of `n` seeded `seed + i`)."""
    from policies.sampler import PolicySampler

    sampler = PolicySampler(bundle)
    encoder_feeds, sampler_feeds = [], []
    for i, observation in enumerate(observations):
        feeds = sampler.preprocess(observation)
        prefix = sampler.encode(feeds)
        noise, step = sampler.draw(n, seed + i)
        step_feeds = {**prefix, **sampler.rtc_feeds(None)}
        if bundle.manifest.sampler == "unrolled":
            step_feeds["noise"] = noise
            if step is not None:
                step_feeds["step_noise"] = step
        else:
            step_feeds.update(x=noise, step=np.array(0, np.int64))
        encoder_feeds.append(feeds)
        sampler_feeds.append(step_feeds)
    return encoder_feeds, sampler_feeds


def quantize_bundle(policy: str | Path, out: str | Path, graphs: tuple[str, ...] = ("encoder",),
                    method: str = "dynamic", dataset: str | Path | None = None, frames: int = 32,
                    overwrite: bool = False, progress=print) -> dict:
    """Writes the int8 bundle of `policy` to `out` and returns its report: what was quantized, the sizes,
    and the per-decision error against the float bundle (written to the bundle's `quantization.json` too)."""
    quantization = _require_quantization()
    bundle = load_policy_bundle(policy)
    if not graphs or any(g not in GRAPHS for g in graphs):
        raise ValueError(f"graphs: choose from {', '.join(GRAPHS)}, got {', '.join(graphs) or 'none'}")
    if method not in METHODS:
        raise ValueError(f"method: one of {', '.join(METHODS)}, got {method!r}")
    if method == "dynamic" and dataset is not None:
        raise ValueError("dataset: dynamic quantization needs no calibration data (use --method static)")
    out = Path(out)
    if out.exists():
        if not overwrite:
            raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
        if out.resolve() == bundle.path.resolve():
            raise ValueError(f"out: {out} is the bundle being quantized; write the int8 copy elsewhere")
        shutil.rmtree(out)
    observations = calibration_observations(bundle, dataset, frames)
    encoder_feeds, sampler_feeds = _feeds(bundle, observations, 4, seed=0)
    with staged_folder(out) as tmp:
        shutil.copytree(bundle.path, tmp, dirs_exist_ok=True)
        for graph in graphs:
            name = _graph_file(bundle, graph)
            source, target = bundle.file(name), tmp / name
            progress(f"quantizing {name} ({method})")
            if method == "dynamic":
                # The weight MatMuls (and Gemms): a ConvInteger has no CPU kernel in some onnxruntime releases.
                quantization.quantize_dynamic(str(source), str(target), weight_type=quantization.QuantType.QInt8,
                                              op_types_to_quantize=["MatMul", "Gemm"])
            else:
                import onnxruntime as ort

                inputs = {i.name for i in ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
                          .get_inputs()}
                reader = _Frames(encoder_feeds if graph == "encoder" else sampler_feeds, inputs)
                # The matrix products only: QDQ around every op (the attention's additive 0 / -1e4 mask, the
                # normalisations' inputs) cost 40% relative error on the prefix and saved nothing. uint8
                # activations with int8 per-channel weights measured fastest on this AVX-512 VNNI CPU (the
                # default encoder 1.82x float; int8 activations 1.68x) at 2.6% relative error.
                quantization.quantize_static(str(source), str(target), reader,
                                             quant_format=quantization.QuantFormat.QDQ, per_channel=True,
                                             op_types_to_quantize=["MatMul", "Conv", "Gemm"],
                                             activation_type=quantization.QuantType.QUInt8,
                                             weight_type=quantization.QuantType.QInt8)
        record = {"from": bundle.fingerprint, "graphs": list(graphs), "method": method,
                  # The dataset by its folder name: provenance records no path of the machine that built it.
                  "calibration": None if method == "dynamic" else (Path(dataset).name if dataset else "example observations"),
                  "frames": None if method == "dynamic" else len(observations)}
        manifest = dataclasses.replace(
            bundle.manifest, name=out.name, files=hash_files(tmp, list(bundle.manifest.files)),
            provenance={**bundle.manifest.provenance, "quantized": record})
        write_manifest(tmp, manifest)
        quantized = load_policy_bundle(tmp)  # checksums; the graphs' signatures next
        report = {"quantized": record, "bytes": {name: {"float": bundle.file(name).stat().st_size,
                                                        "int8": (tmp / name).stat().st_size}
                                                 for name in (_graph_file(bundle, g) for g in graphs)},
                  "error": decision_error(bundle, quantized, observations)}
        (tmp / "quantization.json").write_text(json.dumps(report, indent=2) + "\n")
    return {**report, "out": str(out), "fingerprint": load_policy_bundle(out).fingerprint}


def decision_error(reference: PolicyBundle, other: PolicyBundle, observations: list, n: int = 4) -> dict:
    """How far `other`'s candidates are from `reference`'s on the same observations and noise: their chunks
    in robot units (max and mean absolute error) and features (max absolute error, and relative to the
    features' mean magnitude)."""
    from policies.sampler import PolicySampler

    a, b = PolicySampler(reference), PolicySampler(other)
    chunk, feature, scale = [], [], []
    for i, observation in enumerate(observations):
        noise, step = a.draw(n, seed=i)
        x_chunks, x_features = a.candidates(observation, noise, step)
        y_chunks, y_features = b.candidates(observation, noise, step)
        chunk.append(np.abs(a.unnormalize(x_chunks) - b.unnormalize(y_chunks)))
        feature.append(np.abs(x_features - y_features).max())
        scale.append(np.abs(x_features).mean())
    chunk = np.stack(chunk)
    return {"decisions": len(observations), "candidates": n, "chunk_max_abs": float(chunk.max()),
            "chunk_mean_abs": float(chunk.mean()), "features_max_abs": float(max(feature)),
            "features_max_rel": float(max(feature) / max(np.mean(scale), 1e-12))}
