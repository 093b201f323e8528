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
  export.json        the report: files and sizes, the output parity check, test accuracies

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
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .atomic import atomic_write_bytes, atomic_write_json
from .config import TrainConfig
from .errors import UserError
from .run import MANIFEST, Run

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

class FinishedRun:
    """A run directory opened read-only (export must not change a run, which may be in use)."""

    def __init__(self, root: str | Path):
        root = Path(root)
        if not (root / MANIFEST).is_file():
            raise UserError(f"{root} is not an edge-trgl run directory (it has no {MANIFEST}). "
                            f"Give the --out directory of a finished `edge-trgl train`.")
        try:
            manifest = json.loads((root / MANIFEST).read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"The run manifest {root / MANIFEST} cannot be read ({exc}); the run "
                            f"directory is damaged.") from None
        self.run = Run(root, manifest)
        self.root = root
        if manifest.get("status") != "complete":
            raise UserError(f"The run in {root} has not finished (status "
                            f"{manifest.get('status')!r}); finish it with `edge-trgl train "
                            f"--resume {root}`, then export.")
        try:
            self.cfg = TrainConfig.from_json(self.run.read_json("config.json", verify=False))
        except (TypeError, ValueError) as exc:
            raise UserError(f"The config.json of the run in {root} is not valid ({exc}).") from None
        self.plan = self.run.read_json("plan.json")
        self.summary = self.run.read_json("summary.json")
        self.modules = manifest.get("modules", {})

    def choose_module(self, module: int | None) -> tuple[int, str]:
        trained = sorted(int(k) for k, rec in self.modules.items()
                         if rec.get("test_acc") is not None or rec.get("val_acc") is not None)
        if module is None:
            best = self.summary.get("best_module")
            if best is None:
                raise UserError(f"The run in {self.root} records no module accuracies, so there is "
                                f"no best module; choose one with --module K.")
            scored_by = "validation" if self.modules[str(best)].get("val_acc") is not None else "test"
            return int(best), f"best {scored_by} accuracy"
        if module not in trained:
            raise UserError(f"--module {module} cannot be exported from the run in {self.root}: "
                            f"the run has trained heads for modules {trained} only (with --scheme "
                            f"e2e only the last module's head is trained).")
        return module, "--module"

    def blocks_of(self, k: int) -> tuple[int, int]:
        lo, hi = self.plan["splits"][k]
        return int(lo), int(hi)

    def load_dataset(self, data_dir: str | None = None):
        from .train import load_data
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

    def assemble(self, k: int, in_shape, num_classes, mean, std) -> InferenceModel:
        """Blocks 0..end of module k and head k from the block store (sha256 verified)."""
        from .modules import load_module
        _, hi = self.blocks_of(k)
        blocks, head = load_module(self.run, self.cfg, in_shape, num_classes, 0, hi, k,
                                   torch.device("cpu"))
        return InferenceModel(blocks, head, mean, std).eval()

    @torch.no_grad()
    def training_time_logits(self, k: int, images: np.ndarray, dataset,
                             batch_size: int) -> np.ndarray:
        """Logits of head k as training computed them: module by module, each module's output
        rounded to the feature cache's dtype before the next one reads it (module-wise schemes;
        the resident schemes keep fp32 throughout)."""
        from .cache import DTYPES
        from .data import normalize
        from .modules import load_module
        rounding = (DTYPES[self.cfg.cache_dtype]
                    if self.cfg.scheme in ("sequential", "multilap") else None)
        loaded = [load_module(self.run, self.cfg, dataset.in_shape, dataset.num_classes,
                              *self.blocks_of(j), j, torch.device("cpu")) for j in range(k + 1)]
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


def _prepare_out(out: Path) -> None:
    if out.exists():
        if not out.is_dir():
            raise UserError(f"The export folder {out} exists and is not a folder; choose another "
                            f"--out.")
        ours = {"model.onnx", "model.json", "model.safetensors", "model.pt", "export.json"}
        others = [p.name for p in out.iterdir() if p.name not in ours]
        if others:
            raise UserError(f"The export folder {out} already holds other files ({', '.join(sorted(others)[:3])}); "
                            f"I will not write into it. Choose another --out.")
    out.mkdir(parents=True, exist_ok=True)


def export_run(run_dir, module: int | None = None, out=None, data_dir: str | None = None,
               log=print) -> dict:
    """Export the run's best (or chosen) module; return the report written to export.json."""
    import onnx

    from .deploy_runtime import OrtModel, accuracy
    started = time.time()
    fin = FinishedRun(run_dir)
    k, selected_by = fin.choose_module(module)
    lo, hi = fin.blocks_of(k)
    out = Path(out) if out is not None else fin.root / "export"
    _prepare_out(out)
    dataset = fin.load_dataset(data_dir)
    cfg = fin.cfg
    model = fin.assemble(k, dataset.in_shape, dataset.num_classes, dataset.mean, dataset.std)
    log(f"exporting module {k} (blocks 0-{hi - 1} + head {k}, chosen by {selected_by}) to {out}")

    onnx_data = onnx_bytes(model, dataset.in_shape)
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
                    "test_fraction": cfg.test_fraction},
        "files": {"onnx": "model.onnx", "safetensors": "model.safetensors", "pt": "model.pt"},
        "run_dir": str(fin.root.resolve()), "scheme": cfg.scheme, "tau": cfg.tau,
    }
    files = {"model.onnx": onnx_data, "model.safetensors": st_data, "model.pt": pt_data}
    for name, data in files.items():
        atomic_write_bytes(out / name, data)
    atomic_write_json(out / "model.json", description)

    # Parity on a batch, then the ONNX model's test accuracy, all in onnxruntime.
    ort_model = OrtModel(out / "model.onnx")
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
                  for name, data in {**files, "model.json": (out / "model.json").read_bytes()}.items()},
        "onnx_bytes": len(onnx_data), "opset": OPSET,
        "versions": _versions(),
        "seconds": time.time() - started,
    }
    atomic_write_json(out / "export.json", report)  # last: its presence means the export is whole
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
    """Rebuild the exported model in PyTorch from model.json + model.safetensors."""
    from safetensors.torch import load_file

    from .models import build_blocks, make_head
    folder = Path(folder)
    try:
        desc = json.loads((folder / "model.json").read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{folder} has no readable model.json ({exc}); it is not an edge-trgl "
                        f"export.") from None
    if desc.get("format") != FORMAT:
        raise UserError(f"{folder / 'model.json'} is not an edge-trgl model description.")
    in_shape, classes = tuple(desc["in_shape"]), int(desc["num_classes"])
    with torch.device("meta"):
        arch = build_blocks(desc["model"], in_shape, classes, width=desc["width"], seed=None)
    blocks = [b.to_empty(device="cpu") for b in arch[: desc["blocks"][1]]]
    head = make_head(desc["head"], tuple(blocks[-1].out_shape), classes, seed=0)
    model = InferenceModel(blocks, head, desc["normalization"]["mean"],
                           desc["normalization"]["std"])
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    return model.eval()
