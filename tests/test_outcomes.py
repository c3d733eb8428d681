"""Outcome labels: the simulator's snapshot and restore, labelling candidates by executing them, and the
outcome verifier trained on the labels."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sim.env import AlohaSimEnv  # noqa: E402  (sets MUJOCO_GL before mujoco loads)


def _rollout(env, actions):
    out = []
    for a in actions:
        obs, reward, done, info = env.step(a)
        out.append((obs.state.copy(), np.asarray(obs.images["cam_high"]).copy(), reward, env.data.qpos.copy(),
                    env.data.time, info["stage"]))
    return out


def test_restore_reproduces_a_rollout_bit_for_bit():
    from hardware.interface import CameraConfig
    from sim.env import AlohaSimEnv

    env = AlohaSimEnv("transfer_cube", cameras=(CameraConfig("cam_high", 48, 64),))
    obs = env.reset(7)
    rng = np.random.default_rng(0)
    actions = [env.state() + rng.normal(0, 0.05, 14) for _ in range(60)]
    _rollout(env, actions[:20])
    snap = env.snapshot()
    first = _rollout(env, actions[20:])
    restored = env.restore(snap)
    assert restored.stamp == snap.data.time and env.steps == 20
    second = _rollout(env, actions[20:])
    for a, b in zip(first, second):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
    # A different continuation really differs (the comparison above could not pass on a no-op restore).
    env.restore(snap)
    third = _rollout(env, [a + 0.1 for a in actions[20:]])
    assert not np.array_equal(first[-1][3], third[-1][3])
    # An observation from before a restore is stale, even at the same step.
    with pytest.raises(RuntimeError, match="no longer available"):
        restored.images["cam_high"]
    with pytest.raises(RuntimeError, match="episode"):
        env.reset(8)
        env.restore(snap)
    del obs


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    from sim.outcomes import OutcomeConfig, collect_outcomes

    out = tmp_path_factory.mktemp("outcomes")
    # Short episodes, so the policy fails often and some candidates do better than others.
    config = OutcomeConfig(policy="default", task="transfer_cube", episodes=2, n=4, every=3, max_steps=150)
    return config, out, collect_outcomes(config, out, progress=lambda msg: None)


def test_candidate_zero_replays_the_policys_own_episode(labelled):
    """Candidate 0 is drawn from the N=1 decision's seed and carried on with the episode's own seeds, so
    each of its branches must end exactly where the N=1 episode ended: a check of snapshot, restore and the
    history of the whole labelling loop."""
    from policies.bundle import load_policy_bundle
    from verifiers.outcomes import OutcomeSet

    config, out, outcomes = labelled
    m = load_policy_bundle(config.policy).manifest
    assert outcomes.groups() > 0 and outcomes.features.shape == (outcomes.groups() * 4, m.feature_dim)
    assert outcomes.chunks.shape[1:] == (m.chunk_length, 14)
    for e in range(config.episodes):
        shard = OutcomeSet.load(out / "episodes" / f"ep-{e:06d}.npz")
        first = shard.candidate == 0
        assert (shard.end_step[first] == shard.meta["episode_steps"]).all()
        assert (shard.stage[first] == shard.meta["episode_best_stage"]).all()
        assert (shard.success[first] == shard.meta["episode_success"]).all()
        # Labelled states are every 3rd decision of 8 actions.
        assert list(shard.step[first]) == [24 * i for i in range(first.sum())]
    assert (outcomes.end_step <= 150).all() and (outcomes.stage >= 0).all()


def test_collection_resumes_and_refuses_another_runs_folder(labelled, capsys):
    import os
    from dataclasses import replace

    from sim.outcomes import collect_outcomes

    config, out, outcomes = labelled
    shard = out / "episodes" / "ep-000000.npz"
    before = os.stat(shard).st_mtime_ns
    said = []
    again = collect_outcomes(config, out, progress=said.append)
    assert os.stat(shard).st_mtime_ns == before and "already labelled" in said[0]
    np.testing.assert_array_equal(again.stage, outcomes.stage)
    with pytest.raises(ValueError, match="differs in n"):
        collect_outcomes(replace(config, n=2), out, progress=said.append)


def _synthetic(groups=120, n=8, seed=0):
    """Outcomes where a candidate succeeds when its feature 0 is high: a verifier must learn to pick it."""
    from verifiers.outcomes import OutcomeSet

    rng = np.random.default_rng(seed)
    m = groups * n
    features = rng.normal(size=(m, 6)).astype(np.float32)
    success = features[:, 0] + 0.3 * rng.normal(size=m) > 0.8
    stage = np.where(success, 4, rng.integers(0, 4, m))
    return OutcomeSet(features=features, chunks=rng.normal(size=(m, 4, 2)).astype(np.float32), success=success,
                      stage=stage, end_step=np.full(m, 100), episode=np.repeat(np.arange(groups) // 4, n),
                      decision=np.repeat(np.arange(groups) % 4, n), step=np.repeat(np.arange(groups) % 4 * 24, n),
                      candidate=np.tile(np.arange(n), groups),
                      meta={"n": n, "policy_fingerprint": "f" * 64, "max_stage": 4, "task": "synthetic"})


@pytest.mark.workstation
def test_outcome_verifier_learns_which_candidate_succeeds(tmp_path):
    from verifiers import load_verifier
    from verifiers.outcomes import OutcomeTrainConfig, pick_quality, train_outcome_verifier

    outcomes = _synthetic()
    verifier = train_outcome_verifier(outcomes, tmp_path / "v", OutcomeTrainConfig(epochs=40, hidden=64),
                                      log=lambda msg: None)
    held = verifier.manifest.provenance["holdout"]
    assert held["groups"] == 6 * 4 and held["picked_success"] > held["uniform_success"] + 0.3
    loaded = load_verifier(tmp_path / "v")
    assert loaded.takes_chunks and loaded.feature_dim == 6 and loaded.policy_fingerprint == "f" * 64
    scores = loaded.score(outcomes.features, outcomes.chunks)
    quality = pick_quality(scores, outcomes)
    assert quality["picked_success"] > quality["uniform_success"] + 0.3
    assert quality["oracle_success"] >= quality["picked_success"]


def test_outcome_files_are_checked(tmp_path):
    from verifiers.outcomes import OutcomeSet

    outcomes = _synthetic(groups=4, n=2)
    path = outcomes.save(tmp_path / "o.npz")
    assert OutcomeSet.load(path).groups() == 4
    np.savez(tmp_path / "features.npz", features=np.zeros((2, 3)))
    with pytest.raises(ValueError, match="not an outcome file"):
        OutcomeSet.load(tmp_path / "features.npz")
    with pytest.raises(ValueError, match="groups of n=3"):
        OutcomeSet(**{k: getattr(outcomes, k) for k in ("features", "chunks", "success", "stage", "end_step",
                                                        "episode", "decision", "step", "candidate")},
                   meta={**outcomes.meta, "n": 3})


@pytest.mark.workstation
def test_collect_outcomes_then_train_then_eval_from_the_command_line(tmp_path, capsys):
    from taco.cli import main

    out = tmp_path / "outcomes"
    assert main(["collect-outcomes", "--policy", "default", "--task", "transfer_cube", "--every", "8",
                 "--max-steps", "100", "--out", str(out), "--quick"]) == 0
    assert "states x 4 candidates" in capsys.readouterr().out
    verifier = tmp_path / "outcome"
    assert main(["train-verifier", "--kind", "outcome", "--outcomes", str(out / "outcomes.npz"), "--out",
                 str(verifier), "--quick"]) == 0
    assert json.loads((verifier / "manifest.json").read_text())["type"] == "outcome"
    report = tmp_path / "eval.json"
    assert main(["eval", "--policy", "default", "--verifier", str(verifier), "--n", "4", "--task", "transfer_cube",
                 "--episodes", "1", "--max-steps", "24", "--json", str(report)]) == 0
    assert json.loads(report.read_text())["config"]["n"] == 4
    assert main(["train-verifier", "--kind", "outcome", "--out", str(tmp_path / "x")]) == 2
