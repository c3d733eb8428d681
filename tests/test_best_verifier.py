"""The best verifier: chosen from a compare report against the pooled N=1, recorded in the policy bundle,
resolved by `--verifier best`; and the paired interval the demo's verdict line reports."""

import json
import shutil

import pytest

from policies.errors import BundleError, SpecError
from sim.compare import paired_difference_interval
from verifiers.best import choose_best, record_best
from verifiers.shipped import best_verifier, resolve_verifier


def _row(arm, n, verifier, successes, p, episodes=100):
    return {"arm": arm, "n": n, "verifier": verifier, "noise_stream": 0,
            "overall": {"successes": successes, "episodes": episodes, "success_rate": successes / episodes,
                        "wilson95": [0.0, 1.0]},
            "paired_vs_none": {"gained": 10, "lost": 2, "p_value": 0.04},
            "vs_pooled_reference": {"p_value": p}}


def _report(policy, rows):
    ref = {"arm": "none", "n": 1, "verifier": "none", "noise_stream": 0,
           "overall": {"successes": 40, "episodes": 100, "success_rate": 0.4, "wilson95": [0.3, 0.5]}}
    return {"policy": str(policy), "reference": "none", "tasks": ["transfer_cube"], "episodes": 100, "seed": 100000,
            "arms": [ref, *rows],
            "pooled_reference": {"arms": ["none", "none@1", "none@2"], "streams": [0, 1, 2],
                                 "overall": {"successes": 120, "episodes": 300, "success_rate": 0.4}}}


def test_the_best_arm_must_beat_the_pooled_reference_significantly(tmp_path):
    rows = [_row("random", 16, "random", 44, 0.5), _row("cfn", 16, "cfn", 55, 0.01),
            _row("knn", 16, "knn", 60, 0.2), _row("consensus", 16, "consensus", 58, 0.002)]
    # kNN has the most successes but is not significant; consensus is the best of the significant ones.
    assert choose_best(_report(tmp_path, rows))["arm"] == "consensus"
    assert choose_best(_report(tmp_path, rows[:1])) is None
    assert choose_best(_report(tmp_path, [_row("worse", 16, "cfn", 20, 0.001)])) is None  # significant, but worse
    no_pool = _report(tmp_path, rows)
    del no_pool["pooled_reference"]
    with pytest.raises(SpecError, match="reference-streams"):
        choose_best(no_pool)


def test_recording_the_best_keeps_the_fingerprint_and_best_resolves_to_it(flow, tmp_path):
    from policies import load_policy_bundle

    policy = tmp_path / "flow"
    shutil.copytree(flow.path, policy)
    before = load_policy_bundle(policy).fingerprint
    with pytest.raises(BundleError, match="taco best-verifier"):
        resolve_verifier("best", str(policy))
    rows = [_row("cfn", 16, str(tmp_path / "flow-cfn"), 55, 0.01)]
    record = record_best(str(policy), _report(policy, rows), command="taco best-verifier ...")
    assert record["name"] == "cfn" and record["n"] == 16 and record["reference"]["episodes"] == 300
    assert load_policy_bundle(policy).fingerprint == before
    assert best_verifier(str(policy))["p_value"] == 0.01
    # `best` resolves through the record to the sibling bundle, which must exist.
    with pytest.raises(BundleError, match="flow-cfn"):
        resolve_verifier("best", str(policy))
    (tmp_path / "flow-cfn").mkdir()
    (tmp_path / "flow-cfn" / "manifest.json").write_text("{}")
    assert resolve_verifier("best", str(policy)) == str(tmp_path / "flow-cfn")
    # A later report where nothing wins removes the record.
    assert record_best(str(policy), _report(policy, [_row("cfn", 16, "cfn", 41, 0.9)])) is None
    assert best_verifier(str(policy)) is None
    assert json.loads((policy / "manifest.json").read_text())["provenance"].get("best_verifier") is None


def test_a_best_verifier_must_ship_next_to_its_policy(flow, tmp_path):
    policy = tmp_path / "flow"
    shutil.copytree(flow.path, policy)
    with pytest.raises(SpecError, match="next to the policy"):
        record_best(str(policy), _report(policy, [_row("cfn", 16, "/elsewhere/v", 55, 0.01)]))
    with pytest.raises(SpecError, match="not"):
        record_best(str(policy), _report(tmp_path / "other", [_row("cfn", 16, "cfn", 55, 0.01)]))


def test_a_report_naming_a_shipped_policy_is_recorded_for_that_bundle(flow, tmp_path, monkeypatch):
    """`taco compare --policy flow` writes "flow" in its report; `taco best-verifier --policy flow` gets the
    resolved path: the two name the same bundle, and another shipped name does not."""
    monkeypatch.setenv("TACO_ARTIFACTS", str(tmp_path))
    for kind in ("flow", "diffusion"):
        shutil.copytree(flow.path, tmp_path / "bundles" / kind)
    policy = tmp_path / "bundles" / "flow"
    record = record_best(str(policy), _report("flow", [_row("value", 16, str(tmp_path / "bundles" / "flow-value"),
                                                             55, 0.01)]))
    assert record["name"] == "value" and best_verifier(str(policy))["name"] == "value"
    with pytest.raises(SpecError, match="about diffusion"):
        record_best(str(policy), _report("diffusion", [_row("cfn", 16, "cfn", 55, 0.01)]))


def test_paired_difference_interval():
    low, high = paired_difference_interval(12, 2, 100)
    assert 0 < low < 0.10 < high < 0.2  # +10 points, excluding zero
    low, high = paired_difference_interval(0, 0, 20)
    assert low < 0 < high and abs(low + high) < 1e-12  # nothing changed: symmetric around zero
    assert paired_difference_interval(20, 0, 20)[1] <= 1.0
    with pytest.raises(ValueError):
        paired_difference_interval(5, 6, 10)
