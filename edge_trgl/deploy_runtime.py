"""Run an exported edge-trgl model on the device with ONNX Runtime: numpy + onnxruntime only.

Nothing here imports torch, and nothing from edge_trgl is needed either, so this one file can be
copied next to an exported model.onnx + model.json and run on a device that has only
`pip install numpy onnxruntime` (and, to read PNG/JPEG files, `pillow`):

    python deploy_runtime.py model.onnx cat.png dog.jpg frame.npy

`edge-trgl predict` and `edge-trgl evaluate` use the same code for .onnx models.

The model's input is `images`, float32 (batch, C, H, W) holding pixel values 0..255 as read from
the image file; normalisation is part of the graph. Its output is `logits` (batch, classes).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

try:
    from edge_trgl.errors import UserError
except ImportError:  # this file was copied to a device on its own
    class UserError(Exception):
        """A readable error about the user's input."""

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def _require_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise UserError("Running an .onnx model needs ONNX Runtime: `pip install onnxruntime` "
                        "(the inference package; about 15 MB, no torch needed).") from None
    return onnxruntime


def read_sidecar(onnx_path: Path) -> dict:
    """model.json written next to model.onnx by `edge-trgl export` (class names, input shape)."""
    path = Path(onnx_path).with_suffix(".json")
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"The model description {path} cannot be read ({exc}); re-export the "
                        f"model with `edge-trgl export RUN_DIR`.") from None


class OrtModel:
    """An exported model in an onnxruntime session: images (float32 0..255 NCHW) -> logits."""

    def __init__(self, path: str | Path, threads: int | None = None):
        path = Path(path)
        if path.is_dir():
            path = path / "model.onnx"
        if not path.is_file():
            raise UserError(f"There is no ONNX model at {path}. Give the model.onnx written by "
                            f"`edge-trgl export RUN_DIR` (or the folder holding it).")
        ort = _require_onnxruntime()
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(str(path), options,
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise UserError(f"ONNX Runtime cannot load {path} ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''}). It is not a valid "
                            f"ONNX model, or was damaged; export it again.") from None
        self.path = path
        self.meta = read_sidecar(path)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        shape = self.meta.get("in_shape") or inp.shape[1:]
        if any(not isinstance(s, int) for s in shape):
            raise UserError(f"{path} has no fixed input size and no model.json beside it; "
                            f"re-export it with `edge-trgl export`.")
        self.in_shape = tuple(int(s) for s in shape)
        self.num_classes = int(self.session.get_outputs()[0].shape[-1])
        names = self.meta.get("class_names") or []
        self.class_names = list(names) if len(names) == self.num_classes else \
            [str(i) for i in range(self.num_classes)]

    def logits(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        images = np.asarray(images)
        if images.shape[1:] != self.in_shape:
            raise UserError(f"The model takes images of shape {self.in_shape} (C, H, W), got "
                            f"{images.shape[1:]}.")
        out = []
        for start in range(0, len(images), batch_size):
            batch = images[start:start + batch_size].astype(np.float32)
            out.append(self.session.run(None, {self.input_name: batch})[0])
        return np.concatenate(out) if out else np.zeros((0, self.num_classes), np.float32)


def accuracy(model, images: np.ndarray, labels: np.ndarray, batch_size: int = 256) -> float:
    """Top-1 accuracy of `model` (anything with .logits(images)) on uint8 NCHW images."""
    correct = 0
    for start in range(0, len(labels), batch_size):
        logits = model.logits(images[start:start + batch_size], batch_size)
        correct += int((logits.argmax(1) == labels[start:start + batch_size]).sum())
    return correct / max(1, len(labels))


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


# --- reading images ------------------------------------------------------------------------------

def load_image(path: str | Path, in_shape: tuple[int, int, int]) -> tuple[np.ndarray, str]:
    """One image as float32 (C, H, W) pixel values 0..255, and a note (e.g. that it was resized).

    .npy: an array of pixel values 0..255, shaped (H, W), (H, W, C) or (C, H, W), read without
    pickle. PNG/JPEG/...: read with Pillow (optional), converted to RGB or grayscale as the model
    needs, and resized to the model's input size if it differs.
    """
    path = Path(path)
    c, h, w = in_shape
    if not path.is_file():
        raise UserError(f"The image {path} does not exist.")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise UserError(f"{path} is not a readable .npy array ({exc}); save images with "
                            f"numpy.save (no pickled objects).") from None
        return _array_to_chw(arr, in_shape, path), ""
    if suffix not in IMAGE_SUFFIXES:
        raise UserError(f"{path}: unknown image type {suffix!r}. Give PNG/JPEG files (with Pillow "
                        f"installed) or .npy arrays of pixel values 0..255.")
    try:
        from PIL import Image
    except ImportError:
        raise UserError(f"Reading {path.name} needs Pillow, which is not installed: "
                        f"`pip install pillow`, or give .npy arrays of pixel values 0..255 "
                        f"shaped (H, W, C).") from None
    try:
        with Image.open(path) as img:
            img = img.convert("RGB" if c == 3 else "L")
            note = ""
            if img.size != (w, h):
                note = f"resized from {img.size[0]}x{img.size[1]} to {w}x{h}"
                img = img.resize((w, h), Image.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
    except OSError as exc:
        raise UserError(f"{path} is not a readable image ({exc}).") from None
    return _array_to_chw(arr, in_shape, path), note


def _array_to_chw(arr: np.ndarray, in_shape, path) -> np.ndarray:
    c, h, w = in_shape
    if arr.dtype.kind not in "uif" or arr.dtype == np.bool_:
        raise UserError(f"{path} holds {arr.dtype} values; expected pixel values 0..255.")
    if arr.ndim == 2 and c == 1:
        arr = arr[None]
    elif arr.ndim == 3 and arr.shape == (h, w, c):
        arr = arr.transpose(2, 0, 1)
    if arr.shape != (c, h, w):
        raise UserError(f"{path} has shape {arr.shape}; the model takes {h}x{w} images with {c} "
                        f"channel(s): give (H, W, C) = {(h, w, c)} or (C, H, W) = {(c, h, w)}.")
    return np.ascontiguousarray(arr, dtype=np.float32)


def predict_files(model, paths: list[str], top: int = 1) -> list[dict]:
    """Predictions for image files: [{"file", "class", "index", "probability", "top", "note"}]."""
    images, notes = [], []
    for p in paths:
        arr, note = load_image(p, model.in_shape)
        images.append(arr)
        notes.append(note)
    probs = softmax(model.logits(np.stack(images)))
    results = []
    for path, p, note in zip(paths, probs, notes):
        order = np.argsort(-p)[:max(1, top)]
        results.append({"file": str(path), "index": int(order[0]),
                        "class": model.class_names[order[0]], "probability": float(p[order[0]]),
                        "top": [{"class": model.class_names[i], "index": int(i),
                                 "probability": float(p[i])} for i in order],
                        "note": note})
    return results


def format_predictions(results: list[dict]) -> str:
    lines = []
    for r in results:
        others = ", ".join(f"{t['class']} {100 * t['probability']:.1f}%" for t in r["top"][1:])
        lines.append(f"{r['file']}: {r['class']} ({100 * r['probability']:.1f}%)"
                     + (f"; then {others}" if others else "")
                     + (f"  [{r['note']}]" if r["note"] else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`python deploy_runtime.py MODEL.onnx IMAGE...` on a device without edge-trgl."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2 or argv[0] in ("-h", "--help"):
        print("usage: python deploy_runtime.py MODEL.onnx IMAGE [IMAGE ...]\n"
              "Predicts the class of each image (PNG/JPEG with Pillow, or .npy pixel arrays).")
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    try:
        model = OrtModel(argv[0])
        print(format_predictions(predict_files(model, argv[1:])))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
