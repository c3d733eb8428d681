"""Loading and writing policy bundles (a folder: manifest.json + ONNX files)."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from policies.manifest import PolicyManifest
from policies.schema import check_files, read_manifest, sha256_file
from policies.tokenizer import TextTokenizer


@dataclass(frozen=True)
class PolicyBundle:
    """A validated policy bundle on disk; made by `load_policy_bundle`, consumed by the runtime."""

    path: Path
    manifest: PolicyManifest

    @property
    def fingerprint(self) -> str:
        return self.manifest.fingerprint

    def file(self, name: str) -> Path:
        return self.path / name


def load_policy_bundle(path: str | Path) -> PolicyBundle:
    """Validates the manifest and every file's sha256; raises BundleError naming the bad field."""
    folder = Path(path)
    manifest = PolicyManifest.from_dict(read_manifest(folder))
    check_files(folder, manifest.files)
    if isinstance(manifest.tokenizer, TextTokenizer):  # its file is read from the bundle folder
        manifest = replace(manifest, tokenizer=replace(manifest.tokenizer, folder=str(folder)))
    return PolicyBundle(folder, manifest)


def write_manifest(folder: Path, manifest: PolicyManifest) -> None:
    (Path(folder) / "manifest.json").write_text(json.dumps(manifest.to_dict(), indent=2) + "\n")


def hash_files(folder: Path, names: list[str]) -> dict[str, str]:
    return {name: sha256_file(Path(folder) / name) for name in names}
