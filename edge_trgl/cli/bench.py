"""`edge-trgl bench`: run benchmark matrices in fresh child processes and render the report."""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
from pathlib import Path

HELP = "run benchmark matrices (memory, accuracy, throughput) and render the report"

DESCRIPTION = """\
Run benchmark matrices, each configuration in a fresh `edge-trgl train` child process measured
from outside (peak RSS = the child's VmHWM polled from /proc), and render Markdown + PNG reports from the JSON results.

  edge-trgl bench run --quick                 tiny synthetic suite, a few minutes
  edge-trgl bench run                         the default suites: accuracy, memory, throughput
  edge-trgl bench run memory --only 'mem-resnet56-*'
  edge-trgl bench report benchmarks/results   rebuild REPORT.md from the JSON files
  edge-trgl bench rerun benchmarks/results/memory/ROW.json   reproduce one row (memory, results)
"""


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help=HELP, description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    actions = p.add_subparsers(dest="bench_command", metavar="ACTION")

    r = actions.add_parser("run", help="run matrices (default: accuracy, memory, throughput)",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                           allow_abbrev=False)
    r.add_argument("matrices", nargs="*", metavar="MATRIX",
                   help="matrix names from benchmarks/matrices or paths to .toml files")
    r.add_argument("--quick", action="store_true",
                   help="run the quick suite (synthetic data, tiny models, a few minutes)")
    r.add_argument("--results", default="benchmarks/results", help="results directory")
    r.add_argument("--repeats", type=int, default=1,
                   help="run every row N times (reported as median and min-max)")
    r.add_argument("--only", nargs="+", metavar="GLOB", help="run only rows whose id matches")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a train option in every row (e.g. --set epochs=1)")
    r.add_argument("--force", action="store_true", help="re-run rows that already have a result")
    r.add_argument("--dry-run", action="store_true", help="list the rows and commands, run nothing")
    r.add_argument("--timeout-s", type=float, help="per-run time limit (default: the matrix's)")
    r.add_argument("--work-dir", help="where the temporary run directories go (default: $TMPDIR)")
    r.add_argument("--keep-runs", action="store_true", help="keep the run directories")
    r.add_argument("--resumable", action="store_true",
                   help="train each row in WORK_DIR/<row id>; a row stopped by --timeout-s (at the "
                   "end of an epoch) is kept there and the next --resumable run continues it "
                   "(for rows longer than one sitting; needs --work-dir)")
    r.add_argument("--no-report", action="store_true", help="do not re-render REPORT.md")
    r.add_argument("--no-plots", action="store_true", help="render the report without plots")
    r.set_defaults(func=run_cmd)

    rep = actions.add_parser("report", help="render REPORT.md (+ plots) from the JSON results",
                             allow_abbrev=False)
    rep.add_argument("results", nargs="?", default="benchmarks/results", help="results directory")
    rep.add_argument("--no-plots", action="store_true", help="tables only")
    rep.add_argument("--out", help="report path (default RESULTS/REPORT.md)")
    rep.set_defaults(func=report_cmd)

    rr = actions.add_parser("rerun", help="re-run a stored row: its peak memory (within a tolerance) and its losses and accuracies (exactly)",
                            allow_abbrev=False)
    rr.add_argument("result", help="a RESULTS/<suite>/<row-id>.json file")
    rr.add_argument("--tolerance", type=float, default=0.10,
                    help="allowed relative difference of the peak RSS (default 0.10)")
    rr.add_argument("--work-dir", help="where the temporary run directory goes")
    rr.set_defaults(func=rerun_cmd)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run_cmd(args) -> int:
    from ..bench import DEFAULT_SUITES, QUICK_SUITE, load_matrix, parse_override, render_report, run_suite
    from ..errors import UserError
    names = list(args.matrices) or ([QUICK_SUITE] if args.quick else list(DEFAULT_SUITES))
    if args.quick and args.matrices:
        raise UserError("Give either --quick or matrix names, not both.")
    overrides = dict(parse_override(o) for o in args.overrides)
    matrices = [load_matrix(n, repeats=args.repeats, overrides=overrides) for n in names]
    if args.dry_run:
        from ..bench.runner import result_ok, select_rows
        for m in matrices:
            rows = select_rows(m, args.only)
            done = {r.row_id for r in rows if not args.force
                    and result_ok(Path(args.results) / m.name / f"{r.row_id}.json")}
            print(f"suite {m.name} ({m.path}): {len(rows)} rows, {len(done)} done before "
                  f"(skipped without --force)")
            for row in rows:
                state = "done" if row.row_id in done else "to run"
                print(f"  {row.row_id} [{state}]: edge-trgl train {shlex.join(row.train_args)}")
        return 0
    command = _command_line()
    signal.signal(signal.SIGTERM, _stop)  # `kill` of the harness also stops the running child
    failed = 0
    try:
        for m in matrices:
            inv = run_suite(m, args.results, only=args.only, force=args.force,
                            timeout_s=args.timeout_s, work_dir=args.work_dir,
                            keep_runs=args.keep_runs, command=command,
                            resumable=args.resumable)
            failed += len(inv["rows_failed"])
    except KeyboardInterrupt:
        kept = (f"kept in {args.work_dir}/<row id>, and the same command continues it"
                if args.resumable else "removed")
        print(f"edge-trgl bench: interrupted; the running row was stopped and its run {kept}. "
              f"Finished rows are saved; the same command continues with the rest.",
              file=sys.stderr)
        return 130
    if not args.no_report:
        path = render_report(args.results, plots=not args.no_plots)
        print(f"report: {path}")
    if failed:
        print(f"{failed} run(s) failed; their JSON files hold the exit status and the log tail.",
              file=sys.stderr)
        return 1
    return 0


def _stop(signum, frame):
    raise KeyboardInterrupt


def _command_line() -> str | None:
    """The bench command as the user typed it, for the report's run-time table."""
    argv = sys.argv[1:]
    if sys.argv[0].endswith("run.py"):  # benchmarks/run.py wraps `bench run`
        return "python benchmarks/run.py " + shlex.join(argv)
    if "bench" in argv:
        return "edge-trgl " + shlex.join(argv[argv.index("bench"):])
    return None


def report_cmd(args) -> int:
    from ..bench import render_report
    path = render_report(args.results, plots=not args.no_plots, out=args.out)
    print(f"report: {path}")
    return 0


def rerun_cmd(args) -> int:
    from ..bench import rerun_check
    from ..errors import UserError
    if not 0 < args.tolerance < 1:
        raise UserError(f"--tolerance must be a fraction between 0 and 1 (e.g. 0.1), not {args.tolerance}.")
    c = rerun_check(args.result, tolerance=args.tolerance, work_dir=args.work_dir)
    print(f"{c['row_id']}: stored peak {c['stored_peak_rss_bytes'] / 1e6:.0f} MB, re-run "
          f"{c['rerun_peak_rss_bytes'] / 1e6:.0f} MB ({100 * c['relative_difference']:+.1f}%), "
          f"{'within' if c['within_tolerance'] else 'OUTSIDE'} {100 * c['tolerance']:.0f}%; "
          + ("losses and accuracies identical" if c["results_identical"]
             else f"results DIFFER: {c['first_result_difference']}"))
    return 0 if c["within_tolerance"] and c["results_identical"] else 1
