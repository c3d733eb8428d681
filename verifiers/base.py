"""The verifier interface: features of N candidates -> N scores, higher = more in-distribution."""

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
    """

    name: str
    feature_dim: int | None
    policy_fingerprint: str | None

    def score(self, features: np.ndarray) -> np.ndarray:
        """features: float32[N, F] -> scores: float32[N]; higher is better."""
        ...
