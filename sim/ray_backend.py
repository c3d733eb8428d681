"""Runs evaluation episodes on a Ray cluster (the `ray` extra), for suites that outgrow one machine.

Connects to the cluster named by the RAY_ADDRESS environment variable, or starts a local Ray
instance with `workers` CPUs. Each Ray actor keeps one environment and controller per task, as the
local worker processes do, so results are the same episode for episode. Every node needs this
package installed with the `sim` extra (and the bundles at the same paths).
"""

from __future__ import annotations

import os

from policies.extras import require


def run_on_ray(config, items):
    """Yields episode records as they finish."""
    ray = require("ray")
    from sim.episodes import init_worker, run_episode

    started_here = not ray.is_initialized()
    if started_here:
        address = os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=config.workers, include_dashboard=False, log_to_driver=False,
                     configure_logging=False, runtime_env={"env_vars": {"MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}})

    @ray.remote(num_cpus=1)
    class EpisodeWorker:
        def __init__(self, cfg):
            init_worker(cfg)

        def run(self, task, index):
            return run_episode(task, index)

    try:
        from ray.util import ActorPool

        pool = ActorPool([EpisodeWorker.remote(config) for _ in range(config.workers)])
        yield from pool.map_unordered(lambda actor, item: actor.run.remote(*item), items)
    finally:
        if started_here:
            ray.shutdown()
