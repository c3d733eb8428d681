"""The folders are layers that import one way, and the command line works on a core-only install.

Every import statement of every module is read (module level and inside functions, since a lazy
import is still a dependency), as is every `importlib.import_module("...")` with a literal name.
"""

from __future__ import annotations

import ast
import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("taco", "runtime", "policies", "verifiers", "sim", "hardware", "serving", "ros_nodes")
# Part -> the parts it must never import (../shared/DESIGN.md, folder table). The command line, `taco`,
# sits on top of everything, so no part imports it.
FORBIDDEN = {
    "runtime": {"sim", "serving", "ros_nodes", "taco"},
    "verifiers": {"runtime", "sim", "serving", "ros_nodes", "taco"},
    "policies": {"runtime", "verifiers", "sim", "serving", "ros_nodes", "taco"},
    "hardware": {"runtime", "verifiers", "sim", "serving", "ros_nodes", "taco"},
    "sim": {"serving", "ros_nodes", "taco"},
    "serving": {"sim", "ros_nodes", "taco"},
    "ros_nodes": {"taco"},
}


def imported_names(source: str) -> list[tuple[int, str]]:
    """(line, dotted name) of everything a module's source imports: `import a.b`, `from a.b import c`
    (both `a.b` and `a.b.c`, which may be a module), and `import_module("a.b")` with a literal."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.append((node.lineno, node.args[0].value))
    return found


def project_modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the parts."""
    modules = {}
    for part in PARTS:
        for path in sorted((ROOT / part).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            modules[name.removesuffix(".__init__")] = path
    return modules


def forbidden_edges(module: str, source: str) -> list[str]:
    part = module.split(".")[0]
    return [f"{module}:{line} imports {name}" for line, name in imported_names(source)
            if name.split(".")[0] in FORBIDDEN.get(part, ())]


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {module: {name for _, name in imported_names(path.read_text()) if name in modules and name != module}
            for module, path in modules.items()}


def test_the_checker_sees_lazy_and_dynamic_imports():
    source = "import numpy\n\ndef f():\n    from sim.env import AlohaSimEnv\n    importlib.import_module('ros_nodes.sinks')\n"
    assert forbidden_edges("runtime.example", source) == [
        "runtime.example:4 imports sim.env", "runtime.example:4 imports sim.env.AlohaSimEnv",
        "runtime.example:5 imports ros_nodes.sinks"]
    assert forbidden_edges("ros_nodes.example", source) == []


def test_no_part_imports_a_layer_above_it():
    modules = project_modules()
    assert {m.split(".")[0] for m in modules} == set(PARTS)
    bad = [edge for module, path in modules.items() for edge in forbidden_edges(module, path.read_text())]
    assert not bad, "forbidden imports (see FORBIDDEN):\n" + "\n".join(bad)


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_one():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_two_modules_import_each_other_even_lazily():
    cycle = _find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


# ------------------------------------------------------------------------------------------------
# A core-only install: what `pip install -e .` brings, numpy and onnxruntime with what they need.

def _core_distributions() -> set[str]:
    """The distributions the project's core (no extra) needs, transitively, as installed here."""
    from packaging.requirements import Requirement

    wanted, seen = ["taco-runtime"], set()
    while wanted:
        name = wanted.pop()
        key = name.lower().replace("_", "-")
        if key in seen:
            continue
        seen.add(key)
        for text in importlib.metadata.distribution(name).requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                wanted.append(req.name)
    seen.discard("taco-runtime")
    return seen


@pytest.fixture(scope="module")
def core_path(tmp_path_factory) -> Path:
    """A folder holding only the core distributions' files (links into this venv), for `python -S`."""
    folder = tmp_path_factory.mktemp("core-site")
    for name in _core_distributions():
        for top in {Path(f).parts[0] for f in importlib.metadata.distribution(name).files or []}:
            source = Path(importlib.metadata.distribution(name).locate_file(top))
            if top not in ("..", "__pycache__") and source.exists() and not (folder / top).exists():
                (folder / top).symlink_to(source)
    return folder


def _core_taco(core_path: Path, *args: str) -> subprocess.CompletedProcess:
    # -S: no site-packages, so the interpreter sees the standard library, the core and the project only.
    env = dict(os.environ, PYTHONPATH=f"{core_path}{os.pathsep}{ROOT}")
    return subprocess.run([sys.executable, "-S", "-m", "taco", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=120)


def test_the_core_environment_really_lacks_the_extras(core_path):
    assert {"numpy", "onnxruntime"} <= {p.name for p in core_path.iterdir()}
    env = dict(os.environ, PYTHONPATH=f"{core_path}{os.pathsep}{ROOT}")
    probe = ("import importlib.util as u; "
             "print([m for m in ('torch', 'mujoco', 'rclpy', 'lerobot', 'ray', 'websockets') if u.find_spec(m)])")
    out = subprocess.run([sys.executable, "-S", "-c", probe], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr


def test_taco_help_on_a_core_install_lists_every_command_and_the_extras_they_need(core_path):
    from taco.cli import build_parser

    every = build_parser().get_default("registry").commands
    result = _core_taco(core_path, "--help")
    assert result.returncode == 0, result.stderr
    listing = result.stdout.split("commands (")[1].replace("\n" + " " * 20, " ")  # join wrapped help lines
    listed = {line.split()[0]: line for line in listing.splitlines() if line.startswith("  ")}
    assert set(listed) == set(every)
    for name, command in every.items():
        if command.extras:
            assert listed[name].endswith(": not installed]"), listed[name]
            marks = listed[name].rsplit("[needs the ", 1)[1]
            assert all(extra in marks for extra in command.extras), listed[name]
        else:
            assert "[needs" not in listed[name], listed[name]
    assert every["inspect"].extras == () and every["eval"].extras == ("sim",)
    from policies.extras import install_hint

    for extra in ("train", "sim", "ros", "serve", "verifiers"):
        assert f"not installed here: the {extra} extra ({install_hint(extra)})" in result.stdout


def test_a_command_of_a_missing_extra_says_what_to_install(core_path):
    result = _core_taco(core_path, "eval", "--policy", "default", "--quick")
    assert result.returncode == 3
    assert "'sim' extra" in result.stderr and "pip install -e '.[sim]'" in result.stderr
    assert "Traceback" not in result.stderr
    assert _core_taco(core_path, "eval", "--help").returncode == 0  # its options are still listed


def test_core_commands_run_on_a_core_install(core_path, flow):
    result = _core_taco(core_path, "inspect", str(flow.path))
    assert result.returncode == 0, result.stderr
    assert flow.bundle.fingerprint in result.stdout
    result = _core_taco(core_path, "list")
    assert result.returncode == 0, result.stderr
    assert "cfn" in result.stdout and "install the sim extra" in result.stdout


def test_nothing_imports_a_top_level_tests_package():
    """draccus (a lerobot dependency) installs its own top-level `tests` package into site-packages, so
    `import tests...` would reach it, not ours: our tests are no package (no tests/__init__.py) and no module
    of the project imports `tests`; test helpers are imported by their own names (tiny_bundles, ...)."""
    assert not (ROOT / "tests" / "__init__.py").exists()
    offenders = []
    folders = [d for d in ROOT.iterdir() if d.is_dir() and not d.name.startswith(".") and d.name != "build"]
    for path in sorted(p for d in folders for p in d.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            offenders += [f"{path.relative_to(ROOT)}:{node.lineno}" for n in names if n.split(".")[0] == "tests"]
    assert not offenders, offenders
