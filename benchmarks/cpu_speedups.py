#!/usr/bin/env python
"""What else makes training faster on the CPU (issue 13, item 3): `torch.compile` of a training
step and `torch.inference_mode` instead of `torch.no_grad` for the feature-cache pass, each
measured in its own fresh child process (so its peak RSS is its own), one torch thread.

    python benchmarks/cpu_speedups.py                 # ResNet-56, batch 128, 12 timed steps
    python benchmarks/cpu_speedups.py --steps 4       # a quick look

Workloads (ResNet-56 on 3x32x32 inputs, 10 classes, the project's TRGL loss and conv head):
`k4-module0` = blocks 0-6 + head (module 0 of K=4, the costliest module: 32x32 maps),
`block1` = block 1 + head (a block-wise module), `network` = all 28 blocks + head
(end-to-end). For each: eager training step, compiled training step (`torch.compile`,
inductor, the first call's compile time reported apart), and an eval-mode forward pass under
`no_grad` and under `inference_mode`. The figure per variant is the median step time over
`--steps` steps after two warm-up steps; peak RSS is the child's VmHWM. Every child compiles
with an empty inductor cache, so the first compiled call's time is what a new run would pay.

Writes benchmarks/results/cpu-speedups/<workload>-<variant>.json (one file per measurement:
command, versions, machine, raw step times) and cpu-speedups.md (the table).
Channels-last, the other candidate, was measured and switched off earlier: torch 2.13's CPU
backward segfaults in that layout for some blocks (see edge_trgl/modules.py CPU_MEMORY_FORMAT).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "cpu-speedups"
WORKLOADS = {"k4-module0": (0, 7), "block1": (1, 2), "network": (0, 28)}
VARIANTS = ("train-eager", "train-compiled", "eval-no_grad", "eval-inference_mode")


def child(workload: str, variant: str, batch: int, steps: int) -> dict:
    import torch

    from edge_trgl.models import build_blocks, make_head
    from edge_trgl.trgl import module_loss
    torch.set_num_threads(1)
    lo, hi = WORKLOADS[workload]
    blocks = build_blocks("resnet56", (3, 32, 32), 10, seed=0)[lo:hi]
    head = make_head("conv", tuple(blocks[-1].out_shape), 10, seed=0)
    net = torch.nn.ModuleList([*blocks, head])
    in_shape = tuple(blocks[0].in_shape)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *in_shape, generator=gen)
    y = torch.randint(0, 10, (batch,), generator=gen)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)

    def loss_of(x, y):
        energy = x.new_zeros(())
        for block in blocks:
            x, e = block(x)
            energy = energy + e
        loss, _ = module_loss(head(x), y, energy, 0.5, 0.1)
        return loss

    def forward(x):
        for block in blocks:
            x, _ = block(x)
        return head(x)

    compile_s = None
    if variant.startswith("train"):
        net.train()
        step_loss = loss_of
        if variant == "train-compiled":
            step_loss = torch.compile(loss_of)

        def step():
            optimizer.zero_grad(set_to_none=True)
            step_loss(x, y).backward()
            optimizer.step()
        if variant == "train-compiled":
            t = time.perf_counter()
            step()
            compile_s = time.perf_counter() - t
    else:
        net.eval()
        context = torch.no_grad if variant == "eval-no_grad" else torch.inference_mode

        def step():
            with context():
                forward(x)
    times = []
    for i in range(2 + steps):
        t = time.perf_counter()
        step()
        if i >= 2:
            times.append(time.perf_counter() - t)
    from edge_trgl.memory.procfs import peak_rss_bytes
    return {"step_s": times, "median_step_s": statistics.median(times), "compile_s": compile_s,
            "peak_rss_bytes": peak_rss_bytes(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads()}


def environment() -> dict:
    git = subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "edge_trgl"], cwd=HERE,
                           capture_output=True, text=True)
    return {"python": sys.version.split()[0], "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "machine": platform.machine(),
            "git": git.stdout.strip(), "edge_trgl_dirty": bool(dirty.stdout.strip()),
            "loadavg": os.getloadavg()}


def render(rows: list[dict]) -> str:
    by = {(r["workload"], r["variant"]): r for r in rows}
    lines = ["# CPU speed-ups measured (issue 13, item 3)", "",
             "ResNet-56 pieces at batch 128, one torch thread, median step time over the timed "
             "steps (ms), each variant in its own fresh process. Produced by "
             "`python benchmarks/cpu_speedups.py`; raw step times in the JSON files.", "",
             "| workload | eager train step | compiled train step | compiled / eager | first "
             "compiled call s | peak RSS eager / compiled MB | eval no_grad | eval "
             "inference_mode | inference_mode / no_grad |", "|---|---|---|---|---|---|---|---|---|"]
    for w in WORKLOADS:
        e, c = by.get((w, "train-eager")), by.get((w, "train-compiled"))
        ng, im = by.get((w, "eval-no_grad")), by.get((w, "eval-inference_mode"))
        if not (e and c and ng and im):
            continue
        lines.append(
            f"| {w} | {e['median_step_s'] * 1e3:.0f} | {c['median_step_s'] * 1e3:.0f} | "
            f"{c['median_step_s'] / e['median_step_s']:.2f} | {c['compile_s']:.0f} | "
            f"{e['peak_rss_bytes'] / 1e6:.0f} / {c['peak_rss_bytes'] / 1e6:.0f} | "
            f"{ng['median_step_s'] * 1e3:.0f} | {im['median_step_s'] * 1e3:.0f} | "
            f"{im['median_step_s'] / ng['median_step_s']:.2f} |")
    env = rows[0]["environment"] if rows else {}
    lines += ["", f"Machine: {env.get('platform')}, {env.get('cpu_count')} CPUs, Python "
              f"{env.get('python')}, torch {rows[0]['torch'] if rows else '?'}, git "
              f"{env.get('git', '')[:10]}. Load average at each measurement is in its JSON.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--child", nargs=2, metavar=("WORKLOAD", "VARIANT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child, args.batch, args.steps)))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for workload in WORKLOADS:
        for variant in VARIANTS:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--batch", str(args.batch),
                   "--steps", str(args.steps), "--child", workload, variant]
            with tempfile.TemporaryDirectory() as cache:  # a cold inductor cache: the first
                env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache)  # call's compile time
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                print(f"{workload} {variant}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
                return 1
            row = {"workload": workload, "variant": variant, "batch": args.batch,
                   "command": " ".join(cmd[1:]), "environment": environment(),
                   **json.loads(proc.stdout.strip().splitlines()[-1])}
            (args.out / f"{workload}-{variant}.json").write_text(json.dumps(row, indent=1) + "\n")
            print(f"{workload} {variant}: {row['median_step_s'] * 1e3:.0f} ms/step, "
                  f"{row['peak_rss_bytes'] / 1e6:.0f} MB", flush=True)
            rows.append(row)
    (args.out / "cpu-speedups.md").write_text(render(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
