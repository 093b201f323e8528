"""ONNX Runtime training artifacts for one TRGL module (its blocks + auxiliary head). Needs torch,
onnx and onnxruntime-training; it runs only in short-lived preparation processes, never in the
trainer (ort_worker.py), so the ~220 MB that torch costs is never part of training.

For module k the builder writes ort/module_XX/:

- training_model.onnx: the module exported with torch.onnx.export(dynamo=False,
  training=TRAINING, do_constant_folding=False) -- blocks return (y, energy), so the graph's
  outputs are (logits, energy) -- plus the TRGL loss as a custom onnxblock.Block:
      loss = CE_ls(logits, labels) + energy_weight * energy
  with CE_ls the label-smoothed cross-entropy of torch's F.cross_entropy(label_smoothing=eps),
  written as (1 - eps) * SoftmaxCrossEntropyLoss - eps * mean(LogSoftmax(logits)).
  energy_weight is a graph *input*, so the fixed 1/(2 tau_k) of any module and the adaptive weight
  (trgl.AdaptiveWeight) both work, and modules of equal structure share artifacts. The BatchNorm
  running-statistics outputs of the TRAINING-mode graph are extra outputs, so the trainer can
  carry the running statistics forward (ORT's training graph computes them but never writes them
  back to its state).
- checkpoint: ORT's parameter state. Only names and shapes matter: the trainer loads the block
  store's weights into it before the first step.
- eval_model.onnx: the same module exported in EVAL mode (BatchNorm uses running statistics),
  outputs (features, logits), with every weight a graph input. The trainer runs it in a plain
  InferenceSession fed with the current weights, for validation and for the feature cache.
  (The eval model that generate_artifacts derives from a TRAINING-mode export does not load when
  the module has BatchNorm: its BN nodes keep three outputs with training_mode=0.)
- meta.json: parameter order (torch's, so optimizer state maps 1:1 to torch's), where each
  weight lives in the block store, and the BatchNorm bookkeeping.

Two things are rewritten in the exported training graph because ORT 1.19's CPU kernels need it:
AveragePool (its gradient kernel crashes the process with SIGFPE here) becomes Reshape +
ReduceMean when kernel == stride and there is no padding, which is what the heads export.

The optimizer is not part of the artifacts: ORT 1.19's SGD has neither momentum nor weight
decay, and its optimizer state cannot be read back through the Python bindings, so the trainer
implements torch's SGD (momentum, weight decay) and AdamW updates itself, on the gradients ORT
computes (see ort_worker.NumpySGD / NumpyAdamW).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

from ..errors import UserError
from .ort_common import ARTIFACT_FILES, ARTIFACT_FORMAT, artifact_dir, require_ort

OPSET = 17          # ReduceMean takes `axes` as an attribute up to opset 17 (the rewrite uses it)
EXPORT_BATCH = 2    # BatchNorm in training mode needs more than one value per channel


def _quiet_ort() -> None:
    import onnxruntime
    onnxruntime.set_default_logger_severity(3)


@contextlib.contextmanager
def _native_stderr_captured():
    """generate_artifacts' graph optimiser logs every transformer at INFO level from C++, past
    the logger severity; keep that off the user's terminal, and show it only if building fails."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as log:
        os.dup2(log.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            log.seek(0)
            lines = [ln for ln in log.read().decode(errors="replace").splitlines()
                     if "[I:onnxruntime" not in ln]
            if lines:
                print("\n".join(lines[-40:]), file=sys.stderr)
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


class _ModuleGraph:
    """Factory for the torch wrapper that is exported: `blocks` + `head` under those attribute
    names, so ONNX initializer names are 'blocks.<j>.<key>' and 'head.<key>'."""

    @staticmethod
    def make(blocks, head, outputs: str):
        import torch
        from torch import nn

        class ModuleGraph(nn.Module):
            def __init__(self):
                super().__init__()
                self.blocks = nn.ModuleList(blocks)
                self.head = head

            def forward(self, x):
                energy = None
                for block in self.blocks:
                    x, e = block(x)
                    energy = e if energy is None else energy + e
                logits = self.head(x)
                if outputs == "train":
                    if energy is None:
                        energy = torch.zeros((), dtype=x.dtype)
                    return logits, energy
                return x, logits

        return ModuleGraph()


def build_module(cfg, in_shape, num_classes, lo: int, hi: int):
    """Blocks lo..hi-1 and a head, with throw-away deterministic weights (the trainer replaces
    them with the store's)."""
    from ..models import make_head
    from ..models.blocks import init_weights, make_generator
    from ..modules import architecture
    arch = architecture(cfg, tuple(in_shape), num_classes)
    blocks = [arch[i].to_empty(device="cpu") for i in range(lo, hi)]
    del arch
    gen = make_generator(0)
    for b in blocks:
        init_weights(b, gen)
    head = make_head(cfg.head, tuple(blocks[-1].out_shape), num_classes, seed=0)
    return blocks, head


def _export(model, sample, path: Path, *, training: bool, output_names: list[str]) -> None:
    import torch
    mode = torch.onnx.TrainingMode.TRAINING if training else torch.onnx.TrainingMode.EVAL
    model.train(training)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation / in-place notes
        torch.onnx.export(model, (sample,), str(path), dynamo=False, training=mode,
                          do_constant_folding=False, opset_version=OPSET,
                          keep_initializers_as_inputs=not training,
                          input_names=["input"], output_names=output_names,
                          dynamic_axes={"input": {0: "batch"},
                                        **{n: {0: "batch"} for n in output_names
                                           if n != "energy"}})


def _shapes(model) -> dict[str, list[int]]:
    import onnx
    inferred = onnx.shape_inference.infer_shapes(model)
    out = {}
    for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        dims = v.type.tensor_type.shape.dim
        out[v.name] = [d.dim_value if d.HasField("dim_value") else -1 for d in dims]
    return out


def rewrite_average_pools(model) -> int:
    """Replace AveragePool (kernel == stride, no padding) by Reshape + ReduceMean over the window
    axes; the same numbers, and a gradient that ORT 1.19 computes without crashing."""
    import onnx
    from onnx import helper, numpy_helper
    shapes = _shapes(model)
    nodes, count = [], 0
    for node in model.graph.node:
        if node.op_type != "AveragePool":
            nodes.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        kernel = list(attrs["kernel_shape"])
        strides = list(attrs.get("strides", [1] * len(kernel)))
        pads = list(attrs.get("pads", [0] * 2 * len(kernel)))
        shape = shapes.get(node.input[0], [])
        if (len(kernel) != 2 or kernel != strides or any(pads) or len(shape) != 4
                or min(shape[1:]) < 1 or shape[2] % kernel[0] or shape[3] % kernel[1]):
            raise UserError(
                f"The module contains an average pooling (kernel {kernel}, stride {strides}, pads "
                f"{pads}, input {shape}) that the ONNX Runtime backend cannot train: ORT 1.19's "
                f"AveragePool gradient crashes on the CPU, and only non-overlapping, unpadded "
                f"pooling is rewritten. Use --backend torch for this model or head.")
        _, c, h, w = shape
        shape_name = f"{node.name or node.output[0]}_rewrite_shape"
        model.graph.initializer.append(numpy_helper.from_array(
            np.array([0, c, h // kernel[0], kernel[0], w // kernel[1], kernel[1]], np.int64),
            shape_name))
        windows = f"{node.output[0]}_windows"
        nodes.append(helper.make_node("Reshape", [node.input[0], shape_name], [windows],
                                      name=f"{node.name}_reshape"))
        nodes.append(helper.make_node("ReduceMean", [windows], [node.output[0]], axes=[3, 5],
                                      keepdims=0, name=f"{node.name}_mean"))
        count += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.checker.check_model(model)
    return count


def expose_layer_norm_statistics(model) -> int:
    """Give every LayerNormalization node its optional Mean and InvStdDev outputs: ORT's gradient
    builder for it reads them (without them it fails with "i < node_->OutputDefs().size()")."""
    count = 0
    for node in model.graph.node:
        if node.op_type == "LayerNormalization" and len(node.output) == 1:
            base = node.name or node.output[0]
            node.output.extend([f"{base}_saved_mean", f"{base}_saved_inv_std"])
            count += 1
    return count


def _loss_block(label_smoothing: float):
    import onnxruntime.training.onnxblock as onnxblock
    from onnx import TensorProto, helper

    class TrglLoss(onnxblock.Block):
        """loss = CE_ls(logits, labels) + energy_weight * energy; outputs (loss, ce, logits, energy)."""

        def build(self, logits: str, energy: str):
            graph = self.base.graph
            graph.input.append(helper.make_tensor_value_info("labels", TensorProto.INT64, ["batch"]))
            graph.input.append(helper.make_tensor_value_info("energy_weight", TensorProto.FLOAT, []))

            def node(op, inputs, output, **attrs):
                graph.node.append(helper.make_node(op, inputs, [output], name=f"trgl_{output}", **attrs))
                return output

            def const(name, value):
                graph.initializer.append(helper.make_tensor(name, TensorProto.FLOAT, [], [value]))
                return name

            hard = node("SoftmaxCrossEntropyLoss", [logits, "labels"], "trgl_ce_hard",
                        reduction="mean")
            if label_smoothing > 0:
                logp = node("LogSoftmax", [logits], "trgl_logp", axis=1)
                mean_logp = node("ReduceMean", [logp], "trgl_mean_logp", keepdims=0)
                a = node("Mul", [hard, const("trgl_one_minus_eps", 1.0 - label_smoothing)], "trgl_a")
                b = node("Mul", [mean_logp, const("trgl_minus_eps", -label_smoothing)], "trgl_b")
                ce = node("Add", [a, b], "ce")
            else:
                ce = node("Identity", [hard], "ce")
            weighted = node("Mul", [energy, "energy_weight"], "trgl_weighted_energy")
            loss = node("Add", [ce, weighted], "loss")
            return loss, ce, logits, energy

    return TrglLoss()


def build_artifacts(cfg, in_shape, num_classes, lo: int, hi: int, out_dir: Path) -> dict:
    """Write the artifacts of the module made of blocks lo..hi-1 (+ head) into out_dir."""
    require_ort(need_onnx=True)
    import onnx
    import onnxruntime
    import torch
    from onnxruntime.training import artifacts
    from onnx import helper
    _quiet_ort()
    if cfg.amp is not None:
        raise UserError("--amp is for --backend torch on CUDA; the ONNX Runtime backend trains "
                        "in fp32 on the CPU. Drop --amp.")
    out_dir = Path(out_dir)
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    blocks, head = build_module(cfg, in_shape, num_classes, lo, hi)
    sample = torch.randn(EXPORT_BATCH, *blocks[0].in_shape, generator=torch.Generator().manual_seed(0))
    # The state_dict is read before the TRAINING export, whose trace forward updates the BN stats.
    train_net = _ModuleGraph.make(blocks, head, "train")
    state_keys = list(train_net.state_dict().keys())
    trainable = [n for n, _ in train_net.named_parameters()]
    with tempfile.TemporaryDirectory() as tmp:
        fwd_path = Path(tmp) / "forward.onnx"
        _export(train_net, sample, fwd_path, training=True, output_names=["logits", "energy"])
        forward = onnx.load(str(fwd_path))
    rewritten = rewrite_average_pools(forward)
    expose_layer_norm_statistics(forward)
    initializers = {i.name for i in forward.graph.initializer}
    missing = [n for n in trainable if n not in initializers]
    if missing:
        raise UserError(
            f"The ONNX export of blocks {lo}..{hi - 1} of {cfg.model} does not keep the parameters "
            f"{missing[:5]} under their names, so the ONNX Runtime backend cannot map them to the "
            f"block store. Use --backend torch for this model.")
    shapes = _shapes(forward)
    bn = []
    for node in forward.graph.node:
        if node.op_type != "BatchNormalization" or len(node.output) < 3:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        in_shape_bn = shapes.get(node.input[0], [])
        per_channel = int(np.prod(in_shape_bn[2:])) if len(in_shape_bn) > 2 else 1
        if len(in_shape_bn) < 2 or per_channel < 1:
            raise UserError(f"Cannot read the input shape of BatchNorm {node.name} in the export of "
                            f"blocks {lo}..{hi - 1}; use --backend torch for this model.")
        bn.append({"mean": node.input[3], "var": node.input[4], "mean_out": node.output[1],
                   "var_out": node.output[2], "momentum": float(attrs.get("momentum", 0.9)),
                   "values_per_channel_per_sample": per_channel})
    frozen = sorted({b["mean"] for b in bn} | {b["var"] for b in bn})
    other_inits = sorted(initializers - set(trainable) - set(frozen))
    weights = [n for n in state_keys if n in set(trainable) | set(frozen)]
    try:
        with _native_stderr_captured():
            artifacts.generate_artifacts(
                forward, requires_grad=trainable, frozen_params=frozen,
                loss=_loss_block(float(cfg.label_smoothing)), optimizer=None,
                artifact_directory=str(out_dir),
                additional_output_names=[o for b in bn for o in (b["mean_out"], b["var_out"])])
    except RuntimeError as exc:  # ORT's gradient builder lacks a gradient for some op
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"ONNX Runtime 1.19 cannot build a training graph for blocks {lo}..{hi - 1} of "
            f"{cfg.model} with the {cfg.head} head ({first}). Use --backend torch for this "
            f"model.") from None
    (out_dir / "eval_model.onnx").unlink()  # see the module docstring: replaced below

    eval_net = _ModuleGraph.make(blocks, head, "eval")
    eval_path = out_dir / "eval_model.onnx"
    _export(eval_net, sample, eval_path, training=False, output_names=["features", "logits"])
    eval_model = onnx.load(str(eval_path))
    # Weights become inputs only (fed from the trainer's current values); any other initializer
    # the exporter made stays a constant.
    feed = set(weights)
    kept = [i for i in eval_model.graph.initializer if i.name not in feed]
    del eval_model.graph.initializer[:]
    eval_model.graph.initializer.extend(kept)
    constant = {i.name for i in kept}
    inputs = [i for i in eval_model.graph.input if i.name not in constant]
    del eval_model.graph.input[:]
    eval_model.graph.input.extend(inputs)
    eval_inputs = [i.name for i in inputs]
    absent = sorted(set(eval_inputs) - feed - {"input"})
    if absent:
        raise UserError(f"The eval export of blocks {lo}..{hi - 1} needs inputs {absent[:5]} that "
                        f"are not module weights; use --backend torch for this model.")
    onnx.save(eval_model, str(eval_path))

    store_map = {}
    for name in state_keys:
        head_part, _, rest = name.partition(".")
        if head_part == "blocks":
            offset, _, key = rest.partition(".")
            store_map[name] = ["block", int(offset), key]
        else:
            store_map[name] = ["head", rest]
    meta = {
        "format": ARTIFACT_FORMAT, "lo": lo, "hi": hi, "model": cfg.model, "width": cfg.width,
        "head": cfg.head, "num_classes": int(num_classes),
        "in_shape": list(blocks[0].in_shape), "out_shape": list(blocks[-1].out_shape),
        "label_smoothing": float(cfg.label_smoothing),
        "trainable": trainable,                 # torch's parameter order (optimizer indices)
        "frozen": frozen,                       # BatchNorm running statistics
        "state_keys": state_keys,               # everything the store holds for this module
        "store_map": store_map,                 # onnx/state name -> [block, offset, key] | [head, key]
        "batchnorm": bn,
        "eval_inputs": eval_inputs, "eval_outputs": ["features", "logits"],
        "train_inputs": ["input", "labels", "energy_weight"],
        "constant_initializers": other_inits,
        "average_pools_rewritten": rewritten, "opset": OPSET,
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__,
                     "onnxruntime": onnxruntime.__version__},
    }
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    for name in ARTIFACT_FILES:
        if not (out_dir / name).is_file():
            raise RuntimeError(f"artifact generation did not write {name} into {out_dir}")
    return meta


def structure_key(cfg, in_shape, num_classes, lo: int, hi: int, signatures: list[str]) -> str:
    """What the artifacts of a module depend on (not its weights, not its energy weight)."""
    from .ort_common import ort_version
    ident = {"format": ARTIFACT_FORMAT, "model": cfg.model, "width": cfg.width, "head": cfg.head,
             "in_shape": list(in_shape), "classes": int(num_classes), "blocks": signatures,
             "label_smoothing": float(cfg.label_smoothing), "ort": ort_version()}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]


def cached_artifacts(cfg, in_shape, num_classes, lo: int, hi: int, signatures: list[str]) -> Path:
    """Artifacts for a planner probe, built once per module structure under the probe cache."""
    from ..memory.estimate import cache_file
    key = structure_key(cfg, in_shape, num_classes, lo, hi, signatures)
    root = cache_file().parent / "ort-artifacts" / key
    if all((root / n).is_file() for n in ARTIFACT_FILES):
        return root
    tmp = root.with_name(f".{key}.tmp-{os.getpid()}")
    build_artifacts(cfg, in_shape, num_classes, lo, hi, tmp)
    if root.exists() and not all((root / n).is_file() for n in ARTIFACT_FILES):
        shutil.rmtree(root, ignore_errors=True)  # an incomplete earlier attempt
    try:
        os.replace(tmp, root)
    except OSError:  # another planner built the same artifacts meanwhile: use theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def write_run_artifacts(run, cfg, in_shape, num_classes, splits, modules=None) -> None:
    """Build (or rebuild) the artifacts of the run's modules and record their checksums under
    manifest["ort"]["artifacts"] (not "files": they are derived, and rebuilt when damaged)."""
    from ..atomic import sha256_file
    record = run.manifest.setdefault("ort", {}).setdefault("artifacts", {})
    for k, (lo, hi) in enumerate(splits):
        if modules is not None and k not in modules:
            continue
        rel = artifact_dir(k)
        build_artifacts(cfg, in_shape, num_classes, lo, hi, Path(run.root) / rel)
        for name in ARTIFACT_FILES:
            record[f"{rel}/{name}"] = sha256_file(Path(run.root) / rel / name)


# --- the preparation process --------------------------------------------------------------------

def prepare_new_run(spec: dict) -> dict:
    """Everything before training that needs torch, for a new ORT run: load the data, plan (ORT
    probes), stage the run directory, write the initial weights, the data snapshot and every
    module's artifacts, publish. Mirrors train.train()'s set-up."""
    from ..config import TrainConfig
    from ..memory.measure import release_memory
    from ..run import Run
    from ..train import load_data, make_plan, set_threads
    from .ort_common import save_snapshot
    cfg = TrainConfig.from_json(spec["config"]).validate()
    out = Path(cfg.out)
    Run.check_new_root(out)
    # Data first, torch second (as train.py): loading CIFAR briefly holds every batch file, and
    # that transient should not stack on top of torch's ~220 MB.
    dataset = load_data(cfg)
    release_memory()
    from ..modules import architecture, init_store
    set_threads(cfg)
    arch = architecture(cfg, dataset.in_shape, dataset.num_classes)
    plan = make_plan(cfg, dataset, arch).to_json()
    run = Run.staging(out)
    try:
        run.write_json("config.json", cfg.to_json())
        run.write_json("plan.json", plan)
        splits = [tuple(s) for s in plan["splits"]]
        init_store(run, cfg, dataset.in_shape, dataset.num_classes, splits)
        save_snapshot(run, dataset)
        write_run_artifacts(run, cfg, dataset.in_shape, dataset.num_classes, splits)
        run.manifest.update({"status": "running", "config_hash": cfg.identity_hash(),
                             "data_fingerprint": dataset.fingerprint()})
        run.publish()
    except BaseException:
        run.discard()
        raise
    return {"run_dir": str(run.root)}


def rebuild_artifacts(spec: dict) -> dict:
    """Rebuild the artifacts of the given modules of an existing run (missing or damaged)."""
    from ..config import TrainConfig
    from ..run import Run
    from .ort_common import snapshot_info
    cfg = TrainConfig.from_json(spec["config"])
    run = Run(Path(spec["run_dir"]), json.loads((Path(spec["run_dir"]) / "manifest.json").read_text()))
    info = snapshot_info(run)
    plan = run.read_json("plan.json")
    splits = [tuple(s) for s in plan["splits"]]
    write_run_artifacts(run, cfg, info["in_shape"], info["num_classes"], splits,
                        modules=set(spec["modules"]))
    run.save()
    return {"rebuilt": sorted(spec["modules"])}


def main(argv: list[str]) -> int:
    """`python -m edge_trgl.backends.ort_artifacts prepare|rebuild SPEC.json RESULT.json`:
    run in a child of the torch-free orchestrator; the result (or a UserError's message) is
    written to RESULT.json."""
    from ..atomic import atomic_write_json
    from ..memory.measure import peak_rss_bytes
    command, spec_path, result_path = argv
    spec = json.loads(Path(spec_path).read_text())
    try:
        if command == "prepare":
            result = prepare_new_run(spec)
        elif command == "rebuild":
            result = rebuild_artifacts(spec)
        else:
            raise ValueError(f"unknown command {command!r}")
    except UserError as exc:
        atomic_write_json(result_path, {"error": str(exc)})
        return 2
    result["peak_rss_bytes"] = peak_rss_bytes()
    atomic_write_json(result_path, result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
