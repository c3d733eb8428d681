"""Registry of policy kinds: name -> how to build the torch model. Listed by `taco list` and the conformance test."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PolicyKind:
    # Registry name, also the manifest's `kind`.
    name: str
    # One-line description.
    description: str
    # Dotted path "module:attr" of the torch class (imported only when a model is built).
    model: str

    def model_class(self):
        import importlib

        module, attr = self.model.split(":")
        return getattr(importlib.import_module(module), attr)


_KINDS: dict[str, PolicyKind] = {}


def register_policy_kind(kind: PolicyKind) -> None:
    if kind.name in _KINDS:
        raise ValueError(f"policy kind {kind.name!r} is already registered")
    _KINDS[kind.name] = kind


def policy_kinds() -> dict[str, PolicyKind]:
    return dict(_KINDS)


register_policy_kind(PolicyKind(
    "flow", "flow matching (pi0 style): Euler steps t=1 -> 0 on a predicted velocity",
    "policies.models.policy:FlowPolicy"))
register_policy_kind(PolicyKind(
    "diffusion", "diffusion: epsilon prediction, deterministic DDIM with precomputed constants",
    "policies.models.policy:DiffusionPolicy"))
