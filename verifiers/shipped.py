"""Names of the shipped verifier bundles: `--verifier none|random|cfn|rnd|knn|consensus`.

A shipped verifier sits next to its policy bundle as `<policy>-<name>` (`artifacts/bundles/flow-cfn`
for `artifacts/bundles/flow`). A path is always accepted as well.
"""

from __future__ import annotations

from pathlib import Path

from policies.errors import BundleError

VERIFIER_NAMES = ("none", "random", "cfn", "rnd", "knn", "consensus")


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
