"""Registry of verifier kinds: the built-in ones and third-party plugins.

A third-party package registers a kind under the `taco.verifiers` entry point group, pointing at a
callable `train(features: FeatureSet, config, out_dir) -> OnnxVerifier` (or at a `VerifierKind`).
Any ONNX file with the signature `features[N, F] -> scores[N]` also loads directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import entry_points

ENTRY_POINT_GROUP = "taco.verifiers"


@dataclass(frozen=True)
class VerifierKind:
    name: str
    description: str
    # "builtin" or the distribution/entry point that registered it.
    source: str = "builtin"
    # Dotted "module:function" that trains it (None: needs no training).
    trainer: str | None = None


BUILTIN = {
    "none": VerifierKind("none", "no verifier: N=1, the policy's own sample"),
    "random": VerifierKind("random", "uniform pick among N, from the decision's seed (never looks at the candidates)", trainer="verifiers.train:train_verifier"),
    "cfn": VerifierKind("cfn", "Coin Flipping Network pseudo-count with a frozen random prior (TACO)",
                        trainer="verifiers.train:train_verifier"),
    "rnd": VerifierKind("rnd", "random network distillation error, negated", trainer="verifiers.train:train_verifier"),
    "knn": VerifierKind("knn", "mean distance to the k nearest training features, negated",
                        trainer="verifiers.train:train_verifier"),
    "consensus": VerifierKind("consensus", "the candidate whose chunk is nearest the mean of the N chunks (no training)",
                              trainer="verifiers.train:train_verifier"),
    "outcome": VerifierKind("outcome", "each candidate's progress predicted from executing candidates in simulation "
                                       "(taco collect-outcomes)", trainer="verifiers.outcomes:train_outcome_verifier"),
    "combined": VerifierKind("combined", "a weighted sum of other verifiers' scores, each standardised over the "
                                         "N candidates (taco combine-verifiers)",
                             trainer="verifiers.combine:combine_verifiers"),
}


def verifier_kinds() -> dict[str, VerifierKind]:
    """Built-in kinds plus those registered by installed packages under `taco.verifiers`."""
    kinds = dict(BUILTIN)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in kinds:
            continue  # built-ins cannot be shadowed by a plugin
        obj = ep.load()
        kinds[ep.name] = obj if isinstance(obj, VerifierKind) else VerifierKind(
            ep.name, (obj.__doc__ or "plugin verifier").strip().splitlines()[0], source=ep.value, trainer=ep.value)
    return kinds
