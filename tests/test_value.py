"""Decision logs, epsilon-greedy collection, and the value verifier trained on them (verifiers.value)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from verifiers.decision_log import DecisionLog, add_label, read_episodes

F, H, A = 6, 4, 2
POLICY = "a" * 64


def _log(root, **kw) -> DecisionLog:
    args = dict(policy_fingerprint=POLICY, feature_dim=F, chunk_length=H, action_dim=A,
                action_mean=np.array([0.5, -1.0]), action_std=np.array([2.0, 0.5]))
    return DecisionLog(root, **{**args, **kw})


def _decision(features, candidates, index, seed=0, scores=None):
    return SimpleNamespace(features=features.astype(np.float32), candidates=candidates.astype(np.float32),
                           scores=scores, index=int(index), seed=int(seed), n=len(features))


def _separable_episode(rng, n=4):
    """Two decisions; the episode succeeds iff the candidate picked at the second is its one winner (feature
    0 high). Feature 1 says which decision it is, as the policy's features say where the task stands."""
    decisions = []
    for phase in (-1.0, 1.0):
        features = rng.normal(size=(n, F))
        features[:, 0] = -rng.uniform(0, 1, n)
        winner = rng.integers(n)
        features[winner, 0] = 2.0
        features[:, 1] = phase + 0.1 * rng.normal(size=n)
        decisions.append((features, rng.normal(size=(n, H, A)), winner))
    picks = rng.integers(n, size=2)
    return decisions, picks, bool(picks[1] == decisions[1][2])


def _write_separable(root, episodes, seed=0):
    rng = np.random.default_rng(seed)
    log = _log(root)
    for e in range(episodes):
        decisions, picks, success = _separable_episode(rng)
        rec = log.episode("synthetic", e, n=4)
        for d, ((features, candidates, _), pick) in enumerate(zip(decisions, picks)):
            rec.decision(_decision(features, candidates, pick, seed=e * 10 + d), step=8 * d, state=np.zeros(3))
            for _ in range(8):
                rec.step(candidates[pick, 0], reward=0.0)
        rec.end(success=success, best_stage=4 if success else 1, max_stage=4)
    return rng


def test_a_decision_log_round_trips_and_refuses_another_policy(tmp_path):
    log = _log(tmp_path / "log", writer="test")
    rng = np.random.default_rng(0)
    features, candidates = rng.normal(size=(3, F)), rng.normal(size=(3, H, A))
    rec = log.episode("transfer_cube", 7, n=3)
    rec.decision(_decision(features, candidates, 2, seed=11, scores=np.array([0.1, 0.2, 0.3])), step=0,
                 state=np.arange(3.0))
    rec.step(candidates[2, 0], reward=1.0)
    path = rec.end(success=True, best_stage=4, max_stage=4)
    assert path.name == "transfer_cube-000000007.npz"
    meta, (ep,) = read_episodes([tmp_path / "log"])
    assert meta["policy_fingerprint"] == POLICY and meta["writer"] == "test"
    np.testing.assert_allclose(ep.chunks[0], (candidates - [0.5, -1.0]) / [2.0, 0.5], rtol=1e-6)
    np.testing.assert_allclose(ep.features[0], features, rtol=1e-6)
    assert ep.chosen.tolist() == [2] and ep.seed.tolist() == [11] and ep.rewards.tolist() == [1.0]
    np.testing.assert_allclose(ep.scores[0], [0.1, 0.2, 0.3], rtol=1e-6)
    assert ep.success is True and ep.progress == 1.0 and ep.meta["n"] == 3 and ep.meta["steps"] == 1
    with pytest.raises(ValueError, match="another policy .*policy_fingerprint"):
        _log(tmp_path / "log", policy_fingerprint="b" * 64)
    with pytest.raises(ValueError, match="feature_dim"):
        _log(tmp_path / "log", feature_dim=F + 1)
    other = _log(tmp_path / "other", chunk_length=H + 1)
    del other
    with pytest.raises(ValueError, match="different policies .*chunk_length"):
        read_episodes([tmp_path / "log", tmp_path / "other"])
    with pytest.raises(ValueError, match="not a decision log"):
        read_episodes([tmp_path])
    with pytest.raises(ValueError, match="return candidates"):
        rec.decision(SimpleNamespace(candidates=None, features=None), step=0, state=np.zeros(3))
    with pytest.raises(ValueError, match="cannot name a log file"):
        log.episode("../x", 0)


def test_a_full_log_stops_taking_episodes_and_keeps_what_it_holds(tmp_path):
    _write_separable(tmp_path / "log", 1)
    size = _log(tmp_path / "log").bytes_used()
    log = _log(tmp_path / "log", max_bytes=size + 1)
    rng = np.random.default_rng(1)
    for seed, expect_written in ((1, True), (2, False), (3, False)):
        rec = log.episode("synthetic", seed)
        rec.decision(_decision(rng.normal(size=(4, F)), rng.normal(size=(4, H, A)), 0), step=0, state=np.zeros(3))
        assert (rec.end(success=False) is not None) == expect_written
    assert log.full
    _, episodes = read_episodes([tmp_path / "log"])
    assert [ep.meta["seed"] for ep in episodes] == [0, 1]


def test_labels_override_the_outcome_and_bad_labels_are_refused(tmp_path):
    log = _log(tmp_path / "log")
    rng = np.random.default_rng(0)
    for seed in (0, 1):
        rec = log.episode("robot", seed)
        rec.decision(_decision(rng.normal(size=(2, F)), rng.normal(size=(2, H, A)), 0), step=0, state=np.zeros(3))
        rec.end(success=None)
    _, episodes = read_episodes([tmp_path / "log"])
    assert [ep.success for ep in episodes] == [None, None] and episodes[0].progress is None
    add_label(tmp_path / "log", "robot-000000000", success=False)
    add_label(tmp_path / "log", "robot-000000000", success=True, progress=0.75)  # the last label wins
    with open(tmp_path / "log" / "labels.jsonl", "a") as f:
        f.write('{"key": "robot-000000001", "succ')  # a line cut by an interruption
    _, episodes = read_episodes([tmp_path / "log"])
    assert episodes[0].success is True and episodes[0].progress == 0.75 and episodes[1].success is None
    with pytest.raises(ValueError, match="no episode 'robot-000000002'.*robot-000000000"):
        add_label(tmp_path / "log", "robot-000000002", success=True)
    with pytest.raises(ValueError, match="progress"):
        add_label(tmp_path / "log", "robot-000000001", success=True, progress=1.5)


def test_explore_is_reproducible_and_explores_at_its_rate():
    from verifiers.explore import Explore

    base = SimpleNamespace(name="base", feature_dim=F, policy_fingerprint=POLICY,
                           score=lambda features: -np.arange(len(features), dtype=np.float32))
    explore = Explore(base, 0.25)
    features = np.zeros((8, F), np.float32)
    picks = np.array([int(np.argmax(explore.score(features, seed=s))) for s in range(4000)])
    again = np.array([int(np.argmax(explore.score(features, seed=s))) for s in range(4000)])
    np.testing.assert_array_equal(picks, again)
    # The base picks 0; exploring picks uniformly, so 0 with probability 1/8 too.
    assert abs((picks != 0).mean() - 0.25 * 7 / 8) < 0.03
    assert np.bincount(picks[picks != 0], minlength=8)[1:].min() > 60
    uniform = np.array([int(np.argmax(Explore(None, 1.0).score(features, seed=s))) for s in range(4000)])
    assert abs(np.bincount(uniform, minlength=8) / 4000 - 1 / 8).max() < 0.03
    assert all(int(np.argmax(Explore(None, 0.0).score(features, seed=s))) == 0 for s in range(50))
    assert explore.policy_fingerprint == POLICY and explore.name == "explore(base, 0.25)"
    with pytest.raises(ValueError, match="epsilon"):
        Explore(None, 1.5)


@pytest.mark.workstation
@pytest.mark.parametrize("method", ["iql", "mc"])
def test_a_value_trained_on_separable_logs_ranks_the_winning_candidate_first(tmp_path, method):
    from verifiers import load_verifier
    from verifiers.value import ValueTrainConfig, train_value_verifier

    rng = _write_separable(tmp_path / "log", 400)
    config = ValueTrainConfig(method=method, steps=800, hidden=64, layers=2, lr=1e-3, batch_size=128)
    verifier = train_value_verifier([tmp_path / "log"], tmp_path / "value", config, log=lambda msg: None)
    held = verifier.manifest.provenance["holdout"]
    assert held["episodes"] == 80 and held["advantage_auc"] > 0.8
    loaded = load_verifier(tmp_path / "value")
    assert loaded.takes_chunks and loaded.feature_dim == F and loaded.policy_fingerprint == POLICY
    assert verifier.manifest.type == "value"
    hits = 0
    for _ in range(200):
        (_, (features, candidates, winner)), _, _ = _separable_episode(rng)
        hits += int(np.argmax(loaded.score(features.astype(np.float32), candidates.astype(np.float32)))) == winner
    assert hits >= 180, f"{method}: the winner ranked first in {hits} of 200 fresh decisions"


@pytest.mark.workstation
def test_value_training_refuses_logs_with_no_outcome(tmp_path):
    from verifiers.value import train_value_verifier

    log = _log(tmp_path / "log")
    rec = log.episode("robot", 0)
    rec.decision(_decision(np.zeros((2, F)), np.zeros((2, H, A)), 0), step=0, state=np.zeros(3))
    rec.end(success=None)
    with pytest.raises(ValueError, match="no labelled episode.*taco label"):
        train_value_verifier([tmp_path / "log"], tmp_path / "v", log=lambda msg: None)


@pytest.mark.workstation
def test_eval_logs_decisions_then_value_trains_and_evaluates_from_the_command_line(tmp_path, capsys):
    from policies.bundle import load_policy_bundle
    from policies.errors import BundleError
    from policies.shipped import resolve_policy
    from runtime.engine import Engine
    from taco.cli import main

    logs = tmp_path / "logs"
    assert main(["eval", "--policy", "default", "--n", "4", "--task", "transfer_cube", "--max-steps", "100",
                 "--seed", "400000", "--explore", "0.5", "--log-decisions", str(logs), "--quick"]) == 0
    capsys.readouterr()
    meta, episodes = read_episodes([logs])
    bundle = load_policy_bundle(resolve_policy("default"))
    m = bundle.manifest
    assert meta["policy_fingerprint"] == bundle.fingerprint and len(episodes) == 2
    mean, std = np.asarray(m.normalization.action_mean), np.asarray(m.normalization.action_std)
    for ep in episodes:
        d = len(ep.chosen)
        assert ep.features.shape == (d, 4, m.feature_dim) and ep.chunks.shape == (d, 4, m.chunk_length, 14)
        assert ep.actions.shape == (100, 14) and ep.rewards.shape == (100,) and ep.success is not None
        assert ep.step.tolist() == list(range(0, 100, 8))  # a decision every 8 executed actions
        # What was executed after each decision is the chosen candidate, action after action.
        for k in range(d):
            executed = ep.actions[ep.step[k]: ep.step[k] + 8]
            chosen = ep.chunks[k, ep.chosen[k], :len(executed)] * std + mean
            np.testing.assert_allclose(executed, chosen, atol=1e-4)
    assert 0 < sum(int(c) != 0 for ep in episodes for c in ep.chosen)  # exploration took other candidates
    # The state each action was executed from: at a decision's step, the state the decision saw.
    for ep in episodes:
        assert ep.states.shape == (100, 14)
        np.testing.assert_array_equal(ep.states[ep.step], ep.state)
    # The executed steps as a LeRobotDataset v3, read back by lerobot itself.
    dataset_dir = tmp_path / "dataset"
    assert main(["export-log", str(logs), "--out", str(dataset_dir)]) == 0
    assert "2 episodes, 200 frames at 50 fps" in capsys.readouterr().out
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset("taco/dataset", root=dataset_dir)
    assert ds.num_episodes == 2 and ds.num_frames == 200 and ds.fps == 50
    ep = episodes[1]
    for t in (0, 9, 57, 99):
        frame = ds[100 + t]
        d = int(np.searchsorted(ep.step, t, side="right") - 1)
        np.testing.assert_allclose(frame["action"].numpy(), ep.actions[t], atol=1e-6)
        np.testing.assert_allclose(frame["observation.state"].numpy(), ep.states[t], atol=1e-6)
        assert int(frame["decision.index"]) == d and int(frame["decision.chosen"]) == ep.chosen[d]
        assert bool(frame["decision.new"]) == (t % 8 == 0)
    rows = [json.loads(line) for line in (dataset_dir / "meta" / "taco_log_episodes.jsonl").open()]
    assert [r["key"] for r in rows] == [e.meta["key"] for e in episodes]
    assert main(["export-log", str(logs), "--out", str(dataset_dir)]) == 2  # never over an existing folder
    assert "exists" in capsys.readouterr().err
    assert main(["label", str(logs), episodes[0].meta["key"], "--success", "--progress", "1"]) == 0
    value = tmp_path / "value"
    assert main(["train-verifier", "--kind", "value", "--logs", str(logs), "--out", str(value), "--quick"]) == 0
    assert "wrote value verifier" in capsys.readouterr().out
    manifest = json.loads((value / "manifest.json").read_text())
    assert manifest["type"] == "value" and manifest["policy_fingerprint"] == bundle.fingerprint
    assert main(["eval", "--policy", "default", "--verifier", str(value), "--n", "4", "--task", "transfer_cube",
                 "--max-steps", "50", "--quick"]) == 0
    assert "transfer_cube" in capsys.readouterr().out
    # Bound to the policy that made the logs (the default, flow): the shipped diffusion policy refuses it.
    with pytest.raises(BundleError, match="policy_fingerprint"):
        Engine(resolve_policy("diffusion"), verifier=str(value))


def test_stage_rewards_pay_the_progress_where_it_is_made():
    from verifiers.decision_log import LoggedEpisode
    from verifiers.value import ValueTrainConfig, _stage_rewards, transitions

    rewards = np.array([0, 1, 1, 0, 2, 2, 3, 3, 4, 4], np.float32)  # stage per step; a drop to 0 at step 3
    ep = LoggedEpisode(features=np.ones((3, 2, F), np.float32), chunks=np.zeros((3, 2, H, A), np.float32),
                       scores=np.zeros((3, 2), np.float32), chosen=np.array([0, 1, 0]), seed=np.arange(3),
                       step=np.array([0, 4, 8]), state=np.zeros((3, 3), np.float32), actions=np.zeros((10, A)),
                       rewards=rewards, meta={"success": True, "best_stage": 4, "max_stage": 4, "key": "k"})
    # Chunks: steps 0-3 (best 0 -> 1), 4-7 (1 -> 3), 8-9 (3 -> 4, and the success).
    np.testing.assert_allclose(_stage_rewards(ep), np.array([1, 2, 2]) / 5)
    assert _stage_rewards(ep).sum() == pytest.approx(ep.progress)
    data = transitions([ep], ValueTrainConfig(reward="stage", gamma=0.5))
    np.testing.assert_allclose(data.returns, [0.2 + 0.5 * 0.4 + 0.25 * 0.4, 0.4 + 0.5 * 0.4, 0.4], rtol=1e-6)
    assert data.done.tolist() == [0, 0, 1]
    success = transitions([ep], ValueTrainConfig(reward="success", gamma=0.5))
    np.testing.assert_allclose(success.returns, [0.25, 0.5, 1.0])
    ep.rewards = np.full(10, np.nan, np.float32)  # a robot's log
    with pytest.raises(ValueError, match="per-step rewards.*'k'"):
        _stage_rewards(ep)
