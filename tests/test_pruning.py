"""Pruned best-of-N (policies.pruning, EngineConfig.prune): every candidate runs k steps, the best m the rest."""

from __future__ import annotations

import json

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


def test_an_adaptive_decision_stops_when_its_first_round_agrees_and_else_is_the_full_best_of_n(flow):
    from runtime.adaptive import Adaptive
    from runtime.monitor import candidate_spread

    sampler = PolicySampler(flow.path)
    observation, _ = _prefix(sampler)
    verifier = _Nearest(np.full((sampler.manifest.chunk_length, sampler.manifest.action_dim), -0.2, np.float32))
    full = Engine(flow.path, verifier, EngineConfig(return_candidates=True))
    reference = full.infer(observation, n=8, seed=13)
    # The level is in normalised action units, as the sampler gives the chunks.
    normalised = candidate_spread((reference.candidates[:3] - sampler.action_mean) / sampler.action_std)
    assert normalised > 0
    stops = Engine(flow.path, verifier, EngineConfig(adaptive=Adaptive(3, normalised * 1.01)))
    goes_on = Engine(flow.path, verifier, EngineConfig(adaptive=Adaptive(3, normalised * 0.99)))
    stopped, went_on = stops.infer(observation, n=8, seed=13), goes_on.infer(observation, n=8, seed=13)
    assert stopped.n == 3 and len(stopped.scores) == 3 and stopped.first_spread == pytest.approx(normalised, rel=1e-5)
    # It chose the best of the first three: the full decision's candidates 0-2 in the same order.
    first_three = full.infer(observation, n=3, seed=13)
    assert stopped.index == first_three.index
    assert went_on.n == 8 and went_on.index == reference.index
    np.testing.assert_allclose(went_on.chunk, reference.chunk, atol=1e-6)
    np.testing.assert_allclose(went_on.scores, reference.scores, atol=1e-6)
    batched = stops.infer_batch([BatchItem(observation, n=8, seed=13)])[0]
    assert batched.n == 3 and batched.index == stopped.index
    for text, message in (("4", "expected F:LEVEL"), ("1:0.1", "integer >= 2"), ("4:-1", "finite spread >= 0"),
                          ("4:nan", "finite spread >= 0")):
        with pytest.raises(ValueError, match=message):
            Adaptive.parse(text)
    with pytest.raises(ValueError, match="choose one"):
        Engine(flow.path, config=EngineConfig(adaptive=Adaptive(3, 0.1), prune=Prune(2, 1)))


def test_the_adaptive_level_stops_the_share_asked_for_of_the_logged_decisions(tmp_path, capsys):
    from types import SimpleNamespace

    from runtime.adaptive import first_round_spreads
    from taco.cli import main
    from verifiers.decision_log import DecisionLog

    h, a, n = 4, 2, 8
    log = DecisionLog(tmp_path / "log", policy_fingerprint="a" * 64, feature_dim=3, chunk_length=h, action_dim=a,
                      action_mean=np.zeros(a), action_std=np.ones(a))
    rng = np.random.default_rng(0)
    for episode in range(2):
        record = log.episode("synthetic", episode, n=n)
        for d in range(5):
            scale = 0.01 * (1 + d + 5 * episode)  # spreads that grow decision by decision
            candidates = scale * rng.standard_normal((n, h, a))
            # Calm decisions have the verifier's pick in the first round, the others after it.
            scores = np.zeros(n)
            scores[1 if scale <= 0.05 else 6] = 1.0
            record.decision(SimpleNamespace(features=np.zeros((n, 3), np.float32),
                                            candidates=candidates.astype(np.float32), scores=scores, index=0,
                                            seed=d, n=n), step=8 * d, state=np.zeros(3))
            record.step(candidates[0, 0], reward=0.0)
        record.end(success=True, best_stage=4, max_stage=4)
    assert main(["calibrate-adaptive", "--logs", str(tmp_path / "log"), "--first", "4", "--stop", "0.5",
                 "--json", str(tmp_path / "level.json")]) == 0
    out = capsys.readouterr().out
    result = json.loads((tmp_path / "level.json").read_text())
    assert result["decisions"] == 10 and result["n"] == n and result["stop_share"] == 0.5
    assert result["same_pick_when_stopped"] == 1.0 and result["same_pick_otherwise"] == 0.0
    assert result["expected_candidates"] == pytest.approx(0.5 * 4 + 0.5 * 8)
    assert f"--adaptive {result['adaptive']}: stops 50% of 10 decisions" in out
    spreads = np.concatenate([first_round_spreads(np.asarray(c), 4) for c in
                              [np.zeros((1, 4, h, a)), np.ones((1, 1, h, a))]])
    assert spreads[0] == 0.0 and np.isnan(spreads[1])  # one finite candidate has no spread
    assert main(["calibrate-adaptive", "--logs", str(tmp_path / "log"), "--first", "8"]) == 2
    assert "no more than the first round's 8" in capsys.readouterr().err


def test_auto_prunes_only_where_it_was_measured_to_keep_the_success(exported, flow):
    import dataclasses

    from policies.pruning import DEFAULT_PRUNE, auto_prune, resolve_prune

    m = dataclasses.replace(flow.bundle.manifest, rtc=False)  # as the shipped flow policy: no RTC inputs
    assert auto_prune(m, 16, verifier=True, monitor=False) == DEFAULT_PRUNE == Prune(2, 1)
    assert auto_prune(m, 16, verifier=False, monitor=False) is None  # nothing to judge the prediction by
    assert auto_prune(m, 16, verifier=True, monitor=True) is None
    assert auto_prune(m, 16, verifier=True, monitor=False, adaptive=True) is None
    assert auto_prune(m, 16, verifier=True, monitor=False, logging=True) is None
    assert auto_prune(m, 1, verifier=True, monitor=False) is None
    assert auto_prune(flow.bundle.manifest, 16, verifier=True, monitor=False) is None  # this one takes RTC
    assert auto_prune(exported("diffusion").bundle.manifest, 16, verifier=True, monitor=False) is None
    assert resolve_prune("none", m, 16, True, False) is None and resolve_prune(None, m, 16, True, False) is None
    assert resolve_prune("3:2", m, 16, False, False) == Prune(3, 2)
    with pytest.raises(BundleError, match="k must be in"):
        resolve_prune(f"{m.num_steps}:1", m, 16, True, False)


def test_a_pruned_or_adaptive_engine_is_not_logged(flow, tmp_path):
    from runtime.adaptive import Adaptive
    from verifiers.decision_log import DecisionLog

    for config in (EngineConfig(prune=Prune(2, 1), return_candidates=True),
                   EngineConfig(adaptive=Adaptive(3, 0.1), return_candidates=True)):
        with pytest.raises(ValueError, match="log without --prune / --adaptive"):
            DecisionLog.for_engine(tmp_path / "log", Engine(flow.path, config=config))
    DecisionLog.for_engine(tmp_path / "log", Engine(flow.path, config=EngineConfig(return_candidates=True)))


def test_the_euler_chain_is_found_through_the_slice_that_cuts_a_padded_chunk_out():
    from onnx import TensorProto, helper

    # x_{k+1} = x_k + dt * u_k, u_k = x_k * w (a stand-in velocity), chunks = x_K[:, :, :2] (as LeRobot's
    # pi0 and SmolVLA export: actions padded to a wider x).
    nodes, x = [], "noise"
    inits = [helper.make_tensor("dt", TensorProto.FLOAT, [], [-0.5]), helper.make_tensor("w", TensorProto.FLOAT, [], [2.0]),
             helper.make_tensor("starts", TensorProto.INT64, [1], [0]), helper.make_tensor("ends", TensorProto.INT64, [1], [2]),
             helper.make_tensor("axes", TensorProto.INT64, [1], [2])]
    for k in range(2):
        nodes += [helper.make_node("Mul", [x, "w"], [f"u{k}"]), helper.make_node("Mul", [f"u{k}", "dt"], [f"s{k}"]),
                  helper.make_node("Add", [x, f"s{k}"], [f"x{k + 1}"])]
        x = f"x{k + 1}"
    nodes.append(helper.make_node("Slice", [x, "starts", "ends", "axes"], ["chunks"]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("noise", TensorProto.FLOAT, ["n", 3, 4])],
                              [helper.make_tensor_value_info("chunks", TensorProto.FLOAT, ["n", 3, 2])], inits)
    chain = euler_chain(graph)
    assert [(s.x, s.velocity, s.x_next) for s in chain] == [("noise", "u0", "x1"), ("x1", "u1", "x2")]
    assert [s.scale for s in chain] == [-0.5, -0.5]
