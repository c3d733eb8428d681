"""Comparisons of verifier arms on the same episodes: the TACO reproduction and `taco demo`.

Every arm runs the same tasks and seeds. Besides each arm's success (Wilson 95% interval), the
comparison against the reference arm (N=1, no verifier) is paired: for each seed, did the verifier
turn a failure into a success or the reverse? An exact two-sided sign test (McNemar) on those
discordant pairs says whether the difference could be chance.

One N=1 noise stream is a single draw of the policy's sampling noise; on a high-variance policy it can sit
several points off the policy's mean. With `reference_streams=K` the reference also runs on noise streams
1..K-1 (same seeds), the streams are pooled, and every other arm is also tested against the pooled rate
(Fisher's exact test: unpaired, since the pool has K outcomes per seed).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from sim.evaluate import EvalConfig, run_suite, wilson_interval


@dataclass(frozen=True)
class Arm:
    """One arm: a name, a candidate count, and a verifier (bundle path, or None for the policy alone)."""

    name: str
    n: int
    verifier: str | None = None
    # Noise stream (0: the default; see runtime.executor.ExecutorConfig.noise_stream).
    stream: int = 0
    # Pruned best-of-N, "k:m" (policies.pruning); None: every candidate runs every step.
    prune: str | None = None
    # Adaptive N, "first:level" (runtime.adaptive); None: every decision draws N.
    adaptive: str | None = None

    @classmethod
    def parse(cls, text: str) -> Arm:
        """NAME:N[~pK/M|~aF/LEVEL][@STREAM][:VERIFIER_PATH], e.g. `none:1`, `cfn:16` (the shipped cfn),
        `cfn:16:path/to/bundle`, `none2:1@2:none` (N=1 on noise stream 2: another draw of the reference on
        the same seeds), `pruned:16~p3/2:combined` (best-of-16 pruned: every candidate runs 3 denoising steps,
        2 the rest) or `adaptive:16~a4/0.05:combined` (4 candidates, all 16 when their spread is above 0.05)."""
        parts = text.split(":", 2)
        count, at, stream = parts[1].partition("@") if len(parts) >= 2 else ("", "", "")
        count, tilde, mode = count.partition("~")
        first, slash, second = mode[1:].partition("/")
        saving = {}
        if tilde and mode[:1] == "p" and slash and first.isdigit() and second.isdigit():
            saving["prune"] = f"{first}:{second}"
        elif tilde and mode[:1] == "a" and slash and first.isdigit() and _is_number(second):
            saving["adaptive"] = f"{first}:{second}"
        if (len(parts) < 2 or not parts[0] or not count.isdigit() or (at and not stream.isdigit())
                or (tilde and not saving)):
            raise ValueError(f"arm: expected NAME:N[~pK/M|~aF/LEVEL][@STREAM][:VERIFIER], got {text!r}")
        return cls(parts[0], int(count), parts[2] if len(parts) == 3 else None, int(stream or 0), **saving)

    @property
    def verifier_name(self) -> str:
        """What `taco eval --verifier` gets: the given verifier, else the arm's name (`none`, `cfn`, ...)."""
        return self.verifier or self.name


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact p-value of the sign test on b vs c discordant pairs."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_difference_interval(gained: int, lost: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% interval of the difference in success rate between two arms run on the same n seeds, from the
    discordant pairs (Agresti and Min's adjusted Wald: half an episode added to each cell of the 2x2
    table, which keeps the interval honest at small n and when nothing changed)."""
    if n < 1 or gained < 0 or lost < 0 or gained + lost > n:
        raise ValueError(f"paired_difference_interval: need 0 <= gained + lost <= n, n >= 1; got {gained}, {lost}, {n}")
    b, c, m = gained + 0.5, lost + 0.5, n + 2.0
    diff = (b - c) / m
    half = z * math.sqrt(max(b + c - (b - c) ** 2 / m, 0.0)) / m
    return max(-1.0, diff - half), min(1.0, diff + half)


def fisher_exact(a: int, n1: int, b: int, n2: int) -> float:
    """Two-sided exact p-value that a/n1 and b/n2 successes come from one rate (Fisher's exact test:
    the tables with the same margins that are no more likely than the observed one)."""
    if not (0 <= a <= n1 and 0 <= b <= n2):
        raise ValueError(f"fisher_exact: successes must lie in [0, n], got {a}/{n1} and {b}/{n2}")
    k, total = a + b, n1 + n2
    if total == 0:
        return 1.0
    weights = {x: math.comb(n1, x) * math.comb(n2, k - x) for x in range(max(0, k - n2), min(k, n1) + 1)}
    observed = weights[a]
    # Exact integers: ties with the observed table count in full, with no floating-point tolerance needed.
    return min(1.0, sum(w for w in weights.values() if w <= observed) / math.comb(total, k))


def reference_stream_arms(arms: list[Arm], streams: int) -> list[Arm]:
    """The arms with the reference (the first) repeated on noise streams 1..streams-1 right after it,
    named `NAME@S`, unless an arm already runs the reference's N and verifier on that stream."""
    if streams < 1:
        raise ValueError(f"reference_streams: expected at least 1, got {streams}")
    ref = arms[0]
    have = {(a.n, a.verifier_name, a.stream) for a in arms if a.prune is None and a.adaptive is None}
    extra = [Arm(f"{ref.name}@{s}", ref.n, ref.verifier_name, s) for s in range(1, streams)
             if (ref.n, ref.verifier_name, s) not in have]
    return [ref, *extra, *arms[1:]]


def compare(policy: str, arms: list[Arm], base: EvalConfig, out_dir: str | Path, log=None,
            reference_streams: int = 1) -> dict:
    """Runs every arm (each resumable) and writes `compare.json`. The first arm is the reference; with
    `reference_streams` > 1 it also runs on that many noise streams in all, pooled (see the module doc)."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    arms = reference_stream_arms(arms, reference_streams)
    names = [a.name for a in arms]
    if len(set(names)) != len(names):
        raise ValueError(f"arm: names must differ (each names its result file), got {names}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for arm in arms:
        config = dataclasses.replace(base, policy=policy, verifier=arm.verifier_name, n=arm.n,
                                     noise_stream=arm.stream, report=None, prune=arm.prune,
                                     adaptive=arm.adaptive)
        path = out / f"arm-{arm.name}.json"
        done = _finished(path, config)
        if done is not None:
            log(f"arm {arm.name}: already complete in {path}")
            results[arm.name] = done
            continue
        stream = f", noise stream {arm.stream}" if arm.stream else ""
        pruned = f", pruned {arm.prune}" if arm.prune else (f", adaptive {arm.adaptive}" if arm.adaptive else "")
        log(f"arm {arm.name}: N={arm.n}{pruned}, verifier {arm.verifier_name}{stream}")
        results[arm.name] = run_suite(config, path, progress=log)
    reference = arms[0].name
    table = []
    for arm in arms:
        summary = results[arm.name]["summary"]
        row = {"arm": arm.name, "n": arm.n, "verifier": arm.verifier_name, "noise_stream": arm.stream,
               **({"prune": arm.prune} if arm.prune else {}), **({"adaptive": arm.adaptive} if arm.adaptive else {}),
               "overall": summary["overall"],
               "per_task": {t: {k: s[k] for k in ("successes", "episodes", "success_rate", "wilson95")}
                            for t, s in summary["per_task"].items()}}
        if arm.name != reference:
            row["paired_vs_" + reference] = _paired(results[reference]["episodes"], results[arm.name]["episodes"])
        table.append(row)
    report = {"policy": policy, "reference": reference, "tasks": list(base.tasks), "episodes": base.episodes,
              "seed": base.seed, "arms": table}
    pooled = _pooled_reference(arms, results, list(base.tasks))
    if pooled is not None:
        report["pooled_reference"] = pooled
        for row in table:
            if row["arm"] not in pooled["arms"]:
                row["vs_pooled_reference"] = {
                    "p_value": fisher_exact(row["overall"]["successes"], row["overall"]["episodes"],
                                            pooled["overall"]["successes"], pooled["overall"]["episodes"]),
                    "per_task": {t: fisher_exact(row["per_task"][t]["successes"], row["per_task"][t]["episodes"],
                                                 pooled["per_task"][t]["successes"], pooled["per_task"][t]["episodes"])
                                 for t in base.tasks}}
    (out / "compare.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def _pooled_reference(arms: list[Arm], results: dict, tasks: list[str]) -> dict | None:
    """The reference's N and verifier pooled over every noise stream that ran (None with one stream)."""
    ref, pool, streams = arms[0], [], set()
    for a in arms:  # one arm per stream: the same stream twice is the same draw, not more evidence
        if ((a.n, a.verifier_name, a.prune, a.adaptive) == (ref.n, ref.verifier_name, ref.prune, ref.adaptive)
                and a.stream not in streams):
            pool.append(a)
            streams.add(a.stream)
    if len(pool) < 2:
        return None

    def group(key) -> dict:
        wins = sum(key(results[a.name]["summary"])["successes"] for a in pool)
        n = sum(key(results[a.name]["summary"])["episodes"] for a in pool)
        return {"successes": wins, "episodes": n, "success_rate": wins / n if n else 0.0,
                "wilson95": list(wilson_interval(wins, n))}

    return {"arms": [a.name for a in pool], "streams": [a.stream for a in pool],
            "overall": group(lambda s: s["overall"]),
            "per_task": {t: group(lambda s, t=t: s["per_task"][t]) for t in tasks}}


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
            "difference95": list(paired_difference_interval(len(gained), len(lost), len(other))),
            "gained_episodes": gained[:20], "lost_episodes": lost[:20], "stage_changed_episodes": staged[:20]}


def format_compare(report: dict) -> str:
    tasks = report["tasks"]
    pooled = report.get("pooled_reference")
    head = (f"{'arm':<10} {'N':>3} " + " ".join(f"{t:>22}" for t in [*tasks, "overall", "stage"])
            + "   vs " + report["reference"] + (f" (paired)   vs pooled {report['reference']}" if pooled else ""))
    lines = [head]

    def cell(s: dict) -> str:
        return f"{s['successes']:>3}/{s['episodes']:<3} [{s['wilson95'][0]:.2f},{s['wilson95'][1]:.2f}]"

    for row in report["arms"]:
        cells = [cell(row["per_task"][t]) for t in tasks] + [cell(row["overall"])]
        # Mean best stage: progress short of success (reached, grasped, handed over), for weak policies.
        cells.append(f"{row['overall']['mean_stage_reward']:.2f}")
        paired = row.get("paired_vs_" + report["reference"])
        extra = f"   +{paired['gained']} -{paired['lost']} (p={paired['p_value']:.3f})" if paired else ""
        if "vs_pooled_reference" in row:
            extra = f"{extra:<24}   p={row['vs_pooled_reference']['p_value']:.3f}"
        lines.append(f"{row['arm']:<10} {row['n']:>3} " + " ".join(f"{c:>22}" for c in cells) + extra)
        if pooled and row["arm"] == pooled["arms"][-1]:
            cells = [cell(pooled["per_task"][t]) for t in tasks] + [cell(pooled["overall"]), ""]
            name = f"{report['reference']} x{len(pooled['arms'])}"
            lines.append(f"{name:<10} {row['n']:>3} " + " ".join(f"{c:>22}" for c in cells)
                         + f"   (noise streams {', '.join(map(str, pooled['streams']))} pooled)")
    return "\n".join(lines)
