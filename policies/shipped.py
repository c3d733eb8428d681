"""Names of the shipped policy bundles: `--policy default` (the flow policy), `flow`, `diffusion`, `flow32`.

The default is the strong policy, which its value verifier lifts at N=16 (artifacts/README.md says
why); `diffusion` is the weak policy trained on 50 episodes, where the consensus of its samples pays;
`flow32` is the flow policy's recipe with 32-action chunks and real-time chunking, for asynchronous
execution (its chunk outlasts 300 ms of inference; `taco ros robot` runs it by default).

The shipped bundles live in `artifacts/bundles/` of the repository (built by `make artifacts`), or in
the folder named by the TACO_ARTIFACTS environment variable. A path is always accepted as well.
"""

from __future__ import annotations

import os
from pathlib import Path

from policies.errors import BundleError

DEFAULT_POLICY_KIND = "flow"
# Names `resolve_policy` maps to a shipped bundle; anything else is a path.
POLICY_NAMES = ("default", "flow", "diffusion", "flow32")


def artifacts_dir() -> Path:
    return Path(os.environ.get("TACO_ARTIFACTS", Path(__file__).resolve().parents[1] / "artifacts"))


def resolve_bundle(name_or_path: str) -> str:
    """Any shipped bundle by name: a policy name (`default`, `flow`, ...) or a shipped verifier's folder name
    (`flow-cfn`, `diffusion-consensus`); anything else is taken as a path."""
    if name_or_path in POLICY_NAMES:
        return resolve_policy(name_or_path)
    shipped = artifacts_dir() / "bundles" / name_or_path
    if not Path(name_or_path).exists() and "/" not in name_or_path and (shipped / "manifest.json").is_file():
        return str(shipped)
    return name_or_path


def resolve_policy(name_or_path: str) -> str:
    """'default' (or 'flow' / 'diffusion' / 'flow32') -> the shipped bundle's path; anything else is a path."""
    if name_or_path in POLICY_NAMES:
        if Path(name_or_path).is_dir():
            raise BundleError("policy", f"{name_or_path!r} names a shipped policy and a folder here; write "
                                        f"./{name_or_path} for the folder")
        kind = DEFAULT_POLICY_KIND if name_or_path == "default" else name_or_path
        path = artifacts_dir() / "bundles" / kind
        if not (path / "manifest.json").is_file():
            raise BundleError("policy", f"the shipped {kind!r} policy is not at {path}; build it with `make artifacts` "
                                        f"(or set TACO_ARTIFACTS)")
        return str(path)
    return name_or_path
