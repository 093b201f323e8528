"""A run's own copy of its dataset: RUN/data, a data store (data/ondisk.py).

Why in the run directory: it travels with the run (the ONNX Runtime split workflow prepares a
run on one machine and trains it on another, which may not have the source data), it is deleted
with the run, resume finds it where the run is, and the run's lock covers it. Its disk cost is
counted by the planner's disk check (memory/plan.py).

When it is made: by the process that sets a new run up, from the source, before that process
imports torch (the trainer child of a budgeted torch run, the ONNX Runtime preparation child, or
the one process of an unbudgeted run). The planning process before it never decodes an image: it
plans from the labels and shapes (data/stream.py: scan_for) and stages the run with a digest of
what it planned; the conversion checks that digest and replaces it with the data's fingerprint.

What is trusted: the manifest's data_fingerprint (written with the run, atomically) vouches for
the store's index.json (which states the same fingerprint), and index.json for every shard's
sha256, checked whenever the store is opened. A store that is missing or damaged is rebuilt on
resume from the source (the rebuilt data must have the run's fingerprint), or, where the source
is not available, refused with a message saying so. Runs made before the store existed are
rebuilt the same way on resume; an ONNX Runtime run of that time keeps reading its in-memory
snapshot (data/snapshot.py).

numpy only (the torch-free ONNX Runtime worker and orchestrator use it).
"""

from __future__ import annotations

from pathlib import Path

from .errors import UserError

__all__ = ["DATA_DIR", "materialize_run_data", "open_run_data", "run_data_info"]

DATA_DIR = "data"


def materialize_run_data(run, cfg):
    """Convert the data a new (staged) run names into RUN/data and return it opened. A staged
    fingerprint that is the planner's digest (data.stream.PLANNED_PREFIX) must still describe
    the data; the manifest then gets the data's fingerprint."""
    from .data.ondisk import build_store
    from .data.stream import PLANNED_PREFIX, stream_for
    planned = run.manifest.get("data_fingerprint")
    sel = stream_for(cfg)
    if isinstance(planned, str) and planned.startswith(PLANNED_PREFIX) and sel.digest() != planned:
        raise UserError("The dataset changed while the run was being planned (other files or "
                        "other labels than the plan was made for); start again.")
    store = build_store(sel, Path(run.root) / DATA_DIR)
    run.manifest["data_fingerprint"] = store.fingerprint()
    return store


def open_run_data(run, cfg=None, *, images: bool = True, rebuild: bool = True,
                  verify_images: bool = False):
    """The run's data (images streamed from RUN/data; images=False: labels and shapes only),
    verified (`verify_images`: the image shards too, though only the labels are kept: what a
    resuming orchestrator does before its workers read them); a missing or damaged store is
    rebuilt from cfg's source when `rebuild` (refused if the source no longer holds the run's
    data), else refused."""
    from .data.ondisk import StoreDamaged, StoreMissing, build_store, open_store
    root = Path(run.root)
    expected = run.manifest.get("data_fingerprint")
    try:
        store = open_store(root / DATA_DIR, images=images or verify_images)
        if store.fingerprint() == expected:
            if images or not verify_images:
                return store
            store.close()
            return open_store(root / DATA_DIR, verify=False, images=False)
        store.close()
        why = "is damaged (it holds other data than the run's fingerprint names)"
    except StoreMissing:
        if _legacy_snapshot(run):
            from .data.snapshot import load_snapshot
            return load_snapshot(run, images=images)
        why = "is missing"
    except StoreDamaged as exc:
        why = f"is damaged ({exc})"
    where = f"The run's copy of its dataset ({root / DATA_DIR}) {why}"
    if not rebuild or cfg is None:
        raise UserError(f"{where}. Continue with `edge-trgl train --resume {root}` where the "
                        f"run's data source is available (its --data-dir), which rebuilds the "
                        f"copy, or start a new run.")
    from .data.stream import stream_for
    try:
        sel = stream_for(cfg)
    except UserError as exc:
        raise UserError(f"{where}, and it cannot be rebuilt from the source: {exc}") from None
    store = build_store(sel, root / DATA_DIR, expect=expected, refuse=(
        f"The dataset differs from the one the run in {root} started with (its fingerprint "
        f"changed: other files, or changed contents), and the run's own copy {why}. Resuming "
        f"would mix two datasets; point --data-dir at the original data, or start a new run."))
    if not images:
        store.close()
        return open_store(root / DATA_DIR, verify=False, images=False)
    return store


def run_data_info(run) -> dict:
    """in_shape, num_classes (and the rest of the store's index) without opening any shard."""
    import json
    index = Path(run.root) / DATA_DIR / "index.json"
    if not index.exists() and _legacy_snapshot(run):
        from .data.snapshot import snapshot_info
        return snapshot_info(run)
    try:
        return json.loads(index.read_text())
    except (OSError, ValueError):
        raise UserError(f"The run's copy of its dataset ({index.parent}) is missing or damaged. "
                        f"Continue with `edge-trgl train --resume {run.root}` where its data "
                        f"source is available, which rebuilds it.") from None


def _legacy_snapshot(run) -> bool:
    from .data.snapshot import SNAPSHOT_DIR
    return run.checksum(f"{SNAPSHOT_DIR}/info.json") is not None
