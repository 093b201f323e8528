"""Export a finished run for the device: the trained network cut after its best module.

TRGL trains every module with its own auxiliary head, so every prefix "blocks 0..end of module k +
head k" is a complete classifier; the deployed model is the one whose head has the best validation
accuracy (or the module the user names). `export_run` assembles it from the block store (checksums
verified) and writes, into one folder:

  model.onnx         opset 17, eval mode, dynamic batch; input `images` float32 (N, C, H, W) with
                     pixel values 0..255 (the normalisation is inside the graph), output `logits`
  model.safetensors  the same weights as a PyTorch state dict (InferenceModel.state_dict())
  model.pt           that state dict for torch.load(..., weights_only=True)
  model.json         the architecture: enough to rebuild the model (load_exported) and to run the
                     ONNX file (class names, input shape)
  export.json        the report: files with sizes and sha256 (evaluate/predict check model.onnx
                     and model.json against them), the output parity check, test accuracies

Trust and atomicity: every run file export reads is validated first (FinishedRun: the manifest's
shape; config.json, plan.json and summary.json against the manifest's checksums and their own
schema, which run_schema defines for export and resume alike; config.json also against the
manifest's config hash, the manifest against the plan; each weight file against its checksum as
it is loaded), and --out is checked before any work. The export is written into a
hidden staging folder beside --out and renamed into place once complete, so a killed export leaves
no model.onnx that evaluate/predict accept; an existing export is replaced only with --force.

Verification, both recorded in export.json:
- parity: on a batch of test images, the ONNX model (in onnxruntime) against (a) the same modules
  in PyTorch in fp32 and (b) the training-time computation, module by module with the feature
  cache's rounding between modules (fp16 by default) -- the max abs differences of the logits;
- accuracy: the ONNX model's test accuracy (onnxruntime, via deploy_runtime) next to the accuracy
  the run reported for that module; they differ only by the cache rounding the ONNX model leaves
  out, typically by less than 0.1 percentage point.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .config import TrainConfig
from .errors import UserError
from .run import MANIFEST, Run
from .run_schema import (Damage, Incompatible, as_dict, as_int, check_config_types,
                         check_manifest_against_plan, check_manifest_shape, check_plan_shape,
                         is_int)

FORMAT = "edge-trgl-model"
FORMAT_VERSION = 1
OPSET = 17
PARITY_BATCH = 256
# An fp32 export that differs from PyTorch by more than this (relative to the largest logit) is a
# broken export, not rounding.
PARITY_TOLERANCE = 1e-3


class Normalize(nn.Module):
    """(images - 255 * mean) / (255 * std), written exactly like data.normalize (x * scale - shift
    in float32) so the exported model sees bit-identical inputs to training's."""

    def __init__(self, mean, std):
        super().__init__()
        mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
        self.register_buffer("scale", torch.from_numpy((1.0 / (255.0 * std)).astype(np.float32)).view(-1, 1, 1))
        self.register_buffer("shift", torch.from_numpy((mean / std).astype(np.float32)).view(-1, 1, 1))

    def forward(self, images):
        return images * self.scale - self.shift


class InferenceModel(nn.Module):
    """Pixel images (0..255) -> logits: normalise, blocks 0..end of module k, head k."""

    def __init__(self, blocks, head, mean, std):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.blocks = nn.ModuleList(blocks)
        self.head = head

    def forward(self, images):
        x = self.normalize(images)
        for block in self.blocks:
            x, _ = block(x)  # the kinetic energy is a training-time quantity
        return self.head(x)


# --- reading a run -------------------------------------------------------------------------------

def _damaged(root: Path, rel: str, what: str) -> UserError:
    return UserError(f"The file {root / rel} of the run in {root} is not valid: {what}. The run is "
                     f"damaged (or was edited); restore the file from a backup, or train the run "
                     f"again.")


def _checked(root: Path, rel: str, check, *args):
    """check(*args), its Damage (run_schema) as the one-paragraph error about the file rel."""
    try:
        return check(*args)
    except Damage as exc:
        raise _damaged(root, rel, str(exc)) from None


def check_manifest(root: Path, manifest) -> dict:
    """The manifest's shape, as run_schema defines it (a wrong shape is the one-paragraph error,
    not a KeyError or TypeError later); a run of another edge-trgl version is named as such."""
    try:
        check_manifest_shape(manifest)
    except Incompatible as exc:
        raise UserError(f"The run in {root} was written by an incompatible edge-trgl version "
                        f"({exc}); export it with the version that trained it.") from None
    except Damage as exc:
        raise _damaged(root, MANIFEST, str(exc)) from None
    return manifest


def check_config(root: Path, data, manifest: dict) -> TrainConfig:
    """config.json as TrainConfig: the keys and types run_schema defines, valid values, and the
    identity hash the manifest recorded when the run started."""
    try:
        check_config_types(data)
        cfg = TrainConfig.from_json(data).validate()
    except Damage as exc:
        raise _damaged(root, "config.json", str(exc)) from None
    except UserError as exc:
        raise _damaged(root, "config.json", str(exc).rstrip(".")) from None
    except (TypeError, ValueError, AttributeError) as exc:
        raise _damaged(root, "config.json", f"{type(exc).__name__}: {exc}") from None
    if cfg.identity_hash() != manifest["config_hash"]:
        raise UserError(f"The config.json of the run in {root} does not match the config hash its "
                        f"manifest recorded when the run started: one of them was changed "
                        f"afterwards (or the run was written by another edge-trgl version). The "
                        f"weights belong to the original config; restore config.json from a "
                        f"backup. (If the dataset moved, give --data-dir instead of editing "
                        f"config.json.)")
    return cfg


def check_summary(summary, modules: dict) -> dict:
    """summary.json's best_module (export's default choice): a module the manifest records as
    trained."""
    as_dict(summary, "summary.json")
    best = summary.get("best_module")
    if best is not None:
        as_int(best, "summary.json best_module")
        rec = modules.get(str(best))
        if rec is None or (rec.get("val_acc") is None and rec.get("test_acc") is None):
            raise Damage(f"its best_module {best} is not a module the manifest records as trained")
    return summary


class FinishedRun:
    """A run directory opened read-only (export must not change a run, which may be in use).

    Every file it reads is validated first: the manifest's shape, then config.json, plan.json and
    summary.json against the checksums the manifest records (and their own schema, run_schema's),
    the manifest against the plan; the weight files are checked against their checksums when they
    are loaded (store.load_tensors). A run_schema Damage becomes _damaged's one paragraph."""

    def __init__(self, root: str | Path):
        root = Path(root)
        if not root.exists():
            raise UserError(f"{root} does not exist. Give the --out directory of a finished "
                            f"`edge-trgl train`.")
        if not (root / MANIFEST).is_file():
            raise UserError(f"{root} is not an edge-trgl run directory (it has no {MANIFEST}). "
                            f"Give the --out directory of a finished `edge-trgl train`.")
        try:
            manifest = json.loads((root / MANIFEST).read_bytes())
        except OSError as exc:
            raise UserError(f"The run manifest {root / MANIFEST} cannot be read "
                            f"({exc.strerror or exc}).") from None
        except (ValueError, RecursionError) as exc:
            why = f"{type(exc).__name__}: {str(exc).splitlines()[0]}" if str(exc) else \
                type(exc).__name__
            raise UserError(f"The run manifest {root / MANIFEST} is not valid JSON ({why}); the "
                            f"run directory is damaged. Restore it from a backup, or train the "
                            f"run again.") from None
        check_manifest(root, manifest)
        self.run = Run(root, manifest)
        self.root = root
        if manifest["status"] != "complete":
            raise UserError(f"The run in {root} has not finished (status "
                            f"{manifest['status']!r}); finish it with `edge-trgl train "
                            f"--resume {root}`, then export.")
        # config.json is checked against its checksum too: an edited one (another model, width...)
        # would otherwise fail later as a state-dict size mismatch, or silently mean something else
        self.cfg = check_config(root, self.read_listed("config.json"), manifest)
        self.plan = self.read_listed("plan.json")
        _checked(root, "plan.json", check_plan_shape, self.plan)
        # the manifest's modules, caches and progress against the plan: module numbers in range,
        # every module's blocks those of the plan, the feature cache recorded consistently
        _checked(root, MANIFEST, check_manifest_against_plan, manifest, self.plan)
        self.modules = manifest["modules"]
        self.summary = _checked(root, "summary.json", check_summary,
                                self.read_listed("summary.json"), self.modules)

    def read_listed(self, rel: str):
        """A JSON file of the run that the manifest lists, checked against its sha256."""
        root, expected = self.root, self.run.manifest["files"].get(rel)
        if expected is None:
            raise _damaged(root, MANIFEST, f"it records no checksum for {rel}, so {rel} cannot "
                           f"be trusted")
        try:
            data = (root / rel).read_bytes()
        except OSError as exc:
            raise UserError(f"The run directory {root} lacks a readable {rel} "
                            f"({exc.strerror or exc}). The run is damaged; restore the file from a "
                            f"backup, or train the run again.") from None
        if hashlib.sha256(data).hexdigest() != expected:
            if rel == "config.json":
                raise UserError(f"The config.json of the run in {root} was changed after the run "
                                f"was trained (it does not match the checksum in the manifest), "
                                f"so it no longer describes the trained weights. Restore the "
                                f"original config.json; to read the dataset from a new place, "
                                f"give --data-dir instead of editing it.")
            raise UserError(f"The file {root / rel} does not match the checksum recorded in the "
                            f"run manifest: it was changed or damaged after it was written. "
                            f"Restore it from a backup, or train the run again.")
        try:
            return json.loads(data)
        except (ValueError, RecursionError) as exc:  # (checksum intact: the manifest was edited)
            raise _damaged(root, rel, f"not valid JSON ({type(exc).__name__})") from None

    def choose_module(self, module: int | None) -> tuple[int, str]:
        trained = sorted(int(k) for k, rec in self.modules.items()
                         if rec.get("test_acc") is not None or rec.get("val_acc") is not None)
        if module is None:
            best = self.summary.get("best_module")
            if best is None:
                raise UserError(f"The run in {self.root} records no module accuracies, so there is "
                                f"no best module; choose one with --module K.")
            scored_by = "validation" if self.modules[str(best)].get("val_acc") is not None else "test"
            k, why = int(best), f"best {scored_by} accuracy"
        elif module not in trained:
            raise UserError(f"--module {module} cannot be exported from the run in {self.root}: "
                            f"the run has trained heads for modules {trained} only (with --scheme "
                            f"e2e only the last module's head is trained).")
        else:
            k, why = module, "--module"
        self.require_weights(k)
        return k, why

    def require_weights(self, k: int) -> None:
        """Module k's model reads blocks 0..end of k and heads 0..k (the training-time parity check
        runs every module up to k): each must be listed with a checksum, or it cannot be trusted."""
        from .store import block_path, head_path
        _, hi = self.blocks_of(k)
        needed = [block_path(i) for i in range(hi)] + [head_path(j) for j in range(k + 1)]
        missing = [rel for rel in needed if rel not in self.run.manifest["files"]]
        if missing:
            raise _damaged(self.root, MANIFEST, f"it records no checksum for "
                           f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}, which "
                           f"module {k} needs")

    def blocks_of(self, k: int) -> tuple[int, int]:
        lo, hi = self.plan["splits"][k]
        return int(lo), int(hi)

    def load_dataset(self, data_dir: str | None = None):
        from .data import load_dataset_for as load_data
        cfg = TrainConfig.from_json(self.cfg.to_json())
        if data_dir is not None:
            cfg.data_dir = data_dir
        dataset = load_data(cfg)
        if dataset.fingerprint() != self.run.manifest.get("data_fingerprint"):
            raise UserError(f"The dataset found at {cfg.data_dir or '(built-in synthetic)'} differs "
                            f"from the one the run in {self.root} was trained on, so its test "
                            f"accuracy would not be comparable. Point --data-dir at the original "
                            f"data.")
        return dataset

    def _load_module(self, *args):
        """modules.load_module, with a store that does not fit the config as a UserError (the
        checksums passed, so the files are the ones training wrote: the config or the plan
        disagrees with them)."""
        from .modules import load_module
        try:
            return load_module(self.run, self.cfg, *args, torch.device("cpu"))
        except UserError:
            raise
        except (RuntimeError, KeyError, IndexError, ValueError, TypeError, OSError) as exc:
            text = " ".join(str(exc).split()) or type(exc).__name__
            text = text if len(text) <= 300 else text[:300] + " ..."
            raise UserError(f"The weights of the run in {self.root} do not fit the network its "
                            f"config.json and plan.json describe ({text}). The run is "
                            f"damaged or its files come from different runs; restore them from a "
                            f"backup, or train the run again.") from None

    def assemble(self, k: int, in_shape, num_classes, mean, std) -> InferenceModel:
        """Blocks 0..end of module k and head k from the block store (sha256 verified)."""
        _, hi = self.blocks_of(k)
        blocks, head = self._load_module(in_shape, num_classes, 0, hi, k)
        return InferenceModel(blocks, head, mean, std).eval()

    @torch.no_grad()
    def training_time_logits(self, k: int, images: np.ndarray, dataset,
                             batch_size: int) -> np.ndarray:
        """Logits of head k as training computed them: module by module, each module's output
        rounded to the feature cache's dtype before the next one reads it (module-wise schemes;
        the resident schemes keep fp32 throughout)."""
        from .cache import DTYPES
        from .data import normalize
        rounding = (DTYPES[self.cfg.cache_dtype]
                    if self.cfg.scheme in ("sequential", "multilap") else None)
        loaded = [self._load_module(dataset.in_shape, dataset.num_classes, *self.blocks_of(j), j)
                  for j in range(k + 1)]
        for blocks, head in loaded:
            for m in [*blocks, head]:
                m.eval()
        out = []
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(normalize(images[start:start + batch_size], dataset.mean,
                                           dataset.std))
            for j, (blocks, head) in enumerate(loaded):
                for block in blocks:
                    x, _ = block(x)
                if j < k and rounding is not None:
                    x = torch.from_numpy(x.numpy().astype(rounding).astype(np.float32))
            out.append(loaded[k][1](x).numpy())
        return np.concatenate(out)


class TorchModel:
    """An InferenceModel behind the same interface as deploy_runtime.OrtModel."""

    def __init__(self, model: InferenceModel, in_shape, class_names):
        self.model, self.in_shape = model.eval(), tuple(in_shape)
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)

    @torch.no_grad()
    def logits(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        out = [self.model(torch.from_numpy(np.ascontiguousarray(images[s:s + batch_size],
                                                                dtype=np.float32))).numpy()
               for s in range(0, len(images), batch_size)]
        return np.concatenate(out)


def run_model(run_dir, module: int | None = None, data_dir: str | None = None):
    """(TorchModel of the run's chosen module, the run, its dataset, the module) for evaluate and
    predict on a run directory."""
    fin = FinishedRun(run_dir)
    k, _ = fin.choose_module(module)
    dataset = fin.load_dataset(data_dir)
    model = fin.assemble(k, dataset.in_shape, dataset.num_classes, dataset.mean, dataset.std)
    names = dataset.class_names or [str(i) for i in range(dataset.num_classes)]
    return TorchModel(model, dataset.in_shape, names), fin, dataset, k


# --- writing ----------------------------------------------------------------------------------

def onnx_bytes(model: InferenceModel, in_shape) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(2, *in_shape),), buf, dynamo=False,
                          opset_version=OPSET, training=torch.onnx.TrainingMode.EVAL,
                          do_constant_folding=True, input_names=["images"],
                          output_names=["logits"],
                          dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
    return buf.getvalue()


def _state_bytes(model: InferenceModel) -> tuple[bytes, bytes]:
    from safetensors.torch import save as st_save
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    pt = io.BytesIO()
    torch.save(state, pt)
    return st_save(state, metadata={"format": FORMAT}), pt.getvalue()


from .export_folder import write_file, begin_export, publish_export  # noqa: E402


def export_run(run_dir, module: int | None = None, out=None, data_dir: str | None = None,
               log=print, force: bool = False, detect: bool = False) -> dict:
    """Export the run's best (or chosen) module; return the report written to export.json.

    Everything is validated before any work (the run's files, --out); the export is written into a
    staging folder and renamed into place once complete; an existing export is replaced only with
    `force`."""
    started = time.time()
    if out is not None and not str(out).strip():
        raise UserError("--out is empty; give the folder to write the export to (e.g. --out "
                        "model), or leave --out out to write RUN_DIR/export.")
    fin = FinishedRun(run_dir)
    k, selected_by = fin.choose_module(module)
    _, hi = fin.blocks_of(k)
    default_out = out is None
    out = Path(os.path.abspath(fin.root / "export" if default_out else out))
    staging = begin_export(out, fin.root, force=force, default_out=default_out)
    try:
        report = _export_into(staging, out, fin, k, selected_by, hi, data_dir, log, started,
                              detect)
        publish_export(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return report


def _export_into(staging: Path, out: Path, fin: FinishedRun, k: int, selected_by: str, hi: int,
                 data_dir, log, started, detect: bool = False) -> dict:
    import onnx

    from .deploy_runtime import OrtModel, accuracy
    dataset = fin.load_dataset(data_dir)
    cfg = fin.cfg
    model = fin.assemble(k, dataset.in_shape, dataset.num_classes, dataset.mean, dataset.std)
    detection = None
    if detect:  # the transport features as a second output, detector.json beside (issue 18)
        from .detect.export_outputs import DetectionExport
        detection = DetectionExport(fin, k, model, dataset.in_shape, OPSET)
    log(f"exporting module {k} (blocks 0-{hi - 1} + head {k}, chosen by {selected_by}) to {out}")

    onnx_data = detection.onnx_bytes() if detection else onnx_bytes(model, dataset.in_shape)
    try:
        onnx.checker.check_model(onnx.load_from_string(onnx_data))
    except Exception as exc:
        raise RuntimeError(f"the exported ONNX graph does not pass onnx.checker: {exc}") from exc
    st_data, pt_data = _state_bytes(model)
    names = dataset.class_names or [str(i) for i in range(dataset.num_classes)]
    description = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "model": cfg.model, "width": cfg.width, "head": cfg.head,
        "in_shape": list(dataset.in_shape), "num_classes": dataset.num_classes,
        "class_names": list(names), "module": k, "blocks": [0, hi],
        "normalization": {"mean": list(dataset.mean), "std": list(dataset.std),
                          "applied": "inside the model: (images / 255 - mean) / std"},
        "input": {"name": "images", "dtype": "float32", "shape": ["batch", *dataset.in_shape],
                  "values": "pixel values 0..255 (channels first)"},
        "output": {"name": "logits", "shape": ["batch", dataset.num_classes]},
        "dataset": {"name": cfg.data, "data_dir": data_dir or cfg.data_dir, "seed": cfg.seed,
                    "synthetic_train": cfg.synthetic_train, "synthetic_test": cfg.synthetic_test,
                    "test_fraction": cfg.test_fraction,
                    # an image folder's size when it was given (else the loader's rule again)
                    **({"image_size": cfg.image_size} if cfg.image_size is not None else {})},
        "files": {"onnx": "model.onnx", "safetensors": "model.safetensors", "pt": "model.pt"},
        "run_dir": str(fin.root.resolve()), "scheme": cfg.scheme, "tau": cfg.tau,
        **({"detection": detection.description} if detection else {}),
    }
    files = {"model.onnx": onnx_data, "model.safetensors": st_data, "model.pt": pt_data,
             "model.json": (json.dumps(description, indent=2, sort_keys=True) + "\n").encode(),
             **({"detector.json": detection.detector_bytes} if detection else {})}
    for name, data in files.items():
        write_file(staging / name, data)

    # Parity on a batch, then the ONNX model's test accuracy, all in onnxruntime.
    ort_model = OrtModel(staging / "model.onnx", check_export=False)
    batch = dataset.test.images[:PARITY_BATCH]
    onnx_logits = ort_model.logits(batch)
    with torch.no_grad():
        torch_logits = model(torch.from_numpy(batch.astype(np.float32))).numpy()
    eval_batch = int(fin.plan.get("batch_size") or 128)
    train_logits = fin.training_time_logits(k, batch, dataset, eval_batch)
    scale = max(1.0, float(np.abs(torch_logits).max()))
    parity = {
        "batch": int(len(batch)),
        "max_abs_diff_vs_torch_fp32": float(np.abs(onnx_logits - torch_logits).max()),
        "max_abs_diff_vs_training_modules": float(np.abs(onnx_logits - train_logits).max()),
        "training_modules_rounding": (cfg.cache_dtype if k > 0 and cfg.scheme in
                                      ("sequential", "multilap") else "none"),
        "argmax_agreement_vs_training_modules": float((onnx_logits.argmax(1)
                                                       == train_logits.argmax(1)).mean()),
        "max_abs_logit": scale,
    }
    if parity["max_abs_diff_vs_torch_fp32"] > PARITY_TOLERANCE * scale:
        raise RuntimeError(f"the ONNX model's logits differ from PyTorch's by "
                           f"{parity['max_abs_diff_vs_torch_fp32']:.3g} (max |logit| {scale:.3g}); "
                           f"the export is broken")
    test_acc = accuracy(ort_model, dataset.test.images, dataset.test.labels)
    detection_parity = detection.parity(ort_model, batch) if detection else None
    run_acc = fin.modules[str(k)].get("test_acc")
    report = {
        "run_dir": str(fin.root.resolve()), "out": str(out.resolve()), "module": k,
        "blocks": [0, hi], "selected_by": selected_by,
        "val_acc_run": fin.modules[str(k)].get("val_acc"),
        "test_acc_run": run_acc,
        "test_acc_onnx": test_acc,
        "test_images": int(len(dataset.test.labels)),
        "test_acc_difference_pp": None if run_acc is None else 100 * (test_acc - run_acc),
        "accuracy_method": "top-1 on the full test set; ONNX model run in onnxruntime "
                           "(deploy_runtime.OrtModel, CPU)",
        "parity": parity,
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "files": {name: {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
                  for name, data in files.items()},
        "onnx_bytes": len(onnx_data), "opset": OPSET,
        "versions": _versions(),
        "seconds": time.time() - started,
        **({"detection": detection_parity} if detection else {}),
    }
    # last: export.json vouches for the other files (evaluate/predict check their checksums)
    write_file(staging / "export.json", (json.dumps(report, indent=2, sort_keys=True) + "\n").encode())
    return report


def _versions() -> dict:
    import onnx
    import onnxruntime
    return {"torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__}


def format_report(report: dict) -> str:
    from .budget import format_size
    p = report["parity"]
    pct = lambda v: "-" if v is None else f"{100 * v:.2f}%"  # noqa: E731
    lines = [
        f"exported module {report['module']} (blocks {report['blocks'][0]}-{report['blocks'][1] - 1}"
        f" + head {report['module']}, chosen by {report['selected_by']}) to {report['out']}",
        f"  model.onnx {format_size(report['files']['model.onnx']['bytes'])}, "
        f"model.safetensors {format_size(report['files']['model.safetensors']['bytes'])}, "
        f"{report['parameters']:,} parameters",
        f"  parity on {p['batch']} test images: max |ONNX - PyTorch| = "
        f"{p['max_abs_diff_vs_torch_fp32']:.2e}; max |ONNX - training-time modules "
        f"({p['training_modules_rounding']} between modules)| = "
        f"{p['max_abs_diff_vs_training_modules']:.2e}, same class for "
        f"{100 * p['argmax_agreement_vs_training_modules']:.1f}%",
        f"  test accuracy: ONNX (onnxruntime) {pct(report['test_acc_onnx'])} on "
        f"{report['test_images']} images; the run reported {pct(report['test_acc_run'])}",
    ]
    return "\n".join(lines)


def load_exported(folder: str | Path) -> InferenceModel:
    """Rebuild the exported model in PyTorch from model.json + model.safetensors, both checked
    against the checksums in export.json and model.json against its schema."""
    from safetensors.torch import load as st_load

    from .deploy_runtime import REEXPORT, read_export
    from .models import build_blocks, make_head
    folder = Path(folder)
    if not (folder / "model.json").is_file():
        raise UserError(f"{folder} has no model.json; it is not an edge-trgl export folder (give "
                        f"the folder `edge-trgl export` wrote).")
    desc, report = read_export(folder / "model.onnx")  # validates model.json, export.json
    if not desc:
        raise UserError(f"{folder} has no model.json; it is not an edge-trgl export folder.")

    def bad(what: str):
        raise UserError(f"The model description {folder / 'model.json'} is not valid: {what}. "
                        f"{REEXPORT}.")
    if not isinstance(desc.get("model"), str) or not isinstance(desc.get("head"), str):
        bad("model and head must be names")
    width = desc.get("width")
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not 0 < width < 1e4:
        bad(f"width must be a positive number, found {width!r}")
    blocks_range = desc.get("blocks")
    if (not isinstance(blocks_range, list) or len(blocks_range) != 2
            or not all(is_int(b) for b in blocks_range) or blocks_range[0] != 0
            or blocks_range[1] < 1):
        bad(f"blocks must be [0, end], found {blocks_range!r}")
    norm = desc.get("normalization")
    channels = desc["in_shape"][0]
    for key in ("mean", "std"):
        values = norm.get(key) if isinstance(norm, dict) else None
        if (not isinstance(values, list) or len(values) != channels
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                           and math.isfinite(v) for v in values)
                or (key == "std" and not all(v > 0 for v in values))):
            bad(f"normalization.{key} must be {channels} finite numbers"
                + (" above zero" if key == "std" else ""))
    entry = report["files"].get("model.safetensors")
    path = folder / "model.safetensors"
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{path} cannot be read ({exc.strerror or exc}). {REEXPORT}.") from None
    if not isinstance(entry, dict) or entry.get("sha256") != hashlib.sha256(data).hexdigest():
        raise UserError(f"{path} does not match the checksum in {folder / 'export.json'}: it was "
                        f"damaged or changed after the export. {REEXPORT}.")
    in_shape, classes = tuple(desc["in_shape"]), int(desc["num_classes"])
    try:
        with torch.device("meta"):
            arch = build_blocks(desc["model"], in_shape, classes, width=desc["width"], seed=None)
        if blocks_range[1] > len(arch):
            bad(f"blocks end {blocks_range[1]} is beyond the {len(arch)} blocks of {desc['model']}")
        blocks = [b.to_empty(device="cpu") for b in arch[: blocks_range[1]]]
        head = make_head(desc["head"], tuple(blocks[-1].out_shape), classes, seed=0)
        model = InferenceModel(blocks, head, norm["mean"], norm["std"])
        model.load_state_dict(st_load(data))
    except UserError:
        raise
    except Exception as exc:  # (safetensors' and torch's own error types)
        text = " ".join(str(exc).split()) or type(exc).__name__
        text = text if len(text) <= 300 else text[:300] + " ..."
        raise UserError(f"The exported weights in {folder} do not fit the model its model.json "
                        f"describes ({text}). {REEXPORT}.") from None
    return model.eval()
