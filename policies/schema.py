"""Strict readers for JSON manifests: each failure is a BundleError naming the field's path."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from policies.errors import BundleError
from policies.onnx_data import check_external_data


class Reader:
    """Reads typed fields out of one JSON object, tracking the path for error messages.

    Every key must be read or listed as optional; `finish()` rejects the keys nobody asked for.
    """

    def __init__(self, data: Any, path: str):
        if not isinstance(data, dict):
            raise BundleError(path or "manifest", f"expected an object, got {type(data).__name__}")
        self.data = data
        self.path = path
        self._seen: set[str] = set()

    def _name(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def _get(self, key: str, default: Any, required: bool) -> Any:
        self._seen.add(key)
        if key not in self.data:
            if required:
                raise BundleError(self._name(key), "missing")
            return default
        return self.data[key]

    def str(self, key: str, *, choices: tuple[str, ...] | None = None, default: str | None = None) -> str:
        value = self._get(key, default, default is None)
        if not isinstance(value, str):
            raise BundleError(self._name(key), f"expected a string, got {value!r}")
        if choices is not None and value not in choices:
            raise BundleError(self._name(key), f"must be one of {', '.join(choices)}; got {value!r}")
        return value

    def int(self, key: str, *, minimum: int | None = None, default: int | None = None) -> int:
        value = self._get(key, default, default is None)
        if isinstance(value, bool) or not isinstance(value, int):
            raise BundleError(self._name(key), f"expected an integer, got {value!r}")
        if minimum is not None and value < minimum:
            raise BundleError(self._name(key), f"must be >= {minimum}, got {value}")
        return value

    def float(self, key: str, *, positive: bool = False, default: float | None = None) -> float:
        value = self._get(key, default, default is None)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise BundleError(self._name(key), f"expected a finite number, got {value!r}")
        if positive and value <= 0:
            raise BundleError(self._name(key), f"must be > 0, got {value}")
        return float(value)

    def floats(self, key: str, length: int, *, positive: bool = False) -> tuple[float, ...]:
        value = self._get(key, None, True)
        name = self._name(key)
        if not isinstance(value, list) or len(value) != length:
            raise BundleError(name, f"expected a list of {length} numbers, got {_short(value)}")
        for i, v in enumerate(value):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise BundleError(f"{name}[{i}]", f"expected a finite number, got {v!r}")
            if positive and v <= 0:
                raise BundleError(f"{name}[{i}]", f"must be > 0, got {v}")
        return tuple(float(v) for v in value)

    def strs(self, key: str, length: int | None = None) -> tuple[str, ...]:
        value = self._get(key, None, True)
        name = self._name(key)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise BundleError(name, f"expected a list of strings, got {_short(value)}")
        if length is not None and len(value) != length:
            raise BundleError(name, f"expected {length} names, got {len(value)}")
        if len(set(value)) != len(value):
            raise BundleError(name, "names must be unique")
        return tuple(value)

    def obj(self, key: str, *, default: dict | None = None) -> Reader:
        return Reader(self._get(key, default, default is None), self._name(key))

    def list(self, key: str) -> list[Reader]:
        value = self._get(key, None, True)
        if not isinstance(value, list) or not value:
            raise BundleError(self._name(key), f"expected a non-empty list, got {_short(value)}")
        return [Reader(v, f"{self._name(key)}[{i}]") for i, v in enumerate(value)]

    def raw(self, key: str, default: Any = None) -> Any:
        return self._get(key, default, False)

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self._seen)
        if unknown:
            raise BundleError(self._name(unknown[0]), "unknown field")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) < 60 else text[:57] + "..."


# An absolute path inside a string (a command line, a folder): not after a word character, a dot, `~`, `-`,
# `:` or `/`, so that relative paths, options and URLs (ws://host) are left alone.
_ABSOLUTE = re.compile(r"(?<![\w.~:/-])/[^\s'\":,=]+")


def portable(value: Any, cwd: str | None = None) -> Any:
    """`value` (a provenance record: dicts, lists, strings) with no absolute path of the machine that wrote it:
    a path under the working directory becomes relative to it, any other keeps its last two parts after
    `.../`. A bundle then says how it was made without naming the builder's folders."""
    cwd = os.path.abspath(cwd or os.getcwd())

    def short(match: re.Match) -> str:
        path = os.path.normpath(match.group(0))
        if path == cwd or path.startswith(cwd + os.sep):
            return os.path.relpath(path, cwd)
        parts = [p for p in path.split(os.sep) if p]
        return ".../" + "/".join(parts[-2:]) if parts else path

    if isinstance(value, str):
        return _ABSOLUTE.sub(short, value)
    if isinstance(value, dict):
        return {k: portable(v, cwd) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [portable(v, cwd) for v in value]
    return value


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def canonical_hash(data: Any) -> str:
    """sha256 of the canonical JSON text of `data` (sorted keys, no white space)."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def content_id(path: str | Path | None) -> str | None:
    """sha256 of a bundle's manifest (which lists every file's sha256) or of a bare file; None for names
    and for nothing."""
    if path is None:
        return None
    p = Path(path)
    target = p / "manifest.json" if p.is_dir() else p
    return hashlib.sha256(target.read_bytes()).hexdigest() if target.is_file() else None


def read_manifest(folder: Path) -> dict:
    """Loads `folder/manifest.json`, with errors that name the bundle and the problem."""
    path = Path(folder) / "manifest.json"
    if not Path(folder).is_dir():
        raise BundleError("bundle", f"{folder} is not a folder")
    if not path.is_file():
        raise BundleError("manifest.json", f"missing in {folder}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise BundleError("manifest.json", f"not valid JSON ({err})") from err


def check_files(folder: Path, files: dict[str, str], path: str = "files") -> None:
    """Verifies that each file exists and matches its recorded sha256, and that every ONNX graph among them
    reads external data only from these files."""
    for name, expected in files.items():
        file = Path(folder) / name
        if "/" in name or "\\" in name or name.startswith("."):
            raise BundleError(f"{path}.{name}", "file names must be plain names inside the bundle")
        if not file.is_file():
            raise BundleError(f"{path}.{name}", f"file missing from {folder}")
        actual = sha256_file(file)
        if actual != expected:
            raise BundleError(
                f"{path}.{name}", f"checksum mismatch: manifest says {expected[:12]}..., file is {actual[:12]}..."
            )
    for name in files:
        if name.endswith(".onnx"):
            check_external_data(folder, name, files, path)


@contextlib.contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """A temporary sibling of `out` to write a bundle into, renamed to `out` when the block succeeds and
    removed when it raises, so an interrupted write never leaves a half bundle. The sibling is in `out`'s
    parent (made if missing), on the same filesystem, so the rename is atomic."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield tmp
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
