"""`edge-trgl prepare`: plan and set up a run without training it (the split workflow)."""

from __future__ import annotations

import argparse

from .common import add_run_options, config_from_args

HELP = ("plan a run for a memory budget and write its run directory (initial weights, and for "
        "--backend ort the ONNX training artifacts) without training it")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "prepare", help=HELP, allow_abbrev=False,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description=HELP + ". For a device too small for the set-up itself: the ONNX Runtime "
        "backend's set-up needs torch and onnx (a few hundred MB) while its trainer does not. Run "
        "`edge-trgl prepare --backend ort --mem-budget SIZE ... --out RUN` on a bigger machine "
        "(the plan is made for SIZE; its probes measure this machine), copy RUN to the device and "
        "run `edge-trgl train --resume RUN` there.")
    add_run_options(p)
    p.add_argument("--out", help="run directory to create (default runs/<time>-<model>-<scheme>)")
    p.add_argument("--quiet", dest="progress", action="store_false", help="print no plan table")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..train import train
    cfg = config_from_args(args)
    result = train(cfg, prepare_only=True)
    print(f"prepared {result['run_dir']}: {len(result['plan']['splits'])} modules at batch "
          f"{result['plan']['batch_size']}. Train it here or on the device (copy the directory "
          f"first) with `edge-trgl train --resume {result['run_dir']}`.")
    return 0
