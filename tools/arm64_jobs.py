"""The jobs tools/arm64_check.sh runs inside the emulated arm64 root, one at a time, each recorded
into OUT/<job>.json, plus OUT/environment.json.

    python tools/arm64_jobs.py --out DIR --work DIR [--jobs train,train_budget,export,evaluate]

Each job is a real `edge-trgl` command. While it runs, this process samples every 0.2 s the
process tree it started (the command and every child it spawns) from /proc: each process's VmHWM
(its own peak resident set) and the sum of their VmRSS. Under qemu-user every emulated process is
a real qemu process, so these are qemu's figures: the guest's memory plus qemu's own (translated
code, its bookkeeping). The run's own summary.json (its measured peaks) is recorded next to them.
Nothing is copied from elsewhere: a job that fails is recorded as failed, with its output's tail.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

# Tiny on purpose: under emulation a torch import alone takes tens of seconds.
DATA = ["--synthetic-train", "200", "--synthetic-test", "100", "--model", "resnet8",
        "--width", "0.25", "--epochs", "1", "--batch-size", "32", "--threads", "1"]
# The budget is generous because qemu's own memory is counted inside it (every emulated process
# is a qemu process); the point of the job is that planning, probing and the budgeted training
# path run on aarch64, not how small a budget fits.
BUDGET = "1GB"

SUMMARY_KEYS = ("peak_rss_bytes", "peak_rss_method", "estimated_peak_bytes", "budget_bytes",
                "whole_command_peak_bytes", "best_module", "wall_time_s", "enforcement")


def _proc_table() -> dict[int, int]:
    """pid -> parent pid, for every process visible in /proc."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
                # the command name may hold spaces and parentheses: the ppid follows the last ")"
                table[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    return table


def _tree(root: int) -> list[int]:
    table = _proc_table()
    found, frontier = [root], [root]
    while frontier:
        parent = frontier.pop()
        kids = [p for p, pp in table.items() if pp == parent]
        found += kids
        frontier += kids
    return found


def _status(pid: int) -> dict:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmHWM", "VmRSS"):
                    out[key] = int(rest.split()[0]) * 1024
                elif key == "Name":
                    out["name"] = rest.strip()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            out["cmdline"] = f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:200]
    except OSError:
        return {}
    return out


def run_job(name: str, cmd: list[str], log_path: Path, env: dict) -> dict:
    """Run one command, sampling its process tree's memory; return the record."""
    t0 = time.perf_counter()
    peaks: dict[int, dict] = {}
    max_sum_rss = 0
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        while proc.poll() is None:
            total = 0
            for pid in _tree(proc.pid):
                st = _status(pid)
                if "VmHWM" not in st:
                    continue
                total += st["VmRSS"]
                prev = peaks.get(pid)
                if prev is None or st["VmHWM"] >= prev["VmHWM"]:
                    peaks[pid] = {"VmHWM": st["VmHWM"], "cmdline": st.get("cmdline", "")}
            max_sum_rss = max(max_sum_rss, total)
            time.sleep(0.2)
    wall = time.perf_counter() - t0
    tail = log_path.read_text(errors="replace").splitlines()[-25:]
    ordered = sorted(peaks.items(), key=lambda kv: -kv[1]["VmHWM"])
    return {
        "job": name, "command": cmd, "returncode": proc.returncode,
        "status": "ok" if proc.returncode == 0 else "failed",
        "wall_s": round(wall, 1),
        "processes_seen": len(peaks),
        "max_process_hwm_bytes": ordered[0][1]["VmHWM"] if ordered else None,
        "max_process_cmdline": ordered[0][1]["cmdline"] if ordered else None,
        "max_sum_rss_bytes": max_sum_rss,
        "memory_method": ("sampled every 0.2 s from /proc/<pid>/status of the command's process "
                          "tree; under qemu-user these are the qemu processes' figures (guest + "
                          "emulator); a child shorter than 0.2 s may be missed"),
        "output_tail": tail,
    }


def summary_figures(run_dir: Path) -> dict:
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return {}
    out = {k: summary[k] for k in SUMMARY_KEYS if k in summary}
    whole = summary.get("whole_command") or {}
    if isinstance(whole, dict):
        out["whole_command"] = {k: v for k, v in whole.items() if k != "method"}
    return out


def environment(out: Path, extra: dict) -> dict:
    def version(mod):
        try:
            m = __import__(mod)
            return getattr(m, "__version__", "?")
        except Exception as exc:  # record why, never guess
            return f"not importable: {type(exc).__name__}: {exc}"[:200]
    osr = {}
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            k, _, v = line.partition("=")
            osr[k] = v.strip('"')
    except OSError:
        pass
    env = {
        "uname_m": os.uname().machine, "platform_machine": platform.machine(),
        "python": platform.python_version(), "debian_version": Path("/etc/debian_version").read_text().strip()
        if Path("/etc/debian_version").exists() else None,
        "os": osr.get("PRETTY_NAME"), "cpu_count": os.cpu_count(),
        "versions": {m: version(m) for m in ("torch", "numpy", "onnx", "onnxruntime", "safetensors",
                                             "psutil", "tqdm", "edge_trgl")},
        **extra,
    }
    try:
        pc = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
        env["pip_check"] = {"returncode": pc.returncode, "output": pc.stdout.strip().splitlines()[:20]}
    except OSError as exc:
        env["pip_check"] = {"error": str(exc)}
    (out / "environment.json").write_text(json.dumps(env, indent=2) + "\n")
    return env


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for the JSON records")
    ap.add_argument("--work", required=True, help="scratch folder for the run directories")
    ap.add_argument("--jobs", default="train,train_budget,export,evaluate")
    ap.add_argument("--extra-env", default="{}", help="JSON merged into environment.json")
    args = ap.parse_args(argv)
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    env = environment(out, json.loads(args.extra_env))
    print(f"arm64_jobs: {env['uname_m']}, python {env['python']}, torch {env['versions']['torch']}",
          flush=True)
    exe = str(Path(sys.executable).parent / "edge-trgl")
    run, run_b = work / "RUN", work / "RUN-budget"
    jobs = {
        "train": [exe, "train", *DATA, "--modules", "2", "--out", str(run)],
        "train_budget": [exe, "train", *DATA, "--mem-budget", BUDGET, "--out", str(run_b)],
        "export": [exe, "export", str(run)],
        "evaluate": [exe, "evaluate", str(run / "export" / "model.onnx"), "--threads", "1",
                     "--json"],
    }
    # The probe cache would let a second run skip planning; each check starts from an empty one.
    child_env = dict(os.environ, EDGE_TRGL_CACHE=str(work / "edge-trgl-cache"))
    failed = 0
    for name in args.jobs.split(","):
        if name not in jobs:
            print(f"arm64_jobs: unknown job {name!r}; choose from {', '.join(jobs)}.", file=sys.stderr)
            return 2
        print(f"arm64_jobs: {name}: {' '.join(jobs[name][1:])}", flush=True)
        rec = run_job(name, jobs[name], work / f"{name}.log", child_env)
        rec["uname_m"] = env["uname_m"]
        if name.startswith("train"):
            rec["run_summary"] = summary_figures(run if name == "train" else run_b)
        if name == "export":
            try:
                rep = json.loads((run / "export" / "export.json").read_text())
                rec["export_report"] = {k: rep[k] for k in rep if k not in ("files", "checksums")}
            except (OSError, ValueError) as exc:
                rec["status"] = "failed"
                rec["why"] = f"no export.json: {exc}"
        if name == "evaluate" and rec["status"] == "ok":
            text = (work / f"{name}.log").read_text(errors="replace")
            try:  # --json prints one object; anything before it (warnings) is skipped
                rec["result"] = json.loads(text[text.index("{"):])
            except ValueError as exc:
                rec["status"] = "failed"
                rec["why"] = f"evaluate --json printed no JSON result: {exc}"
        (out / f"{name}.json").write_text(json.dumps(rec, indent=2) + "\n")
        failed += rec["status"] != "ok"
        print(f"arm64_jobs: {name}: {rec['status']} in {rec['wall_s']} s, largest process "
              f"{(rec['max_process_hwm_bytes'] or 0) / 1e6:.0f} MB", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
