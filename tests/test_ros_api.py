"""The ROS nodes use only rclpy APIs that every supported distribution has: Humble (Ubuntu 22.04, JetPack 6:
Python 3.10) and Jazzy (the wheels the tests run on). Checked statically against the public names of
rclpy's own source on each distribution's branch (tests/data/rclpy_api.json, written by
scripts/rclpy_api.py from a clone of ros2/rclpy, with the commits it read): an import of a name one
distribution lacks must sit in a `try:` with an `except ImportError:` alternative that the other has.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
API = json.loads((ROOT / "tests" / "data" / "rclpy_api.json").read_text())
DISTROS = ("humble", "jazzy")
NODE_BASES = {"Node": "Node", "LifecycleNode": "LifecycleNode"}
# Methods our code calls on rclpy's publishers and timers (what `self.<x>_pub.` and timers are asked).
PUBLISHER_CALLS = ("publish", "wait_for_all_acked", "get_subscription_count")


def modules() -> dict[Path, ast.Module]:
    return {p: ast.parse(p.read_text()) for p in sorted((ROOT / "ros_nodes").glob("*.py"))}


def available(distro: str, module: str, name: str) -> bool:
    names = API[distro]["modules"].get(module)
    if names is None:
        return False
    return name in names or f"{module}.{name}" in API[distro]["modules"]


def imports(tree: ast.Module):
    """(alternatives, line) for every `from rclpy... import`: one alternative, or the try body's and its
    ImportError handlers' imports when it sits in such a try."""
    guarded = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
                isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
                for h in node.handlers):
            groups = [[n for n in node.body if isinstance(n, ast.ImportFrom)]]
            groups += [[n for n in h.body if isinstance(n, ast.ImportFrom)] for h in node.handlers]
            alternatives = [[(i.module, a.name) for i in g for a in i.names] for g in groups if g]
            if any(m.startswith("rclpy") for alt in alternatives for m, _ in alt):
                guarded.update(id(i) for g in groups for i in g)
                yield alternatives, node.lineno
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("rclpy") and id(node) not in guarded:
            yield [[(node.module, a.name) for a in node.names]], node.lineno


def test_the_api_table_covers_each_distribution():
    for distro in DISTROS:
        assert len(API[distro]["commit"]) == 40
        assert {"rclpy", "rclpy.node", "rclpy.qos"} <= set(API[distro]["modules"])
        assert "create_publisher" in API[distro]["classes"]["Node"]
    # The table tells the distributions apart where they differ (Iron renamed qos_event to event_handler).
    assert "rclpy.event_handler" in API["jazzy"]["modules"] and "rclpy.event_handler" not in API["humble"]["modules"]


def test_every_rclpy_import_of_the_nodes_exists_in_humble_and_jazzy():
    problems = []
    for path, tree in modules().items():
        for alternatives, line in imports(tree):
            for distro in DISTROS:
                if not any(all(available(distro, m, n) for m, n in alt) for alt in alternatives):
                    problems.append(f"{path.name}:{line}: {alternatives} not in {distro}'s rclpy")
    assert not problems, "\n".join(problems)


def test_every_rclpy_function_and_node_method_the_nodes_call_exists_in_humble_and_jazzy():
    problems = []
    for path, tree in modules().items():
        for node in ast.walk(tree):
            # rclpy.init(...), rclpy.spin_once(...), ...
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "rclpy":
                for distro in DISTROS:
                    if node.attr not in API[distro]["modules"]["rclpy"]:
                        problems.append(f"{path.name}:{node.lineno}: rclpy.{node.attr} not in {distro}")
            # self.<method>(...) in our Node / LifecycleNode subclasses, where the class does not define it.
            if isinstance(node, ast.ClassDef):
                bases = [b.id for b in node.bases if isinstance(b, ast.Name) and b.id in NODE_BASES]
                if not bases:
                    continue
                own = {n.name for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
                for call in ast.walk(node):
                    f = getattr(call, "func", None)
                    if (isinstance(call, ast.Call) and isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name)
                            and f.value.id == "self" and f.attr not in own):
                        for distro in DISTROS:
                            known = set(API[distro]["classes"]["Node"]) | set(API[distro]["classes"][NODE_BASES[bases[0]]])
                            if f.attr not in known:
                                problems.append(f"{path.name}:{call.lineno}: {bases[0]}.{f.attr} not in {distro}")
    for distro in DISTROS:
        for method in PUBLISHER_CALLS:
            if method not in API[distro]["classes"]["Publisher"]:
                problems.append(f"Publisher.{method} not in {distro}")
    assert not problems, "\n".join(sorted(set(problems)))
