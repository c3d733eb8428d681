"""Bundle validation: bad manifests, checksums and mismatched verifiers are refused, naming the field."""

import json
import shutil

import numpy as np
import pytest

from policies import BundleError, load_policy_bundle
from policies.manifest import PolicyManifest
from runtime import Engine
from verifiers import load_verifier, write_verifier_bundle
from verifiers.synthetic import linear_verifier_onnx


@pytest.fixture
def bundle_copy(flow, tmp_path):
    path = tmp_path / "bundle"
    shutil.copytree(flow.path, path)
    return path


def edit_manifest(path, edit):
    manifest = json.loads((path / "manifest.json").read_text())
    edit(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_manifest_round_trips_and_fingerprint_ignores_provenance(flow):
    manifest = flow.bundle.manifest
    data = manifest.to_dict()
    again = PolicyManifest.from_dict(json.loads(json.dumps(data)))
    assert again == manifest and again.fingerprint == manifest.fingerprint
    data["provenance"] = {"command": "something else"}
    assert PolicyManifest.from_dict(data).fingerprint == manifest.fingerprint
    data["normalization"]["action"]["mean"][0] += 1.0
    assert PolicyManifest.from_dict(data).fingerprint != manifest.fingerprint


def test_bad_checksum_is_refused(bundle_copy):
    with open(bundle_copy / "encoder.onnx", "r+b") as f:
        f.seek(200)
        byte = f.read(1)
        f.seek(200)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(BundleError, match="checksum mismatch") as info:
        load_policy_bundle(bundle_copy)
    assert info.value.field == "files.encoder.onnx"
    with pytest.raises(BundleError):
        Engine(bundle_copy)


@pytest.mark.parametrize("edit,field", [
    (lambda m: m.pop("chunk_length"), "chunk_length"),
    (lambda m: m.__setitem__("kind", "transformer"), "kind"),
    (lambda m: m.__setitem__("schema_version", 99), "schema_version"),
    (lambda m: m.__setitem__("colour", "blue"), "colour"),
    (lambda m: m["normalization"]["state"]["std"].__setitem__(3, 0.0), "normalization.state.std[3]"),
    (lambda m: m["normalization"]["action"]["mean"].pop(), "normalization.action.mean"),
    (lambda m: m["normalization"]["state"].pop("mean"), "normalization.state.mean"),
    (lambda m: m["cameras"][0].__setitem__("height", "96"), "cameras[0].height"),
    (lambda m: m["files"].pop("sampler.onnx"), "files.sampler.onnx"),
    (lambda m: m["files"].__setitem__("encoder.onnx", "abc"), "files.encoder.onnx"),
    (lambda m: m["files"].__setitem__("extra.onnx", "0" * 64), "files.extra.onnx"),
    (lambda m: m.__setitem__("sampler", "looped"), "sampler"),
    (lambda m: m["tokenizer"].__setitem__("type", "sentencepiece"), "tokenizer.type"),
])
def test_invalid_manifest_names_the_field(bundle_copy, edit, field):
    edit_manifest(bundle_copy, edit)
    with pytest.raises(BundleError) as info:
        load_policy_bundle(bundle_copy)
    assert info.value.field == field


@pytest.mark.parametrize("edit,field", [
    (lambda m: m["feature"].__setitem__("dim", m["feature"]["dim"] + 1), "feature.dim"),
    (lambda m: m.__setitem__("chunk_length", m["chunk_length"] * 2), "chunk_length/action.names"),
    (lambda m: m["cameras"][0].__setitem__("width", m["cameras"][0]["width"] * 2), "cameras[0]"),
    (lambda m: m["cameras"][0].__setitem__("name", "cam_low"), "cameras"),
    (lambda m: m["tokenizer"].__setitem__("max_length", 99), "tokenizer.max_length"),
    (lambda m: m.__setitem__("num_steps", m["num_steps"] + 5), "num_steps"),
    (lambda m: m.__setitem__("kind", "diffusion"), "kind"),
])
def test_manifest_that_does_not_describe_its_graphs_is_refused(bundle_copy, edit, field):
    """Checksums pass (the ONNX files are untouched) but the manifest lies about them."""
    edit_manifest(bundle_copy, edit)
    load_policy_bundle(bundle_copy)
    with pytest.raises(BundleError) as info:
        Engine(bundle_copy)
    assert info.value.field == field


def test_stepped_bundle_with_another_step_count_is_refused(exported, tmp_path):
    """A stepped bundle's loop length comes from the manifest: a wrong count would integrate past t=0."""
    path = tmp_path / "stepped"
    shutil.copytree(exported("flow", "stepped").path, path)
    edit_manifest(path, lambda m: m.__setitem__("num_steps", 9))
    with pytest.raises(BundleError) as info:
        Engine(path)
    assert info.value.field == "num_steps"


def test_missing_manifest_and_missing_folder(tmp_path):
    with pytest.raises(BundleError, match="not a folder"):
        load_policy_bundle(tmp_path / "nope")
    with pytest.raises(BundleError) as info:
        load_policy_bundle(tmp_path)
    assert info.value.field == "manifest.json"
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_policy_bundle(tmp_path)


def test_a_shipped_name_that_is_also_a_folder_here_is_refused_not_guessed(tmp_path, monkeypatch):
    from policies.shipped import resolve_policy
    from verifiers.shipped import resolve_verifier

    monkeypatch.chdir(tmp_path)
    shipped = resolve_policy("flow")
    assert resolve_verifier("cfn", shipped).endswith("flow-cfn")
    (tmp_path / "flow").mkdir()
    (tmp_path / "cfn").mkdir()
    with pytest.raises(BundleError, match="./flow"):
        resolve_policy("flow")
    with pytest.raises(BundleError, match="./cfn"):
        resolve_verifier("cfn", shipped)
    assert resolve_policy("./flow") == "./flow" and resolve_policy("default") != "default"


def make_verifier(tmp_path, bundle, feature_dim=None, fingerprint=None, name="v"):
    f = feature_dim or bundle.manifest.feature_dim
    onnx_path = linear_verifier_onnx(tmp_path / f"{name}.onnx", np.ones(f))
    return write_verifier_bundle(onnx_path, tmp_path / name, policy_fingerprint=fingerprint or bundle.fingerprint,
                                 feature_dim=f)


def test_verifier_for_another_feature_size_is_refused(flow, tmp_path):
    verifier = make_verifier(tmp_path, flow.bundle, feature_dim=flow.bundle.manifest.feature_dim + 1)
    with pytest.raises(BundleError) as info:
        Engine(flow.bundle, verifier=verifier.path)
    assert info.value.field.endswith(".feature_dim")


def test_verifier_for_another_policy_is_refused(exported, tmp_path):
    flow, diffusion = exported("flow"), exported("diffusion")
    assert flow.bundle.manifest.feature_dim == diffusion.bundle.manifest.feature_dim
    verifier = make_verifier(tmp_path, diffusion.bundle)
    with pytest.raises(BundleError, match="trained on policy") as info:
        Engine(flow.bundle, verifier=verifier.path)
    assert info.value.field.endswith(".policy_fingerprint")


def test_verifier_bundle_checksum_and_manifest_are_checked(flow, tmp_path):
    verifier = make_verifier(tmp_path, flow.bundle)
    edit_manifest(verifier.path, lambda m: m.__setitem__("feature_dim", 0))
    with pytest.raises(BundleError) as info:
        load_verifier(verifier.path)
    assert info.value.field == "feature_dim"
    verifier = make_verifier(tmp_path, flow.bundle, name="v2")
    (verifier.path / "verifier.onnx").write_bytes(b"garbage")
    with pytest.raises(BundleError, match="checksum") as info:
        load_verifier(verifier.path)
    assert info.value.field == "files.verifier.onnx"


def test_verifier_with_wrong_signature_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["features"], ["scores"])], "bad",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["n", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "bad.onnx")
    with pytest.raises(BundleError, match=r"float32\[N\]"):
        load_verifier(tmp_path / "bad.onnx")
    # A `seed` input must be the int64 scalar the engine feeds.
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["features"], ["s"], keepdims=0),
         helper.make_node("Add", ["s", "seed"], ["scores"])], "bad_seed",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["n", 4]),
         helper.make_tensor_value_info("seed", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["n"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "bad_seed.onnx")
    with pytest.raises(BundleError, match="int64 scalar") as info:
        load_verifier(tmp_path / "bad_seed.onnx")
    assert info.value.field.endswith("inputs.seed")


def test_invalid_verifier_swap_keeps_the_old_one(flow, exported, tmp_path):
    good = make_verifier(tmp_path, flow.bundle, name="good")
    bad = make_verifier(tmp_path, exported("diffusion").bundle, name="bad")
    engine = Engine(flow.bundle, verifier=good.path)
    with pytest.raises(BundleError):
        engine.set_verifier(bad.path)
    assert engine.verifier.name == "good"
    with pytest.raises(BundleError):
        engine.set_verifier(tmp_path / "does-not-exist")
    assert engine.verifier.name == "good"


def test_a_staged_folder_appears_whole_or_not_at_all(tmp_path):
    from policies.schema import staged_folder

    out = tmp_path / "new" / "bundle"  # its parent does not exist yet
    with pytest.raises(RuntimeError):
        with staged_folder(out) as tmp:
            (tmp / "manifest.json").write_text("{}")
            raise RuntimeError("interrupted")
    assert not out.exists() and list(out.parent.iterdir()) == []
    with staged_folder(out) as tmp:
        (tmp / "manifest.json").write_text("{}")
    assert (out / "manifest.json").read_text() == "{}" and list(out.parent.iterdir()) == [out]
