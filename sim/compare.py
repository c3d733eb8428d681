"""Comparisons of verifier arms on the same episodes: the TACO reproduction and `taco demo`.

Every arm runs the same tasks and seeds. Besides each arm's success (Wilson 95% interval), the
comparison against the reference arm (N=1, no verifier) is paired: for each seed, did the verifier
turn a failure into a success or the reverse? An exact two-sided sign test (McNemar) on those
discordant pairs says whether the difference could be chance.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from sim.evaluate import EvalConfig, run_suite


@dataclass(frozen=True)
class Arm:
    """One arm: a name, a candidate count, and a verifier (bundle path, or None for the policy alone)."""

    name: str
    n: int
    verifier: str | None = None
    # Noise stream (0: the default; see runtime.executor.ExecutorConfig.noise_stream).
    stream: int = 0

    @classmethod
    def parse(cls, text: str) -> Arm:
        """NAME:N[@STREAM][:VERIFIER_PATH], e.g. `none:1`, `cfn:16` (the shipped cfn), `cfn:16:path/to/bundle`,
        or `none2:1@2:none` (N=1 on noise stream 2: another draw of the reference on the same seeds)."""
        parts = text.split(":", 2)
        count, at, stream = parts[1].partition("@") if len(parts) >= 2 else ("", "", "")
        if len(parts) < 2 or not parts[0] or not count.isdigit() or (at and not stream.isdigit()):
            raise ValueError(f"arm: expected NAME:N[@STREAM][:VERIFIER], got {text!r}")
        return cls(parts[0], int(count), parts[2] if len(parts) == 3 else None, int(stream or 0))

    @property
    def verifier_name(self) -> str:
        """What `taco eval --verifier` gets: the given verifier, else the arm's name (`none`, `cfn`, ...)."""
        return self.verifier or self.name


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact p-value of the sign test on b vs c discordant pairs."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def compare(policy: str, arms: list[Arm], base: EvalConfig, out_dir: str | Path, log=None) -> dict:
    """Runs every arm (each resumable) and writes `compare.json` and, with a report, the plots."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for arm in arms:
        config = dataclasses.replace(base, policy=policy, verifier=arm.verifier_name, n=arm.n,
                                     noise_stream=arm.stream, report=None)
        path = out / f"arm-{arm.name}.json"
        done = _finished(path, config)
        if done is not None:
            log(f"arm {arm.name}: already complete in {path}")
            results[arm.name] = done
            continue
        stream = f", noise stream {arm.stream}" if arm.stream else ""
        log(f"arm {arm.name}: N={arm.n}, verifier {arm.verifier_name}{stream}")
        results[arm.name] = run_suite(config, path, progress=log)
    reference = arms[0].name
    table = []
    for arm in arms:
        summary = results[arm.name]["summary"]
        row = {"arm": arm.name, "n": arm.n, "verifier": arm.verifier_name, "noise_stream": arm.stream,
               "overall": summary["overall"],
               "per_task": {t: {k: s[k] for k in ("successes", "episodes", "success_rate", "wilson95")}
                            for t, s in summary["per_task"].items()}}
        if arm.name != reference:
            row["paired_vs_" + reference] = _paired(results[reference]["episodes"], results[arm.name]["episodes"])
        table.append(row)
    report = {"policy": policy, "reference": reference, "tasks": list(base.tasks), "episodes": base.episodes,
              "seed": base.seed, "arms": table}
    (out / "compare.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def _finished(path: Path, config: EvalConfig) -> dict | None:
    """A completed arm's report when it was run with exactly these settings (else None: run it)."""
    if not path.is_file():
        return None
    try:
        report = json.loads(path.read_text())
    except ValueError:
        return None
    # The fingerprint recorded when the arm ran covers the bundles' contents: a bundle rebuilt at the same
    # path since then (or a report from before fingerprints were recorded) means running the arm again.
    return report if report.get("fingerprint") == config.fingerprint() else None


def _paired(reference: list[dict], other: list[dict]) -> dict:
    ref = {(e["task"], e["seed"]): e["success"] for e in reference}
    gained = [(e["task"], e["seed"]) for e in other if e["success"] and not ref[(e["task"], e["seed"])]]
    lost = [(e["task"], e["seed"]) for e in other if not e["success"] and ref[(e["task"], e["seed"])]]
    # Progress short of success: episodes whose best stage differs, the largest change first.
    ref_stage = {(e["task"], e["seed"]): e["best_stage"] for e in reference}
    staged = sorted(((e["task"], e["seed"], ref_stage[(e["task"], e["seed"])], e["best_stage"]) for e in other
                     if e["best_stage"] != ref_stage[(e["task"], e["seed"])]), key=lambda x: -abs(x[3] - x[2]))
    return {"gained": len(gained), "lost": len(lost), "p_value": mcnemar_exact(len(gained), len(lost)),
            "gained_episodes": gained[:20], "lost_episodes": lost[:20], "stage_changed_episodes": staged[:20]}


def format_compare(report: dict) -> str:
    tasks = report["tasks"]
    head = (f"{'arm':<10} {'N':>3} " + " ".join(f"{t:>22}" for t in [*tasks, "overall", "stage"])
            + "   vs " + report["reference"])
    lines = [head]
    for row in report["arms"]:
        cells = []
        for t in tasks:
            s = row["per_task"][t]
            cells.append(f"{s['successes']:>3}/{s['episodes']:<3} [{s['wilson95'][0]:.2f},{s['wilson95'][1]:.2f}]")
        o = row["overall"]
        cells.append(f"{o['successes']:>3}/{o['episodes']:<3} [{o['wilson95'][0]:.2f},{o['wilson95'][1]:.2f}]")
        paired = row.get("paired_vs_" + report["reference"])
        extra = f"   +{paired['gained']} -{paired['lost']} (p={paired['p_value']:.3f})" if paired else ""
        # Mean best stage: progress short of success (reached, grasped, handed over), for weak policies.
        cells.append(f"{o['mean_stage_reward']:.2f}")
        lines.append(f"{row['arm']:<10} {row['n']:>3} " + " ".join(f"{c:>22}" for c in cells) + extra)
    return "\n".join(lines)


