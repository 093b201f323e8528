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
    """Planned exactly as `edge-trgl train` plans (setup.plan_new): in this torch-free process,
    each probe a child, inside the command's memory cgroup where one can be created."""
    from ..driver import CommandBudget
    from ..setup import check_new, plan_new
    from ..targets import get_target
    cfg = config_from_args(args)
    target = get_target(cfg)
    budget = check_new(cfg, target, new_run=False)
    if args.compare:
        if budget is None:
            from ..errors import UserError
            raise UserError("--compare chooses what fits a memory budget: give --mem-budget (or "
                            "--profile).")
        from ..choose import compare, format_comparison
        with CommandBudget(target.host_limit(budget)):
            result = compare(cfg, target, budget)
        print(json.dumps(result, indent=2) if args.json else format_comparison(result))
        return 0
    with CommandBudget(target.host_limit(budget)) as guard:
        plan, _ = plan_new(cfg, target, budget, show=False)
        from ..memory.measure import peak_rss_bytes
        plan["whole_command"] = guard.report(peak_rss_bytes(), 0)
    print(json.dumps(plan, indent=2) if args.json else format_plan(plan))
    return 0
