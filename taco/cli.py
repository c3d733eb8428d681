"""`taco`: one argparse layer over the parts' commands; heavy imports happen per command.

Every part contributes its subcommands through a `register(cli)` function in its `commands` module,
which calls `cli.add(...)` once per command and adds the command's arguments to the parser it gets
back. Each command names the extras it needs; the listing imports no extra, so a core-only install
(`pip install -e .`) still has a `taco --help` that shows every command and which extra brings the
ones not installed, and running one of those says what to install instead of failing on an import.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points

from policies.errors import SpecError
from policies.extras import install_hint, missing_extras

# The parts' command modules, in the order `taco --help` lists them (the data flow's order).
BUILTIN_PARTS = ("policies.commands", "verifiers.commands", "runtime.commands", "sim.commands",
                 "serving.commands", "ros_nodes.commands")
# Third-party packages register a `register(cli)` callable here, as verifier plugins do under taco.verifiers.
ENTRY_POINT_GROUP = "taco.commands"

DESCRIPTION = "Verified policy runtime: best-of-N sampling of ONNX flow/diffusion policies scored by a verifier."


@dataclass(frozen=True)
class Command:
    """One `taco` subcommand, as a part registered it."""

    name: str
    # One line for `taco --help`.
    help: str
    # Called with the parsed arguments; returns the exit code.
    run: Callable[[argparse.Namespace], int]
    # Extras (`policies.extras.EXTRA_MODULES`) the command needs, as listed in `taco --help`.
    extras: tuple[str, ...]
    # The extras one invocation needs, when they depend on its arguments (`demo --example`); None: `extras`.
    needs: Callable[[argparse.Namespace], tuple[str, ...]] | None
    # The module or entry point that registered it.
    part: str


class Registry:
    """What a part's `register(cli)` receives: `add` makes a subcommand and returns its parser."""

    def __init__(self, subparsers):
        self._sub = subparsers
        self.commands: dict[str, Command] = {}
        self._part = ""
        self._plugin = False

    def add(self, name: str, help: str, run: Callable[[argparse.Namespace], int], extras: tuple[str, ...] = (),
            needs: Callable[[argparse.Namespace], tuple[str, ...]] | None = None) -> argparse.ArgumentParser:
        if name in self.commands:
            clash = f"taco command {name!r} is registered twice ({self.commands[name].part}, {self._part})"
            if not self._plugin:
                raise ValueError(clash)
            # A plugin cannot shadow a command; its arguments go to a parser nobody reads.
            print(f"taco: ignoring a plugin's command: {clash}", file=sys.stderr)
            return argparse.ArgumentParser(add_help=False)
        command = Command(name, help, run, tuple(extras), needs, self._part)
        parser = self._sub.add_parser(name, description=help)
        parser.set_defaults(command=command)
        self.commands[name] = command
        return parser

    @staticmethod
    def add_log_flags(parser: argparse.ArgumentParser, episodes: str) -> None:
        """`--log-decisions DIR` and `--log-max-mb MB`, the decision-log flags of every command that decides
        (`eval`, `ros`, `serve`); `episodes` says what one logged episode is for this command."""
        parser.add_argument("--log-decisions", default=None, metavar="DIR",
                            help="log every decision (candidates, features, scores, pick) into this decision log, "
                                 f"for taco train-verifier --kind value: {episodes}")
        parser.add_argument("--log-max-mb", type=float, default=None, metavar="MB",
                            help="with --log-decisions: stop logging episodes once the log holds this many megabytes")

    @staticmethod
    def add_saving_flags(parser: argparse.ArgumentParser, auto: bool) -> None:
        """`--prune` and `--adaptive`, the flags that spend less on N candidates (docs/engine.md), of the
        commands that decide; `auto`: `--prune` defaults to auto (the deployment commands), else to none."""
        auto_help = ("; auto (default): 2:1 for a flow policy without RTC inputs with a verifier and no monitor, "
                     "as measured on the shipped one") if auto else ""
        parser.add_argument("--prune", default="auto" if auto else None, metavar="K:M|auto|none" if auto else "K:M",
                            help="pruned best-of-N: every candidate runs K denoising steps, the verifier's best M "
                                 f"the rest{auto_help} (docs/engine.md)")
        parser.add_argument("--adaptive", default=None, metavar="F:LEVEL",
                            help="adaptive N: F candidates first, all N only when their spread is above LEVEL "
                                 "(taco calibrate-adaptive; docs/engine.md)")

    def register(self, part: str, register: Callable[[Registry], None], plugin: bool = False) -> None:
        self._part, self._plugin = part, plugin
        register(self)


def _register_list(cli: Registry) -> None:
    cli.add("list", "list registered policy kinds, verifier kinds, tasks and commands", run=cmd_list)


def cmd_list(args) -> int:
    from policies.registry import policy_kinds
    from verifiers.registry import verifier_kinds

    print("policy kinds:")
    for kind in policy_kinds().values():
        print(f"  {kind.name:<12} {kind.description}")
    print("verifier kinds:")
    for kind in verifier_kinds().values():
        print(f"  {kind.name:<12} {kind.description}  [{kind.source}]")
    _list_shipped()
    if missing_extras(("sim",)):
        print(f"tasks: (install the sim extra: {install_hint('sim')})")
    else:
        from sim.tasks import TASKS

        print("tasks:")
        for task in TASKS.values():
            print(f"  {task.name:<14} {task.instruction}")
    print("commands:")
    for command in args.registry.commands.values():
        needs = f"  [{', '.join(command.extras)}]" if command.extras else ""
        print(f"  {command.name:<18} {command.part}{needs}")
    return 0


def _list_shipped() -> None:
    """The shipped default policy and its recorded best verifier (`--verifier best`)."""
    from policies.errors import BundleError
    from policies.shipped import resolve_policy
    from verifiers.best import describe_best
    from verifiers.shipped import best_verifier

    try:
        policy = resolve_policy("default")
        best = best_verifier(policy)
    except BundleError as err:
        print(f"shipped default: {err}")
        return
    print(f"shipped default: {policy}")
    print(f"  best verifier  {describe_best(best) if best else 'none recorded (taco best-verifier)'}")


def build_parser() -> argparse.ArgumentParser:
    """The `taco` parser with every registered command (built-in parts, then entry point plugins)."""
    parser = argparse.ArgumentParser(prog="taco", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(metavar="COMMAND", help="one of the commands below", required=True)
    registry = Registry(sub)
    for module in BUILTIN_PARTS:
        registry.register(module, importlib.import_module(module).register)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            register = ep.load()
        except Exception as err:  # a broken plugin must not take the other commands down with it
            print(f"taco: ignoring the plugin {ep.name} ({ep.value}): {type(err).__name__}: {err}", file=sys.stderr)
            continue
        registry.register(f"{ep.name} ({ep.value})", register, plugin=True)
    registry.register("taco.cli", _register_list)
    parser.set_defaults(registry=registry)
    parser.epilog = format_commands(registry.commands.values())
    return parser


def format_commands(commands) -> str:
    """The command listing of `taco --help`: one entry per command, marking those whose extra is missing."""
    lines = ["commands (`taco COMMAND --help` shows a command's options):"]
    for command in commands:
        missing = missing_extras(command.extras)
        text = command.help
        if missing:
            text += f" [needs the {' and '.join(missing)} extra{'s' if len(missing) > 1 else ''}: not installed]"
        lines += textwrap.wrap(text, width=110, initial_indent=f"  {command.name:<17} ", subsequent_indent=" " * 20)
    absent = sorted({extra for command in commands for extra in missing_extras(command.extras)})
    if absent:
        lines.append("")
        lines += [f"not installed here: the {extra} extra ({install_hint(extra)})" for extra in absent]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command: Command = args.command
    needed = command.needs(args) if command.needs is not None else command.extras
    missing = missing_extras(needed)
    if missing:
        extra, module = next(iter(missing.items()))
        print(f"taco {command.name}: needs the '{extra}' extra ({module} is not installed): {install_hint(extra)}",
              file=sys.stderr)
        return 3
    try:
        return command.run(args)
    except BrokenPipeError:  # the reader went away (`taco inspect B | head`): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (SpecError, FileExistsError, FileNotFoundError, ValueError, KeyError, RuntimeError) as err:
        print(f"taco {command.name}: error: {err}", file=sys.stderr)
        return 2
    except ImportError as err:
        print(f"taco {command.name}: {err}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
