"""The parallel (batch-wise) and end-to-end schemes: every block is resident for the whole run.
They exist as baselines and for users who have the memory; they read raw images only."""

from __future__ import annotations

from functools import partial

import numpy as np
import torch

from .compiled import compiled
from .backends.torch_backend import (check_budget, forward_module, load_scaler_state, make_scaler,
                                     optimizer_step, scaler_state, step_figures, to_device)
from .loop import check_finite, train_epoch
from .memory.measure import release_memory
from .modules import (autocast, forward_blocks, load_module,
                      make_optimizer, module_parameters, optimizer_from_numpy, optimizer_to_numpy,
                      save_module, to_numpy_state)
from .prefetch import prefetched
from .schedule import lr_at
from .segments import checkpoint_segment_count
from .sources import epoch_rng
from .store import block_path, head_path, load_tensors, prefixed, save_tensors, unprefixed
from .trgl import energy_weight, module_loss, module_weights

CKPT = "ckpt/resident-epoch{:03d}.safetensors"


def load_modules(ctx, device, from_store: bool = True, upto: int | None = None):
    """Modules 0..upto-1 (all by default), blocks and heads, from the block store."""
    loaded = []
    for k, (lo, hi) in enumerate(ctx.splits[:upto]):
        loaded.append(load_module(ctx.run, ctx.cfg, ctx.in_shape, ctx.num_classes, lo, hi, k,
                                  device, from_store=from_store))
    return loaded


def train_resident(ctx) -> None:
    cfg, run = ctx.cfg, ctx.run
    if run.manifest["progress"].get("phase") == "done":  # resumed after the last save: nothing left
        return
    device = torch.device(cfg.device)
    # Resuming from a checkpoint: it holds every weight, and the store may be torn by a crash
    # during the final write-back (see modules.load_module), so the store is not read.
    modules = load_modules(ctx, device, from_store=_checkpoint_to_resume(ctx) is None)
    e2e = cfg.scheme == "e2e"
    if e2e:
        all_blocks = [b for blocks, _ in modules for b in blocks]
        final_head = modules[-1][1]
        optimizers = [make_optimizer(cfg, module_parameters(all_blocks, final_head))]
        weights = [energy_weight(cfg.tau) if cfg.e2e_energy else 0.0]
    else:
        optimizers = [make_optimizer(cfg, module_parameters(b, h)) for b, h in modules]
        weights = parallel_weights(cfg, len(modules))
    # One loss scaler per optimizer: GradScaler.update() belongs once per step of its optimizer,
    # and one module's fp16 overflow must not halve the other modules' scales.
    scalers = [make_scaler(cfg, device) for _ in optimizers]
    start_epoch = _resume(ctx, modules, optimizers, scalers)
    engine = ResidentEngine(cfg, device, modules, optimizers, scalers, weights, e2e)
    # end-to-end trains only the last head: the others are not scored (parallel: every head)
    scored = {len(modules) - 1} if e2e else None
    raw_train = ctx.raw("train")
    val = ctx.raw("val")
    epochs = cfg.epochs
    steps_per_epoch = -(-raw_train.count // ctx.batch_size)
    for epoch in range(start_epoch, epochs):
        order_rng = epoch_rng(cfg.seed, 0, 0, epoch)
        aug_rng = epoch_rng(cfg.seed, 0, 0, epoch, 1) if cfg.augment else None

        def lr_of_step(step, epoch=epoch):
            return lr_at(cfg, module=0, epoch=epoch, step=step, epochs=epochs,
                         steps_per_epoch=steps_per_epoch)

        # loss, ce, energy, accuracy of the last module
        meter_stats = train_epoch(ctx, engine, raw_train, order_rng, aug_rng, None, None,
                                  f"{cfg.scheme} epoch {epoch + 1}/{epochs}", lr_of_step)
        stats = {"scheme": cfg.scheme, "lap": 0, "module": len(modules) - 1, "epoch": epoch + 1,
                 **meter_stats, "rss_bytes": ctx.rss_now(),
                 "val_acc": chain_accuracy(ctx, modules, val, device, heads=scored)[-1]}
        ctx.log_epoch(stats)
        _checkpoint(ctx, epoch + 1, modules, optimizers, scalers)
        ctx.check_interrupt()
    # Until the new checksums are recorded, the last checkpoint is the network's state.
    run.unlist([block_path(i) for i in range(ctx.splits[-1][1])]
               + [head_path(k) for k in range(len(ctx.splits))])
    for k, ((blocks, head), (lo, hi)) in enumerate(zip(modules, ctx.splits)):
        save_module(run, blocks, head, lo, k, None)
    test = ctx.raw("test")
    val_accs = chain_accuracy(ctx, modules, val, device, heads=scored)
    test_accs = chain_accuracy(ctx, modules, test, device, heads=scored)
    for k, (lo, hi) in enumerate(ctx.splits):
        trained = (not e2e) or k == len(modules) - 1
        run.manifest["modules"][str(k)] = {
            "lo": lo, "hi": hi, "lap": 0,
            "val_acc": val_accs[k] if trained else None,
            "test_acc": test_accs[k] if trained else None}
    old = run.manifest["progress"].get("ckpt")
    run.manifest["progress"] = {"lap": 0, "module": len(modules) - 1, "phase": "done"}
    if old:
        run.forget_files(old)
    run.save()
    if old:
        (run.root / old).unlink(missing_ok=True)
    del modules, optimizers, engine
    release_memory()


def score_test_at_end(ctx, wanted: list[int]) -> None:
    """final_test.py's one test pass: modules 0..max(wanted) from the store, the raw test images
    through them, the heads of `wanted` scored; recorded in the manifest."""
    run, device = ctx.run, torch.device(ctx.cfg.device)
    modules = load_modules(ctx, device, upto=wanted[-1] + 1)
    accs = chain_accuracy(ctx, modules, ctx.raw("test"), device, heads=set(wanted))
    for k in wanted:
        run.manifest["modules"][str(k)]["test_acc"] = accs[k]
    run.save()
    del modules
    release_memory()


def forward_network(blocks, head, segments, x):
    """End-to-end's forward pass: (output, logits, energy), checkpointed in `segments`."""
    out, energy = forward_blocks(blocks, x, segments)
    return out, head(out), energy


class ResidentEngine:
    """Every module resident, stepped as the scheme says, for the shared epoch loop (loop.py):
    e2e backpropagates through the whole network into the last head; parallel steps each module
    on the previous one's detached output, each with its own optimizer and loss scaler."""

    def __init__(self, cfg, device, modules, optimizers, scalers, weights, e2e: bool):
        self.cfg, self.device, self.modules = cfg, device, modules
        self.optimizers, self.scalers, self.weights, self.e2e = optimizers, scalers, weights, e2e
        if e2e:
            self.all_blocks = [b for blocks, _ in modules for b in blocks]
            self.final_head = modules[-1][1]
            self.segments = checkpoint_segment_count(cfg, len(self.all_blocks))
            self._forward = compiled(cfg, partial(forward_network, self.all_blocks,
                                                  self.final_head, self.segments))
        else:
            self._forwards = [compiled(cfg, partial(forward_module, blocks, head))
                              for blocks, head in modules]

    def set_lr(self, lr: float) -> None:
        for opt in self.optimizers:
            for group in opt.param_groups:
                group["lr"] = lr

    def batches(self, batches):
        for blocks, head in self.modules:
            for m in [*blocks, head]:
                m.train()
        return prefetched(batches, self.device)

    def train_step(self, x_np, y_np, weight, keep_features: bool = False) -> tuple:
        cfg, device = self.cfg, self.device
        x, y = to_device(x_np, device), to_device(y_np, device)
        if self.e2e:
            with autocast(cfg, device):
                out, logits, energy = self._forward(x)
                loss, ce = module_loss(logits.float(), y, energy.float(), self.weights[0],
                                       cfg.label_smoothing)
            optimizer_step(self.optimizers[0], loss, self.scalers[0])
            return step_figures(loss, ce, energy, logits, y, len(y_np))
        return self.step_modules(x, y, len(y_np))[1]

    def step_modules(self, x, y, n: int) -> tuple:
        """The parallel step: each module steps on the previous one's detached output; returns
        the last module's detached output and its figures."""
        cfg, device = self.cfg, self.device
        for forward, opt, scaler, w in zip(self._forwards, self.optimizers, self.scalers,
                                           self.weights):
            with autocast(cfg, device):
                out, logits, energy = forward(x)
                loss, ce = module_loss(logits.float(), y, energy.float(), w, cfg.label_smoothing)
            optimizer_step(opt, loss, scaler)
            x = out.detach()
        return x, step_figures(loss, ce, energy, logits, y, n)

    def check_budget(self, ctx) -> None:
        check_budget(ctx)


@torch.no_grad()
def chain_accuracy(ctx, modules, source, device, heads: set | None = None
                   ) -> list[float | None]:
    """Accuracy of every module's head (or of those in `heads`; None for the others), each on
    the output of the modules before it."""
    if source is None:
        return [None] * len(modules)
    for blocks, head in modules:
        for m in [*blocks, head]:
            m.eval()
    correct = [0] * len(modules)
    with prefetched(source.batches(ctx.eval_batch_size), device) as batches:
        for x_np, y_np in batches:
            x = to_device(x_np, device)
            for k, (blocks, head) in enumerate(modules):
                with autocast(ctx.cfg, device):
                    if heads is None or k in heads:
                        x, logits, _ = forward_module(blocks, head, x)
                        correct[k] += int((logits.argmax(1).cpu().numpy() == y_np).sum())
                    else:
                        x, _ = forward_blocks(blocks, x)
    return [c / source.count if heads is None or k in heads else None
            for k, c in enumerate(correct)]


def checkpoint_state(ctx, ks, modules, optimizers, scalers, epoch_done: int,
                     where: str) -> tuple[dict, dict]:
    """(tensors, meta) of a resident checkpoint: the weights of modules `ks` ('block<i>.',
    'head<k>.'; checked finite, `where` names them in the message), optimizer i's state
    ('optim<ks[i]>.': e2e's one optimizer is optim0) and the loss scalers. One process holds
    every module; a --distributed rank its share (pipeline.py)."""
    tensors = {}
    for k, (blocks, head) in zip(ks, modules):
        lo = ctx.splits[k][0]
        for offset, block in enumerate(blocks):
            tensors.update(prefixed(to_numpy_state(block), f"block{lo + offset}."))
        tensors.update(prefixed(to_numpy_state(head), f"head{k}."))
    check_finite(ctx.run, ctx.cfg, tensors, where)
    for k, opt in zip(ks, optimizers):
        tensors.update(prefixed(optimizer_to_numpy(opt), f"optim{k}."))
    return tensors, {"epoch_done": epoch_done, "scalers": [scaler_state(s) for s in scalers]}


def restore_state(ctx, ks, modules, optimizers, scalers, tensors: dict, meta: dict) -> None:
    """checkpoint_state's inverse."""
    def state(prefix):
        return {k: torch.from_numpy(np.array(v)) for k, v in unprefixed(tensors, prefix).items()}
    for k, (blocks, head) in zip(ks, modules):
        lo = ctx.splits[k][0]
        for offset, block in enumerate(blocks):
            block.load_state_dict(state(f"block{lo + offset}."))
        head.load_state_dict(state(f"head{k}."))
    for k, opt in zip(ks, optimizers):
        arrays = unprefixed(tensors, f"optim{k}.")
        if arrays:
            optimizer_from_numpy(opt, arrays)
    for scaler, saved in zip(scalers, meta.get("scalers") or []):
        load_scaler_state(scaler, saved)


def parallel_weights(cfg, count: int) -> list[float]:
    """Each module's energy weight in the parallel scheme: the tau schedule's, else tau's own."""
    return [w if w is not None else energy_weight(cfg.tau) for w in module_weights(cfg, count)]


def _checkpoint(ctx, epoch_done, modules, optimizers, scalers) -> None:
    run = ctx.run
    tensors, meta = checkpoint_state(ctx, range(len(modules)), modules, optimizers, scalers,
                                     epoch_done, f"{ctx.cfg.scheme} training, epoch {epoch_done}")
    rel = CKPT.format(epoch_done)
    run.commit_checkpoint(rel, save_tensors(run.root, rel, tensors, meta),
                          {"lap": 0, "module": 0, "epoch_done": epoch_done})


def _checkpoint_to_resume(ctx) -> str | None:
    progress = ctx.run.manifest["progress"]
    return progress.get("ckpt") if progress.get("phase") == "train" else None


def _resume(ctx, modules, optimizers, scalers) -> int:
    rel = _checkpoint_to_resume(ctx)
    if not rel:
        return 0
    tensors, meta = load_tensors(ctx.run.root, rel, ctx.run.checksum(rel))
    restore_state(ctx, range(len(modules)), modules, optimizers, scalers, tensors, meta)
    return int(meta["epoch_done"])
