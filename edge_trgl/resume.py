"""Opening an existing run for `edge-trgl train --resume`: every check that must pass before a
single step is trained again, so that a resumed run either continues exactly where the crashed
one stopped or refuses with a clear message. numpy-only (the torch-free trainer resumes too).

What resume trusts, and why:
- the manifest (written atomically) is the whole truth: a file counts only if the manifest lists
  its sha256. The manifest is checked for shape (run_schema.read_manifest) before anything else;
- config.json must still hash to the manifest's config_hash (a changed config would mix two
  trainings in one run) and match its checksum; options given on the command line must not
  contradict it;
- plan.json must match its checksum, and its splits the manifest's modules and files;
- the dataset must still have the fingerprint it had at the start (checked after loading it);
- every listed weight file must match its checksum, except those of the module being resumed
  from a mid-module checkpoint, which the checkpoint replaces (a crash while that module was being
  written back may leave them newer than the manifest);
- feature caches are checked when read, and rebuilt from the saved weights when damaged
  (schemes.restore_input_cache).

Order: all of the above is read-only. Only once it has passed does Run.clean_torn_files remove
what the validated manifest proves torn, so a refused resume leaves the run byte-identical.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from .config import TrainConfig
from .errors import UserError
from .run import Run

# Options that may differ on resume: they change neither the result nor the files' meaning.
# data_dir may point at the same data in a new place; the data fingerprint guards the content.
OVERRIDABLE = ("progress", "threads", "keep_cache", "data_dir", "dist_timeout_s")


def open_for_resume(path: str | Path, requested: TrainConfig,
                    clean: bool = True) -> tuple[Run, TrainConfig, dict]:
    """Open, lock and check the run in `path`; return (run, its config, its plan). With
    clean=False the caller runs `run.clean_torn_files(cfg)` itself once its own checks (the
    dataset's fingerprint, the device) have passed, so that a resume they refuse changes
    nothing either."""
    if path is None or not str(path).strip():
        raise UserError("--resume needs the run directory to continue (the --out of an earlier "
                        "`edge-trgl train`), not an empty path.")
    run = Run.open(Path(path), clean=False)   # manifest and plan checked; nothing written
    if not run.started:
        raise UserError(f"The run in {run.root} was never started (its manifest has status "
                        f"{run.manifest['status']!r}): there is nothing to resume. Start a new "
                        f"run.")
    try:
        stored = _validate(run, requested)
    except UserError:
        if run.locked_elsewhere():  # what looked damaged may be a training process's work
            run.lock()              # raises the "another process is training" message
        raise
    run.check_writable()
    run.lock()  # before removing anything: another process may be training this run right now
    if run.reload():  # that process changed it meanwhile: check it as it is now
        stored = _validate(run, requested)
    if clean:
        run.clean_torn_files(stored)
    stored.progress = requested.progress
    stored.threads = requested.threads or stored.threads
    stored.keep_cache = requested.keep_cache or stored.keep_cache
    if requested.data_dir is not None:
        stored.data_dir = requested.data_dir
    return run, stored, run.plan


def _validate(run: Run, requested: TrainConfig) -> TrainConfig:
    """Every read-only check of a run to resume; returns its stored config."""
    stored = run.read_config(check_hash=False)
    check_requested(requested, stored, run.root)
    stored = run.read_config()  # the identity hash and checksum the manifest recorded
    run.verify_files(stored)
    if run.manifest["status"] == "complete":
        check_summary(run)
    return stored


def check_summary(run: Run) -> dict:
    """summary.json of a finished run (resume prints it again): its checksum, and every field the
    summary table reads, of the right type."""
    from .run_schema import Damage, as_dict, as_int, as_list, as_num
    summary = run.read_json("summary.json")
    try:
        as_dict(summary, "summary.json")
        rows = as_list(summary.get("modules"), "summary.json modules")
        for i, row in enumerate(rows):
            where = f"summary.json modules[{i}]"
            as_dict(row, where)
            as_int(row.get("module"), f"{where}.module")
            blocks = as_list(row.get("blocks"), f"{where}.blocks")
            if len(blocks) != 2:
                raise Damage(f"{where}.blocks has {len(blocks)} entries, not 2")
            for b in blocks:
                as_int(b, f"{where}.blocks")
            for name in ("val_acc", "test_acc"):
                as_num(row.get(name), f"{where}.{name}", 0, 1)
            for name in ("measured_peak_bytes", "estimated_peak_bytes"):
                as_num(row.get(name), f"{where}.{name}")
        if summary.get("best_module") is not None:
            as_int(summary["best_module"], "summary.json best_module")
        for name in ("seconds", "peak_rss_bytes"):
            as_num(summary.get(name), f"summary.json {name}", none=False)
        for name in ("budget_bytes", "estimated_peak_bytes"):
            as_num(summary.get(name), f"summary.json {name}")
        if not isinstance(summary.get("run_dir"), str):
            raise Damage("summary.json run_dir is not a path")
        from .summary import format_summary
        try:  # whatever else the table reads (an ORT or CUDA run's extra lines)
            format_summary(summary)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            raise Damage(f"summary.json cannot be shown ({type(exc).__name__}: {exc})") from None
    except Damage as exc:
        raise UserError(f"The run in {run.root} is damaged: {exc}. Nothing in the run directory "
                        f"was changed. Restore summary.json from a backup, or start a new run "
                        f"(the trained weights themselves are intact).") from None
    return summary


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


def verify_weights(run: Run, cfg: TrainConfig, plan: dict | None = None) -> None:
    """Check the sha256 of every weight and JSON file the manifest lists (caches excepted), and
    that the manifest lists every file the run needs (Run.verify_files)."""
    run.verify_files(cfg)
