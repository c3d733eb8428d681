"""`taco rebind-verifier`: carry a verifier over to a re-export of the policy it was trained for.

A verifier is bound to one policy fingerprint, and the fingerprint covers every graph file. Re-exporting
the same weights with new graph inputs (real-time chunking, a per-candidate prefix) changes it, and the
engine then refuses the verifier, rightly, until someone shows that the features did not change. This
does that: both policies sample candidates for the same random observations and noise
(`policies.compare.compare_policies`), and only when their chunks and features agree (bit for bit by
default) is the verifier written again, bound to the new policy, with what was compared in its provenance.
"""

from __future__ import annotations

import datetime
import json
import shutil
import sys
from pathlib import Path

from policies.bundle import load_policy_bundle
from policies.compare import compare_policies
from verifiers.bundle import OnnxVerifier, load_verifier


def rebind_verifier(verifier: str | Path, old_policy: str | Path, new_policy: str | Path, out: str | Path,
                    observations: int = 8, n: int = 16, seed: int = 0, atol: float = 0.0,
                    overwrite: bool = False) -> OnnxVerifier:
    """Writes `verifier` (bound to `old_policy`) to `out`, bound to `new_policy`, once both policies give
    the same candidates and features within `atol`; raises ValueError naming what differs otherwise."""
    source = load_verifier(verifier)
    if source.manifest is None:
        raise ValueError(f"verifier: {verifier} is a bare ONNX file, bound to no policy; nothing to rebind")
    old, new = load_policy_bundle(old_policy), load_policy_bundle(new_policy)
    if source.policy_fingerprint != old.fingerprint:
        raise ValueError(f"verifier: {verifier} is bound to policy {source.policy_fingerprint[:12]}..., "
                         f"not to {old_policy} ({old.fingerprint[:12]}...)")
    diff = compare_policies(old.path, new.path, observations, n, seed)
    worst = max(diff, key=diff.get)
    if diff[worst] > atol:
        raise ValueError(f"{worst}: the policies differ by up to {diff[worst]:.3g} (allowed {atol:g}); the new "
                         "policy computes other candidates, so the verifier must be trained again for it")
    target = Path(out)
    if target.exists():
        if not overwrite:
            raise FileExistsError(f"{target} exists; pass overwrite=True to replace it")
        shutil.rmtree(target)
    shutil.copytree(source.path, target)
    manifest = source.manifest.to_dict()
    manifest["policy_fingerprint"] = new.fingerprint
    manifest["provenance"] = {**manifest["provenance"], "rebound": {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "from_policy": old.fingerprint, "to_policy": new.fingerprint, "observations": observations, "n": n,
        "seed": seed, "max_difference": diff}}
    (target / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return load_verifier(target)
