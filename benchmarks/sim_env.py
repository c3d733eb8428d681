"""Simulation speed: our env step against gym-aloha's AlohaTransferCube-v0, and episodes per minute.

    .venv/bin/python benchmarks/sim_env.py --json build/sim_env.json [--quick]

Step times are medians over interleaved blocks (ours, theirs, ours, ...) in one process, so machine
noise hits both. gym-aloha's env renders three 480x640 cameras every step; ours renders the default
policy's one 96x128 camera. Episodes per minute come from `taco eval` runs of a default-size policy
bundle (random weights: the episodes run to their step limit) with 1 and with 2 worker processes.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402


def time_steps(env_step, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        t0 = time.perf_counter()
        env_step()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    blocks, per_block = (3, 10) if args.quick else (6, 25)

    import gymnasium as gym
    import gym_aloha  # noqa: F401  (registers the envs)

    from sim.env import AlohaSimEnv

    ours = AlohaSimEnv("transfer_cube", stop_on_success=False, max_steps=10**6)
    home = ours.reset(0).state.astype(np.float64)
    theirs = gym.make("gym_aloha/AlohaTransferCube-v0", obs_type="pixels_agent_pos")
    theirs.reset(seed=0)
    counter = [0]

    def ours_every(k):
        def step():
            obs, *_ = ours.step(home)
            counter[0] += 1
            if counter[0] % k == 0:
                obs.images["cam_high"]  # the camera frame is rendered when a controller reads it
        return step

    # Ours: the camera read every step (a recorder), every 8th step (a policy replanning every 8 actions,
    # the evaluation default), and never (physics only).
    variants = {"ours_read_every_step": ours_every(1), "ours_read_every_8th": ours_every(8),
                "ours_physics_only": ours_every(10**9), "gym_aloha": lambda: theirs.step(home)}
    times = {name: [] for name in variants}
    for _ in range(blocks):
        for name, fn in variants.items():
            times[name] += time_steps(fn, per_block)
    ours.close()
    theirs.close()
    step = {f"{name}_ms_p50": float(np.median(v)) for name, v in times.items()}
    step["ours_read_every_8th_ms_mean"] = float(np.mean(times["ours_read_every_8th"]))
    anchor = step["gym_aloha_ms_p50"]
    step["speedup_read_every_step"] = anchor / step["ours_read_every_step_ms_p50"]
    step["speedup_read_every_8th"] = anchor / step["ours_read_every_8th_ms_mean"]
    print(f"gym-aloha AlohaTransferCube-v0 step (3 cameras 480x640):  {anchor:7.2f} ms  (anchor)")
    print(f"ours, cam_high 96x128 read every step:                  {step['ours_read_every_step_ms_p50']:7.2f} ms"
          f"  {step['speedup_read_every_step']:5.1f}x faster")
    print(f"ours, read every 8th step (policy replanning, mean):    {step['ours_read_every_8th_ms_mean']:7.2f} ms"
          f"  {step['speedup_read_every_8th']:5.1f}x faster")
    print(f"ours, physics only:                                     {step['ours_physics_only_ms_p50']:7.2f} ms")

    from policies.config import make_config
    from policies.export import export_bundle
    from policies.models import build_policy
    from sim.evaluate import EvalConfig, run_suite

    bundle = export_bundle(build_policy(make_config("default", "flow")), Path(tempfile.mkdtemp()) / "flow")
    episodes = 4 if args.quick else 8
    rates = {}
    for workers in (1, 2):
        config = EvalConfig(policy=str(bundle.path), tasks=("transfer_cube",), episodes=episodes, workers=workers,
                            max_steps=100 if args.quick else 200)
        report = run_suite(config, progress=lambda msg: None)
        rates[workers] = report["run"]["episodes_per_minute"]
        print(f"policy episodes ({config.max_steps} steps, N=1, replan every 8): {workers} worker(s) "
              f"{rates[workers]:.1f} episodes/min")
    result = {"step": step, "episodes_per_minute": {str(k): v for k, v in rates.items()},
              "episode_steps": 100 if args.quick else 200, "cores": os.cpu_count()}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
