"""`edge-trgl predict`: class names for image files, from an exported ONNX model (onnxruntime,
no torch) or a run directory (PyTorch)."""

from __future__ import annotations

import json

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
    from ..api import predict
    from ..deploy_runtime import format_predictions
    results = predict(args.model, args.images, top=args.top, module=args.module,
                      data_dir=args.data_dir)
    print(json.dumps(results, indent=2) if args.json else format_predictions(results))
    return 0
