"""The run directory and its manifest.

    runs/<name>/
      config.json      the TrainConfig, enough to reproduce the run
      plan.json        module splits, batch size, estimates (written by the planner)
      manifest.json    progress state + sha256 of every complete file; resume reads only this
      blocks/ heads/ optim/ ckpt/ cache/   weights, optimizer state, checkpoints, feature cache
      metrics.jsonl    one line per epoch per module
      summary.json     per-module accuracy, best module, measured peak vs estimate, times

A new run is assembled in a hidden sibling directory and renamed into place once its config,
plan, manifest and initial weights are all written, so bad input or a crash during set-up never
leaves a half-written run behind. After that, every file is written atomically and only counts
once the manifest (itself written atomically) records its checksum.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from .atomic import append_line, atomic_write_json, fsync_dir, sha256_file
from .errors import UserError

MANIFEST = "manifest.json"
FORMAT = 1


class Run:
    def __init__(self, root: Path, manifest: dict):
        self.root = Path(root)
        self.manifest = manifest

    # --- creation and opening -------------------------------------------------------------
    @staticmethod
    def check_new_root(final_root: Path) -> None:
        """Refuse an --out that holds anything but an empty directory (checked again at staging;
        train() calls it first so that bad input fails before the data is loaded)."""
        final_root = Path(final_root)
        if final_root.exists():
            if (final_root / MANIFEST).exists():
                raise UserError(
                    f"The output directory {final_root} already holds an edge-trgl run. Continue it "
                    f"with `edge-trgl train --resume {final_root}`, or choose another --out.")
            if not (final_root.is_dir() and not any(final_root.iterdir())):
                raise UserError(
                    f"The output directory {final_root} exists and is not an edge-trgl run; I will "
                    f"not write into it. Choose a new --out path (it is created for you).")

    @classmethod
    def staging(cls, final_root: Path) -> "Run":
        final_root = Path(final_root)
        cls.check_new_root(final_root)
        if final_root.exists():
            final_root.rmdir()
        final_root.parent.mkdir(parents=True, exist_ok=True)
        _remove_dead_staging(final_root)
        staging = final_root.with_name(f".{final_root.name}.staging-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        run = cls(staging, {"format": FORMAT, "status": "new", "files": {}, "modules": {},
                            "caches": {}, "progress": {}, "metrics_lines": 0})
        run.final_root = final_root
        return run

    def publish(self) -> None:
        """Move a staged run into its final place (atomic rename)."""
        self.save()
        os.replace(self.root, self.final_root)
        fsync_dir(self.final_root.parent)
        self.root = self.final_root

    def discard(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    @classmethod
    def open(cls, root: Path, clean: bool = True) -> "Run":
        """Open a run; `clean` removes what a crash left (see clean_torn_files), so pass False
        while another process may still be writing (lock() first, then clean)."""
        root = Path(root)
        path = root / MANIFEST
        if not path.exists():
            raise UserError(f"{root} is not an edge-trgl run directory (it has no {MANIFEST}). "
                            f"Give --resume the --out directory of an earlier `edge-trgl train`.")
        try:
            manifest = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"The run manifest {path} cannot be read ({exc}). The run directory "
                            f"is damaged; start a new run.") from None
        if manifest.get("format") != FORMAT:
            raise UserError(f"The run in {root} was written by an incompatible edge-trgl version "
                            f"(manifest format {manifest.get('format')}, expected {FORMAT}).")
        run = cls(root, manifest)
        if clean:
            run.clean_torn_files()
        return run

    def clean_torn_files(self) -> None:
        """Remove what a crash left behind: temp files of interrupted writes, weight files and
        cache shards the manifest does not list (written, but the crash came before the manifest
        recorded them, or after it forgot them), and metrics lines beyond the last manifest save
        (their epoch is redone on resume, and would otherwise be logged twice)."""
        for tmp in self.root.rglob(".*.tmp*"):
            tmp.unlink(missing_ok=True)
        listed = set(self.manifest.get("files", {}))
        for folder in ("blocks", "heads", "optim", "ckpt", "cache"):
            for path in sorted((self.root / folder).rglob("*")):
                if path.is_file() and path.relative_to(self.root).as_posix() not in listed:
                    path.unlink()
        committed = self.manifest.get("metrics_lines")
        metrics = self.root / "metrics.jsonl"
        if metrics.exists():
            lines = metrics.read_text().splitlines(keepends=True)
            good = []
            for line in lines:
                try:
                    json.loads(line)
                except json.JSONDecodeError:
                    break
                if not line.endswith("\n") or (committed is not None and len(good) >= committed):
                    break
                good.append(line)
            if len(good) != len(lines):
                from .atomic import atomic_write_bytes
                atomic_write_bytes(metrics, "".join(good).encode())

    # --- state ------------------------------------------------------------------------------
    def save(self) -> None:
        atomic_write_json(self.root / MANIFEST, self.manifest, event="manifest")

    def record_file(self, rel: str, sha256: str) -> None:
        self.manifest["files"][rel] = sha256

    def checksum(self, rel: str) -> str | None:
        return self.manifest["files"].get(rel)

    def unlist(self, rels) -> None:
        """Forget these files and save the manifest, before they are overwritten in place: the
        manifest must never list a file whose bytes its checksum does not vouch for. The caller
        keeps another copy (a checkpoint) until it records the new checksums."""
        for rel in rels:
            self.manifest["files"].pop(rel, None)
        self.save()

    def forget_files(self, prefix: str) -> None:
        for rel in [r for r in self.manifest["files"] if r.startswith(prefix)]:
            del self.manifest["files"][rel]

    def commit_checkpoint(self, rel: str, sha256: str, progress: dict) -> None:
        """Make the just-written checkpoint `rel` the resume point: record it and the progress in
        the manifest (atomically), then forget and delete the previous checkpoint. A crash at any
        moment leaves the manifest pointing at a complete checkpoint."""
        self.record_file(rel, sha256)
        old = self.manifest["progress"].get("ckpt")
        self.manifest["progress"] = {**progress, "phase": "train", "ckpt": rel}
        if old and old != rel:
            self.forget_files(old)
        self.save()
        if old and old != rel:
            (self.root / old).unlink(missing_ok=True)

    def commit_module(self, files: list[str], write_files, progress: dict) -> None:
        """Replace a trained module's store `files` (its blocks, head and optimizer state) by
        what `write_files()` writes and records, then move the resume point to `progress` with
        phase "cache" and drop the epoch checkpoint. Until the new checksums are recorded, the
        checkpoint in progress["ckpt"] is the module's state; a crash in between resumes from it
        (the store files may be torn, so they are unlisted first)."""
        self.unlist(files)
        write_files()
        old = self.manifest["progress"].get("ckpt")
        self.manifest["progress"] = {**progress, "phase": "cache"}
        if old:
            self.forget_files(old)
        self.save()
        if old:
            (self.root / old).unlink(missing_ok=True)

    def write_json(self, rel: str, obj) -> None:
        atomic_write_json(self.root / rel, obj)
        self.record_file(rel, sha256_file(self.root / rel))

    def read_json(self, rel: str, verify: bool = True):
        """Read a JSON file of the run; a missing, unreadable or (where the manifest lists it and
        `verify`) changed file is a UserError, not a traceback."""
        path = self.root / rel
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise UserError(f"The run directory {self.root} lacks a readable {rel} ({exc.strerror}). "
                            f"The run is damaged; restore the file or start a new run.") from None
        expected = self.checksum(rel) if verify else None
        if expected is not None and hashlib.sha256(data).hexdigest() != expected:
            raise UserError(f"The file {path} does not match the checksum recorded in the run "
                            f"manifest: it was changed or damaged after it was written. Restore "
                            f"it, or start a new run.")
        try:
            return json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"The file {path} is not valid JSON ({exc}). The run is damaged; "
                            f"restore the file or start a new run.") from None

    def lock(self) -> None:
        """Hold an exclusive lock on the run for the life of this process (released by the kernel
        even on SIGKILL), so two processes never train the same run at once."""
        import fcntl
        self._lock_fh = open(self.root / ".lock", "a")
        try:
            fcntl.flock(self._lock_fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_fh.close()
            raise UserError(f"Another edge-trgl process is training the run in {self.root} right "
                            f"now. Wait for it to finish (or stop it), then resume.") from None

    def log_metrics(self, record: dict) -> None:
        append_line(self.root / "metrics.jsonl", json.dumps(record, sort_keys=True))
        # counted in the manifest, so lines of an epoch that a crash makes us redo can be dropped
        if "metrics_lines" in self.manifest:
            self.manifest["metrics_lines"] += 1

    def read_metrics(self) -> list[dict]:
        path = self.root / "metrics.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def remove_tree(self, rel: str) -> None:
        shutil.rmtree(self.root / rel, ignore_errors=True)

    def drop_cache(self, k: int) -> None:
        """Forget module k's feature cache in the manifest and save it first, then delete the
        files: a crash in between leaves unlisted files, never a listed file that is gone."""
        from .cache import cache_dir
        rel = cache_dir(k)
        self.forget_files(rel + "/")
        self.manifest["caches"].pop(str(k), None)
        self.save()
        self.remove_tree(rel)


def _remove_dead_staging(final_root: Path) -> None:
    """Delete staging folders of earlier set-ups of the same --out whose process is gone (killed
    during set-up); a live one (another process setting up now) is left alone."""
    for path in final_root.parent.glob(f".{final_root.name}.staging-*"):
        pid = path.name.rsplit("-", 1)[-1]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:
            pass
