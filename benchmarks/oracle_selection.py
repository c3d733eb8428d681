"""The ceiling of best-of-N on a policy: closed-loop success when each step picks, among the N candidates,
the one closest to the scripted expert's plan (privileged: the plan knows the object poses).

    .venv/bin/python benchmarks/oracle_selection.py --policy default --n 1,4,16 --episodes 20 --json build/oracle.json

If this oracle succeeds where N=1 does not, the policy's candidates contain good chunks and a verifier has
something to find; if it fails too, no verifier can help. Distance = mean absolute joint difference
(robot units) to the expert's clean-mode plan over the chunk. Seeds start at 100000 like `taco demo`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default="default")
    parser.add_argument("--task", default="transfer_cube")
    parser.add_argument("--n", default="1,4,16", help="candidate counts, comma-separated")
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--seed", type=int, default=100_000)
    parser.add_argument("--execute", type=int, default=8)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    from policies.shipped import resolve_policy
    from runtime.engine import Engine, EngineConfig
    from sim.env import AlohaSimEnv
    from sim.experts import ScriptedExpert

    engine = Engine(resolve_policy(args.policy), config=EngineConfig(return_candidates=True))
    h = engine.manifest.chunk_length
    env = AlohaSimEnv(args.task, cameras=engine.manifest.cameras)
    expert = ScriptedExpert(args.task)
    rows = []
    for n in (int(v) for v in args.n.split(",")):
        successes, stages = 0, []
        for seed in range(args.seed, args.seed + args.episodes):
            obs = env.reset(seed)
            plan, _ = expert.actions(env.object_poses, seed, "clean")
            done, t, chunk = False, 0, None
            while not done:
                if t % args.execute == 0:
                    decision = engine.infer(obs, n=n, seed=seed * 1000 + t)
                    reference = plan[np.minimum(np.arange(t, t + h), len(plan) - 1)]
                    distance = np.abs(decision.candidates - reference[None]).mean(axis=(1, 2))
                    chunk = decision.candidates[int(np.argmin(distance))]
                obs, _, done, info = env.step(chunk[t % args.execute].astype(np.float64))
                t += 1
            successes += info["success"]
            stages.append(env.best_stage)
        rows.append({"n": n, "successes": int(successes), "episodes": args.episodes,
                     "mean_stage": float(np.mean(stages))})
        print(f"oracle pick, N={n:>3}: {successes}/{args.episodes} successes, mean stage {np.mean(stages):.2f}",
              flush=True)
    env.close()
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"policy": args.policy, "task": args.task, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
