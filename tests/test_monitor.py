"""The failure monitor: its signals, its statistic and threshold, its bundle, and its use by the engine and `taco eval`."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from policies.errors import BundleError
from policies.schema import sha256_file
from runtime import Engine
from runtime.engine import EngineConfig
from runtime.calibration import CalibrationEpisode, fit_monitor
from runtime.monitor import (candidate_spread, check_monitor_use, chunk_inconsistency, conformal_rank,
                             conformal_threshold, cusum, keystone_spread, load_monitor, read_monitor_manifest,
                             standardise)
from tiny_monitor import familiar, make_tiny_monitor, run, strange


def test_novelty_is_about_one_for_embeddings_like_the_fitted_ones_and_large_for_others():
    from runtime.monitor import fit_embedding, novelty, pooled_embedding

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2000, 12)) * np.linspace(0.1, 3.0, 12) + 5.0
    model = fit_embedding(x[:1000], components=6)
    fresh = [novelty(model, v) for v in x[1000:]]
    assert 0.8 < np.mean(fresh) < 1.2
    # 10 of its standard deviations along its first direction: 10^2 over the 6 directions.
    assert novelty(model, model["mean"] + 10 * model["scale"][0] * model["basis"][0]) == pytest.approx(100 / 6)
    prefix = {"prefix_kv": np.arange(2 * 2 * 2 * 3 * 2, dtype=np.float32).reshape(1, 2, 2, 2, 3, 2),
              "prefix_bias": np.array([[0.0, 0.0, -1e9]], np.float32)}
    # The last layer's values (index [0, 1, 1]) over the two unmasked tokens, heads then dims.
    np.testing.assert_allclose(pooled_embedding(prefix), prefix["prefix_kv"][0, 1, 1][:, :2].mean(axis=1).reshape(-1))


def test_spreads_known_values():
    two = np.array([[[0.0]], [[2.0]]])
    assert candidate_spread(two) == pytest.approx(1.0)
    assert math.isnan(candidate_spread(two[:1]))
    # 1-d points 0, 0, 3: mean 1, the medoid is a 0, the median pairwise distance 3.
    three = np.array([0.0, 0.0, 3.0]).reshape(3, 1, 1)
    assert keystone_spread(three) == pytest.approx(1 / 3)
    assert keystone_spread(np.ones((4, 2, 2))) == 0.0
    assert math.isnan(keystone_spread(three[:2]))


def test_inconsistency_compares_the_actions_for_the_same_times():
    dt = 0.02
    previous_times = np.arange(16) * dt
    previous = np.zeros((16, 2))
    times = previous_times + 8 * dt  # replanned after 8 actions: positions 0..7 overlap its 8..15
    chunk = np.full((16, 2), 5.0)
    chunk[:8] = 0.5
    assert chunk_inconsistency(chunk, times, previous, previous_times, dt) == pytest.approx(0.5)
    assert math.isnan(chunk_inconsistency(chunk, times + 1.0, previous, previous_times, dt))


def test_cusum_and_the_conformal_threshold():
    np.testing.assert_allclose(cusum(np.array([1.0, 1.0, -5.0, 2.0, math.nan]), 0.5), [0.5, 1.0, 0.0, 1.5, 1.0])
    assert conformal_rank(50, 0.1) == 46  # OpenTau's accel detector: 50 rollouts at alpha 0.1
    assert conformal_threshold(np.arange(10.0)[::-1], 0.1) == 9.0
    with pytest.raises(ValueError, match="needs at least 9 successful"):
        conformal_rank(8, 0.1)


def test_the_fit_bounds_false_alarms_on_successful_episodes_and_catches_a_drifting_failure():
    rng = np.random.default_rng(0)

    def episode(success, drift=0.0, rough=0.0, sure=0.0):
        noise = rng.standard_normal(30)
        ramp = np.arange(30) / 30
        return CalibrationEpisode(signals={"value": list(1.0 + sure + noise - drift * ramp),
                                           "inconsistency": list(rng.standard_normal(30) + rough * ramp)},
                                  success=success, decision_steps=list(range(0, 240, 8)), progress_step=120)

    episodes = [episode(True) for _ in range(200)] + [episode(False, drift=4.0) for _ in range(20)]
    fit = fit_monitor(episodes, ("value", "inconsistency"), alpha=0.1)
    assert set(fit.detectors) == {"value", "inconsistency", "combined", "any", "elapsed"} and fit.main == "any"
    assert fit.detectors["combined"].signals == ("value",)  # the signal that tells failures apart
    assert fit.report["combined"]["failed_alarmed"] == 20 and fit.report["any"]["failed_alarmed"] == 20
    # A failure unlike the calibration's: the chunks grow inconsistent while the value looks better than ever.
    # The mean chosen on the calibration's failures misses it; `any` keeps each signal apart and does not.
    def z(e):
        return {n: standardise(np.asarray(e.signals[n]), n, *pair) for n, pair in fit.standardisation.items()}

    unseen = [episode(False, rough=6.0, sure=3.0) for _ in range(20)]
    caught = {name: sum(fit.detectors[name].path(z(e)).max() > fit.detectors[name].threshold for e in unseen)
              for name in ("combined", "any")}
    assert caught["any"] >= 18 and caught["combined"] <= 2, caught
    assert fit.report["elapsed"]["failed_alarmed"] == 0  # the failures last no longer than the successes
    fresh = [episode(True) for _ in range(300)]
    fresh_fit = fit_monitor(episodes[:200] + fresh, ("value",), alpha=0.1)
    assert fresh_fit.report["split"]["conformal"] == 250
    # Held-out successes alarm at about alpha, not more (a binomial bound, 300 draws).
    d = fit.detectors["value"]
    mean, std = fit.standardisation["value"]
    alarms = sum(cusum(-(np.asarray(e.signals["value"]) - mean) / std, d.slack).max() > d.threshold for e in fresh)
    assert alarms / len(fresh) < 0.16
    anything = fit.detectors["any"]
    alarms = sum(anything.path(z(e)).max() > anything.threshold for e in fresh)
    assert alarms / len(fresh) < 0.16
    with pytest.raises(ValueError, match="needs at least 9 successful calibration rollouts"):
        fit_monitor(episodes[:10], ("value",), alpha=0.1)


@pytest.fixture(scope="module")
def tiny_monitor(exported, tmp_path_factory):
    flow = exported("flow")
    return flow, make_tiny_monitor(flow, tmp_path_factory.mktemp("monitor"))


def test_an_alarm_fires_on_an_observation_unlike_the_calibration_and_not_on_familiar_ones(tiny_monitor):
    flow, path = tiny_monitor
    engine = Engine(flow.path, monitor=path)
    m = engine.manifest
    rng = np.random.default_rng(7)
    dt = 8 * m.action_dt
    usual = [run(engine, [familiar(m, rng, i * dt) for i in range(6)], seed=s) for s in range(10)]
    assert sum("any" in t.first_alarm for t in usual) <= 1, [t.peaks for t in usual]
    odd = run(engine, [familiar(m, rng, 0.0)] + [strange(m, i * dt) for i in range(1, 6)], seed=99)
    assert odd.first_alarm.get("any") is not None and odd.first_alarm["any"] <= 2, odd.peaks
    decision = engine.infer(strange(m, 0.0), n=4, seed=1)
    assert set(decision.signals) == {"spread", "keystone", "pseudocount", "pseudocount_obs", "novelty", "accel"}
    assert decision.signals["accel"] > 0
    assert decision.signals["novelty"] > 10 * max(odd.history["novelty"][0], 1.0)  # the familiar first one
    assert "monitor" in decision.timings


def test_deferred_scoring_gives_the_same_signals_outside_the_decisions_time(tiny_monitor):
    flow, path = tiny_monitor
    inline = Engine(flow.path, monitor=path)
    deferred = Engine(flow.path, monitor=inline.monitor, config=EngineConfig(defer_monitor=True))
    observation = strange(inline.manifest, 0.0)
    a, b = inline.infer(observation, n=4, seed=3), deferred.infer(observation, n=4, seed=3)
    np.testing.assert_array_equal(a.chunk, b.chunk)
    assert b.signals is None and not b.signals_ready and "monitor" not in b.timings
    track = deferred.monitor.track(deferred.manifest.action_dt)
    status = track.update(b)  # the track's read scores it
    assert b.signals_ready and b.signals == a.signals and status.signals["novelty"] == a.signals["novelty"]
    assert b.timings["monitor"] > 0 and b.read_signals() is b.signals  # scored once


def test_a_batch_reads_each_items_own_velocities(tiny_monitor):
    from runtime.engine import BatchItem

    flow, path = tiny_monitor
    engine = Engine(flow.path, monitor=path)
    m = engine.manifest
    observations = [strange(m, 0.0), familiar(m, np.random.default_rng(2), 0.0)]
    alone = [engine.infer(o, n=4, seed=7 + i).signals["accel"] for i, o in enumerate(observations)]
    batch = engine.infer_batch([BatchItem(o, n=4, seed=7 + i, history=engine.policy.history())
                                for i, o in enumerate(observations)])
    assert [d.signals["accel"] for d in batch] == pytest.approx(alone, rel=1e-5)
    assert alone[0] != pytest.approx(alone[1], rel=1e-3)


def test_a_mismatched_monitor_is_refused(tiny_monitor, exported, tmp_path):
    flow, path = tiny_monitor
    manifest = read_monitor_manifest(path)
    with pytest.raises(BundleError, match=r"\.n: calibrated at N=4, used at N=1"):
        check_monitor_use(manifest, flow.bundle.fingerprint, 1, None)
    with pytest.raises(BundleError, match=r"\.verifier: calibrated with no verifier"):
        check_monitor_use(manifest, flow.bundle.fingerprint, 4, "ab" * 32)
    executing = dataclasses.replace(manifest, calibration={**manifest.calibration, "execute": 8})
    check_monitor_use(executing, flow.bundle.fingerprint, 4, None, 8)
    check_monitor_use(executing, flow.bundle.fingerprint, 4, None)  # a caller that does not execute chunks
    with pytest.raises(BundleError, match=r"calibration\.execute: calibrated executing 8 actions per chunk, used "
                                          r"executing 4"):
        check_monitor_use(executing, flow.bundle.fingerprint, 4, None, 4)
    other = exported("diffusion")
    with pytest.raises(BundleError, match=r"policy_fingerprint: calibrated on policy"):
        check_monitor_use(manifest, other.bundle.fingerprint, 4, None)
    with pytest.raises(BundleError, match=r"policy_fingerprint"):
        Engine(other.path, monitor=path)
    # A scorer changed after calibration is refused by its checksum.
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    data = json.loads((copy / "pseudocount" / "manifest.json").read_text())
    data["name"] = "changed"
    (copy / "pseudocount" / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match=r"scorer_manifests\.pseudocount: checksum mismatch"):
        load_monitor(copy)
    shutil.copytree(path / "pseudocount", copy / "pseudocount", dirs_exist_ok=True)
    np.savez(copy / "embedding.npz", mean=np.zeros(3), basis=np.eye(3), scale=np.ones(3))
    with pytest.raises(BundleError, match=r"embedding\.sha256: checksum mismatch"):
        load_monitor(copy)
    data = json.loads((path / "manifest.json").read_text())
    data["detectors"]["combined"]["signals"] = ["value"]
    (copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match=r"detectors\.combined\.signals.*'value' is not one of"):
        read_monitor_manifest(copy)
    data = json.loads((path / "manifest.json").read_text())
    assert data["accel"] is True and "accel" in data["signals"]
    data["accel_window"] = 0
    (copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match=r"accel_window: expected null or a positive integer, got 0"):
        read_monitor_manifest(copy)
    data["accel"], data["accel_window"] = False, None  # signals still list accel
    (copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match=r"signals: lists .*'accel'"):
        read_monitor_manifest(copy)


def test_eval_reports_each_episodes_first_alarm_and_the_rates(tiny_monitor, tmp_path):
    from sim.calibrate_monitor import rescore
    from sim.evaluate import EvalConfig, last_progress_step, run_suite

    flow, path = tiny_monitor
    with pytest.raises(BundleError, match="calibrated at N=4"):
        EvalConfig(policy=str(flow.path), monitor=str(path), tasks=("lift_bar",), episodes=1)
    report = run_suite(EvalConfig(policy=str(flow.path), monitor=str(path), n=4, tasks=("lift_bar",), episodes=3,
                                  execute=4, max_steps=24), json_path=tmp_path / "eval.json")
    # Replaying the recorded signals gives what the live tracks said (`taco monitor-report`).
    assert rescore(str(path), str(tmp_path / "eval.json"))["overall"] == report["summary"]["overall"]["monitor"]
    records = report["episodes"]
    for r in records:
        mon = r["monitor"]
        assert mon["decision_steps"] == [0, 4, 8, 12, 16, 20]
        assert len(mon["signals"]["pseudocount"]) == 6 and mon["signals"]["inconsistency"][0] is None
        step = mon["first_alarm_step"]["any"]
        assert (step is not None) == (mon["peak"]["any"] > read_monitor_manifest(path).detectors["any"]
                                      .threshold)
    summary = report["summary"]["overall"]["monitor"]
    failed = [r for r in records if not r["success"]]
    alarmed = [r for r in failed if r["monitor"]["first_alarm_step"]["any"] is not None]
    assert summary["failed"] == len(failed) and summary["failed_alarmed"] == len(alarmed)
    assert summary["tpr"] == (len(alarmed) / len(failed) if failed else None)
    if alarmed:
        leads = [(last_progress_step(r) - r["monitor"]["first_alarm_step"]["any"]) * 0.02 for r in alarmed]
        assert summary["lead_s_median"] == pytest.approx(float(np.median(leads)))
    assert set(summary["by_detector"]) == set(read_monitor_manifest(path).detectors) >= {"pseudocount", "combined"}
    other = EvalConfig(policy=str(flow.path), n=4, tasks=("lift_bar",), episodes=3, execute=4, max_steps=24)
    assert EvalConfig(policy=str(flow.path), monitor=str(path), n=4, tasks=("lift_bar",), episodes=3, execute=4,
                      max_steps=24).fingerprint() != other.fingerprint()


def test_last_progress_is_the_first_step_at_the_best_stage():
    from sim.evaluate import last_progress_step

    assert last_progress_step({"stages": [0, 1, 1, 2, 2, 1], "best_stage": 2}) == 3
    assert last_progress_step({"stages": [0, 0, 0], "best_stage": 0}) == 0


def test_calibrate_then_evaluate_the_shipped_policy_from_the_command_line(tmp_path, capsys):
    """The whole path a user takes: rollouts of the shipped flow policy, a calibrated bundle, an evaluation
    on other seeds that reports alarms; the bundle refuses another N."""
    from taco.cli import main

    out = tmp_path / "flow-monitor"
    assert main(["calibrate-monitor", "--policy", "flow", "--episodes", "24", "--alpha", "0.2", "--seed", "910000",
                 "--max-steps", "300", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "combined" in printed and f"wrote {out}" in printed
    manifest = read_monitor_manifest(out)
    assert manifest.n == 1 and manifest.verifier is None and set(manifest.scorers) == {"pseudocount", "value"}
    assert manifest.main == "any" and manifest.detectors["any"].alpha == 0.2
    assert manifest.calibration["episodes"] == 24 and manifest.calibration["seeds"] == [910000, 910023]
    assert (tmp_path / "flow-monitor.rollouts" / "calibration.json").is_file()
    assert main(["inspect", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "detector any (main): any of pseudocount (slack " in printed and "detector combined: cusum of" in printed
    assert main(["eval", "--policy", "flow", "--monitor", str(out), "--task", "transfer_cube", "--episodes", "6",
                 "--seed", "920000", "--max-steps", "300", "--json", str(tmp_path / "eval.json")]) == 0
    assert "monitor (any): alarms in" in capsys.readouterr().out
    summary = json.loads((tmp_path / "eval.json").read_text())["summary"]["overall"]["monitor"]
    assert summary["failed"] + summary["successful"] == 6
    assert main(["monitor-report", "--monitor", str(out), "--records", str(tmp_path / "eval.json"), "--json",
                 str(tmp_path / "report.json")]) == 0
    assert "elapsed" in capsys.readouterr().out
    assert json.loads((tmp_path / "report.json").read_text())["overall"] == summary
    assert main(["eval", "--policy", "flow", "--monitor", str(out), "--n", "4", "--episodes", "1"]) == 2
    assert "calibrated at N=1, used at N=4" in capsys.readouterr().err


def test_the_artifacts_monitor_stage_recalibrates_only_what_changed(tiny_monitor, tmp_path, monkeypatch):
    """`make artifacts` skips a monitor calibrated for this policy, N, verifier, scorers, seeds and alpha."""
    import dataclasses as dc
    import shutil

    import sim.calibrate_monitor as calibrate
    from runtime.monitor import read_monitor_manifest
    from sim.pipeline import ArtifactsConfig, monitor_stage
    from tiny_monitor import write_manifest

    flow, made = tiny_monitor
    bundles = tmp_path / "bundles"
    shutil.copytree(made / "pseudocount", bundles / "flow-cfn")  # the policy's shipped pseudo-count
    shutil.copytree(flow.path, bundles / "flow")
    policy = dc.replace(flow.bundle, path=bundles / "flow")  # named as the shipped policy, beside its cfn
    calls = []

    def fake(settings, progress=None):  # writes what a calibration would, bound as the stage asked
        calls.append(settings)
        out = Path(settings.out)
        shutil.copytree(made, out, dirs_exist_ok=True)
        base = read_monitor_manifest(made)
        write_manifest(out, dc.replace(base, n=settings.n, scorer_manifests={
            "pseudocount": sha256_file(bundles / "flow-cfn" / "manifest.json")},
            calibration={"seeds": [settings.seed, settings.seed + settings.episodes - 1], "alpha": settings.alpha}))

    monkeypatch.setattr(calibrate, "calibrate_monitor", fake)
    config = ArtifactsConfig(monitor_episodes=40, monitor_n=4, monitor_alpha=0.1)
    log = []
    assert monitor_stage(policy, bundles, config, log.append) == {"flow-monitor": bundles / "flow-monitor"}
    assert len(calls) == 1 and calls[0].n == 4 and calls[0].episodes == 40
    monitor_stage(policy, bundles, config, log.append)
    assert len(calls) == 1 and "up to date" in log[-1]
    monitor_stage(policy, bundles, dc.replace(config, monitor_alpha=0.05), log.append)
    assert len(calls) == 2 and calls[1].alpha == 0.05
