"""What the three parts of the ONNX Runtime backend share: the orchestrator (ort_backend.py, no
torch), the artifact builder (ort_artifacts.py, needs torch + onnx) and the trainer process
(ort_worker.py, no torch). numpy-only; onnxruntime is imported lazily.

Files an ORT run adds to its run directory (all listed in the manifest with their sha256):

    ort/module_XX/training_model.onnx   forward + TRGL loss + gradient graph (generate_artifacts)
    ort/module_XX/checkpoint            ORT's initial parameter state (weights are replaced by the
                                        block store's at load time; only names/shapes matter)
    ort/module_XX/eval_model.onnx       the same module exported in EVAL mode, weights as inputs
    ort/module_XX/meta.json             parameter names/order, BatchNorm bookkeeping, shapes
    ort/data/*.npy + info.json          the run's train/val/test split arrays (see save_snapshot)
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from ..errors import UserError

ARTIFACT_FORMAT = 1
ORT_PIN = "onnxruntime-training-cpu==1.19.2"
ONNX_PIN = "onnx==1.17.0"
ARTIFACT_FILES = ("training_model.onnx", "checkpoint", "eval_model.onnx", "meta.json")
SNAPSHOT_DIR = "ort/data"
SPLITS = ("train", "val", "test")

# Exit status of a worker that stopped at a safe point because of Ctrl-C / SIGTERM, and of one
# that found its RSS over the budget (the orchestrator turns both into the torch backend's errors).
EXIT_INTERRUPTED = 75
EXIT_OVER_BUDGET = 76

# A worker starts with torch blocked before anything else is imported, so an accidental
# `import torch` anywhere on its path fails loudly instead of silently costing ~220 MB.
WORKER_BOOT = ("import sys; sys.modules['torch'] = None; "
               "from edge_trgl.backends.ort_worker import main; sys.exit(main(sys.argv[1:]))")


def artifact_dir(k: int) -> str:
    return f"ort/module_{k:02d}"


def worker_command(job_path: str | os.PathLike) -> list[str]:
    return [sys.executable, "-c", WORKER_BOOT, os.fspath(job_path)]


def install_hint() -> str:
    return (f"Install the ONNX Runtime extra with `pip install -e \".[ort]\"` (it pins {ORT_PIN} "
            f"and {ONNX_PIN}: 1.19.2 is the last release of ONNX Runtime's training packages, and "
            f"newer onnx writes IR version 14 that it refuses).")


def require_ort(*, need_onnx: bool) -> None:
    """Raise a UserError that says how to install the extra when ONNX Runtime's training build
    (or, for artifact generation, onnx) is missing.

    Nothing is imported: `import onnxruntime` imports torch whenever torch is importable (its
    validation step loads onnxruntime.training), which the orchestrator must not do."""
    import importlib.util
    problem = None
    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        problem = "onnxruntime is not installed"
    else:
        root = Path(list(spec.submodule_search_locations)[0])
        if not (root / "training" / "api").is_dir():
            problem = ("the installed onnxruntime is the inference-only build, which has no "
                       "training classes")
    if problem is None and need_onnx and importlib.util.find_spec("onnx") is None:
        problem = "onnx is not installed"
    if problem is not None:
        raise UserError(f"--backend ort needs ONNX Runtime's training build, but {problem}. "
                        + install_hint() + " Or use --backend torch.")


def ort_version() -> str | None:
    from importlib.metadata import version
    for dist in ("onnxruntime-training-cpu", "onnxruntime-training", "onnxruntime"):
        try:
            return version(dist)
        except Exception:
            continue
    return None


def read_meta(root: Path, k: int) -> dict:
    return json.loads((Path(root) / artifact_dir(k) / "meta.json").read_text())


# --- the data snapshot --------------------------------------------------------------------------
# The trainer processes read the run's exact split arrays from plain .npy files instead of
# re-parsing the dataset: loading CIFAR-10 from its pickled batches peaks far above the arrays it
# keeps (every batch file is decoded before the subset is taken), and that transient would land
# in every worker. A later module's worker reads only the labels.

def snapshot_files() -> list[str]:
    files = [f"{SNAPSHOT_DIR}/info.json"]
    for split in SPLITS:
        files += [f"{SNAPSHOT_DIR}/{split}_images.npy", f"{SNAPSHOT_DIR}/{split}_labels.npy"]
    return files


def save_snapshot(run, dataset) -> None:
    """Write the dataset's splits into the run (atomically) and record their checksums."""
    import io

    from ..atomic import atomic_write_bytes, atomic_write_json, sha256_file
    root = Path(run.root)
    for split in SPLITS:
        arrays = getattr(dataset, split)
        for name, array in (("images", arrays.images), ("labels", arrays.labels)):
            rel = f"{SNAPSHOT_DIR}/{split}_{name}.npy"
            buf = io.BytesIO()
            np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
            atomic_write_bytes(root / rel, buf.getvalue())
            run.record_file(rel, sha256_file(root / rel))
    info = {"name": dataset.name, "num_classes": int(dataset.num_classes),
            "mean": list(dataset.mean), "std": list(dataset.std),
            "class_names": list(dataset.class_names), "in_shape": list(dataset.in_shape),
            "fingerprint": dataset.fingerprint()}
    rel = f"{SNAPSHOT_DIR}/info.json"
    atomic_write_json(root / rel, info)
    run.record_file(rel, sha256_file(root / rel))


def snapshot_info(run) -> dict:
    return json.loads(_verified(run, f"{SNAPSHOT_DIR}/info.json").read_text())


def load_snapshot(run, *, images: bool = True):
    """The run's Dataset from its snapshot (checksums verified). With images=False the image
    arrays are empty placeholders of the right shape: a later module only needs the labels."""
    from ..data.arrays import ArraySet, Dataset
    info = snapshot_info(run)
    c, h, w = info["in_shape"]
    splits = {}
    for split in SPLITS:
        labels = np.load(_verified(run, f"{SNAPSHOT_DIR}/{split}_labels.npy"), allow_pickle=False)
        if images:
            imgs = np.load(_verified(run, f"{SNAPSHOT_DIR}/{split}_images.npy"), allow_pickle=False)
            splits[split] = ArraySet(images=imgs, labels=labels)
        else:
            # a zero-stride view of the right shape (in_shape, len) that holds no memory
            imgs = np.broadcast_to(np.zeros((1, c, h, w), np.uint8), (len(labels), c, h, w))
            splits[split] = SimpleNamespace(images=imgs, labels=labels.astype(np.int64, copy=False))
    return Dataset(name=info["name"], train=splits["train"], val=splits["val"],
                   test=splits["test"], num_classes=int(info["num_classes"]),
                   mean=tuple(info["mean"]), std=tuple(info["std"]),
                   class_names=list(info["class_names"]))


def _verified(run, rel: str) -> Path:
    from ..atomic import sha256_file
    path = Path(run.root) / rel
    expected = run.checksum(rel)
    if expected is None or not path.is_file() or sha256_file(path) != expected:
        raise UserError(f"The run in {run.root} is missing {rel} or it does not match the checksum "
                        f"in the run manifest (the ONNX Runtime backend's copy of the data splits). "
                        f"The run directory is damaged; start a new run.")
    return path


def verify_artifacts(run, k: int) -> bool:
    """Module k's artifacts exist and match the manifest's checksums."""
    from ..atomic import sha256_file
    recorded = run.manifest.get("ort", {}).get("artifacts", {})
    for name in ARTIFACT_FILES:
        rel = f"{artifact_dir(k)}/{name}"
        path = Path(run.root) / rel
        expected = recorded.get(rel)
        if expected is None or not path.is_file() or sha256_file(path) != expected:
            return False
    return True
