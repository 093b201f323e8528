"""PyTorch backend (CPU, or CUDA with --device cuda): the module-wise training loop."""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from ..cache import write_module_cache
from ..errors import UserError
from ..memory.measure import release_memory
from ..meter import EpochMeter
from ..modules import (load_module, make_optimizer, module_parameters, optimizer_from_numpy,
                       optimizer_to_numpy, save_module, to_numpy_state)
from ..prefetch import prefetch_batches, prefetched
from ..sources import epoch_rng
from ..store import (checkpoint_path, load_tensors, module_files, optim_path, prefixed,
                     save_tensors, unprefixed)
from ..trgl import AdaptiveWeight, module_loss


class BudgetExceeded(UserError):
    """The run's RSS watchdog saw the process over its share of the budget: stopped at a safe
    point (the one-paragraph error, exit 2, not a traceback)."""


def autocast(cfg, device: torch.device):
    if cfg.amp is None:
        return contextlib.nullcontext()
    dtype = torch.float16 if cfg.amp == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def forward_module(blocks, head, x):
    energy = x.new_zeros(())
    for block in blocks:
        x, e = block(x)
        energy = energy + e
    return x, head(x), energy


def to_device(array, device: torch.device) -> torch.Tensor:
    """A host batch (numpy, or a tensor the prefetcher already pinned) on `device`. On CUDA the
    copy is asynchronous from page-locked memory; the caching host allocator keeps the pinned
    buffer alive until the copy has run."""
    tensor = array if torch.is_tensor(array) else torch.from_numpy(np.ascontiguousarray(array))
    if device.type == "cuda":
        if not tensor.is_pinned():
            tensor = tensor.pin_memory()
        return tensor.to(device, non_blocking=True)
    return tensor


@torch.no_grad()
def evaluate(blocks, head, source, batch_size: int, device, cfg) -> float | None:
    if source is None or source.count == 0:
        return None
    for m in [*blocks, head]:
        m.eval()
    correct = 0
    with prefetched(source.batches(batch_size), device) as batches:
        for x, y in batches:
            with autocast(cfg, device):
                _, logits, _ = forward_module(blocks, head, to_device(x, device))
            correct += int((logits.argmax(1).cpu().numpy() == y).sum())
    return correct / source.count


def check_budget(ctx) -> None:
    dog = ctx.watchdog
    if dog is not None and dog.exceeded_bytes is not None and ctx.cfg.extra.get("on_over_budget", "stop") == "stop":
        from ..budget import format_size
        raise BudgetExceeded(
            f"Measured {getattr(dog, 'measured_what', 'RSS')} reached "
            f"{format_size(dog.exceeded_bytes)}, over the budget of "
            f"{format_size(dog.limit_bytes)} this process may hold. The run stopped at a safe "
            f"point with everything up to its last finished epoch saved in {ctx.run.root}; this "
            f"is a planner bug, please report it with the run's plan.json. Continue as planned "
            f"with `edge-trgl train --resume {ctx.run.root}`, or start a new run with a smaller "
            f"--batch-size or a larger --mem-budget.")


def train_epoch(ctx, blocks, head, optimizer, source, order_rng, aug_rng, weight, adaptive,
                scaler, device, desc: str) -> dict:
    cfg = ctx.cfg
    for m in [*blocks, head]:
        m.train()
    meter = EpochMeter()
    with prefetched(source.batches(ctx.batch_size, order_rng, aug_rng, min_batch=2),
                    device) as batches:
        for x_np, y_np in ctx.progress_bar(batches, total=-(-source.count // ctx.batch_size),
                                           desc=desc):
            x, y = to_device(x_np, device), to_device(y_np, device)
            w = adaptive.weight if adaptive is not None else weight
            with autocast(cfg, device):
                _, logits, energy = forward_module(blocks, head, x)
                loss, ce = module_loss(logits.float(), y, energy.float(), w, cfg.label_smoothing)
            optimizer_step(optimizer, loss, scaler)
            if adaptive is not None:  # the only per-step read of a value (a GPU sync on CUDA)
                adaptive.update(float(ce.detach()))
            meter_add(meter, loss, ce, energy, logits, y, len(y_np))
            check_budget(ctx)
    return meter.stats()


def meter_add(meter, loss, ce, energy, logits, y, n: int) -> None:
    """One step's figures into the epoch's meter without reading them back (no GPU sync); float64
    sums, the precision of the Python floats they replace."""
    meter.add(loss.detach().double(), ce.detach().double(), energy.detach().double(),
              (logits.argmax(1) == y).sum(), n)


def optimizer_step(optimizer, loss, scaler) -> None:
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()


def make_scaler(cfg, device):
    if cfg.amp == "fp16" and device.type == "cuda":
        return torch.amp.GradScaler("cuda")
    return None


def scaler_state(scaler) -> dict | None:
    """The fp16 loss scale and its growth tracker, JSON-ready for a checkpoint's metadata: a
    resumed run continues with the scale it had, not from 65536 with skipped steps."""
    if scaler is None:
        return None
    return {k: (float(v) if isinstance(v, float) else v) for k, v in scaler.state_dict().items()}


def load_scaler_state(scaler, state: dict | None) -> None:
    if scaler is not None and state:
        scaler.load_state_dict(state)


class TorchBackend:
    name = "torch"

    def __init__(self, cfg):
        self.cfg = cfg
        if cfg.device == "cuda":
            from ..memory.cuda import require_cuda
            require_cuda(cfg)
        self.device = torch.device(cfg.device)

    # --- training ---------------------------------------------------------------------------
    def train_module(self, ctx, task) -> dict:
        last = self._train_module(ctx, task)
        release_memory()  # after the module's weights went out of scope with the call above
        return last

    def _train_module(self, ctx, task) -> dict:
        cfg, run, device = self.cfg, ctx.run, self.device
        progress = run.manifest["progress"]
        ckpt = (progress.get("ckpt") if progress.get("phase") == "train"
                and progress.get("lap") == task.lap and progress.get("module") == task.k else None)
        # Resuming mid-module: the checkpoint holds every weight and the optimizer state, and the
        # store's copies of this module may be torn (see load_module), so they are not read.
        blocks, head = load_module(run, cfg, ctx.in_shape, ctx.num_classes, task.lo, task.hi,
                                   task.k, device, from_store=ckpt is None)
        optimizer = make_optimizer(cfg, module_parameters(blocks, head))
        if ckpt is None and run.checksum(optim_path(task.k)) is not None:
            # later laps keep the optimizer state
            state, _ = load_tensors(run.root, optim_path(task.k), run.checksum(optim_path(task.k)))
            optimizer_from_numpy(optimizer, state)
        adaptive = AdaptiveWeight() if task.energy_weight is None else None
        scaler = make_scaler(cfg, device)
        start_epoch = 0
        if ckpt is not None:
            start_epoch = self._load_checkpoint(run, ckpt, blocks, head, optimizer, adaptive,
                                                scaler)
        val_source = ctx.source(task.k, "val")
        last = {}
        for epoch in range(start_epoch, task.epochs):
            source, aug_rng = ctx.train_source(task.k, task.lap, epoch, task.input_views)
            order_rng = epoch_rng(cfg.seed, task.lap, task.k, epoch)
            stats = train_epoch(ctx, blocks, head, optimizer, source, order_rng, aug_rng,
                                task.energy_weight, adaptive, scaler, device,
                                desc=f"lap {task.lap} module {task.k} epoch {epoch + 1}/{task.epochs}")
            stats["val_acc"] = evaluate(blocks, head, val_source, ctx.eval_batch_size, device, cfg)
            stats.update({"scheme": cfg.scheme, "lap": task.lap, "module": task.k, "epoch": epoch + 1,
                          "energy_weight": adaptive.weight if adaptive else task.energy_weight,
                          "rss_bytes": ctx.rss_now()})
            ctx.log_epoch(stats)
            self._save_checkpoint(run, task, epoch + 1, blocks, head, optimizer, adaptive, scaler)
            last = stats
            ctx.check_interrupt()
        run.commit_module(module_files(task),
                          lambda: save_module(run, blocks, head, task.lo, task.k, optimizer),
                          {"lap": task.lap, "module": task.k})
        return last

    def _save_checkpoint(self, run, task, epoch_done, blocks, head, optimizer, adaptive,
                         scaler) -> None:
        tensors = {}
        for offset, block in enumerate(blocks):
            tensors.update(prefixed(to_numpy_state(block), f"block{task.lo + offset}."))
        tensors.update(prefixed(to_numpy_state(head), "head."))
        tensors.update(prefixed(optimizer_to_numpy(optimizer), "optim."))
        meta = {"epoch_done": epoch_done, "adaptive": adaptive.state() if adaptive else None,
                "scaler": scaler_state(scaler)}
        rel = checkpoint_path(task.k, task.lap, epoch_done)
        run.commit_checkpoint(rel, save_tensors(run.root, rel, tensors, meta),
                              {"lap": task.lap, "module": task.k, "epoch_done": epoch_done})

    def _load_checkpoint(self, run, rel, blocks, head, optimizer, adaptive, scaler) -> int:
        tensors, meta = load_tensors(run.root, rel, run.checksum(rel))
        for block_index, block in self._indexed(blocks, tensors):
            block.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in
                                   unprefixed(tensors, f"block{block_index}.").items()})
        head.load_state_dict({k: torch.from_numpy(np.array(v))
                              for k, v in unprefixed(tensors, "head.").items()})
        optim_state = unprefixed(tensors, "optim.")
        if optim_state:
            optimizer_from_numpy(optimizer, optim_state)
        if adaptive is not None and meta.get("adaptive"):
            adaptive.load_state(meta["adaptive"])
        load_scaler_state(scaler, meta.get("scaler"))
        return int(meta["epoch_done"])

    @staticmethod
    def _indexed(blocks, tensors):
        indices = sorted({int(k.split(".", 1)[0][len("block"):]) for k in tensors if k.startswith("block")})
        return zip(indices, blocks)

    # --- feature cache ----------------------------------------------------------------------
    def write_features(self, ctx, task) -> dict:
        accuracy = self._write_features(ctx, task)
        release_memory()  # after the module's weights went out of scope with the call above
        return accuracy

    @torch.no_grad()
    def _write_features(self, ctx, task) -> dict:
        cfg, device = self.cfg, self.device
        blocks, head = load_module(ctx.run, cfg, ctx.in_shape, ctx.num_classes, task.lo, task.hi,
                                   task.k, device)
        for m in [*blocks, head]:
            m.eval()

        def batches(source, aug_rng):
            return prefetch_batches(source.batches(ctx.eval_batch_size, None, aug_rng), device)

        def predict(x):
            with autocast(cfg, device):
                feats, logits, _ = forward_module(blocks, head, to_device(x, device))
            return feats.float().cpu().numpy(), logits.float().cpu().numpy()

        return write_module_cache(ctx, task, tuple(blocks[-1].out_shape), batches, predict,
                                  check_budget)
