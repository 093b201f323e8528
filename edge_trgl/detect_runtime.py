"""Abnormal-input detection on the device: numpy only (onnxruntime through deploy_runtime's session).

`edge-trgl detect fit RUN` trains a detector on the network's transport features (the norm of the
displacement g_m(x_m) that each residual block adds, see edge_trgl/detect/features.py) and writes
it as RUN/detector.json; `edge-trgl export RUN --detect` copies it next to model.onnx and adds the
raw features to the graph as a second output, `transport_features` (batch, F). This file turns
those raw features into a score in [0, 1] (the probability, under the detector's logistic model,
that the input is abnormal) and a flag (score >= the detector's threshold). It imports nothing but
numpy, and nothing from edge_trgl either (like deploy_runtime.py, it can be copied to a device on
its own, next to deploy_runtime.py); the torch side (`edge-trgl detect`) scores with the same code,
so a score from a run directory and one from its export differ only by float rounding.

The detector (detector.json) is plain JSON, never a pickle:
  columns     the names of the raw feature columns it reads, e.g. "norm:3.0" (block 3's first
              displacement norm), "input:3.0" (the norm of that block's input), "cos:3.0" (the
              cosine between that displacement and the previous one)
  transform   per column: "log" (norms: positive and spread over decades) or "identity"
  mean, std   standardisation of the transformed columns (fitted on the detector's training data)
  weights, bias   the logistic regression on the standardised columns
  threshold   score at or above which an input is flagged
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np

try:
    from edge_trgl.errors import UserError
except ImportError:  # copied to a device on its own
    class UserError(Exception):
        """A readable error about the user's input."""

DETECTOR_FORMAT = "edge-trgl-detector"
DETECTOR_FORMAT_VERSION = 1
DETECTOR_FILE = "detector.json"
FEATURES_OUTPUT = "transport_features"
TRANSFORMS = ("log", "identity")
# log of a norm that is exactly 0 (a dead branch) must stay finite
LOG_FLOOR = 1e-12
REDO = ("Fit the detector again (`edge-trgl detect fit RUN_DIR --force`) and export again "
        "(`edge-trgl export RUN_DIR --detect --force`)")


def _finite_list(v, n: int | None = None) -> bool:
    return (isinstance(v, list) and (n is None or len(v) == n)
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                    for x in v))


class Detector:
    """A fitted detector: raw transport features (N, len(raw_columns)) -> scores (N,)."""

    def __init__(self, spec: dict, path=None):
        self.spec = check_detector(spec, path or DETECTOR_FILE)
        self.columns = list(spec["columns"])
        self.transform = list(spec["transform"])
        self.mean = np.asarray(spec["mean"], np.float64)
        self.std = np.asarray(spec["std"], np.float64)
        self.weights = np.asarray(spec["weights"], np.float64)
        self.bias = float(spec["bias"])
        self.threshold = float(spec["threshold"])
        self._log = np.array([t == "log" for t in self.transform])

    def select(self, raw: np.ndarray, raw_columns: list[str]) -> np.ndarray:
        """The detector's columns out of a raw feature matrix whose columns are `raw_columns`."""
        index = {name: i for i, name in enumerate(raw_columns)}
        missing = [c for c in self.columns if c not in index]
        if missing:
            raise UserError(f"The model's transport features lack the column(s) "
                            f"{', '.join(missing[:3])} that the detector reads: the detector was "
                            f"fitted on another model. {REDO}.")
        return np.asarray(raw, np.float64)[:, [index[c] for c in self.columns]]

    def standardized(self, features: np.ndarray) -> np.ndarray:
        x = np.array(features, np.float64)
        x[:, self._log] = np.log(np.maximum(x[:, self._log], LOG_FLOOR))
        return (x - self.mean) / self.std

    def scores(self, features: np.ndarray) -> np.ndarray:
        """P(abnormal) for each row of the detector's own columns (see select)."""
        z = self.standardized(features) @ self.weights + self.bias
        return 0.5 * (1.0 + np.tanh(0.5 * z))  # the logistic sigmoid, without exp overflow

    def flags(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores) >= self.threshold


def check_detector(spec, path) -> dict:
    """Validate a detector.json (what Detector reads); return it."""
    def bad(what: str):
        raise UserError(f"The detector {path} is not valid: {what}. It was damaged or edited. "
                        f"{REDO}.")
    if not isinstance(spec, dict):
        bad(f"expected a JSON object, found {type(spec).__name__}")
    if spec.get("format") != DETECTOR_FORMAT:
        bad(f"its format is {spec.get('format')!r}, not {DETECTOR_FORMAT!r}")
    version = spec.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        bad(f"format_version must be a positive integer, found {version!r}")
    if version > DETECTOR_FORMAT_VERSION:
        raise UserError(f"The detector {path} has format version {version}; this edge-trgl reads "
                        f"version {DETECTOR_FORMAT_VERSION}. Update edge-trgl.")
    cols = spec.get("columns")
    if not isinstance(cols, list) or not cols or not all(isinstance(c, str) for c in cols):
        bad("columns must be a non-empty list of feature names")
    n = len(cols)
    tr = spec.get("transform")
    if not isinstance(tr, list) or len(tr) != n or not all(t in TRANSFORMS for t in tr):
        bad(f"transform must list one of {TRANSFORMS} per column")
    for key in ("mean", "std", "weights"):
        if not _finite_list(spec.get(key), n):
            bad(f"{key} must be {n} finite numbers")
    if not all(s > 0 for s in spec["std"]):
        bad("std must be above zero")
    for key in ("bias", "threshold"):
        if not _finite_list([spec.get(key)]):
            bad(f"{key} must be a finite number")
    if not 0.0 <= spec["threshold"] <= 1.0:
        bad("threshold must lie in [0, 1]")
    return spec


def read_detector(path: str | Path) -> Detector:
    path = Path(path)
    try:
        spec = json.loads(path.read_bytes())
    except OSError as exc:
        raise UserError(f"The detector {path} cannot be read ({exc.strerror or exc}).") from None
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise UserError(f"The detector {path} is not valid JSON ({type(exc).__name__}). "
                        f"{REDO}.") from None
    return Detector(spec, path)


def attach(model) -> Detector | None:
    """The detector of an exported model (deploy_runtime.OrtModel), or None when the export has
    none (no detector.json beside model.onnx, or no `transport_features` output). detector.json
    is checked against the checksum export.json records, like model.onnx and model.json."""
    path = Path(model.path).parent / DETECTOR_FILE
    outputs = [o.name for o in model.session.get_outputs()]
    if not path.is_file():
        return None
    if FEATURES_OUTPUT not in outputs:
        raise UserError(f"{path.parent} holds a {DETECTOR_FILE} but its model has no "
                        f"{FEATURES_OUTPUT!r} output: the folder mixes files of different exports. "
                        f"{REDO}.")
    report = getattr(model, "report", None)
    if report is not None:
        entry = (report.get("files") or {}).get(DETECTOR_FILE)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if not isinstance(entry, dict) or entry.get("sha256") != digest:
            raise UserError(f"{path} does not match the checksum in {path.parent / 'export.json'}: "
                            f"it was damaged or changed after the export. {REDO}.")
    detector = read_detector(path)
    raw_columns = ((model.meta.get("detection") or {}).get("columns")
                   if isinstance(model.meta, dict) else None)
    if not isinstance(raw_columns, list):
        raise UserError(f"The model description beside {path} does not list the columns of "
                        f"{FEATURES_OUTPUT!r}. {REDO}.")
    detector.raw_columns = list(raw_columns)
    return detector


def logits_and_scores(model, images: np.ndarray, batch_size: int = 256):
    """(logits (N, classes), abnormal scores (N,)) of an OrtModel with a detector, from one run
    of the graph per batch (the logits and the features come out of the same pass)."""
    detector = model.detector
    images = np.asarray(images)
    if images.shape[1:] != tuple(model.in_shape):
        raise UserError(f"The model takes images of shape {tuple(model.in_shape)} (C, H, W), got "
                        f"{images.shape[1:]}.")
    names = [model.session.get_outputs()[0].name, FEATURES_OUTPUT]
    logits, scores = [], []
    for start in range(0, len(images), batch_size):
        batch = np.ascontiguousarray(images[start:start + batch_size], dtype=np.float32)
        try:
            out, raw = model.session.run(names, {model.input_name: batch})
        except Exception as exc:  # onnxruntime's own error types
            raise UserError(f"ONNX Runtime failed to run {model.path} on a batch of {len(batch)} "
                            f"image(s) ({type(exc).__name__}). Export it again.") from None
        if raw.shape != (len(batch), len(detector.raw_columns)):
            raise UserError(f"{model.path} returned transport features of shape {raw.shape}, "
                            f"expected {(len(batch), len(detector.raw_columns))}. {REDO}.")
        logits.append(np.asarray(out))
        scores.append(detector.scores(detector.select(raw, detector.raw_columns)))
    if not logits:
        return np.zeros((0, model.num_classes), np.float32), np.zeros(0)
    return np.concatenate(logits), np.concatenate(scores)


def score_summary(model, scores: np.ndarray) -> dict:
    """What `evaluate` reports about detection on the clean test images' scores: the share flagged
    (the false alarm rate at the detector's threshold) and the scores' mean and spread."""
    flags = model.detector.flags(scores)
    return {"threshold": model.detector.threshold, "images": int(len(scores)),
            "flagged": int(flags.sum()), "flagged_fraction": float(flags.mean()) if len(flags) else 0.0,
            "mean_score": float(scores.mean()) if len(scores) else None,
            "median_score": float(np.median(scores)) if len(scores) else None}


def describe(score: float, threshold: float) -> str:
    return f"abnormal score {score:.3f}" + (" FLAGGED" if score >= threshold else "")
