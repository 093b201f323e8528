"""`edge-trgl export RUN --detect`: the exported graph also outputs the raw transport features, and
the run's detector.json travels beside model.onnx, so the device scores inputs with numpy +
onnxruntime alone (detect_runtime.py).

The graph gets a second output, `transport_features` (batch, F), computed by the same recording as
`edge-trgl detect` (features.py runs inside the traced forward, so what ONNX computes is what the
detector was fitted on); model.json's `detection` lists its columns. export.py calls this module
through three small hooks (the graph, the files, the parity check), and export.json records the
detector's checksum like every other file's.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from torch import nn

from ..detect_runtime import DETECTOR_FILE, FEATURES_OUTPUT, read_detector
from ..errors import UserError
from .features import TransportModel


class _Graph(nn.Module):
    """images -> (logits, transport features): TransportModel without the embedding, which only
    the baseline detectors read."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.transport = TransportModel(model)

    def forward(self, images):
        logits, raw, _ = self.transport(images)
        return logits, raw


class DetectionExport:
    """What the export adds for detection: the graph, detector.json's bytes, model.json's entry."""

    def __init__(self, fin, k: int, model: nn.Module, in_shape, opset: int):
        from .identity import detector_path, model_fingerprint
        path = detector_path(fin.root)
        if not path.is_file():
            raise UserError(f"--detect exports the run's detector, and the run in {fin.root} has "
                            f"none yet: fit one first with `edge-trgl detect fit {fin.root}`.")
        self.detector = read_detector(path)
        info = self.detector.spec.get("run") or {}
        if info.get("module") != k or info.get("model_fingerprint") != model_fingerprint(fin, k):
            raise UserError(f"The detector {path} was fitted on module {info.get('module')} of "
                            f"this run (or on other weights), and the export is module {k}: "
                            f"export that module (--module {info.get('module')}), or fit the "
                            f"detector again for module {k} (`edge-trgl detect fit {fin.root} "
                            f"--module {k} --force`).")
        self.detector_bytes = path.read_bytes()
        self.graph = _Graph(model).eval()
        self.in_shape, self.opset = tuple(in_shape), opset
        with torch.no_grad():
            self.graph(torch.zeros(2, *self.in_shape))
        self.columns = list(self.graph.transport.columns)
        self.description = {"output": FEATURES_OUTPUT, "columns": self.columns,
                            "detector": DETECTOR_FILE, "features": self.detector.spec.get("features"),
                            "score": "detect_runtime.py: logistic regression on the standardised "
                                     "(log-)features; flagged at or above the threshold"}

    def onnx_bytes(self) -> bytes:
        buf = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(self.graph, (torch.zeros(2, *self.in_shape),), buf, dynamo=False,
                              opset_version=self.opset, training=torch.onnx.TrainingMode.EVAL,
                              do_constant_folding=True, input_names=["images"],
                              output_names=["logits", FEATURES_OUTPUT],
                              dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"},
                                            FEATURES_OUTPUT: {0: "batch"}})
        return buf.getvalue()

    def parity(self, ort_model, images: np.ndarray) -> dict:
        """The scores of the ONNX model (onnxruntime) against the same detector on PyTorch's
        features, on a batch; a difference beyond float rounding is a broken export."""
        from ..detect_runtime import logits_and_scores
        from .features import extract
        _, onnx_scores = logits_and_scores(ort_model, images)
        _, raw, _, columns = extract(self.graph.transport.model, images)
        torch_scores = self.detector.scores(self.detector.select(raw, columns))
        diff = float(np.abs(onnx_scores - torch_scores).max()) if len(images) else 0.0
        if diff > 1e-3:
            raise RuntimeError(f"the exported detection scores differ from PyTorch's by {diff:.3g}; "
                               f"the export is broken")
        flags = self.detector.flags(onnx_scores)
        return {"batch": int(len(images)), "max_abs_score_diff_vs_torch": diff,
                "columns": len(self.columns), "threshold": self.detector.threshold,
                "flagged_clean_test_fraction": float(flags.mean()) if len(flags) else None}
