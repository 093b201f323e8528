"""The Python API: plan, train, export and predict, as the `edge-trgl` subcommands do them.

    from edge_trgl import TrainConfig, train, plan, export, predict

    cfg = TrainConfig(data="synthetic", model="resnet8", epochs=1, out="runs/demo")
    summary = train(cfg)                     # the run directory is summary["run_dir"]
    report = export(summary["run_dir"])      # RUN_DIR/export/: model.onnx, model.json, ...
    results = predict(report["out"], ["cat.png"])

Every function raises :class:`edge_trgl.errors.UserError` (one readable paragraph) for bad input,
as the CLI does; the CLI's subcommands are thin layers over these functions. This module imports
nothing heavy at import time (torch is imported by the functions that need it).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Callable, Iterable

from .config import TrainConfig
from .errors import UserError

__all__ = ["TrainConfig", "train", "plan", "compare", "export", "predict", "open_model"]


def train(cfg: TrainConfig, resume: str | os.PathLike | None = None,
          prepare_only: bool = False) -> dict:
    """Train a new run as ``cfg`` says (or, with ``resume``, continue the run in that directory;
    its own config.json is used) and return its summary, also written to RUN_DIR/summary.json.

    Without a memory budget the run trains in this process (torch is imported here). With one
    (``cfg.mem_budget`` or ``cfg.profile``, or a resumed run planned with one) the whole command
    keeps it: this process stays torch-free, plans, and trains in a child process inside a
    memory cgroup of the budget's size where one can be created. ``cfg`` may be changed (a
    profile's defaults, the default ``out``): ``summary["run_dir"]`` is where the run went.
    ``prepare_only``: plan and write the run directory, train nothing; returns ``{"run_dir",
    "plan"}``, and ``train(cfg, resume=run_dir)`` trains it later.

    The summary's keys that matter: ``run_dir``; ``best_module`` (the module with the best
    validation accuracy, or test accuracy without a validation split) with its ``best_val_acc``
    and ``best_test_acc`` (fractions, 0..1); ``modules``, one row a module: ``module``,
    ``blocks`` ([first, end) block indices), ``val_acc``, ``test_acc``, ``measured_peak_bytes``
    (and ``estimated_peak_bytes`` / ``estimate_error`` where the plan estimated it);
    ``peak_rss_bytes`` (the training process's peak RSS), ``budget_bytes`` and
    ``estimated_peak_bytes`` (None without a budget), ``over_budget``, ``batch_size``,
    ``seconds``; a budgeted run adds ``whole_command_peak_bytes`` and ``whole_command`` (every
    process of the command, as its memory cgroup counted them). ``format_summary(summary)``
    (edge_trgl.summary) is the table the CLI prints.
    """
    from .train import train as train_run
    return train_run(cfg, resume=resume, prepare_only=prepare_only)


def plan(cfg: TrainConfig) -> dict:
    """Plan a run exactly as `edge-trgl plan` (and `train`) would, without training or writing
    anything; return the plan.

    With a memory budget (``cfg.mem_budget`` or ``cfg.profile``) the planner measures the blocks
    in child processes (cached for the next run) and picks the module split and batch size that
    fit; without one, the grouping is the one the config gives (default 4 modules). ``cfg`` is
    not changed (the plan is made on a copy: a profile's defaults and the default ``out`` are
    applied there).

    The plan dict holds, among others: ``splits`` ([first block, end block) of each module),
    ``batch_size``, ``views`` (augmented views cached for later modules), ``cache_dtype``,
    ``budget_bytes`` and ``estimated_peak_bytes`` (None without a budget), ``module_estimates``
    (one dict a module, budgeted plans only), and ``whole_command``: the memory the planning
    command itself used (``whole_command_peak_bytes``, how the budget was enforced).
    ``edge_trgl.memory.planner.format_plan(plan)`` is the table `edge-trgl plan` prints.
    """
    from .driver import CommandBudget
    from .memory.measure import peak_rss_bytes
    from .profile_target import apply_profile_target
    from .setup import check_new, plan_new
    from .targets import get_target
    cfg = _copy(cfg)
    apply_profile_target(cfg)  # a profile's backend / device choose the target
    target = get_target(cfg)
    budget = check_new(cfg, target, new_run=False)
    with CommandBudget(target.host_limit(budget)) as guard:
        result, _ = plan_new(cfg, target, budget, show=False)
        result["whole_command"] = guard.report(peak_rss_bytes(), 0)
    return result


def compare(cfg: TrainConfig) -> dict:
    """`edge-trgl plan --compare`: plan module-wise, checkpointed and plain end-to-end training
    for ``cfg``'s memory budget (required) and say which fits best; ``cfg`` is not changed.
    ``edge_trgl.choose.format_comparison(result)`` is the text the CLI prints."""
    from .choose import compare as compare_plans
    from .driver import CommandBudget
    from .profile_target import apply_profile_target
    from .setup import check_new
    from .targets import get_target
    cfg = _copy(cfg)
    apply_profile_target(cfg)  # a profile's backend / device choose the target
    target = get_target(cfg)
    budget = check_new(cfg, target, new_run=False)
    if budget is None:
        raise UserError("--compare chooses what fits a memory budget: give --mem-budget (or "
                        "--profile).")
    with CommandBudget(target.host_limit(budget)):
        return compare_plans(cfg, target, budget)


def export(run_dir: str | os.PathLike, module: int | None = None,
           out: str | os.PathLike | None = None, data_dir: str | os.PathLike | None = None, *,
           force: bool = False, log: Callable[[str], None] | None = None,
           detect: bool = False) -> dict:
    """Export a finished run's best module (or ``module``) for the device; return the report,
    which is also written to OUT/export.json.

    ``out`` defaults to RUN_DIR/export; an earlier export there is replaced only with ``force``
    (the new one is staged beside it and swapped in once complete). ``data_dir``: where the run's
    dataset is now, if it moved (the test accuracy is measured on it). ``log`` receives progress
    lines (default: none). Needs the onnx and onnxruntime packages (the ``ort`` extra).

    The report's keys that matter: ``out`` (the export folder: model.onnx, model.json with the
    architecture, input shape and ``class_names``, model.safetensors, model.pt, export.json),
    ``module`` and ``selected_by``, ``test_acc_onnx`` (the ONNX model's test accuracy in
    onnxruntime) next to ``test_acc_run`` and ``val_acc_run`` (what the run measured),
    ``parity`` (ONNX vs PyTorch logits), ``parameters``, ``onnx_bytes`` and ``files`` (bytes and
    sha256 of each file).
    """
    import importlib
    for package in ("onnx", "onnxruntime"):
        try:
            importlib.import_module(package)
        except ImportError as exc:
            raise UserError(f"Exporting needs the onnx and onnxruntime packages ({exc.name} is "
                            f"missing): `pip install onnx onnxruntime`, or the project's `ort` "
                            f"extra.") from None
    from .export import export_run
    return export_run(run_dir, module, None if out is None else os.fspath(out),
                      None if data_dir is None else os.fspath(data_dir),
                      log=log or (lambda msg: None), force=force, detect=detect)


def open_model(model: str | os.PathLike, *, module: int | None = None,
               data_dir: str | os.PathLike | None = None, command: str = "predict"):
    """The model that ``predict`` runs: an exported model.onnx (or its folder) in onnxruntime,
    torch-free, or a run directory's best module (or ``module``) in PyTorch. Both have
    ``in_shape`` (C, H, W), ``num_classes``, ``class_names`` and ``logits(images)`` (float32
    N x C x H x W pixel values 0..255 -> N x classes)."""
    target = Path(model)
    check_target(target, command)
    if is_onnx_model(target):
        from .deploy_runtime import OrtModel
        if module is not None or data_dir is not None:
            raise UserError(f"--{'module' if module is not None else 'data-dir'} applies to "
                            f"run directories; an exported model is one module and needs no "
                            f"dataset.")
        return OrtModel(target)
    from .export import run_model
    return run_model(target, module, None if data_dir is None else os.fspath(data_dir))[0]


def predict(model, images: str | os.PathLike | Iterable[str | os.PathLike], *, top: int = 1,
            module: int | None = None, data_dir: str | os.PathLike | None = None) -> list[dict]:
    """The classes of image files, from an exported model or a run directory.

    ``model``: model.onnx or the export folder from :func:`export` (run in onnxruntime, no
    torch), a run directory (its best module, or ``module``, in PyTorch; ``data_dir`` if its
    dataset moved), or a model :func:`open_model` returned (to predict many times without
    loading it again). ``images``: a path or a list of paths: PNG/JPEG/... (read with Pillow,
    converted to the model's channels and resized to its input size) or .npy arrays of pixel
    values 0..255 shaped (H, W, C) or (C, H, W).

    Returns one dict an image, in order: ``file``, ``class`` (the predicted class name, from the
    dataset's class names: the folder names for ``data="folder"``), ``index`` (its label),
    ``probability`` (softmax), ``top`` (the ``top`` most likely classes, each
    ``{"class", "index", "probability"}``) and ``note`` (e.g. that the image was resized; ""
    when nothing was done). ``edge_trgl.deploy_runtime.format_predictions(results)`` is the text
    `edge-trgl predict` prints.
    """
    from .deploy_runtime import check_image_paths, predict_files
    if isinstance(model, (str, os.PathLike)):
        check_target(Path(model), "predict")
    elif module is not None or data_dir is not None:
        raise UserError("module and data_dir choose what open_model loads; pass them to "
                        "open_model, not with a model that is already open.")
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise UserError(f"--top must be at least 1, not {top!r}.")
    paths = [os.fspath(images)] if isinstance(images, (str, os.PathLike)) else \
        [os.fspath(p) for p in images]
    if not paths:
        raise UserError("No images were given to predict; give one or more image files (PNG/JPEG "
                        "or .npy arrays).")
    check_image_paths(paths)  # before the model is loaded (a run directory takes seconds)
    if isinstance(model, (str, os.PathLike)):
        model = open_model(model, module=module, data_dir=data_dir)
    return predict_files(model, paths, top=top)


def is_onnx_model(path: Path) -> bool:
    """model.onnx, or an export folder (a run directory has a manifest.json instead)."""
    if path.suffix.lower() == ".onnx":
        return True
    return path.is_dir() and (path / "model.onnx").is_file() and not (path / "manifest.json").exists()


def check_target(target: Path, command: str) -> None:
    """The model argument of evaluate/predict: an existing .onnx file, export folder or run
    directory, each named as what it is when it is not usable."""
    if not target.exists():
        raise UserError(f"{target} does not exist. Give a run directory, or the model.onnx (or "
                        f"the folder) written by `edge-trgl export`.")
    if target.is_dir() and not ((target / "model.onnx").exists()
                                or (target / "manifest.json").exists()):
        raise UserError(f"The folder {target} is neither an export folder (it has no model.onnx) "
                        f"nor a run directory (it has no manifest.json). `edge-trgl {command}` "
                        f"takes the model.onnx (or the folder) written by `edge-trgl export`, or "
                        f"the --out directory of a finished `edge-trgl train`.")
    if target.is_file() and target.suffix.lower() != ".onnx":
        raise UserError(f"{target} is not an .onnx file; give the model.onnx (or the folder) "
                        f"written by `edge-trgl export`, or a run directory.")


def _copy(cfg: TrainConfig) -> TrainConfig:
    if not isinstance(cfg, TrainConfig):
        raise UserError(f"Expected a TrainConfig (from edge_trgl import TrainConfig), got "
                        f"{type(cfg).__name__}.")
    return copy.deepcopy(cfg)
