"""The `edge-trgl` command."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import textwrap

from .. import __version__
from ..errors import UserError

SUBCOMMANDS = ("train", "prepare", "plan", "bench", "export", "evaluate", "predict", "detect",
               "env")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-trgl", allow_abbrev=False,
        description="Train neural networks module by module (TRGL: transport-regularised "
                    "module-wise training) within a memory budget, on PyTorch CPU/CUDA or ONNX "
                    "Runtime, and export the result for the device.")
    parser.add_argument("--version", action="version", version=f"edge-trgl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    import importlib
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f".{name}", __package__)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith(__package__ + f".{name}"):
                continue
            raise
        module.add_parser(sub)
    parser.subcommands = sub.choices
    from .common import honest_defaults
    honest_defaults(parser)
    return parser


def _option_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Option string -> action, for `parser` and the parsers of its subcommands."""
    found, stack = {}, [parser]
    while stack:
        p = stack.pop()
        for action in p._actions:
            for option in action.option_strings:
                found.setdefault(option, action)
            if isinstance(action, argparse._SubParsersAction):
                stack.extend(action.choices.values())
    return found


def join_dash_values(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """`--mem-budget -5MB`: argparse takes "-5MB" for an option and says only "expected one
    argument". An option that takes one value, followed by a word that starts with '-' but is no
    option, gets it as `--mem-budget=-5MB`, so the value's own check explains what is wrong."""
    command = next((a for a in argv if not a.startswith("-")), None)
    target = parser.subcommands.get(command, parser) if command else parser
    actions = _option_actions(target)
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            out.extend(argv[i:])
            break
        action = actions.get(arg)
        if (action is not None and arg.startswith("--") and action.nargs is None
                and action.option_strings and i + 1 < len(argv)
                and len(argv[i + 1]) > 1 and argv[i + 1].startswith("-")
                and argv[i + 1] != "--" and argv[i + 1].split("=", 1)[0] not in actions):
            out.append(f"{arg}={argv[i + 1]}")
            i += 2
            continue
        out.append(arg)
        i += 1
    return out


def check_sizes(args: argparse.Namespace) -> None:
    """Refuse an unreadable --mem-budget / --disk-budget before any work (data loading,
    planning), with the size parser's own message."""
    from ..budget import parse_size
    for name, what in (("mem_budget", "memory budget"), ("disk_budget", "disk budget")):
        value = getattr(args, name, None)
        if value is not None:
            parse_size(value, what=what)


def unknown_options(parser: argparse.ArgumentParser, command: str | None, unknown: list[str]) -> int:
    """argparse's own message for these shows the top-level usage and no hint; name the
    subcommand, suggest the nearest real option, and point at its --help."""
    import difflib
    target = parser.subcommands.get(command, parser) if command else parser
    known = [s for action in target._actions for s in action.option_strings]
    hints = []
    for arg in unknown:
        if arg.startswith("-"):
            close = difflib.get_close_matches(arg.split("=", 1)[0], known, n=1)
            if close:
                hints.append(f"{arg}: did you mean {close[0]}?")
    text = (f"unrecognized argument(s): {' '.join(unknown)}. "
            + (" ".join(hints) + " " if hints else "")
            + f"See `{target.prog} --help` for the options.")
    text = textwrap.fill(text, width=100, break_long_words=False, break_on_hyphens=False)
    print(f"{target.prog}: error: {text}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = join_dash_values(parser, list(sys.argv[1:] if argv is None else argv))
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        return unknown_options(parser, getattr(args, "command", None), unknown)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        check_sizes(args)
        return int(args.func(args) or 0)
    except UserError as exc:
        # never break inside a word: paths and commands in the message must stay copyable
        text = textwrap.fill(" ".join(str(exc).split()), width=100, break_long_words=False,
                             break_on_hyphens=False)
        label = "stopped" if getattr(exc, "exit_code", 2) == 130 else "error"
        print(f"edge-trgl: {label}: {text}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    except BrokenPipeError:
        # The reader went away (`edge-trgl bench run ... --dry-run | head`): stop quietly, as
        # other Unix tools do, and keep Python's exit-time flush from raising once more.
        with contextlib.suppress(AttributeError, OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        print("edge-trgl: interrupted; files written so far are intact. Resume a training run with "
              "`edge-trgl train --resume RUN_DIR`.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
