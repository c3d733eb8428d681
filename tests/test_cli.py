"""The `taco` commands as a user runs them (in-process through `main`, and once as a subprocess)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from taco.cli import build_parser, main
from tiny_bundles import have_torch


@pytest.mark.workstation
def test_export_then_inspect(tmp_path, capsys):
    out = tmp_path / "flow"
    assert main(["export", "--kind", "flow", "--size", "tiny", "--out", str(out)]) == 0
    assert (out / "manifest.json").is_file() and (out / "encoder.onnx").is_file()
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "fingerprint" in text and "encoder.onnx" in text and "noise" in text
    assert main(["inspect", str(out), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["kind"] == "flow" and len(data["fingerprint"]) == 64


@pytest.mark.workstation
def test_export_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "b"
    assert main(["export", "--size", "tiny", "--kind", "diffusion", "--sampler", "stepped", "--out", str(out)]) == 0
    assert main(["export", "--size", "tiny", "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["export", "--size", "tiny", "--out", str(out), "--overwrite"]) == 0


def test_inspect_reports_the_bad_field_without_a_traceback(flow, tmp_path, capsys):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(flow.path, bad)
    (bad / "sampler.onnx").write_bytes(b"tampered")
    assert main(["inspect", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "files.sampler.onnx" in err and "checksum mismatch" in err and "Traceback" not in err


def test_inspect_checks_the_graphs_against_the_manifest(flow, tmp_path, capsys):
    import shutil

    bad = tmp_path / "lying"
    shutil.copytree(flow.path, bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["feature"]["dim"] += 1
    (bad / "manifest.json").write_text(json.dumps(manifest))
    assert main(["inspect", str(bad)]) == 2
    assert "feature.dim" in capsys.readouterr().err


@pytest.mark.workstation
def test_missing_provider_is_an_error_not_a_traceback(capsys):
    import onnxruntime as ort

    if "TensorrtExecutionProvider" in ort.get_available_providers():
        return  # nothing to refuse on a TensorRT machine; test_sessions covers the present case
    assert main(["bench", "--size", "tiny", "--n", "1", "--iters", "1", "--provider", "tensorrt"]) == 2
    err = capsys.readouterr().err
    assert "TensorrtExecutionProvider" in err and "Traceback" not in err


@pytest.mark.workstation
def test_bench_quick_writes_rows_and_summary(tmp_path, capsys):
    path = tmp_path / "bench.json"
    assert main(["bench", "--size", "tiny", "--n", "1,16", "--iters", "3", "--quick", "--json", str(path)]) == 0
    report = json.loads(path.read_text())
    rows = {(r["impl"], r["n"], r["verifier"]) for r in report["rows"]}
    assert rows == {(i, n, v) for n in (1, 16) for i, v in [("runtime", False), ("runtime", True), ("naive", True)]} \
        | {("pruned 2:1", 16, True)}  # the default pruning (N=1 is no more than the one it keeps)
    for row in report["rows"]:
        assert row["total"]["p50"] > 0 and row["total"]["p99"] >= row["total"]["p50"]
    summary = report["summary"]
    assert summary["ratio_n16_over_n1"] > 0 and summary["speedup_over_naive_n16"] > 0
    assert summary["candidate_mflops"] > 0
    assert summary["prune"] == "2:1" and summary["ratio_n16_pruned_over_n1"] > 0
    assert "ratio_n16_over_n1" in capsys.readouterr().out


def test_bench_on_a_given_bundle_says_why_the_naive_rows_are_missing(flow, tmp_path):
    path = tmp_path / "bench.json"
    assert main(["bench", "--bundle", str(flow.path), "--n", "1,2", "--iters", "2", "--quick",
                 "--json", str(path)]) == 0
    report = json.loads(path.read_text())
    assert {(r["impl"], r["n"]) for r in report["rows"]} == {("runtime", 1), ("runtime", 2), ("pruned 2:1", 2)}
    assert any("naive" in note for note in report["notes"])


def test_bad_candidate_list_is_a_usage_error():
    with pytest.raises(SystemExit):
        main(["bench", "--n", "1,zero"])


@pytest.mark.workstation
def test_example_demo_runs_end_to_end_as_a_console_script(tmp_path):
    taco = [sys.executable, "-m", "taco"]
    result = subprocess.run([*taco, "demo", "--example", "--quick", "--out", str(tmp_path / "example")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "chosen candidate" in result.stdout and "verifier example" in result.stdout
    assert "median step latency" in result.stdout


def test_demo_suite_compares_the_arms_on_the_same_seeds_and_writes_the_report(flow, tmp_path):
    from verifiers.bundle import write_verifier_bundle
    from verifiers.synthetic import linear_verifier_onnx

    f = flow.bundle.manifest.feature_dim
    verifier = write_verifier_bundle(linear_verifier_onnx(tmp_path / "v.onnx", np.linspace(-1, 1, f)),
                                     tmp_path / "v", policy_fingerprint=flow.bundle.fingerprint, feature_dim=f)
    out, summary = tmp_path / "demo", tmp_path / "demo.json"
    assert main(["demo", "--quick", "--policy", str(flow.path), "--verifier", str(verifier.path), "--workers", "1",
                 "--out", str(out), "--json", str(summary)]) == 0
    report = json.loads(summary.read_text())
    arms = [row["arm"] for row in report["arms"]]
    assert arms == ["none", "v"]
    assert set(report["summary"]["success"]) == set(arms)
    for row in report["arms"]:
        assert row["overall"]["episodes"] == 2 and 0.0 <= report["summary"]["success"][row["arm"]] <= 1.0
    # Both arms ran the same seeds.
    seeds = [[e["seed"] for e in json.loads((out / f"arm-{a}.json").read_text())["episodes"]] for a in arms]
    assert seeds == [[600_000, 600_001]] * 2  # the held-out range
    assert (out / "success_by_arm.png").stat().st_size > 0
    index = (out / "index.md").read_text()
    assert "success_by_arm" in index
    # The verdict line: gained and lost against N=1 on these seeds, and an interval around the difference.
    paired = report["arms"][1]["paired_vs_none"]
    assert report["verdict"].startswith("v at N=16 against N=1 on the same 2 episodes")
    assert f"gained {paired['gained']}, lost {paired['lost']}" in report["verdict"]
    assert "95% interval" in report["verdict"]
    assert report["verdict"] in index
    full = json.loads((out / "compare.json").read_text())
    if full["videos"]:
        # Filmed where the verifier changed the outcome or, failing that, the best stage: both arms, same seed.
        assert [v["arm"] for v in full["videos"]] == arms and len({v["seed"] for v in full["videos"]}) == 1
        assert all(Path(v["path"]).stat().st_size > 0 for v in full["videos"])
        assert "changed the" in index
        a, b = full["videos"]
        assert (a["success"], a["best_stage"]) != (b["success"], b["best_stage"])
    else:
        assert "none was filmed" in index


def test_demo_quick_on_the_shipped_default_writes_success_per_arm(tmp_path):
    """The README's main job in miniature, on the bundles committed under artifacts/."""
    summary = tmp_path / "demo.json"
    result = subprocess.run([sys.executable, "-m", "taco", "demo", "--quick", "--workers", "1",
                             "--out", str(tmp_path / "demo"), "--json", str(summary)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(summary.read_text())
    # The shipped default records its best verifier; the demo runs it at its recorded N.
    from policies.shipped import resolve_policy
    from verifiers.shipped import best_verifier

    # The shipped default ships with a best verifier that beat its pooled N=1 (the fallback to CFN when none
    # is recorded is tested below, on a copy of the shipped flow policy without its record).
    best = best_verifier(resolve_policy("default"))
    assert best is not None, "the shipped default has no best verifier recorded (taco best-verifier)"
    # The record is its own evidence: its p-value is Fisher's on its own counts, and those beat N=1.
    from sim.compare import fisher_exact

    ref = best["reference"]
    assert best["p_value"] == pytest.approx(fisher_exact(best["successes"], best["episodes"], ref["successes"],
                                                         ref["episodes"]), rel=1e-9)
    assert best["p_value"] < 0.05 and best["successes"] / best["episodes"] > ref["successes"] / ref["episodes"]
    assert set(report["summary"]["success"]) == {"none", best["name"]} and report["arms"][1]["n"] == best["n"]
    assert "recorded best verifier" in result.stdout
    assert all(0.0 <= v <= 1.0 for v in report["summary"]["success"].values())
    assert report["policy"] == resolve_policy("default")
    assert f"verdict: {report['arms'][1]['arm']} at N={report['arms'][1]['n']} against N=1" in result.stdout
    assert (tmp_path / "demo" / "index.md").is_file()


def test_demo_on_a_policy_without_a_best_verifier_says_so_and_shows_cfn(tmp_path, capsys):
    """With no best verifier recorded (the shipped flow policy, its record taken out), `--verifier best`
    falls back to CFN at N=16 and says why."""
    from policies.shipped import resolve_policy
    from verifiers.shipped import best_verifier

    shipped = Path(resolve_policy("flow"))
    policy = tmp_path / "bundles" / "flow"
    shutil.copytree(shipped, policy)
    shutil.copytree(shipped.with_name("flow-cfn"), policy.with_name("flow-cfn"))
    manifest = json.loads((policy / "manifest.json").read_text())
    manifest["provenance"].pop("best_verifier", None)
    (policy / "manifest.json").write_text(json.dumps(manifest))
    assert best_verifier(str(policy)) is None
    summary = tmp_path / "demo.json"
    assert main(["demo", "--policy", str(policy), "--quick", "--workers", "1", "--out", str(tmp_path / "demo"),
                 "--json", str(summary)]) == 0
    out = capsys.readouterr().out
    report = json.loads(summary.read_text())
    assert set(report["summary"]["success"]) == {"none", "cfn"} and report["arms"][1]["n"] == 16
    assert "no best verifier recorded" in out and "verdict: cfn at N=16 against N=1" in out


def test_every_shipped_verifier_loads_and_is_bound_to_its_shipped_policy():
    """artifacts/bundles/<policy>-<verifier>: each validates (checksums) and each names its policy's fingerprint."""
    from policies.bundle import load_policy_bundle
    from policies.shipped import artifacts_dir
    from verifiers.shipped import VERIFIER_NAMES
    from runtime.engine import Engine

    bundles = artifacts_dir() / "bundles"
    policies = [p for p in bundles.iterdir() if (p / "manifest.json").is_file() and "-" not in p.name]
    assert {"flow", "diffusion"} <= {p.name for p in policies}
    for policy in policies:
        fingerprint = load_policy_bundle(policy).fingerprint
        shipped = [v for v in VERIFIER_NAMES if (bundles / f"{policy.name}-{v}" / "manifest.json").is_file()]
        # flow32 (for asynchronous execution) ships only the verifiers that need no feature search.
        wanted = {"random", "consensus"} | (set() if policy.name == "flow32" else {"cfn", "rnd", "knn"})
        assert wanted <= set(shipped), policy.name
        engine = Engine(policy)
        for name in shipped:
            verifier = engine.load_verifier(bundles / f"{policy.name}-{name}")
            assert verifier.policy_fingerprint == fingerprint


def test_taco_ros_robot_runs_a_shipped_policy_whose_chunk_outlasts_300_ms_with_rtc():
    """The robot's default (ros_nodes.commands.ROBOT_POLICY): real-time chunking, and a chunk longer than
    twice 300 ms of inference (docs/async.md, "A chunk must outlast the delay")."""
    from policies.bundle import load_policy_bundle
    from policies.shipped import resolve_policy
    from ros_nodes.commands import ROBOT_POLICY

    manifest = load_policy_bundle(resolve_policy(ROBOT_POLICY)).manifest
    assert manifest.rtc and manifest.chunk_length * manifest.action_dt >= 2 * 0.3


def test_train_verifier_consensus_needs_only_the_policy(exported, tmp_path, capsys):
    flow = exported("flow")
    out = tmp_path / "flow-consensus"
    assert main(["train-verifier", "--kind", "consensus", "--policy", str(flow.bundle.path), "--out", str(out)]) == 0
    assert json.loads((out / "manifest.json").read_text())["policy_fingerprint"] == flow.bundle.fingerprint
    capsys.readouterr()
    # A kind that learns from features cannot be made from the policy alone; on the robot side (no torch) it
    # needs the train extra first, and says so.
    code = main(["train-verifier", "--kind", "cfn", "--policy", str(flow.bundle.path), "--out", str(tmp_path / "c")])
    err = capsys.readouterr().err
    if have_torch():
        assert code == 2 and "--features" in err
    else:
        assert code == 3 and "needs the 'train' extra" in err


def test_a_plugin_package_adds_its_own_command_and_cannot_shadow_one(tmp_path, monkeypatch, capsys):
    dist = tmp_path / "taco_cmd_example-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: taco-cmd-example\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[taco.commands]\nhello = taco_cmd_example:register\n"
                                           "broken = no_such_module_xyz:register\n")
    (tmp_path / "taco_cmd_example.py").write_text(
        "def register(cli):\n"
        "    p = cli.add('hello', 'say hello (example plugin)', run=lambda args: print('hello', args.name) or 0,\n"
        "                extras=('sim',))\n"
        "    p.add_argument('--name', default='robot')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["hello", "--name", "aloha"]) == 0
    out = capsys.readouterr()
    assert out.out == "hello aloha\n"
    assert "ignoring the plugin broken (no_such_module_xyz:register): ModuleNotFoundError" in out.err
    assert main(["list"]) == 0
    assert "hello              hello (taco_cmd_example:register)  [sim]" in capsys.readouterr().out

    (tmp_path / "taco_cmd_example.py").write_text(
        "def register(cli):\n    cli.add('eval', 'a second eval', run=lambda args: 0).add_argument('--x')\n")
    monkeypatch.delitem(sys.modules, "taco_cmd_example", raising=False)
    assert main(["list"]) == 0
    assert "ignoring a plugin's command: taco command 'eval' is registered twice" in capsys.readouterr().err
    assert build_parser().get_default("registry").commands["eval"].part == "sim.commands"
