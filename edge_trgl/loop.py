"""The one training loop, shared by every target: `train_module` trains one module of the
module-wise schemes (epochs, resume from the last epoch checkpoint, the checkpoint format, logging,
the memory and stop checks, the learning rate at every step), and `train_epoch` is one epoch of
steps, which the resident schemes (resident.py) use too.

numpy-only: the torch-free ONNX Runtime trainer runs it as the torch backend does. What differs
between the frameworks is an `Engine` (backends/torch_backend.py: TorchEngine, ort_worker.py:
OrtEngine): load and save its state, set the learning rate, take one step, predict."""

from __future__ import annotations

import contextlib
from typing import Protocol

import numpy as np

from . import harvest
from .errors import Diverged
from .schedule import lr_at
from .sources import epoch_rng
from .store import checkpoint_path, load_tensors, module_files, optim_path, prefixed, save_tensors
from .trgl import AdaptiveWeight


class Engine(Protocol):
    """One module (or, for the resident schemes, the whole network) on one framework."""

    # a few fields the engine adds to every epoch's log record ({"backend": "ort"})
    log_fields: dict
    out_shape: tuple  # one sample's output of the module

    def load_from_store(self, task) -> None:
        """The module's weights from the block store (before its first epoch of a lap)."""

    def load_optimizer(self, arrays: dict) -> None:
        """Optimizer state in torch's format ('<index>.momentum_buffer', ...)."""

    def load_checkpoint(self, task, tensors: dict, meta: dict) -> None:
        """Weights ('block<i>.<key>', 'head.<key>'), 'optim.' state and the engine's own meta
        (e.g. the fp16 loss scale) from an epoch checkpoint."""

    def checkpoint_tensors(self, task) -> tuple[dict, dict]:
        """(weights keyed as in load_checkpoint, optimizer state) for an epoch checkpoint."""

    def checkpoint_meta(self) -> dict:
        """The engine's own checkpoint metadata ({} if none)."""

    def save_to_store(self, task) -> None:
        """Write the trained module's blocks, head and optimizer state to the block store."""

    def set_lr(self, lr: float) -> None: ...

    def batches(self, batches):
        """A context manager over the host batches (the torch engine reads ahead onto its device)."""

    def train_step(self, x, y, weight: float, keep_features: bool = False) -> tuple:
        """One optimizer step; (loss, ce, energy, correct, n), the first four numbers or 0-d
        tensors that EpochMeter sums without reading them back. `keep_features`: hold the
        module's outputs of this step for `step_features`."""

    def step_features(self):
        """The last step's module outputs (numpy, before its weight update), then let go."""

    def features(self, x):
        """The module's outputs for host batch x in eval mode (numpy)."""

    def evaluate(self, source, batch_size: int) -> float | None: ...

    def check_budget(self, ctx) -> None:
        """Raise the engine's over-budget error if the watchdog saw the process over its share."""


def no_read_ahead(batches):
    return contextlib.nullcontext(batches)


def train_epoch(ctx, engine, source, order_rng, aug_rng, weight: float | None, adaptive,
                desc: str, lr_of_step, harvest=None) -> dict:
    """One epoch over `source` (shuffled by order_rng, augmented by aug_rng): the learning rate
    from `lr_of_step(step)`, the energy weight fixed or adaptive, one engine step per batch.
    A final batch of one sample is dropped (BatchNorm cannot normalise it; the shuffled order
    still shows every sample over the epochs). With `harvest` (harvest.HarvestWriter), every
    step's module outputs are written to it at their samples' indices."""
    from .meter import EpochMeter
    meter = EpochMeter()
    keep = harvest is not None
    with engine.batches(source.batches(ctx.batch_size, order_rng, aug_rng, min_batch=2,
                                       with_index=keep)) as batches:
        steps = ctx.progress_bar(batches, total=-(-source.count // ctx.batch_size), desc=desc)
        for step, batch in enumerate(steps):
            x, y = batch[0], batch[1]
            engine.set_lr(lr_of_step(step))
            w = adaptive.weight if adaptive is not None else weight
            loss, ce, energy, correct, n = engine.train_step(x, y, w, keep_features=keep)
            if keep:
                harvest.write(batch[2], engine.step_features())
            if adaptive is not None:  # the only per-step read of a value (a GPU sync on CUDA)
                adaptive.update(float(ce))
            meter.add(loss, ce, energy, correct, n)
            engine.check_budget(ctx)
    if keep and len(missing := harvest.missing()):  # the dropped batch of one sample
        harvest.write(missing, engine.features(source.take(missing)))
    return meter.stats()


def resume_point(run, task) -> str | None:
    """The epoch checkpoint to resume this module from, if the run stopped while training it."""
    progress = run.manifest["progress"]
    if (progress.get("phase") == "train" and progress.get("lap") == task.lap
            and progress.get("module") == task.k):
        return progress.get("ckpt")
    return None


def train_module(ctx, task, engine) -> dict:
    """Train module task.k from its stored weights (or from the epoch checkpoint the run stopped
    at: it holds every weight and the optimizer state, and the store's copies of this module may
    be torn, so the store is then not read), checkpoint every epoch, write the trained module
    back to the store. Returns the last epoch's figures."""
    cfg, run = ctx.cfg, ctx.run
    ckpt = resume_point(run, task)
    adaptive = AdaptiveWeight() if task.energy_weight is None else None
    start_epoch = 0
    if ckpt is not None:
        tensors, meta = load_tensors(run.root, ckpt, run.checksum(ckpt))
        engine.load_checkpoint(task, tensors, meta)
        if adaptive is not None and meta.get("adaptive"):
            adaptive.load_state(meta["adaptive"])
        start_epoch = int(meta["epoch_done"])
    else:
        engine.load_from_store(task)
        if run.checksum(optim_path(task.k)) is not None:  # later laps keep the optimizer state
            state, _ = load_tensors(run.root, optim_path(task.k), run.checksum(optim_path(task.k)))
            engine.load_optimizer(state)
    val_source = ctx.source(task.k, "val")
    last = {}
    first_harvested = task.epochs - task.harvested
    for epoch in range(start_epoch, task.epochs):
        source, aug_rng = ctx.train_source(task.k, task.lap, epoch, task.input_views)
        steps_per_epoch = -(-source.count // ctx.batch_size)

        def lr_of_step(step, epoch=epoch):
            return lr_at(cfg, module=task.k, lap=task.lap, epoch=epoch, step=step,
                         epochs=task.epochs, steps_per_epoch=steps_per_epoch)

        writer = None
        if task.harvested and epoch >= first_harvested:
            harvest.begin(run, task)
            writer = harvest.HarvestWriter(run.root, task.k, epoch - first_harvested, source.count,
                                           engine.out_shape, cfg.cache_dtype)
        try:
            stats = train_epoch(ctx, engine, source, epoch_rng(cfg.seed, task.lap, task.k, epoch),
                                aug_rng, task.energy_weight, adaptive,
                                f"lap {task.lap} module {task.k} epoch {epoch + 1}/{task.epochs}",
                                lr_of_step, writer)
            if writer is not None:
                harvest.record(run, task, writer.name, writer.finish())
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        stats["val_acc"] = engine.evaluate(val_source, ctx.eval_batch_size)
        stats.update({"scheme": cfg.scheme, "lap": task.lap, "module": task.k, "epoch": epoch + 1,
                      "energy_weight": adaptive.weight if adaptive else task.energy_weight,
                      "rss_bytes": ctx.rss_now(), **engine.log_fields})
        ctx.log_epoch(stats)
        save_checkpoint(run, cfg, task, epoch + 1, engine, adaptive)
        last = stats
        ctx.check_interrupt()
    run.commit_module(module_files(task), lambda: engine.save_to_store(task),
                      {"lap": task.lap, "module": task.k})
    return last


def check_finite(run, cfg, weights: dict, where: str) -> None:
    """Stop before a checkpoint would save NaN or inf weights. Without this check a diverged
    module went on to feed NaN to every later module, and the run finished "successfully" at
    chance accuracy (ResNet-56, K=4, 2 epochs, --aug-policy training: module 1 diverged in its
    second epoch and modules 1-3 reported 10 %)."""
    bad = [name for name, value in weights.items()
           if np.issubdtype(np.asarray(value).dtype, np.floating) and not np.isfinite(value).all()]
    if bad:
        raise Diverged(
            f"Training diverged: {where} ended with NaN/inf weights ({len(bad)} tensors, e.g. "
            f"{bad[0]}), so it was not saved. The run {run.root} keeps what was saved before that epoch, "
            f"but resuming it would diverge the same way. Start a new run with a smaller "
            f"learning rate (--lr {cfg.lr / 2:g} instead of {cfg.lr:g}) or a longer warm-up "
            f"(--warmup-epochs); the per-epoch losses are in {run.root / 'metrics.jsonl'}.")


def save_checkpoint(run, cfg, task, epoch_done: int, engine, adaptive) -> None:
    """The epoch checkpoint: every weight of the module ('block<i>.', 'head.'), the optimizer
    state ('optim.'), the epoch, the adaptive weight and the engine's own metadata."""
    weights, optimizer = engine.checkpoint_tensors(task)
    check_finite(run, cfg, weights,
                 f"lap {task.lap} module {task.k}, epoch {epoch_done}" if task.lap else
                 f"module {task.k}, epoch {epoch_done}")
    tensors = dict(weights)
    tensors.update(prefixed(optimizer, "optim."))
    meta = {"epoch_done": epoch_done, "adaptive": adaptive.state() if adaptive else None,
            **engine.checkpoint_meta()}
    rel = checkpoint_path(task.k, task.lap, epoch_done)
    run.commit_checkpoint(rel, save_tensors(run.root, rel, tensors, meta),
                          {"lap": task.lap, "module": task.k, "epoch_done": epoch_done})
