"""`taco demo` (`make demo`, the main job): the simulation suite on the shipped default policy, without
and with its verifier, on the same seeds; prints the table and writes a report.

    taco demo [--verifier best] [--n N] [--episodes 100] [--out build/demo] [--json PATH] [--quick]

`best` is the verifier recorded in the policy bundle as its best (`taco best-verifier`, with the
comparison that showed it), at the N it was recorded with unless `--n` says otherwise. The demo ends
with one line saying what the verifier did on these seeds: episodes gained and lost against N=1, the
net, McNemar's p and a 95% interval of the difference in success rate.

The report folder holds `compare.json`, a success plot with Wilson intervals, the paired outcome
(episodes the verifier won and lost), and the videos of one episode where the verifier changed the
outcome (or, when no success changed, the best stage reached), filmed in both arms (same seed, so the
policy saw the same scene).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from sim.compare import Arm, compare, format_compare
from sim.evaluate import EvalConfig, run_suite


# The verifier shown when the policy records no best one (`taco best-verifier` found none beating N=1).
FALLBACK_VERIFIER = "cfn"


@dataclass(frozen=True)
class DemoConfig:
    policy: str = "default"
    verifier: str = "best"
    # Candidates in the verifier arm; None: the N recorded with the best verifier (else 16).
    n: int | None = None
    tasks: tuple[str, ...] = ("transfer_cube",)
    # 100: a gain of 10-15 points on a policy at 70% shows against McNemar's test; 20 would not.
    episodes: int = 100
    # Evaluation seeds start here: the held-out range (600000-) that no choice of policy, verifier or N was
    # tuned on (those used 100000-), far from the training episodes (0-) and the value logs (400000-).
    seed: int = 600_000
    workers: int = 2
    max_steps: int | None = None
    out: str = "build/demo"


def run_demo_suite(config: DemoConfig, log=None) -> dict:
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    from policies.shipped import resolve_policy
    from verifiers.best import describe_best
    from verifiers.shipped import best_verifier, resolve_verifier

    out = Path(config.out)
    verifier, n, best = config.verifier, config.n, None
    if verifier == "best":
        policy = resolve_policy(config.policy)
        best = best_verifier(policy)
        if best is None:
            # Nothing has beaten N=1 on this policy yet: show the pseudo-count, and say so.
            verifier = FALLBACK_VERIFIER
            log(f"no best verifier is recorded for {config.policy} (none has beaten its pooled N=1): "
                f"showing {verifier}")
        else:
            resolve_verifier("best", policy)  # the recorded bundle must be there
            verifier, n = best["name"], n or best["n"]
            log(f"best verifier of {config.policy}: {describe_best(best)}")
    n = n or 16
    # A shipped verifier is named by its kind; a bundle path by its folder name.
    name = verifier if "/" not in verifier else Path(verifier).name
    arms = [Arm("none", 1), Arm(name, n, verifier)]
    base = EvalConfig(policy=config.policy, tasks=config.tasks, episodes=config.episodes, seed=config.seed,
                      workers=config.workers, max_steps=config.max_steps)
    report = compare(base.policy, arms, base, out, log=log)
    plots = _plot(report, out)
    paired = report["arms"][1]["paired_vs_none"]
    changed = [(t, s, "changed the outcome (gained)") for t, s in paired["gained_episodes"]] + \
              [(t, s, "changed the outcome (lost)") for t, s in paired["lost_episodes"]]
    if not changed:
        # No success changed hands: film the episode whose best stage the verifier changed most.
        changed = [(t, s, f"changed the best stage ({a} -> {b})") for t, s, a, b in
                   paired.get("stage_changed_episodes", [])[:1]]
    videos = []
    # Only this run's videos in the report folder (an earlier run may have filmed another arm or seed).
    shutil.rmtree(out / "videos", ignore_errors=True)
    if changed:
        task, seed, how = changed[0]
        for arm in arms:
            film = dataclasses.replace(base, tasks=(task,), episodes=1, seed=seed, workers=1, n=arm.n,
                                       verifier=arm.verifier_name, report=str(out / f"film-{arm.name}"),
                                       video_episodes=1)
            record = run_suite(dataclasses.replace(film, policy=base.policy), None, progress=lambda m: None)
            episode = record["episodes"][0]
            video = out / "videos" / f"{task}-seed{seed}-{arm.name}.mp4"
            video.parent.mkdir(parents=True, exist_ok=True)
            Path(episode["video"]).replace(video)
            shutil.rmtree(film.report)  # the one-episode report around the video is not needed
            videos.append({"arm": arm.name, "task": task, "seed": seed, "success": episode["success"],
                           "best_stage": episode["best_stage"], "how": how, "path": str(video)})
        log(f"filmed {task} seed {seed}, where the verifier {how}: "
            + ", ".join(f"{v['arm']} {'success' if v['success'] else 'failure'}" for v in videos))
    report["videos"] = videos
    report["best_verifier"] = best
    report["verdict"] = verdict(report)
    report["summary"] = {"success": {row["arm"]: row["overall"]["success_rate"] for row in report["arms"]}}
    _write_index(report, out, plots)
    (out / "compare.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def verdict(report: dict) -> str:
    """One line: what the verifier arm did against N=1 on the demo's seeds."""
    ref, arm = report["arms"][0], report["arms"][1]
    paired = arm["paired_vs_" + report["reference"]]
    gained, lost = paired["gained"], paired["lost"]
    low, high = paired["difference95"]
    a, b = arm["overall"], ref["overall"]
    return (f"{arm['arm']} at N={arm['n']} against N=1 on the same {b['episodes']} episodes: gained {gained}, lost "
            f"{lost}, net {gained - lost:+d} ({a['successes']}/{a['episodes']} against "
            f"{b['successes']}/{b['episodes']}; "
            f"McNemar p={paired['p_value']:.2g}; success difference {(gained - lost) / b['episodes']:+.2f}, "
            f"95% interval [{low:+.2f}, {high:+.2f}])")


def _plot(report: dict, out: Path) -> list[Path]:
    from policies.extras import require

    matplotlib = require("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = report["arms"]
    names = [f"{r['arm']} (N={r['n']})" for r in rows]
    rates = np.array([r["overall"]["success_rate"] for r in rows])
    ci = np.array([r["overall"]["wilson95"] for r in rows])
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.bar(names, rates, yerr=np.clip(np.stack([rates - ci[:, 0], ci[:, 1] - rates]), 0, None), capsize=8,
           color=["#8c8c8c", "#4c72b0", "#55a868", "#c44e52", "#8172b2"][: len(rows)])
    for i, r in enumerate(rows):
        ax.text(i, ci[i, 1] + 0.03, f"{r['overall']['successes']}/{r['overall']['episodes']}", ha="center")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("success rate (Wilson 95%)")
    ax.set_title(f"{', '.join(report['tasks'])}: same {report['episodes']} seeds per arm")
    path = out / "success_by_arm.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def _write_index(report: dict, out: Path, plots: list[Path]) -> None:
    lines = ["# taco demo", "", f"policy `{report['policy']}`", "", f"**{report['verdict']}**", "", "```",
             format_compare(report), "```", "",
             *[f"![{p.stem}]({p.name})" for p in plots], ""]
    if report["videos"]:
        lines.append(f"Episode where the verifier {report['videos'][0]['how']} (same seed in both arms):")
        lines += [f"- {v['arm']}: {'success' if v['success'] else 'failure'}, best stage {v['best_stage']} — "
                  f"{Path(v['path']).relative_to(out)}" for v in report["videos"]]
    else:
        lines.append("No episode changed outcome or best stage between the arms, so none was filmed.")
    (out / "index.md").write_text("\n".join(lines) + "\n")
