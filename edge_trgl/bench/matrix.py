"""Benchmark matrices (benchmarks/matrices/*.toml) expanded into rows.

A *matrix* names a suite, default `edge-trgl train` options, named method presets and rows; a
row whose values are lists expands to the cartesian product. Every expanded row is checked the
way `edge-trgl train` would parse and validate it, so a typo fails before the first run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import itertools
import math
import os
import re
import shlex
import string
from dataclasses import dataclass, field
from pathlib import Path

from ..config import TrainConfig
from ..errors import UserError

DEFAULT_SUITES = ("accuracy", "memory", "throughput")
QUICK_SUITE = "quick"
SECTIONS = ("accuracy", "memory", "throughput", "time_to_accuracy", "small_data")
DEFAULT_TIMEOUT_S = 3600.0

_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
# Set by the harness itself (each child gets its own run directory and runs quietly).
_HARNESS_OWNED = {"out", "progress", "extra"}
_MATRIX_KEYS = {"name", "description", "notes", "sections", "defaults", "methods", "rows",
                "timeout_s"}
_ID_CHARS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]*$")


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
    for root in (Path.cwd(), Path(__file__).resolve().parents[2]):
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


def load_toml(path: Path) -> dict:
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
        if name in ("e2e_energy", "keep_cache", "compile"):
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
    from ..cli.common import config_from_args
    from ..cli.main import build_parser
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            args = build_parser().parse_args(["train", *argv, "--out", "unused"])
    except SystemExit:
        message = captured.getvalue().strip().splitlines()
        raise UserError(f"{where}: `edge-trgl train {shlex.join(argv)}` is rejected: "
                        f"{message[-1] if message else 'bad arguments'}.") from None
    cfg = config_from_args(args)
    from ..targets import validate
    try:
        validate(cfg)
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


def matrix_header(raw: dict, where: str) -> tuple[str, str, list[str]]:
    """A parsed matrix's description, notes and report sections (checked): what the report shows
    of a suite besides its rows."""
    sections = list(raw.get("sections", []))
    bad = [s for s in sections if s not in SECTIONS]
    if bad:
        raise UserError(f"{where}: unknown report sections {bad}; choose from {', '.join(SECTIONS)}.")
    return str(raw.get("description", "")), str(raw.get("notes", "")), sections


def load_matrix(name_or_path: str, *, repeats: int = 1, overrides: dict | None = None) -> Matrix:
    """Read and expand a matrix. `overrides` (train options) apply to every row, last."""
    if repeats < 1:
        raise UserError(f"--repeats must be at least 1, not {repeats}.")
    path = resolve_matrix(name_or_path)
    raw = load_toml(path)
    where = str(path)
    unknown = sorted(set(raw) - _MATRIX_KEYS)
    if unknown:
        raise UserError(f"{where}: unknown top-level keys {unknown}; a matrix has "
                        f"{', '.join(sorted(_MATRIX_KEYS))}.")
    name = str(raw.get("name") or path.stem)
    if not _ID_CHARS.match(name):
        raise UserError(f"{where}: the suite name {name!r} may only hold letters, digits and . _ -.")
    description, notes, sections = matrix_header(raw, where)
    defaults = _normalize(raw.get("defaults", {}), f"{where} [defaults]")
    methods = {m: _normalize(opts, f"{where} [methods.{m}]")
               for m, opts in raw.get("methods", {}).items()}
    extra = _normalize(overrides or {}, "--set")
    entries = raw.get("rows")
    if not entries:
        raise UserError(f"{where}: the matrix has no [[rows]]; add at least one.")
    matrix = Matrix(name=name, path=str(path), description=description, notes=notes, sections=sections,
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
