"""Planner budget runs: ResNet-56 on CIFAR-10 (10% subset, requested batch 128) trained
sequentially under several memory budgets, each as a user on a device with exactly that much
memory would: `edge-trgl train --mem-budget B` inside a fresh memory cgroup limited to B (a
kernel-enforced limit on every process of the command together), with an empty probe cache.
Recorded: the command's exit status, the kernel's OOM-kill count and the group's peak (anonymous
+ mapped file pages of all its processes), the run's summary (whole-command figures, each
module's estimate against its measurement = trainer process peak + the orchestrator beside it)
and plan. Without a writable cgroup it falls back to measuring the `edge-trgl` process from
outside (VmHWM polled, memory/measure.run_measured), and says so. `--module-peaks` adds a second
run per budget with exact per-module VmHWM readings (clear_refs at each module start).

    python benchmarks/planner_budgets.py [--budgets 384MB,512MB,1GB] [--epochs 1] [--backend ort]

Writes benchmarks/results/planner/resnet56-<backend>-<budget>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_trgl.budget import parse_size  # noqa: E402
from edge_trgl.memory.cgroup import run_in_new_cgroup  # noqa: E402
from edge_trgl.memory.measure import run_measured  # noqa: E402
from edge_trgl.summary import environment  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budgets", default="384MB,512MB,1GB")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared/data/cifar-10-batches-py"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/planner"))
    ap.add_argument("--module-peaks", action="store_true")
    ap.add_argument("--backend", default="torch")
    args = ap.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    for budget in args.budgets.split(","):
        record = {"budget": budget, "environment": environment(), "load_start": os.getloadavg(),
                  "runs": []}
        for module_peaks in (False, True) if args.module_peaks else (False,):
            run_dir = Path(tempfile.mkdtemp(prefix="planner-")) / "run"
            cmd = [sys.executable, "-m", "edge_trgl.cli.main", "train", "--model", "resnet56",
                   "--data", "cifar10", "--data-dir", args.data_dir, "--train-fraction", "0.1",
                   "--batch-size", "128", "--epochs", str(args.epochs), "--mem-budget", budget,
                   "--backend", args.backend, "--out", str(run_dir), "--quiet"]
            cmd += ["--module-peaks"] if module_peaks else []
            started = time.time()
            detail: dict = {}
            env = dict(os.environ, EDGE_TRGL_CACHE=str(run_dir.parent / "probe-cache"))
            kernel = run_in_new_cgroup(cmd, parse_size(budget), env=env)
            if kernel is not None:
                code, detail = kernel
                detail = {"cgroup": {k: v for k, v in detail.items()
                                     if k not in ("stdout", "stderr")}}
                peak_bytes = detail["cgroup"]["peak_resident_bytes"]
            else:
                code, peak_bytes, _ = run_measured(cmd, detail=detail, env=env)
            wall_s = time.time() - started
            entry = {"command": " ".join(cmd[1:]), "exit_code": code,
                     "measured_in": "a memory cgroup of the budget's size" if kernel is not None
                     else "no cgroup: edge-trgl's own VmHWM polled from outside",
                     "outside_peak_bytes": peak_bytes, "wall_s": wall_s,
                     "started": started, "module_peaks": module_peaks, **detail}
            if code == 0:
                entry["summary"] = json.loads((run_dir / "summary.json").read_text())
                entry["plan"] = json.loads((run_dir / "plan.json").read_text())
            record["runs"].append(entry)
            shutil.rmtree(run_dir.parent, ignore_errors=True)
            print(budget, module_peaks, code, peak_bytes / 1e6, f"{wall_s:.0f}s", flush=True)
        record["load_end"] = os.getloadavg()
        path = Path(args.out) / f"resnet56-{args.backend}-{budget}.json"
        path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
