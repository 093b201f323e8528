"""ONNX Runtime training artifacts for one TRGL module (its blocks + auxiliary head): the torch
half (exports). Needs torch and onnx; it runs only in short-lived preparation processes, never in
the trainer (ort_worker.py), so the ~220 MB that torch costs is never part of training. The
other half, which needs onnx and ONNX Runtime's training-graph builder but no torch, is
ort_graph.py; each runs in its own process when the orchestrator sets up a run.

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

import hashlib
import json
import os
import shutil
import sys
import warnings
from pathlib import Path

from ..errors import UserError
from .ort_common import ARTIFACT_FILES, ARTIFACT_FORMAT, artifact_dir, require_ort

OPSET = 17          # ReduceMean takes `axes` as an attribute up to opset 17 (the rewrite uses it)
EXPORT_BATCH = 2    # BatchNorm in training mode needs more than one value per channel


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
    from ..models.blocks import init_weights, make_generator, materialize
    from ..modules import architecture
    arch = architecture(cfg, tuple(in_shape), num_classes)
    blocks = [materialize(arch[i], "cpu") for i in range(lo, hi)]
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


def export_module(cfg, in_shape, num_classes, lo: int, hi: int, out_dir: Path) -> None:
    """The torch half of the artifacts of blocks lo..hi-1 (+ head): the TRAINING-mode forward
    export, the EVAL-mode export and export.json, into out_dir (ort_graph.finish_artifacts, which
    needs no torch, makes the artifacts from them)."""
    require_ort(need_onnx=True)
    import torch

    from .ort_graph import EVAL_RAW, EXPORT_META, FORWARD
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
    _export(train_net, sample, out_dir / FORWARD, training=True, output_names=["logits", "energy"])
    eval_net = _ModuleGraph.make(blocks, head, "eval")
    _export(eval_net, sample, out_dir / EVAL_RAW, training=False, output_names=["features", "logits"])
    exported = {"model": cfg.model, "width": cfg.width, "head": cfg.head,
                "num_classes": int(num_classes), "in_shape": list(blocks[0].in_shape),
                "out_shape": list(blocks[-1].out_shape), "state_keys": state_keys,
                "trainable": trainable, "opset": OPSET, "torch": torch.__version__}
    (out_dir / EXPORT_META).write_text(json.dumps(exported, indent=2, sort_keys=True) + "\n")


def build_artifacts(cfg, in_shape, num_classes, lo: int, hi: int, out_dir: Path) -> dict:
    """Both halves in this process (tests, and callers that hold torch anyway)."""
    from .ort_graph import finish_artifacts
    export_module(cfg, in_shape, num_classes, lo, hi, out_dir)
    return finish_artifacts(Path(out_dir), lo, hi, float(cfg.label_smoothing))


def structure_key(cfg, in_shape, num_classes, lo: int, hi: int, signatures: list[str]) -> str:
    """What the artifacts of a module depend on (not its weights, not its energy weight)."""
    from .ort_common import ort_version
    ident = {"format": ARTIFACT_FORMAT, "model": cfg.model, "width": cfg.width, "head": cfg.head,
             "in_shape": list(in_shape), "classes": int(num_classes), "blocks": signatures,
             "label_smoothing": float(cfg.label_smoothing), "ort": ort_version()}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]


def _artifact_cache_root(cfg, in_shape, num_classes, lo, hi, signatures) -> Path:
    from ..memory.probe_cache import cache_file
    key = structure_key(cfg, in_shape, num_classes, lo, hi, signatures)
    return cache_file().parent / "ort-artifacts" / key


def cached_artifact_path(cfg, in_shape, num_classes, lo: int, hi: int,
                         signatures: list[str]) -> Path | None:
    """The cached probe artifacts of this module structure if they exist (no torch needed)."""
    root = _artifact_cache_root(cfg, in_shape, num_classes, lo, hi, signatures)
    return root if all((root / n).is_file() for n in ARTIFACT_FILES) else None


def export_for_cache(cfg, in_shape, num_classes, lo: int, hi: int, signatures: list[str]) -> dict:
    """The torch half of a planner probe's artifacts, into a temp folder beside the cache entry;
    returns where it is and where the finished artifacts belong (ort_backend finishes and
    renames them)."""
    root = _artifact_cache_root(cfg, in_shape, num_classes, lo, hi, signatures)
    tmp = root.with_name(f".{root.name}.tmp-{os.getpid()}")
    export_module(cfg, in_shape, num_classes, lo, hi, tmp)
    return {"tmp": str(tmp), "path": str(root)}


def publish_cached(tmp: Path, root: Path) -> Path:
    """Move finished probe artifacts into the cache (another planner may have won the race)."""
    if root.exists() and not all((root / n).is_file() for n in ARTIFACT_FILES):
        shutil.rmtree(root, ignore_errors=True)  # an incomplete earlier attempt
    try:
        os.replace(tmp, root)
    except OSError:  # another planner built the same artifacts meanwhile: use theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def export_run_modules(run, cfg, in_shape, num_classes, splits, modules=None) -> list[dict]:
    """The torch half of the artifacts of the run's modules (all, or `modules`), each into its
    artifact folder; returns what ort_graph's finishing step needs for each."""
    todo = []
    for k, (lo, hi) in enumerate(splits):
        if modules is not None and k not in modules:
            continue
        out = Path(run.root) / artifact_dir(k)
        export_module(cfg, in_shape, num_classes, lo, hi, out)
        todo.append({"dir": str(out), "lo": lo, "hi": hi, "k": k})
    return todo


def record_artifacts(run, modules) -> None:
    """Record the finished artifacts' checksums under manifest["ort"]["artifacts"] (not
    "files": they are derived, and rebuilt when damaged)."""
    from ..atomic import sha256_file
    record = run.manifest.setdefault("ort", {}).setdefault("artifacts", {})
    for k in modules:
        rel = artifact_dir(k)
        for name in ARTIFACT_FILES:
            record[f"{rel}/{name}"] = sha256_file(Path(run.root) / rel / name)


# --- the preparation process --------------------------------------------------------------------

def prepare_new_run(spec: dict) -> dict:
    """The torch part of setting up a new ORT run, in a child of the torch-free orchestrator
    (which planned it): stage the run directory, convert the data into it (RUN/data), write the
    initial weights and every module's torch export. The orchestrator then finishes the artifacts in a
    torch-free child and publishes the run (ort_backend._prepare_run)."""
    from ..config import TrainConfig
    from ..memory.measure import release_memory
    from ..run import Run
    from ..rundata import materialize_run_data
    cfg = TrainConfig.from_json(spec["config"]).validate()
    out = Path(cfg.out)
    Run.check_new_root(out)
    plan = spec["plan"]  # made by the torch-free orchestrator (ort_backend._plan_in_orchestrator)
    # Data first, torch second (as train.py): the data are converted into the run's own
    # on-disk copy (RUN/data, which the torch-free trainers stream from) a chunk at a time,
    # before torch's ~220 MB are loaded.
    run = Run.stage_new(out, cfg, plan, spec.get("fingerprint") or "pending")
    try:
        dataset = materialize_run_data(run, cfg)
        release_memory()
        from ..modules import init_store, set_threads  # imports torch: only after the data
        set_threads(cfg)
        splits = [tuple(s) for s in plan["splits"]]
        init_store(run, cfg, dataset.in_shape, dataset.num_classes, splits)
        todo = export_run_modules(run, cfg, dataset.in_shape, dataset.num_classes, splits)
        run.save()
    except BaseException:
        run.discard()
        raise
    return {"staging": str(run.root), "modules": todo}


def export_for_rebuild(spec: dict) -> dict:
    """The torch half of rebuilding the artifacts of the given modules of an existing run."""
    from ..config import TrainConfig
    from ..run import Run
    from ..rundata import run_data_info
    cfg = TrainConfig.from_json(spec["config"])
    run = Run(Path(spec["run_dir"]), json.loads((Path(spec["run_dir"]) / "manifest.json").read_text()))
    info = run_data_info(run)
    plan = run.read_json("plan.json")
    splits = [tuple(s) for s in plan["splits"]]
    todo = export_run_modules(run, cfg, info["in_shape"], info["num_classes"], splits,
                              modules=set(spec["modules"]))
    return {"modules": todo}


def main(argv: list[str]) -> int:
    """`python -m edge_trgl.backends.ort_artifacts prepare|rebuild|probe-artifacts SPEC RESULT`:
    the torch half of a set-up step, in a child of the torch-free orchestrator; the result (or
    a UserError's message) is written to RESULT.json."""
    from ..atomic import atomic_write_json
    from ..memory.measure import peak_rss_bytes
    from ..config import TrainConfig
    command, spec_path, result_path = argv
    spec = json.loads(Path(spec_path).read_text())
    try:
        if command == "prepare":
            result = prepare_new_run(spec)
        elif command == "rebuild":
            result = export_for_rebuild(spec)
        elif command == "probe-artifacts":
            result = export_for_cache(TrainConfig.from_json(spec["config"]), spec["in_shape"],
                                      spec["num_classes"], spec["lo"], spec["hi"],
                                      spec["signatures"])
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
