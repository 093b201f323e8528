"""`edge-trgl train`: train a network module by module (or a baseline scheme)."""

from __future__ import annotations

import argparse

from ..summary import format_summary
from ..targets import summary_lines
from ..train import train
from .common import add_run_options, config_from_args

HELP = "train a network (module-wise TRGL by default) and write a run directory"


def add_parser(sub) -> None:
    p = sub.add_parser("train", help=HELP, description=HELP + ". With --mem-budget the planner "
                       "picks module splits and batch size so that training fits the budget.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False)
    add_run_options(p)
    p.add_argument("--out", help="run directory to create (default runs/<time>-<model>-<scheme>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")
    p.add_argument("--keep-cache", action="store_true", help="keep every module's feature cache")
    p.add_argument("--module-peaks", action="store_true",
                   help="measure each module's exact peak by resetting VmHWM at module start (the "
                   "process's ru_maxrss seen from outside then covers only the last module)")
    p.add_argument("--quiet", dest="progress", action="store_false",
                   help="no planning progress, no plan printout and no per-epoch lines (the "
                   "summary table at the end is still printed)")
    p.set_defaults(func=run)


def run(args) -> int:
    cfg = config_from_args(args)
    summary = train(cfg, resume=args.resume)
    print(format_summary(summary, summary_lines(summary)))
    return 0
