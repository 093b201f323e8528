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

Opening a run never changes it until the run is validated: the manifest's shape (every key the
code reads, with its type and range), plan.json (checksum, shape, and the manifest's module
indices against its splits), config.json (types, values, the identity hash and checksum the
manifest recorded) and the checksum of every listed weight file. Only then does clean-up remove
what the validated manifest proves torn (clean_torn_files says exactly what); a refused command
leaves the run directory byte-identical.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
from pathlib import Path

from .atomic import append_line, atomic_write_bytes, atomic_write_json, fsync_dir, sha256_file
from .errors import UserError
from .run_verify import RunVerification
from .run_schema import (FORMAT, MANIFEST, RESTORE_MANIFEST, Damage, check_config_types,
                         check_manifest_against_plan, check_plan_shape, kind, read_manifest_bytes)

STORE_FOLDERS = ("blocks", "heads", "optim", "ckpt", "cache")
_TEMP = re.compile(r"\..+\.tmp(-[0-9]+)?\Z", re.DOTALL)


class Run(RunVerification):
    def __init__(self, root: Path, manifest: dict):
        self.root = Path(root)
        self.manifest = manifest
        self.plan: dict | None = None   # plan.json, once read and checked (see open)
        self._verified = False          # verify_files() passed for the current manifest
        self._manifest_bytes: bytes | None = None  # as read by open/reload

    # --- creation and opening -------------------------------------------------------------
    @staticmethod
    def check_new_root(final_root: str | os.PathLike) -> None:
        """Refuse an --out that cannot become a new run directory: one that holds anything but an
        empty directory, an empty path, a path under a file, or one whose nearest existing parent
        is not writable (checked again at staging; train() calls it first so that bad input fails
        before the data is loaded)."""
        text = "" if final_root is None else os.fspath(final_root)
        if not text.strip():
            raise UserError("--out is empty. Give the path of a new directory for the run (it is "
                            "created for you), or leave --out out to use "
                            "runs/<time>-<model>-<scheme>.")
        if "\0" in text:
            raise UserError(f"--out {text!r} contains a NUL character; choose another path.")
        out = Path(text)
        try:
            if out.is_symlink() and not out.exists():
                raise UserError(f"The output path {out} is a symbolic link to something that does "
                                f"not exist; I will not create a run through it. Choose a new "
                                f"--out path (it is created for you).")
            if out.exists():
                if (out / MANIFEST).exists():
                    raise UserError(
                        f"The output directory {out} already holds an edge-trgl run. Continue it "
                        f"with `edge-trgl train --resume {out}`, or choose another --out.")
                if not (out.is_dir() and not any(out.iterdir())):
                    raise UserError(
                        f"The output directory {out} exists and is not an edge-trgl run; I will "
                        f"not write into it. Choose a new --out path (it is created for you).")
            # the run is staged beside its final place: the nearest existing parent must be a
            # directory we can create entries in
            parent = out.absolute().parent
            while not parent.exists():
                if parent.is_symlink():
                    raise UserError(f"The output path {out} goes through {parent}, a symbolic link "
                                    f"to something that does not exist. Choose another --out.")
                if parent == parent.parent:
                    break
                parent = parent.parent
            if not parent.is_dir():
                raise UserError(f"The output path {out} cannot be created: {parent} is a file, "
                                f"not a directory. Choose an --out path in a directory.")
            why = _not_writable(parent)
            if why:
                raise UserError(f"The output path {out} cannot be created: the directory "
                                f"{parent} is {why}. Choose an --out path on a writable disk, or "
                                f"make {parent} writable.")
        except OSError as exc:
            raise UserError(f"The output path {out} cannot be used ({exc.strerror or exc}). "
                            f"Choose another --out path.") from None

    @classmethod
    def staging(cls, final_root: Path) -> "Run":
        final_root = Path(final_root)
        cls.check_new_root(final_root)
        if final_root.exists():
            final_root.rmdir()
        final_root.parent.mkdir(parents=True, exist_ok=True)
        remove_dead_staging(final_root)
        staging = final_root.with_name(f".{final_root.name}.staging-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        run = cls(staging, {"format": FORMAT, "status": "new", "files": {}, "modules": {},
                            "caches": {}, "progress": {}, "metrics_lines": 0})
        run.final_root = final_root
        return run

    @classmethod
    def stage_new(cls, final_root: Path, cfg, plan: dict, data_fingerprint: str) -> "Run":
        """A staged new run holding its config, plan and identity (status "new"): what every
        set-up writes first. The caller adds its files, then publishes it, or discards it if
        anything fails (this discards it itself if writing these fails)."""
        run = cls.staging(final_root)
        try:
            run.write_json("config.json", cfg.to_json())
            run.write_json("plan.json", plan)
            run.manifest.update({"status": "new", "config_hash": cfg.identity_hash(),
                                 "data_fingerprint": data_fingerprint})
        except BaseException:
            run.discard()
            raise
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
        """Open a run: read and check its manifest and (for a started run) its plan; nothing is
        written. `clean` then removes what a crash left (see clean_torn_files, which validates the
        rest of the run first), so pass False while another process may still be writing (lock()
        first, then clean)."""
        manifest, raw = read_manifest_bytes(Path(root))
        run = cls(Path(root), manifest)
        run._manifest_bytes = raw
        run.check_plan()
        if clean:
            run.clean_torn_files()
        return run

    def reload(self) -> bool:
        """Read the manifest (and plan) again, as another process may have left them; return
        whether the manifest changed since it was read (then earlier checks must be redone)."""
        manifest, raw = read_manifest_bytes(self.root)
        if raw == getattr(self, "_manifest_bytes", None):
            return False
        self.manifest, self._manifest_bytes = manifest, raw
        self.plan = None
        self._verified = False
        self.check_plan()
        return True

    # --- validation (read-only) ----------------------------------------------------------------
    @property
    def started(self) -> bool:
        """Published with its config, plan and initial weights (status running or complete)."""
        return self.manifest.get("status") in ("running", "complete")

    def _damaged(self, detail: str, fix: str | None = None) -> UserError:
        return UserError(f"The run in {self.root} is damaged: {detail}. Nothing in the run "
                         f"directory was changed or removed. "
                         + (fix or "Restore the file from a backup, or start a new run."))

    def check_plan(self) -> dict | None:
        """Read plan.json (verified against the manifest's checksum), check its shape, and check
        the manifest against it: module indices in range, module block ranges equal to the plan's.
        A run that has not started (status "new", a library caller's staging) may have none."""
        if self.plan is not None:
            return self.plan
        if not self.started and "plan.json" not in self.manifest["files"]:
            return None
        if not self.manifest["files"]:
            raise self._damaged(
                f"its manifest (status {self.manifest['status']!r}) lists no files at all, though "
                f"a started run lists its config, plan and every weight file with their "
                f"checksums, so the files in the directory cannot be trusted", RESTORE_MANIFEST)
        if "plan.json" not in self.manifest["files"]:
            raise self._damaged("its manifest does not list plan.json, which every started run has",
                                RESTORE_MANIFEST)
        plan = self.read_json("plan.json")
        try:
            check_plan_shape(plan)
            check_manifest_against_plan(self.manifest, plan)
        except Damage as exc:
            raise self._damaged(str(exc), "Restore manifest.json (or plan.json) from a backup, or "
                                "start a new run.") from None
        self.plan = plan
        return plan

    def read_config(self, check_hash: bool = True):
        """config.json as a checked TrainConfig: every field of the right type, valid values, the
        identity hash the manifest recorded at the start, and (when check_hash) the file's own
        checksum. Read-only."""
        from .config import TrainConfig
        if self.started and "config.json" not in self.manifest["files"]:
            raise self._damaged("its manifest does not list config.json, which every started run "
                                "has", RESTORE_MANIFEST)
        data = self.read_json("config.json", verify=False)
        try:
            if not isinstance(data, dict):
                raise Damage(f"config.json holds a JSON {kind(data)}, not an object of settings")
            check_config_types(data)
            stored = TrainConfig.from_json(data).validate()
        except (Damage, UserError, TypeError, ValueError, AttributeError) as exc:
            detail = " ".join(str(exc).split())
            raise UserError(f"The config.json of the run in {self.root} is not a valid run config "
                            f"any more ({detail}); nothing in the run directory was changed. "
                            f"Restore config.json, or start a new run.") from None
        if not check_hash:
            return stored
        if stored.identity_hash() != self.manifest.get("config_hash"):
            raise UserError(f"The config of the run in {self.root} (config.json) was changed after "
                            f"the run started; resuming would mix two different trainings. Restore "
                            f"config.json or start a new run.")
        expected = self.checksum("config.json")
        if expected is not None and sha256_file(self.root / "config.json") != expected:
            raise UserError(f"The config.json of the run in {self.root} was edited after the run "
                            f"started: the settings that decide the result are unchanged, but the "
                            f"file does not match the checksum in the run manifest. Undo the edit "
                            f"(options such as --threads or --keep-cache are given on the command "
                            f"line with --resume instead), or start a new run.")
        return stored

    def check_writable(self) -> None:
        """Resume writes into every folder of the run and appends to metrics.jsonl: refuse a
        read-only run directory with a clear message before anything is attempted."""
        places = [self.root]
        for path in sorted(self.root.rglob("*")):
            if path.is_dir() and not path.is_symlink():
                places.append(path)
        metrics = self.root / "metrics.jsonl"
        if metrics.is_file():
            places.append(metrics)
        for place in places:
            why = _not_writable(place)
            if why:
                raise UserError(f"The run directory {self.root} cannot be written to ({place} is "
                                f"{why}); resuming writes checkpoints, weights and the manifest "
                                f"there. Make it writable, or copy the run to a writable disk "
                                f"(`cp -a {self.root} NEW_DIR`) and resume the copy.")

    # --- clean-up ------------------------------------------------------------------------------
    def clean_torn_files(self, cfg=None) -> None:
        """Remove what a crash left behind, and only that, once the run is validated:

        - temp files of interrupted atomic writes (`.NAME.tmp-PID`, cache shards' `.NAME.tmp`):
          never counted, whatever they hold;
        - unlisted checkpoints and feature-cache shards: a checkpoint the manifest forgot is
          superseded (by a newer listed one, or by the store files recorded after it) or was not
          yet recorded (its epoch is redone); shards are rebuilt from the saved weights;
        - unlisted blocks, heads and optimizer state of the module whose listed checkpoint is the
          resume point: the checkpoint holds that module's state, and these are copies a crash
          left while writing the module back;
        - lines of metrics.jsonl after the last committed one (their epoch is redone).

        Any other unlisted file is left where it is: the manifest cannot prove it torn, so it may
        be someone's last good copy, and nothing the run reads depends on it (a file the run
        needs is required to be listed, and a later write replaces it atomically). It is not moved
        aside either: a quarantine folder would keep the same bytes on a device that is short of
        disk, and the proven-redundant files above are the ones worth the space. Deleting
        anything requires verify_files() to have passed
        (it is run here if it has not been): in particular the checkpoint that makes the store
        files redundant must match its checksum, and a damaged run is refused with nothing
        removed. A run that has not started ("new") has only its temp files and log trimmed."""
        temps = [p for p in _regular_files(self.root) if _TEMP.match(p.name)]
        listed = set(self.manifest["files"])
        unlisted = [p for folder in STORE_FOLDERS for p in _regular_files(self.root / folder)
                    if p.relative_to(self.root).as_posix() not in listed
                    and not _TEMP.match(p.name)]
        metrics = self._metrics_plan()
        doomed = []
        if unlisted and self.started:
            if cfg is None:
                cfg = self.read_config()
            if not self._verified:
                self.verify_files(cfg)
            skip = self.replaced_by_checkpoint(cfg)
            for path in unlisted:
                rel = path.relative_to(self.root).as_posix()
                if rel.startswith(("ckpt/", "cache/")) or rel in skip:
                    doomed.append(path)
        for path in temps + doomed:
            path.unlink(missing_ok=True)
        if metrics is not None:
            atomic_write_bytes(self.root / "metrics.jsonl", metrics)
        elif (self.manifest.get("metrics_lines") and self.manifest["status"] == "running"
              and not (self.root / "metrics.jsonl").exists()):
            # the log was moved away (as the refusal for a damaged log suggests): it starts again
            self.manifest["metrics_lines"] = 0
            self.save()

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
            raise UserError(f"The run directory {self.root} lacks a readable {rel} "
                            f"({exc.strerror}). "
                            f"The run is damaged; restore the file or start a new run.") from None
        expected = self.checksum(rel) if verify else None
        if expected is not None and hashlib.sha256(data).hexdigest() != expected:
            raise UserError(f"The file {path} does not match the checksum recorded in the run "
                            f"manifest: it was changed or damaged after it was written. Restore "
                            f"it, or start a new run.")
        try:
            return json.loads(data.decode("utf-8"))
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            raise UserError(f"The file {path} is not valid JSON ({exc}). The run is damaged; "
                            f"restore the file or start a new run.") from None

    def lock(self) -> None:
        """Hold an exclusive lock on the run for the life of this process (released by the kernel
        even on SIGKILL), so two processes never train the same run at once."""
        import fcntl
        try:
            self._lock_fh = open(self.root / ".lock", "a")
        except OSError:
            try:  # an existing lock file can be locked through a read-only descriptor too
                self._lock_fh = open(self.root / ".lock", "r")
            except OSError as exc:
                raise UserError(f"The run directory {self.root} cannot be locked "
                                f"({exc.strerror}: {self.root / '.lock'}); make the run directory "
                                f"writable, or copy it to a writable disk and resume the "
                                f"copy.") from None
        try:
            fcntl.flock(self._lock_fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_fh.close()
            raise UserError(f"Another edge-trgl process is training the run in {self.root} right "
                            f"now. Wait for it to finish (or stop it), then resume.") from None

    def locked_elsewhere(self) -> bool:
        """Does another process hold the run's lock now? (Creates nothing: a run without a lock
        file is not locked.)"""
        import fcntl
        try:
            fh = open(self.root / ".lock", "r")
        except OSError:
            return False
        with fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return True
            fcntl.flock(fh, fcntl.LOCK_UN)
        return False

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

    def drop_cache(self, k: int, keep: dict | None = None) -> None:
        """Forget module k's feature cache in the manifest and save it first, then delete the
        files: a crash in between leaves unlisted files, never a listed file that is gone.
        `keep`: splits ({name: shard records}) that stay, listed in an unfinished entry."""
        from .cache import cache_dir
        rel = cache_dir(k)
        kept = {s["file"] for shards in (keep or {}).values() for s in shards}
        for f in [f for f in self.manifest["files"] if f.startswith(rel + "/") and f not in kept]:
            del self.manifest["files"][f]
        if keep:
            self.manifest["caches"][str(k)] = {**self.manifest["caches"][str(k)],
                                               "splits": dict(keep)}
        else:
            self.manifest["caches"].pop(str(k), None)
        self.save()
        if not kept:
            self.remove_tree(rel)
            return
        for path in _regular_files(self.root / rel):
            if path.relative_to(self.root).as_posix() not in kept:
                path.unlink(missing_ok=True)


def _regular_files(folder: Path) -> list[Path]:
    """Regular files under `folder` (symbolic links neither followed nor listed)."""
    out = []
    if not folder.is_dir() or folder.is_symlink():
        return out
    for dirpath, _dirs, names in os.walk(folder):
        for name in names:
            path = Path(dirpath) / name
            try:
                if stat.S_ISREG(path.lstat().st_mode):
                    out.append(path)
            except OSError:
                pass
    return sorted(out)


def _not_writable(path: Path) -> str | None:
    """Why the current user cannot create or replace entries in `path` (None if they can)."""
    mode = os.W_OK | (os.X_OK if path.is_dir() else 0)
    if os.access(path, mode):
        return None
    try:
        if os.statvfs(path).f_flag & os.ST_RDONLY:
            return "on a read-only file system"
    except OSError:
        pass
    return "not writable by this user (permission denied)"


def remove_dead_staging(final_root: Path) -> None:
    """Delete staging folders of earlier set-ups of the same --out whose process is gone (killed
    during set-up); a live one (another process setting up now) is left alone."""
    from .jobdirs import remove_dead_folders
    remove_dead_folders(final_root.parent, f".{final_root.name}.staging-")


def default_out(cfg) -> Path:
    """Where a run goes without --out: runs/<time>-<model>-<scheme>."""
    import time
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{stamp}-{cfg.model}-{cfg.scheme}"
