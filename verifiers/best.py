"""The best verifier of a policy, chosen from a `taco compare` report and recorded in the policy bundle.

`taco best-verifier --policy P --compare DIR/compare.json` takes the arm with the most successes among
those that beat the pooled N=1 reference (`taco compare --reference-streams K`, K >= 2) at Fisher's
p < alpha, and writes it, with that evidence, to the policy manifest's `provenance.best_verifier`;
`--verifier best` then resolves to it (verifiers.shipped). Nothing is recorded when no arm beats N=1:
"best" never names a verifier that did not show a gain.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

from policies.errors import BundleError, SpecError


def choose_best(report: dict, alpha: float = 0.05) -> dict | None:
    """The winning arm's row of a compare report, or None when no verifier arm beats the pooled N=1."""
    pooled = report.get("pooled_reference")
    if pooled is None:
        raise SpecError("compare", "the report has no pooled N=1 reference; run `taco compare` with "
                                   "--reference-streams 3 (one stream of N=1 is one draw of its noise)")
    rate = pooled["overall"]["success_rate"]
    winners = [row for row in report["arms"]
               if row["arm"] not in pooled["arms"] and row["verifier"] != "none" and "vs_pooled_reference" in row
               and row["overall"]["success_rate"] > rate and row["vs_pooled_reference"]["p_value"] < alpha]
    if not winners:
        return None
    return max(winners, key=lambda row: (row["overall"]["successes"], -row["n"]))


def sibling_name(verifier: str, policy: str) -> str:
    """How `--verifier` names this verifier for the policy: `cfn` for `<policy>-cfn` next to the policy."""
    from verifiers.shipped import VERIFIER_NAMES

    if verifier == "best":
        raise SpecError("verifier", "an arm run as 'best' cannot be recorded as the best; run it by its name")
    if verifier in VERIFIER_NAMES:
        return verifier
    path, policy_path = Path(verifier).resolve(), Path(policy).resolve()
    prefix = policy_path.name + "-"
    if path.parent != policy_path.parent or not path.name.startswith(prefix):
        raise SpecError("verifier", f"{verifier} does not sit next to the policy as {policy_path.parent}/{prefix}NAME; "
                                    "a recorded best verifier must ship with its policy")
    return path.name[len(prefix):]


def record_best(policy: str, report: dict, alpha: float = 0.05, command: str = "") -> dict | None:
    """Writes the best verifier of `report` into the policy's manifest; returns the record (None: no winner,
    and any earlier record is removed, since this report says it no longer holds)."""
    from policies import load_policy_bundle

    before = load_policy_bundle(policy).fingerprint
    from policies.shipped import resolve_policy

    # A report of `taco compare --policy flow` names the shipped policy by name: resolve it the same way.
    if Path(resolve_policy(report["policy"])).resolve() != Path(policy).resolve():
        raise SpecError("compare", f"the report is about {report['policy']}, not {policy}")
    row = choose_best(report, alpha)
    path = Path(policy) / "manifest.json"
    manifest = json.loads(path.read_text())
    provenance = manifest.setdefault("provenance", {})
    record = None
    if row is None:
        if provenance.pop("best_verifier", None) is None:
            return None  # nothing recorded, nothing to remove: the manifest stays as it is
    else:
        pooled = report["pooled_reference"]["overall"]
        paired = row.get("paired_vs_" + report["reference"], {})
        record = {
            "name": sibling_name(row["verifier"], policy), "n": row["n"],
            "successes": row["overall"]["successes"], "episodes": row["overall"]["episodes"],
            "wilson95": row["overall"]["wilson95"],
            "reference": {"successes": pooled["successes"], "episodes": pooled["episodes"],
                          "streams": report["pooled_reference"]["streams"]},
            "p_value": row["vs_pooled_reference"]["p_value"], "test": "Fisher's exact, against the pooled N=1",
            "paired_vs_stream0": {k: paired[k] for k in ("gained", "lost", "p_value") if k in paired},
            "tasks": report["tasks"], "seeds": [report["seed"], report["seed"] + report["episodes"] - 1],
            "recorded": datetime.date.today().isoformat(), "command": command}
        provenance["best_verifier"] = record
    path.write_text(json.dumps(manifest, indent=1) + "\n")
    if load_policy_bundle(policy).fingerprint != before:  # provenance is outside the fingerprint
        raise BundleError("provenance", f"recording the best verifier changed {policy}'s fingerprint")
    return record


def describe_best(record: dict) -> str:
    ref = record["reference"]
    return (f"{record['name']} at N={record['n']}: {record['successes']}/{record['episodes']} against "
            f"{ref['successes']}/{ref['episodes']} for N=1 over {len(ref['streams'])} noise streams "
            f"(p={record['p_value']:.2g}; {', '.join(record['tasks'])}, "
            f"seeds {record['seeds'][0]}-{record['seeds'][1]})")
