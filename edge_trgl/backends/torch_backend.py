"""PyTorch backend (CPU, or CUDA with --device cuda): one module as an Engine of the shared
training loop (loop.py: TorchEngine), the module's feature cache, and the torch helpers the
resident schemes share (forward pass, device copies, loss scaling, evaluation)."""

from __future__ import annotations

from functools import partial

import numpy as np
import torch

from ..cache import write_module_cache
from ..compiled import compiled
from ..errors import UserError
from ..harvest import intact_views
from ..memory.measure import release_memory
from ..modules import (autocast, forward_blocks, input_layout, load_module, make_optimizer,
                       module_parameters, optimizer_from_numpy, optimizer_to_numpy, save_module,
                       to_numpy_state)
from ..prefetch import prefetch_batches, prefetched
from ..loop import resume_point, train_module
from ..store import prefixed, unprefixed
from ..trgl import module_loss


class BudgetExceeded(UserError):
    """The run's RSS watchdog saw the process over its share of the budget: stopped at a safe
    point (the one-paragraph error, exit 2, not a traceback)."""


def forward_module(blocks, head, x):
    x, energy = forward_blocks(blocks, x)
    return x, head(x), energy


def to_device(array, device: torch.device) -> torch.Tensor:
    """A host batch (numpy, or a tensor the prefetcher already pinned) on `device`, in its
    layout (modules.input_layout). On CUDA the copy is asynchronous from page-locked memory; the
    caching host allocator keeps the pinned buffer alive until the copy has run."""
    tensor = array if torch.is_tensor(array) else torch.from_numpy(np.ascontiguousarray(array))
    if device.type == "cuda":
        if not tensor.is_pinned():
            tensor = tensor.pin_memory()
        return tensor.to(device, non_blocking=True)
    return input_layout(tensor, device)


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
    exceeded = ctx.over_budget_bytes()
    if exceeded is not None:
        from ..budget import format_size
        dog = ctx.watchdog
        raise BudgetExceeded(
            f"Measured {getattr(dog, 'measured_what', 'RSS')} reached "
            f"{format_size(exceeded)}, over the budget of "
            f"{format_size(dog.limit_bytes)} this process may hold. The run stopped at a safe "
            f"point with everything up to its last finished epoch saved in {ctx.run.root}; this "
            f"is a planner bug, please report it with the run's plan.json. Continue as planned "
            f"with `edge-trgl train --resume {ctx.run.root}`, or start a new run with a smaller "
            f"--batch-size or a larger --mem-budget.")


def step_figures(loss, ce, energy, logits, y, n: int) -> tuple:
    """One step's figures for the epoch's meter, not read back (no GPU sync): float64 0-d
    tensors, the precision of the Python floats they replace."""
    return (loss.detach().double(), ce.detach().double(), energy.detach().double(),
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


class TorchEngine:
    """One module on torch (CPU or CUDA) for the shared training loop (loop.py)."""

    log_fields: dict = {}

    def __init__(self, ctx, task, device, *, from_store: bool):
        self.cfg, self.device = ctx.cfg, device
        self.run = ctx.run
        self.blocks, self.head = load_module(ctx.run, ctx.cfg, ctx.in_shape, ctx.num_classes,
                                             task.lo, task.hi, task.k, device, from_store=from_store)
        self.optimizer = make_optimizer(ctx.cfg, module_parameters(self.blocks, self.head))
        self.scaler = make_scaler(ctx.cfg, device)
        self.out_shape = tuple(self.blocks[-1].out_shape)
        self._kept = None
        self._forward = compiled(ctx.cfg, partial(forward_module, self.blocks, self.head))

    # state ---------------------------------------------------------------------------------------
    def load_from_store(self, task) -> None:
        return None  # read when the module was built (load_module)

    def load_optimizer(self, arrays: dict) -> None:
        optimizer_from_numpy(self.optimizer, arrays)

    def load_checkpoint(self, task, tensors: dict, meta: dict) -> None:
        indices = sorted({int(k.split(".", 1)[0][len("block"):]) for k in tensors
                          if k.startswith("block")})
        for block_index, block in zip(indices, self.blocks):
            block.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in
                                   unprefixed(tensors, f"block{block_index}.").items()})
        self.head.load_state_dict({k: torch.from_numpy(np.array(v))
                                   for k, v in unprefixed(tensors, "head.").items()})
        optim_state = unprefixed(tensors, "optim.")
        if optim_state:
            optimizer_from_numpy(self.optimizer, optim_state)
        load_scaler_state(self.scaler, meta.get("scaler"))

    def checkpoint_tensors(self, task) -> tuple[dict, dict]:
        tensors = {}
        for offset, block in enumerate(self.blocks):
            tensors.update(prefixed(to_numpy_state(block), f"block{task.lo + offset}."))
        tensors.update(prefixed(to_numpy_state(self.head), "head."))
        return tensors, optimizer_to_numpy(self.optimizer)

    def checkpoint_meta(self) -> dict:
        return {"scaler": scaler_state(self.scaler)}

    def save_to_store(self, task) -> None:
        save_module(self.run, self.blocks, self.head, task.lo, task.k, self.optimizer)

    # steps ---------------------------------------------------------------------------------------
    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def batches(self, batches):
        for m in [*self.blocks, self.head]:
            m.train()
        return prefetched(batches, self.device)

    def train_step(self, x_np, y_np, weight: float, keep_features: bool = False) -> tuple:
        if keep_features:
            self._freeze_norm_statistics()
        x, y = to_device(x_np, self.device), to_device(y_np, self.device)
        with autocast(self.cfg, self.device):
            out, logits, energy = self._forward(x)
            loss, ce = module_loss(logits.float(), y, energy.float(), weight,
                                   self.cfg.label_smoothing)
        optimizer_step(self.optimizer, loss, self.scaler)
        self._kept = out.detach() if keep_features else None
        return step_figures(loss, ce, energy, logits, y, len(y_np))

    def _freeze_norm_statistics(self) -> None:
        """While its outputs become the next module's views, the module's BatchNorm layers
        normalise with their running statistics (eval mode; the weights still train), so the
        views are what the trained module will hand on at test time, not batch-statistics
        outputs (recipe suite, ResNet-20, K=4, 8 epochs, 2 seeds: validation 54.4 % with it,
        53.4 % without; see harvest.py). `batches` puts them back in train mode at the start of
        every epoch."""
        for block in self.blocks:
            for m in block.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training:
                    m.eval()

    def step_features(self):
        kept, self._kept = self._kept, None
        return kept.float().cpu().numpy()

    @torch.no_grad()
    def features(self, x_np):
        """(called at the end of an epoch: the next one's `batches` restores train mode)"""
        for m in [*self.blocks, self.head]:
            m.eval()
        with autocast(self.cfg, self.device):
            out, _, _ = forward_module(self.blocks, self.head, to_device(x_np, self.device))
        return out.float().cpu().numpy()

    def evaluate(self, source, batch_size: int) -> float | None:
        return evaluate(self.blocks, self.head, source, batch_size, self.device, self.cfg)

    def check_budget(self, ctx) -> None:
        check_budget(ctx)


class TorchBackend:
    name = "torch"
    harvests = True  # its engine keeps a step's outputs: train views come from training

    def __init__(self, cfg):
        self.cfg = cfg
        self.device = torch.device(cfg.device)

    # --- training ---------------------------------------------------------------------------
    def train_module(self, ctx, task) -> dict:
        engine = TorchEngine(ctx, task, self.device, from_store=resume_point(ctx.run, task) is None)
        last = train_module(ctx, task, engine)
        del engine
        release_memory()  # after the module's weights went out of scope
        return last

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

        def predict(x, scored):
            with autocast(cfg, device):
                feats, _ = forward_blocks(blocks, to_device(x, device))
                logits = head(feats).float().cpu().numpy() if scored else None
            return feats.float().cpu().numpy(), logits

        return write_module_cache(ctx, task, tuple(blocks[-1].out_shape), batches, predict,
                                  check_budget, kept=intact_views(ctx.run, task))
