"""Torch definitions of the chunk policies (needs the `train` extra)."""

from policies.extras import require

require("torch")

from policies.models.policy import ChunkPolicy, DiffusionPolicy, FlowPolicy, build_policy  # noqa: E402

__all__ = ["ChunkPolicy", "DiffusionPolicy", "FlowPolicy", "build_policy"]
