"""`edge-trgl predict`: class names for image files, from an exported ONNX model (onnxruntime,
no torch) or a run directory (PyTorch)."""

from __future__ import annotations

import json
from pathlib import Path

HELP = "predict the classes of image files (PNG/JPEG with Pillow, or .npy arrays)"


def add_parser(sub) -> None:
    p = sub.add_parser("predict", help=HELP, allow_abbrev=False,
                       description=HELP + ". Images are converted to the model's channels and "
                       "resized to its input size; .npy arrays hold pixel values 0..255 shaped "
                       "(H, W, C) or (C, H, W).")
    p.add_argument("model", metavar="MODEL.onnx|RUN_DIR",
                   help="model.onnx (or its folder) from `edge-trgl export`, or a run directory")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG/JPEG, or .npy "
                   "arrays of pixel values 0..255)")
    p.add_argument("--top", type=int, default=1, metavar="N", help="list the N most likely "
                   "classes (default 1)")
    p.add_argument("--module", type=int, metavar="K", help="run directory: module K, not the best")
    p.add_argument("--data-dir", metavar="DIR",
                   help="run directory: where its dataset is now, if it moved")
    p.add_argument("--json", action="store_true", help="print the predictions as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..deploy_runtime import check_image_paths, format_predictions, predict_files
    from ..errors import UserError
    from .evaluate import check_target, is_onnx_model
    target = Path(args.model)
    check_target(target, "predict")
    if args.top < 1:
        raise UserError(f"--top must be at least 1, not {args.top}.")
    check_image_paths(args.images)  # before the model is loaded (a run directory takes seconds)
    if is_onnx_model(target):
        from ..deploy_runtime import OrtModel
        if args.module is not None or args.data_dir is not None:
            raise UserError(f"--{'module' if args.module is not None else 'data-dir'} applies to "
                            f"run directories; an exported model is one module and needs no "
                            f"dataset.")
        model = OrtModel(target)
    else:
        from ..export import run_model
        model = run_model(target, args.module, args.data_dir)[0]
    results = predict_files(model, args.images, top=args.top)
    print(json.dumps(results, indent=2) if args.json else format_predictions(results))
    return 0
