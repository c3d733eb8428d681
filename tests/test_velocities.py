"""The flow sampler's Euler velocities as a graph output (policies.velocities), and their roughness."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from policies import make_example_observation
from policies.errors import BundleError
from policies.sampler import PolicySampler
from policies.velocities import VELOCITIES, euler_velocities, executed_rows, roughness, with_velocities


def _sample(sampler: PolicySampler, velocities: bool):
    m = sampler.manifest
    observation = make_example_observation(m, seed=3, image_size=(32, 32))
    prefix = sampler.encode(sampler.preprocess(observation))
    noise, step = sampler.draw(5, seed=11)
    return noise, sampler.sample(prefix, noise, step, velocities=velocities)


def test_the_exposed_velocities_leave_the_chunks_bit_for_bit_and_integrate_to_them(flow):
    plain, exposed = PolicySampler(flow.path), PolicySampler(flow.path)
    exposed.expose_velocities()
    assert VELOCITIES in {o.name for o in exposed.sampler.get_outputs()}
    assert VELOCITIES not in {o.name for o in plain.sampler.get_outputs()}
    noise, (chunks, features) = _sample(plain, velocities=False)
    _, (chunks2, features2, velocities) = _sample(exposed, velocities=True)
    np.testing.assert_array_equal(chunks, chunks2)
    np.testing.assert_array_equal(features, features2)
    k = flow.bundle.manifest.num_steps
    assert velocities.shape == (5, k, *noise.shape[1:])
    # Euler from the noise with step 1/K: x_K = noise - sum_k u_k / K is the chunk the graph returned.
    np.testing.assert_allclose(noise - velocities.sum(axis=1) / k, chunks, atol=1e-5)
    assert np.abs(np.diff(velocities, axis=1)).max() > 1e-4  # the field changes along the way


def test_a_stepped_sampler_gives_the_same_velocities_up_to_the_step_size(exported):
    unrolled, stepped = PolicySampler(exported("flow").path), PolicySampler(exported("flow", "stepped").path)
    unrolled.expose_velocities()
    stepped.expose_velocities()
    _, (chunks, _, u) = _sample(unrolled, velocities=True)
    _, (chunks2, _, steps) = _sample(stepped, velocities=True)
    np.testing.assert_allclose(chunks2, chunks, atol=1e-5)
    k = unrolled.manifest.num_steps
    np.testing.assert_allclose(steps * k, u, atol=1e-4)
    assert roughness(steps[0]) == pytest.approx(roughness(u[0]), rel=1e-3)


def test_velocities_are_refused_where_there_are_none(exported, flow):
    with pytest.raises(BundleError, match="diffusion policy: only a flow sampler has velocities"):
        PolicySampler(exported("diffusion").path).expose_velocities()
    with pytest.raises(BundleError, match="velocities asked for before expose_velocities"):
        _sample(PolicySampler(flow.path), velocities=True)
    model = onnx.load(str(flow.path / "sampler.onnx"))
    names = euler_velocities(model.graph)
    assert len(names) == flow.bundle.manifest.num_steps
    with pytest.raises(BundleError, match=f"Euler chain has {len(names)} steps, the manifest says {len(names) + 1}"):
        with_velocities(model, len(names) + 1)
    # A graph whose chunks are not reached from the noise by Euler steps: the last step rewired to a product.
    broken = onnx.ModelProto()
    broken.CopyFrom(model)
    last = next(n for n in broken.graph.node if "chunks" in n.output)
    last.op_type = "Mul"
    with pytest.raises(BundleError, match="is not an Euler step"):
        euler_velocities(broken.graph)


def test_roughness_known_values():
    u = np.ones((10, 4, 3))
    assert roughness(u) == 0.0  # a field that does not change along the integration
    alternating = np.stack([(-1.0) ** t * np.ones((4, 3)) for t in range(10)])
    # p = 9: each of the 8 differences has twice the norm of a velocity, over 9 velocities: 9 * 8 * 2 / 9.
    assert roughness(alternating) == pytest.approx(16.0)
    ramp = np.stack([np.full((4, 3), float(t + 1)) for t in range(10)])
    assert roughness(ramp) == pytest.approx(9 * 8 / sum(range(1, 10)))
    # Positions not scored (frozen by RTC, or not executed) do not count: only position 0 changes here.
    odd = np.ones((10, 4, 3))
    odd[::2, 0] = -1.0
    assert roughness(odd, np.array([False, True, True, True])) == 0.0 and roughness(odd) > 0.0
    assert np.isnan(roughness(np.zeros((10, 4, 3))))
    with pytest.raises(ValueError, match="prefix"):
        roughness(u, prefix=1)


def test_the_scored_rows_are_those_that_execute_less_the_frozen_ones():
    # OpenTau's executed window is [delay, delay + n_action_steps), not [0, n_action_steps).
    np.testing.assert_array_equal(executed_rows(8, delay=2, window=3), [0, 0, 1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(executed_rows(4), [1, 1, 1, 1])
    weights = np.array([1.0, 1.0, 1.0, 0.5, 0.2, 0.0, 0.0, 0.0], np.float32)  # a delay of 2, frozen through 2
    np.testing.assert_array_equal(executed_rows(8, delay=2, window=4, weights=weights), [0, 0, 0, 1, 1, 1, 0, 0])
