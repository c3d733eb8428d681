"""Task-instruction tokeniser that needs no download: UTF-8 bytes with BOS/EOS and padding."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PAD_ID = 0
BOS_ID = 1
EOS_ID = 2
# Byte b maps to id b + BYTE_OFFSET.
BYTE_OFFSET = 3
VOCAB_SIZE = 256 + BYTE_OFFSET


@dataclass(frozen=True)
class ByteTokenizer:
    """Lower-cases, folds white space, and maps UTF-8 bytes to ids; called once per control step."""

    # Number of ids per instruction, BOS and EOS included; longer instructions are truncated.
    max_length: int = 32

    def __post_init__(self):
        if self.max_length < 3:
            raise ValueError(f"tokenizer.max_length: must be >= 3, got {self.max_length}")

    def encode(self, text: str) -> np.ndarray:
        """Returns int64[max_length] token ids, PAD_ID after the end."""
        if not isinstance(text, str):
            raise TypeError(f"task: expected str, got {type(text).__name__}")
        normalised = " ".join(text.lower().split())
        body = [b + BYTE_OFFSET for b in normalised.encode("utf-8")][: self.max_length - 2]
        ids = np.full(self.max_length, PAD_ID, dtype=np.int64)
        ids[: len(body) + 2] = [BOS_ID, *body, EOS_ID]
        return ids

    def to_dict(self) -> dict:
        return {"type": "bytes", "max_length": self.max_length}


@dataclass(frozen=True)
class NoTokenizer:
    """For policies that take no instruction (LeRobot's Diffusion Policy): the encoder has no `tokens` input."""

    max_length: int = 0

    def encode(self, text: str) -> None:
        return None

    def to_dict(self) -> dict:
        return {"type": "none"}
