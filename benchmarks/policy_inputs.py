"""Which input does a policy act on: the cameras or the state? A swap test on recorded episodes.

    .venv/bin/python benchmarks/policy_inputs.py --policy default --dataset DIR --json build/policy_inputs.json

For frames at fixed times t of every episode, the policy's mean chunk (over the same fixed noises) is
computed from the episode's own observation, then again with the cameras taken from the next episode
at the same t (state kept), and with the state taken from it (cameras kept). The mean absolute change
(normalised action units) says how much each input moves the action; next to it, how much the
recorded chunks of the two episodes differ, i.e. how much the action *should* move. A policy whose
chunk does not change when the cameras are swapped at t=0, where every episode starts from the same
reset pose and only the scene differs, cannot be placing the arm by what it sees: it continues the
arm's motion from the state (a copycat policy) and fails closed loop.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default="default")
    parser.add_argument("--dataset", required=True, help="LeRobotDataset of at least two episodes")
    parser.add_argument("--times", default="0,10,20,40,80,120", help="frame indices to test")
    parser.add_argument("--noises", type=int, default=8, help="fixed noises averaged per chunk")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    from policies.data import load_dataset
    from policies.sampler import PolicySampler
    from policies.shipped import resolve_policy

    policy = resolve_policy(args.policy)
    sampler = PolicySampler(policy)
    m = sampler.manifest
    episodes = load_dataset(args.dataset).episodes
    if len(episodes) < 2:
        raise SystemExit(f"dataset: {args.dataset} has {len(episodes)} episode(s); the swap test needs two or more")
    noise = sampler.noise(args.noises, 0)
    h = m.chunk_length

    def chunk(obs):
        chunks, _ = sampler.candidates(obs, noise)
        return chunks.mean(0)

    def recorded(ep, t):
        return (ep.chunk(t, h) - sampler.action_mean) / sampler.action_std

    rows = []
    for t in (int(x) for x in args.times.split(",")):
        err, should, by_camera, by_state = [], [], [], []
        for i, ep in enumerate(episodes):
            other = episodes[(i + 1) % len(episodes)]
            if t >= min(len(ep), len(other)):
                continue
            own, theirs = ep.observation(t, m.cameras), other.observation(t, m.cameras)
            base = chunk(own)
            err.append(np.abs(base - recorded(ep, t)).mean())
            should.append(np.abs(recorded(other, t) - recorded(ep, t)).mean())
            by_camera.append(np.abs(chunk(replace(own, images=theirs.images)) - base).mean())
            by_state.append(np.abs(chunk(replace(own, state=theirs.state)) - base).mean())
        if err:
            rows.append({"t": t, "pairs": len(err), "error_vs_recorded": float(np.mean(err)),
                         "recorded_difference": float(np.mean(should)),
                         "change_cameras_swapped": float(np.mean(by_camera)),
                         "change_state_swapped": float(np.mean(by_state))})
    print(f"policy {policy}; {len(episodes)} episodes; mean |change| of the chunk, normalised action units")
    print(f"{'t':>5} {'error vs recorded':>18} {'recorded A vs B':>16} {'cameras swapped':>16} {'state swapped':>14}")
    for r in rows:
        print(f"{r['t']:>5} {r['error_vs_recorded']:>18.3f} {r['recorded_difference']:>16.3f} "
              f"{r['change_cameras_swapped']:>16.3f} {r['change_state_swapped']:>14.3f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"policy": str(policy), "dataset": args.dataset, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
