"""The bytes on the wire: openpi's msgpack + numpy layout, decoded strictly.

openpi (and its PyPI client, `openpi-client`) sends a numpy array as a msgpack map with four bin keys:

    {b"__ndarray__": True, b"data": <C-order bytes>, b"dtype": "<f4", b"shape": [2]}

and a numpy scalar as {b"__npgeneric__": True, b"data": <item>, b"dtype": "<f8"}. Its own decoder
builds whatever dtype the sender names, object arrays included, whose elements are raw pointers taken
from the payload: one crafted message crashes the process. `unpack` here is what a server may run on
untrusted bytes: a dtype allow-list, bounded rank and sizes, a byte count that must equal what the
shape says, no msgpack extension types, no pickle, and writeable copies (openpi's arrays are read-only
views of the message). Every refusal is a `WireError` naming what was wrong; nothing else escapes.

`pack` writes the same layout (so openpi-client reads our replies unchanged), only for the dtypes
`unpack` accepts, little-endian and C-ordered.
"""

from __future__ import annotations

import math

import msgpack
import numpy as np

# dtype strings accepted on the wire (numpy's `dtype.str`), and the only ones `pack` writes.
DTYPES = frozenset({"|b1", "|u1", "|i1", "<u2", "<i2", "<i4", "<i8", "<f2", "<f4", "<f8"})
MAX_NDIM = 4
# Largest single dimension; the message size limit bounds the total.
MAX_DIM = 1 << 24
# Default limit of one message: four raw 480x640 RGB cameras are 3.7 MB.
MAX_MESSAGE_BYTES = 16 << 20

_ARRAY, _SCALAR = "__ndarray__", "__npgeneric__"
_ARRAY_KEYS = frozenset({_ARRAY, "data", "dtype", "shape"})
_SCALAR_KEYS = frozenset({_SCALAR, "data", "dtype"})


class WireError(ValueError):
    """A message that is not acceptable msgpack + numpy; the text says what was wrong."""


def unpack(data: bytes, max_bytes: int = MAX_MESSAGE_BYTES):
    """Decodes one message. Arrays come back as writeable numpy arrays; map keys are str."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise WireError(f"expected a binary message, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise WireError(f"message of {len(data)} bytes exceeds the limit of {max_bytes}")
    try:
        return msgpack.unpackb(bytes(data), raw=False, strict_map_key=True, object_pairs_hook=_decode_map,
                               ext_hook=_refuse_ext, use_list=True)
    except WireError:
        raise
    except msgpack.StackError as err:
        raise WireError("message nested too deeply") from err
    except msgpack.ExtraData as err:
        raise WireError("trailing bytes after the message") from err
    except (ValueError, TypeError, msgpack.FormatError, msgpack.UnpackException, UnicodeDecodeError,
            OverflowError, MemoryError) as err:
        raise WireError(f"not a msgpack message: {type(err).__name__}: {err}") from err


def pack(obj) -> bytes:
    """Encodes `obj` (maps, lists, str, numbers, numpy arrays and scalars) in openpi's layout."""
    return msgpack.packb(obj, default=_encode, use_bin_type=True)


def _decode_map(pairs: list) -> object:
    keys = [k.decode("ascii", "replace") if isinstance(k, bytes) else k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise WireError(f"duplicate map keys {sorted({k for k in keys if keys.count(k) > 1})}")
    if not all(isinstance(k, str) for k in keys):
        raise WireError("map keys must be strings")
    obj = dict(zip(keys, (v for _, v in pairs)))
    if _ARRAY in obj:
        return _decode_array(obj)
    if _SCALAR in obj:
        return _decode_scalar(obj)
    return obj


def _dtype(obj: dict) -> np.dtype:
    name = obj["dtype"]
    if isinstance(name, bytes):
        name = name.decode("ascii", "replace")
    if not isinstance(name, str) or name not in DTYPES:
        raise WireError(f"array dtype {name!r} is not accepted (accepted: {', '.join(sorted(DTYPES))})")
    return np.dtype(name)


def _decode_array(obj: dict) -> np.ndarray:
    if set(obj) != _ARRAY_KEYS:
        raise WireError(f"array map must have exactly the keys {sorted(_ARRAY_KEYS)}, got {sorted(obj)}")
    dtype = _dtype(obj)
    shape, data = obj["shape"], obj["data"]
    if not isinstance(shape, list) or len(shape) > MAX_NDIM:
        raise WireError(f"array shape must be a list of at most {MAX_NDIM} dimensions, got {shape!r:.80}")
    if not all(type(d) is int and 0 <= d <= MAX_DIM for d in shape):
        raise WireError(f"array dimensions must be integers in [0, {MAX_DIM}], got {shape!r:.80}")
    if not isinstance(data, bytes):
        raise WireError(f"array data must be bytes, got {type(data).__name__}")
    expected = math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        raise WireError(f"array of shape {shape} and dtype {dtype.str} needs {expected} bytes, got {len(data)}")
    array = np.frombuffer(data, dtype=dtype).reshape(shape).copy()
    if dtype == np.bool_ and array.size and array.view(np.uint8).max() > 1:
        raise WireError("bool array holds bytes other than 0 and 1")
    return array


def _decode_scalar(obj: dict) -> np.generic:
    if set(obj) != _SCALAR_KEYS:
        raise WireError(f"scalar map must have exactly the keys {sorted(_SCALAR_KEYS)}, got {sorted(obj)}")
    dtype = _dtype(obj)
    value = obj["data"]
    if type(value) not in (bool, int, float):
        raise WireError(f"scalar data must be a number, got {type(value).__name__}")
    # numpy 1.x wraps an out-of-range integer (uint8(300) is 44) where numpy 2 raises: checked here for both.
    if dtype.kind in "iu" and not isinstance(value, bool):
        info = np.iinfo(dtype)
        if not info.min <= value <= info.max:
            raise WireError(f"scalar {value!r:.40} does not fit dtype {dtype.str}")
    try:
        with np.errstate(over="raise", invalid="raise"):
            return dtype.type(value)
    except (OverflowError, FloatingPointError, ValueError) as err:
        raise WireError(f"scalar {value!r:.40} does not fit dtype {dtype.str}") from err


def _refuse_ext(code: int, data: bytes):
    raise WireError(f"msgpack extension type {code} is not accepted")


def _encode(obj):
    if isinstance(obj, np.ndarray):
        array = np.ascontiguousarray(obj)
        if array.dtype.byteorder == ">":
            array = array.astype(array.dtype.newbyteorder("<"))
        if array.dtype.str not in DTYPES:
            raise TypeError(f"cannot send an array of dtype {obj.dtype} (accepted: {', '.join(sorted(DTYPES))})")
        return {b"__ndarray__": True, b"data": array.tobytes(), b"dtype": array.dtype.str, b"shape": list(array.shape)}
    if isinstance(obj, np.generic):
        if obj.dtype.str not in DTYPES:
            raise TypeError(f"cannot send a scalar of dtype {obj.dtype}")
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot send an object of type {type(obj).__name__}")
