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

import json
import os
import shutil
from pathlib import Path

from .atomic import append_line, atomic_write_json, fsync_dir
from .errors import UserError

MANIFEST = "manifest.json"
FORMAT = 1


class Run:
    def __init__(self, root: Path, manifest: dict):
        self.root = Path(root)
        self.manifest = manifest

    # --- creation and opening -------------------------------------------------------------
    @classmethod
    def staging(cls, final_root: Path) -> "Run":
        final_root = Path(final_root)
        if final_root.exists():
            if (final_root / MANIFEST).exists():
                raise UserError(
                    f"The output directory {final_root} already holds an edge-trgl run. Continue it "
                    f"with `edge-trgl train --resume {final_root}`, or choose another --out.")
            if final_root.is_dir() and not any(final_root.iterdir()):
                final_root.rmdir()
            else:
                raise UserError(
                    f"The output directory {final_root} exists and is not an edge-trgl run; I will "
                    f"not write into it. Choose a new --out path (it is created for you).")
        final_root.parent.mkdir(parents=True, exist_ok=True)
        staging = final_root.with_name(f".{final_root.name}.staging-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        run = cls(staging, {"format": FORMAT, "status": "new", "files": {}, "modules": {},
                            "caches": {}, "progress": {}})
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
    def open(cls, root: Path) -> "Run":
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
        run.clean_torn_files()
        return run

    def clean_torn_files(self) -> None:
        """Remove temp files of writes that a crash interrupted, and a torn last metrics line."""
        for tmp in self.root.rglob(".*.tmp*"):
            tmp.unlink(missing_ok=True)
        metrics = self.root / "metrics.jsonl"
        if metrics.exists():
            lines = metrics.read_text().splitlines(keepends=True)
            good = []
            for line in lines:
                try:
                    json.loads(line)
                except json.JSONDecodeError:
                    break
                if not line.endswith("\n"):
                    break
                good.append(line)
            if len(good) != len(lines):
                from .atomic import atomic_write_bytes
                atomic_write_bytes(metrics, "".join(good).encode())

    # --- state ------------------------------------------------------------------------------
    def save(self) -> None:
        atomic_write_json(self.root / MANIFEST, self.manifest)

    def record_file(self, rel: str, sha256: str) -> None:
        self.manifest["files"][rel] = sha256

    def checksum(self, rel: str) -> str | None:
        return self.manifest["files"].get(rel)

    def forget_files(self, prefix: str) -> None:
        for rel in [r for r in self.manifest["files"] if r.startswith(prefix)]:
            del self.manifest["files"][rel]

    def write_json(self, rel: str, obj) -> None:
        atomic_write_json(self.root / rel, obj)

    def read_json(self, rel: str):
        return json.loads((self.root / rel).read_text())

    def log_metrics(self, record: dict) -> None:
        append_line(self.root / "metrics.jsonl", json.dumps(record, sort_keys=True))

    def read_metrics(self) -> list[dict]:
        path = self.root / "metrics.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def remove_tree(self, rel: str) -> None:
        shutil.rmtree(self.root / rel, ignore_errors=True)
