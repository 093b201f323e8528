"""The detector's classifier and its measures, in numpy (no scikit-learn needed).

Logistic regression on standardised features, fitted by Newton's method (iteratively reweighted
least squares) with an L2 penalty on the weights (not the bias) and class-balanced sample weights,
so that a fit on, say, 300 clean and 200 attacked images does not lean to the larger class and the
threshold 0.5 means "as likely one as the other". With a few dozen features Newton converges in
~10 iterations and needs no learning rate.
"""

from __future__ import annotations

import numpy as np

# a standard deviation below this is a constant column: left unscaled (std 1)
STD_FLOOR = 1e-12


def standardizer(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    return mean, np.where(std > STD_FLOOR, std, 1.0)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1.0, iterations: int = 100,
                 tol: float = 1e-10) -> tuple[np.ndarray, float]:
    """(weights, bias) minimising the class-balanced log loss + l2/2 * |weights|^2."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    n, d = x.shape
    n_pos = y.sum()
    if n_pos == 0 or n_pos == n:
        raise ValueError("logistic regression needs examples of both classes")
    weight = np.where(y > 0, n / (2 * n_pos), n / (2 * (n - n_pos)))
    xb = np.hstack([x, np.ones((n, 1))])
    penalty = np.full(d + 1, float(l2))
    penalty[-1] = 0.0
    beta = np.zeros(d + 1)
    for _ in range(iterations):
        p = sigmoid(xb @ beta)
        grad = xb.T @ (weight * (p - y)) + penalty * beta
        curvature = weight * p * (1 - p)
        hessian = xb.T @ (xb * curvature[:, None]) + np.diag(penalty + 1e-9)
        step = np.linalg.solve(hessian, grad)
        beta -= step
        if np.abs(step).max() < tol:
            break
    return beta[:-1], float(beta[-1])


def auroc(negative: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of scores where `positive` (abnormal) should score higher: the
    probability that a random positive outscores a random negative, ties counting one half
    (Mann-Whitney U from average ranks)."""
    neg, pos = np.asarray(negative, np.float64), np.asarray(positive, np.float64)
    if len(neg) == 0 or len(pos) == 0:
        return float("nan")
    values = np.concatenate([neg, pos])
    order = values.argsort(kind="mergesort")
    ranks = np.empty(len(values))
    sorted_values = values[order]
    # average rank for ties
    _, first, counts = np.unique(sorted_values, return_index=True, return_counts=True)
    average = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(average, counts)
    u = ranks[len(neg):].sum() - len(pos) * (len(pos) + 1) / 2.0
    return float(u / (len(neg) * len(pos)))


def balanced_accuracy(negative: np.ndarray, positive: np.ndarray, threshold: float) -> float:
    """Mean of the share of negatives below `threshold` and of positives at or above it."""
    tnr = float((np.asarray(negative) < threshold).mean()) if len(negative) else float("nan")
    tpr = float((np.asarray(positive) >= threshold).mean()) if len(positive) else float("nan")
    return 0.5 * (tnr + tpr)


def best_threshold(negative: np.ndarray, positive: np.ndarray) -> float:
    """The threshold (a midpoint between two observed scores) with the best balanced accuracy on
    these scores: chosen on the fitting data, then applied unchanged to new data."""
    values = np.unique(np.concatenate([negative, positive]))
    if len(values) == 1:
        return float(values[0])
    candidates = np.concatenate([[values[0] - 1e-9], (values[:-1] + values[1:]) / 2])
    neg = np.sort(negative)
    pos = np.sort(positive)
    tnr = np.searchsorted(neg, candidates, side="left") / len(neg)
    tpr = 1.0 - np.searchsorted(pos, candidates, side="left") / len(pos)
    return float(candidates[np.argmax(tnr + tpr)])


class Mahalanobis:
    """The final-embedding baseline without any attack to learn from (Lee et al. 2018, without
    their input pre-processing): class means of the clean embeddings and one shared covariance
    (shrunk towards its diagonal so a few hundred images suffice); an input's score is its
    Mahalanobis distance to the closest class mean."""

    def __init__(self, embeddings: np.ndarray, labels: np.ndarray, shrink: float = 0.1):
        x = np.asarray(embeddings, np.float64)
        classes = np.unique(labels)
        self.means = np.stack([x[labels == c].mean(0) for c in classes])
        centred = x - self.means[np.searchsorted(classes, labels)]
        cov = centred.T @ centred / len(x)
        cov = (1 - shrink) * cov + shrink * np.diag(np.diag(cov)) + 1e-9 * np.eye(len(cov))
        self.precision = np.linalg.inv(cov)

    def scores(self, embeddings: np.ndarray) -> np.ndarray:
        d = np.asarray(embeddings, np.float64)[:, None, :] - self.means[None]
        return np.einsum("ncd,de,nce->nc", d, self.precision, d).min(1)
