"""Choosing one candidate chunk from N."""

from __future__ import annotations

import numpy as np

from policies.errors import SpecError


def finite_candidates(chunks: np.ndarray) -> np.ndarray:
    """bool[N]: candidates whose every action is finite."""
    return np.isfinite(chunks).all(axis=(1, 2))


def select(scores: np.ndarray | None, valid: np.ndarray) -> int:
    """Index of the best valid candidate: argmax score, ties to the lowest index.

    Candidates with a non-finite chunk or score are never chosen. With no scores (no verifier), the
    first valid candidate is chosen. Raises SpecError if no candidate is valid, so that nothing computed
    from NaN reaches a robot.
    """
    if scores is not None:
        valid = valid & np.isfinite(scores)
    candidates = np.flatnonzero(valid)
    if candidates.size == 0:
        raise SpecError("chunks", f"all {valid.size} candidates are non-finite (chunk or score); nothing to execute")
    if scores is None:
        return int(candidates[0])
    # argmax returns the first maximum, i.e. the lowest index among ties.
    return int(candidates[np.argmax(scores[candidates])])
