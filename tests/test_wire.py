"""serving.wire: openpi's msgpack + numpy layout, and a decoder that refuses hostile bytes cleanly."""

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serving.wire import DTYPES, MAX_NDIM, WireError, pack, unpack


def _array_map(dtype="<f4", shape=(2,), data=None, **extra):
    data = bytes(int(np.prod(shape)) * np.dtype(dtype).itemsize) if data is None else data
    return {b"__ndarray__": True, b"data": data, b"dtype": dtype, b"shape": list(shape), **extra}


def test_openpi_wire_bytes_both_ways():
    """The bytes openpi's msgpack_numpy writes for {"state": float32[1.5, 2.0]}: str top-level key, four bin
    marker keys, the dtype as str, the shape as a list."""
    wire = (b"\x81\xa5state\x84\xc4\x0b__ndarray__\xc3\xc4\x04data\xc4\x08"
            + np.array([1.5, 2.0], np.float32).tobytes() + b"\xc4\x05dtype\xa3<f4\xc4\x05shape\x91\x02")
    decoded = unpack(wire)
    assert decoded["state"].dtype == np.float32 and decoded["state"].tolist() == [1.5, 2.0]
    assert decoded["state"].flags.writeable
    assert pack({"state": np.array([1.5, 2.0], np.float32)}) == wire


def test_round_trip_of_an_aloha_request():
    request = {"state": np.linspace(-1, 1, 14), "prompt": "transfer the cube",
               "images": {"cam_high": np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)},
               "n": 16, "seed": np.int64(7), "flag": np.bool_(True), "empty": np.zeros((0, 14), np.float32)}
    back = unpack(pack(request))
    assert back["prompt"] == request["prompt"] and back["n"] == 16
    np.testing.assert_array_equal(back["state"], request["state"])
    np.testing.assert_array_equal(back["images"]["cam_high"], request["images"]["cam_high"])
    assert back["seed"] == 7 and back["seed"].dtype == np.int64 and back["flag"] is np.True_
    assert back["empty"].shape == (0, 14)
    # Big-endian and strided arrays go out little-endian and C-ordered.
    odd = np.arange(12, dtype=">f8").reshape(3, 4)[:, ::2]
    np.testing.assert_array_equal(unpack(pack({"a": odd}))["a"], odd)


@pytest.mark.parametrize("message, says", [
    (_array_map(dtype="|O", shape=(1,), data=b"A" * 8), "dtype '|O' is not accepted"),
    (_array_map(dtype="|V8", shape=(1,), data=b"A" * 8), "dtype '|V8' is not accepted"),
    (_array_map(dtype="<M8[s]", shape=(1,), data=b"A" * 8), "is not accepted"),
    (_array_map(dtype=">f4", shape=(2,)), "dtype '>f4' is not accepted"),
    (_array_map(shape=(10**12,), data=b""), "dimensions must be integers in"),
    (_array_map(shape=(-1,), data=b"\x00" * 8), "dimensions must be integers in"),
    (_array_map(shape=(1,) * (MAX_NDIM + 1), data=b"\x00" * 4), "at most 4 dimensions"),
    (_array_map(shape=(4,), data=b"\x00" * 8), "needs 16 bytes, got 8"),
    (_array_map(data="text"), "data must be bytes"),
    (_array_map(dtype="|b1", shape=(2,), data=b"\x00\x07"), "bool array"),
    (_array_map(extra=1), "exactly the keys"),
    ({b"__npgeneric__": True, b"data": "x", b"dtype": "<f8"}, "scalar data must be a number"),
    ({b"__npgeneric__": True, b"data": 300, b"dtype": "|u1"}, "does not fit"),
    ({b"__npgeneric__": True, b"data": 1, b"dtype": "|O"}, "is not accepted"),
])
def test_hostile_arrays_are_refused_naming_the_problem(message, says):
    with pytest.raises(WireError) as err:
        unpack(msgpack.packb({"x": message}, use_bin_type=True))
    assert says in str(err.value)


def test_malformed_msgpack_is_refused():
    for data, says in [(b"\xc1", "not a msgpack message"), (b"\x91" * 100_000, "nested too deeply"),
                       (msgpack.packb(msgpack.ExtType(3, b"x")), "extension type 3"),
                       (msgpack.packb({1: 2}), "not a msgpack message"), (b"\x81\xa1a", "incomplete"),
                       (msgpack.packb(1) + b"\x00", "trailing bytes"), ("text", "expected a binary message"),
                       (msgpack.packb([{"a": 1, b"a": 2}], use_bin_type=True), "duplicate map keys")]:
        with pytest.raises(WireError) as err:
            unpack(data)
        assert says in str(err.value), (data[:20], str(err.value))
    with pytest.raises(WireError, match="exceeds the limit of 100"):
        unpack(b"\x00" * 101, max_bytes=100)


def test_pack_refuses_what_unpack_would_refuse():
    for bad in (np.array([object()]), np.zeros(2, np.complex64), np.array(["a"]), object()):
        with pytest.raises(TypeError):
            pack({"x": bad})


_valid = pack({"state": np.linspace(0, 1, 14), "images": {"cam_high": np.zeros((3, 8, 8), np.uint8)},
               "prompt": "p", "n": 4})


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_random_bytes_only_ever_raise_wire_error(data):
    """Anything else escaping (a TypeError, a MemoryError from a claimed size) fails the test; what decodes is
    a plain value, the same twice."""
    try:
        value = unpack(data)
    except WireError:
        return
    assert isinstance(value, (dict, list, str, bytes, int, float, bool, type(None), np.ndarray, np.generic))
    assert repr(unpack(data)) == repr(value)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_requests_only_ever_raise_wire_error(data):
    """Truncations, flipped bytes and spliced garbage of a real request: decoded or refused, never a crash,
    and whatever decodes holds only accepted dtypes."""
    message = bytearray(_valid)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "truncate", "insert"]))
        at = data.draw(st.integers(0, max(0, len(message) - 1)))
        if op == "flip" and message:
            message[at] = data.draw(st.integers(0, 255))
        elif op == "truncate":
            del message[at:]
        else:
            message[at:at] = data.draw(st.binary(min_size=1, max_size=16))
    try:
        decoded = unpack(bytes(message))
    except WireError:
        return
    stack = [decoded]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, (np.ndarray, np.generic)):
            assert item.dtype.str in DTYPES
