"""The README and docs/ as a user reads them: short, linked, and every command in them works as written.

Every line of a ```bash block that runs `taco`, `make`, a script or `python -m` is checked:
`taco` lines parse with the real parser, `make` targets exist, benchmark flags are the script's own.
The README's short commands are run.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

from taco.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "artifacts" / "README.md",
         ROOT / "benchmarks" / "README.md"]
# README commands run by this test (the others run for minutes to hours; they are parsed).
SHORT = ("list", "inspect")


def bash_commands(page: Path) -> list[list[str]]:
    """The command lines of a page's ```bash blocks (continuations joined, comments dropped), split."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", page.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(words)
    return commands


def test_readme_is_a_first_page_not_a_lab_notebook():
    text = (ROOT / "README.md").read_text()
    assert len(text) < 12_000, f"README.md is {len(text)} characters"
    assert "make demo" in text and "make test" in text
    linked = set(re.findall(r"\]\((docs/[\w-]+\.md)", text))
    assert linked == {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")}, "every docs page is linked"


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings."""
    heads = re.findall(r"^#+ (.+)$", page.read_text(), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve(page):
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        assert dest.exists(), f"{page.name}: link to {target} does not resolve"
        if anchor and dest.suffix == ".md":
            assert anchor in _anchors(dest), f"{page.name}: no heading for #{anchor} in {dest.name}"


@cache
def _makefile_targets() -> set[str]:
    return set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))


@cache
def _script_help(script: str) -> str:
    return subprocess.run([sys.executable, str(ROOT / script), "--help"], capture_output=True, text=True,
                          timeout=120, check=True).stdout


def check_command(words: list[str]) -> None:
    """Raises AssertionError (or argparse's SystemExit) if a documented command would not run as written."""
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):
        words = words[1:]  # environment assignments before the command
    if words[0] in ("taco", ".venv/bin/taco"):
        build_parser().parse_args(words[1:])
    elif words[0] == "make":
        targets = [w for w in words[1:] if "=" not in w]
        assert set(targets) <= _makefile_targets(), f"no make target {targets}"
    elif words[0] == ".venv/bin/python" and words[1] == "-m":
        import importlib.util

        assert importlib.util.find_spec(words[2]) is not None, f"no module {words[2]}"
    elif words[0] == ".venv/bin/python":
        assert (ROOT / words[1]).is_file(), f"no script {words[1]}"
        flags = {w.split("=")[0] for w in words[2:] if w.startswith("--")}
        missing = [f for f in flags if f not in _script_help(words[1])]
        assert not missing, f"{words[1]} takes no {missing}"
    elif words[0].startswith(".venv/bin/"):
        # Another installed console script (lerobot-train): it must be in the environment's bin.
        script = Path(sys.executable).parent / words[0].removeprefix(".venv/bin/")
        assert script.is_file(), f"{words[0]} is not installed by the project"
    elif words[0].startswith("scripts/"):
        script = ROOT / words[0]
        assert script.is_file() and script.stat().st_mode & 0o111, f"{words[0]} is not an executable script"
    elif words[:2] == ["ros2", "topic"] and words[2] in ("pub", "echo"):
        _check_ros2_topic(words)
    else:
        raise AssertionError(f"not a command this test knows how to check: {' '.join(words)}")


def _check_ros2_topic(words: list[str]) -> None:
    """`ros2 topic pub [options] TOPIC TYPE VALUES` / `ros2 topic echo [options] TOPIC`: the topic is one
    the nodes use (ros_nodes.common), the type is the one they use on it, and the values' fields are
    the message type's own (ros2 topic pub refuses unknown fields)."""
    import importlib

    import yaml

    from ros_nodes import common

    known = {v for k, v in vars(common).items() if k.endswith("_TOPIC") and isinstance(v, str)}
    options_with_value = {"-r", "--rate", "-t", "--times", "-w", "--wait-matching-subscriptions", "--qos-profile"}
    rest, i = [], 3
    while i < len(words):
        if words[i] in options_with_value:
            i += 2
            continue
        if not words[i].startswith("-"):
            rest.append(words[i])
        i += 1
    topic = rest[0]
    assert topic in known, f"{topic} is not a topic of ros_nodes.common"
    if words[2] == "echo":
        return
    package, kind, name = rest[1].split("/")
    assert kind == "msg", rest[1]
    message = getattr(importlib.import_module(f"{package}.msg"), name)
    used = (ROOT / "ros_nodes" / "policy_node.py").read_text()
    constant = next(k for k, v in vars(common).items() if v == topic and k.endswith("_TOPIC"))
    assert re.search(rf"sub\({name}, {constant}\b", used), f"the policy node does not take {name} on {topic}"
    values = yaml.safe_load(rest[2]) if len(rest) > 2 else {}
    fields = set(message.get_fields_and_field_types())
    assert set(values or {}) <= fields, f"{rest[1]} has no fields {set(values) - fields}"


# Pages whose commands run tools only the workstation install has (lerobot-train, benchmarks importing torch).
WORKSTATION_PAGES = ("benchmarks.md", "lerobot.md")


@pytest.mark.parametrize("page", [pytest.param(p, marks=pytest.mark.workstation) if p.name in WORKSTATION_PAGES
                                  else p for p in PAGES], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_documented_command_parses(page, capsys):
    commands = bash_commands(page)
    for words in commands:
        try:
            check_command(words)
        except SystemExit:
            raise AssertionError(f"{page.name}: `{' '.join(words)}` does not parse: {capsys.readouterr().err}")


@pytest.mark.workstation
def test_the_checker_refuses_what_would_not_run():
    check_command(["HF_HUB_OFFLINE=1", ".venv/bin/lerobot-train", "--steps=2"])  # and accepts what would
    for bad in (["taco", "eval", "--polcy", "default"], ["taco", "frobnicate"], ["make", "no-such-target"],
                [".venv/bin/python", "benchmarks/sim_env.py", "--no-such-flag"], [".venv/bin/no-such-tool"],
                ["HF_HUB_OFFLINE=1", "taco", "frobnicate"],
                ["ros2", "topic", "pub", "/taco/no_such_topic", "std_msgs/msg/String", "{data: x}"],
                ["ros2", "topic", "pub", "--once", "/taco/estop", "std_msgs/msg/Empty", "{}"],
                ["ros2", "topic", "pub", "--once", "/taco/estop", "std_msgs/msg/String", "{text: x}"]):
        with pytest.raises((AssertionError, SystemExit)):
            check_command(bad)


def test_the_readme_short_commands_run(capsys):
    ran = 0
    for words in bash_commands(ROOT / "README.md"):
        if words[0].endswith("taco") and words[1] in SHORT:
            assert main(words[1:]) == 0, " ".join(words)
            assert capsys.readouterr().out.strip()
            ran += 1
    assert ran == len(SHORT)
