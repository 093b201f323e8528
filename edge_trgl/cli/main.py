"""The `edge-trgl` command."""

from __future__ import annotations

import argparse
import sys
import textwrap

from .. import __version__
from ..errors import UserError

SUBCOMMANDS = ("train", "plan", "bench", "export", "evaluate", "predict", "env")


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
    return parser


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
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        return unknown_options(parser, getattr(args, "command", None), unknown)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        # never break inside a word: paths and commands in the message must stay copyable
        text = textwrap.fill(" ".join(str(exc).split()), width=100, break_long_words=False,
                             break_on_hyphens=False)
        label = "stopped" if getattr(exc, "exit_code", 2) == 130 else "error"
        print(f"edge-trgl: {label}: {text}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    except KeyboardInterrupt:
        print("edge-trgl: interrupted; files written so far are intact. Resume a training run with "
              "`edge-trgl train --resume RUN_DIR`.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
