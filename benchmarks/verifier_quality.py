"""Does a verifier's score pick the candidate closest to what the expert did? Offline, on fresh episodes.

    .venv/bin/python benchmarks/verifier_quality.py --policy default --verifiers cfn,rnd,knn,consensus,random \
        --dataset DIR --json build/verifier_quality.json

For every `stride`-th frame of the dataset's episodes (record fresh ones the verifiers never saw, e.g.
`taco record --seed 200000`), the policy samples N candidates; each candidate's distance to the recorded
chunk (L2 per action, normalised units) measures how expert-like it is. Per verifier: the mean
distance of its pick, next to a uniform pick (the mean over candidates) and the oracle (the closest),
and the Spearman rank correlation between score and closeness within a frame, averaged over frames.
A verifier that helps has a pick distance below the uniform one and a positive correlation.

It also prints the regime the policy samples in: the spread of its N candidates within a frame (std over
candidates, normalised units, root mean square over the chunk's entries) next to the spread of the
recorded chunks across frames. TACO's pseudo-count can only tell candidates apart when the first is not
negligible next to the second (its premise: some samples leave the data).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    if ra.std() == 0 or rb.std() == 0:
        return 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default="default")
    parser.add_argument("--verifiers", default="cfn,rnd,knn,consensus,random")
    parser.add_argument("--dataset", required=True, help="LeRobotDataset of episodes to score against")
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--stride", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    from policies.data import load_dataset
    from policies.sampler import PolicySampler
    from policies.shipped import resolve_policy
    from verifiers import load_verifier
    from verifiers.base import score_candidates
    from verifiers.shipped import resolve_verifier

    policy = resolve_policy(args.policy)
    sampler = PolicySampler(policy)
    names = args.verifiers.split(",")
    verifiers = {name: load_verifier(resolve_verifier(name, policy)) for name in names}
    m = sampler.manifest
    data = load_dataset(args.dataset)
    rng = np.random.default_rng(args.seed)
    picks = {name: [] for name in names}
    rho = {name: [] for name in names}
    uniform, oracle, spread, targets = [], [], [], []
    for ep in data.episodes:
        for t in range(0, len(ep), args.stride):
            seed = int(rng.integers(2**62))
            chunks, features = sampler.candidates(ep.observation(t, m.cameras), sampler.noise(args.n, seed))
            target = (ep.chunk(t, m.chunk_length) - sampler.action_mean) / sampler.action_std
            dist = np.sqrt(((chunks - target) ** 2).sum(axis=2)).mean(axis=1)
            uniform.append(dist.mean())
            spread.append(np.sqrt(chunks.var(axis=0).mean()))
            targets.append(target)
            oracle.append(dist.min())
            for name, verifier in verifiers.items():
                scores = score_candidates(verifier, features, chunks, seed)
                picks[name].append(dist[int(np.argmax(scores))])
                rho[name].append(_spearman(scores, -dist))
    frames = len(uniform)
    data_spread = float(np.sqrt(np.stack(targets).var(axis=0).mean()))
    rows = [{"verifier": name, "pick_distance": float(np.mean(picks[name])),
             "spearman_score_vs_closeness": float(np.mean(rho[name])),
             "better_than_uniform_frames": float(np.mean(np.array(picks[name]) < np.array(uniform)))}
            for name in names]
    print(f"{frames} frames of {len(data.episodes)} episodes, N={args.n}; distance = L2 per action to the recorded "
          f"chunk (normalised)")
    print(f"candidate spread within a frame {np.mean(spread):.3f}; recorded chunks' spread across frames "
          f"{data_spread:.3f}")
    print(f"{'pick':<10} {'distance':>9} {'rho(score, closeness)':>22} {'frames better than uniform':>27}")
    print(f"{'uniform':<10} {np.mean(uniform):>9.3f}")
    print(f"{'oracle':<10} {np.mean(oracle):>9.3f}")
    for r in rows:
        print(f"{r['verifier']:<10} {r['pick_distance']:>9.3f} {r['spearman_score_vs_closeness']:>22.3f} "
              f"{r['better_than_uniform_frames']:>27.2f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"policy": policy, "dataset": args.dataset, "n": args.n,
                                               "frames": frames, "uniform_distance": float(np.mean(uniform)),
                                               "oracle_distance": float(np.mean(oracle)),
                                               "candidate_spread": float(np.mean(spread)),
                                               "data_spread": data_spread, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
