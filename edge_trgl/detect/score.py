"""`edge-trgl detect score`: the abnormal score of each input, from a run directory (PyTorch, with
RUN/detector.json) or from an export made with `--detect` (onnxruntime, no torch).

Inputs are image files (PNG/JPEG with Pillow, or .npy of one image, read as `predict` reads them)
or .npy batches (N, C, H, W) or (N, H, W, C) of pixel values 0..255 (floats allowed: an
adversarial image need not be 8-bit).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import UserError


def _read_inputs(paths, in_shape) -> tuple[np.ndarray, list[str]]:
    from ..deploy_runtime import check_image_path, load_image
    c, h, w = in_shape
    images, names = [], []
    for p in paths:
        path = check_image_path(p)
        if path.suffix.lower() == ".npy":
            try:
                arr = np.load(path, allow_pickle=False)
            except Exception as exc:  # ValueError (pickled objects), OSError, EOFError...
                raise UserError(f"{path} is not a readable .npy array ({type(exc).__name__}); "
                                f"save images with numpy.save (no pickled objects).") from None
            if isinstance(arr, np.ndarray) and arr.ndim == 4:
                if arr.shape[1:] == (h, w, c) and arr.shape[1:] != (c, h, w):
                    arr = arr.transpose(0, 3, 1, 2)
                if arr.shape[1:] != (c, h, w) or arr.dtype.kind not in "uif":
                    raise UserError(f"{path} holds a batch of shape {arr.shape} ({arr.dtype}); "
                                    f"the model takes (N, {c}, {h}, {w}) or (N, {h}, {w}, {c}) "
                                    f"pixel values 0..255.")
                arr = arr.astype(np.float64)
                if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 255:
                    raise UserError(f"{path} holds values outside 0..255 (or NaN); the model "
                                    f"takes pixel values 0..255.")
                images.extend(arr.astype(np.float32))
                names.extend(f"{path}[{i}]" for i in range(len(arr)))
                continue
        arr, _ = load_image(path, in_shape)
        images.append(arr)
        names.append(str(path))
    return np.stack(images), names


def score_inputs(target, paths, *, module=None, data_dir=None, threads=None) -> list[dict]:
    """[{"input", "class", "index", "score", "flagged"}] for every input image."""
    from ..api import check_target, is_onnx_model
    from ..deploy_runtime import check_image_paths
    if not paths:
        raise UserError("No inputs were given; give --images FILE... (PNG/JPEG, .npy images or "
                        ".npy batches).")
    target = Path(target)
    check_target(target, "detect score")
    check_image_paths(paths)
    if threads is not None and threads < 1:
        raise UserError(f"--threads must be at least 1, not {threads}.")
    if is_onnx_model(target):
        from ..deploy_runtime import OrtModel
        from ..detect_runtime import logits_and_scores
        if module is not None or data_dir is not None:
            raise UserError("--module and --data-dir apply to run directories; an export is one "
                            "module and needs no dataset.")
        model = OrtModel(target, threads)
        if getattr(model, "detector", None) is None:
            raise UserError(f"The export {model.path.parent} has no detector: export the run with "
                            f"`edge-trgl export RUN_DIR --detect` (after `edge-trgl detect fit "
                            f"RUN_DIR`).")
        images, names = _read_inputs(paths, model.in_shape)
        logits, scores = logits_and_scores(model, images)
        detector, classes = model.detector, model.class_names
    else:
        images, names, logits, scores, detector, classes = _score_run(target, paths, module,
                                                                      data_dir, threads)
    return [{"input": n, "index": int(i), "class": classes[int(i)], "score": float(s),
             "flagged": bool(s >= detector.threshold)}
            for n, i, s in zip(names, logits.argmax(1), scores)]


def _score_run(target: Path, paths, module, data_dir, threads):
    from ..detect_runtime import read_detector
    from ..export import run_model
    from .features import extract
    from .identity import detector_path, model_fingerprint
    path = detector_path(target)
    if not path.is_file():
        raise UserError(f"The run in {target} has no detector yet; fit one with `edge-trgl detect "
                        f"fit {target}`.")
    detector = read_detector(path)
    run_info = detector.spec.get("run") or {}
    if threads:
        import torch
        torch.set_num_threads(threads)
    model, fin, _, k = run_model(target, module if module is not None else run_info.get("module"),
                                 data_dir)
    if run_info.get("model_fingerprint") != model_fingerprint(fin, k):
        raise UserError(f"The detector {path} was fitted on another network than module {k} of "
                        f"the run in {target} (its weights' checksums differ). Fit it again with "
                        f"`edge-trgl detect fit {target} --force`.")
    images, names = _read_inputs(paths, model.in_shape)
    logits, raw, _, columns = extract(model.model, images)
    scores = detector.scores(detector.select(raw, columns))
    return images, names, logits, scores, detector, model.class_names


def format_scores(results: list[dict], threshold: float | None = None) -> str:
    return "\n".join(f"{r['input']}: {r['class']}, abnormal score {r['score']:.3f}"
                     + ("  FLAGGED" if r["flagged"] else "") for r in results)
