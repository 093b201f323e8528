#!/usr/bin/env python
"""End-to-end vs block-wise training of ResNet-56 at batch 128 on a CUDA GPU: peak CUDA memory
(allocated, reserved, the context) and throughput, one fresh `edge-trgl train` child process per
configuration.

    python benchmarks/cuda_resnet56.py                       # synthetic 32x32 data, fp32
    python benchmarks/cuda_resnet56.py --amp fp16 --repeats 2
    python benchmarks/cuda_resnet56.py --data cifar10 --data-dir ../shared/data/cifar-10-batches-py

Configurations: `e2e` (the usual backprop through all 28 blocks: every block and every
activation resident) and `block` (sequential TRGL, one block per module: one block + its head
resident at a time, the rest on disk). Each child reports, in its summary.json, the caching
allocator's exact peaks (torch.cuda.max_memory_allocated / max_memory_reserved over the whole
run), the CUDA context (sampled `total - free - reserved` from torch.cuda.mem_get_info) and its
host VmHWM; the child's ru_maxrss from os.wait4 is kept alongside. Throughput is the training
loops' samples per second per *network epoch* (every module seeing the train set once; see
edge_trgl.bench.throughput), and the whole run's wall time including feature-cache writing.
Memory and speed do not depend on what the images show, so synthetic data is the default.

Writes one JSON per configuration and repeat, with the command and the machine's environment
(GPU, driver-side CUDA, cuDNN, torch, CPU, git commit), to benchmarks/results/cuda/.
Needs an NVIDIA GPU and a CUDA build of PyTorch; refuses clearly without one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "cuda"
CONFIGS = {
    "e2e": ["--scheme", "e2e"],
    "block": ["--scheme", "sequential", "--module-size", "1"],
}


def refuse_without_cuda() -> None:
    import torch
    if not torch.cuda.is_available():
        why = ("this PyTorch is a CPU-only build" if torch.version.cuda is None else
               f"this PyTorch (CUDA {torch.version.cuda}) sees no CUDA device")
        print(f"cuda_resnet56.py: error: this benchmark measures CUDA memory and needs an NVIDIA "
              f"GPU, but {why} (torch {torch.__version__}). Run it on a machine with a GPU and a "
              f"CUDA build of PyTorch; nothing was written.", file=sys.stderr)
        sys.exit(2)


def git_commit() -> dict:
    root = HERE.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "--no-optional-locks", "-C", str(root), "status",
                                     "--porcelain"], capture_output=True, text=True).stdout.strip())
        return {"commit": commit, "dirty": dirty}
    except (OSError, subprocess.CalledProcessError):
        return {}


def environment() -> dict:
    from edge_trgl.envinfo import report
    from edge_trgl.summary import environment as run_environment
    info = report()
    return {**run_environment(), "cuda": info["cuda"], "torch_cuda_build": info["torch_cuda_build"],
            "git": git_commit(), "loadavg": os.getloadavg()}


def run_config(name: str, args, repeat: int) -> dict:
    from edge_trgl.bench import throughput
    from edge_trgl.memory.measure import run_measured
    with tempfile.TemporaryDirectory(prefix=f"cuda-{name}-", dir=args.work) as work:
        out = Path(work) / "run"
        cmd = [sys.executable, "-m", "edge_trgl.cli.main", "train", "--device", "cuda",
               "--model", "resnet56", "--batch-size", str(args.batch_size),
               "--epochs", str(args.epochs), "--seed", str(repeat), "--data", args.data,
               *(["--data-dir", args.data_dir] if args.data_dir else []),
               *(["--synthetic-train", str(args.synthetic_train), "--synthetic-test", "1000"]
                 if args.data == "synthetic" else []),
               *(["--amp", args.amp] if args.amp else []),
               *CONFIGS[name], "--out", str(out), "--quiet"]
        log = Path(work) / "log.txt"
        with open(log, "wb") as fh:
            status, ru_maxrss_bytes, wall_s = run_measured(cmd, stdout=fh, stderr=subprocess.STDOUT,
                                                           timeout_s=args.timeout_s)
        if status != 0:
            return {"config": name, "status": status, "command": cmd,
                    "log_tail": log.read_text(errors="replace")[-3000:]}
        summary = json.loads((out / "summary.json").read_text())
        metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # the last epoch of each module: the first one also pays for lazy kernel loading
    last = {}
    for m in metrics:
        last[m["module"]] = m
    steady_s = sum(m["seconds"] for m in last.values())
    images = round(next(iter(last.values()))["samples_per_s"] * next(iter(last.values()))["seconds"])
    cuda = {k: v for k, v in summary.items() if k.startswith("cuda_")}
    return {
        "config": name, "status": 0, "command": cmd, "repeat": repeat,
        "model": "resnet56", "batch_size": summary["batch_size"], "amp": args.amp,
        "modules": len(summary["modules"]),
        "peak_cuda_allocated_bytes": summary["cuda_peak_allocated_bytes"],
        "peak_cuda_reserved_bytes": summary["cuda_peak_reserved_bytes"],
        "cuda_context_bytes": summary["cuda_context_bytes"],
        "peak_cuda_device_bytes": summary["cuda_device_peak_bytes"],
        "host_peak_rss_bytes": summary["peak_rss_bytes"], "ru_maxrss_bytes": ru_maxrss_bytes,
        "steady_network_epoch_s": steady_s,
        "steady_samples_per_s": images / steady_s if steady_s else None,
        "throughput": throughput(metrics, summary.get("seconds")),
        "wall_s": wall_s, "best_test_acc": summary.get("best_test_acc"),
        "summary_cuda": cuda, "metrics": metrics}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default="e2e,block", help="comma-separated: e2e, block")
    p.add_argument("--amp", choices=("fp16", "bf16"), help="mixed precision for every config")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=2, help="per module (throughput: the last one)")
    p.add_argument("--data", default="synthetic")
    p.add_argument("--data-dir")
    p.add_argument("--synthetic-train", type=int, default=10000)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--timeout-s", type=float, default=1800)
    p.add_argument("--work", help="scratch folder for the runs (default: the system's temp)")
    p.add_argument("--results", default=str(RESULTS), help="where the JSON files go")
    args = p.parse_args(argv)
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        p.error(f"unknown configuration(s) {unknown}; choose from {sorted(CONFIGS)}")
    refuse_without_cuda()
    from edge_trgl.atomic import atomic_write_json
    env = environment()
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    for repeat in range(args.repeats):
        for name in configs:
            started = time.time()
            row = run_config(name, args, repeat)
            row.update({"environment": env, "started": started,
                        "method": __doc__.split("\n\n")[1].strip()})
            tag = f"resnet56-{name}-b{args.batch_size}" + (f"-{args.amp}" if args.amp else "")
            path = results / f"{tag}-r{repeat}.json"
            atomic_write_json(path, row)
            if row["status"] != 0:
                print(f"{tag}: FAILED (exit {row['status']}); see {path}", file=sys.stderr)
                continue
            mb = 1e6
            print(f"{tag}: allocated {row['peak_cuda_allocated_bytes'] / mb:.0f} MB, reserved "
                  f"{row['peak_cuda_reserved_bytes'] / mb:.0f} MB, context "
                  f"{row['cuda_context_bytes'] / mb:.0f} MB, host RSS "
                  f"{row['host_peak_rss_bytes'] / mb:.0f} MB, "
                  f"{row['steady_samples_per_s']:.0f} samples/s per network epoch, "
                  f"wall {row['wall_s']:.0f} s -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
