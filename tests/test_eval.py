"""`taco eval`: scripted experts reach their success bar, policy bundles run through the chunk executor,
summaries carry Wilson intervals, interrupted suites resume, and the report has plots and a video."""

import dataclasses
import json

import numpy as np
import pytest

from taco.cli import main
from sim.evaluate import EvalConfig, run_suite, wilson_interval


def test_wilson_interval_known_values():
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-3) and high == pytest.approx(0.9433, abs=1e-3)
    assert wilson_interval(0, 20)[0] == 0.0 and wilson_interval(20, 20)[1] == pytest.approx(1.0)
    assert wilson_interval(0, 0) == (0.0, 1.0)


@pytest.mark.parametrize("task", ["transfer_cube", "insertion"])
def test_scripted_expert_succeeds_95_percent_over_20_seeds(task, tmp_path, capsys):
    path = tmp_path / "eval.json"
    assert main(["eval", "--policy", "scripted", "--task", task, "--episodes", "20", "--seed", "0",
                 "--json", str(path)]) == 0
    report = json.loads(path.read_text())
    s = report["summary"]["per_task"][task]
    assert s["episodes"] == 20 and s["success_rate"] >= 0.95, s
    assert {r["seed"] for r in report["episodes"]} == set(range(20))
    assert sum(m["episodes"] for m in s["by_mode"].values()) == 20 and len(s["by_mode"]) >= 3
    assert task in capsys.readouterr().out


def test_policy_bundle_runs_through_the_chunk_executor(exported, tmp_path):
    from verifiers import write_verifier_bundle
    from verifiers.synthetic import linear_verifier_onnx

    flow = exported("flow")
    verifier = write_verifier_bundle(linear_verifier_onnx(tmp_path / "v.onnx", np.ones(flow.bundle.manifest.feature_dim)),
                                     tmp_path / "v", policy_fingerprint=flow.bundle.fingerprint,
                                     feature_dim=flow.bundle.manifest.feature_dim)
    config = EvalConfig(policy=str(flow.path), verifier=str(verifier.path), n=4, tasks=("lift_bar",), episodes=2,
                        execute=3, max_steps=12)
    report = run_suite(config)
    for record in report["episodes"]:
        assert record["steps"] == 12 and not record["success"]
        assert len(record["latency_ms"]) == 4  # replans at steps 0, 3, 6, 9
        assert len(record["chosen_index"]) == 4 and all(0 <= i < 4 for i in record["chosen_index"])
        assert record["dropped_actions"] == 0
    assert report["summary"]["overall"]["latency_ms_p50"] > 0


def test_an_interrupted_suite_resumes(tmp_path):
    path = tmp_path / "eval.json"
    config = EvalConfig(policy="scripted", tasks=("lift_bar",), episodes=3, max_steps=40)
    first = run_suite(config, path)
    # Pretend the run stopped after two episodes: keep two records in the partial file.
    partial = path.with_name(path.name + ".partial.jsonl")
    rows = [{"fingerprint": config.fingerprint(), "record": {**r, "wall_s": 123.0}} for r in first["episodes"][:2]]
    partial.write_text("\n".join(json.dumps(r) for r in rows) + "\n{cut-off li")
    messages = []
    second = run_suite(config, path, progress=messages.append)
    assert "resuming: 2 episodes already done, 1 to go" in messages[0]
    assert [r["wall_s"] for r in second["episodes"][:2]] == [123.0, 123.0]
    assert second["episodes"][2]["best_stage"] == first["episodes"][2]["best_stage"]
    assert not partial.exists()


def test_results_are_not_reused_after_a_bundle_is_rebuilt_in_place(flow, tmp_path):
    """Same path, new contents (a rebuilt shipped default): the settings fingerprint must change."""
    import shutil

    from sim.compare import _finished

    policy = tmp_path / "flow"
    shutil.copytree(flow.path, policy)
    config = EvalConfig(policy=str(policy), tasks=("lift_bar",), episodes=1, max_steps=5)
    before = config.fingerprint()
    assert EvalConfig(policy=str(policy), tasks=("lift_bar",), episodes=1, max_steps=5).fingerprint() == before
    # Another noise stream is other episodes, so other results.
    assert dataclasses.replace(config, noise_stream=1).fingerprint() != before
    with pytest.raises(ValueError, match="noise_stream"):
        EvalConfig(policy="scripted", noise_stream=1)
    run_suite(config, tmp_path / "arm.json", progress=lambda m: None)
    assert _finished(tmp_path / "arm.json", config) is not None  # taco compare would reuse it
    manifest = json.loads((policy / "manifest.json").read_text())
    manifest["name"] = "rebuilt"
    (policy / "manifest.json").write_text(json.dumps(manifest))
    assert config.fingerprint() != before
    assert _finished(tmp_path / "arm.json", config) is None  # ... and now runs it again


def test_report_has_plots_and_a_video(tmp_path):
    report_dir = tmp_path / "report"
    config = EvalConfig(policy="scripted", tasks=("transfer_cube",), episodes=2, workers=2, report=str(report_dir),
                        max_steps=60)
    report = run_suite(config)
    for name in ("success_rate.png", "stages.png", "episode_length.png", "modes.png", "index.md"):
        assert (report_dir / name).stat().st_size > 1000 or name == "index.md"
    video = report_dir / "videos" / "transfer_cube-ep000.mp4"
    assert video.stat().st_size > 10_000 and report["episodes"][0]["video"] == str(video)
    import imageio.v2 as imageio

    frames = [frame for frame in imageio.get_reader(video)]  # list() trips on its infinite len hint
    assert len(frames) == 60 and frames[0].shape == (240, 320, 3)
    assert report["run"]["workers"] == 2 and report["run"]["episodes_per_minute"] > 0


def test_a_pruned_suite_runs_its_own_episodes_and_pruned_at_the_last_step_chooses_as_full_best_of_n(exported,
                                                                                                       tmp_path):
    from verifiers import write_verifier_bundle
    from verifiers.synthetic import linear_verifier_onnx

    flow = exported("flow")
    dim = flow.bundle.manifest.feature_dim
    weights = np.random.default_rng(0).standard_normal(dim)
    verifier = write_verifier_bundle(linear_verifier_onnx(tmp_path / "v.onnx", weights), tmp_path / "v",
                                     policy_fingerprint=flow.bundle.fingerprint, feature_dim=dim)
    last = flow.bundle.manifest.num_steps - 1
    base = EvalConfig(policy=str(flow.path), verifier=str(verifier.path), n=4, tasks=("lift_bar",), episodes=1,
                      execute=3, max_steps=12)
    pruned = dataclasses.replace(base, prune=f" {last}:1")
    assert pruned.prune == f"{last}:1" and pruned.fingerprint() != base.fingerprint()
    full, exact = run_suite(base)["episodes"][0], run_suite(pruned)["episodes"][0]
    # From step K-1 the prediction is exact: the same picks (4 candidates, one finished per decision).
    assert exact["chosen_index"] == full["chosen_index"]
    with pytest.raises(ValueError, match="k must be in"):
        dataclasses.replace(base, prune=f"{last + 1}:1")
    with pytest.raises(ValueError, match="prune applies to policy bundles"):
        EvalConfig(policy="scripted", prune="2:1")


def test_bad_eval_settings_are_rejected(capsys):
    assert main(["eval", "--policy", "scripted", "--task", "fold_laundry", "--episodes", "1"]) == 2
    assert "fold_laundry" in capsys.readouterr().err
    with pytest.raises(ValueError, match="verifier, n and noise_stream apply to policy bundles"):
        EvalConfig(policy="scripted", n=4)


@pytest.mark.workstation
def test_ray_backend_runs_the_same_episodes_as_local(tmp_path):
    config = dict(policy="scripted", tasks=("lift_bar",), episodes=2, max_steps=60)
    local = run_suite(EvalConfig(**config))
    ray_report = run_suite(EvalConfig(**config, backend="ray", workers=2))
    assert ray_report["run"]["backend"] == "ray"
    for a, b in zip(local["episodes"], ray_report["episodes"]):
        assert (a["seed"], a["mode"], a["stages"]) == (b["seed"], b["mode"], b["stages"])


def test_asynchronous_evaluation_reports_switch_jumps_and_jerk(exported, tmp_path, capsys):
    """`taco eval --async --delay-ms D --rtc on|off`: episodes run against the simulated clock with the
    injected delay; every record and the summary carry switch jumps, jerk and held steps; the same
    settings reproduce."""
    flow = exported("flow")
    dt_ms = flow.bundle.manifest.action_dt * 1e3
    reports = {}
    for rtc in ("off", "on"):
        path = tmp_path / f"async-{rtc}.json"
        assert main(["eval", "--policy", str(flow.path), "--task", "lift_bar", "--episodes", "2", "--execute", "4",
                     "--max-steps", "40", "--async", "--delay-ms", str(2 * dt_ms), "--rtc", rtc,
                     "--json", str(path)]) == 0
        reports[rtc] = json.loads(path.read_text())
    assert "switch jump p50" in capsys.readouterr().out
    for rtc, report in reports.items():
        assert report["config"]["asynchronous"] and report["config"]["rtc"] == (rtc == "on")
        overall = report["summary"]["overall"]
        for key in ("switch_jump_rad_p50", "switch_jump_rad_p95", "jerk_mean", "held_steps_mean"):
            assert key in overall and key in report["summary"]["per_task"]["lift_bar"]
        for record in report["episodes"]:
            assert len(record["switch_jumps"]) >= 5 and record["jerk_mean"] > 0 and record["held_steps"] >= 2
    again = run_suite(EvalConfig(policy=str(flow.path), tasks=("lift_bar",), episodes=2, execute=4, max_steps=40,
                                 asynchronous=True, delay_ms=2 * dt_ms, rtc=True))
    assert [r["switch_jumps"] for r in again["episodes"]] == [r["switch_jumps"] for r in reports["on"]["episodes"]]
    # Synchronous runs record jumps and jerk too (the table's first row).
    sync = EvalConfig(policy=str(flow.path), tasks=("lift_bar",), episodes=1, execute=4, max_steps=20)
    assert run_suite(sync)["summary"]["overall"]["jerk_mean"] > 0


@pytest.mark.workstation
def test_asynchronous_settings_are_checked(exported, tmp_path):
    from policies.export import export_bundle

    flow = exported("flow")
    with pytest.raises(ValueError, match="--async"):
        EvalConfig(policy=str(flow.path), delay_ms=100.0)
    with pytest.raises(ValueError, match="delay_ms"):
        EvalConfig(policy=str(flow.path), asynchronous=True, delay_ms=-5.0)
    with pytest.raises(ValueError, match="scripted"):
        EvalConfig(policy="scripted", asynchronous=True)
    old = export_bundle(flow.policy, tmp_path / "old", normalization=flow.normalization, rtc=False)
    with pytest.raises(ValueError, match="rtc"):
        EvalConfig(policy=str(old.path), asynchronous=True, rtc=True)
    assert EvalConfig(policy=str(old.path), asynchronous=True).rtc is False  # auto: off where it cannot
    assert EvalConfig(policy=str(flow.path), asynchronous=True).rtc is True
    with pytest.raises(ValueError, match="continuity"):
        EvalConfig(policy=str(old.path), asynchronous=True, continuity=1.0)
    with pytest.raises(ValueError, match="rtc_horizon"):
        EvalConfig(policy=str(flow.path), rtc_horizon=6)
    with pytest.raises(ValueError, match="rtc_horizon"):
        EvalConfig(policy=str(flow.path), asynchronous=True, rtc=False, rtc_horizon=6)
    with pytest.raises(ValueError, match="horizon"):
        EvalConfig(policy=str(flow.path), asynchronous=True, rtc_horizon=0)
    horizon = EvalConfig(policy=str(flow.path), asynchronous=True, rtc_horizon=6)
    whole = EvalConfig(policy=str(flow.path), asynchronous=True)
    assert horizon.timing().horizon == 6 and whole.timing().horizon is None
    assert horizon.fingerprint() != whole.fingerprint()
    # The guidance's cap: LeRobot's by default, a setting that changes the episodes, and checked.
    capped = EvalConfig(policy=str(flow.path), asynchronous=True, rtc_max_weight=5.0)
    assert capped.timing().max_weight == 5.0 and whole.timing().max_weight == 10.0
    assert capped.fingerprint() != whole.fingerprint()
    for bad, match in (({"rtc_max_weight": 5.0}, "--async"),
                       ({"asynchronous": True, "rtc": False, "rtc_max_weight": 5.0}, "needs RTC"),
                       ({"asynchronous": True, "rtc_max_weight": -1.0}, "max_weight"),
                       ({"asynchronous": True, "rtc_max_weight": float("nan")}, "max_weight")):
        with pytest.raises(ValueError, match=match):
            EvalConfig(policy=str(flow.path), **bad)


def test_async_sweep_runs_every_arm_on_the_same_seeds_and_resumes(exported, tmp_path, capsys):
    flow = exported("flow")
    args = ["async-sweep", "--policy", str(flow.path), "--task", "lift_bar", "--episodes", "2", "--max-steps", "30",
            "--execute", "4", "--delays", "0,40", "--workers", "1", "--rtc-horizon", "6", "--rtc-max-weight", "5",
            "--out", str(tmp_path / "sweep")]
    assert main(args) == 0
    summary = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    arms = [(r["arm"], r["delay_ms"]) for r in summary["rows"]]
    assert arms == [("sync", None), ("async", 0.0), ("rtc", 0.0), ("rtc+cont", 0.0), ("async", 40.0), ("rtc", 40.0),
                    ("rtc+cont", 40.0)]
    for row in summary["rows"][1:]:
        assert row["paired_vs_sync"]["gained"] + row["paired_vs_sync"]["lost"] <= 2
        assert row["overall"]["episodes"] == 2 and row["overall"]["switch_jump_rad_p95"] is not None
    assert [r["rtc"] for r in summary["rows"]] == [None, False, True, True, False, True, True]
    assert [r["rtc_horizon"] for r in summary["rows"]] == [None, None, 6, 6, None, 6, 6]
    assert [r["rtc_max_weight"] for r in summary["rows"]] == [None, None, 5, 5, None, 5, 5]
    # Without a delay, asynchronous execution is the synchronous one.
    assert summary["rows"][1]["overall"] == summary["rows"][0]["overall"]
    out = capsys.readouterr().out
    assert "rtc+cont" in out and "jump p95" in out
    assert main(args) == 0
    assert "already complete" in capsys.readouterr().err
