"""`edge-trgl evaluate`: test accuracy of an exported ONNX model (onnxruntime, no torch) or of a
run directory's best module (PyTorch)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

HELP = "test accuracy of an exported model (MODEL.onnx, torch-free) or of a run directory"


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help=HELP, description=HELP + ".", allow_abbrev=False)
    p.add_argument("model", metavar="RUN_DIR|MODEL.onnx",
                   help="a run directory, or model.onnx (or the folder) from `edge-trgl export`")
    p.add_argument("--data", help="dataset: synthetic, cifar10 or mnist (default: the one the "
                   "model was trained on)")
    p.add_argument("--data-dir", metavar="DIR",
                   help="directory of the dataset files (default: as in training)")
    p.add_argument("--module", type=int, metavar="K", help="run directory: evaluate module K "
                   "instead of the best one")
    p.add_argument("--threads", type=int, metavar="N", help="onnxruntime / torch threads "
                   "(default: all cores)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def _test_options(meta: dict, data: str | None, data_dir: str | None) -> tuple[str, dict]:
    """The dataset a model's model.json names (with --data / --data-dir overrides) and the
    options that choose its test split as training did."""
    from ..errors import UserError
    ds = meta.get("dataset") or {}
    name = data or ds.get("name")
    if name is None:
        raise UserError("This ONNX model has no model.json beside it that names its dataset; "
                        "give --data (synthetic, cifar10 or mnist) and --data-dir.")
    same = name == ds.get("name")
    return name, {"data_dir": data_dir or (ds.get("data_dir") if same else None),
                  "seed": ds.get("seed", 0) if same else 0,
                  "synthetic_train": ds.get("synthetic_train", 4000) if same else 4000,
                  "synthetic_test": ds.get("synthetic_test", 1000) if same else 1000,
                  "test_fraction": ds.get("test_fraction", 1.0) if same else 1.0,
                  "image_size": ds.get("image_size") if same else None}


class StreamedTest:
    """The test split a few MB at a time, from the dataset's stream (data/stream.stream_for, the
    selection the one-time conversion of a run uses): the device holds one chunk of images, never
    the dataset (a 20,000-image folder at 96 px is 550 MB decoded), and reads no train image
    (a dataset registered without a streaming loader is loaded whole, as before)."""

    def __init__(self, meta: dict, data: str | None, data_dir: str | None):
        from types import SimpleNamespace

        from ..data.stream import stream_for
        name, options = _test_options(meta, data, data_dir)
        sel = stream_for(SimpleNamespace(data=name, train_fraction=1.0, val_fraction=0.0,
                                         **options))
        self.stream, self.name = sel.stream, sel.name
        self.in_shape = tuple(sel.stream.image_shape)
        self.num_classes = len(sel.stream.class_names)
        self.keep = np.zeros(len(sel.stream.test_labels), dtype=bool)
        self.keep[sel.test] = True
        self.count = int(self.keep.sum())

    def chunks(self):
        start = 0
        for images, labels in self.stream.chunks("test"):
            mask = self.keep[start:start + len(labels)]
            start += len(labels)
            if mask.any():
                yield np.asarray(images)[mask], np.asarray(labels)[mask]


def run(args) -> int:
    from ..api import check_target, is_onnx_model
    from ..errors import UserError
    target = Path(args.model)
    check_target(target, "evaluate")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be at least 1, not {args.threads}.")
    if is_onnx_model(target):
        from ..deploy_runtime import OrtModel
        if args.module is not None:
            raise UserError("--module applies to run directories; an exported model is one module.")
        model = OrtModel(target, args.threads)  # model.json, export.json and checksums checked
        dataset = StreamedTest(model.meta, args.data, args.data_dir)
        reported = model.report.get("test_acc_run") if model.report else None
        kind = f"ONNX model {model.path} (onnxruntime)"
    else:
        from ..export import run_model
        if args.data is not None:
            raise UserError("A run directory is evaluated on its own dataset; --data applies to "
                            "ONNX models (use --data-dir if the run's data moved).")
        if args.threads:
            import torch
            torch.set_num_threads(args.threads)
        model, fin, dataset, k = run_model(target, args.module, args.data_dir)
        reported = fin.modules[str(k)].get("test_acc")
        kind = f"module {k} of the run in {target} (PyTorch, fp32)"
    if tuple(dataset.in_shape) != tuple(model.in_shape) or dataset.num_classes != model.num_classes:
        raise UserError(f"The {dataset.name} test set has images of shape {dataset.in_shape} and "
                        f"{dataset.num_classes} classes, but the model takes {model.in_shape} and "
                        f"has {model.num_classes} classes: it was trained on other data.")
    chunks = (dataset.chunks() if isinstance(dataset, StreamedTest)
              else [(dataset.test.images, dataset.test.labels)])
    correct, count, detection = 0, 0, []
    detect = getattr(model, "detector", None) is not None  # export --detect
    for images, labels in chunks:
        count += len(labels)
        if detect:  # one pass gives the logits and the scores (false alarms on clean data)
            from ..deploy_runtime import check_logits
            from ..detect_runtime import logits_and_scores
            logits, scores = logits_and_scores(model, images)
            correct += int((check_logits(logits, model).argmax(1) == labels).sum())
            detection.append(scores)
        else:
            correct += round(accuracy_of(model, images, labels) * len(labels))
    acc = correct / count if count else 0.0
    result = {"model": str(target), "evaluated": kind, "data": dataset.name,
              "test_images": count, "test_acc": acc, "test_acc_run": reported}
    if detect:
        from ..detect_runtime import score_summary
        result["detection"] = score_summary(model, np.concatenate(detection) if detection
                                            else np.zeros(0))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        line = f"test accuracy {100 * acc:.2f}% on {count} {dataset.name} test images"
        if reported is not None:
            line += f" (the run reported {100 * reported:.2f}% for this module)"
        print(f"{kind}\n{line}")
        if "detection" in result:
            d = result["detection"]
            print(f"detector: flagged {d['flagged']} of {d['images']} clean test images "
                  f"({100 * d['flagged_fraction']:.1f}%, threshold {d['threshold']:.3f}), median "
                  f"abnormal score {d['median_score']:.3f}")
    return 0


def accuracy_of(model, images, labels) -> float:
    from ..deploy_runtime import accuracy
    return accuracy(model, images, labels)
