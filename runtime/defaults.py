"""Names of the shipped bundles: `--policy default` and `--verifier none|random|cfn|rnd|knn|consensus`.

The shipped bundles live in `artifacts/bundles/` of the repository (built by `make artifacts`), or in
the folder named by the TACO_ARTIFACTS environment variable. A path is always accepted as well.
"""

from __future__ import annotations

import os
from pathlib import Path

from policies.errors import BundleError

DEFAULT_POLICY_KIND = "flow"
VERIFIER_NAMES = ("none", "random", "cfn", "rnd", "knn", "consensus")


def artifacts_dir() -> Path:
    return Path(os.environ.get("TACO_ARTIFACTS", Path(__file__).resolve().parents[1] / "artifacts"))


def resolve_policy(name_or_path: str) -> str:
    """'default' (or 'flow' / 'diffusion') -> the shipped bundle's path; anything else is taken as a path."""
    if name_or_path in ("default", "flow", "diffusion"):
        kind = DEFAULT_POLICY_KIND if name_or_path == "default" else name_or_path
        path = artifacts_dir() / "bundles" / kind
        if not (path / "manifest.json").is_file():
            raise BundleError("policy", f"the shipped {kind!r} policy is not at {path}; build it with `make artifacts` "
                                        f"(or set TACO_ARTIFACTS)")
        return str(path)
    return name_or_path


def resolve_verifier(name_or_path: str | None, policy_path: str) -> str | None:
    """'none' -> None; 'cfn' etc. -> the verifier shipped for that policy; anything else is a path."""
    if name_or_path is None or name_or_path == "none":
        return None
    if name_or_path in VERIFIER_NAMES:
        policy = Path(policy_path)
        path = policy.parent / f"{policy.name}-{name_or_path}"
        if not (path / "manifest.json").is_file():
            raise BundleError("verifier", f"no {name_or_path!r} verifier shipped for {policy} (looked for {path}); "
                                          f"build it with `make artifacts`")
        return str(path)
    return name_or_path
