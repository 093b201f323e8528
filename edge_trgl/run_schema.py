"""The schema of a run's JSON files: manifest.json, plan.json and config.json's field types,
each checked for every key the code reads (type and range) and against each other, so that a
damaged or hand-edited file is refused with one clear paragraph at the start, never a traceback
in the middle of a run. Read-only and numpy-free; run.py (resume) and export.py (export, evaluate,
predict) turn a Damage into their one-paragraph UserError."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

from .errors import UserError

MANIFEST = "manifest.json"
FORMAT = 1

# Each check raises Damage with what is wrong in words; the caller turns it into the one-paragraph
# UserError. Keys a check does not know are allowed (a newer edge-trgl may add some); every key the
# code reads is checked for its type and range.
STATUSES = ("new", "running", "complete")
RESTORE_MANIFEST = "Restore manifest.json from a backup, or start a new run."
_TYPE_WORDS = {"str": "text", "int": "a whole number", "float": "a number", "bool": "true or false",
               "dict": "an object", "None": "null", "list[int]": "a list of whole numbers"}
PHASES = ("train", "cache", "done")
CACHE_DTYPES = ("fp16", "fp32")
_SHA256 = re.compile(r"[0-9a-f]{64}\Z")
_INDEX = re.compile(r"(0|[1-9][0-9]{0,8})\Z")
_STORE_NAME = re.compile(r"(blocks)/block_([0-9]+)\.safetensors\Z"
                         r"|(heads)/head_([0-9]+)\.safetensors\Z"
                         r"|(optim)/module_([0-9]+)\.safetensors\Z")


class Damage(Exception):
    """What is wrong with a run file, in words."""


class Incompatible(Damage):
    """The manifest's format is a whole number other than FORMAT: a run written by another
    edge-trgl version, not a damaged one (the caller says which version to use instead)."""

    def __init__(self, found: int):
        super().__init__(f"manifest format {found}, expected {FORMAT}")
        self.found = found


def kind(value) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null",
            int: "number", float: "number"}.get(type(value), type(value).__name__)


def some(items: list[str], shown: int = 5) -> str:
    text = ", ".join(items[:shown])
    return text + (f" and {len(items) - shown} more" if len(items) > shown else "")


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_num(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def as_dict(value, where: str) -> dict:
    if not isinstance(value, dict):
        raise Damage(f"{where} is a JSON {kind(value)}, not an object")
    return value


def as_list(value, where: str) -> list:
    if not isinstance(value, list):
        raise Damage(f"{where} is a JSON {kind(value)}, not a list")
    return value


def as_int(value, where: str, low: int = 0) -> int:
    if not is_int(value) or value < low:
        raise Damage(f"{where} is {show(value)}, not a whole number >= {low}")
    return value


def as_num(value, where: str, low: float | None = 0, high: float | None = None,
           none: bool = True) -> None:
    if value is None and none:
        return
    if (not is_num(value) or (low is not None and value < low)
            or (high is not None and value > high)):
        rng = ("" if low is None else f" >= {low}") + ("" if high is None else f" and <= {high}")
        raise Damage(f"{where} is {show(value)}, not a finite number{rng}")


def one_of(value, where: str, choices) -> None:
    if not isinstance(value, str) or value not in choices:
        raise Damage(f"{where} is {show(value)}, not one of {', '.join(choices)}")


def as_sha(value, where: str) -> None:
    if not isinstance(value, str) or not _SHA256.match(value):
        raise Damage(f"{where} is {show(value)}, not a sha256 checksum (64 lowercase hex digits)")


def as_rel(value, where: str, under: str | None = None) -> str:
    """A path of a file inside the run: relative, no '..', printable, under `under`/ if given."""
    ok = isinstance(value, str) and value and not value.startswith("/") and "\\" not in value
    if ok:
        parts = value.split("/")
        ok = all(p not in ("", ".", "..") for p in parts) and value.isprintable()
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            ok = False
    if ok and under is not None:
        ok = value.startswith(under + "/")
    if not ok:
        inside = f" under {under}/" if under else ""
        raise Damage(f"{where} is {show(value)}, not the path of a file inside the run{inside}")
    return value


def module_index(key: str, table: str) -> int:
    if not _INDEX.match(key):
        raise Damage(f"the {table!r} table has the key {show(key)}, which is not a module number "
                     f"(0, 1, 2, ...)")
    return int(key)


def show(value) -> str:
    if isinstance(value, (dict, list)):
        return f"a JSON {kind(value)}"
    text = json.dumps(value, allow_nan=True)
    return text if len(text) <= 40 else text[:37] + "..."


def read_manifest(root: Path) -> dict:
    """manifest.json of the run in `root`, checked (check_manifest_shape); read-only."""
    return read_manifest_bytes(Path(root))[0]


def read_manifest_bytes(root: Path) -> tuple[dict, bytes]:
    path = Path(root) / MANIFEST
    fix = RESTORE_MANIFEST
    try:
        if not path.exists():
            raise UserError(f"{root} is not an edge-trgl run directory (it has no {MANIFEST}). "
                            f"Give --resume the --out directory of an earlier `edge-trgl train`.")
        data = path.read_bytes()
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        why = getattr(exc, "strerror", None) or exc
        raise UserError(f"The run manifest {path} cannot be read ({why}). Make it readable, or "
                        f"restore it from a backup.") from None
    try:
        manifest = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise UserError(f"The run manifest {path} is damaged: it is not UTF-8 text (a bad byte at "
                        f"offset {exc.start}). Nothing in the run directory was changed. "
                        f"{fix}") from None
    except (ValueError, RecursionError) as exc:
        raise UserError(f"The run manifest {path} is damaged: it is not valid JSON ({exc}). "
                        f"Nothing in the run directory was changed. {fix}") from None
    try:
        check_manifest_shape(manifest)
    except Incompatible as exc:
        raise UserError(f"The run in {root} was written by an incompatible edge-trgl version "
                        f"({exc}); use that version to resume or export it.") from None
    except Damage as exc:
        raise UserError(f"The run manifest {path} is damaged: {exc}. Nothing in the run directory "
                        f"was changed. {fix}") from None
    return manifest, data


def check_manifest_shape(m) -> None:
    """Every manifest key the code reads, with its type and range (module indices are checked
    against the plan in check_manifest_against_plan). A manifest of another format version raises
    Incompatible (a Damage) before anything else is checked."""
    as_dict(m, "the manifest")
    if is_int(m.get("format")) and m["format"] != FORMAT:
        raise Incompatible(m["format"])
    for key in ("format", "status", "files", "modules", "caches", "progress"):
        if key not in m:
            raise Damage(f"the key {key!r} is missing")
    if m["format"] != FORMAT or not is_int(m["format"]):
        raise Damage(f"format is {show(m['format'])}, not {FORMAT}")
    one_of(m["status"], "status", STATUSES)
    for rel, sha in as_dict(m["files"], "the 'files' table").items():
        as_rel(rel, "a key of files")
        as_sha(sha, f"files[{rel!r}]")
    for key, rec in as_dict(m["modules"], "the 'modules' table").items():
        where = f"modules[{key!r}]"
        module_index(key, "modules")
        as_dict(rec, where)
        for name in ("lo", "hi", "lap"):
            if name in rec:
                as_int(rec[name], f"{where}.{name}")
        for name in ("val_acc", "test_acc"):
            as_num(rec.get(name), f"{where}.{name}", 0, 1)
        as_num(rec.get("measured_peak_bytes"), f"{where}.measured_peak_bytes")
        if rec.get("train") is not None:
            as_dict(rec["train"], f"{where}.train")
        if rec.get("ort_worker_peak_bytes") is not None:
            as_dict(rec["ort_worker_peak_bytes"], f"{where}.ort_worker_peak_bytes")
        if "lo" in rec and "hi" in rec and rec["hi"] <= rec["lo"]:
            raise Damage(f"{where} has blocks lo={rec['lo']}, hi={rec['hi']} (hi excluded), an "
                         f"empty range")
    for key, entry in as_dict(m["caches"], "the 'caches' table").items():
        where = f"caches[{key!r}]"
        module_index(key, "caches")
        as_dict(entry, where)
        if "complete" in entry and not isinstance(entry["complete"], bool):
            raise Damage(f"{where}.complete is {show(entry['complete'])}, not true or false")
        for name in ("lap", "views"):
            if name in entry:
                as_int(entry[name], f"{where}.{name}")
        if "dtype" in entry:
            one_of(entry["dtype"], f"{where}.dtype", CACHE_DTYPES)
        if "shape" in entry:
            for i, n in enumerate(as_list(entry["shape"], f"{where}.shape")):
                as_int(n, f"{where}.shape[{i}]", 1)
        if entry.get("complete") and "splits" not in entry:
            raise Damage(f"{where} is complete but lists no splits")
        for name, shards in as_dict(entry.get("splits", {}), f"{where}.splits").items():
            for i, shard in enumerate(as_list(shards, f"{where}.splits[{name!r}]")):
                sw = f"{where}.splits[{name!r}][{i}]"
                as_dict(shard, sw)
                for field in ("file", "count", "sha256"):
                    if field not in shard:
                        raise Damage(f"{sw} has no {field!r}")
                as_rel(shard["file"], f"{sw}.file", "cache")
                as_int(shard["count"], f"{sw}.count")
                as_sha(shard["sha256"], f"{sw}.sha256")
    progress = as_dict(m["progress"], "the 'progress' record")
    if progress:
        for name in ("lap", "module", "phase"):
            if name not in progress:
                raise Damage(f"progress has no {name!r}")
        as_int(progress["lap"], "progress.lap")
        as_int(progress["module"], "progress.module")
        one_of(progress["phase"], "progress.phase", PHASES)
        if "epoch_done" in progress:
            as_int(progress["epoch_done"], "progress.epoch_done")
        if progress.get("ckpt") is not None:
            as_rel(progress["ckpt"], "progress.ckpt", "ckpt")
        if progress.get("earlier") is not None:  # --distributed keeps two (pipeline.py)
            as_rel(progress["earlier"], "progress.earlier", "ckpt")
    if "metrics_lines" in m and m["metrics_lines"] is not None:
        as_int(m["metrics_lines"], "metrics_lines")
    if m["status"] != "new":
        if "config_hash" not in m:
            raise Damage("the key 'config_hash' is missing")
        as_sha(m["config_hash"], "config_hash")
        if not isinstance(m.get("data_fingerprint"), str) or not m["data_fingerprint"]:
            raise Damage(f"data_fingerprint is {show(m.get('data_fingerprint'))}, not a "
                         f"fingerprint")
    as_num(m.get("peak_rss_bytes_so_far"), "peak_rss_bytes_so_far")
    if m.get("ort") is not None:
        ort = as_dict(m["ort"], "ort")
        for rel, sha in as_dict(ort.get("artifacts", {}), "ort.artifacts").items():
            as_rel(rel, "a key of ort.artifacts")
            as_sha(sha, f"ort.artifacts[{rel!r}]")
        if ort.get("preparation") is not None:
            as_dict(ort["preparation"], "ort.preparation")
        peaks = as_list(ort.get("rebuild_peaks_bytes", []), "ort.rebuild_peaks_bytes")
        for i, v in enumerate(peaks):
            as_num(v, f"ort.rebuild_peaks_bytes[{i}]", none=False)


def check_plan_shape(plan) -> None:
    """plan.json: consecutive module splits from block 0, batch size, cached views, budget and
    estimates of the right types."""
    plan = as_dict(plan, "plan.json")
    for key in ("splits", "batch_size", "views"):
        if key not in plan:
            raise Damage(f"plan.json has no {key!r}")
    splits = as_list(plan["splits"], "plan.json splits")
    if not splits:
        raise Damage("plan.json splits is empty (a run has at least one module)")
    start = 0
    for k, pair in enumerate(splits):
        if (not isinstance(pair, list) or len(pair) != 2 or not all(map(is_int, pair))
                or pair[0] != start or pair[1] <= pair[0]):
            shown = pair if isinstance(pair, list) else show(pair)
            raise Damage(f"plan.json splits[{k}] is {shown}, not the block range [{start}, end > "
                         f"{start}] of module {k}")
        start = pair[1]
    as_int(plan["batch_size"], "plan.json batch_size", 1)
    as_int(plan["views"], "plan.json views")
    as_num(plan.get("budget_bytes"), "plan.json budget_bytes", 1)
    as_num(plan.get("estimated_peak_bytes"), "plan.json estimated_peak_bytes")
    estimates = as_list(plan.get("module_estimates", []), "plan.json module_estimates")
    for i, est in enumerate(estimates):
        where = f"plan.json module_estimates[{i}]"
        as_dict(est, where)
        as_num(est.get("estimated_peak_bytes"), f"{where}.estimated_peak_bytes", none=False)
    if plan.get("notes") is not None:
        as_list(plan["notes"], "plan.json notes")


def check_manifest_against_plan(m: dict, plan: dict) -> None:
    count = len(plan["splits"])
    within = f"the plan (plan.json) has {count} module{'s' if count != 1 else ''} (0..{count - 1})"
    for table in ("modules", "caches"):
        for key in m[table]:
            if int(key) >= count:
                raise Damage(f"{table}[{key!r}] names module {key}, but {within}")
    progress = m["progress"]
    if progress and progress["module"] >= count:
        raise Damage(f"progress names module {progress['module']}, but {within}")
    # A feature cache is recorded twice, written together: its shards in `files` and its entry in
    # `caches` (one save). They must agree, and a complete entry holds every train view.
    shards: dict[str, str] = {}
    for key, entry in m["caches"].items():
        prefix = f"cache/module_{int(key):02d}/"
        # (views taken from training can be fewer than planned: harvest.harvested_views)
        planned = 0 if int(key) == count - 1 else plan["views"]
        views = entry.get("views", planned)
        if not (views == planned == 0 or 1 <= views <= planned):
            raise Damage(f"caches[{key!r}] has {views} train views, but the plan caches "
                         f"{planned if planned == 0 else f'1 to {planned}'} for module {key}")
        if entry.get("complete"):
            lacking = [f"train-v{v}" for v in range(views) if f"train-v{v}" not in entry["splits"]]
            if lacking:
                raise Damage(f"caches[{key!r}] is complete but has no {', '.join(lacking)}")
        for name, listed in entry.get("splits", {}).items():
            for shard in listed:
                if not shard["file"].startswith(prefix):
                    raise Damage(f"caches[{key!r}] lists the shard {shard['file']!r} outside "
                                 f"{prefix}")
                shards[shard["file"]] = shard["sha256"]
    in_files = {rel: sha for rel, sha in m["files"].items() if rel.startswith("cache/")}
    if in_files != shards:
        odd = sorted(set(in_files) ^ set(shards)) or sorted(
            rel for rel in shards if shards[rel] != in_files[rel])
        raise Damage(f"its feature-cache records disagree: {some(odd)} is not recorded both in "
                     f"'files' and in 'caches' with one checksum")
    # A module's record gets its blocks, lap and accuracies in one update once the module is
    # done; every module before the resume point (all of them in a finished run) has one.
    done = range(count) if m["status"] == "complete" else range(progress.get("module", 0))
    for k in done:
        if str(k) not in m["modules"]:
            raise Damage(f"modules has no record of module {k}, which the run has finished")
    for key, rec in m["modules"].items():
        lo, hi = plan["splits"][int(key)]
        given = [name for name in ("lo", "hi", "lap") if name in rec]
        if given and len(given) < 3 or int(key) in done and not given:
            missing = [name for name in ("lo", "hi", "lap") if name not in rec]
            raise Damage(f"modules[{key!r}] has no {' or '.join(repr(n) for n in missing)}, which "
                         f"a finished module's record holds")
        if given and (rec["lo"], rec["hi"]) != (lo, hi):
            raise Damage(f"modules[{key!r}] has blocks lo={rec['lo']}, hi={rec['hi']} (hi "
                         f"excluded), but the plan gives module {key} lo={lo}, hi={hi}")


def check_config_types(data) -> None:
    """config.json is an object of settings, each a field of TrainConfig (no unknown keys), of the
    type TrainConfig declares (the values are checked by TrainConfig.validate)."""
    from .config import TrainConfig
    if not isinstance(data, dict):
        raise Damage(f"config.json holds a JSON {kind(data)}, not an object of settings")
    unknown = sorted(set(data) - {f.name for f in dataclasses.fields(TrainConfig)})
    if unknown:
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise Damage(f"config.json has unknown keys {unknown[:5]}{more}, which are not settings "
                     f"of this edge-trgl version")
    simple = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,), "dict": (dict,),
              "None": (type(None),)}
    for f in dataclasses.fields(TrainConfig):
        if f.name not in data:
            continue
        value = data[f.name]
        options = [t.strip() for t in str(f.type).split("|")]
        ok = False
        for option in options:
            if option == "list[int]":
                ok = isinstance(value, list) and all(is_int(v) for v in value)
            elif option in simple:
                ok = isinstance(value, simple[option]) and (
                    option == "bool" or not isinstance(value, bool))
            else:
                ok = True  # a type this check does not know: left to validate()
            if ok:
                break
        if not ok:
            words = " or ".join(_TYPE_WORDS.get(o, o) for o in options)
            raise Damage(f"{f.name} is {show(value)}, not {words}")


def store_index(rel: str) -> tuple[str, int] | None:
    match = _STORE_NAME.match(rel)
    if not match:
        return None
    groups = [g for g in match.groups() if g is not None]
    return groups[0], int(groups[1])
