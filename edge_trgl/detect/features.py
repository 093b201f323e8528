"""Per-sample transport features of a network: what each block's displacement looks like.

The paper's idea (Karkar, Gallinari, Rakotomamonjy, ECML-PKDD 2023): a residual network moves each
input along a discrete vector field, block m adding g_m(x_m); abnormal inputs follow different
fields. Our kinetic energy is made of exactly these displacements: every block computes its energy
as `models.blocks.mean_square(g)` of its residual branch g (or of y - x, the Monge form, for a
shape-keeping VGG layer; the ViT block calls it once per branch). Rather than re-deriving g for each
kind of block, `recording` intercepts that one function while the network runs, so the features
are made of the very tensors the regulariser penalises, for every model the zoo builds, and the
same code runs when the network is traced into ONNX (the features become graph outputs).

One "term" is one call of mean_square (one residual branch). For each term t of block m we keep:
  norm:m.j    ||g||_2 per sample: the displacement's length (the paper's feature)
  input:m.j   ||x_m||_2 per sample, the block's input: with log-features and a linear detector,
              log(norm) - log(input) is the relative displacement, so the detector can use the
              scale-free length without a separate column
  cos:m.j     cos(g_t, g_{t-1}) per sample, where the previous term has the same shape: whether
              the trajectory keeps its direction (a transport-regularised network moves points
              along straighter paths, so a turn is a sign of an unusual input)
  field:m.j.c the displacement itself averaged over space (tokens for a ViT), channel c: the
              direction of the vector field, not only its length (the final-embedding baseline
              reads the same pooled vector of the last position instead of the moves)
Blocks whose energy is 0 (a ResNet stem, a channel-changing VGG layer, the ViT patch embedding)
call no mean_square and give no feature: they are no displacement of their input. A plain VGG
whose every layer changes the channel count therefore has no transport features (the detector
refuses it, saying so); a shape-keeping VGG layer gives its Monge displacement y - x.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import Tensor, nn

from ..models import blocks as block_module

# a norm is never exactly 0 in a trained network; keeps the cosine finite if one is
COS_EPS = 1e-12


class Recorder:
    """The per-sample quantities of the terms recorded during one forward pass."""

    def __init__(self):
        self.block = -1
        self.term = 0
        self.block_input: Tensor | None = None
        self.names: list[str] = []
        self.norms: list[Tensor] = []
        self.inputs: list[Tensor] = []
        self.cos_names: list[str] = []
        self.cosines: list[Tensor] = []
        self.fields: list[Tensor] = []
        self.field_names: list[str] = []
        self._prev: Tensor | None = None

    def enter(self, index: int, x: Tensor) -> None:
        self.block, self.term, self.block_input = index, 0, x

    def record(self, g: Tensor) -> None:
        if self.block_input is None or g.dim() < 2:
            return
        flat = g.flatten(1)
        norm = torch.sqrt((flat * flat).sum(1))
        name = f"{self.block}.{self.term}"
        self.term += 1
        self.names.append(name)
        self.norms.append(norm)
        x = self.block_input.flatten(1)
        self.inputs.append(torch.sqrt((x * x).sum(1)))
        prev = self._prev
        if prev is not None and prev.shape == flat.shape:
            dot = (prev * flat).sum(1)
            pnorm = torch.sqrt((prev * prev).sum(1))
            self.cosines.append(dot / (pnorm * norm + COS_EPS))
            self.cos_names.append(name)
        self._prev = flat
        # the displacement itself, averaged over space (or tokens): one value per channel
        pooled = g.mean(dim=(2, 3)) if g.dim() == 4 else (g.mean(dim=1) if g.dim() == 3 else g)
        self.fields.append(pooled)
        self.field_names += [f"field:{name}.{c}" for c in range(pooled.shape[1])]

    def columns(self) -> list[str]:
        return ([f"norm:{n}" for n in self.names] + [f"input:{n}" for n in self.names]
                + [f"cos:{n}" for n in self.cos_names] + self.field_names)

    def raw(self) -> Tensor:
        """(batch, F) in the order of columns()."""
        return torch.cat([torch.stack(self.norms + self.inputs + self.cosines, dim=1),
                          *self.fields], dim=1)


@contextlib.contextmanager
def recording(blocks):
    """Record the displacement of every block of `blocks` while they run (see the module
    docstring). Only one recording at a time per process: it swaps the one module-level function
    every block's energy goes through, and puts it back on exit."""
    rec = Recorder()
    original = block_module.mean_square
    if getattr(original, "_edge_trgl_recording", False):
        raise RuntimeError("a transport recording is already active")

    def mean_square(t: Tensor) -> Tensor:
        rec.record(t)
        return original(t)
    mean_square._edge_trgl_recording = True
    hooks = [b.register_forward_pre_hook(lambda _m, args, i=i: rec.enter(i, args[0]))
             for i, b in enumerate(blocks)]
    block_module.mean_square = mean_square
    try:
        yield rec
    finally:
        block_module.mean_square = original
        for h in hooks:
            h.remove()


class TransportModel(nn.Module):
    """An export.InferenceModel that also returns its raw transport features and its final
    embedding: images -> (logits, features (batch, F), embedding (batch, channels)). The embedding
    (the head's input, averaged over space or tokens) feeds the baseline detector only."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.columns: list[str] | None = None

    def forward(self, images: Tensor):
        captured = {}
        hook = self.model.head.register_forward_pre_hook(
            lambda _m, args: captured.__setitem__("x", args[0]))
        try:
            with recording(self.model.blocks) as rec:
                logits = self.model(images)
        finally:
            hook.remove()
        if not rec.names:
            raise ValueError("no block of this network has a displacement")
        self.columns = rec.columns()
        x = captured["x"]
        embedding = x.mean(dim=(2, 3)) if x.dim() == 4 else x.mean(dim=1)
        return logits, rec.raw(), embedding


def extract(model: nn.Module, images: np.ndarray, batch_size: int = 128):
    """(logits, raw features, embedding, columns) as float64 numpy arrays for float pixel images
    (N, C, H, W) in 0..255 (uint8 or float)."""
    from ..errors import UserError
    wrapped = TransportModel(model).eval()
    parts: list[list[np.ndarray]] = [[], [], []]
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size],
                                                          dtype=np.float32))
            try:
                outs = wrapped(batch)
            except ValueError as exc:
                raise UserError(f"This network has no transport features ({exc}): every block "
                                f"changes the shape of its input (e.g. a VGG whose every layer "
                                f"changes the channel count), so there is no displacement to "
                                f"measure. Detection needs a ResNet, a ViT or a VGG with "
                                f"shape-keeping layers.") from None
            for part, out in zip(parts, outs):
                part.append(out.double().numpy())
    return (*(np.concatenate(p) for p in parts), wrapped.columns or [])
