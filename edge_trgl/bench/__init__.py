"""Benchmark harness: run a matrix of training configurations and report memory vs accuracy.

A *matrix* (benchmarks/matrices/*.toml) names a suite, default `edge-trgl train` options, named
method presets and rows; a row whose values are lists expands to the cartesian product
(`matrix`). Every expanded row runs as a fresh child process
(`python -m edge_trgl.cli.main train ... --out TMP`) measured from outside (`runner`): its peak
RSS is the child's own VmHWM, polled from /proc every 20 ms by memory.measure.run_measured (not
os.wait4's ru_maxrss, see runner._run_watched), so nothing the harness itself allocated can leak
into the figure. Everything else (accuracy of every module's head, samples per second, CUDA or
ONNX Runtime figures) is read back from the run directory the child wrote (summary.json,
metrics.jsonl, config.json, plan.json) (`results`).

One JSON per run lands in <results>/<suite>/<row-id>.json; `render_report` (`report`, with the
grouping and table helpers in `tables`) rebuilds <results>/REPORT.md (and PNG plots when
matplotlib is installed) from those files alone.
"""

from .matrix import (DEFAULT_SUITES, DEFAULT_TIMEOUT_S, QUICK_SUITE, SECTIONS, BenchRow, Matrix,
                     check_train_args, load_matrix, matrices_dir, parse_override, resolve_matrix,
                     train_args)
from .report import SUITE_ORDER, render_report
from .results import (PACKAGES, RESULT_FORMAT, host_info, load_results, measurements_from_run,
                      throughput)
from .runner import (LOG_TAIL_CHARS, measure_baseline, measure_data_baseline, rerun_check,
                     run_row, run_suite)
from .tables import Group, method_label

__all__ = [
    "DEFAULT_SUITES", "DEFAULT_TIMEOUT_S", "QUICK_SUITE", "SECTIONS", "SUITE_ORDER", "PACKAGES",
    "RESULT_FORMAT", "LOG_TAIL_CHARS", "BenchRow", "Matrix", "Group", "check_train_args",
    "load_matrix", "matrices_dir", "parse_override", "resolve_matrix", "train_args",
    "render_report", "host_info", "load_results", "measurements_from_run", "throughput",
    "measure_baseline", "measure_data_baseline", "rerun_check", "run_row", "run_suite",
    "method_label",
]
