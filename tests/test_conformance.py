"""Every registered policy kind passes the same spec, finiteness and determinism checks."""

import numpy as np
import pytest

from policies import make_example_observation
from policies.registry import policy_kinds
from runtime import Engine, EngineConfig


@pytest.mark.parametrize("kind", sorted(policy_kinds()))
@pytest.mark.parametrize("sampler", ["unrolled", "stepped"])
def test_policy_kind_conformance(exported, kind, sampler):
    ex = exported(kind, sampler)
    m = ex.bundle.manifest
    assert m.kind == kind and m.sampler == sampler
    engine = Engine(ex.bundle, config=EngineConfig(return_candidates=True))
    for seed in range(3):
        obs = make_example_observation(m, seed=seed, image_size=(480, 640))
        d = engine.infer(obs, n=6, seed=seed)
        # Spec: shapes and dtypes as the manifest states.
        assert d.chunk.shape == (m.chunk_length, m.action_dim) and d.chunk.dtype == np.float32
        assert d.candidates.shape == (6, m.chunk_length, m.action_dim)
        assert d.features.shape == (6, m.feature_dim) and d.features.dtype == np.float32
        # Finite.
        assert np.isfinite(d.candidates).all() and np.isfinite(d.features).all()
        # Determinism, and candidates differ from each other.
        again = Engine(ex.bundle, config=EngineConfig(return_candidates=True)).infer(obs, n=6, seed=seed)
        np.testing.assert_array_equal(again.candidates, d.candidates)
        assert np.abs(d.candidates[0] - d.candidates[1]).max() > 1e-4
        # Features vary across candidates (the verifier has something to tell apart).
        assert np.std(d.features, axis=0).max() > 1e-4


@pytest.mark.workstation
def test_registry_lists_both_kinds():
    kinds = policy_kinds()
    assert {"flow", "diffusion"} <= set(kinds)
    for kind in kinds.values():
        assert kind.model_class().__name__.lower().startswith(kind.name)
