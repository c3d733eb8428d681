"""Writes the public names of the rclpy modules and classes the ROS nodes use, per ROS 2 distribution,
read from a git clone of ros2/rclpy (its branches `humble`, `jazzy`, ...), as JSON for
tests/test_ros_api.py: the nodes must use only what every supported distribution's rclpy has.

    python scripts/rclpy_api.py RCLPY_GIT_DIR humble jazzy > tests/data/rclpy_api.json
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys

# Module -> file in the rclpy package; classes whose methods the nodes call (module, class names).
MODULES = ("rclpy", "rclpy.node", "rclpy.qos", "rclpy.parameter", "rclpy.duration", "rclpy.signals",
           "rclpy.executors", "rclpy.lifecycle", "rclpy.qos_event", "rclpy.event_handler", "rclpy.time",
           "rclpy.clock", "rclpy.publisher", "rclpy.subscription", "rclpy.timer", "rclpy.lifecycle.node")
CLASSES = {"Node": ("rclpy.node", ("Node",)), "LifecycleNode": ("rclpy.lifecycle.node", ("LifecycleNodeMixin", "LifecycleNode")),
           "Publisher": ("rclpy.publisher", ("Publisher",)), "Timer": ("rclpy.timer", ("Timer",))}


def show(repo: str, ref: str, path: str) -> str | None:
    done = subprocess.run(["git", "-C", repo, "show", f"{ref}:{path}"], capture_output=True, text=True)
    return done.stdout if done.returncode == 0 else None


def source(repo: str, ref: str, module: str) -> str | None:
    base = "rclpy/" + module.replace(".", "/")
    return show(repo, ref, base + ".py") or show(repo, ref, base + "/__init__.py")


def top_names(tree: ast.Module) -> list[str]:
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return sorted(n for n in names if not n.startswith("_"))


def methods(tree: ast.Module, classes: tuple[str, ...]) -> list[str]:
    found = set()
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name in classes:
            found.update(n.name for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))
    return sorted(found)


def main(repo: str, refs: list[str]) -> dict:
    api = {}
    for ref in refs:
        commit = subprocess.run(["git", "-C", repo, "rev-parse", ref], capture_output=True, text=True,
                                check=True).stdout.strip()
        modules = {}
        for module in MODULES:
            text = source(repo, ref, module)
            if text is not None:
                modules[module] = top_names(ast.parse(text))
        classes = {}
        for name, (module, defs) in CLASSES.items():
            text = source(repo, ref, module)
            classes[name] = methods(ast.parse(text), defs) if text else []
        api[ref] = {"commit": commit, "modules": modules, "classes": classes}
    return api


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2:]), indent=1, sort_keys=True))
