"""Verifier bundles: a folder with manifest.json and verifier.onnx (`features[N, F] -> scores[N]`).

Any ONNX file with that signature is a verifier: wrap it in a bundle with `write_verifier_bundle` or
`taco wrap-verifier` (which bind it to a policy's fingerprint). `load_verifier(path)` also reads a bare
file (for inspection), but the engine, the server and the ROS node refuse one: bound to no policy, its
features could be any policy's. A graph
may take a second input named `chunks`, float32[N, H, A]: the candidates' chunks in the policy's
normalised action units (a verifier that scores the actions themselves, or compares the candidates),
and an input named `seed`, int64 scalar: the decision's noise seed (a reproducible pick that must not
depend on the candidates at all: the `random` baseline).
"""

from __future__ import annotations

import datetime
import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from policies.errors import BundleError
from policies.onnx_data import sibling_data_files
from policies.sampler import cpu_session
from policies.schema import Reader, check_files, portable, read_manifest, sha256_file

log = logging.getLogger(__name__)

VERIFIER_SCHEMA_VERSION = 1
VERIFIER_FILE = "verifier.onnx"
# Names of the optional extra graph inputs: the candidates' normalised chunks; the decision's noise seed.
CHUNKS_INPUT = "chunks"
SEED_INPUT = "seed"
OPTIONAL_INPUTS = (CHUNKS_INPUT, SEED_INPUT)


@dataclass(frozen=True)
class VerifierManifest:
    # Registry name of the method that made it: "cfn", "rnd", "knn", "onnx", ...
    type: str
    # Human-readable name.
    name: str
    # F: feature size taken.
    feature_dim: int
    # sha256 fingerprint of the policy bundle whose features it scores.
    policy_fingerprint: str
    # File name -> sha256 (verifier.onnx).
    files: dict[str, str]
    # How it was made: command line, feature set, training settings.
    provenance: dict = field(default_factory=dict)
    schema_version: int = VERIFIER_SCHEMA_VERSION

    def to_dict(self) -> dict:
        return {
            "schema_version": self.schema_version,
            "kind": "verifier",
            "type": self.type,
            "name": self.name,
            "feature_dim": self.feature_dim,
            "policy_fingerprint": self.policy_fingerprint,
            "files": dict(self.files),
            "provenance": portable(self.provenance),
        }

    @classmethod
    def from_dict(cls, data: dict) -> VerifierManifest:
        r = Reader(data, "")
        version = r.int("schema_version")
        if version != VERIFIER_SCHEMA_VERSION:
            raise BundleError("schema_version", f"this runtime reads version {VERIFIER_SCHEMA_VERSION}, got {version}")
        r.str("kind", choices=("verifier",))
        files_r = r.obj("files")
        files = {name: files_r.str(name) for name in files_r.data}
        if VERIFIER_FILE not in files:
            raise BundleError(f"files.{VERIFIER_FILE}", "missing")
        out = cls(
            type=r.str("type"),
            name=r.str("name"),
            feature_dim=r.int("feature_dim", minimum=1),
            policy_fingerprint=r.str("policy_fingerprint"),
            files=files,
            provenance=r.raw("provenance", {}),
            schema_version=version,
        )
        files_r.finish()
        r.finish()
        return out


class OnnxVerifier:
    """A verifier run by ONNX Runtime: `features: float32[N, F] (, chunks: float32[N, H, A]) (, seed: int64)
    -> scores: float32[N]`."""

    def __init__(self, session: ort.InferenceSession, name: str, feature_dim: int | None,
                 policy_fingerprint: str | None, path: Path | None = None, manifest: VerifierManifest | None = None):
        self.session, self.name, self.path, self.manifest = session, name, path, manifest
        self.policy_fingerprint = policy_fingerprint
        inputs, outputs = session.get_inputs(), session.get_outputs()
        where = f"verifier {name!r}"
        extra = {i.name: i for i in inputs if i.name in OPTIONAL_INPUTS}
        if len(inputs) - len(extra) != 1 or len(outputs) != 1:
            raise BundleError(f"{where}.signature",
                              f"expected one features input (and optionally {' / '.join(map(repr, OPTIONAL_INPUTS))}) "
                              f"and one output, got inputs {[i.name for i in inputs]} and {len(outputs)} outputs")
        (inp,), (out,) = [i for i in inputs if i.name not in OPTIONAL_INPUTS], outputs
        c = extra.get(CHUNKS_INPUT)
        if c is not None and (c.type != "tensor(float)" or len(c.shape) != 3):
            raise BundleError(f"{where}.inputs.{CHUNKS_INPUT}", f"expected float32[N, H, A], got {c.type} {c.shape}")
        c = extra.get(SEED_INPUT)
        if c is not None and (c.type != "tensor(int64)" or len(c.shape) != 0):
            raise BundleError(f"{where}.inputs.{SEED_INPUT}", f"expected an int64 scalar, got {c.type} {c.shape}")
        # Whether the engine must pass the candidates' chunks / the decision's seed next to their features.
        self.takes_chunks = CHUNKS_INPUT in extra
        self.takes_seed = SEED_INPUT in extra
        if inp.type != "tensor(float)" or len(inp.shape) != 2:
            raise BundleError(f"{where}.inputs.{inp.name}", f"expected float32[N, F], got {inp.type} {inp.shape}")
        if out.type != "tensor(float)" or len(out.shape) != 1:
            raise BundleError(f"{where}.outputs.{out.name}", f"expected float32[N], got {out.type} {out.shape}")
        graph_f = inp.shape[1] if isinstance(inp.shape[1], int) else None
        if feature_dim is not None and graph_f is not None and graph_f != feature_dim:
            raise BundleError(f"{where}.feature_dim", f"manifest says {feature_dim}, graph input takes {graph_f}")
        self.feature_dim = feature_dim if feature_dim is not None else graph_f
        self._input, self._output = inp.name, out.name

    def score(self, features: np.ndarray, chunks: np.ndarray | None = None, seed: int | None = None) -> np.ndarray:
        if features.ndim != 2 or (self.feature_dim is not None and features.shape[1] != self.feature_dim):
            raise BundleError(f"verifier {self.name!r}.features",
                              f"expected [N, {self.feature_dim}], got {list(features.shape)}")
        feeds = {self._input: np.ascontiguousarray(features, np.float32)}
        if self.takes_chunks:
            if chunks is None or chunks.ndim != 3 or chunks.shape[0] != features.shape[0]:
                got = None if chunks is None else list(chunks.shape)
                raise BundleError(f"verifier {self.name!r}.chunks",
                                  f"expected [{features.shape[0]}, H, A] next to the features, got {got}")
            feeds[CHUNKS_INPUT] = np.ascontiguousarray(chunks, np.float32)
        if self.takes_seed:
            if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**63:
                raise BundleError(f"verifier {self.name!r}.seed", f"expected the decision's seed, an integer in "
                                                                  f"[0, 2**63), got {seed!r}")
            feeds[SEED_INPUT] = np.array(seed, np.int64)
        (scores,) = self.session.run([self._output], feeds)
        if scores.shape != (features.shape[0],):
            raise BundleError(f"verifier {self.name!r}.scores",
                              f"expected shape [{features.shape[0]}], got {list(scores.shape)}")
        return scores


def load_verifier(path: str | Path, session_factory: Callable[[Path], ort.InferenceSession] | None = None) -> OnnxVerifier:
    """Loads a verifier bundle folder, or a bare `.onnx` file with the verifier signature.

    `session_factory` makes the ONNX Runtime session (the engine passes its provider settings);
    a one-thread CPU session when None.

    A bundle's checksum and manifest are validated here; whether it belongs to a given policy is checked
    by the engine (`check_verifier`). A bare ONNX file is unbound: only its feature size can be checked.
    """
    make_session = session_factory or cpu_session
    path = Path(path)
    if not path.exists():
        raise BundleError("verifier", f"{path} does not exist")
    if path.is_file() and path.suffix == ".onnx":
        log.warning("verifier %s is a bare ONNX file: its policy fingerprint cannot be checked", path)
        sibling_data_files(path)  # its external data stays beside it, whatever onnxruntime allows
        return OnnxVerifier(make_session(path), path.stem, None, None, path=path)
    manifest = VerifierManifest.from_dict(read_manifest(path))
    check_files(path, manifest.files)
    try:
        session = make_session(path / VERIFIER_FILE)
    except Exception as err:  # onnxruntime raises its own types for malformed graphs
        raise BundleError(f"files.{VERIFIER_FILE}", f"ONNX Runtime cannot load it: {err}") from err
    return OnnxVerifier(session, manifest.name, manifest.feature_dim, manifest.policy_fingerprint, path, manifest)


def write_verifier_bundle(onnx_path: str | Path, out_dir: str | Path, *, policy_fingerprint: str, feature_dim: int,
                          type: str = "onnx", name: str | None = None, provenance: dict | None = None,
                          overwrite: bool = False) -> OnnxVerifier:
    """Wraps an ONNX file with the verifier signature into a bundle bound to a policy fingerprint."""
    out = Path(out_dir)
    if out.exists():
        if not overwrite:
            raise FileExistsError(f"{out} exists; pass overwrite=True to replace it")
        shutil.rmtree(out)
    data = sibling_data_files(onnx_path)
    clash = set(data) & {VERIFIER_FILE, "manifest.json"}
    if clash:
        raise BundleError("verifier", f"{onnx_path}: its external data file {sorted(clash)[0]!r} has a name the "
                                      "bundle uses for itself; re-save the graph with another location")
    out.mkdir(parents=True)
    shutil.copyfile(onnx_path, out / VERIFIER_FILE)
    for name in data:  # the graph names them relative to its folder, so they keep their names
        shutil.copyfile(Path(onnx_path).parent / name, out / name)
    manifest = VerifierManifest(
        type=type,
        name=name or out.name,
        feature_dim=feature_dim,
        policy_fingerprint=policy_fingerprint,
        files={name: sha256_file(out / name) for name in (VERIFIER_FILE, *data)},
        provenance={"created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    **(provenance or {})},
    )
    (out / "manifest.json").write_text(json.dumps(manifest.to_dict(), indent=2) + "\n")
    return load_verifier(out)


def read_verifier_manifest(path: str | Path) -> VerifierManifest:
    """A verifier bundle's manifest, validated, without hashing its files or loading its graph: the cheap
    part of `load_verifier`, enough to refuse a verifier of another policy before the expensive part.
    A bare ONNX file is refused (it names no policy)."""
    path = Path(path)
    if not path.exists():
        raise BundleError("verifier", f"{path} does not exist")
    if path.is_file():
        raise BundleError("verifier", f"{path} is a bare file, bound to no policy: wrap it in a bundle for its "
                                      "policy with `taco wrap-verifier`")
    manifest = VerifierManifest.from_dict(read_manifest(path))
    for name in manifest.files:
        if not (path / name).is_file():
            raise BundleError(f"files.{name}", f"listed in the manifest but missing from {path}")
    return manifest


def check_verifier(verifier, feature_dim: int, policy_fingerprint: str, allow_unbound: bool = False) -> None:
    """Raises BundleError if `verifier` (a loaded verifier or a VerifierManifest) was not made for this
    policy's features. One bound to no policy (a bare ONNX file) is refused unless `allow_unbound`, which
    only code holding a verifier object it made itself (a plugin) should pass."""
    where = f"verifier {getattr(verifier, 'name', '?')!r}"
    if verifier.feature_dim is not None and verifier.feature_dim != feature_dim:
        raise BundleError(f"{where}.feature_dim",
                          f"takes {verifier.feature_dim}-d features, the policy exports {feature_dim}-d")
    if verifier.policy_fingerprint is None and not allow_unbound:
        raise BundleError(f"{where}.policy_fingerprint",
                          "bound to no policy (a bare ONNX file): wrap it in a bundle for this policy with "
                          "`taco wrap-verifier`")
    if verifier.policy_fingerprint is not None and verifier.policy_fingerprint != policy_fingerprint:
        raise BundleError(f"{where}.policy_fingerprint",
                          f"trained on policy {verifier.policy_fingerprint[:12]}..., "
                          f"this policy is {policy_fingerprint[:12]}...")
