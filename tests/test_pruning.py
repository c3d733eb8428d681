"""Pruned best-of-N (policies.pruning, EngineConfig.prune): every candidate runs k steps, the best m the rest."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from policies import make_example_observation
from policies.errors import BundleError
from policies.pruning import Prune, cut_sampler
from policies.sampler import PolicySampler
from policies.velocities import euler_chain
from runtime.engine import BatchItem, Engine, EngineConfig


class _Nearest:
    """A verifier that prefers the candidate whose chunk is nearest a fixed target: a ranking that a wrong
    candidate order, a scrambled pruned row or a chunk finished from the wrong x would all change."""

    name, feature_dim, policy_fingerprint, takes_chunks = "nearest", None, None, True

    def __init__(self, target: np.ndarray):
        self.target = target

    def score(self, features, chunks=None):
        return -np.abs(chunks - self.target).mean(axis=(1, 2)).astype(np.float32)


def _prefix(sampler: PolicySampler, seed: int = 3):
    observation = make_example_observation(sampler.manifest, seed=seed, image_size=(32, 32))
    return observation, sampler.encode(sampler.preprocess(observation))


@pytest.mark.parametrize("mode", ["unrolled", "stepped"])
def test_the_kept_candidates_finish_as_the_whole_sampler_would_bit_for_bit(exported, mode):
    sampler = PolicySampler(exported("flow", mode).path)
    k = 2
    sampler.prepare_pruning(Prune(k, 3))
    _, prefix = _prefix(sampler)
    noise = sampler.noise(6, seed=5)
    chunks, features = sampler.sample(prefix, noise)
    x_k, guess = sampler.prune_head(prefix, noise, k)
    finished, finished_features = sampler.finish(prefix, x_k, k, k)
    np.testing.assert_array_equal(finished, chunks)
    np.testing.assert_array_equal(finished_features, features)
    # The prediction carries x_{k-1}'s velocity to the last step; from k = K-1 it is x_{K-1} itself, and
    # the last step on it gives the chunks exactly.
    last = sampler.manifest.num_steps - 1
    sampler.prepare_pruning(Prune(last, 1))
    x_last, predicted_start = sampler.prune_head(prefix, noise, last)
    np.testing.assert_allclose(predicted_start, x_last, atol=1e-6)
    np.testing.assert_allclose(sampler.finish(prefix, predicted_start, last, last)[0], chunks, atol=1e-5)
    # From step k the prediction is near the chunk, not on it: the error shrinks as k grows.
    early = np.abs(sampler.finish(prefix, guess, last, k)[0] - chunks).mean()
    assert 0 < early < np.abs(chunks).mean()


def test_the_cut_reads_the_euler_steps_sizes(flow):
    model = onnx.load(str(flow.path / "sampler.onnx"))
    chain = euler_chain(model.graph)
    k = flow.bundle.manifest.num_steps
    assert [round(step.scale, 6) for step in chain] == [round(-1 / k, 6)] * k  # our exporter's x - v / K
    graphs = cut_sampler(flow.path / "sampler.onnx", 1, k)
    assert graphs.x_before is None and graphs.factor == pytest.approx(k - 1)  # x_0 is the noise input
    assert cut_sampler(flow.path / "sampler.onnx", 2, k).factor == pytest.approx(k - 2)


def test_a_pruned_decision_is_chosen_among_its_finished_candidates_and_reproduces(flow):
    sampler = PolicySampler(flow.path)
    observation, _ = _prefix(sampler)
    target = np.full((sampler.manifest.chunk_length, sampler.manifest.action_dim), 0.3, np.float32)
    verifier = _Nearest(target)
    full = Engine(flow.path, verifier)
    k = flow.bundle.manifest.num_steps - 1
    exact = Engine(flow.path, verifier, EngineConfig(prune=Prune(k, 1), return_candidates=True))
    reference = full.infer(observation, n=8, seed=21)
    # Pruned at the last step the prediction is exact: the same choice as the full best-of-8.
    decision = exact.infer(observation, n=8, seed=21)
    assert decision.index == reference.index and list(decision.finished) == [reference.index]
    np.testing.assert_allclose(decision.chunk, reference.chunk, atol=1e-5)
    assert np.isnan(decision.scores).sum() == 7 and np.isfinite(decision.prune_scores).all()
    assert decision.candidates.shape == (8, *reference.chunk.shape)

    early = Engine(flow.path, verifier, EngineConfig(prune=Prune(2, 3)))
    decision = early.infer(observation, n=8, seed=21)
    assert len(decision.finished) == 3 and decision.index in decision.finished
    # The finished ones are the pruning step's three best, best first.
    assert list(decision.finished) == list(np.argsort(-decision.prune_scores, kind="stable")[:3])
    assert np.isfinite(decision.scores[decision.finished]).all()
    assert np.isnan(np.delete(decision.scores, decision.finished)).all()
    again = early.infer(observation, n=8, seed=21)
    np.testing.assert_array_equal(again.chunk, decision.chunk)
    assert set(decision.timings) >= {"sample", "prune", "finish", "score", "total"}
    # N <= m: nothing to prune, every candidate runs every step.
    assert early.infer(observation, n=3, seed=21).finished is None
    # A batch of one prunes exactly as infer does.
    batched = early.infer_batch([BatchItem(observation, n=8, seed=21)])[0]
    np.testing.assert_array_equal(batched.chunk, decision.chunk)
    assert list(batched.finished) == list(decision.finished)


def test_pruning_is_refused_where_it_cannot_apply(exported, flow):
    with pytest.raises(BundleError, match="diffusion policy: pruning judges candidates by the flow's Euler"):
        Engine(exported("diffusion").path, config=EngineConfig(prune=Prune(2, 1)))
    k = flow.bundle.manifest.num_steps
    with pytest.raises(BundleError, match=rf"k must be in \[1, {k - 1}\]"):
        Engine(flow.path, config=EngineConfig(prune=Prune(k, 1)))
    for text, message in (("3", "expected k:m"), ("a:2", "expected k:m"), ("0:2", "must be an integer >= 1"),
                          ("2:0", "candidates kept must be an integer >= 1")):
        with pytest.raises(ValueError, match=message):
            Prune.parse(text)
    assert Prune.parse(" 3:2") == Prune(3, 2) and str(Prune(3, 2)) == "3:2"
