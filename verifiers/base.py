"""The verifier interface: features (and, if it asks, chunks and the decision's seed) of N candidates -> N
scores, higher is better."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Verifier(Protocol):
    """Scores candidate action chunks; called by the engine once per control step, after sampling.

    Attributes:
        name: shown in decisions and diagnostics.
        feature_dim: F, the feature size it takes; None if it takes any.
        policy_fingerprint: the policy bundle whose features it was trained on; None if unbound.
        takes_chunks: optional (False when absent): the engine then also passes the candidates' chunks,
            float32[N, H, A] in the policy's normalised action units. Only valid (finite) candidates are
            scored, so a verifier that compares candidates with each other never sees a NaN one.
        takes_seed: optional (False when absent): the engine then also passes `seed=`, the decision's noise
            seed (an int in [0, 2**63)), for a pick that is reproducible yet independent of the candidates.
    """

    name: str
    feature_dim: int | None
    policy_fingerprint: str | None

    def score(self, features: np.ndarray, chunks: np.ndarray | None = None) -> np.ndarray:
        """features: float32[N, F] (and chunks: float32[N, H, A]) -> scores: float32[N]; higher is better."""
        ...


def score_candidates(verifier: Verifier, features: np.ndarray, chunks: np.ndarray, seed: int) -> np.ndarray:
    """Calls `verifier.score` with the chunks (`takes_chunks`) and the seed (`takes_seed`) when it takes them."""
    args = (features, chunks) if getattr(verifier, "takes_chunks", False) else (features,)
    if getattr(verifier, "takes_seed", False):
        return verifier.score(*args, seed=seed)
    return verifier.score(*args)
