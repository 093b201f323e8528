"""`edge-trgl export`: a finished run's best module as ONNX + a PyTorch state dict, verified."""

from __future__ import annotations

import json
import sys

HELP = "export a finished run's best module for the device (ONNX + PyTorch state dict)"


def add_parser(sub) -> None:
    p = sub.add_parser(
        "export", help=HELP, allow_abbrev=False,
        description=HELP + ". Blocks 0..end of the module with the best validation accuracy (or "
        "--module K) plus that module's head become one model; its ONNX outputs are checked "
        "against the training-time modules and its test accuracy is measured in onnxruntime.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="the --out directory of a finished run")
    p.add_argument("--module", type=int, metavar="K", help="export module K instead of the best")
    p.add_argument("--out", metavar="DIR", help="folder to write (default RUN_DIR/export); it must "
                   "be new, empty or an earlier export (replaced only with --force)")
    p.add_argument("--force", action="store_true", help="replace an earlier export in the "
                   "folder (the new one is written beside it and swapped in once complete)")
    p.add_argument("--data-dir", metavar="DIR", help="where the run's dataset is now, if it "
                   "moved (the test accuracy is measured on it)")
    p.add_argument("--detect", action="store_true", help="also output the transport features "
                   "and copy the run's detector (fit it first: `edge-trgl detect fit RUN_DIR`), so "
                   "predict/evaluate report an abnormal-input score on the device")
    p.add_argument("--json", action="store_true", help="print the report (export.json) as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..api import export
    from ..export import format_report
    report = export(args.run_dir, args.module, args.out, args.data_dir, force=args.force,
                    log=lambda msg: print(msg, file=sys.stderr), detect=args.detect)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0
