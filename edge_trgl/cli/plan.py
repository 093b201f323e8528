"""`edge-trgl plan`: show what the planner would choose for a budget, without training."""

from __future__ import annotations

import argparse
import json

from ..memory.planner import format_plan
from .common import add_run_options, config_from_args

HELP = "show the module split, batch size and estimated peak memory for a budget"


def add_parser(sub) -> None:
    p = sub.add_parser("plan", help=HELP, description=HELP + " (nothing is trained or written).",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False)
    add_run_options(p)
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("--compare", action="store_true",
                   help="plan module-wise, end-to-end with gradient checkpointing and plain "
                   "end-to-end for this --mem-budget and say which fits best and why")
    p.add_argument("--quiet", dest="progress", action="store_false",
                   help="no progress lines while the planner probes")
    p.set_defaults(func=run)


def run(args) -> int:
    """Planned exactly as `edge-trgl train` plans (api.plan / api.compare: setup.plan_new in this
    torch-free process, each probe a child, inside the command's memory cgroup where one can be
    created)."""
    from ..api import compare, plan
    cfg = config_from_args(args)
    if args.compare:
        from ..choose import format_comparison
        result = compare(cfg)
        print(json.dumps(result, indent=2) if args.json else format_comparison(result))
        return 0
    result = plan(cfg)
    print(json.dumps(result, indent=2) if args.json else format_plan(result))
    return 0
