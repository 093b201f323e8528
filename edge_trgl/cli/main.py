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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        text = textwrap.fill(" ".join(str(exc).split()), width=100)
        print(f"edge-trgl: error: {text}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edge-trgl: interrupted; files written so far are intact. Resume a training run with "
              "`edge-trgl train --resume RUN_DIR`.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
