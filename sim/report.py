"""The evaluation report folder: PNG plots and the filmed episodes, with an index in Markdown."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from policies.extras import require


def write_report(report: dict, out: Path) -> list[Path]:
    """Writes success, stage, latency and episode-length plots plus `index.md`; returns the files."""
    matplotlib = require("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    per_task = report["summary"]["per_task"]
    episodes = report["episodes"]
    tasks = list(per_task)
    files = []

    fig, ax = plt.subplots(figsize=(6, 3.5))
    rates = [per_task[t]["success_rate"] for t in tasks]
    err = np.clip(np.array([[r - per_task[t]["wilson95"][0], per_task[t]["wilson95"][1] - r]
                            for t, r in zip(tasks, rates)]).T, 0, None)
    ax.bar(tasks, rates, yerr=err, capsize=6, color="#4c72b0")
    for i, t in enumerate(tasks):
        ax.text(i, 0.02, f"{per_task[t]['successes']}/{per_task[t]['episodes']}", ha="center", color="white")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("success rate (Wilson 95%)")
    ax.set_title(f"policy: {Path(report['config']['policy']).name}, N={report['config']['n']}")
    files.append(_save(fig, out / "success_rate.png"))

    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.8 / max(1, len(tasks))
    for i, t in enumerate(tasks):
        best = [e["best_stage"] for e in episodes if e["task"] == t]
        top = per_task[t].get("episodes", 0) and max(e["max_stage"] for e in episodes if e["task"] == t)
        counts = np.bincount(best, minlength=top + 1)
        ax.bar(np.arange(top + 1) + i * width, counts, width=width, label=t)
    ax.set_xlabel("best stage reached")
    ax.set_ylabel("episodes")
    ax.legend()
    files.append(_save(fig, out / "stages.png"))

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for t in tasks:
        steps = [e["steps"] for e in episodes if e["task"] == t]
        ax.hist(steps, bins=20, alpha=0.6, label=t)
    ax.set_xlabel("episode length (control steps)")
    ax.set_ylabel("episodes")
    ax.legend()
    files.append(_save(fig, out / "episode_length.png"))

    latencies = [v for e in episodes for v in e["latency_ms"]]
    if latencies:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.hist(latencies, bins=40, color="#dd8452")
        p50, p99 = np.percentile(latencies, [50, 99])
        ax.axvline(p50, color="k", linestyle="--", label=f"p50 {p50:.1f} ms")
        ax.axvline(p99, color="r", linestyle=":", label=f"p99 {p99:.1f} ms")
        ax.set_xlabel("inference latency per replanning step (ms)")
        ax.legend()
        files.append(_save(fig, out / "latency.png"))

    modes = {t: per_task[t]["by_mode"] for t in tasks if "by_mode" in per_task[t]}
    if modes:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        names = sorted({m for v in modes.values() for m in v})
        width = 0.8 / len(modes)
        for i, (t, by_mode) in enumerate(modes.items()):
            ax.bar(np.arange(len(names)) + i * width, [by_mode.get(m, {}).get("success_rate", np.nan) for m in names],
                   width=width, label=t)
        ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("success rate")
        ax.set_title("scripted expert: success by behaviour mode")
        ax.legend()
        files.append(_save(fig, out / "modes.png"))

    videos = [e["video"] for e in episodes if e.get("video")]
    lines = ["# Evaluation report", "", f"policy `{report['config']['policy']}`, verifier "
             f"`{report['config']['verifier']}`, N={report['config']['n']}, seed {report['config']['seed']}", "",
             "| task | success | Wilson 95% | mean stage |", "|---|---|---|---|"]
    for t in tasks:
        s = per_task[t]
        lines.append(f"| {t} | {s['successes']}/{s['episodes']} | {s['wilson95'][0]:.2f}-{s['wilson95'][1]:.2f} "
                     f"| {s['mean_stage_reward']:.2f} |")
    lines += ["", *[f"![{f.stem}]({f.name})" for f in files], "", "Videos:", *[f"- {Path(v).relative_to(out)}"
                                                                             for v in videos]]
    (out / "index.md").write_text("\n".join(lines) + "\n")
    return files


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
