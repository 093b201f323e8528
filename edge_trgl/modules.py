"""Assembling a module (a run of consecutive blocks + its auxiliary head) from the block store,
and moving its weights and optimizer state between torch and the store's numpy arrays."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .models import build_blocks, make_head
from .models.blocks import init_weights, make_generator, materialize
from .store import block_path, head_path, load_tensors, optim_path, save_tensors


def architecture(cfg, in_shape, num_classes) -> list:
    """The model's blocks without real weights (meta device): shapes and structure only, so the
    planner and the trainer can inspect the whole network without allocating it."""
    with torch.device("meta"):
        return build_blocks(cfg.model, in_shape, num_classes, width=cfg.width, seed=None)


def make_heads_for(cfg, blocks, splits, num_classes, seed: int) -> list[nn.Module]:
    heads = []
    for k, (_, hi) in enumerate(splits):
        head = make_head(cfg.head, tuple(blocks[hi - 1].out_shape), num_classes)
        init_weights(head, make_generator(seed * 1000 + 17 + k))
        heads.append(head)
    return heads


def to_numpy_state(module: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().contiguous().numpy() for k, v in module.state_dict().items()}


def load_numpy_state(module: nn.Module, state: dict[str, np.ndarray]) -> None:
    module.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})


def init_store(run, cfg, in_shape, num_classes, splits) -> None:
    """Write the initial weights of every block and head (one file each) into the run."""
    blocks = build_blocks(cfg.model, in_shape, num_classes, width=cfg.width, seed=cfg.seed)
    for i, block in enumerate(blocks):
        run.record_file(block_path(i), save_tensors(run.root, block_path(i), to_numpy_state(block)))
    for k, head in enumerate(make_heads_for(cfg, blocks, splits, num_classes, cfg.seed)):
        run.record_file(head_path(k), save_tensors(run.root, head_path(k), to_numpy_state(head)))


def load_module(run, cfg, in_shape, num_classes, lo: int, hi: int, k: int,
                device: torch.device, *, from_store: bool = True) -> tuple[list[nn.Module], nn.Module]:
    """Blocks lo..hi-1 and head k, with the weights from the store (checksums verified). Only
    these are materialised; the rest of the architecture stays on the meta device.

    from_store=False leaves the weights uninitialised, for a caller that fills every one of them
    from a checkpoint (strict load_state_dict): a resume from a mid-module checkpoint must not read
    the store, because a crash while the finished module was being written back can leave some of
    its store files newer than the checksums in the manifest."""
    arch = architecture(cfg, in_shape, num_classes)
    blocks = []
    for i in range(lo, hi):
        block = materialize(arch[i], device)
        if from_store:
            state, _ = load_tensors(run.root, block_path(i), run.checksum(block_path(i)))
            load_numpy_state(block, state)
        blocks.append(to_layout(block, device))
    del arch
    with torch.device("meta"):
        head = make_head(cfg.head, tuple(blocks[-1].out_shape), num_classes)
    head = materialize(head, device)
    if from_store:
        state, _ = load_tensors(run.root, head_path(k), run.checksum(head_path(k)))
        load_numpy_state(head, state)
    return blocks, to_layout(head, device)


def save_module(run, blocks, head, lo: int, k: int, optimizer=None) -> None:
    for offset, block in enumerate(blocks):
        rel = block_path(lo + offset)
        run.record_file(rel, save_tensors(run.root, rel, to_numpy_state(block)))
    run.record_file(head_path(k), save_tensors(run.root, head_path(k), to_numpy_state(head)))
    if optimizer is not None:
        rel = optim_path(k)
        run.record_file(rel, save_tensors(run.root, rel, optimizer_to_numpy(optimizer)))


def optimizer_to_numpy(optimizer: torch.optim.Optimizer) -> dict[str, np.ndarray]:
    out = {}
    for pidx, pstate in optimizer.state_dict()["state"].items():
        for name, value in pstate.items():
            arr = value.detach().cpu().numpy() if torch.is_tensor(value) else np.asarray(value)
            out[f"{pidx}.{name}"] = np.ascontiguousarray(arr)
    return out


def optimizer_from_numpy(optimizer: torch.optim.Optimizer, arrays: dict[str, np.ndarray]) -> None:
    sd = optimizer.state_dict()
    state: dict[int, dict] = {}
    for key, arr in arrays.items():
        pidx, name = key.split(".", 1)
        state.setdefault(int(pidx), {})[name] = torch.from_numpy(np.array(arr))
    sd["state"] = state
    optimizer.load_state_dict(sd)


def make_optimizer(cfg, params) -> torch.optim.Optimizer:
    """torch's SGD / AdamW update rules (edge_trgl/optim.py: bit-identical on the CPU, without
    the ~67 MB that torch.optim's first step imports)."""
    from .optim import SGD, AdamW
    params = list(params)
    if cfg.optimizer == "adamw":
        return AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def module_parameters(blocks, head):
    for block in blocks:
        yield from block.parameters()
    yield from head.parameters()


def set_threads(cfg) -> None:
    """torch's intra-op threads as the run asks (default: every CPU), and the collector told to
    leave torch's own objects alone."""
    import gc
    torch.set_num_threads(cfg.thread_count())
    # The ~280k objects that importing torch creates are never garbage, yet every gc.collect()
    # (release_memory, at each phase boundary) walked them: 0.16 s a call on x86, ~1.2 s of a
    # small run. Freezing them moves them out of the collector's sight; they are still freed
    # normally by reference counting.
    gc.collect()
    gc.freeze()


# The layout of activations and conv weights on the CPU. NHWC (torch.channels_last) makes
# oneDNN's convolutions faster (ResNet-56 at batch 128, one thread, torch 2.13: a training step
# 1.12 s against 1.51 s, an eval forward 0.36 s against 0.41 s), but torch 2.13's CPU backward
# segfaults in it for some blocks (ResNet-8 at width 0.5 on 96x96 images, block 2, 1 or 2
# threads, every time; contiguous: fine), so it is off until that is understood. CUDA is left as
# it is. Changing it changes the probes' peaks: bump memory/probe_cache.PROBE_FORMAT.
CPU_MEMORY_FORMAT = torch.preserve_format


def memory_format(device: torch.device):
    return CPU_MEMORY_FORMAT if device.type == "cpu" else torch.preserve_format


def to_layout(module: nn.Module, device: torch.device) -> nn.Module:
    """`module` with its 4-d weights in the device's layout (a no-op for other weights)."""
    fmt = memory_format(device)
    return module if fmt is torch.preserve_format else module.to(memory_format=fmt)


def input_layout(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch of images or feature maps in the device's layout (other inputs as they are)."""
    fmt = memory_format(device)
    if x.dim() != 4 or fmt is torch.preserve_format:
        return x
    return x.contiguous(memory_format=fmt)


def autocast(cfg, device: torch.device):
    """--amp's mixed precision on CUDA (fp16 or bf16), else nothing."""
    import contextlib
    if cfg.amp is None:
        return contextlib.nullcontext()
    dtype = torch.float16 if cfg.amp == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def forward_blocks(blocks, x, segments: int | None = None):
    """x through the blocks: (output, summed kinetic energy). With `segments`, every segment but
    the last runs under activation checkpointing (_Checkpointed): only its input is kept for
    backward, its inside is recomputed then. The recomputation leaves BatchNorm's running
    statistics alone (they were updated by the forward pass once; in training mode the
    normalisation itself uses the batch's statistics either way), so a checkpointed step updates
    exactly what a plain one does."""
    energy = x.new_zeros(())
    if not segments or segments < 2:
        for block in blocks:
            x, e = block(x)
            energy = energy + e
        return x, energy
    from .segments import segment_bounds
    bounds = segment_bounds(len(blocks), segments)
    for lo, hi in bounds[:-1]:
        if not x.requires_grad:  # the images: backward reaches a segment only through an input
            x = x.detach().requires_grad_(True)  # that needs a gradient
        x, e = _Checkpointed.apply(_Segment(blocks[lo:hi]), x)
        energy = energy + e
    for block in blocks[bounds[-1][0]:]:
        x, e = block(x)
        energy = energy + e
    return x, energy


class _Checkpointed(torch.autograd.Function):
    """Activation checkpointing of one segment, in the reentrant style of torch.utils.checkpoint:
    forward without saving anything but the input; backward recomputes the segment and runs a
    nested backward through it. Not torch's own because both of its forms import ~500-800 more
    modules on first use: the non-reentrant one reads torch._dynamo.config (about 72 MB held for
    the process's life), and the reentrant one calls torch.autograd.backward with explicit
    gradients, which imports sympy (about 33 MB). At ResNet-56 batch 5-16 that made checkpointed
    end-to-end peak above plain end-to-end (398-446 MB against 371-411 MB), so the planner gave
    it a smaller batch than plain at 512 MB. The nested backward here starts from a scalar,
    `(out * grad_out).sum() + energy * grad_energy`, whose gradients are exactly grad_out and
    grad_energy (products with 1.0), so it computes what plain training does, bit for bit
    (tests/test_checkpointing.py), and imports nothing."""

    @staticmethod
    def forward(ctx, segment, x):
        ctx.segment = segment
        ctx.autocast = _autocast_state(x.device.type)
        ctx.save_for_backward(x)
        return segment(x)  # autograd runs a Function's forward without recording a graph

    @staticmethod
    def backward(ctx, grad_out, grad_energy):
        (x,) = ctx.saved_tensors
        x = x.detach().requires_grad_(True)
        device_type, enabled, dtype = ctx.autocast
        with torch.enable_grad(), torch.autocast(device_type=device_type, dtype=dtype,
                                                 enabled=enabled):
            out, energy = ctx.segment(x)
            total = (out * grad_out).sum()
            if grad_energy is not None and energy.requires_grad:
                total = total + energy * grad_energy
            total.backward()
        return None, x.grad


def _autocast_state(device_type: str) -> tuple:
    """(device type, enabled, dtype) of autocast now; torch < 2.4 (older JetPacks) lacks the
    device-type forms of these calls."""
    if hasattr(torch, "get_autocast_dtype"):
        return (device_type, torch.is_autocast_enabled(device_type),
                torch.get_autocast_dtype(device_type))
    if device_type == "cuda":
        return device_type, torch.is_autocast_enabled(), torch.get_autocast_gpu_dtype()
    return device_type, torch.is_autocast_cpu_enabled(), torch.get_autocast_cpu_dtype()


class _Segment:
    """One checkpointed segment; its second call is the recomputation in backward, which must
    save the same tensors as the first call and leave BatchNorm's running statistics as the first
    call left them: momentum 0 makes the update `running = 1 * running + 0 * batch` (the same
    values), and the extra count of num_batches_tracked is taken back."""

    def __init__(self, blocks):
        self.blocks, self.calls = blocks, 0

    def __call__(self, x):
        self.calls += 1
        norms = [m for b in self.blocks for m in b.modules()
                 if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
        recomputing = self.calls > 1
        momenta = [m.momentum for m in norms]
        if recomputing:
            for m in norms:
                m.momentum = 0.0
        try:
            energy = x.new_zeros(())
            for block in self.blocks:
                x, e = block(x)
                energy = energy + e
            return x, energy
        finally:
            if recomputing:
                for m, momentum in zip(norms, momenta):
                    m.momentum = momentum
                    if m.training and m.num_batches_tracked is not None:
                        with torch.no_grad():
                            m.num_batches_tracked.sub_(1)
