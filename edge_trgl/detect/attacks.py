"""Adversarial attacks in plain torch, L-infinity bounded, on pixel images in [0, 1].

The model is an export.InferenceModel (pixel values 0..255 in, logits out; its normalisation is
inside), so the attacks work where a camera's pixels live and epsilon is in pixel units: 8/255 is
the usual CIFAR budget. All attacks use the true labels (untargeted) and the model in eval mode
(BatchNorm on its running statistics: a batch does not change how another image is seen).

  fgsm  one step of eps * sign(grad of the cross-entropy) (Goodfellow et al. 2015)
  bim   `steps` steps of eps/steps * sign(grad), clipped to the eps-ball (Kurakin et al. 2017)
  pgd   a uniform random start in the eps-ball, then `steps` steps of 2.5*eps/steps (Madry et al.)
  cw    PGD on the Carlini-Wagner margin max_{j != y} z_j - z_y instead of the cross-entropy
        (the L-infinity "CW" attack of Croce & Hein's evaluations): it pushes the logits, not the
        probabilities, so it finds different points than the cross-entropy attacks
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .names import ATTACKS


def _loss(kind: str, logits, labels):
    if kind == "cw":
        true = logits.gather(1, labels[:, None])[:, 0]
        others = logits.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), float("-inf"))
        return (others.max(1).values - true).sum()
    return F.cross_entropy(logits, labels, reduction="sum")


def _grad(model, x01, labels, kind):
    x01 = x01.detach().requires_grad_(True)
    loss = _loss(kind, model(x01 * 255.0), labels)
    (grad,) = torch.autograd.grad(loss, x01)
    return grad


def attack_batch(model, images01: torch.Tensor, labels: torch.Tensor, kind: str, eps: float,
                 steps: int = 10, generator: torch.Generator | None = None) -> torch.Tensor:
    """Adversarial versions of `images01` (float, [0, 1], N x C x H x W) within eps (L-inf)."""
    if kind not in ATTACKS:
        raise ValueError(f"unknown attack {kind!r}")
    x0 = images01.detach()
    if kind == "fgsm":
        return (x0 + eps * _grad(model, x0, labels, "ce").sign()).clamp(0, 1)
    step = eps / steps if kind == "bim" else 2.5 * eps / steps
    x = x0
    if kind in ("pgd", "cw"):
        noise = torch.rand(x0.shape, generator=generator, dtype=x0.dtype) * 2 - 1
        x = (x0 + eps * noise).clamp(0, 1)
    for _ in range(steps):
        g = _grad(model, x, labels, "cw" if kind == "cw" else "ce")
        x = x + step * g.sign()
        x = torch.min(torch.max(x, x0 - eps), x0 + eps).clamp(0, 1)
    return x.detach()


def attack(model, images: np.ndarray, labels: np.ndarray, kind: str, eps: float, steps: int = 10,
           seed: int = 0, batch_size: int = 128) -> np.ndarray:
    """attack_batch over uint8 or float pixel images 0..255; returns float32 pixels 0..255 (an
    adversarial image is not an 8-bit image: rounding it would undo part of a small epsilon)."""
    model.eval()
    params = [p for p in model.parameters()]
    wanted = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)  # gradients for the input only
    gen = torch.Generator().manual_seed(int(seed))
    out = []
    try:
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(np.asarray(images[start:start + batch_size], np.float32) / 255.0)
            y = torch.from_numpy(np.asarray(labels[start:start + batch_size], np.int64))
            out.append((attack_batch(model, x, y, kind, eps, steps, gen) * 255.0).numpy())
    finally:
        for p, w in zip(params, wanted):
            p.requires_grad_(w)
    shape = (0, *np.asarray(images).shape[1:])
    return np.concatenate(out).astype(np.float32) if out else np.zeros(shape, np.float32)
