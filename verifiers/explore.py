"""Epsilon-greedy selection, for collecting decision logs an offline critic can learn from.

A critic learns a candidate's value only from candidates that were executed; a run that always takes
the verifier's pick shows it little else. `Explore` wraps a verifier (or none) with the same interface:
with probability `epsilon`, drawn from the decision's seed (so a run reproduces), it makes a uniformly
random candidate the pick; otherwise it passes the wrapped verifier's scores through (with no verifier,
candidate 0: the policy at N=1). `epsilon=1` is the uniform pick, distributed as the policy itself.
"""

from __future__ import annotations

import numpy as np

from verifiers.base import Verifier, score_candidates

# Mixed into the decision's seed so the exploration draw is independent of the candidates' noise.
_STREAM = 0x6578706C  # "expl"


class Explore:
    """Epsilon-greedy around `verifier` (None: the policy's own first candidate)."""

    takes_seed = True

    def __init__(self, verifier: Verifier | None, epsilon: float):
        if not 0.0 <= float(epsilon) <= 1.0:
            raise ValueError(f"explore: epsilon must be in [0, 1], got {epsilon}")
        self.base, self.epsilon = verifier, float(epsilon)
        self.name = f"explore({'none' if verifier is None else verifier.name}, {self.epsilon:g})"
        self.feature_dim = None if verifier is None else verifier.feature_dim
        self.policy_fingerprint = None if verifier is None else verifier.policy_fingerprint
        self.takes_chunks = bool(getattr(verifier, "takes_chunks", False))

    def score(self, features: np.ndarray, chunks: np.ndarray | None = None, *, seed: int) -> np.ndarray:
        """float32[N]: one-hot on a random candidate with probability epsilon, else the wrapped scores."""
        n = len(features)
        rng = np.random.default_rng([int(seed), _STREAM])
        explore, pick = rng.random() < self.epsilon, int(rng.integers(n))
        if not explore and self.base is not None:
            return np.asarray(score_candidates(self.base, features, chunks, seed), np.float32)
        scores = np.zeros(n, np.float32)
        scores[pick if explore else 0] = 1.0
        return scores
