"""Bundle validation: bad manifests, checksums and mismatched verifiers are refused, naming the field."""

import dataclasses
import json
import shutil
from pathlib import Path

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


# --- external data: a graph reads only files its manifest hashes --------------------------------------------


def _save_external(model, path, location="weights.bin"):
    """Saves `model` to `path` with every tensor's data in the file `location` beside it."""
    import onnx

    onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True, location=location,
                    size_threshold=0, convert_attribute=True)
    return path


def _relocate(onnx_path, location):
    """Points every external tensor of the graph at `location`, as a hand-edited or hostile file would."""
    import onnx
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    model = onnx.load(onnx_path, load_external_data=False)
    for tensor in _get_all_tensors(model):
        if uses_external_data(tensor):
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = location
    onnx.save(model, onnx_path)


def _rehash(folder, name):
    from policies.schema import sha256_file

    edit_manifest(folder, lambda m: m["files"].__setitem__(name, sha256_file(folder / name)))


def test_external_data_locations_are_read_as_onnx_reads_them(tmp_path):
    """Our protobuf walk finds the same external tensors as the `onnx` package, subgraph constants included."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    from policies.onnx_data import external_data

    def constant(name, value):
        return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name + "_value"))

    then = helper.make_graph([constant("a", np.full(64, 1.0, np.float32))], "then", [],
                             [helper.make_tensor_value_info("a", TensorProto.FLOAT, [64])])
    other = helper.make_graph([constant("b", np.full(64, 2.0, np.float32))], "else", [],
                              [helper.make_tensor_value_info("b", TensorProto.FLOAT, [64])])
    graph = helper.make_graph(
        [helper.make_node("If", ["cond"], ["picked"], then_branch=then, else_branch=other),
         helper.make_node("Add", ["picked", "w"], ["out"])], "nested",
        [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [64])],
        initializer=[numpy_helper.from_array(np.arange(64, dtype=np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = _save_external(model, tmp_path / "nested.onnx")
    ours = sorted(external_data(path))
    theirs = sorted((t.name, next(e.value for e in t.external_data if e.key == "location"))
                    for t in _get_all_tensors(onnx.load(path, load_external_data=False)) if uses_external_data(t))
    assert ours == theirs
    assert {name for name, _ in ours} == {"w", "a_value", "b_value"}  # the two inside the If's branches
    assert {location for _, location in ours} == {"weights.bin"}
    # An in-file graph has none; a file that is not a protobuf is refused, naming itself.
    assert external_data(linear_verifier_onnx(tmp_path / "inline.onnx", np.ones(4))) == []
    (tmp_path / "junk.onnx").write_bytes(b"\x0f\x00\x01")
    with pytest.raises(ValueError, match="junk.onnx: not a valid ONNX protobuf"):
        external_data(tmp_path / "junk.onnx")


def test_a_verifier_with_external_data_is_wrapped_whole_and_scores_as_before(tmp_path):
    import onnx

    weights = np.linspace(-1, 1, 8)
    inline = load_verifier(linear_verifier_onnx(tmp_path / "inline.onnx", weights))
    (tmp_path / "src").mkdir()
    loose = _save_external(onnx.load(tmp_path / "inline.onnx"), tmp_path / "src" / "v.onnx")
    verifier = write_verifier_bundle(loose, tmp_path / "wrapped", policy_fingerprint="f" * 64, feature_dim=8)
    assert set(verifier.manifest.files) == {"verifier.onnx", "weights.bin"}
    features = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
    np.testing.assert_array_equal(verifier.score(features), inline.score(features))


@pytest.mark.parametrize("location", ["../outside.bin", "/etc/hostname", "sub/weights.bin", "unlisted.bin",
                                      "verifier.onnx"])
def test_a_verifier_bundle_whose_graph_reads_a_file_it_does_not_hash_is_refused(tmp_path, location):
    import onnx

    linear_verifier_onnx(tmp_path / "inline.onnx", np.ones(8))
    (tmp_path / "src").mkdir()
    loose = _save_external(onnx.load(tmp_path / "inline.onnx"), tmp_path / "src" / "v.onnx")
    folder = write_verifier_bundle(loose, tmp_path / "b" / "bundle", policy_fingerprint="f" * 64,
                                   feature_dim=8).path
    # The data the edited graph names exists where it points (so onnxruntime could read it), hashed or not.
    target = folder / location if not location.startswith("/") else None
    if target is not None and location != "verifier.onnx":
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(folder / "weights.bin", target)
    _relocate(folder / "verifier.onnx", location)
    _rehash(folder, "verifier.onnx")
    with pytest.raises(BundleError, match="not one of the bundle's files") as info:
        load_verifier(folder)
    assert info.value.field == "files.verifier.onnx" and repr(location) in str(info.value)
    # Loose, beside its data or not, the graph is refused too: only a plain sibling name is wrapped.
    if location != "unlisted.bin":
        shutil.copyfile(folder / "verifier.onnx", tmp_path / "b" / "loose.onnx")
        with pytest.raises(BundleError, match="only a plain file name beside the graph|which is not in"):
            load_verifier(tmp_path / "b" / "loose.onnx")


def test_a_policy_bundle_whose_graph_reads_outside_its_folder_is_refused(bundle_copy):
    import onnx

    _save_external(onnx.load(bundle_copy / "encoder.onnx"), bundle_copy / "encoder.onnx", "encoder.onnx.data")
    # Hashed and listed, the external file is accepted ...
    edit_manifest(bundle_copy, lambda m: m["files"].__setitem__("encoder.onnx.data", "0"))
    _rehash(bundle_copy, "encoder.onnx.data")
    _rehash(bundle_copy, "encoder.onnx")
    load_policy_bundle(bundle_copy)
    # ... moved out of the folder, with the graph pointing at it, it is not.
    shutil.move(bundle_copy / "encoder.onnx.data", bundle_copy.parent / "stolen.bin")
    edit_manifest(bundle_copy, lambda m: m["files"].pop("encoder.onnx.data"))
    _relocate(bundle_copy / "encoder.onnx", "../stolen.bin")
    _rehash(bundle_copy, "encoder.onnx")
    with pytest.raises(BundleError, match=r"reads external data from '\.\./stolen\.bin'") as info:
        load_policy_bundle(bundle_copy)
    assert info.value.field == "files.encoder.onnx"
    with pytest.raises(BundleError):
        Engine(bundle_copy)


def test_provenance_names_no_folder_of_the_machine_that_built_the_bundle(flow, tmp_path, monkeypatch):
    """Paths in provenance become relative to the working directory, or `.../` and their last two parts."""
    from policies.schema import portable

    monkeypatch.chdir(tmp_path)
    record = {"command": f"taco train-policy --dataset /root/work/tc2 --out {tmp_path}/b/flow --url ws://host:8/x",
              "dataset": "/srv/data/sets/tc2", "parts": [{"path": str(tmp_path / "v")}], "steps": 5}
    assert portable(record) == {"command": "taco train-policy --dataset .../work/tc2 --out b/flow --url ws://host:8/x",
                                "dataset": ".../sets/tc2", "parts": [{"path": "v"}], "steps": 5}
    bundle = load_policy_bundle(flow.path)
    written = json.dumps(dataclasses.replace(bundle.manifest, provenance=record).to_dict())
    assert "/root/" not in written and str(tmp_path) not in written
    # What ships carries none either.
    root = Path(__file__).resolve().parents[1]
    for manifest in sorted((root / "artifacts" / "bundles").glob("*/manifest.json")):
        text = manifest.read_text()
        for folder in ("/root/", "/home/", "/tmp/", "/work/"):
            assert folder not in text, f"{manifest.relative_to(root)} names {folder}"
