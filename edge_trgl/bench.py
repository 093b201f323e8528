"""Benchmark harness: run a matrix of training configurations and report memory vs accuracy.

A *matrix* (benchmarks/matrices/*.toml) names a suite, default `edge-trgl train` options, named
method presets and rows; a row whose values are lists expands to the cartesian product. Every
expanded row runs as a fresh child process (`python -m edge_trgl.cli.main train ... --out TMP`)
measured from outside: its peak RSS is the child's own VmHWM, polled from /proc every 20 ms
(run_child_watched; not os.wait4's ru_maxrss, see there), so nothing the harness itself
allocated can leak into the figure. Everything else (accuracy of every module's
head, samples per second, CUDA or ONNX Runtime figures) is read back from the run directory the
child wrote (summary.json, metrics.jsonl, config.json, plan.json).

One JSON per run lands in <results>/<suite>/<row-id>.json; `render_report` rebuilds
<results>/REPORT.md (and PNG plots when matplotlib is installed) from those files alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import io
import itertools
import json
import math
import os
import platform
import re
import shlex
import shutil
import statistics
import string
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .atomic import atomic_write_bytes, atomic_write_json
from .config import TrainConfig
from .errors import UserError

RESULT_FORMAT = "edge-trgl-bench/1"
DEFAULT_SUITES = ("accuracy", "memory", "throughput")
QUICK_SUITE = "quick"
SECTIONS = ("accuracy", "memory", "throughput")
SUITE_ORDER = ("accuracy", "memory", "throughput")
DEFAULT_TIMEOUT_S = 3600.0
LOG_TAIL_CHARS = 3000
PACKAGES = ("torch", "numpy", "safetensors", "onnxruntime-training-cpu", "onnxruntime-training",
            "onnxruntime", "onnx", "matplotlib", "edge-trgl")

_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
# Set by the harness itself (each child gets its own run directory and runs quietly).
_HARNESS_OWNED = {"out", "progress", "extra"}
_ROW_KEYS = {"id", "method"}
_MATRIX_KEYS = {"name", "description", "notes", "sections", "defaults", "methods", "rows",
                "timeout_s"}
_ID_CHARS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]*$")


# ------------------------------------------------------------------------------------------------
# Matrices
# ------------------------------------------------------------------------------------------------

@dataclass
class BenchRow:
    """One expanded configuration: what to pass to `edge-trgl train`, and how to file it."""
    suite: str
    group: str                 # the configuration's id (seeds and repeats of it share it)
    row_id: str                # group + -s<seed> (+ -r<repeat> for repeats after the first)
    method: str | None
    seed: int
    repeat: int
    options: dict              # TrainConfig field -> value, as the matrix gave it
    train_args: list[str]      # `edge-trgl train` arguments, without --out / --quiet

    @property
    def backend(self) -> str:
        return self.options.get("backend", TrainConfig.backend)

    @property
    def device(self) -> str:
        return self.options.get("device", TrainConfig.device)


@dataclass
class Matrix:
    name: str
    path: str
    description: str = ""
    notes: str = ""
    sections: list[str] = field(default_factory=list)
    timeout_s: float = DEFAULT_TIMEOUT_S
    rows: list[BenchRow] = field(default_factory=list)


def matrices_dir() -> Path | None:
    """benchmarks/matrices of the working directory, else of the source checkout."""
    for root in (Path.cwd(), Path(__file__).resolve().parent.parent):
        candidate = root / "benchmarks" / "matrices"
        if candidate.is_dir():
            return candidate
    return None


def resolve_matrix(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise UserError(f"The benchmark matrix {path} does not exist; give a path to a .toml "
                            f"file or the name of one in benchmarks/matrices (e.g. quick, memory).")
        return path
    folder = matrices_dir()
    if folder is not None and (folder / f"{name_or_path}.toml").is_file():
        return folder / f"{name_or_path}.toml"
    known = sorted(p.stem for p in folder.glob("*.toml")) if folder is not None else []
    raise UserError(f"No benchmark matrix named {name_or_path!r}"
                    + (f" (found in benchmarks/matrices: {', '.join(known)})" if known else
                       " (run from the repository root, where benchmarks/matrices lives)")
                    + "; give one of those names or a path to a .toml file.")


def _load_toml(path: Path) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise UserError("Reading benchmark matrices needs Python 3.11+ (tomllib) or the "
                            "`tomli` package on Python 3.10; install it with `pip install tomli`.")
    try:
        return tomllib.loads(path.read_text())
    except OSError as exc:
        raise UserError(f"Cannot read the benchmark matrix {path}: {exc.strerror or exc}.") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"The benchmark matrix {path} is not valid TOML ({exc}); fix the file.") from None


def _normalize(options: dict, where: str) -> dict:
    out = {}
    for key, value in options.items():
        name = str(key).replace("-", "_")
        if name in _HARNESS_OWNED:
            raise UserError(f"{where}: '{key}' is set by the benchmark harness (each run gets its "
                            f"own temporary --out and runs --quiet); remove it from the matrix.")
        if name not in _FIELDS:
            raise UserError(f"{where}: '{key}' is not an option of `edge-trgl train`. Use train's "
                            f"option names (e.g. model, scheme, modules, module-size, tau, "
                            f"batch-size, epochs, data, data-dir, train-fraction, seed, backend, "
                            f"device).")
        if name == "data_dir" and isinstance(value, str):
            value = os.path.abspath(os.path.expandvars(os.path.expanduser(value)))
        if name == "tau" and isinstance(value, str):
            value = math.inf if value.strip().lower() in ("inf", "infinity") else value
        out[name] = value
    return out


def train_args(options: dict) -> list[str]:
    """`edge-trgl train` arguments for TrainConfig field values."""
    argv: list[str] = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if name == "augment":
            if value is False:
                argv.append("--no-augment")
            continue
        if name in ("e2e_energy", "keep_cache"):
            if value is True:
                argv.append(flag)
            continue
        if value is None:
            continue
        if name == "splits" and isinstance(value, (list, tuple)):
            value = ",".join(str(int(v)) for v in value)
        elif isinstance(value, float) and math.isinf(value):
            value = "inf"
        argv += [flag, str(value)]
    return argv


def check_train_args(argv: list[str], where: str) -> TrainConfig:
    """Parse `argv` exactly as `edge-trgl train` would and validate the config, so a typo in a
    matrix fails before the first (possibly hour-long) run instead of in the middle."""
    from .cli.common import config_from_args
    from .cli.main import build_parser
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            args = build_parser().parse_args(["train", *argv, "--out", "unused"])
    except SystemExit:
        message = captured.getvalue().strip().splitlines()
        raise UserError(f"{where}: `edge-trgl train {shlex.join(argv)}` is rejected: "
                        f"{message[-1] if message else 'bad arguments'}.") from None
    cfg = config_from_args(args)
    try:
        cfg.validate()
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None
    return cfg


class _Values(dict):
    def __missing__(self, key):
        raise KeyError(key)


def _format_id(template: str, values: dict, where: str) -> str:
    shown = {}
    for k, v in values.items():
        if isinstance(v, float) and math.isinf(v):
            v = "inf"
        elif isinstance(v, float) and v.is_integer():
            v = int(v)
        elif isinstance(v, (list, tuple)):
            v = "_".join(map(str, v))
        shown[k] = v
        shown[k.replace("_", "-")] = v
    try:
        text = string.Formatter().vformat(template, (), _Values(shown))
    except KeyError as exc:
        raise UserError(f"{where}: the id template {template!r} uses {{{exc.args[0]}}}, which this "
                        f"row does not set; use one of: {', '.join(sorted(values))}.") from None
    except (ValueError, IndexError) as exc:
        raise UserError(f"{where}: the id template {template!r} is not valid ({exc}).") from None
    if not _ID_CHARS.match(text):
        raise UserError(f"{where}: the row id {text!r} may only hold letters, digits and . _ + = - "
                        f"(it names the result file); change the id template.")
    return text


def load_matrix(name_or_path: str, *, repeats: int = 1, overrides: dict | None = None) -> Matrix:
    """Read and expand a matrix. `overrides` (train options) apply to every row, last."""
    if repeats < 1:
        raise UserError(f"--repeats must be at least 1, not {repeats}.")
    path = resolve_matrix(name_or_path)
    raw = _load_toml(path)
    where = str(path)
    unknown = sorted(set(raw) - _MATRIX_KEYS)
    if unknown:
        raise UserError(f"{where}: unknown top-level keys {unknown}; a matrix has "
                        f"{', '.join(sorted(_MATRIX_KEYS))}.")
    name = str(raw.get("name") or path.stem)
    if not _ID_CHARS.match(name):
        raise UserError(f"{where}: the suite name {name!r} may only hold letters, digits and . _ -.")
    sections = list(raw.get("sections", []))
    bad = [s for s in sections if s not in SECTIONS]
    if bad:
        raise UserError(f"{where}: unknown report sections {bad}; choose from {', '.join(SECTIONS)}.")
    defaults = _normalize(raw.get("defaults", {}), f"{where} [defaults]")
    methods = {m: _normalize(opts, f"{where} [methods.{m}]")
               for m, opts in raw.get("methods", {}).items()}
    extra = _normalize(overrides or {}, "--set")
    entries = raw.get("rows")
    if not entries:
        raise UserError(f"{where}: the matrix has no [[rows]]; add at least one.")
    matrix = Matrix(name=name, path=str(path), description=str(raw.get("description", "")),
                    notes=str(raw.get("notes", "")), sections=sections,
                    timeout_s=float(raw.get("timeout_s", DEFAULT_TIMEOUT_S)))
    seen: dict[str, int] = {}
    for index, entry in enumerate(entries):
        here = f"{where} rows[{index}]"
        if "id" not in entry:
            raise UserError(f"{here}: every row needs an id template, e.g. id = \"{{model}}-{{method}}\".")
        template = str(entry["id"])
        axes = []
        for key, value in entry.items():
            if key == "id":
                continue
            # A flat list of ints for `splits` is one value; a list of lists is an axis.
            is_axis = isinstance(value, list) and not (
                key == "splits" and all(isinstance(v, int) for v in value))
            axes.append((key, value if is_axis else [value]))
            if is_axis and not value:
                raise UserError(f"{here}: '{key}' is an empty list; give at least one value.")
        keys = [k for k, _ in axes]
        for combo in itertools.product(*[vals for _, vals in axes]):
            values = dict(zip(keys, combo))
            method = values.pop("method", None)
            options = dict(defaults)
            if method is not None:
                if method not in methods:
                    raise UserError(f"{here}: method {method!r} is not defined; add a "
                                    f"[methods.{method}] table or use one of "
                                    f"{', '.join(sorted(methods)) or '(none defined)'}.")
                options.update(methods[method])
            options.update(_normalize(values, here))
            options.update(extra)
            label_values = {**options, "method": method or options.get("scheme", "")}
            group = _format_id(template, label_values, here)
            seed = int(options.get("seed", TrainConfig.seed))
            argv = train_args(options)
            check_train_args(argv, f"{here} ({group})")
            for rep in range(repeats):
                row_id = f"{group}-s{seed}" + (f"-r{rep}" if rep else "")
                if row_id in seen:
                    raise UserError(f"{where}: two rows expand to the id {row_id!r}; put the "
                                    f"options that differ into the id template.")
                seen[row_id] = 1
                matrix.rows.append(BenchRow(suite=name, group=group, row_id=row_id, method=method,
                                            seed=seed, repeat=rep, options=options,
                                            train_args=argv))
    return matrix


def parse_override(text: str) -> tuple[str, object]:
    """KEY=VALUE from --set, the value read like a TOML scalar (int, float, inf, true/false)."""
    if "=" not in text:
        raise UserError(f"--set expects KEY=VALUE (e.g. --set epochs=1), got {text!r}.")
    key, value = (p.strip() for p in text.split("=", 1))
    low = value.lower()
    parsed: object = value
    if low in ("true", "false"):
        parsed = low == "true"
    elif low in ("inf", "infinity"):
        parsed = math.inf
    else:
        for cast in (int, float):
            try:
                parsed = cast(value)
                break
            except ValueError:
                pass
    return key, parsed


# ------------------------------------------------------------------------------------------------
# Machine facts
# ------------------------------------------------------------------------------------------------

def _cpu_model() -> str:
    from .train import _cpu_model as cpu_model  # one reader of /proc/cpuinfo
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
    root = Path(__file__).resolve().parent.parent
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


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


# ------------------------------------------------------------------------------------------------
# Measuring
# ------------------------------------------------------------------------------------------------

def _status_bytes(pid: int, field: str) -> int:
    from .memory.procfs import status_field  # one reader of /proc/<pid>/status
    return status_field(field, pid)


def run_child_watched(cmd: list[str], *, env: dict | None = None, stdout=None, stderr=None,
                      timeout_s: float | None = None, interval_s: float = 0.02,
                      tree_interval_s: float = 0.5) -> dict:
    """Run `cmd` as a child; measure its peak RSS from outside.

    The figure is the child's VmHWM polled from /proc/<pid>/status every `interval_s`, not
    os.wait4's ru_maxrss (memory.measure.run_measured), for two reasons: exec folds the
    high-water mark of the address space it replaces into ru_maxrss (with vfork, the parent's),
    and a run that resets its VmHWM between modules (clear_refs, for per-module peaks) leaves
    ru_maxrss with only the peak since the last reset. VmHWM is a high-water mark, so a poll sees
    every earlier peak; only growth in the last `interval_s` before a reset or exit can be
    missed. ru_maxrss is returned alongside. Descendants (ONNX Runtime trainers, planner probes)
    are found every `tree_interval_s`; the summed VmRSS of the whole tree is sampled with the
    same poll (a sample, so it can miss spikes shorter than the interval)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=stdout, stderr=stderr)
    stats: dict = {}
    try:
        status, usage = _watch(proc, timeout_s, interval_s, tree_interval_s, start, stats)
    except BaseException:  # Ctrl-C or SIGTERM of the harness: take the run down with it
        for d in stats.get("descendants", []):
            with contextlib.suppress(OSError):
                os.kill(d, 9)
        proc.kill()
        proc.wait()
        raise
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"status": proc.returncode, "timed_out": stats["timed_out"],
            "vmhwm_polled_bytes": stats["hwm"], "ru_maxrss_bytes": usage.ru_maxrss * 1024,
            "tree_rss_peak_bytes": stats["tree_peak"],
            "descendant_peak_rss_bytes": stats["descendant_hwm"] or None,
            "wall_s": time.perf_counter() - start}


def _watch(proc, timeout_s, interval_s, tree_interval_s, start, stats: dict):
    import psutil
    stats.update(hwm=0, tree_peak=0, descendant_hwm=0, descendants=[], timed_out=False)
    last_scan = -1e9
    while True:
        stats["hwm"] = max(stats["hwm"], _status_bytes(proc.pid, "VmHWM"))
        now = time.perf_counter()
        if now - last_scan >= tree_interval_s:
            try:
                stats["descendants"] = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
            except psutil.Error:
                stats["descendants"] = []
            last_scan = now
        tree = _status_bytes(proc.pid, "VmRSS")
        for d in stats["descendants"]:
            tree += _status_bytes(d, "VmRSS")
            stats["descendant_hwm"] = max(stats["descendant_hwm"], _status_bytes(d, "VmHWM"))
        stats["tree_peak"] = max(stats["tree_peak"], tree)
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            return status, usage
        if timeout_s is not None and now - start > timeout_s and not stats["timed_out"]:
            stats["timed_out"] = True
            for d in stats["descendants"]:
                with contextlib.suppress(OSError):
                    os.kill(d, 9)
            proc.kill()
        time.sleep(interval_s)


_BASELINE_CODE = """
import sys
backend, device = sys.argv[1], sys.argv[2]
if backend == "torch" or device == "cuda":
    import torch
else:  # the ONNX Runtime trainers block torch (onnxruntime would import it if it could)
    sys.modules.setdefault("torch", None)
import edge_trgl.cli.main, edge_trgl.train
from edge_trgl.backends import get_backend
from edge_trgl.config import TrainConfig
get_backend(TrainConfig(backend=backend, device=device))
if backend == "ort":
    import onnxruntime  # what its trainer processes load
if device == "cuda":
    torch.zeros(1, device="cuda")  # the CUDA context is part of what every CUDA run pays
"""

_DATA_CODE = """
import json, sys
from edge_trgl.data import load_dataset
o = json.loads(sys.argv[1])
load_dataset(o["data"], o["data_dir"], seed=o["seed"], train_fraction=o["train_fraction"],
             val_fraction=o["val_fraction"], test_fraction=o["test_fraction"],
             synthetic_train=o["synthetic_train"],
             synthetic_test=o["synthetic_test"])
"""


def _child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _measure_snippet(code: str, args: list[str], repeats: int = 3) -> dict:
    peaks, errors = [], []
    for _ in range(repeats):
        proc_log = tempfile.TemporaryFile()
        with proc_log:
            w = run_child_watched([sys.executable, "-c", code, *args], env=_child_env(),
                                  stdout=proc_log, stderr=subprocess.STDOUT, timeout_s=300)
            if w["status"] == 0:
                peaks.append(w["vmhwm_polled_bytes"])
            else:
                proc_log.seek(0)
                errors.append(proc_log.read()[-600:].decode(errors="replace"))
    if not peaks:
        return {"peak_rss_bytes": None, "error": errors[-1] if errors else "failed"}
    return {"peak_rss_bytes": int(statistics.median(peaks)), "samples_bytes": peaks}


def measure_baseline(backend: str, device: str, repeats: int = 3) -> dict:
    """Peak RSS of a child that only imports the framework, edge-trgl and the backend: the floor
    under every run of that backend, whatever the model (torch for the torch backend,
    onnxruntime without torch for the ORT backend)."""
    out = _measure_snippet(_BASELINE_CODE, [backend, device], repeats)
    out.update({"backend": backend, "device": device, "measured_at": _now(),
                "method": f"median of {repeats} fresh children: python -c 'import torch (torch "
                          "backend or CUDA), edge_trgl.cli.main, edge_trgl.train; get_backend(...)' "
                          "(+ onnxruntime for ort, + a CUDA context on cuda); the child's VmHWM "
                          "polled from outside"})
    return out


def measure_data_baseline(options: dict, repeats: int = 3) -> dict:
    """Peak RSS of a child that only loads and splits the dataset (no torch): shows how much of a
    run's peak the data loader alone can reach."""
    d = TrainConfig()
    spec = {k: options.get(k, getattr(d, k)) for k in
            ("data", "data_dir", "seed", "train_fraction", "val_fraction", "test_fraction",
             "synthetic_train", "synthetic_test")}
    out = _measure_snippet(_DATA_CODE, [json.dumps(spec)], repeats)
    out.update({"spec": spec, "measured_at": _now()})
    return out


def _data_key(options: dict) -> tuple:
    d = TrainConfig()
    return tuple(options.get(k, getattr(d, k)) for k in
                 ("data", "data_dir", "train_fraction", "val_fraction", "test_fraction",
                  "synthetic_train", "synthetic_test"))


def _read_json(path: Path):
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


def throughput(metrics: list[dict], run_s: float | None) -> dict:
    """Network-level throughput from the per-epoch records.

    One *network epoch* is every module seeing the train set once, so a block-wise run that
    trains 10 modules for 3 epochs each did 3 network epochs, like an end-to-end run of 3
    epochs. `train_samples_per_s` counts only the training loops; `overall_samples_per_s`
    divides by the whole run (data loading, feature-cache writing, evaluation, checkpoints)."""
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
        if "time" in prev and "time" in nxt and nxt.get("module") != prev.get("module"):
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
    summary = _read_json(out / "summary.json") or {}
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
    return {"measurements": m, "summary": summary, "metrics": metrics,
            "config": _read_json(out / "config.json"), "plan": _read_json(out / "plan.json")}


def run_row(row: BenchRow, *, baseline: dict | None = None, data_baseline: dict | None = None,
            timeout_s: float = DEFAULT_TIMEOUT_S, work_dir: str | None = None,
            keep_runs: bool = False) -> dict:
    """Run one row in a fresh child process and return its result record."""
    tmp = Path(tempfile.mkdtemp(prefix=f"edge-trgl-bench-{row.row_id}-", dir=work_dir))
    out = tmp / "run"
    cmd = [sys.executable, "-m", "edge_trgl.cli.main", "train", *row.train_args,
           "--out", str(out), "--quiet"]
    load_start, started = _loadavg(), _now()
    try:
        with open(tmp / "train.log", "wb") as log:
            watched = run_child_watched(cmd, env=_child_env(), stdout=log,
                                        stderr=subprocess.STDOUT, timeout_s=timeout_s)
        status = watched["status"]
        load_end = _loadavg()
        log_text = (tmp / "train.log").read_bytes().decode(errors="replace")
        record = {"format": RESULT_FORMAT, "suite": row.suite, "group": row.group,
                  "row_id": row.row_id, "method": row.method, "seed": row.seed,
                  "repeat": row.repeat,
                  "status": "ok" if status == 0 else ("timeout" if watched["timed_out"] else "failed"),
                  "returncode": status,
                  "command": cmd, "command_line": shlex.join(cmd), "train_args": row.train_args,
                  "options": row.options, "started_at": started, "finished_at": _now(),
                  "loadavg_start": load_start, "loadavg_end": load_end,
                  "timeout_s": timeout_s, "host": host_info(),
                  "baseline": baseline, "data_baseline": data_baseline,
                  "log_tail": log_text[-LOG_TAIL_CHARS:]}
        record.update(measurements_from_run(out, watched))
        meas = record["measurements"]
        peak = meas["peak_rss_bytes"]
        base = (baseline or {}).get("peak_rss_bytes")
        meas["baseline_rss_bytes"] = base
        meas["peak_above_baseline_bytes"] = peak - base if base else None
        meas["data_loading_peak_rss_bytes"] = (data_baseline or {}).get("peak_rss_bytes")
        if status == 0 and not record["summary"]:
            record["status"] = "failed"
        return record
    finally:
        if not keep_runs:
            shutil.rmtree(tmp, ignore_errors=True)


def _result_ok(path: Path) -> bool:
    data = _read_json(path)
    return bool(data) and data.get("format") == RESULT_FORMAT and data.get("status") == "ok"


def run_suite(matrix: Matrix, results_dir: str | os.PathLike, *, only: list[str] | None = None,
              force: bool = False, timeout_s: float | None = None, work_dir: str | None = None,
              keep_runs: bool = False, command: str | None = None, echo=None,
              baseline_repeats: int = 3) -> dict:
    """Run every row of `matrix` not already done (unless `force`); one JSON per run."""
    if echo is None:
        def echo(text):  # flushed: the suite usually runs for an hour under nohup
            print(text, flush=True)
    suite_dir = Path(results_dir) / matrix.name
    rows = [r for r in matrix.rows
            if not only or any(fnmatch.fnmatchcase(r.row_id, p) or fnmatch.fnmatchcase(r.group, p)
                               for p in only)]
    if only and not rows:
        raise UserError(f"--only {' '.join(only)} matches no row of suite {matrix.name}; the rows "
                        f"are: {', '.join(r.row_id for r in matrix.rows)}.")
    if work_dir is not None:
        Path(work_dir).mkdir(parents=True, exist_ok=True)
    timeout = timeout_s if timeout_s is not None else matrix.timeout_s
    invocation = {"command": command or "(library call)", "matrix": matrix.path,
                  "started_at": _now(), "loadavg_start": _loadavg(), "rows_run": [],
                  "rows_skipped": [], "rows_failed": []}
    t0 = time.perf_counter()
    baselines: dict[tuple, dict] = {}
    data_baselines: dict[tuple, dict] = {}
    for i, row in enumerate(rows, 1):
        path = suite_dir / f"{row.row_id}.json"
        if not force and _result_ok(path):
            invocation["rows_skipped"].append(row.row_id)
            echo(f"[{matrix.name} {i}/{len(rows)}] {row.row_id}: done before, skipped "
                 f"(--force to re-run)")
            continue
        key = (row.backend, row.device)
        if key not in baselines:
            baselines[key] = measure_baseline(*key, repeats=baseline_repeats)
            atomic_write_json(suite_dir / f"_baseline-{key[0]}-{key[1]}.json", baselines[key])
        dkey = _data_key(row.options)
        if dkey not in data_baselines:
            data_baselines[dkey] = measure_data_baseline(row.options, repeats=baseline_repeats)
        echo(f"[{matrix.name} {i}/{len(rows)}] {row.row_id}: edge-trgl train "
             f"{shlex.join(row.train_args)}")
        record = run_row(row, baseline=baselines[key], data_baseline=data_baselines[dkey],
                         timeout_s=timeout, work_dir=work_dir, keep_runs=keep_runs)
        atomic_write_json(path, record)
        m = record["measurements"]
        invocation["rows_run"].append(row.row_id)
        if record["status"] != "ok":
            invocation["rows_failed"].append(row.row_id)
            tail = record["log_tail"].strip().splitlines()[-3:]
            echo(f"    {record['status']} (exit {record['returncode']}): " + " | ".join(tail))
        else:
            acc = m.get("final_test_acc")
            echo(f"    peak RSS {_mb(m['peak_rss_bytes'])} MB, wall {m['wall_s']:.1f} s"
                 + (f", final test acc {100 * acc:.2f}%" if acc is not None else ""))
        _write_invocation(suite_dir, matrix, invocation, t0)
    _write_invocation(suite_dir, matrix, invocation, t0, done=True)
    return invocation


def _write_invocation(suite_dir: Path, matrix: Matrix, invocation: dict, t0: float,
                      done: bool = False) -> None:
    """_suite.json keeps every invocation of the suite (a suite can be resumed), so the report
    can state how long each command took."""
    invocation = {**invocation, "seconds": time.perf_counter() - t0, "complete": done,
                  "loadavg_end": _loadavg(), "finished_at": _now()}
    path = suite_dir / "_suite.json"
    data = _read_json(path) or {}
    runs = [r for r in data.get("invocations", []) if r.get("started_at") != invocation["started_at"]]
    runs.append(invocation)
    atomic_write_json(path, {"suite": matrix.name, "description": matrix.description,
                             "notes": matrix.notes, "sections": matrix.sections,
                             "matrix": matrix.path, "invocations": runs})


def rerun_check(result_path: str | os.PathLike, *, tolerance: float = 0.10,
                work_dir: str | None = None) -> dict:
    """Re-run a stored row in a fresh child and compare its peak RSS with the stored figure."""
    path = Path(result_path)
    stored = _read_json(path)
    if not stored or stored.get("format") != RESULT_FORMAT:
        raise UserError(f"{path} is not a benchmark result written by `edge-trgl bench run`; give "
                        f"one of the <results>/<suite>/<row-id>.json files.")
    if stored.get("status") != "ok":
        raise UserError(f"The stored run {path} did not succeed ({stored.get('status')}), so it "
                        f"has no figure to reproduce; re-run its suite first.")
    row = BenchRow(suite=stored["suite"], group=stored["group"], row_id=stored["row_id"],
                   method=stored.get("method"), seed=stored.get("seed", 0),
                   repeat=stored.get("repeat", 0), options=stored.get("options", {}),
                   train_args=stored["train_args"])
    fresh = run_row(row, baseline=stored.get("baseline"), data_baseline=stored.get("data_baseline"),
                    timeout_s=stored.get("timeout_s", DEFAULT_TIMEOUT_S), work_dir=work_dir)
    if fresh["status"] != "ok":
        raise UserError(f"The re-run of {stored['row_id']} failed ({fresh['status']}, exit "
                        f"{fresh['returncode']}): {fresh['log_tail'][-400:]}")
    before = stored["measurements"]["peak_rss_bytes"]
    after = fresh["measurements"]["peak_rss_bytes"]
    check = {"row_id": stored["row_id"], "suite": stored["suite"], "stored_result": path.name,
             "stored_peak_rss_bytes": before, "rerun_peak_rss_bytes": after,
             "relative_difference": (after - before) / before, "tolerance": tolerance,
             "within_tolerance": abs(after - before) <= tolerance * before,
             "stored_wall_s": stored["measurements"]["wall_s"],
             "rerun_wall_s": fresh["measurements"]["wall_s"],
             "rerun_loadavg": [fresh["loadavg_start"], fresh["loadavg_end"]],
             "checked_at": _now(), "command_line": fresh["command_line"]}
    atomic_write_json(path.parent / "_checks" / f"{stored['row_id']}.json", check)
    return check


# ------------------------------------------------------------------------------------------------
# Reading results back
# ------------------------------------------------------------------------------------------------

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
            data = _read_json(f)
            if data and data.get("format") == RESULT_FORMAT:
                results.append(data)
        if not results:
            continue
        suites[suite_dir.name] = {
            "results": results, "meta": _read_json(suite_dir / "_suite.json") or {},
            "baselines": [b for b in (_read_json(f) for f in sorted(suite_dir.glob("_baseline-*.json"))) if b],
            "checks": [c for c in (_read_json(f) for f in sorted((suite_dir / "_checks").glob("*.json"))) if c]}
    if not suites:
        raise UserError(f"{root} holds no benchmark results (<suite>/<row-id>.json); run "
                        f"`edge-trgl bench run` first.")
    return suites


def _cfg(result: dict) -> dict:
    cfg = dict(TrainConfig().to_json())
    cfg.update(result.get("options") or {})
    cfg.update(result.get("config") or {})
    return cfg


def _depth(model: str) -> int | None:
    m = re.search(r"(\d+)$", model or "")
    return int(m.group(1)) if m else None


def method_label(result: dict) -> str:
    """A name for what was trained, from what the run actually did (its plan's splits)."""
    cfg = _cfg(result)
    scheme = cfg.get("scheme")
    if scheme == "e2e":
        return "end-to-end" + (" + energy" if cfg.get("e2e_energy") else "")
    splits = (result.get("plan") or {}).get("splits") or []
    tau = cfg.get("tau")
    greedy = tau is None or (isinstance(tau, float) and math.isinf(tau))
    name = "greedy" if greedy else "TRGL"
    if splits and all(hi - lo == 1 for lo, hi in splits):
        name += " block-wise"
    elif splits:
        name += f" K={len(splits)}"
    if scheme != "sequential":
        name += f" {scheme}"
    if not greedy and (cfg.get("tau_mode") != "varying" or tau != 1.0):
        name += f" (tau {tau:g} {cfg.get('tau_mode')})" if cfg.get("tau_mode") != "adaptive" else " (adaptive tau)"
    return name


def _method_order(label: str) -> tuple:
    e2e = label.startswith("end-to-end")
    block = "block-wise" in label
    k = re.search(r"K=(\d+)", label)
    return (not e2e, block, int(k.group(1)) if k else 0, label.startswith("greedy"), label)


def _stats(values) -> dict | None:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def _mb(b) -> str:
    return "-" if b is None else f"{b / 1e6:.0f}"


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def _fmt_stat(st: dict | None, fmt, spread: bool = True) -> str:
    if st is None:
        return "-"
    if st["n"] == 1 or not spread:
        return fmt(st["median"])
    return f"{fmt(st['median'])} ({fmt(st['min'])}–{fmt(st['max'])})"


def _numeric_leaves(d: dict, prefix: str = "", depth: int = 0) -> dict:
    """{"ort.preparation.peak_rss_bytes": 1, ...}: the numbers of a (nested) figures dict."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and depth < 2:
            out.update(_numeric_leaves(v, f"{prefix}{k}.", depth + 1))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"{prefix}{k}"] = v
    return out


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out


@dataclass
class Group:
    suite: str
    group: str
    label: str
    runs: list[dict]
    failed: list[dict]

    @property
    def cfg(self) -> dict:
        return _cfg((self.runs or self.failed)[0])

    def stat(self, key: str) -> dict | None:
        return _stats(r["measurements"].get(key) for r in self.runs)

    def module_stats(self, key: str = "test_acc_by_module") -> list[dict | None]:
        lists = [r["measurements"].get(key) or [] for r in self.runs]
        width = max((len(x) for x in lists), default=0)
        return [_stats(x[i] if i < len(x) else None for x in lists) for i in range(width)]

    @property
    def num_modules(self) -> int:
        plans = [(r.get("plan") or {}).get("splits") for r in self.runs]
        return max((len(p) for p in plans if p), default=0)


def _groups(results: list[dict]) -> list[Group]:
    by: dict[str, Group] = {}
    for r in results:
        g = by.setdefault(r["group"], Group(r["suite"], r["group"], method_label(r), [], []))
        (g.runs if r.get("status") == "ok" else g.failed).append(r)
        if r.get("status") == "ok":
            g.label = method_label(r)
    return list(by.values())


def _setting(g: Group, keys: tuple) -> tuple:
    cfg = g.cfg
    return tuple(cfg.get(k) for k in keys)


def _setting_text(keys: tuple, values: tuple) -> str:
    parts = []
    for k, v in zip(keys, values):
        if k == "data_dir" or v is None:
            continue
        parts.append(f"{k.replace('_', '-')} {v:g}" if isinstance(v, float) else f"{k.replace('_', '-')} {v}")
    return ", ".join(parts)


# ------------------------------------------------------------------------------------------------
# The report
# ------------------------------------------------------------------------------------------------

_ACC_KEYS = ("model", "data", "train_fraction", "epochs", "batch_size", "backend", "device")
_MEM_KEYS = ("data", "backend", "device")
_TPUT_KEYS = ("model", "data", "batch_size", "backend", "device")


def _suite_order(names) -> list[str]:
    def key(n):
        if n in SUITE_ORDER:
            return (0, SUITE_ORDER.index(n), n)
        return (2 if n == QUICK_SUITE else 1, 0, n)
    return sorted(names, key=key)


class _Report:
    def __init__(self, suites: dict, results_dir: Path, plots: bool):
        self.suites, self.root, self.plots_wanted = suites, results_dir, plots
        self.lines: list[str] = []
        self.plot_note: str | None = None
        self.plt = None
        if plots:
            try:
                import matplotlib
                matplotlib.use("Agg")
                import matplotlib.pyplot as plt
                self.plt = plt
            except ImportError:
                self.plot_note = ("Plots were skipped: matplotlib is not installed (install the "
                                  "`plot` extra: `pip install edge-trgl[plot]`).")
        else:
            self.plot_note = "Plots were skipped (--no-plots)."

    # --- helpers ---------------------------------------------------------------------------
    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def save_plot(self, fig, name: str) -> str:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        self.plt.close(fig)
        atomic_write_bytes(self.root / "plots" / name, buf.getvalue())
        return f"plots/{name}"

    # --- sections --------------------------------------------------------------------------
    def header(self) -> None:
        all_results = [r for s in self.suites.values() for r in s["results"]]
        host = all_results[0].get("host") or {}
        loads = [x for r in all_results for x in (r.get("loadavg_start") or [None])[:1] +
                 (r.get("loadavg_end") or [None])[:1] if x is not None]
        pk = host.get("packages", {})
        threads = sorted({r["measurements"].get("torch_threads") for r in all_results
                          if r["measurements"].get("torch_threads")})
        self.add("# edge-trgl benchmark report", "",
                 "Generated from the JSON files next to this report by `edge-trgl bench report "
                 f"{self.root}` (or `python benchmarks/report.py`); do not edit by hand.", "",
                 f"- Machine: {host.get('cpu_model', '?')}, {host.get('cpu_count', '?')} CPUs "
                 f"visible, torch threads {', '.join(map(str, threads)) or '?'}; "
                 f"{host.get('platform', '')}",
                 f"- Software: Python {host.get('python', '?')}, "
                 + ", ".join(f"{k} {v}" for k, v in pk.items())
                 + (f"; git {host.get('git', {}).get('commit', '')[:10]}"
                    + (" (with uncommitted changes)" if host.get("git", {}).get("dirty") else "")
                    if host.get("git", {}).get("commit") else ""),
                 "- Load average (1 min) at the start/end of runs: "
                 + (f"{min(loads):.2f} to {max(loads):.2f}" if loads else "not recorded")
                 + ". The machine is shared with other jobs, so times and samples/s are "
                 "indicative; memory figures do not depend on load.",
                 "- **Peak RSS** is the kernel's high-water mark (VmHWM) of the training child "
                 "process alone, everything included (Python, torch, the dataset, feature-cache "
                 "I/O), polled from outside every 20 ms and maxed with the run's own final reading. "
                 "`os.wait4`'s ru_maxrss is recorded too but not used as the figure: exec folds the "
                 "parent's high-water mark into it, and a run that resets VmHWM per module "
                 "(`--module-peaks`) leaves it with the peak since the last reset only. "
                 "**Baseline** is the same figure for a child that "
                 "only imports torch, edge-trgl and the backend. **Data loading** is a child that "
                 "only loads and splits the dataset. **Training-phase peak** (module-wise runs) is "
                 "the largest of the per-module peaks the run reports itself (summary.json "
                 "`modules[].measured_peak_bytes`). **Process "
                 "tree** sums the RSS of the child and its children, sampled every 20 ms: for "
                 "`--backend ort` the run's own figure is its training phase (torch-free "
                 "orchestrator + largest trainer process), and the tree also shows the set-up "
                 "child (torch + onnx) that prepares the ONNX artifacts.",
                 "- Accuracy is on the full test set; spreads are (min–max) over seeds/repeats, "
                 "with the median in front.", "")

    def timings(self) -> None:
        rows = []
        for name in _suite_order(self.suites):
            meta = self.suites[name]["meta"]
            results = self.suites[name]["results"]
            total = sum(r["measurements"]["wall_s"] for r in results)
            for inv in meta.get("invocations", []):
                rows.append([name, f"`{inv.get('command', '?')}`", inv.get("started_at", "?"),
                             f"{inv.get('seconds', 0) / 60:.1f} min",
                             f"{len(inv.get('rows_run', []))} run, "
                             f"{len(inv.get('rows_skipped', []))} skipped, "
                             f"{len(inv.get('rows_failed', []))} failed"
                             + ("" if inv.get("complete", True) else ", interrupted")])
            rows.append([name, "(sum of the suite's run wall times)", "", f"{total / 60:.1f} min",
                         f"{len(results)} results"])
        self.add("## Benchmark commands and their run time", "", *_table(
            ["suite", "command", "started", "run time", "rows"], rows), "")

    def headline(self) -> None:
        acc_suite = next((n for n in _suite_order(self.suites)
                          if "accuracy" in self._sections(n)), None)
        mem_suite = next((n for n in _suite_order(self.suites)
                          if "memory" in self._sections(n)), None)
        if acc_suite is None and mem_suite is None:
            return
        self.add("## Headline", "")
        if acc_suite is not None:
            self.add(f"From suite `{acc_suite}`:", "")
            self.accuracy_table(self.suites[acc_suite]["results"], headline=True)
        if mem_suite is not None:
            goals = self.memory_goals(self.suites[mem_suite]["results"])
            if goals:
                self.add(f"Memory (suite `{mem_suite}`):", "", *goals, "")

    def _sections(self, suite: str) -> list[str]:
        meta = self.suites[suite]["meta"]
        return meta.get("sections") or list(SECTIONS)

    # accuracy ------------------------------------------------------------------------------
    def accuracy_table(self, results: list[dict], headline: bool = False) -> list[tuple]:
        groups = [g for g in _groups(results) if g.runs]
        settings: dict[tuple, list[Group]] = {}
        for g in groups:
            settings.setdefault(_setting(g, _ACC_KEYS), []).append(g)
        out = []
        for setting, gs in settings.items():
            gs.sort(key=lambda g: _method_order(g.label))
            e2e = next((g for g in gs if g.label.startswith("end-to-end")), None)
            e2e_peak = e2e.stat("peak_rss_bytes")["median"] if e2e else None
            rows = []
            for g in gs:
                peak = g.stat("peak_rss_bytes")
                cfg = g.cfg
                tau = cfg.get("tau")
                ratio = f"{peak['median'] / e2e_peak:.2f}" if (e2e_peak and peak) else "-"
                best = g.stat("best_module")
                rows.append([g.label, str(g.num_modules),
                             "-" if cfg.get("scheme") == "e2e" else ("inf" if math.isinf(tau) else f"{tau:g}"),
                             _fmt_stat(g.stat("final_test_acc"), _pct),
                             _fmt_stat(g.stat("best_test_acc"), _pct)
                             + (f" (m{best['median']:.0f})" if best and best["n"] and cfg.get("scheme") != "e2e" else ""),
                             _mb(peak["median"]) if peak else "-", ratio,
                             _fmt_stat(g.stat("wall_s"), lambda v: f"{v:.0f}", spread=False),
                             str(len(g.runs)) + (f" (+{len(g.failed)} failed)" if g.failed else "")])
            self.add(f"Setting: {_setting_text(_ACC_KEYS, setting)}.", "", *_table(
                ["method", "modules", "tau", "test acc % of last module", "test acc % of best-val module",
                 "peak RSS MB", "RSS / end-to-end", "wall s per run", "runs (seeds)"], rows), "")
            out.append((setting, gs))
        return out

    def accuracy_section(self, name: str, results: list[dict]) -> None:
        self.add(f"### Accuracy ({name})", "",
                 "Same epoch budget for every method: each module of a module-wise run trains for "
                 "`epochs` epochs on the cached outputs of the modules before it; end-to-end trains "
                 "the whole network for `epochs` epochs. So at equal epochs a module-wise run makes "
                 "K times as many optimizer steps as end-to-end, each on one module (its compute "
                 "per network epoch is in the throughput table). tau = inf is plain greedy "
                 "training (no transport regularisation).", "")
        settings = self.accuracy_table(results)
        for setting, gs in settings:
            by_k: dict[int, list[Group]] = {}
            for g in gs:
                if not g.label.startswith("end-to-end"):
                    by_k.setdefault(g.num_modules, []).append(g)
            e2e = [g for g in gs if g.label.startswith("end-to-end")]
            for k, kgs in sorted(by_k.items()):
                rows = []
                for g in [*kgs, *e2e]:
                    stats = g.module_stats()
                    if g in e2e:  # only the last head of an end-to-end run is trained
                        stats = [None] * (k - 1) + stats[-1:]
                    rows.append([g.label, *[_fmt_stat(s, _pct) for s in stats[:k]]])
                self.add(f"Test accuracy (%) of every module's head, {k} modules "
                         f"({_setting_text(_ACC_KEYS, setting)}):", "",
                         *_table(["method", *[f"m{i}" for i in range(k)]], rows), "")
            if self.plt is not None:
                self.plot_accuracy(name, setting, gs, by_k, e2e)

    def plot_accuracy(self, name, setting, gs, by_k, e2e) -> None:
        plt = self.plt
        tag = re.sub(r"[^A-Za-z0-9]+", "-", "-".join(str(v) for v in setting[:5] if v is not None)).strip("-")
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        for g in gs:
            peak, acc = g.stat("peak_rss_bytes"), g.stat("final_test_acc")
            if not peak or not acc:
                continue
            ax.errorbar(peak["median"] / 1e6, 100 * acc["median"],
                        yerr=[[100 * (acc["median"] - acc["min"])], [100 * (acc["max"] - acc["median"])]],
                        xerr=[[(peak["median"] - peak["min"]) / 1e6], [(peak["max"] - peak["median"]) / 1e6]],
                        fmt="o", capsize=3, label=g.label)
        ax.set_xlabel("peak RSS of the training process (MB)")
        ax.set_ylabel("test accuracy of the last module (%)")
        ax.set_title(f"Peak memory vs accuracy\n{_setting_text(_ACC_KEYS, setting)}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        rel = self.save_plot(fig, f"{name}-{tag}-memory_vs_accuracy.png")
        self.add(f"![peak memory vs accuracy]({rel})", "")
        if not by_k:
            return
        from matplotlib.ticker import MaxNLocator
        fig, axes = plt.subplots(1, len(by_k), figsize=(5.5 * len(by_k), 4), squeeze=False)
        for ax, (k, kgs) in zip(axes[0], sorted(by_k.items())):
            for g in kgs:
                stats = g.module_stats()[:k]
                xs = [i for i, s in enumerate(stats) if s]
                ys = [100 * stats[i]["median"] for i in xs]
                lo = [100 * (stats[i]["median"] - stats[i]["min"]) for i in xs]
                hi = [100 * (stats[i]["max"] - stats[i]["median"]) for i in xs]
                ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=g.label)
            for g in e2e:
                s = g.stat("final_test_acc")
                if s:
                    ax.errorbar([k - 1], [100 * s["median"]],
                                yerr=[[100 * (s["median"] - s["min"])], [100 * (s["max"] - s["median"])]],
                                marker="*", markersize=12, capsize=3, linestyle="none", label=g.label)
            ax.set_xlabel("module index")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel("test accuracy (%)")
            ax.set_title(f"{k} modules", fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(f"Accuracy per module: TRGL vs greedy vs end-to-end\n"
                     f"{_setting_text(_ACC_KEYS, setting)}", fontsize=9, y=1.06)
        rel = self.save_plot(fig, f"{name}-{tag}-accuracy_per_module.png")
        self.add(f"![accuracy per module]({rel})", "")

    # memory --------------------------------------------------------------------------------
    def _memory_points(self, results) -> dict:
        """{(data, backend, device): {(model, batch): {label: Group}}}"""
        out: dict = {}
        for g in _groups(results):
            if not g.runs:
                continue
            cfg = g.cfg
            out.setdefault(_setting(g, _MEM_KEYS), {}).setdefault(
                (cfg["model"], cfg["batch_size"]), {})[g.label] = g
        return out

    def memory_goals(self, results) -> list[str]:
        lines = []
        for setting, points in self._memory_points(results).items():
            where = _setting_text(_MEM_KEYS, setting)
            for (model, batch), methods in sorted(points.items(), key=lambda kv: (_depth(kv[0][0]) or 0, kv[0][1])):
                e2e = methods.get("end-to-end")
                for label, g in methods.items():
                    if "block-wise" in label and e2e and model == "resnet56" and batch == 128:
                        a, b = g.stat("peak_rss_bytes")["median"], e2e.stat("peak_rss_bytes")["median"]
                        base = g.stat("baseline_rss_bytes")
                        above = ""
                        if base:
                            above = (f"; above the {_mb(base['median'])} MB import baseline: "
                                     f"{(a - base['median']) / (b - base['median']):.2f}")
                        lines.append(f"- {label} / end-to-end peak RSS at ResNet-56, batch 128 "
                                     f"({where}): **{a / b:.2f}** ({_mb(a)} MB vs {_mb(b)} MB"
                                     f"{above}); goal <= 0.40: {'met' if a / b <= 0.40 else 'not met'}.")
            depth_lines = []
            by_method: dict[tuple, dict] = {}
            for (model, batch), methods in points.items():
                for label, g in methods.items():
                    if _depth(model):
                        by_method.setdefault((label, batch), {})[_depth(model)] = g
            for (label, batch), depths in sorted(by_method.items(), key=lambda kv: (_method_order(kv[0][0]), kv[0][1])):
                if 20 in depths and 110 in depths and "block-wise" in label:
                    a = depths[110].stat("peak_rss_bytes")["median"]
                    b = depths[20].stat("peak_rss_bytes")["median"]
                    depth_lines.append(
                        f"- {label}, batch {batch}: ResNet-110 peak / ResNet-20 peak = **{a / b:.2f}** "
                        f"({_mb(a)} MB vs {_mb(b)} MB; {where}); goal within 10%: "
                        f"{'met' if abs(a / b - 1) <= 0.10 else 'not met'}.")
            lines += depth_lines
        return lines

    def memory_section(self, name: str, results: list[dict]) -> None:
        self.add(f"### Peak memory ({name})", "")
        for setting, points in self._memory_points(results).items():
            labels = sorted({l for m in points.values() for l in m}, key=_method_order)
            others = [l for l in labels if not l.startswith("end-to-end")]
            header = ["model", "batch", *[f"{l} MB" for l in labels],
                      *[f"{l} / e2e (above baseline)" for l in others]]
            rows = []
            for (model, batch), methods in sorted(points.items(), key=lambda kv: (_depth(kv[0][0]) or 0, kv[0][1])):
                e2e = methods.get("end-to-end")
                cells = [model, str(batch)]
                for l in labels:
                    g = methods.get(l)
                    cells.append(_fmt_stat(g.stat("peak_rss_bytes"), _mb) if g else "-")
                for l in others:
                    g = methods.get(l)
                    if not (g and e2e):
                        cells.append("-")
                        continue
                    a = g.stat("peak_rss_bytes")["median"]
                    b = e2e.stat("peak_rss_bytes")["median"]
                    base = (g.stat("baseline_rss_bytes") or {}).get("median")
                    cells.append(f"{a / b:.2f}" + (f" ({(a - base) / (b - base):.2f})" if base and b > base else ""))
                rows.append(cells)
            self.add(f"Whole-process peak RSS ({_setting_text(_MEM_KEYS, setting)}); the ratio in "
                     f"brackets subtracts the import baseline from both sides:", "",
                     *_table(header, rows), "")
            # what the figures are made of
            detail = []
            for (model, batch), methods in sorted(points.items(), key=lambda kv: (_depth(kv[0][0]) or 0, kv[0][1])):
                for l in labels:
                    g = methods.get(l)
                    if not g:
                        continue
                    detail.append([model, str(batch), l,
                                   _fmt_stat(g.stat("peak_rss_bytes"), _mb),
                                   _fmt_stat(g.stat("baseline_rss_bytes"), _mb, spread=False),
                                   _fmt_stat(g.stat("data_loading_peak_rss_bytes"), _mb, spread=False),
                                   _fmt_stat(g.stat("training_phase_peak_rss_bytes"), _mb),
                                   _fmt_stat(g.stat("self_reported_peak_rss_bytes"), _mb),
                                   _fmt_stat(g.stat("ru_maxrss_bytes"), _mb),
                                   _fmt_stat(g.stat("tree_rss_peak_bytes"), _mb),
                                   _fmt_stat(g.stat("wall_s"), lambda v: f"{v:.0f}", spread=False),
                                   str(len(g.runs))])
            self.add("Where the peak comes from (MB):", "", *_table(
                ["model", "batch", "method", "peak RSS", "import baseline",
                 "data loading alone", "training-phase peak", "run's own VmHWM",
                 "wait4 ru_maxrss", "process tree (sampled)", "wall s", "runs"],
                detail), "")
            if self.plt is not None:
                self.plot_memory(name, setting, points, labels)
        goals = self.memory_goals(results)
        if goals:
            self.add("Goals checked:", "", *goals, "")

    def plot_memory(self, name, setting, points, labels) -> None:
        plt = self.plt
        tag = re.sub(r"[^A-Za-z0-9]+", "-", "-".join(str(v) for v in setting if v is not None)).strip("-")
        for axis, title, fname in (("depth", "Peak memory vs depth", "memory_vs_depth"),
                                   ("batch", "Peak memory vs batch size", "memory_vs_batch")):
            series: dict[tuple, list] = {}
            for (model, batch), methods in points.items():
                for l, g in methods.items():
                    x, other = ((_depth(model), f"batch {batch}") if axis == "depth"
                                else (batch, model))
                    if x is None:
                        continue
                    series.setdefault((l, other), []).append((x, g.stat("peak_rss_bytes")["median"] / 1e6))
            series = {k: sorted(v) for k, v in series.items() if len(v) >= 2}
            if not series:
                continue
            fig, ax = plt.subplots(figsize=(6.5, 4.5))
            for (l, other), pts in sorted(series.items(), key=lambda kv: (_method_order(kv[0][0]), kv[0][1])):
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{l}, {other}")
            bases = [g.stat("baseline_rss_bytes") for m in points.values() for g in m.values()]
            bases = [b["median"] for b in bases if b]
            if bases:
                ax.axhline(statistics.median(bases) / 1e6, color="gray", linestyle="--",
                           linewidth=1, label="import baseline (torch + edge-trgl)")
            ax.set_xlabel("ResNet depth" if axis == "depth" else "batch size")
            ax.set_ylabel("peak RSS (MB)")
            ax.set_title(f"{title}\n{_setting_text(_MEM_KEYS, setting)}", fontsize=9)
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
            rel = self.save_plot(fig, f"{name}-{tag}-{fname}.png")
            self.add(f"![{title.lower()}]({rel})", "")

    # throughput ----------------------------------------------------------------------------
    def throughput_section(self, name: str, results: list[dict]) -> None:
        self.add(f"### Throughput ({name})", "",
                 "A network epoch is every module seeing the train set once (block-wise: each "
                 "block for one epoch). *Training loops* count only the optimisation steps. *Whole "
                 "run* divides by the run's full time, which includes loading the data, writing the "
                 "feature cache after every module, validation after every epoch, checkpoints and the "
                 "final test pass. *Between modules* is the time from one module's last epoch to the "
                 "next module's first (feature-cache writing, saving and loading modules, one "
                 "validation pass).", "")
        groups = [g for g in _groups(results) if g.runs]
        settings: dict[tuple, list[Group]] = {}
        for g in groups:
            settings.setdefault(_setting(g, _TPUT_KEYS), []).append(g)
        for setting, gs in settings.items():
            gs.sort(key=lambda g: _method_order(g.label))
            e2e = next((g for g in gs if g.label.startswith("end-to-end")), None)
            rows = []
            for g in gs:
                per_epoch = g.stat("run_s_per_network_epoch")
                ref = e2e.stat("run_s_per_network_epoch") if e2e else None
                loads = [x for r in g.runs for x in (r.get("loadavg_start") or [None])[:1] if x is not None]
                rows.append([g.label,
                             _fmt_stat(g.stat("train_samples_per_s"), lambda v: f"{v:.0f}"),
                             _fmt_stat(g.stat("overall_samples_per_s"), lambda v: f"{v:.0f}"),
                             _fmt_stat(g.stat("train_loop_s_per_network_epoch"), lambda v: f"{v:.1f}"),
                             _fmt_stat(per_epoch, lambda v: f"{v:.1f}"),
                             f"{per_epoch['median'] / ref['median']:.2f}" if (per_epoch and ref) else "-",
                             _fmt_stat(g.stat("between_modules_s"), lambda v: f"{v:.1f}"),
                             _fmt_stat(g.stat("network_epochs"), lambda v: f"{v:.0f}", spread=False),
                             f"{min(loads):.1f}–{max(loads):.1f}" if loads else "-",
                             str(len(g.runs))])
            self.add(f"Setting: {_setting_text(_TPUT_KEYS, setting)}.", "", *_table(
                ["method", "samples/s (training loops)", "samples/s (whole run)",
                 "s per network epoch (loops)", "s per network epoch (whole run)",
                 "whole-run time / end-to-end", "between modules s", "network epochs",
                 "load avg at start", "runs"], rows), "")

    # everything ------------------------------------------------------------------------------
    def all_runs(self, name: str, suite: dict) -> None:
        results = suite["results"]
        extra_keys = sorted({f"{kind}:{k}" for r in results for kind in ("cuda", "backend_figures")
                             for k in _numeric_leaves(r["measurements"].get(kind) or {})})
        rows = []
        for r in sorted(results, key=lambda r: r["row_id"]):
            m = r["measurements"]
            extra = []
            for key in extra_keys:
                kind, k = key.split(":", 1)
                v = _numeric_leaves(m.get(kind) or {}).get(k)
                extra.append("-" if v is None else (_mb(v) if k.endswith("bytes") else f"{v:g}"))
            rows.append([r["row_id"], method_label(r), r["status"], _mb(m.get("peak_rss_bytes")),
                         _mb(m.get("peak_above_baseline_bytes")), _mb(m.get("tree_rss_peak_bytes")),
                         f"{m['wall_s']:.0f}", "-" if m.get("train_samples_per_s") is None
                         else f"{m['train_samples_per_s']:.0f}",
                         _pct(m.get("final_test_acc")), _pct(m.get("best_test_acc")),
                         "/".join(f"{x:.1f}" for x in (r.get("loadavg_start") or [])[:1] + (r.get("loadavg_end") or [])[:1]),
                         *extra])
        header = ["row", "method", "status", "peak RSS MB", "above baseline MB",
                  "process tree MB", "wall s",
                  "samples/s", "last-module test %", "best-val module test %", "load start/end",
                  *[k.split(":", 1)[1] + (" MB" if k.endswith("bytes") else "") for k in extra_keys]]
        self.add(f"### All runs ({name})", "", *_table(header, rows), "")
        example = results[0]
        self.add("Example command (each row's JSON has its exact command):", "",
                 f"`{example['command_line']}`", "")
        checks = suite["checks"]
        if checks:
            crow = [[c["row_id"], _mb(c["stored_peak_rss_bytes"]), _mb(c["rerun_peak_rss_bytes"]),
                     f"{100 * c['relative_difference']:+.1f}%",
                     "yes" if c["within_tolerance"] else "NO", c.get("checked_at", "")] for c in checks]
            self.add("Reproducibility checks (`edge-trgl bench rerun`: the stored row re-run in a "
                     "fresh process):", "", *_table(
                         ["row", "stored peak MB", "re-run peak MB", "difference",
                          f"within {100 * checks[0]['tolerance']:.0f}%", "checked"], crow), "")

    def render(self) -> str:
        self.header()
        self.headline()
        self.timings()
        for name in _suite_order(self.suites):
            suite = self.suites[name]
            meta = suite["meta"]
            self.add(f"## Suite `{name}`", "")
            if meta.get("description"):
                self.add(meta["description"].strip(), "")
            if meta.get("notes"):
                self.add(meta["notes"].strip(), "")
            sections = self._sections(name)
            if "accuracy" in sections:
                self.accuracy_section(name, suite["results"])
            if "memory" in sections:
                self.memory_section(name, suite["results"])
            if "throughput" in sections:
                self.throughput_section(name, suite["results"])
            self.all_runs(name, suite)
        if self.plot_note:
            self.add(f"_{self.plot_note}_", "")
        return "\n".join(self.lines).rstrip() + "\n"


def render_report(results_dir: str | os.PathLike = "benchmarks/results", *, plots: bool = True,
                  out: str | os.PathLike | None = None) -> Path:
    """Rebuild REPORT.md (and plots/) from the result JSONs; return the report's path."""
    root = Path(results_dir)
    suites = load_results(root)
    report = _Report(suites, root, plots)
    text = report.render()
    path = Path(out) if out else root / "REPORT.md"
    atomic_write_bytes(path, text.encode())
    return path
