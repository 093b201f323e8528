"""The export folder on disk: what it may hold, and writing it as a whole. An export is written
into a hidden staging folder beside its target and renamed into place (publish_export), so a
killed export never leaves a model.onnx that evaluate would accept; an existing export is kept
unless --force, and then moved aside and removed only once the new one is in place."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from .atomic import atomic_write_bytes, fsync_dir
from .errors import UserError
from .run import MANIFEST


# An export folder holds these (and, from an interrupted write of an older version, their hidden
# temp files); anything else in an --out folder belongs to someone else.
EXPORT_FILES = ("model.onnx", "model.json", "model.safetensors", "model.pt", "export.json",
                "detector.json")  # (export --detect: detect_runtime.py)
_TEMP = re.compile(r"^\.(%s)\.tmp-\d+$" % "|".join(re.escape(n) for n in EXPORT_FILES))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: someone else's live process
        return True
    return True


def glob_escape(name: str) -> str:
    return re.sub(r"([*?[])", r"[\1]", name)


def _clean_dead_staging(out: Path) -> None:
    """What an export killed before it published left beside `out`: a staging folder (deleted),
    or, killed between the two renames of a --force replacement, the previous export moved aside
    (put back when `out` is gone, else deleted). Folders of live exports are left alone."""
    parent = out.parent
    if not parent.is_dir():
        return
    for kind in ("old", "export"):
        for path in sorted(parent.glob(f".{glob_escape(out.name)}.{kind}-*")):
            pid = path.name.rsplit("-", 1)[-1]
            if not pid.isdigit() or int(pid) == os.getpid() or _pid_alive(int(pid)):
                continue
            try:
                if kind == "old" and not out.exists():
                    os.rename(path, out)
                else:
                    shutil.rmtree(path)
            except OSError:
                pass  # (read-only parent: reported when the staging folder cannot be made)


def _existing_export(out: Path) -> str:
    """A few words on the export in `out`, from its export.json if that is readable."""
    try:
        report = json.loads((out / "export.json").read_bytes())
        return (f" (module {int(report['module'])} of the run in {report['run_dir']})"
                if isinstance(report, dict) else "")
    except Exception:
        return ""


def begin_export(out: Path, run_root: Path, *, force: bool, default_out: bool) -> Path:
    """Check the export folder `out` before any work and make the staging folder beside it.

    `out` may be missing, empty, or (with force) hold an earlier export; never anything else. The
    export is written into the staging folder and renamed into place by publish_export, so a
    killed export leaves no half-written model where evaluate/predict would find it."""
    where = (f"the run directory {run_root} (export writes RUN_DIR/export unless --out is given)"
             if default_out else f"{out.parent}")
    if not out.name:  # the file-system root
        raise UserError(f"--out {out} names no folder; give e.g. --out model.")
    _clean_dead_staging(out)
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise UserError(f"The export folder {out} exists and is not a folder; choose another "
                            f"--out.")
        if (out / MANIFEST).exists() or out.resolve() == run_root.resolve():
            raise UserError(f"The export folder {out} is a run directory; export writes a new "
                            f"folder. Choose another --out (e.g. {out / 'export'}).")
        try:
            names = [p.name for p in out.iterdir()]
        except OSError as exc:
            raise UserError(f"The export folder {out} cannot be read ({exc.strerror or exc}); "
                            f"choose another --out.") from None
        others = sorted(n for n in names if n not in EXPORT_FILES and not _TEMP.match(n))
        if others:
            raise UserError(f"The export folder {out} already holds other files "
                            f"({', '.join(others[:3])}); I will not write into it. Choose another "
                            f"--out.")
        if names and not force:
            raise UserError(f"{out} already holds an export{_existing_export(out)}; I keep it. "
                            f"Add --force to replace it (the new export is written beside it and "
                            f"swapped in only once complete), or choose another --out.")
    try:
        if not out.parent.is_dir():
            out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"Cannot create the folder {out.parent} for the export "
                        f"({exc.strerror or exc}: a part of the path is a file, or is not "
                        f"writable). Choose another --out.") from None
    staging = out.parent / f".{out.name}.export-{os.getpid()}"
    try:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
    except OSError as exc:
        raise UserError(f"Cannot write the export into {where}: {exc.strerror or exc} (a read-only "
                        f"folder or disk?). Give --out DIR on a writable disk; the run itself is "
                        f"only read.") from None
    return staging


def write_file(path: Path, data: bytes) -> None:
    try:
        atomic_write_bytes(path, data)
    except OSError as exc:
        raise UserError(f"Writing the export failed at {path.name} ({exc.strerror or exc}); the "
                        f"export was abandoned and nothing was replaced. Free some space, or "
                        f"choose --out on another disk.") from None
    except UserError:  # atomic.py's disk-full error
        raise UserError(f"The disk filled up while writing the export ({path.name}); the export "
                        f"was abandoned and nothing was replaced. Free some space, or choose "
                        f"--out on another disk.") from None


def publish_export(staging: Path, out: Path) -> None:
    """Move the complete staging folder to `out` (rename); an earlier export there (--force) is
    moved aside first and deleted after, so `out` holds one whole export at every moment but the
    instant between the two renames (a kill there leaves the old one beside it, which the next
    export puts back)."""
    fsync_dir(staging)
    old = None
    try:
        if out.exists() and any(out.iterdir()):
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.rename(out, old)
        try:
            os.rename(staging, out)  # (onto an empty folder too)
        except OSError:
            if old is not None:
                os.rename(old, out)
            raise
        fsync_dir(out.parent)
    except OSError as exc:
        raise UserError(f"Could not move the finished export into {out} ({exc.strerror or exc}); "
                        f"nothing there was replaced. Choose another --out.") from None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
