"""The torch-free half of building a module's ONNX Runtime training artifacts.

ort_artifacts.py (torch + onnx) exports the module's forward graph in TRAINING mode and its eval
graph, and writes `export.json` (parameter order, shapes); this file (onnx + ONNX Runtime's
training-graph builder, **no torch**) turns those into the artifacts the trainer loads:
rewrites what ORT 1.19's CPU kernels need, adds the TRGL loss, runs `generate_artifacts`, cuts
the eval graph's weights into inputs and writes `meta.json`. Split in two so that each half runs
in its own short-lived process: torch's ~150 MB of anonymous memory and ONNX Runtime's
training-graph tools (~50 MB more when loaded beside torch) are never resident together, which
lets the set-up of an ORT run fit small budgets (the trainer itself is torch-free).

`onnxruntime.training`'s package `__init__` imports its torch-based optimizers; its `artifacts`
and `onnxblock` modules do not need torch, so they are loaded here from the package's folder
without running that `__init__` (`_training_modules`).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import types
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..summary import block_range
from .ort_common import ARTIFACT_FILES, ARTIFACT_FORMAT

EXPORT_META = "export.json"
FORWARD = "forward.onnx"
EVAL_RAW = "eval_raw.onnx"

# Finishing in a fresh process: torch is blocked before anything is imported, so an accidental
# `import torch` on this path fails loudly instead of silently costing ~150 MB.
FINISH_BOOT = ("import sys; sys.modules['torch'] = None; "
               "from edge_trgl.backends.ort_graph import main; sys.exit(main(sys.argv[1:]))")


def finish_command(spec_path, result_path) -> list[str]:
    return [sys.executable, "-c", FINISH_BOOT, os.fspath(spec_path), os.fspath(result_path)]


def _training_modules():
    """(artifacts, onnxblock) of onnxruntime.training, without its torch-importing __init__."""
    if "onnxruntime.training" not in sys.modules:
        import importlib.util
        spec = importlib.util.find_spec("onnxruntime")
        root = Path(list(spec.submodule_search_locations)[0]) / "training"
        package = types.ModuleType("onnxruntime.training")
        package.__path__ = [str(root)]
        package.__package__ = "onnxruntime.training"
        sys.modules["onnxruntime.training"] = package
    from onnxruntime.training import artifacts, onnxblock
    return artifacts, onnxblock


def quiet_ort() -> None:
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
    _, onnxblock = _training_modules()
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


def finish_artifacts(out_dir: Path, lo: int, hi: int, label_smoothing: float) -> dict:
    """Turn the export in `out_dir` (forward.onnx, eval_raw.onnx, export.json) into the
    artifacts (ort_common.ARTIFACT_FILES) of blocks lo..hi-1; returns meta.json's content."""
    import onnx
    import onnxruntime
    from onnx import helper
    artifacts, _ = _training_modules()
    quiet_ort()
    out_dir = Path(out_dir)
    exported = json.loads((out_dir / EXPORT_META).read_text())
    forward = onnx.load(str(out_dir / FORWARD))
    trainable, state_keys = exported["trainable"], exported["state_keys"]
    model = exported["model"]
    rewritten = rewrite_average_pools(forward)
    expose_layer_norm_statistics(forward)
    initializers = {i.name for i in forward.graph.initializer}
    missing = [n for n in trainable if n not in initializers]
    if missing:
        raise UserError(
            f"The ONNX export of blocks {block_range(lo, hi)} of {model} does not keep the parameters "
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
                            f"blocks {block_range(lo, hi)}; use --backend torch for this model.")
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
                loss=_loss_block(float(label_smoothing)), optimizer=None,
                artifact_directory=str(out_dir),
                additional_output_names=[o for b in bn for o in (b["mean_out"], b["var_out"])])
    except RuntimeError as exc:  # ORT's gradient builder lacks a gradient for some op
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"ONNX Runtime 1.19 cannot build a training graph for blocks {block_range(lo, hi)} of "
            f"{model} with the {exported['head']} head ({first}). Use --backend torch for this "
            f"model.") from None
    # generate_artifacts' own eval model does not load for a module with BatchNorm (see
    # ort_artifacts' docstring): it is replaced by the separately exported EVAL-mode graph.
    eval_model = onnx.load(str(out_dir / EVAL_RAW))
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
        raise UserError(f"The eval export of blocks {block_range(lo, hi)} needs inputs {absent[:5]} that "
                        f"are not module weights; use --backend torch for this model.")
    onnx.save(eval_model, str(out_dir / "eval_model.onnx"))

    store_map = {}
    for name in state_keys:
        head_part, _, rest = name.partition(".")
        if head_part == "blocks":
            offset, _, key = rest.partition(".")
            store_map[name] = ["block", int(offset), key]
        else:
            store_map[name] = ["head", rest]
    meta = {
        "format": ARTIFACT_FORMAT, "lo": lo, "hi": hi, "model": model, "width": exported["width"],
        "head": exported["head"], "num_classes": int(exported["num_classes"]),
        "in_shape": exported["in_shape"], "out_shape": exported["out_shape"],
        "label_smoothing": float(label_smoothing),
        "trainable": trainable,                 # torch's parameter order (optimizer indices)
        "frozen": frozen,                       # BatchNorm running statistics
        "state_keys": state_keys,               # everything the store holds for this module
        "store_map": store_map,                 # onnx/state name -> [block, offset, key] | [head, key]
        "batchnorm": bn,
        "eval_inputs": eval_inputs, "eval_outputs": ["features", "logits"],
        "train_inputs": ["input", "labels", "energy_weight"],
        "constant_initializers": other_inits,
        "average_pools_rewritten": rewritten, "opset": exported["opset"],
        "versions": {"torch": exported["torch"], "onnx": onnx.__version__,
                     "onnxruntime": onnxruntime.__version__},
    }
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    for name in (FORWARD, EVAL_RAW, EXPORT_META):
        (out_dir / name).unlink()
    for name in ARTIFACT_FILES:
        if not (out_dir / name).is_file():
            raise RuntimeError(f"artifact generation did not write {name} into {out_dir}")
    return meta


def main(argv: list[str]) -> int:
    """`FINISH_BOOT SPEC.json RESULT.json`: finish every export listed in the spec
    ({"modules": [{"dir", "lo", "hi"}], "label_smoothing"}); a UserError goes to RESULT.json."""
    from ..atomic import atomic_write_json
    from ..memory.procfs import peak_rss_bytes
    spec_path, result_path = argv
    spec = json.loads(Path(spec_path).read_text())
    try:
        for item in spec["modules"]:
            finish_artifacts(Path(item["dir"]), int(item["lo"]), int(item["hi"]),
                             float(spec["label_smoothing"]))
    except UserError as exc:
        atomic_write_json(result_path, {"error": str(exc)})
        return 2
    atomic_write_json(result_path, {"finished": len(spec["modules"]),
                                    "peak_rss_bytes": peak_rss_bytes(),
                                    "torch_imported": sys.modules.get("torch") is not None})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
