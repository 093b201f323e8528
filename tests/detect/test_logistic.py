"""The detector's numpy parts: logistic regression, AUROC, threshold, Mahalanobis, and the
detector.json round trip through detect_runtime."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from edge_trgl.detect.logistic import (Mahalanobis, auroc, balanced_accuracy, best_threshold,
                                       fit_logistic, sigmoid, standardizer)
from edge_trgl.detect_runtime import Detector, UserError, read_detector


def _two_gaussians(n0=300, n1=100, d=5, shift=1.5, seed=0):
    rng = np.random.default_rng(seed)
    x = np.vstack([rng.normal(0, 1, (n0, d)), rng.normal(0, 1, (n1, d)) + shift * np.eye(d)[0]])
    return x, np.concatenate([np.zeros(n0), np.ones(n1)])


def test_logistic_regression_separates_and_is_class_balanced():
    x, y = _two_gaussians()
    w, b = fit_logistic(x, y, l2=1.0)
    assert w[0] > 1.0 and np.abs(w[1:]).max() < 0.3 * w[0]   # it found the informative axis
    p = sigmoid(x @ w + b)
    assert auroc(p[y == 0], p[y == 1]) > 0.8
    # balanced weights: the 0.5 threshold sits near the midpoint (0.75) despite 3:1 classes
    assert abs(-b / w[0] - 0.75) < 0.35
    with pytest.raises(ValueError):
        fit_logistic(x, np.zeros(len(x)))


def test_auroc_equals_the_pairwise_definition_with_ties():
    rng = np.random.default_rng(0)
    neg, pos = rng.integers(0, 5, 40).astype(float), rng.integers(1, 6, 30).astype(float)
    pairs = [(1.0 if p > n else 0.5 if p == n else 0.0) for n, p in itertools.product(neg, pos)]
    assert auroc(neg, pos) == pytest.approx(np.mean(pairs), abs=1e-12)
    assert auroc([0, 1], [2, 3]) == 1.0 and auroc([2, 3], [0, 1]) == 0.0
    assert np.isnan(auroc([], [1.0]))


def test_threshold_and_balanced_accuracy():
    neg, pos = np.array([0.1, 0.2, 0.3, 0.6]), np.array([0.5, 0.7, 0.8])
    t = best_threshold(neg, pos)
    assert balanced_accuracy(neg, pos, t) == pytest.approx(0.5 * (3 / 4 + 1.0))
    assert 0.3 < t <= 0.5


def test_mahalanobis_scores_far_points_higher():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 200)
    emb = rng.normal(0, 1, (400, 4)) + 5 * labels[:, None]
    m = Mahalanobis(emb, labels)
    near = rng.normal(0, 1, (50, 4))
    far = rng.normal(0, 1, (50, 4)) + 20
    assert auroc(m.scores(near), m.scores(far)) > 0.99
    mean, std = standardizer(np.c_[emb, np.ones(400)])
    assert std[-1] == 1.0 and mean[-1] == 1.0                  # a constant column stays finite


def _spec(**change):
    spec = {"format": "edge-trgl-detector", "format_version": 1, "columns": ["norm:1.0", "cos:2.0"],
            "transform": ["log", "identity"], "mean": [0.0, 0.0], "std": [1.0, 2.0],
            "weights": [1.0, -1.0], "bias": 0.5, "threshold": 0.5}
    spec.update(change)
    return spec


def test_detector_json_round_trip_and_refusals(tmp_path):
    det = Detector(_spec())
    raw = np.array([[np.e, 0.0, 2.0], [1.0, 5.0, -2.0]])     # columns: norm:1.0, other, cos:2.0
    feats = det.select(raw, ["norm:1.0", "other", "cos:2.0"])
    z = np.array([1.0 - 2.0 / 2 + 0.5, 0.0 + 2.0 / 2 + 0.5])
    np.testing.assert_allclose(det.scores(feats), 1 / (1 + np.exp(-z)), rtol=1e-12)
    path = tmp_path / "detector.json"
    path.write_text(json.dumps(_spec()))
    again = read_detector(path)
    np.testing.assert_array_equal(again.scores(feats), det.scores(feats))
    with pytest.raises(UserError, match="lack the column"):
        det.select(raw, ["a", "b", "c"])
    for bad, phrase in ((_spec(std=[1.0, 0.0]), "std"), (_spec(weights=[1.0]), "weights"),
                        (_spec(transform=["log", "sqrt"]), "transform"),
                        (_spec(format="x"), "format"), (_spec(threshold=2.0), "threshold"),
                        (_spec(format_version=9), "format version"), ([], "JSON object")):
        with pytest.raises(UserError, match=phrase):
            Detector(bad)
    path.write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        read_detector(path)


def _feature_set(rng, n: int, informative: str, shift: float):
    from edge_trgl.detect.sets import FeatureSet
    columns = ["norm:0", "norm:1", "input:0", "cos:1", *[f"field:{i}" for i in range(6)]]
    raw = rng.normal(size=(n, len(columns)))
    raw[:, :3] = np.exp(raw[:, :3])                  # norms are positive (logged by the detector)
    for i, c in enumerate(columns):
        if c.startswith(informative):
            raw[:, i] += shift if not c.startswith(("norm", "input")) else 0
            if c.startswith(("norm", "input")):
                raw[:, i] *= np.exp(shift)
    return FeatureSet("x", raw, rng.normal(size=(n, 4)), np.zeros(n, dtype=int), columns)


@pytest.mark.parametrize("informative,expected", [("field", "field"), ("norm", "norms")])
def test_auto_features_are_chosen_on_held_out_validation_data(informative, expected):
    """Only the field columns tell abnormal from clean: auto picks field. Only the norms do:
    every set contains them and separates about equally, and the smallest (norms) is kept."""
    from edge_trgl.detect.fit import choose_features
    rng = np.random.default_rng(0)
    clean = _feature_set(rng, 200, informative, 0.0)
    abnormal = _feature_set(rng, 200, informative, 1.5)
    chosen, cv = choose_features(clean, abnormal, seed=0)
    assert set(cv) == {"norms", "transport", "field"}
    assert chosen == expected, cv
    assert cv[expected] > 0.75, cv
