"""Benchmark results: the facts recorded about the host, what is read back from a run's
directory (summary.json, metrics.jsonl, config.json, plan.json) into a result record, and loading
the result JSON files back for the report."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

from ..errors import UserError

RESULT_FORMAT = "edge-trgl-bench/1"
PACKAGES = ("torch", "numpy", "safetensors", "onnxruntime-training-cpu", "onnxruntime-training",
            "onnxruntime", "onnx", "matplotlib", "edge-trgl")


# ------------------------------------------------------------------------------------------------
# Host and environment facts
# ------------------------------------------------------------------------------------------------

def _cpu_model() -> str:
    from ..summary import cpu_model  # one reader of /proc/cpuinfo
    return cpu_model() or platform.machine()


def _package_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version
    out = {}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def _git_state() -> dict:
    root = Path(__file__).resolve().parents[2]
    info = {}
    try:
        info["commit"] = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"],
                                        capture_output=True, text=True, timeout=10).stdout.strip() or None
        # --no-optional-locks: reading the state must not touch the index of a shared checkout.
        status = subprocess.run(["git", "--no-optional-locks", "-C", str(root), "status",
                                 "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10)
        if status.returncode == 0:
            info["dirty"] = bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def host_info() -> dict:
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    return {"cpu_model": _cpu_model(), "cpu_count": os.cpu_count(), "cpu_affinity": affinity,
            "platform": platform.platform(), "python": platform.python_version(),
            "packages": _package_versions(), "git": _git_state(),
            "env_threads": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
                            if k in os.environ}}


def loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def timestamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


# ------------------------------------------------------------------------------------------------
# A run's directory -> measurements
# ------------------------------------------------------------------------------------------------

def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _read_metrics(path: Path) -> list[dict]:
    try:
        text = path.read_text()
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            break
    return out


def throughput(metrics: list[dict], run_s: float | None, breaks: list[float] = ()) -> dict:
    """Network-level throughput from the per-epoch records.

    One *network epoch* is every module seeing the train set once, so a block-wise run that
    trains 10 modules for 3 epochs each did 3 network epochs, like an end-to-end run of 3
    epochs. `train_samples_per_s` counts only the training loops; `overall_samples_per_s`
    divides by the whole run (data loading, feature-cache writing, evaluation, checkpoints).
    `breaks`: the times (epoch seconds) a resumed run was stopped at; a gap across one is the
    pause between two attempts, not time between modules."""
    records = [m for m in metrics if m.get("seconds") and m.get("samples_per_s") is not None]
    if not records:
        return {}
    loop_s = sum(m["seconds"] for m in records)
    samples = sum(m["samples_per_s"] * m["seconds"] for m in records)
    modules = sorted({m.get("module", 0) for m in records})
    first = [m for m in records if m.get("module", 0) == modules[0]][0]
    images = max(1, round(first["samples_per_s"] * first["seconds"]))
    network_samples = samples / len(modules)
    out = {"train_loop_s": loop_s, "train_images": images,
           "network_epochs": network_samples / images,
           "train_samples_per_s": network_samples / loop_s,
           "module_samples_per_s": {str(k): statistics.median(
               m["samples_per_s"] for m in records if m.get("module", 0) == k) for k in modules}}
    # Time between one module's last epoch and the next module's first: writing the feature
    # cache of the finished module, saving it, loading the next one and one validation pass.
    gaps = 0.0
    ordered = sorted(records, key=lambda m: m.get("time", 0))
    for prev, nxt in zip(ordered, ordered[1:]):
        if "time" in prev and "time" in nxt and nxt.get("module") != prev.get("module") \
                and not any(prev["time"] <= b <= nxt["time"] for b in breaks):
            gaps += max(0.0, (nxt["time"] - nxt["seconds"]) - prev["time"])
    out["between_modules_s"] = gaps
    if run_s:
        epochs = out["network_epochs"]
        out.update({"run_s": run_s, "overhead_s": run_s - loop_s,
                    "overall_samples_per_s": network_samples / run_s,
                    "run_s_per_network_epoch": run_s / epochs,
                    "train_loop_s_per_network_epoch": loop_s / epochs})
    return out


def _split_backend_figures(summary: dict) -> tuple[dict, dict]:
    """Whatever summary.json reports about CUDA memory and the backend's own counters, by key
    name, so new backends need no change here."""
    cuda, backend = {}, {}
    for key, value in summary.items():
        low = key.lower()
        if key == "environment":
            continue
        if "cuda" in low:
            cuda[key] = value
        elif low.startswith(("ort", "onnx", "backend_")):
            backend[key] = value
    return cuda, backend


def measurements_from_run(out: Path, watched: dict) -> dict:
    summary = read_json(out / "summary.json") or {}
    metrics = _read_metrics(out / "metrics.jsonl")
    modules = sorted(summary.get("modules", []), key=lambda m: m.get("module", 0))
    cuda, backend = _split_backend_figures(summary)
    phase_peaks = [m.get("measured_peak_bytes") for m in modules if m.get("measured_peak_bytes")]
    own = summary.get("peak_rss_bytes")
    # the run's own last VmHWM reading covers the poll interval before it exited
    m = {"peak_rss_bytes": max(watched["vmhwm_polled_bytes"], own or 0),
         "peak_rss_method": "max(the child's VmHWM polled from outside every 20 ms, the run's "
                            "own final VmHWM reading in summary.json)",
         "vmhwm_polled_bytes": watched["vmhwm_polled_bytes"],
         "ru_maxrss_bytes": watched["ru_maxrss_bytes"],
         "tree_rss_peak_bytes": watched["tree_rss_peak_bytes"],
         "descendant_peak_rss_bytes": watched["descendant_peak_rss_bytes"],
         "wall_s": watched["wall_s"],
         "cpu_s": watched.get("cpu_s"),
         "self_reported_peak_rss_bytes": own,
         "module_phase_peak_rss_bytes": [mod.get("measured_peak_bytes") for mod in modules],
         "training_phase_peak_rss_bytes": max(phase_peaks) if phase_peaks else None,
         "test_acc_by_module": [mod.get("test_acc") for mod in modules],
         "val_acc_by_module": [mod.get("val_acc") for mod in modules],
         "final_test_acc": modules[-1].get("test_acc") if modules else None,
         "best_module": summary.get("best_module"), "best_test_acc": summary.get("best_test_acc"),
         "best_val_acc": summary.get("best_val_acc"),
         "batch_size": summary.get("batch_size"),
         "torch_threads": (summary.get("environment") or {}).get("torch_threads"),
         "cuda": cuda, "backend_figures": backend}
    m.update(throughput(metrics, summary.get("seconds")))
    if m.get("network_epochs") and m["cpu_s"]:
        m["cpu_s_per_network_epoch"] = m["cpu_s"] / m["network_epochs"]
    return {"measurements": m, "summary": summary, "metrics": metrics,
            "config": read_json(out / "config.json"), "plan": read_json(out / "plan.json")}


# ------------------------------------------------------------------------------------------------
# Reading results back
# ------------------------------------------------------------------------------------------------

def result_ok(path: Path) -> bool:
    data = read_json(path)
    return bool(data) and data.get("format") == RESULT_FORMAT and data.get("status") == "ok"


def _current_meta(meta: dict) -> dict:
    """A suite's description, notes and sections as this checkout's matrix of the same name has
    them, when its rows were run from a repository's benchmarks/matrices (this one, or a clone's):
    a row run from an older clone writes that clone's notes into _suite.json when it finishes,
    and the report should not go back to them. A matrix the user gave by another path keeps what
    _suite.json recorded."""
    from .matrix import load_toml, matrices_dir, matrix_header
    stored = Path(str(meta.get("matrix", "")))
    folder = matrices_dir()
    if folder is None or stored.parent.name != "matrices" or stored.parent.parent.name != "benchmarks":
        return meta
    current = folder / stored.name
    if not current.is_file():
        return meta
    try:  # the header only: expanding every row (load_matrix) is not needed here
        description, notes, sections = matrix_header(load_toml(current), str(current))
    except UserError:
        return meta
    return {**meta, "description": description, "notes": notes, "sections": sections}


def load_results(results_dir: str | os.PathLike) -> dict:
    """{suite: {"results": [...], "meta": _suite.json, "baselines": [...], "checks": [...]}}"""
    root = Path(results_dir)
    if not root.is_dir():
        raise UserError(f"The results directory {root} does not exist; run `edge-trgl bench run` "
                        f"first, or point at the directory it wrote (default benchmarks/results).")
    suites: dict[str, dict] = {}
    for suite_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))
                            and p.name != "plots"):
        results = []
        for f in sorted(suite_dir.glob("*.json")):
            if f.name.startswith("_"):
                continue
            data = read_json(f)
            if data and data.get("format") == RESULT_FORMAT:
                results.append(data)
        if not results:
            continue
        suites[suite_dir.name] = {
            "results": results, "meta": _current_meta(read_json(suite_dir / "_suite.json") or {}),
            "baselines": [b for b in (read_json(f) for f in sorted(suite_dir.glob("_baseline-*.json"))) if b],
            "checks": [c for c in (read_json(f) for f in sorted((suite_dir / "_checks").glob("*.json"))) if c]}
    if not suites:
        raise UserError(f"{root} holds no benchmark results (<suite>/<row-id>.json); run "
                        f"`edge-trgl bench run` first.")
    return suites
