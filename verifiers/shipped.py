"""Names of the shipped verifier bundles: `--verifier none|best|random|cfn|rnd|knn|consensus|value|...`.

A shipped verifier sits next to its policy bundle as `<policy>-<name>` (`artifacts/bundles/flow-cfn`
for `artifacts/bundles/flow`). `best` is the verifier recorded as the policy's best, with the
comparison that showed it, in the policy manifest's `provenance.best_verifier` (written by
`taco best-verifier` from a `taco compare` report; provenance is not part of the policy's
fingerprint, so recording it binds no verifier anew). A path is always accepted as well.
"""

from __future__ import annotations

import json
from pathlib import Path

from policies.errors import BundleError

VERIFIER_NAMES = ("none", "best", "random", "cfn", "rnd", "knn", "consensus", "outcome", "value", "combined")


def best_verifier(policy_path: str) -> dict | None:
    """The policy's recorded best verifier ({"name", "n", the evidence}), or None when none is recorded."""
    try:
        manifest = json.loads((Path(policy_path) / "manifest.json").read_text())
    except (OSError, ValueError) as err:
        raise BundleError("manifest", f"cannot read {policy_path}/manifest.json: {err}") from err
    record = manifest.get("provenance", {}).get("best_verifier")
    return record if isinstance(record, dict) and record.get("name") else None


def resolve_verifier(name_or_path: str | None, policy_path: str) -> str | None:
    """'none' -> None; 'best' -> the policy's recorded best; 'cfn' etc. -> the verifier shipped for that
    policy; anything else is a path."""
    if name_or_path == "best":
        record = best_verifier(policy_path)
        if record is None:
            raise BundleError("verifier", f"no best verifier is recorded for {policy_path}; compare verifiers with "
                                          "`taco compare` and record the winner with `taco best-verifier`")
        name_or_path = record["name"]
    if name_or_path is None or name_or_path == "none":
        return None
    if name_or_path in VERIFIER_NAMES:
        return _beside(policy_path, name_or_path, "verifier", "build it with `make artifacts`")
    return name_or_path


def resolve_monitor(name_or_path: str | None, policy_path: str) -> str | None:
    """'none' -> None; 'monitor' -> the failure monitor shipped for the policy (`<policy>-monitor`, made by
    `taco calibrate-monitor`); anything else is a path."""
    if name_or_path is None or name_or_path == "none":
        return None
    if name_or_path != "monitor":
        return name_or_path
    policy = Path(policy_path)
    return _beside(policy_path, "monitor", "monitor", f"calibrate one with `taco calibrate-monitor --policy {policy} "
                                                      f"--out {policy.parent / (policy.name + '-monitor')}`")


def _beside(policy_path: str, name: str, field: str, hint: str) -> str:
    """The shipped bundle `<policy>-<name>` next to the policy; refuses a folder of that name here (ambiguous)
    and a missing bundle, naming `field` and saying how to make it (`hint`)."""
    if Path(name).is_dir():
        raise BundleError(field, f"{name!r} names a shipped {field} and a folder here; write ./{name} for the folder")
    policy = Path(policy_path)
    path = policy.parent / f"{policy.name}-{name}"
    if not (path / "manifest.json").is_file():
        kind = f"{name!r} {field}" if name != field else field
        raise BundleError(field, f"no {kind} shipped for {policy} (looked for {path}); {hint}")
    return str(path)
