"""The names and defaults of `edge-trgl detect`, torch-free: the CLI's parser is built in every
`edge-trgl` process, including the device's (numpy + onnxruntime only), so it may not import the
modules that do the work."""

from __future__ import annotations

ATTACKS = ("fgsm", "bim", "pgd", "cw")           # attacks.py
NOISES = ("gauss", "uniform")                     # abnormal.py
OOD_SOURCES = ("mnist", "cifar10", "smooth")      # abnormal.py
KINDS = (*ATTACKS, *NOISES, "ood")                # sets.py: every kind of abnormal input
# detectors.py: the column families each logistic detector reads
FEATURE_SETS = {"transport": ("norm", "input", "cos"), "norms": ("norm",),
                "field": ("norm", "input", "cos", "field")}
DETECTORS = ("transport", "norms", "field", "embedding", "mahalanobis")

DEFAULT_EPS = 8 / 255
DEFAULT_STEPS = 10
DEFAULT_SIGMA = 0.1
DEFAULT_EVAL_IMAGES = 500
# auto: the feature set with the best cross-validated AUROC on the validation split (fit.py)
DEFAULT_FEATURES = "auto"
