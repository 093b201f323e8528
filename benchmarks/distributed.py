"""Issue 19's benchmark: one process vs two ranks (`--distributed`, gloo on 127.0.0.1) training the
parallel scheme, ResNet-20 in 2 modules on CIFAR-10 10 %, each command under its own memory
budget (a memory cgroup per command, as `edge-trgl train --mem-budget` runs it).

    python benchmarks/distributed.py [--data-dir ../shared/data/cifar-10-batches-py] [--only ROW]

Rows (one JSON file each in benchmarks/results/distributed/, skipped when present):
  single-t1   one process, one torch thread (the reference: what the ranks must reproduce)
  single-t2   one process, two threads (the fair one-machine comparison on 2 cores)
  ranks2-fp32 two ranks of one thread each, fp32 features on the wire
  ranks2-fp16 the same with fp16 on the wire
Then `distributed.md` beside them: samples/s, every rank's whole-command peak, accuracy parity
(bit-identical weights or not), bytes per batch per link, and the link speed each model's
boundaries need (computed from the architectures) so the network is not the bottleneck.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results" / "distributed"
WORK = Path(os.environ.get("EDGE_TRGL_BENCH_WORK", "/tmp/edge-trgl-distributed"))
BUDGET = "768MB"
COMMON = ["--data", "cifar10", "--train-fraction", "0.1", "--test-fraction", "0.2",
          "--model", "resnet20", "--scheme", "parallel", "--modules", "2", "--epochs", "2",
          "--batch-size", "64", "--seed", "0", "--mem-budget", BUDGET, "--quiet"]
ROWS = {"single-t1": (1, 1, "fp32"), "single-t2": (1, 2, "fp32"),
        "ranks2-fp32": (2, 1, "fp32"), "ranks2-fp16": (2, 1, "fp16")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_row(name: str, data_dir: str) -> dict:
    world, threads, wire = ROWS[name]
    out = WORK / name
    subprocess.run(["rm", "-rf", str(out)], check=True)
    argv = [sys.executable, "-m", "edge_trgl.cli.main", "train", *COMMON, "--data-dir", data_dir,
            "--threads", str(threads), "--out", str(out)]
    if world > 1:
        argv += ["--distributed", "--wire-dtype", wire]
    port = str(free_port())
    load_start = os.getloadavg()
    started = time.time()
    procs = []
    for rank in range(world):
        env = dict(os.environ, PYTHONPATH=str(REPO))
        if world > 1:
            env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, WORLD_SIZE=str(world),
                       RANK=str(rank))
        procs.append(subprocess.Popen(argv, env=env, cwd=REPO, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    results = [p.communicate() + (p.returncode,) for p in procs]
    wall_s = time.time() - started
    ranks = []
    for rank, (stdout, stderr, rc) in enumerate(results):
        run = out / f"rank{rank}" if world > 1 else out
        if rc != 0:
            raise SystemExit(f"{name} rank {rank} failed ({rc}): {stderr[-2000:]}")
        summary = json.loads((run / "summary.json").read_text())
        epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        whole = summary.get("whole_command") or {}
        ranks.append({
            "rank": rank, "modules": (summary.get("distributed") or {}).get(
                "rank_modules", [[0, 1]])[rank],
            "epoch_samples_per_s": [e["samples_per_s"] for e in epochs],
            "epoch_seconds": [e["seconds"] for e in epochs],
            "whole_command_peak_bytes": summary.get("whole_command_peak_bytes"),
            "trainer_peak_rss_bytes": summary["peak_rss_bytes"],
            "estimated_peak_bytes": summary.get("estimated_peak_bytes"),
            "budget_bytes": summary.get("budget_bytes"),
            "oom_kills": whole.get("oom_kills"), "enforcement": whole.get("enforcement"),
            "sent_bytes": (summary.get("distributed") or {}).get("sent_bytes", 0),
            "seconds": summary["seconds"],
            "modules_acc": [{"module": m["module"], "val_acc": m["val_acc"],
                             "test_acc": m["test_acc"]} for m in summary["modules"]],
            "weights_sha256": weights_digest(run)})
    return {"row": name, "world_size": world, "threads_per_process": threads, "wire_dtype": wire,
            "command": " ".join(argv[1:]) + (" --distributed (RANK 0..1, gloo on 127.0.0.1)"
                                              if world > 1 else ""),
            "wall_s": wall_s, "loadavg_start": load_start, "loadavg_end": os.getloadavg(),
            "ranks": ranks, "environment": environment(),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def weights_digest(run: Path) -> str:
    """One sha256 over every stored block and head: equal digests = bit-identical networks."""
    import hashlib
    from safetensors.numpy import load_file
    h = hashlib.sha256()
    for folder in ("blocks", "heads"):
        for path in sorted((run / folder).glob("*.safetensors")):
            for key, arr in sorted(load_file(str(path)).items()):
                h.update(key.encode())
                h.update(arr.tobytes())
    return h.hexdigest()


def environment() -> dict:
    import numpy
    import torch
    return {"python": platform.python_version(), "torch": torch.__version__,
            "numpy": numpy.__version__, "machine": platform.machine(),
            "platform": platform.platform(), "cpu_count": os.cpu_count()}


def boundaries() -> list[dict]:
    """Bytes per sample crossing each rank boundary of the compute-balanced shares (2 and 4
    ranks, one module per rank), from the architectures alone."""
    import math
    from edge_trgl.config import TrainConfig
    from edge_trgl.distributed import assign_modules
    from edge_trgl.memory.plan import resolve_splits
    from edge_trgl.modules import architecture
    rows = []
    for model in ("resnet20", "resnet56", "resnet110"):
        for world in (2, 4):
            cfg = TrainConfig(model=model, scheme="parallel", modules=world)
            arch = architecture(cfg, (3, 32, 32), 10)
            splits = resolve_splits(len(arch), cfg)
            shares = assign_modules(splits, arch, world)
            for r in range(world - 1):
                last_block = splits[shares[r][-1]][1] - 1
                per_sample = math.prod(arch[last_block].out_shape)
                rows.append({"model": model, "world_size": world, "link": f"{r}->{r + 1}",
                             "shape": list(arch[last_block].out_shape),
                             "fp32_bytes_per_sample": 4 * per_sample + 8,
                             "fp16_bytes_per_sample": 2 * per_sample + 8})
    return rows


def render(rows: dict[str, dict]) -> str:
    mb = lambda b: f"{b / 1e6:.0f}" if b else "-"  # noqa: E731
    ref = rows.get("single-t1")
    lines = ["# One process vs two ranks (`--distributed`), ResNet-20, CIFAR-10 10 %", "",
             f"Command (each row): `edge-trgl train {' '.join(COMMON)} --threads T` (+ "
             f"`--distributed --wire-dtype W`, RANK 0 and 1 on 127.0.0.1), each command under its "
             f"own {BUDGET} budget (memory cgroup). 4,000 train / 1,000 validation images, "
             f"2,000 test images, 2 epochs, batch 64; ResNet-20 in 2 modules (blocks 0-4, 5-9).",
             "", "| row | processes x threads | wire | train samples/s (epoch 2, slowest rank) | "
             "job wall s | rank | modules | whole-command peak MB | estimate MB | OOM kills | "
             "val % (m0 / m1) | test % (m0 / m1) | bit-identical to single-t1 | MB sent |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        rate = min(r["epoch_samples_per_s"][-1] for r in row["ranks"])
        for r in row["ranks"]:
            accs = r["modules_acc"]
            same = ("-" if ref is None or name == "single-t1" else
                    "yes" if r["weights_sha256"] == ref["ranks"][0]["weights_sha256"] else "no")
            lines.append(
                f"| {name} | {row['world_size']} x {row['threads_per_process']} | "
                f"{row['wire_dtype'] if row['world_size'] > 1 else '-'} | {rate:.0f} | "
                f"{row['wall_s']:.0f} | {r['rank']} | {','.join(map(str, r['modules']))} | "
                f"{mb(r['whole_command_peak_bytes'])} | {mb(r['estimated_peak_bytes'])} | "
                f"{r['oom_kills']} | {100 * accs[0]['val_acc']:.1f} / {100 * accs[1]['val_acc']:.1f}"
                f" | {100 * accs[0]['test_acc']:.1f} / {100 * accs[1]['test_acc']:.1f} | {same} | "
                f"{r['sent_bytes'] / 1e6:.0f} |")
    lines += ["", "## Bytes per batch per link, and the link each model needs", "",
              "A link carries, per sample, the features at the boundary (fp32 or fp16) and the "
              "label (8 bytes), in fixed-size messages of one batch. For the network not to be "
              "the bottleneck it must carry (bytes per sample) x (samples/s of the slowest "
              "rank). Per 100 samples/s:", "",
              "| model | ranks | link | features | fp32 B/sample | fp16 B/sample | "
              "Mbit/s per 100 samples/s (fp32 / fp16) | batch-64 message fp32 MB |",
              "|---|---|---|---|---|---|---|---|"]
    for b in boundaries():
        lines.append(f"| {b['model']} | {b['world_size']} | {b['link']} | "
                     f"{'x'.join(map(str, b['shape']))} | {b['fp32_bytes_per_sample']} | "
                     f"{b['fp16_bytes_per_sample']} | "
                     f"{b['fp32_bytes_per_sample'] * 800 / 1e6:.0f} / "
                     f"{b['fp16_bytes_per_sample'] * 800 / 1e6:.0f} | "
                     f"{(b['fp32_bytes_per_sample'] * 64 + 16) / 1e6:.2f} |")
    two = rows.get("ranks2-fp32")
    if two:
        rate = min(r["epoch_samples_per_s"][-1] for r in two["ranks"])
        link = boundaries()[0]  # resnet20, 2 ranks: the benchmarked boundary
        fp32, fp16 = link["fp32_bytes_per_sample"], link["fp16_bytes_per_sample"]
        lines += ["", f"At the measured two-rank pace ({rate:.0f} samples/s) ResNet-20's link "
                  f"0->1 needs {fp32 * rate * 8 / 1e6:.0f} Mbit/s in fp32 and "
                  f"{fp16 * rate * 8 / 1e6:.0f} Mbit/s in fp16: a 100 Mbit/s link would cap "
                  f"it at {100e6 / 8 / fp32:.0f} (fp32) or {100e6 / 8 / fp16:.0f} (fp16) "
                  f"samples/s; gigabit Ethernet ({1e9 / 8 / fp32:.0f} samples/s in fp32) "
                  f"would not."]
    env = next(iter(rows.values()))["environment"] if rows else {}
    lines += ["", f"Machine: {env.get('machine')}, {env.get('cpu_count')} cores, "
              f"{env.get('platform')}; Python {env.get('python')}, torch {env.get('torch')}. "
              f"Raw numbers: the JSON file of each row."]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data" /
                                             "cifar-10-batches-py"))
    p.add_argument("--only", action="append", choices=list(ROWS))
    p.add_argument("--force", action="store_true", help="re-run rows that have results")
    args = p.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    for name in args.only or ROWS:
        path = OUT / f"{name}.json"
        if path.exists() and not args.force:
            continue
        print(f"running {name} ...", flush=True)
        row = run_row(name, args.data_dir)
        path.write_text(json.dumps(row, indent=1) + "\n")
    rows = {n: json.loads((OUT / f"{n}.json").read_text()) for n in ROWS
            if (OUT / f"{n}.json").exists()}
    (OUT / "distributed.md").write_text(render(rows))
    print(f"wrote {OUT / 'distributed.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
