"""Opening an existing run for `edge-trgl train --resume`: every check that must pass before a
single step is trained again, so that a resumed run either continues exactly where the crashed
one stopped or refuses with a clear message. numpy-only (the torch-free trainer resumes too).

What resume trusts, and why:
- the manifest (written atomically) is the whole truth: a file counts only if the manifest lists
  its sha256; what a crash left unlisted is removed by Run.open;
- config.json must still hash to the manifest's config_hash (a changed config would mix two
  trainings in one run); options given on the command line must not contradict it;
- the dataset must still have the fingerprint it had at the start (checked after loading it);
- every listed weight file must match its checksum, except those of the module being resumed
  from a mid-module checkpoint, which the checkpoint replaces (a crash while that module was being
  written back may leave them newer than the manifest);
- feature caches are checked when read, and rebuilt from the saved weights when damaged
  (schemes.restore_input_cache).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from .atomic import sha256_file
from .config import TrainConfig
from .errors import UserError
from .run import Run
from .store import block_path, head_path, optim_path

# Options that may differ on resume: they change neither the result nor the files' meaning.
# data_dir may point at the same data in a new place; the data fingerprint guards the content.
OVERRIDABLE = ("progress", "threads", "keep_cache", "data_dir")


def open_for_resume(path: str | Path, requested: TrainConfig) -> tuple[Run, TrainConfig, dict]:
    """Open, lock and check the run in `path`; return (run, its config, its plan)."""
    run = Run.open(Path(path), clean=False)
    run.lock()  # before removing anything: another process may be training this run right now
    run.manifest = Run.open(run.root, clean=False).manifest  # as that process may have left it
    run.clean_torn_files()
    # Not checked against its sha256: the identity hash below says more precisely what changed.
    data = run.read_json("config.json", verify=False)
    try:
        stored = TrainConfig.from_json(data).validate()
    except (UserError, TypeError, ValueError, AttributeError) as exc:
        raise UserError(f"The config.json of the run in {run.root} is not a valid run config any "
                        f"more ({exc}); restore it or start a new run.") from None
    check_requested(requested, stored, run.root)
    if stored.identity_hash() != run.manifest.get("config_hash"):
        raise UserError(f"The config of the run in {run.root} (config.json) was changed after the "
                        f"run started; resuming would mix two different trainings. Restore "
                        f"config.json or start a new run.")
    stored.progress = requested.progress
    stored.threads = requested.threads or stored.threads
    stored.keep_cache = requested.keep_cache or stored.keep_cache
    if requested.data_dir is not None:
        stored.data_dir = requested.data_dir
    plan = run.read_json("plan.json")
    verify_weights(run, stored, plan)
    return run, stored, plan


def check_requested(requested: TrainConfig, stored: TrainConfig, root: Path) -> None:
    """Options given with --resume (those not at their default) must agree with the run's."""
    default = TrainConfig()
    clashes = []
    for f in dataclasses.fields(TrainConfig):
        if f.name in OVERRIDABLE or f.name in ("out", "extra"):
            continue
        wanted, have = getattr(requested, f.name), getattr(stored, f.name)
        if wanted != getattr(default, f.name) and wanted != have:
            clashes.append(f"--{f.name.replace('_', '-')} {wanted} (the run has {have})")
    if requested.out is not None and Path(requested.out).resolve() != Path(root).resolve():
        clashes.append(f"--out {requested.out} (the run is in {root})")
    if clashes:
        raise UserError(f"A resumed run keeps the settings it started with, but you asked for "
                        f"{'; '.join(clashes)}. Drop those options to continue the run in {root}, "
                        f"or start a new run with --out to train with them.")


def check_data(run: Run, dataset) -> None:
    if dataset.fingerprint() != run.manifest.get("data_fingerprint"):
        raise UserError(
            f"The dataset differs from the one the run in {run.root} started with (its "
            f"fingerprint changed: other files, or changed contents). Resuming would mix two "
            f"datasets; point --data-dir at the original data, or start a new run.")


def verify_weights(run: Run, cfg: TrainConfig, plan: dict) -> None:
    """Check the sha256 of every weight and JSON file the manifest lists (caches excepted)."""
    skip = _replaced_by_checkpoint(run, cfg, plan)
    bad = []
    for rel, expected in sorted(run.manifest["files"].items()):
        if rel.startswith("cache/") or rel in skip or rel == "config.json":
            continue
        path = run.root / rel
        if not path.is_file():
            bad.append(f"{rel} (missing)")
        elif sha256_file(path) != expected:
            bad.append(f"{rel} (checksum mismatch)")
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise UserError(f"The run in {run.root} has damaged files: {shown}. They hold trained "
                        f"weights that cannot be rebuilt from the rest of the run; restore them "
                        f"from a backup, or start a new run.")


def _replaced_by_checkpoint(run: Run, cfg: TrainConfig, plan: dict) -> set[str]:
    progress = run.manifest.get("progress", {})
    if progress.get("phase") != "train" or not progress.get("ckpt"):
        return set()
    splits = [tuple(s) for s in plan["splits"]]
    if cfg.scheme in ("parallel", "e2e"):
        modules = range(len(splits))
    else:
        modules = [progress["module"]]
    skip = set()
    for k in modules:
        lo, hi = splits[k]
        skip.update(block_path(i) for i in range(lo, hi))
        skip.update((head_path(k), optim_path(k)))
    return skip
