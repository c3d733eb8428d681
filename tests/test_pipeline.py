"""The whole artifacts pipeline in miniature, through the CLI as a user runs it:
record -> train-policy -> collect-features -> train-verifier (every kind) -> eval with each verifier."""

import json

import numpy as np
import pytest

from policies import load_policy_bundle
from policies.shipped import DEFAULT_POLICY_KIND
from policies.train import TrainConfig
from taco.cli import main
from verifiers import load_verifier
from verifiers.features import FeatureSet

# Needs the train extra throughout: not collected by the robot-side run (tests/conftest.py).
pytestmark = pytest.mark.workstation


@pytest.fixture(scope="module")
def trained(tiny_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline")
    policy = out / "policy"
    assert main(["train-policy", "--dataset", str(tiny_dataset), "--size", "tiny", "--out", str(policy),
                 "--quick", "--threads", "1"]) == 0
    features = out / "features.npz"
    assert main(["collect-features", "--policy", str(policy), "--dataset", str(tiny_dataset), "--k", "8",
                 "--stride", "10", "--out", str(features)]) == 0
    return out, policy, features


def test_feature_search_keeps_the_closest_candidate(trained, tiny_dataset):
    _, policy, features_path = trained
    from policies.data import load_dataset

    fs = FeatureSet.load(features_path)
    data = load_dataset(tiny_dataset)
    assert fs.policy_fingerprint == load_policy_bundle(policy).fingerprint
    assert fs.dataset_fingerprint == data.fingerprint
    assert len(fs.features) == sum(len(range(0, len(e), 10)) for e in data.episodes)
    assert fs.features.shape[1] == 32 and np.isfinite(fs.features).all()
    # The kept candidate is the argmin over the K noises: recompute one frame by hand.
    from policies.observation import Observation
    from runtime import Engine

    engine = Engine(policy)
    ep, t = data.episodes[int(fs.episode[3])], int(fs.frame[3])
    obs = Observation({"cam_high": ep.images["cam_high"][t]}, ep.state[t], ep.task, 0.0)
    chunks, feats = engine.policy.candidates(obs, engine.policy.noise(8, 0))
    norm = engine.manifest.normalization
    target = (ep.chunk(t, 8) - norm.action_mean) / norm.action_std
    dist = np.sqrt(((chunks - target) ** 2).sum(2)).mean(1)
    assert int(np.argmin(dist)) == fs.noise_index[3]
    np.testing.assert_allclose(feats[np.argmin(dist)], fs.features[3], atol=1e-5)


@pytest.mark.parametrize("kind", ["cfn", "rnd", "knn", "random"])
def test_each_verifier_kind_trains_and_runs_in_eval(trained, kind, tmp_path):
    out, policy, features = trained
    vdir = out / f"verifier-{kind}"
    assert main(["train-verifier", "--kind", kind, "--features", str(features), "--out", str(vdir), "--quick",
                 "--hidden", "64", "--overwrite"]) == 0
    verifier = load_verifier(vdir)
    assert verifier.manifest.type == kind
    report_path = tmp_path / "eval.json"
    assert main(["eval", "--policy", str(policy), "--verifier", str(vdir), "--n", "4", "--task", "lift_bar",
                 "--episodes", "1", "--max-steps", "16", "--json", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert report["config"]["verifier"] == str(vdir)
    assert len(report["episodes"][0]["chosen_index"]) == 2


def test_taco_list_shows_plugins_from_entry_points(tmp_path, monkeypatch, capsys):
    dist = tmp_path / "taco_plugin_example-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: taco-plugin-example\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[taco.verifiers]\nenergy = taco_plugin_example:train\n")
    (tmp_path / "taco_plugin_example.py").write_text(
        'def train(features, config, out_dir):\n    """Energy-based verifier (example plugin)."""\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    from verifiers.registry import verifier_kinds

    kinds = verifier_kinds()
    assert kinds["energy"].source == "taco_plugin_example:train"
    assert kinds["energy"].description == "Energy-based verifier (example plugin)."
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "energy" in out and "cfn" in out and "lift_bar" in out


def test_taco_artifacts_quick_builds_everything_and_a_rerun_skips_it(tmp_path, capsys):
    out = tmp_path / "artifacts"
    args = ["artifacts", "--recipe", "flow", "--quick", "--out", str(out), "--task", "lift_bar", "--perturb", "0.005"]
    assert main(args) == 0
    first = capsys.readouterr()
    for name in ("dataset", "flow", "flow-cfn", "flow-rnd", "flow-knn", "flow-random", "flow-value", "flow-combined"):
        assert name in first.out
    # The value verifier learned from the decisions the flow policy logged with uniform picks.
    value = load_verifier(out / "bundles" / "flow-value")
    assert value.manifest.type == "value" and value.policy_fingerprint == load_policy_bundle(out / "bundles" /
                                                                                                 "flow").fingerprint
    assert len(list((out / "logs" / "flow" / "episodes").glob("*.npz"))) == 2
    # flow-combined is the value plus the consensus, each standardised over the candidates.
    combined = load_verifier(out / "bundles" / "flow-combined")
    consensus = load_verifier(out / "bundles" / "flow-consensus")
    assert combined.manifest.type == "combined" and combined.policy_fingerprint == value.policy_fingerprint
    rng = np.random.default_rng(0)
    features = rng.normal(size=(6, value.feature_dim)).astype(np.float32)
    policy = load_policy_bundle(out / "bundles" / "flow").manifest
    chunks = rng.normal(size=(6, policy.chunk_length, len(policy.action_names))).astype(np.float32)

    def standard(x):
        return (x - x.mean()) / np.sqrt(x.var() + 1e-6)

    np.testing.assert_allclose(combined.score(features, chunks),
                               standard(value.score(features, chunks)) + standard(consensus.score(features, chunks)),
                               atol=1e-4)
    assert "[record]" in first.err and "[train flow] 20 steps" in first.err
    # Recording reports progress in the log (clean episode, then the recovery one on top of it).
    assert "[record] 1/1 episodes (lift_bar seed " in first.err and "[record] 2/2 episodes (lift_bar seed" in first.err
    # One run from scratch on the clean and the recovery episodes, with the training recipe's defaults.
    training = load_policy_bundle(out / "bundles" / "flow").manifest.provenance["training"]
    recipe = TrainConfig(dataset="d", out="o")
    assert training["init_from"] is None
    for key in ("state_noise", "shift", "start_fraction", "start_frames"):
        assert training[key] == getattr(recipe, key)
    episodes = [json.loads(line) for line in (out / "data" / "sim" / "meta" / "taco_episodes.jsonl").open()]
    assert [e["perturb"] for e in episodes] == [0.0, 0.005]
    policy_files = (out / "bundles" / "flow" / "manifest.json").read_text()
    fingerprint = load_verifier(out / "bundles" / "flow-cfn").policy_fingerprint
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "[train flow] up to date" in err and "[verifier flow-knn] up to date" in err
    assert "[verifier flow-value] up to date" in err and "[logs flow]" not in err
    assert "[verifier flow-combined] up to date" in err
    assert "[record]" not in err and "[train flow] 20 steps" not in err
    assert (out / "bundles" / "flow" / "manifest.json").read_text() == policy_files
    assert load_verifier(out / "bundles" / "flow-cfn").policy_fingerprint == fingerprint


def test_the_diffusion_recipe_records_its_own_clean_dataset_next_to_the_flow_one(tmp_path, capsys):
    """`--recipe diffusion` (the shipped default's recipe): clean episodes only, in their own dataset folder,
    so that it and `--recipe flow` can build into one `--out` without mixing episodes."""
    out = tmp_path / "artifacts"
    assert main(["artifacts", "--recipe", "diffusion", "--quick", "--out", str(out), "--task", "lift_bar"]) == 0
    printed = capsys.readouterr().out
    for name in ("diffusion", "diffusion-cfn", "diffusion-consensus"):
        assert f"{name} " in printed
    assert "flow" not in printed
    episodes = [json.loads(line) for line in (out / "data" / "clean50" / "meta" / "taco_episodes.jsonl").open()]
    assert [e["perturb"] for e in episodes] == [0.0]
    assert not (out / "data" / "sim").exists()
    bundle = load_policy_bundle(out / "bundles" / "diffusion")
    assert bundle.manifest.kind == "diffusion"


def test_the_flow32_recipe_trains_32_action_chunks_with_rtc_on_the_flow_recipes_dataset(tmp_path, capsys):
    """`--recipe flow32` (the policy `taco ros robot` runs): the flow recipe's dataset folder and episodes,
    32-action chunks, real-time chunking inputs, and only the verifiers that need no feature search."""
    out = tmp_path / "artifacts"
    args = ["artifacts", "--recipe", "flow32", "--quick", "--out", str(out), "--task", "lift_bar"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "[features flow32] not needed" in captured.err and not (out / "features").exists()
    bundle = load_policy_bundle(out / "bundles" / "flow32")
    assert bundle.manifest.kind == "flow" and bundle.manifest.chunk_length == 32 and bundle.manifest.rtc
    assert bundle.manifest.provenance["training"]["chunk_length"] == 32
    for name in ("flow32-consensus", "flow32-random"):
        assert load_verifier(out / "bundles" / name).policy_fingerprint == bundle.fingerprint
    assert (out / "data" / "sim" / "meta" / "taco_episodes.jsonl").is_file()
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "[train flow32] up to date" in err and "[record]" not in err


def test_artifacts_flags_change_one_recipe_at_a_time(tmp_path, capsys):
    assert main(["artifacts", "--out", str(tmp_path), "--episodes", "3", "--recovery-episodes", "0"]) == 2
    err = capsys.readouterr().err
    assert "--episodes, --recovery-episodes: change one recipe at a time" in err
    assert main(["artifacts", "--recipe", "taco", "--out", str(tmp_path), "--stride", "4"]) == 2
    assert "--recipe taco: only --steps can be changed (got --stride)" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_taco_regime_quick_pretrains_broad_then_finetunes_and_a_rerun_skips_it(tmp_path, capsys):
    """`taco artifacts --recipe taco`: the corpus holds every part (off-task modes and failures kept), the
    fine-tuned policy starts from the pre-trained one, and its verifiers are bound to it."""
    out = tmp_path / "regime"
    args = ["artifacts", "--recipe", "taco", "--quick", "--out", str(out)]
    assert main(args) == 0
    first = capsys.readouterr()
    for name in ("corpus", "finetune data", "pretrained", "taco-cfn", "taco-knn", "taco-consensus"):
        assert name in first.out
    corpus = [json.loads(line) for line in (out / "data" / "broad" / "meta" / "taco_episodes.jsonl").open()]
    assert [e["task"] for e in corpus] == ["transfer_cube"] * 3 + ["lift_bar"]
    assert corpus[1]["mode"] in ("no_handover", "early_release", "bar_lift") and not corpus[1]["success"]
    assert corpus[2]["perturb"] == 0.3
    finetune = [json.loads(line) for line in (out / "data" / "finetune" / "meta" / "taco_episodes.jsonl").open()]
    assert len(finetune) == 2 and all(e["success"] and e["seed"] >= 200_000 for e in finetune)
    policy = load_policy_bundle(out / "bundles" / "taco")
    training = policy.manifest.provenance["training"]
    assert training["init_from"].endswith("pretrained.ckpt/last.pt") and training["lr"] == 1e-4
    assert load_verifier(out / "bundles" / "taco-cfn").policy_fingerprint == policy.fingerprint
    # The value verifier, from the fine-tuned policy's own logged rollouts of the fine-tuning task.
    value = load_verifier(out / "bundles" / "taco-value")
    assert value.policy_fingerprint == policy.fingerprint and "taco-value" in first.out
    assert sorted(p.stem for p in (out / "logs" / "taco" / "episodes").glob("*.npz")) == \
        ["transfer_cube-000400000", "transfer_cube-000400001"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "[pretrain] up to date" in err and "[finetune] up to date" in err and "[features] up to date" in err
    assert "[verifier taco-knn] up to date" in err and "[corpus]" not in err
    assert "[verifier taco-value] up to date" in err


def test_compare_pairs_arms_on_the_same_seeds(trained, tmp_path, capsys):
    out, policy, features = trained
    vdir = out / "verifier-knn-cmp"
    assert main(["train-verifier", "--kind", "knn", "--features", str(features), "--out", str(vdir)]) == 0
    assert main(["compare", "--policy", str(policy), "--arm", "none:1", "--arm", f"knn:4:{vdir}", "--task",
                 "lift_bar", "--episodes", "2", "--max-steps", "12", "--workers", "1", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "compare.json").read_text())
    assert [a["arm"] for a in report["arms"]] == ["none", "knn"]
    assert [a["verifier"] for a in report["arms"]] == ["none", str(vdir)]
    paired = report["arms"][1]["paired_vs_none"]
    assert set(paired) >= {"gained", "lost", "p_value"} and paired["p_value"] == 1.0  # 12 steps: no successes
    assert "knn" in capsys.readouterr().out
    # A rerun reuses completed arms run with the same settings (an N sweep adds arms to a comparison);
    # a second reference stream runs N=1 again on other noise and pools it with the first.
    assert main(["compare", "--policy", str(policy), "--arm", "none:1", "--arm", f"knn2:2:{vdir}", "--task",
                 "lift_bar", "--episodes", "2", "--max-steps", "12", "--workers", "1", "--reference-streams", "2",
                 "--out", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "arm none: already complete" in captured.err and f"arm knn2: N=2, verifier {vdir}" in captured.err
    assert "arm none@1: N=1, verifier none, noise stream 1" in captured.err
    report = json.loads((tmp_path / "compare.json").read_text())
    assert [a["arm"] for a in report["arms"]] == ["none", "none@1", "knn2"]
    assert report["pooled_reference"]["arms"] == ["none", "none@1"]
    assert report["pooled_reference"]["overall"]["episodes"] == 4
    assert report["arms"][2]["vs_pooled_reference"]["p_value"] == 1.0 and "pooled" in captured.out
    assert main(["compare", "--policy", str(policy), "--arm", "none:1", "--arm", "none:2", "--task", "lift_bar",
                 "--out", str(tmp_path)]) == 2
    assert "names must differ" in capsys.readouterr().err


def test_mcnemar_exact_values():
    from sim.compare import Arm, mcnemar_exact

    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(10, 0) == pytest.approx(2 / 1024)
    assert mcnemar_exact(6, 4) == pytest.approx(0.7539, abs=1e-3)
    assert Arm.parse("cfn:16:a/b") == Arm("cfn", 16, "a/b")
    assert Arm.parse("cfn:16").verifier_name == "cfn" and Arm.parse("cfn4:4:cfn").verifier_name == "cfn"
    assert Arm.parse("none2:1@2") == Arm("none2", 1, None, 2)
    assert Arm.parse("cfn:16@3:a/b") == Arm("cfn", 16, "a/b", 3)
    assert Arm.parse("p:16~p3/2@1:cfn") == Arm("p", 16, "cfn", 1, prune="3:2")
    assert Arm.parse("a:16~a4/0.05") == Arm("a", 16, None, 0, adaptive="4:0.05")
    for bad in ("cfn", "cfn:x", "none:1@", "none:1@a", ":1", "p:16~3/2", "p:16~p3", "p:16~p/2", "p:16~pa/2",
                "a:16~a4/x"):
        with pytest.raises(ValueError, match="NAME:N"):
            Arm.parse(bad)


def test_fisher_exact_values():
    from sim.compare import fisher_exact

    # The lady tasting tea (3 of 4 cups right): 17/35; symmetric in the two groups.
    assert fisher_exact(3, 4, 1, 4) == pytest.approx(17 / 35)
    assert fisher_exact(1, 4, 3, 4) == pytest.approx(17 / 35)
    # 54/100 against 200/300 (scipy.stats.fisher_exact: 0.03052); equal rates are no evidence at all.
    assert fisher_exact(54, 100, 200, 300) == pytest.approx(0.03052, abs=1e-5)
    assert fisher_exact(10, 100, 50, 500) == 1.0 and fisher_exact(0, 0, 0, 0) == 1.0
    assert fisher_exact(100, 100, 0, 100) < 1e-50
    with pytest.raises(ValueError, match="fisher_exact"):
        fisher_exact(5, 4, 1, 4)


def test_reference_streams_add_the_reference_on_other_noise_streams():
    from sim.compare import Arm, reference_stream_arms

    arms = [Arm("none", 1), Arm("cfn", 16, "b/cfn")]
    assert reference_stream_arms(arms, 1) == arms
    assert reference_stream_arms(arms, 3) == [Arm("none", 1), Arm("none@1", 1, "none", 1), Arm("none@2", 1, "none", 2),
                                              Arm("cfn", 16, "b/cfn")]
    # A stream the user already asked for is not run twice.
    mine = [Arm("none", 1), Arm("cfn", 16), Arm("none2", 1, "none", 2)]
    assert [a.name for a in reference_stream_arms(mine, 3)] == ["none", "none@1", "cfn", "none2"]
    with pytest.raises(ValueError, match="reference_streams"):
        reference_stream_arms(arms, 0)


def test_pooled_reference_sums_the_reference_streams_and_tests_each_arm_against_them():
    from sim.compare import Arm, _pooled_reference
    from sim.evaluate import wilson_interval

    def result(wins_a, wins_b):
        per = {"a": {"successes": wins_a, "episodes": 100}, "b": {"successes": wins_b, "episodes": 100}}
        return {"summary": {"per_task": per, "overall": {"successes": wins_a + wins_b, "episodes": 200}}}

    arms = [Arm("none", 1), Arm("none@1", 1, "none", 1), Arm("knn", 16, "k"), Arm("none2", 1, "none", 2),
            Arm("cfn1", 1, "cfn")]
    results = {"none": result(66, 1), "none@1": result(65, 1), "knn": result(83, 2), "none2": result(69, 3),
               "cfn1": result(70, 0)}
    pooled = _pooled_reference(arms, results, ["a", "b"])
    # N=1 with a verifier (cfn1) is not the reference: only `none` at N=1 pools, whatever the arm's name.
    assert pooled["arms"] == ["none", "none@1", "none2"] and pooled["streams"] == [0, 1, 2]
    assert pooled["per_task"]["a"]["successes"] == 200 and pooled["per_task"]["a"]["episodes"] == 300
    assert pooled["overall"] == {"successes": 205, "episodes": 600, "success_rate": 205 / 600,
                                 "wilson95": pytest.approx(list(wilson_interval(205, 600)))}
    assert _pooled_reference(arms[:1] + arms[2:3], results, ["a", "b"]) is None
    # The same stream twice is one draw: pooled once.
    again = [*arms, Arm("none0", 1, "none", 0)]
    assert _pooled_reference(again, {**results, "none0": result(66, 1)}, ["a", "b"])["arms"] == pooled["arms"]


def test_shipped_names_resolve_to_the_artifacts_folder(trained, tmp_path, monkeypatch, capsys):
    import shutil

    out, policy, features = trained
    artifacts = tmp_path / "artifacts"
    shipped = artifacts / "bundles" / DEFAULT_POLICY_KIND
    shutil.copytree(policy, shipped)
    monkeypatch.setenv("TACO_ARTIFACTS", str(artifacts))
    args = ["eval", "--policy", "default", "--task", "lift_bar", "--episodes", "1", "--max-steps", "8"]
    assert main([*args, "--verifier", "knn", "--n", "2"]) == 2
    assert "make artifacts" in capsys.readouterr().err
    assert main(["train-verifier", "--kind", "knn", "--features", str(features),
                 "--out", str(artifacts / "bundles" / f"{DEFAULT_POLICY_KIND}-knn")]) == 0
    path = tmp_path / "e.json"
    assert main([*args, "--verifier", "knn", "--n", "2", "--json", str(path)]) == 0
    config = json.loads(path.read_text())["config"]
    assert config["policy"] == str(shipped)
    assert config["verifier"] == str(artifacts / "bundles" / f"{DEFAULT_POLICY_KIND}-knn")
    assert main([*args, "--verifier", "none", "--json", str(path)]) == 0
    assert json.loads(path.read_text())["config"]["verifier"] is None
    monkeypatch.setenv("TACO_ARTIFACTS", str(tmp_path / "nowhere"))
    assert main(args) == 2
    assert "make artifacts" in capsys.readouterr().err


def test_paired_outcomes_list_successes_and_stages_that_changed():
    from sim.compare import _paired

    def ep(seed, success, stage):
        return {"task": "t", "seed": seed, "success": success, "best_stage": stage}

    ref = [ep(0, False, 0), ep(1, True, 4), ep(2, False, 1), ep(3, False, 2)]
    other = [ep(0, True, 4), ep(1, False, 2), ep(2, False, 1), ep(3, False, 3)]
    paired = _paired(ref, other)
    assert paired["gained_episodes"] == [("t", 0)] and paired["lost_episodes"] == [("t", 1)]
    # Largest stage change first; the unchanged episode is not listed.
    assert paired["stage_changed_episodes"] == [("t", 0, 0, 4), ("t", 1, 4, 2), ("t", 3, 2, 3)]
