"""Run an exported edge-trgl model on the device with ONNX Runtime: numpy + onnxruntime only.

Nothing here imports torch, and nothing from edge_trgl is needed either, so this one file can be
copied next to an exported model (the whole export folder: model.onnx, model.json and export.json,
whose checksums vouch for the other two) and run on a device that has only
`pip install numpy onnxruntime` (and, to read PNG/JPEG files, `pillow`):

    python deploy_runtime.py model.onnx cat.png dog.jpg frame.npy

`edge-trgl predict` and `edge-trgl evaluate` use the same code for .onnx models.

The model's input is `images`, float32 (batch, C, H, W) holding pixel values 0..255 as read from
the image file; normalisation is part of the graph. Its output is `logits` (batch, classes).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import sys
import warnings
from pathlib import Path

import numpy as np

try:
    from edge_trgl.errors import UserError
except ImportError:  # this file was copied to a device on its own
    class UserError(Exception):
        """A readable error about the user's input."""

# Abnormal-input scores for an export made with --detect (numpy only, like this file); copied to a
# device, detect_runtime.py sits beside this file. Without it, models are run without scores.
try:
    from edge_trgl import detect_runtime as _detect
except ImportError:
    try:
        import detect_runtime as _detect
        _detect.UserError = UserError  # one error type for main() to catch
    except ImportError:
        _detect = None

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
# Images larger than this (decoded pixels) are refused before they are decoded: a 64-megapixel
# photo decodes to ~200 MB of RGB, and a small file can claim a huge size (a "decompression bomb").
MAX_IMAGE_PIXELS = 64 * 1024 * 1024
MODEL_FORMAT = "edge-trgl-model"
MODEL_FORMAT_VERSION = 1
REPORT = "export.json"
# what to do about a damaged or incomplete export folder
REEXPORT = ("Export the run again (`edge-trgl export RUN_DIR --force`), or copy the whole export "
            "folder again")


def _require_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise UserError("Running an .onnx model needs ONNX Runtime: `pip install onnxruntime` "
                        "(the inference package; about 15 MB, no torch needed).") from None
    return onnxruntime


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_bytes())
    except OSError as exc:
        raise UserError(f"The {what} {path} cannot be read ({exc.strerror or exc}). "
                        f"{REEXPORT}.") from None
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise UserError(f"The {what} {path} is not valid JSON ({_first_line(exc)}); it was "
                        f"damaged or edited. {REEXPORT}.") from None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    except OSError as exc:
        raise UserError(f"{path} cannot be read ({exc.strerror or exc}).") from None
    return digest.hexdigest()


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)
            and v == v and v not in (float("inf"), float("-inf")))


def _is_sha256(v) -> bool:
    return isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v)


def check_description(desc, path) -> dict:
    """Validate a model.json against what evaluate/predict read from it; return it."""
    def bad(what: str):
        raise UserError(f"The model description {path} is not valid: {what}. It was damaged or "
                        f"edited. {REEXPORT}.")
    if not isinstance(desc, dict):
        bad(f"expected a JSON object, found {type(desc).__name__}")
    if desc.get("format") != MODEL_FORMAT:
        bad(f"its format is {desc.get('format')!r}, not {MODEL_FORMAT!r}")
    version = desc.get("format_version")
    if not _is_int(version) or version < 1:
        bad(f"format_version must be a positive integer, found {version!r}")
    if version > MODEL_FORMAT_VERSION:
        raise UserError(f"The model description {path} has format version {version}; this "
                        f"edge-trgl reads version {MODEL_FORMAT_VERSION}. Update edge-trgl (or "
                        f"deploy_runtime.py) to the version that exported the model.")
    shape = desc.get("in_shape")
    if (not isinstance(shape, list) or len(shape) != 3
            or not all(_is_int(s) and 1 <= s <= 65536 for s in shape)):
        bad(f"in_shape must be [channels, height, width] (positive integers), found {shape!r}")
    n = desc.get("num_classes")
    if not _is_int(n) or not 1 <= n <= 1_000_000:
        bad(f"num_classes must be a positive integer, found {n!r}")
    names = desc.get("class_names")
    if (not isinstance(names, list) or len(names) != n
            or not all(isinstance(c, str) for c in names)):
        bad(f"class_names must be a list of {n} strings")
    inp = desc.get("input")
    if not isinstance(inp, dict) or not isinstance(inp.get("name"), str):
        bad("input must be an object with the input's name")
    ds = desc.get("dataset", {})
    if not isinstance(ds, dict):
        bad("dataset must be an object")
    for key, ok, want in (("name", lambda v: isinstance(v, str), "a string"),
                          ("data_dir", lambda v: v is None or isinstance(v, str),
                           "a string or null"),
                          ("seed", lambda v: _is_int(v) and v >= 0, "a non-negative integer"),
                          ("synthetic_train", lambda v: _is_int(v) and 1 <= v <= 10_000_000,
                           "a positive integer (at most 10 million)"),
                          ("synthetic_test", lambda v: _is_int(v) and 1 <= v <= 10_000_000,
                           "a positive integer (at most 10 million)"),
                          ("test_fraction", lambda v: _is_number(v) and 0 < v <= 1,
                           "a number in (0, 1]")):
        if key in ds and not ok(ds[key]):
            bad(f"dataset.{key} must be {want}, found {ds[key]!r}")
    return desc


def check_report(report, path) -> dict:
    """Validate an export.json against what evaluate/predict read from it; return it."""
    def bad(what: str):
        raise UserError(f"The export report {path} is not valid: {what}. It was damaged or "
                        f"edited. {REEXPORT}.")
    if not isinstance(report, dict):
        bad(f"expected a JSON object, found {type(report).__name__}")
    files = report.get("files")
    if not isinstance(files, dict):
        bad("it has no 'files' table of checksums")
    for name in ("model.onnx", "model.json"):
        entry = files.get(name)
        if not isinstance(entry, dict) or not _is_sha256(entry.get("sha256")):
            bad(f"its 'files' table has no sha256 for {name}")
        if not _is_int(entry.get("bytes")) or entry["bytes"] < 0:
            bad(f"its 'files' table has no size for {name}")
    for key in ("test_acc_run", "test_acc_onnx"):
        v = report.get(key)
        if v is not None and not (_is_number(v) and 0 <= v <= 1):
            bad(f"{key} must be an accuracy between 0 and 1 or null, found {v!r}")
    return report


def read_export(onnx_path: Path) -> tuple[dict, dict | None]:
    """(model.json, export.json) of an exported model, both validated, and model.onnx and
    model.json checked against the checksums export.json records; ({}, None) for a bare .onnx
    file with no model.json beside it."""
    onnx_path = Path(onnx_path)
    sidecar = onnx_path.with_suffix(".json")
    if not sidecar.exists():
        return {}, None
    report_path = onnx_path.parent / REPORT
    if not report_path.is_file():
        raise UserError(
            f"{onnx_path.parent} holds {onnx_path.name} and {sidecar.name} but no {REPORT}, which "
            f"`edge-trgl export` writes to vouch for the other files: the export was interrupted, "
            f"or the folder was copied only in part. {REEXPORT}.")
    report = check_report(_read_json(report_path, "export report"), report_path)
    for path, key in ((onnx_path, "model.onnx"), (sidecar, "model.json")):
        entry = report["files"][key]
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise UserError(f"{path} cannot be read ({exc.strerror or exc}).") from None
        if size != entry["bytes"] or _sha256(path) != entry["sha256"]:
            raise UserError(f"{path} does not match the checksum that {report_path} records for "
                            f"{key}: it was damaged or changed after the export. {REEXPORT}.")
    return check_description(_read_json(sidecar, "model description"), sidecar), report


def read_sidecar(onnx_path: Path) -> dict:
    """model.json written next to model.onnx by `edge-trgl export` (class names, input shape),
    validated and checked against export.json; {} when there is none."""
    return read_export(onnx_path)[0]


class OrtModel:
    """An exported model in an onnxruntime session: images (float32 0..255 NCHW) -> logits.

    Before the session is created, model.json and export.json (when model.json is there) are
    validated and the files checked against export.json's checksums (`check_export=False` skips
    the checksums: `edge-trgl export` itself, before it has written export.json); after it, the
    graph's input and output are checked against model.json (or, for a bare .onnx file, against
    what this runtime needs: one float32 image input with a fixed C x H x W, float32 logits)."""

    def __init__(self, path: str | Path, threads: int | None = None, *, check_export: bool = True):
        path = Path(path)
        if path.is_dir():
            if not (path / "model.onnx").exists():
                raise UserError(f"The folder {path} holds no model.onnx. Give the model.onnx "
                                f"written by `edge-trgl export RUN_DIR` (or the folder holding "
                                f"it).")
            path = path / "model.onnx"
        if not path.is_file():
            raise UserError(f"There is no ONNX model at {path}"
                            + (" (it is not a regular file)" if path.exists() else "")
                            + ". Give the model.onnx written by `edge-trgl export RUN_DIR` (or the "
                            "folder holding it).")
        if check_export:
            self.meta, self.report = read_export(path)
        else:
            sidecar = path.with_suffix(".json")
            self.meta = (check_description(_read_json(sidecar, "model description"), sidecar)
                         if sidecar.exists() else {})
            self.report = None
        ort = _require_onnxruntime()
        options = ort.SessionOptions()
        options.log_severity_level = 3  # ORT's own warnings would print below our errors
        if threads:
            options.intra_op_num_threads = int(threads)
        try:
            # (on some load errors onnxruntime prints an "EP Error ... falling back" banner to
            # stdout and retries; the error that follows says it all)
            with contextlib.redirect_stdout(io.StringIO()):
                self.session = ort.InferenceSession(str(path), options,
                                                    providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise UserError(f"ONNX Runtime cannot load {path} ({_first_line(exc)}). It is not a "
                            f"valid ONNX model, or was damaged; export it again.") from None
        self.path = path
        self.input_name, self.in_shape, self.num_classes = self._check_signature()
        names = self.meta.get("class_names") or []
        self.class_names = list(names) if len(names) == self.num_classes else \
            [str(i) for i in range(self.num_classes)]
        self.detector = _detect.attach(self) if _detect is not None else None

    def _check_signature(self) -> tuple[str, tuple[int, int, int], int]:
        """The graph's one input and first output against model.json (or, without one, against
        what this runtime can feed and read)."""
        path, meta = self.path, self.meta
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()

        def foreign(what: str):
            if meta:
                raise UserError(
                    f"{path} does not match the model description {path.with_suffix('.json')} "
                    f"beside it: {what}. The folder mixes files of different models. {REEXPORT}.")
            raise UserError(
                f"{path} is not an image classifier exported by `edge-trgl export`: {what}. "
                f"`edge-trgl predict` and `evaluate` run such models (one float32 input 'images' "
                f"of shape (batch, C, H, W) holding pixel values 0..255, one float32 output "
                f"'logits' of shape (batch, classes)); give one, with the model.json and "
                f"export.json that export wrote beside it.")
        if len(inputs) != 1:
            foreign(f"it has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}), not one")
        if not outputs:
            foreign("it has no outputs")
        inp, out = inputs[0], outputs[0]
        if inp.type != "tensor(float)":
            foreign(f"its input {inp.name!r} is {inp.type}, not tensor(float)")
        if out.type != "tensor(float)":
            foreign(f"its output {out.name!r} is {out.type}, not tensor(float)")
        if len(inp.shape or []) != 4:
            foreign(f"its input {inp.name!r} has shape {inp.shape}, not (batch, C, H, W)")
        if len(out.shape or []) != 2:
            foreign(f"its output {out.name!r} has shape {out.shape}, not (batch, classes)")
        dims = list(inp.shape[1:])
        want_in = meta["input"]["name"] if meta else "images"
        want_out = (meta.get("output") or {}).get("name") if meta else "logits"
        if inp.name != want_in:
            foreign(f"its input is named {inp.name!r}, not {want_in!r}")
        if isinstance(want_out, str) and out.name != want_out:
            foreign(f"its output is named {out.name!r}, not {want_out!r}")
        if meta:
            want = meta["in_shape"]
            if any(isinstance(d, int) and d != w for d, w in zip(dims, want)):
                foreign(f"its input takes (C, H, W) = {tuple(dims)}, not {tuple(want)}")
            classes = out.shape[-1]
            if isinstance(classes, int) and classes != meta["num_classes"]:
                foreign(f"it outputs {classes} classes, not {meta['num_classes']}")
            return inp.name, tuple(want), int(meta["num_classes"])
        if not all(isinstance(d, int) and d > 0 for d in dims):
            raise UserError(f"{path} has no fixed input size ({inp.name!r} has shape {inp.shape}) "
                            f"and no model.json beside it to give one; re-export it with "
                            f"`edge-trgl export`, or copy model.json next to it.")
        if dims[0] not in (1, 3):
            foreign(f"its input has {dims[0]} channels; images have 1 (grayscale) or 3 (RGB)")
        classes = out.shape[-1]
        if not isinstance(classes, int) or classes < 1:
            foreign(f"its output {out.name!r} has no fixed number of classes ({out.shape})")
        return inp.name, tuple(int(d) for d in dims), int(classes)

    def logits(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        images = np.asarray(images)
        if images.shape[1:] != self.in_shape:
            raise UserError(f"The model takes images of shape {self.in_shape} (C, H, W), got "
                            f"{images.shape[1:]}.")
        out = []
        for start in range(0, len(images), batch_size):
            batch = np.ascontiguousarray(images[start:start + batch_size], dtype=np.float32)
            try:
                result = self.session.run(None, {self.input_name: batch})[0]
            except Exception as exc:  # onnxruntime's own error types
                raise UserError(f"ONNX Runtime failed to run {self.path} on a batch of "
                                f"{len(batch)} image(s) ({_first_line(exc)}). The model is "
                                f"damaged or not an edge-trgl export; export it again.") from None
            result = np.asarray(result)
            if result.shape != (len(batch), self.num_classes):
                want = (len(batch), self.num_classes)
                raise UserError(f"{self.path} returned logits of shape {result.shape} for "
                                f"{len(batch)} image(s), expected {want}; it is not the model "
                                f"its description says. Export it again.")
            out.append(result)
        return np.concatenate(out) if out else np.zeros((0, self.num_classes), np.float32)


def check_logits(logits: np.ndarray, model) -> np.ndarray:
    """Refuse non-finite logits (a damaged model) instead of predicting a class from them."""
    if not np.isfinite(logits).all():
        where = getattr(model, "path", None) or "the model"
        raise UserError(f"{where} produced NaN or infinite outputs for valid images: its weights "
                        f"are damaged (or it was trained into divergence). Export the run again, "
                        f"or retrain.")
    return logits


def accuracy(model, images: np.ndarray, labels: np.ndarray, batch_size: int = 256) -> float:
    """Top-1 accuracy of `model` (anything with .logits(images)) on uint8 NCHW images."""
    correct = 0
    for start in range(0, len(labels), batch_size):
        logits = check_logits(model.logits(images[start:start + batch_size], batch_size), model)
        correct += int((logits.argmax(1) == labels[start:start + batch_size]).sum())
    return correct / max(1, len(labels))


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


# --- reading images ------------------------------------------------------------------------------

def check_image_path(path: str | Path) -> Path:
    """An existing regular file with a suffix this reader knows (the cheap checks of load_image,
    made before a model is loaded)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder, not an image file. Give the image files themselves "
                        f"(e.g. {path}/*.png); predict takes PNG/JPEG files or .npy arrays.")
    if not path.exists():
        raise UserError(f"The image {path} does not exist.")
    if not path.is_file():
        raise UserError(f"The image {path} is not a regular file; give PNG/JPEG files or .npy "
                        f"arrays.")
    suffix = path.suffix.lower()
    if suffix != ".npy" and suffix not in IMAGE_SUFFIXES:
        raise UserError(f"{path}: unknown image type {suffix!r}. Give PNG/JPEG files (with Pillow "
                        f"installed) or .npy arrays of pixel values 0..255.")
    return path


def check_image_paths(paths) -> None:
    for path in paths:
        check_image_path(path)


class ImageTooLarge(Exception):
    """An image over MAX_IMAGE_PIXELS: `size` is its (width, height), or None when Pillow's own
    decompression-bomb limit refused it before its size was known."""

    def __init__(self, size: tuple[int, int] | None):
        super().__init__(size)
        self.size = size


def open_image(Image, path: Path):
    """`path` opened with Pillow's `Image` (only its header read so far), refused with
    ImageTooLarge before anything is decoded when it claims more than MAX_IMAGE_PIXELS pixels.
    Pillow's other errors (OSError, SyntaxError, ValueError, ...) pass through, for the caller
    to word. Shared by predict (here) and the image-folder dataset (edge_trgl/data/folder.py)."""
    try:
        with warnings.catch_warnings():
            # Pillow's own limit (a warning, then an error, at ~89 / 179 megapixels) is above ours
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    except Image.DecompressionBombError:
        raise ImageTooLarge(None) from None
    width, height = img.size
    if width * height > MAX_IMAGE_PIXELS:
        img.close()
        raise ImageTooLarge((width, height))
    return img


def fit_image(Image, img, w: int, h: int):
    """`img` upright (its EXIF orientation applied), scaled so that it covers w x h with its
    aspect ratio kept, and centre-cropped to w x h: how `--data folder` prepares training images
    (data/folder.py uses this function), so a photo is seen at prediction as in training, not
    squeezed. Returns (image, note), the note empty when nothing changed."""
    from PIL import ImageOps
    img = ImageOps.exif_transpose(img) or img
    iw, ih = img.size
    if (iw, ih) == (w, h):
        return img, ""
    scale = max(w / iw, h / ih)
    nw, nh = max(w, round(iw * scale)), max(h, round(ih * scale))
    if (nw, nh) != (iw, ih):
        img = img.resize((nw, nh), getattr(Image, "Resampling", Image).BILINEAR)
    left, top = (nw - w) // 2, (nh - h) // 2
    if (nw, nh) != (w, h):
        img = img.crop((left, top, left + w, top + h))
    return img, f"resized and centre-cropped from {iw}x{ih} to {w}x{h}"


def load_image(path: str | Path, in_shape: tuple[int, int, int]) -> tuple[np.ndarray, str]:
    """One image as float32 (C, H, W) pixel values 0..255, and a note (e.g. that it was resized).

    .npy: an array of pixel values 0..255, shaped (H, W), (H, W, C) or (C, H, W), read without
    pickle (and memory-mapped until its shape is checked, so a huge file is refused cheaply).
    PNG/JPEG/...: read with Pillow (optional), converted to RGB or grayscale as the model needs,
    turned upright, resized (aspect kept) and centre-cropped to the model's input size
    (fit_image, as training prepares folder images); images of more than MAX_IMAGE_PIXELS
    pixels are refused before they are decoded. NaN, infinite or out-of-range values are refused.
    """
    path = check_image_path(path)
    c, h, w = in_shape
    if path.suffix.lower() == ".npy":
        return _read_npy(path, in_shape)
    try:
        from PIL import Image
    except ImportError:
        raise UserError(f"Reading {path.name} needs Pillow, which is not installed: "
                        f"`pip install pillow`, or give .npy arrays of pixel values 0..255 "
                        f"shaped (H, W, C).") from None
    too_large = (f"images of up to {MAX_IMAGE_PIXELS / 1e6:.0f} megapixels are read (a larger one "
                 f"takes hundreds of MB to decode, only to be shrunk to {w}x{h}). Resize it "
                 f"first, e.g. to {w}x{h}")
    try:
        img = open_image(Image, path)
    except ImageTooLarge as exc:
        if exc.size is None:
            raise UserError(f"{path} is too large (above Pillow's decompression-bomb limit); "
                            f"{too_large}.") from None
        width, height = exc.size
        raise UserError(f"{path} is {width}x{height} pixels "
                        f"({width * height / 1e6:.0f} megapixels); {too_large}.") from None
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError...
        raise UserError(f"{path} is not a readable image ({_first_line(exc)}). Give an intact "
                        f"PNG/JPEG file, or a .npy array of pixel values 0..255.") from None
    try:
        with img:
            img, note = fit_image(Image, img, w, h)
            img = img.convert("RGB" if c == 3 else "L")
            arr = np.asarray(img, dtype=np.uint8)
    except UserError:
        raise
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError...
        raise UserError(f"{path} is not a readable image ({_first_line(exc)}). Give an intact "
                        f"PNG/JPEG file, or a .npy array of pixel values 0..255.") from None
    return _array_to_chw(arr, in_shape, path), note


def _read_npy(path: Path, in_shape) -> tuple[np.ndarray, str]:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:  # ValueError (pickled objects, bad header), OSError, EOFError...
        raise UserError(f"{path} is not a readable .npy array ({_first_line(exc)}); save images "
                        f"with numpy.save (no pickled objects).") from None
    if not isinstance(arr, np.ndarray):  # an .npz archive named .npy
        raise UserError(f"{path} is not a .npy array (it is an .npz archive); save each image "
                        f"with numpy.save.")
    floats = arr.dtype.kind == "f"
    try:
        out = _array_to_chw(arr, in_shape, path)
    finally:
        del arr
    # (a common slip: an image scaled to 0..1 would be classified as a nearly black one)
    note = ("its values lie in 0..1; the model takes pixel values 0..255"
            if floats and 0 < out.max() <= 1 else "")
    return out, note


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
    try:
        out = np.array(arr, dtype=np.float64)  # a copy: the memory map is released after this
    except (OSError, ValueError) as exc:  # a truncated memory-mapped file
        raise UserError(f"{path} cannot be read ({_first_line(exc)}).") from None
    if not np.isfinite(out).all():
        raise UserError(f"{path} holds NaN or infinite values; the model takes pixel values "
                        f"0..255. Fix the array (e.g. numpy.nan_to_num) before predicting.")
    low, high = float(out.min()), float(out.max())
    if low < 0 or high > 255:
        raise UserError(f"{path} holds values from {low:g} to {high:g}; the model takes pixel "
                        f"values 0..255 (as read from an 8-bit image file). Rescale the array to "
                        f"0..255 first.")
    return np.ascontiguousarray(out, dtype=np.float32)


def predict_files(model, paths: list[str], top: int = 1) -> list[dict]:
    """Predictions for image files: [{"file", "class", "index", "probability", "top", "note"}]."""
    images, notes = [], []
    for p in paths:
        arr, note = load_image(p, model.in_shape)
        images.append(arr)
        notes.append(note)
    detector = getattr(model, "detector", None)
    if detector is not None:  # logits and abnormal scores from one pass (export --detect)
        logits, scores = _detect.logits_and_scores(model, np.stack(images))
    else:
        logits, scores = model.logits(np.stack(images)), None
    probs = softmax(check_logits(logits, model))
    results = []
    for n, (path, p, note) in enumerate(zip(paths, probs, notes)):
        order = np.argsort(-p)[:max(1, top)]
        results.append({"file": str(path), "index": int(order[0]),
                        "class": model.class_names[order[0]], "probability": float(p[order[0]]),
                        "top": [{"class": model.class_names[i], "index": int(i),
                                 "probability": float(p[i])} for i in order],
                        "note": note})
        if scores is not None:
            results[-1].update(abnormal_score=float(scores[n]),
                               abnormal=bool(scores[n] >= detector.threshold))
    return results


def format_predictions(results: list[dict]) -> str:
    lines = []
    for r in results:
        others = ", ".join(f"{t['class']} {100 * t['probability']:.1f}%" for t in r["top"][1:])
        lines.append(f"{r['file']}: {r['class']} ({100 * r['probability']:.1f}%)"
                     + (f"; then {others}" if others else "")
                     + (f"  [{r['note']}]" if r["note"] else "")
                     + (f"  abnormal score {r['abnormal_score']:.3f}"
                        + (" FLAGGED" if r["abnormal"] else "") if "abnormal_score" in r else ""))
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
