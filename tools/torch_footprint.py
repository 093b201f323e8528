"""What torch costs a process: resident peak after `import torch` and after a first training step.

    python tools/torch_footprint.py --out FILE.json [--configs default,threads1,...]

Each configuration runs in a fresh child process. The child stops after each phase (interpreter
up, `import torch`, first forward + backward + SGD step of a small conv net) and waits; this
process then reads the child's VmHWM / VmRSS from /proc/<pid>/status *from outside*, so the
figure is the kernel's view of the real process. Under qemu-user emulation (tools/arm64_check.sh)
that real process is qemu itself: the figures include qemu's own memory (its translated-code
buffer, its copy of the guest's page tables), so they bound what a native aarch64 process holds
from above. The child also reports its own view of /proc/self/status for comparison.

The configurations are the knobs that change the footprint without changing the code:
thread pools (OMP_NUM_THREADS / torch.set_num_threads: each pool thread has its own stack and,
with glibc, may get its own malloc arena) and MALLOC_ARENA_MAX (caps those arenas). `python` and
`numpy` are the floor a lazy-importing, torch-free process starts from.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

CONFIGS = {
    # name: (what the child imports/runs, extra environment, torch threads or None for default)
    "python": ("python", {}, None),
    "numpy": ("numpy", {}, None),
    "default": ("torch", {}, None),
    "threads1": ("torch", {"OMP_NUM_THREADS": "1"}, 1),
    "arena2": ("torch", {"MALLOC_ARENA_MAX": "2"}, None),
    "threads1_arena2": ("torch", {"OMP_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "2"}, 1),
}
STEP_BATCH = 128  # CIFAR-sized images, the batch size the toolkit defaults to


def _status(pid: int | str = "self") -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(rest.split()[0]) * 1024
    return out


def _pause(phase: str, info: dict) -> None:
    """Tell the parent a phase is done (with our own view), wait until it has read our status."""
    info = {**info, "phase": phase, "self_view": _status()}
    print(json.dumps(info), flush=True)
    sys.stdin.readline()


def child(kind: str, threads: int | None) -> None:
    _pause("start", {})
    if kind == "python":
        return
    t0 = time.perf_counter()
    if kind == "numpy":
        import numpy  # noqa: F401
        _pause("import", {"import_s": time.perf_counter() - t0})
        return
    import torch
    import_s = time.perf_counter() - t0
    if threads is not None:
        torch.set_num_threads(threads)
    _pause("import", {"import_s": import_s, "torch": torch.__version__,
                      "torch_threads": torch.get_num_threads()})
    # A small conv net of the size the toolkit trains per module (a ResNet stem + two stages).
    nn = torch.nn
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    x = torch.randn(STEP_BATCH, 3, 32, 32)
    y = torch.randint(0, 10, (STEP_BATCH,))
    t0 = time.perf_counter()
    loss = nn.functional.cross_entropy(net(x), y)
    loss.backward()
    opt.step()
    _pause("step", {"step_s": time.perf_counter() - t0, "loss": float(loss.detach())})


def measure(name: str) -> dict:
    kind, env_extra, threads = CONFIGS[name]
    cmd = [sys.executable, os.path.abspath(__file__), "--child", kind]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    env = dict(os.environ, **env_extra)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    phases = {}
    try:
        for line in proc.stdout:
            info = json.loads(line)
            info["outside_view"] = _status(proc.pid)  # the real process: qemu's, when emulated
            phases[info.pop("phase")] = info
            proc.stdin.write("\n")
            proc.stdin.flush()
    finally:
        rc = proc.wait()
    result = {"config": name, "env": env_extra, "returncode": rc,
              "wall_s": round(time.perf_counter() - t0, 2), "phases": phases}
    start = phases.get("start", {}).get("outside_view", {}).get("VmHWM")
    imp = phases.get("import", {}).get("outside_view", {}).get("VmHWM")
    step = phases.get("step", {}).get("outside_view", {}).get("VmHWM")
    result["interpreter_hwm_bytes"] = start
    result["import_hwm_bytes"] = imp
    result["step_hwm_bytes"] = step
    # What the import adds to a bare interpreter, and what the first step adds on top of it.
    result["import_added_bytes"] = imp - start if imp and start else None
    result["step_added_bytes"] = step - imp if step and imp else None
    result["status"] = "ok" if rc == 0 and len(phases) == (1 if kind == "python" else
                                                          2 if kind == "numpy" else 3) else "failed"
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--configs", default=",".join(CONFIGS),
                    help=f"comma-separated, from: {', '.join(CONFIGS)}")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.child, args.threads)
        return 0
    names = [n for n in args.configs.split(",") if n]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        print(f"torch_footprint: unknown configuration(s) {', '.join(unknown)}; choose from "
              f"{', '.join(CONFIGS)}.", file=sys.stderr)
        return 2
    results = []
    for name in names:  # one child at a time: each is measured alone
        r = measure(name)
        mb = lambda v: f"{v / 1e6:.0f} MB" if v else "-"  # noqa: E731
        print(f"{name:<16} {r['status']:<6} interpreter {mb(r['interpreter_hwm_bytes'])}, "
              f"after import {mb(r['import_hwm_bytes'])}, after first step "
              f"{mb(r['step_hwm_bytes'])} ({r['wall_s']} s)", flush=True)
        results.append(r)
    doc = {"machine": platform.machine(), "python": platform.python_version(),
           "platform": platform.platform(), "cpu_count": os.cpu_count(),
           "step": f"first forward + backward + SGD step, 3-conv net, batch {STEP_BATCH}, 3x32x32",
           "measured": "VmHWM of each fresh child, read from outside via /proc/<pid>/status",
           "results": results}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
    return 0 if all(r["status"] == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
