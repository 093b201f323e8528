"""The clean and abnormal image sets a detector is fitted and measured on, with their features.

Protocol (the usual one for adversarial-example detectors, e.g. Ma et al. 2018, Lee et al. 2018):
the clean set is the images the network classifies correctly; an attack's set is those images
after the attack, kept only where the attack changed the prediction (a failed attack is a clean
image for every purpose); noise and out-of-distribution sets are kept whole (no label to flip).
Every set carries the network's transport features (features.py) and final embedding, computed
once, so several detectors can be fitted and compared on the same images.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .abnormal import noisy, ood_images, uniform_images
from .attacks import attack
from .features import extract
from .names import ATTACKS


@dataclass
class FeatureSet:
    """One set of images seen through the network."""

    name: str
    raw: np.ndarray            # (N, F) transport features, columns in `columns`
    embedding: np.ndarray      # (N, D) the head's input, averaged over space / tokens
    predictions: np.ndarray    # (N,)
    columns: list[str]
    info: dict = field(default_factory=dict)

    def take(self, mask: np.ndarray) -> "FeatureSet":
        return FeatureSet(self.name, self.raw[mask], self.embedding[mask], self.predictions[mask],
                          self.columns, dict(self.info))

    def __len__(self) -> int:
        return len(self.predictions)


def seen(model, name: str, images: np.ndarray, info: dict | None = None) -> FeatureSet:
    logits, raw, embedding, columns = extract(model, images)
    return FeatureSet(name, raw, embedding, logits.argmax(1), columns, info or {})


def clean_set(model, images: np.ndarray, labels: np.ndarray) -> tuple[FeatureSet, np.ndarray]:
    """(the correctly classified images' features, their mask over `images`)."""
    everything = seen(model, "clean", images)
    correct = everything.predictions == labels
    clean = everything.take(correct)
    clean.info = {"images": int(len(labels)), "correct": int(correct.sum()),
                  "accuracy": float(correct.mean()) if len(labels) else None}
    return clean, correct


def abnormal_set(model, kind: str, images: np.ndarray, labels: np.ndarray, *, eps: float,
                 steps: int, seed: int, sigma: float, ood: str, ood_dir: str | None,
                 in_shape) -> FeatureSet:
    """The abnormal set of `kind` made from the correctly classified `images` (see the module
    docstring); its info says how many were made and kept and how long it took."""
    started = time.perf_counter()
    if kind in ATTACKS:
        adv = attack(model, images, labels, kind, eps, steps=steps, seed=seed)
        out = seen(model, kind, adv)
        flipped = out.predictions != labels
        out = out.take(flipped)
        out.info = {"made": int(len(labels)), "kept": int(flipped.sum()),
                    "attack_success": float(flipped.mean()) if len(labels) else None,
                    "eps": eps, "steps": 1 if kind == "fgsm" else steps,
                    "max_linf_pixels": float(np.abs(adv - images).max() / 255.0) if len(adv) else 0.0}
    elif kind == "gauss":
        out = seen(model, kind, noisy(images, sigma, seed))
        out.info = {"made": len(out), "kept": len(out), "sigma": sigma}
    elif kind == "uniform":
        out = seen(model, kind, uniform_images(len(labels), in_shape, seed))
        out.info = {"made": len(out), "kept": len(out)}
    elif kind == "ood":
        source = ood if (ood == "smooth" or ood_dir) else "smooth"
        out = seen(model, kind, ood_images(source, len(labels), in_shape, seed, ood_dir))
        out.info = {"made": len(out), "kept": len(out), "source": source}
    else:
        raise ValueError(f"unknown kind {kind!r}")
    out.info["seconds"] = round(time.perf_counter() - started, 2)
    return out
