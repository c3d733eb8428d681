"""Task-instruction tokeniser that needs no download: UTF-8 bytes with BOS/EOS and padding."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

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


# Prompts a `TextTokenizer` builds from the task (and the normalised state), as the policies were trained:
# "newline": the task with a newline appended if it has none (pi0's and SmolVLA's processors);
# "pi05": openpi's pi0.5 prompt with the normalised state written as 256 bins
#         ("Task: {task}, State: {bins};\nAction: ").
PROMPTS = ("newline", "pi05")


@dataclass(frozen=True)
class TextTokenizer:
    """A Hugging Face fast tokenizer shipped in the bundle (`tokenizer.json`), run with the `tokenizers`
    library: builds the policy's prompt, encodes it with its special tokens, truncates and right-pads to
    `max_length`. Called once per control step by the preprocessor; needs the `vla` extra (tokenizers)."""

    # File name of the tokenizer inside the bundle.
    file: str
    # Token ids per prompt; longer prompts are truncated.
    max_length: int
    # Id the prompt is padded with (and that the encoder masks out).
    pad_id: int
    # How the prompt is built from the task: one of PROMPTS.
    prompt: str = "newline"
    # Folder the bundle was loaded from (set by the manifest reader; not part of the bundle's identity).
    folder: str = ""

    def __post_init__(self):
        if self.prompt not in PROMPTS:
            raise ValueError(f"tokenizer.prompt: must be one of {', '.join(PROMPTS)}, got {self.prompt!r}")

    def text(self, task: str, state: np.ndarray | None = None) -> str:
        """The prompt for one step. `state`: the normalised state (pi05 writes it into the prompt)."""
        if self.prompt == "newline":
            return task if task.endswith("\n") else task + "\n"
        cleaned = task.strip().replace("_", " ").replace("\n", " ")
        bins = np.digitize(np.asarray(state, np.float32), bins=np.linspace(-1, 1, 256 + 1)[:-1]) - 1
        return f"Task: {cleaned}, State: {' '.join(map(str, bins))};\nAction: "

    def encode(self, task: str, state: np.ndarray | None = None) -> np.ndarray:
        """int64[max_length] token ids, `pad_id` after the end."""
        ids = _load_tokenizer(str(Path(self.folder) / self.file)).encode(self.text(task, state)).ids[: self.max_length]
        out = np.full(self.max_length, self.pad_id, dtype=np.int64)
        out[: len(ids)] = ids
        return out

    @property
    def needs_state(self) -> bool:
        return self.prompt == "pi05"

    def to_dict(self) -> dict:
        return {"type": "text", "file": self.file, "max_length": self.max_length, "pad_id": self.pad_id,
                "prompt": self.prompt}


@lru_cache(maxsize=8)
def _load_tokenizer(path: str):
    from policies.extras import require

    return require("tokenizers").Tokenizer.from_file(path)
