"""The detectors fitted on a clean set and an abnormal one, and how each scores a set.

  transport    logistic regression on every transport column (displacement norms, block input
               norms, cosines between successive displacements; features.py): what `edge-trgl
               detect fit` saves by default, and what the export runs on the device
  norms        the same on the displacement norms alone (the paper's feature)
  field        transport + the displacements themselves, averaged over space (one value per
               channel and block: the vector field's direction, ~340 columns for a ResNet-20)
  embedding    the same classifier on the final embedding only (the head's input, averaged):
               the baseline that sees where a point ends up, not how it got there
  mahalanobis  the distance of the final embedding to the closest class mean (fitted on clean
               training images, no attack seen): the classic final-embedding baseline

Norms enter the logistic model as logarithms (they are positive and spread over decades; a ratio
of two norms is then a difference, which the linear model can form); cosines as they are.
"""

from __future__ import annotations

import numpy as np

from ..detect_runtime import DETECTOR_FORMAT, DETECTOR_FORMAT_VERSION, Detector
from .logistic import Mahalanobis, best_threshold, fit_logistic, standardizer
from .names import FEATURE_SETS
from .sets import FeatureSet
LOG_PREFIXES = ("norm", "input")
DEFAULT_L2 = 1.0


def columns_of(feature_set: str, raw_columns: list[str]) -> list[str]:
    prefixes = FEATURE_SETS[feature_set]
    return [c for c in raw_columns if c.split(":", 1)[0] in prefixes]


def _matrix(fs: FeatureSet, columns: list[str]) -> np.ndarray:
    if columns and columns[0].startswith("emb:"):
        return fs.embedding
    index = {c: i for i, c in enumerate(fs.columns)}
    return fs.raw[:, [index[c] for c in columns]]


def fit_spec(clean: FeatureSet, abnormal: FeatureSet, columns: list[str], l2: float = DEFAULT_L2
             ) -> dict:
    """A detector.json spec (detect_runtime.Detector) separating `abnormal` from `clean`."""
    transform = ["log" if c.split(":", 1)[0] in LOG_PREFIXES else "identity" for c in columns]
    x = np.vstack([_matrix(clean, columns), _matrix(abnormal, columns)])
    y = np.concatenate([np.zeros(len(clean)), np.ones(len(abnormal))])
    logged = np.array([t == "log" for t in transform])
    x[:, logged] = np.log(np.maximum(x[:, logged], 1e-12))
    mean, std = standardizer(x)
    weights, bias = fit_logistic((x - mean) / std, y, l2=l2)
    spec = {"format": DETECTOR_FORMAT, "format_version": DETECTOR_FORMAT_VERSION,
            "columns": list(columns), "transform": transform,
            "mean": mean.tolist(), "std": std.tolist(), "weights": weights.tolist(),
            "bias": bias, "threshold": 0.5, "l2": l2}
    detector = Detector(spec)
    spec["threshold"] = best_threshold(scores_of(detector, clean), scores_of(detector, abnormal))
    return spec


def scores_of(detector: Detector, fs: FeatureSet) -> np.ndarray:
    return detector.scores(_matrix(fs, detector.columns))


class Fitted:
    """One fitted detector of DETECTORS: scores(set) and its threshold (chosen on the fit data)."""

    def __init__(self, name: str, clean: FeatureSet, abnormal: FeatureSet,
                 train_clean: FeatureSet | None = None, train_labels: np.ndarray | None = None,
                 l2: float = DEFAULT_L2):
        self.name = name
        self.spec = None
        if name == "mahalanobis":
            self.model = Mahalanobis(train_clean.embedding, train_labels)
            self.threshold = best_threshold(self.scores(clean), self.scores(abnormal))
            return
        columns = ([f"emb:{i}" for i in range(clean.embedding.shape[1])] if name == "embedding"
                   else columns_of(name, clean.columns))
        self.spec = fit_spec(clean, abnormal, columns, l2)
        self.model = Detector(self.spec)
        self.threshold = self.spec["threshold"]

    def scores(self, fs: FeatureSet) -> np.ndarray:
        if self.name == "mahalanobis":
            return self.model.scores(fs.embedding)
        return scores_of(self.model, fs)
