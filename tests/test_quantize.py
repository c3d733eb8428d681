"""`taco quantize` (policies.quantize): an int8 copy of a policy bundle, validated, with its error measured."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from policies import load_policy_bundle, make_example_observation
from policies.quantize import decision_error, quantize_bundle
from runtime.engine import Engine
from taco.cli import main


@pytest.mark.parametrize("method", ["dynamic", "static"])
def test_a_quantized_bundle_is_a_new_valid_bundle_near_the_float_one(flow, tmp_path, method):
    out = tmp_path / f"int8-{method}"
    report = quantize_bundle(flow.path, out, method=method, frames=6, progress=lambda _: None)
    quantized = load_policy_bundle(out)
    assert quantized.fingerprint != flow.bundle.fingerprint
    record = quantized.manifest.provenance["quantized"]
    assert record["from"] == flow.bundle.fingerprint and record["graphs"] == ["encoder"] and record["method"] == method
    ops = {node.op_type for node in onnx.load(str(out / "encoder.onnx")).graph.node}
    assert ("MatMulInteger" in ops) if method == "dynamic" else ("QuantizeLinear" in ops and "DequantizeLinear" in ops)
    # The sampler was not asked for: its file is the float one.
    assert quantized.manifest.files["sampler.onnx"] == flow.bundle.manifest.files["sampler.onnx"]
    assert report["bytes"]["encoder.onnx"]["int8"] < report["bytes"]["encoder.onnx"]["float"]
    assert json.loads((out / "quantization.json").read_text())["error"] == report["error"]
    # It runs as any bundle does, and its decisions are near the float ones, not equal to them.
    observation = make_example_observation(quantized.manifest, seed=1, image_size=(32, 32))
    a, b = Engine(flow.path).infer(observation, n=2, seed=3), Engine(out).infer(observation, n=2, seed=3)
    error = float(np.abs(a.chunk - b.chunk).max())
    assert 0 < error < 0.5 * float(np.abs(a.chunk).max())
    assert 0 < report["error"]["chunk_mean_abs"] <= report["error"]["chunk_max_abs"]
    itself = decision_error(flow.bundle, flow.bundle, [observation])
    assert itself["chunk_max_abs"] == 0 and itself["features_max_abs"] == 0


def test_taco_quantize_refuses_what_it_cannot_do(flow, tmp_path, capsys):
    out = tmp_path / "int8"
    assert main(["quantize", str(flow.path), "--out", str(out), "--graphs", "encoder,sampler", "--frames", "3"]) == 0
    printed = capsys.readouterr().out
    assert "encoder.onnx:" in printed and "sampler.onnx:" in printed and "error against the float bundle" in printed
    assert main(["quantize", str(flow.path), "--out", str(out)]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert main(["quantize", str(flow.path), "--out", str(tmp_path / "x"), "--graphs", "decoder"]) == 2
    assert "choose from encoder, sampler" in capsys.readouterr().err
    assert main(["quantize", str(flow.path), "--out", str(tmp_path / "x"), "--dataset", str(tmp_path)]) == 2
    assert "dynamic quantization needs no calibration data" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
