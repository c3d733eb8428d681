"""Adaptive N: sample a first round of candidates, and the rest only when they disagree.

Adaptive consistency for language models stops sampling once the samples agree; here the agreement is
the first round's spread (`runtime.monitor.candidate_spread`: the mean over chunk positions and joints of
the candidates' standard deviation, in the policy's normalised action units). A decision of N candidates
with `Adaptive(first=F, level=L)` samples F; when their spread is at most L it chooses among them, else it
samples the other N - F (the same noise rows the full draw of N gives them, so a decision that goes on
is the full best-of-N's) and chooses among all N. The decision records how many it drew (`Decision.n`).

The level comes from held-out rollouts (`calibrate_level`: decision logs of best-of-N, `taco eval
--log-decisions`): the quantile of the first rounds' spreads that stops the share of decisions asked
for. The cost of a decision is then known in advance: that share at F candidates, the rest at N.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Adaptive:
    """`--adaptive F:LEVEL`: `first` candidates, and the rest of N only when their spread is above `level`."""

    first: int
    level: float

    def __post_init__(self):
        if isinstance(self.first, bool) or not isinstance(self.first, int) or self.first < 2:
            raise ValueError(f"adaptive: the first round must be an integer >= 2 candidates (a spread needs two), "
                             f"got {self.first!r}")
        if not (isinstance(self.level, (int, float)) and math.isfinite(self.level) and self.level >= 0):
            raise ValueError(f"adaptive: the level must be a finite spread >= 0, got {self.level!r}")

    @classmethod
    def parse(cls, text: str) -> Adaptive:
        """'F:LEVEL' -> Adaptive(F, LEVEL); raises ValueError naming what is wrong."""
        first, colon, level = str(text).partition(":")
        try:
            values = (int(first), float(level)) if colon else None
        except ValueError:
            values = None
        if values is None:
            raise ValueError(f"adaptive: expected F:LEVEL (first-round candidates : spread level), got {text!r}")
        return cls(*values)

    def __str__(self) -> str:
        return f"{self.first}:{self.level:g}"


def first_round_spreads(chunks: np.ndarray, first: int) -> np.ndarray:
    """float64[D]: the spread of each logged decision's first `first` candidates (chunks float[D, N, H, A],
    normalised units, as a decision log keeps them); NaN where fewer than 2 of them are finite."""
    from runtime.monitor import candidate_spread

    out = np.full(len(chunks), np.nan)
    for d, candidates in enumerate(chunks):
        head = candidates[:first]
        head = head[np.isfinite(head).all(axis=(1, 2))]
        out[d] = candidate_spread(head)
    return out


def calibrate_level(logs: list[str | Path], first: int, stop_share: float) -> dict:
    """The level that stops `stop_share` of the logged decisions after `first` candidates, from decision logs
    of best-of-N (their N > first). Also reports, where the log has the verifier's scores, how often the
    first round's best was the best of all N, among the decisions it stops and the others."""
    from verifiers.decision_log import read_episodes

    if not 0 < stop_share < 1:
        raise ValueError(f"stop: expected a share of decisions in (0, 1), got {stop_share}")
    meta, episodes = read_episodes(logs)
    spreads, same = [], []
    n = None
    for episode in episodes:
        if episode.chunks.shape[1] <= first:
            raise ValueError(f"logs: their decisions hold {episode.chunks.shape[1]} candidates, no more than the "
                             f"first round's {first}: log best-of-N with N > {first}")
        n = episode.chunks.shape[1]
        spreads.append(first_round_spreads(episode.chunks, first))
        scores = np.where(np.isfinite(episode.scores), episode.scores, -np.inf)
        same.append(scores[:, :first].argmax(axis=1) == scores.argmax(axis=1))
    if not spreads:
        raise ValueError(f"logs: no logged episode in {', '.join(map(str, logs))}")
    spread, same = np.concatenate(spreads), np.concatenate(same)
    finite = np.isfinite(spread)
    level = float(np.quantile(spread[finite], stop_share))
    stops = finite & (spread <= level)
    scored = bool(np.isfinite(np.concatenate([e.scores.ravel() for e in episodes])).any())
    return {
        "adaptive": str(Adaptive(first, level)), "first": first, "level": level, "n": n,
        "stop_share": float(stops.mean()), "decisions": int(len(spread)), "episodes": len(episodes),
        "spread_quantiles": {q: float(np.quantile(spread[finite], q)) for q in (0.1, 0.25, 0.5, 0.75, 0.9)},
        # How often the first round already held the verifier's pick of all N (None: no scores logged).
        "same_pick_when_stopped": float(same[stops].mean()) if scored and stops.any() else None,
        "same_pick_otherwise": float(same[finite & ~stops].mean()) if scored and (finite & ~stops).any() else None,
        "expected_candidates": float(stops.mean() * first + (1 - stops.mean()) * n),
        "logs": [str(p) for p in logs], "policy_fingerprint": meta.get("policy_fingerprint"),
    }
