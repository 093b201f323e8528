"""What the three parts of the ONNX Runtime backend share: the orchestrator (ort_backend.py, no
torch), the artifact builder (ort_artifacts.py, needs torch + onnx) and the trainer process
(ort_worker.py, no torch). numpy-only; onnxruntime is imported lazily.

Files an ORT run adds to its run directory (all listed in the manifest with their sha256):

    ort/module_XX/training_model.onnx   forward + TRGL loss + gradient graph (generate_artifacts)
    ort/module_XX/checkpoint            ORT's initial parameter state (weights are replaced by the
                                        block store's at load time; only names/shapes matter)
    ort/module_XX/eval_model.onnx       the same module exported in EVAL mode, weights as inputs
    ort/module_XX/meta.json             parameter names/order, BatchNorm bookkeeping, shapes
    ort/data/*.npy + info.json          the run's train/val/test split arrays (written and read
                                        by edge_trgl.data.snapshot)
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from ..errors import UserError

ARTIFACT_FORMAT = 1
ORT_PIN = "onnxruntime-training-cpu==1.19.2"
ONNX_PIN = "onnx==1.17.0"
ARTIFACT_FILES = ("training_model.onnx", "checkpoint", "eval_model.onnx", "meta.json")

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
