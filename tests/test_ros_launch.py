"""Launch files (ROS 2 `launch` is not installable here) and `taco ros` process plumbing.

The launch files run against a small stand-in for `launch` that records what they declare; the
commands they would start are resolved with the declared defaults and checked against the nodes'
own parameters. No rclpy needed.
"""

from __future__ import annotations

import ast
import runpy
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "ros_nodes" / "launch"


class _Recorded:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


class _Config(_Recorded):
    pass


@pytest.fixture
def fake_launch(monkeypatch):
    mods = {name: types.ModuleType(name) for name in
            ("launch", "launch.actions", "launch.substitutions", "launch.conditions")}
    mods["launch"].LaunchDescription = _Recorded
    mods["launch.actions"].DeclareLaunchArgument = _Recorded
    mods["launch.actions"].ExecuteProcess = _Recorded
    mods["launch.substitutions"].LaunchConfiguration = _Config
    mods["launch.substitutions"].PythonExpression = _Recorded
    mods["launch.conditions"].IfCondition = _Recorded
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)


def _resolve(part, defaults):
    if isinstance(part, list):
        return "".join(_resolve(p, defaults) for p in part)
    if isinstance(part, _Config):
        return defaults[part.args[0]]
    return part


def _declared_parameters(module_file: Path) -> set[str]:
    """Names a node declares: p("name", ...) / self.declare_parameter("name", ...)."""
    names = set()
    for node in ast.walk(ast.parse(module_file.read_text())):
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in ("p", "declare_parameter"):
                names.add(node.args[0].value)
    return names


@pytest.mark.parametrize("launch_file", sorted(LAUNCH.glob("*.launch.py")), ids=lambda p: p.name)
def test_launch_files_start_our_nodes_with_parameters_they_declare(launch_file, fake_launch):
    compile(launch_file.read_text(), str(launch_file), "exec")
    ns = runpy.run_path(str(launch_file))
    description = ns["generate_launch_description"]()
    entities = description.args[0]
    defaults = {e.args[0]: e.kwargs["default_value"] for e in entities if "default_value" in e.kwargs}
    processes = [e for e in entities if "cmd" in e.kwargs]
    assert processes
    for proc in processes:
        cmd = [_resolve(part, defaults) for part in proc.kwargs["cmd"]]
        assert cmd[1] == "-m" and cmd[3] == "--ros-args"
        module = cmd[2]
        module_file = ROOT / (module.replace(".", "/") + ".py")
        assert module_file.is_file(), module
        declared = _declared_parameters(module_file)
        for flag, assignment in zip(cmd[4::2], cmd[5::2]):
            assert flag == "-p"
            name = assignment.split(":=", 1)[0]
            assert name in declared, f"{launch_file.name}: {module} does not declare {name!r}"


def test_node_command_formats_ros_parameters():
    from ros_nodes.launcher import node_command

    cmd = node_command("ros_nodes.sim_node", {"episodes": 3, "task": "insertion", "wait_for_commands": False,
                                              "cameras": ["cam_high", "cam_low"]})
    assert cmd[:4] == [sys.executable, "-m", "ros_nodes.sim_node", "--ros-args"]
    assert cmd[4:] == ["-p", "episodes:=3", "-p", "task:=insertion", "-p", "wait_for_commands:=false",
                       "-p", "cameras:=['cam_high','cam_low']"]


def test_taco_ros_refuses_a_missing_policy_before_starting_nodes(tmp_path, capsys):
    from taco.cli import main

    assert main(["ros", "sim", "--policy", str(tmp_path / "nope")]) == 2
    assert "nope" in capsys.readouterr().err


def test_nodes_get_the_shared_memory_profile_for_camera_frames_unless_dds_is_configured(monkeypatch):
    """Fast DDS's built-in shared memory takes messages up to 0.5 MB: without the profile a 480x640 frame
    goes over fragmented UDP and best-effort image topics lose frames (docs/ros.md, Latency)."""
    import xml.etree.ElementTree as ET

    from ros_nodes.launcher import LARGE_DATA_PROFILE, ros_env

    for key in ("RMW_IMPLEMENTATION", "FASTRTPS_DEFAULT_PROFILES_FILE", "FASTDDS_DEFAULT_PROFILES_FILE",
                "FASTDDS_BUILTIN_TRANSPORTS"):
        monkeypatch.delenv(key, raising=False)
    assert ros_env()["FASTRTPS_DEFAULT_PROFILES_FILE"] == str(LARGE_DATA_PROFILE)
    ns = {"p": "http://www.eprosima.com/XMLSchemas/fastRTPS_Profiles"}
    shm = ET.parse(LARGE_DATA_PROFILE).find(".//p:transport_descriptor[p:type='SHM']", ns)
    assert int(shm.find("p:maxMessageSize", ns).text) >= 4 * 480 * 640 * 3
    # The robot's own choices stand: another middleware, a profile of its own, Jazzy's builtin transports.
    for key, value in (("RMW_IMPLEMENTATION", "rmw_cyclonedds_cpp"), ("FASTRTPS_DEFAULT_PROFILES_FILE", "/robot.xml"),
                       ("FASTDDS_BUILTIN_TRANSPORTS", "LARGE_DATA")):
        monkeypatch.setenv(key, value)
        assert ros_env().get("FASTRTPS_DEFAULT_PROFILES_FILE") in (None, "/robot.xml")
        monkeypatch.delenv(key)


def _record_launches(monkeypatch) -> list:
    """`taco ros` with a Launch that records the node commands it would start instead of starting them."""
    import ros_nodes.launcher as launcher

    started = []

    class Recorded(launcher.Launch):
        def start(self):
            started.append(self.commands)

        def wait(self):
            return 0

    monkeypatch.setattr(launcher, "Launch", Recorded)
    return started


def test_taco_ros_robot_caps_the_rtc_guidance_where_flow32_stays_delay_robust(monkeypatch, fake_launch, capsys):
    """`taco ros robot` passes the cap measured for flow32 at 200 ms (docs/async.md) unless told another; the
    launch file gives the node the same defaults."""
    from ros_nodes.commands import ROBOT_RTC_MAX_WEIGHT
    from taco.cli import main

    started = _record_launches(monkeypatch)

    def policy_params(argv):
        assert main(argv) == 0
        cmd = started.pop()["policy"]
        return dict(cmd[i + 1].split(":=", 1) for i in range(4, len(cmd), 2))

    assert float(policy_params(["ros", "robot"])["rtc_max_weight"]) == ROBOT_RTC_MAX_WEIGHT == 5.0
    assert float(policy_params(["ros", "robot", "--rtc-max-weight", "7.5"])["rtc_max_weight"]) == 7.5
    assert main(["ros", "robot", "--rtc-max-weight", "-1"]) == 2 and not started
    assert "max_weight" in capsys.readouterr().err
    args = runpy.run_path(str(LAUNCH / "robot.launch.py"))["ARGS"]
    assert (args["policy"], float(args["rtc_max_weight"])) == ("flow32", ROBOT_RTC_MAX_WEIGHT)


def test_taco_ros_passes_a_monitor_checked_against_n_before_starting_nodes(monkeypatch, exported, tmp_path, capsys):
    from taco.cli import main
    from tiny_monitor import make_tiny_monitor

    flow = exported("flow")
    monitor = make_tiny_monitor(flow, tmp_path)
    started = _record_launches(monkeypatch)
    base = ["ros", "sim", "--policy", str(flow.path), "--monitor", str(monitor)]
    assert main([*base, "--n", "4", "--monitor-action", "hold"]) == 0
    cmd = started.pop()["policy"]
    params = dict(cmd[i + 1].split(":=", 1) for i in range(4, len(cmd), 2))
    assert (params["monitor"], params["monitor_action"]) == (str(monitor), "hold")
    assert main([*base, "--n", "16"]) == 2 and not started
    assert "calibrated at N=4, used at N=16" in capsys.readouterr().err
    assert main(["ros", "sim", "--policy", str(flow.path), "--monitor-action", "slow"]) == 2 and not started
    assert "needs a --monitor" in capsys.readouterr().err
    assert main([*base, "--n", "4", "--prune", "2:1"]) == 2 and not started
    assert "calibrated on fully denoised candidates" in capsys.readouterr().err


def test_taco_ros_passes_a_pruning_checked_against_the_policy_before_starting_nodes(monkeypatch, exported, capsys):
    from taco.cli import main

    flow = exported("flow")
    started = _record_launches(monkeypatch)
    params = lambda: dict(cmd[i + 1].split(":=", 1) for i in range(4, len(cmd), 2))  # noqa: E731
    assert main(["ros", "sim", "--policy", str(flow.path), "--prune", "2:1"]) == 0
    cmd = started.pop()["policy"]
    assert params()["prune"] == "2:1"
    assert main(["ros", "sim", "--policy", str(flow.path)]) == 0
    cmd = started.pop()["policy"]
    assert "prune" not in params()  # the node's default: auto
    assert main(["ros", "sim", "--policy", str(flow.path), "--prune", "none"]) == 0
    cmd = started.pop()["policy"]
    assert params()["prune"] == "none"
    steps = flow.bundle.manifest.num_steps
    assert main(["ros", "sim", "--policy", str(flow.path), "--prune", f"{steps}:1"]) == 2 and not started
    assert f"k must be in [1, {steps - 1}]" in capsys.readouterr().err
    assert main(["ros", "sim", "--policy", str(flow.path), "--prune", "two"]) == 2 and not started
    assert "expected k:m" in capsys.readouterr().err
    assert main(["ros", "sim", "--policy", str(flow.path), "--adaptive", "4:0.05"]) == 0
    cmd = started.pop()["policy"]
    assert dict(cmd[i + 1].split(":=", 1) for i in range(4, len(cmd), 2))["adaptive"] == "4:0.05"
    assert main(["ros", "sim", "--policy", str(flow.path), "--adaptive", "4:0.05", "--prune", "2:1"]) == 2
    assert "not with --prune" in capsys.readouterr().err and not started
