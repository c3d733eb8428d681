"""The inference path runs with numpy and onnxruntime alone: torch is never imported by it."""

import subprocess
import sys
import textwrap


def test_engine_runs_without_importing_torch(flow, tmp_path):
    script = textwrap.dedent(f"""
        import sys
        from policies import make_example_observation
        from runtime import Engine
        from verifiers import load_verifier
        engine = Engine({str(flow.path)!r})
        decision = engine.infer(make_example_observation(engine.manifest), n=4, seed=0)
        assert decision.chunk.shape[0] == engine.manifest.chunk_length
        heavy = sorted(m for m in ("torch", "onnx", "lerobot", "mujoco", "rclpy") if m in sys.modules)
        print("heavy:", heavy)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "heavy: []" in result.stdout


def test_missing_extra_names_the_extra():
    from policies.extras import require

    try:
        require("definitely_not_installed_module_xyz")
    except ImportError as err:
        assert "extra" in str(err) and "pip install" in str(err)
    else:
        raise AssertionError("require() should have raised")


def test_an_extra_that_needs_a_newer_python_says_so(monkeypatch):
    """On the robot side's Python 3.10 the train extra (lerobot 0.6) cannot install: the hint says why."""
    from policies import extras

    monkeypatch.setattr(extras.sys, "version_info", (3, 10, 13, "final", 0))
    assert "needs Python 3.12 (this is 3.10)" in extras.install_hint("train")
    assert extras.install_hint("serve") == "pip install -e '.[serve]'"
    # rclpy comes from the robot's own ROS 2 when it has one, not from a second install beside it.
    assert "source /opt/ros/" in extras.install_hint("ros") and "'.[ros-system]'" in extras.install_hint("ros")
    monkeypatch.setattr(extras.sys, "version_info", (3, 12, 1, "final", 0))
    assert extras.install_hint("train") == "pip install -e '.[train]'"
