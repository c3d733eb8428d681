"""How often does a fine-tuned policy sample a pre-training mode, and do the verifiers pick them?

    .venv/bin/python benchmarks/pretraining_modes.py --policy P --corpus CORPUS --dataset FRESH \
        --verifiers cfn,rnd,knn,consensus,random --json build/pretraining_modes.json

`CORPUS` is the pre-training corpus of `taco artifacts --recipe taco` (its episodes carry their expert
mode in `meta/taco_episodes.jsonl`); `FRESH` holds clean episodes of the task that neither the policy
nor the verifiers saw (e.g. `taco record --task transfer_cube --episodes 10 --seed 210000`).

How a candidate is told apart: every candidate chunk is matched to its nearest neighbour among the
corpus frames of the same task, by the distance between (state, action chunk) pairs in the policy's
normalised units; the candidate counts as in an off-task mode when that neighbour comes from an
off-task episode (`no_handover`, `early_release`, `bar_lift`). Off-task and task episodes share their
first part (the approach and grasp are the same), so a share of task chunks is matched to off-task
episodes by chance; the recorded chunks of the fresh episodes measure that share (the "expert" row),
and the classifier is checked on corpus episodes held out of the index (half the episodes index, the
other half are classified; the accuracy on the frames where an off-task chunk differs from every task
chunk is printed).

For every `stride`-th frame of FRESH the policy samples N candidates; printed per row: the share of
candidates (uniform), of the verifier's picks, and of the recorded chunks in an off-task mode.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def _keys(ep, t_values, h, s_mean, s_std, a_mean, a_std):
    states = (ep.state[t_values] - s_mean) / s_std
    chunks = np.stack([(ep.chunk(t, h) - a_mean) / a_std for t in t_values])
    return states, chunks


class ModeIndex:
    """Nearest-neighbour mode labels for (state, chunk) pairs from a corpus's labelled episodes."""

    def __init__(self, states: np.ndarray, chunks: np.ndarray, labels: np.ndarray):
        self.keys = np.concatenate([states, chunks.reshape(len(chunks), -1)], axis=1).astype(np.float32)
        self.labels = labels
        self.sq = (self.keys ** 2).sum(axis=1)

    def label(self, state: np.ndarray, chunks: np.ndarray) -> np.ndarray:
        q = np.concatenate([np.broadcast_to(state, (len(chunks), state.shape[-1])),
                            chunks.reshape(len(chunks), -1)], axis=1).astype(np.float32)
        d = self.sq[None, :] - 2 * q @ self.keys.T
        return self.labels[np.argmin(d, axis=1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", required=True)
    parser.add_argument("--corpus", required=True, help="the pre-training corpus (data/broad)")
    parser.add_argument("--dataset", required=True, help="fresh clean episodes of the task")
    parser.add_argument("--task", default="transfer_cube")
    parser.add_argument("--verifiers", default="cfn,rnd,knn,consensus,random")
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--stride", type=int, default=10)
    parser.add_argument("--corpus-stride", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    from policies.data import load_dataset
    from policies.sampler import PolicySampler
    from policies.shipped import resolve_policy
    from sim.experts import OFF_TASK_MODES
    from sim.record import recorded_episodes
    from verifiers import load_verifier
    from verifiers.base import score_candidates
    from verifiers.shipped import resolve_verifier

    policy = resolve_policy(args.policy)
    sampler = PolicySampler(policy)
    m = sampler.manifest
    h = m.chunk_length
    n_ = m.normalization
    norm = (np.asarray(n_.state_mean, np.float32), np.asarray(n_.state_std, np.float32), sampler.action_mean,
            sampler.action_std)
    names = args.verifiers.split(",") if args.verifiers else []
    verifiers = {name: load_verifier(resolve_verifier(name, policy)) for name in names}

    rows = recorded_episodes(args.corpus)
    corpus = load_dataset(args.corpus)
    picked = [i for i, r in enumerate(rows) if r["task"] == args.task]
    split = {"index": [], "held out": []}
    for j, i in enumerate(picked):
        split["index" if j % 2 == 0 else "held out"].append(i)
    parts = {}
    for name, episodes in split.items():
        states, chunks, labels = [], [], []
        for i in episodes:
            ep = corpus.episodes[i]
            ts = np.arange(0, len(ep), args.corpus_stride)
            s, c = _keys(ep, ts, h, *norm)
            states.append(s)
            chunks.append(c)
            labels += [rows[i]["mode"] in OFF_TASK_MODES] * len(ts)
        parts[name] = np.concatenate(states), np.concatenate(chunks), np.array(labels)
    index = ModeIndex(*parts["index"])
    # The classifier on held-out corpus episodes.
    hs, hc, hl = parts["held out"]
    got = np.concatenate([index.label(hs[i], hc[i:i + 1]) for i in range(len(hs))])
    check = {"frames": len(hl), "task_frames_called_off_task": float(got[~hl].mean()) if (~hl).any() else 0.0,
             "off_task_frames_called_off_task": float(got[hl].mean()) if hl.any() else 0.0}

    fresh = load_dataset(args.dataset)
    rng = np.random.default_rng(args.seed)
    uniform, expert = [], []
    picks = {name: [] for name in names}
    for ep in fresh.episodes:
        for t in range(0, len(ep), args.stride):
            seed = int(rng.integers(2**62))
            chunks, features = sampler.candidates(ep.observation(t, m.cameras), sampler.noise(args.n, seed))
            state = (ep.state[t] - norm[0]) / norm[1]
            off = index.label(state, chunks)
            uniform.append(off.mean())
            target = (ep.chunk(t, h) - norm[2]) / norm[3]
            expert.append(float(index.label(state, target[None])[0]))
            for name, verifier in verifiers.items():
                scores = score_candidates(verifier, features, chunks, seed)
                picks[name].append(float(off[int(np.argmax(scores))]))
    frames = len(uniform)
    table = [{"row": "expert (recorded chunks)", "off_task": float(np.mean(expert))},
             {"row": "uniform (all candidates)", "off_task": float(np.mean(uniform))},
             *[{"row": name, "off_task": float(np.mean(picks[name]))} for name in names]]
    print(f"classifier on {check['frames']} held-out corpus frames: off-task frames called off-task "
          f"{check['off_task_frames_called_off_task']:.2f}, task frames called off-task "
          f"{check['task_frames_called_off_task']:.2f}")
    print(f"{frames} frames of {len(fresh.episodes)} fresh episodes, N={args.n}: share in an off-task mode")
    for row in table:
        print(f"  {row['row']:<26} {row['off_task']:.3f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"policy": policy, "corpus": args.corpus, "dataset": args.dataset,
                                               "n": args.n, "frames": frames, "classifier": check, "rows": table},
                                              indent=2) + "\n")


if __name__ == "__main__":
    main()
