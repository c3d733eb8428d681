import numpy as np
import pytest

from policies.tokenizer import BOS_ID, BYTE_OFFSET, EOS_ID, PAD_ID, ByteTokenizer


def test_encodes_bytes_with_bos_eos_and_padding():
    ids = ByteTokenizer(max_length=8).encode("Ab")
    assert ids.dtype == np.int64 and ids.shape == (8,)
    assert ids.tolist() == [BOS_ID, ord("a") + BYTE_OFFSET, ord("b") + BYTE_OFFSET, EOS_ID] + [PAD_ID] * 4


def test_folds_case_and_white_space():
    tok = ByteTokenizer()
    assert (tok.encode("  Transfer   the\tCUBE ") == tok.encode("transfer the cube")).all()


def test_truncates_long_instructions_keeping_eos():
    ids = ByteTokenizer(max_length=6).encode("a long instruction")
    assert ids[0] == BOS_ID and ids[-1] == EOS_ID and (ids != PAD_ID).all()


def test_non_ascii_is_encoded_as_utf8_bytes():
    ids = ByteTokenizer(max_length=8).encode("é")
    assert ids[1:3].tolist() == [b + BYTE_OFFSET for b in "é".encode()]


def test_rejects_non_string_and_tiny_length():
    with pytest.raises(TypeError, match="task"):
        ByteTokenizer().encode(3)
    with pytest.raises(ValueError, match="max_length"):
        ByteTokenizer(max_length=2)
