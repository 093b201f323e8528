#!/usr/bin/env python
"""Reproduce the numbers in benchmarks/results/ort/: ResNet-20 on the CIFAR-10 10% subset,
sequential TRGL, `--backend ort` vs `--backend torch` on the same settings, and
`--backend ort --mem-budget 256MB`.

Each run is an `edge-trgl train` child of this script, run by memory.measure.run_measured.
Besides what the run's summary.json reports (per-module accuracy; the ORT orchestrator's and
trainers' peaks), the whole process tree is watched from outside: on every 20 ms poll of
run_measured the RSS of the `edge-trgl` process and all its descendants is read from /proc and
summed, so "tree_max_rss_bytes" is the most memory the run held at once (sampled: spikes shorter
than 20 ms can be missed; the kernel's per-process VmHWM in the summaries cannot miss them). The
ORT run's tree maximum is split into the preparation phase (while the torch + onnx set-up child
is alive) and the training phase (after it).

    python benchmarks/ort_vs_torch.py --data-dir /work/shared/data/cifar-10-batches-py \
        --work /tmp/ortbench [--only ort,torch,ort256,torch256]

Writes one JSON per run to benchmarks/results/ort/ (`--results` to change).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

import psutil

from edge_trgl.memory.measure import run_measured
from edge_trgl.memory.procfs import status_field

RESULTS = Path(__file__).resolve().parent / "results" / "ort"
COMMON = ["--data", "cifar10", "--train-fraction", "0.1", "--model", "resnet20",
          "--scheme", "sequential", "--epochs", "2", "--seed", "0", "--quiet"]
RUNS = {
    "torch": ["--backend", "torch", "--modules", "4"],
    "ort": ["--backend", "ort", "--modules", "4"],
    "ort256": ["--backend", "ort", "--mem-budget", "256MB"],
    "torch256": ["--backend", "torch", "--mem-budget", "256MB"],
}


class TreeWatcher:
    """The `poll` of run_measured: sums the VmRSS of the child and all its descendants on every
    tick, by phase (preparation while the ORT set-up child is alive, else training) and keeps
    each role's largest process."""

    def __init__(self):
        self.max_by_phase = {"preparation": 0, "training": 0}
        self.max_by_role: dict[str, int] = {}
        self.samples = 0

    @staticmethod
    def role(cmd: str) -> str:
        if "ort_artifacts" in cmd:
            return "ort_preparation"
        if "ort_worker" in cmd:
            return "ort_trainer"
        if "edge_trgl.memory.probe" in cmd:
            return "torch_planner_probe"
        if "edge-trgl" in cmd or "edge_trgl.cli" in cmd:
            return "main"
        return "other"

    def __call__(self, proc) -> None:
        try:
            root = psutil.Process(proc.pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        total, preparing = 0, False
        for p in tree:
            try:
                cmd = " ".join(p.cmdline())
            except psutil.Error:
                cmd = ""
            rss = status_field("VmRSS", p.pid)
            role = self.role(cmd)
            preparing |= role == "ort_preparation"
            total += rss
            self.max_by_role[role] = max(self.max_by_role.get(role, 0), rss)
        phase = "preparation" if preparing else "training"
        self.max_by_phase[phase] = max(self.max_by_phase[phase], total)
        self.samples += 1


def versions() -> dict:
    from importlib.metadata import version
    out = {"python": platform.python_version()}
    for dist in ("edge-trgl", "torch", "numpy", "onnx", "onnxruntime-training-cpu", "safetensors"):
        try:
            out[dist] = version(dist)
        except Exception:
            out[dist] = None
    return out


def machine() -> dict:
    cpu = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = Path("/proc/meminfo").read_text().splitlines()[0]
    return {"platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(),
            "memtotal": mem.split(":", 1)[1].strip(), "loadavg_at_start": os.getloadavg()}


def _tail(fh, chars: int = 4000) -> str:
    fh.seek(0)
    return fh.read().decode(errors="replace")[-chars:]


def run_one(name: str, data_dir: str, work: Path) -> dict:
    out = work / name
    shutil.rmtree(out, ignore_errors=True)
    cmd = ["edge-trgl", "train", *COMMON, "--data-dir", data_dir, *RUNS[name], "--out", str(out)]
    env = dict(os.environ, EDGE_TRGL_CACHE=str(work / "probe-cache"))
    at_start = machine()
    watcher = TreeWatcher()
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        status, _, wall_s = run_measured(cmd, env=env, stdout=stdout, stderr=stderr, poll=watcher)
        stdout_tail, stderr_tail = _tail(stdout), _tail(stderr)
    record = {"name": name, "command": " ".join(cmd), "exit_status": status,
              "wall_seconds": wall_s, "stdout": stdout_tail, "stderr": stderr_tail,
              "tree_max_rss_bytes": watcher.max_by_phase, "max_rss_bytes_by_role": watcher.max_by_role,
              "tree_samples": watcher.samples,
              "tree_method": "sum of VmRSS over the edge-trgl process and its descendants, sampled "
                             "every 20 ms from outside; phase 'preparation' = while the ORT set-up "
                             "child (torch + onnx) is alive",
              "versions": versions(), "machine": {**at_start, "loadavg_at_end": os.getloadavg()}}
    summary_path = out / "summary.json"
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        record["summary"] = {k: summary.get(k) for k in (
            "modules", "best_module", "best_val_acc", "best_test_acc", "batch_size", "seconds",
            "peak_rss_bytes", "peak_rss_method", "budget_bytes", "estimated_peak_bytes",
            "over_budget", "ort", "environment")}
        record["plan"] = json.loads((out / "plan.json").read_text())
        metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        record["metrics"] = metrics
    return record


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--work", default="/tmp/ortbench")
    parser.add_argument("--only", default=",".join(RUNS))
    parser.add_argument("--results", default=str(RESULTS), help="where the JSON files go")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    for name in args.only.split(","):
        record = run_one(name, args.data_dir, work)
        (results / f"{name}.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        print(name, record["exit_status"], round(record["wall_seconds"]), record["tree_max_rss_bytes"],
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
