"""Where an ONNX graph reads its external data from, read from the file's protobuf without the `onnx` package.

A tensor stored outside the `.onnx` file names its file in `external_data["location"]`, a path that ONNX
Runtime resolves against the model's folder. onnxruntime refuses locations outside that folder only from
late 2025 (microsoft/onnxruntime#26776), and Jetson builds lag, so a bundle whose graph names
`../../home/robot/.ssh/id_rsa` or `/dev/zero` would be read by the older ones. The bundle loaders check
every location against the manifest's hashed files before any session is made (`check_external_data`).

Our own reader rather than `onnx.load`: the `onnx` package is not on the robot's inference path (numpy +
onnxruntime), and `onnx.load` copies every initialiser into Python objects where this walk only skips over
their bytes (`mmap`, nothing copied).
"""

from __future__ import annotations

import mmap
from pathlib import Path

from policies.errors import BundleError

# The protobuf messages that can hold a TensorProto, as {message: {field number: child message}}; field
# numbers from onnx/onnx.proto (ModelProto.graph = 7, GraphProto.initializer = 5, ...). Fields not listed
# (raw_data, names, shapes, ...) are skipped by their length, never decoded.
_CHILDREN: dict[str, dict[int, str]] = {
    "model": {7: "graph", 20: "training", 25: "function"},
    "training": {1: "graph", 2: "graph"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "function": {7: "node"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
}
_TENSOR_NAME, _TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION = 8, 13, 14
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL
# Nesting deeper than this (subgraphs of subgraphs...) is refused rather than walked.
_MAX_DEPTH = 64


class _Malformed(ValueError):
    pass


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _Malformed("truncated or overlong varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(buf, start: int, end: int):
    """(field number, wire type, value) for each field in buf[start:end]; a length-delimited value is its
    (start, end) span, a varint its integer, fixed-size values None."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos, end)
        elif wire == 1:
            value, pos = None, pos + 8
        elif wire == 5:
            value, pos = None, pos + 4
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            value, pos = (pos, pos + length), pos + length
        else:  # 3/4: proto2 groups, never in onnx.proto
            raise _Malformed(f"wire type {wire} at byte {pos}")
        if pos > end:
            raise _Malformed(f"field {number} runs past its message (byte {pos} > {end})")
        yield number, wire, value


def _text(buf, span: tuple[int, int]) -> str:
    return bytes(buf[span[0]:span[1]]).decode("utf-8", errors="replace")


def _tensor(buf, start: int, end: int) -> tuple[str, str | None, bool]:
    """A TensorProto's (name, external location or None, whether it is marked EXTERNAL)."""
    name, location, external = "?", None, False
    for number, wire, value in _fields(buf, start, end):
        if number == _TENSOR_NAME and wire == 2:
            name = _text(buf, value)
        elif number == _TENSOR_DATA_LOCATION and wire == 0:
            external = value == _EXTERNAL
        elif number == _TENSOR_EXTERNAL_DATA and wire == 2:
            key = entry = None
            for n, w, v in _fields(buf, *value):
                if w == 2 and n == 1:
                    key = _text(buf, v)
                elif w == 2 and n == 2:
                    entry = _text(buf, v)
            if key == "location":
                location = entry
    return name, location, external or location is not None


def external_data(path: str | Path) -> list[tuple[str, str | None]]:
    """(tensor name, location) of every tensor in the ONNX file at `path` whose data lives outside it,
    initialisers, constants inside subgraphs and functions included; location None where a tensor is
    marked EXTERNAL without one. Raises ValueError for a file that is not a readable protobuf."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise ValueError(f"{path.name}: empty file")
    found: list[tuple[str, str | None]] = []
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        stack = [("model", 0, size, 0)]
        try:
            while stack:
                kind, start, end, depth = stack.pop()
                if depth > _MAX_DEPTH:
                    raise _Malformed(f"nested deeper than {_MAX_DEPTH} messages")
                if kind == "tensor":
                    name, location, external = _tensor(buf, start, end)
                    if external:
                        found.append((name, location))
                    continue
                children = _CHILDREN[kind]
                for number, wire, value in _fields(buf, start, end):
                    if wire == 2 and number in children:
                        stack.append((children[number], *value, depth + 1))
        except _Malformed as err:
            raise ValueError(f"{path.name}: not a valid ONNX protobuf ({err})") from None
    return found


def check_external_data(folder: Path, name: str, files: dict[str, str], path: str = "files") -> None:
    """Raises BundleError unless every external-data location of the ONNX file `folder/name` is one of the
    bundle's hashed `files` (plain names in the bundle folder): a graph never reads a file the manifest
    does not vouch for, whatever the installed onnxruntime allows."""
    try:
        entries = external_data(Path(folder) / name)
    except ValueError as err:
        raise BundleError(f"{path}.{name}", str(err)) from None
    for tensor, location in entries:
        if location is None:
            raise BundleError(f"{path}.{name}", f"tensor {tensor!r} is marked external but names no location")
        if location not in files or location == name:
            raise BundleError(
                f"{path}.{name}",
                f"tensor {tensor!r} reads external data from {location!r}, which is not one of the bundle's "
                f"files ({', '.join(sorted(files))}); external data must be a file the manifest lists and hashes")


def sibling_data_files(onnx_path: str | Path, field: str = "verifier") -> list[str]:
    """The external-data files a loose ONNX file (one not yet in a bundle) reads, as plain names of files
    beside it; raises BundleError naming the tensor whose location is anything else (a path out of its
    folder, into a subfolder, or a missing file). For copying such a graph into a bundle whole."""
    onnx_path = Path(onnx_path)
    try:
        entries = external_data(onnx_path)
    except ValueError as err:
        raise BundleError(field, str(err)) from None
    names: set[str] = set()
    for tensor, location in entries:
        plain = (location is not None and Path(location).name == location and "\\" not in location
                 and not location.startswith("."))
        if not plain or location == onnx_path.name:
            raise BundleError(field, f"{onnx_path.name}: tensor {tensor!r} reads external data from "
                                     f"{location!r}; only a plain file name beside the graph is accepted")
        if not (onnx_path.parent / location).is_file():
            raise BundleError(field, f"{onnx_path.name}: tensor {tensor!r} reads external data from "
                                     f"{location!r}, which is not in {onnx_path.parent}")
        names.add(location)
    return sorted(names)
