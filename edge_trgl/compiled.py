"""`--compile`: the training step's forward pass (the module's blocks and head; end-to-end, the
whole network) through `torch.compile` (inductor), its backward with it. Measured on this
project's ResNet-56 at batch 128, one thread: single steps (benchmarks/results/cpu-speedups/) a
K=4 module's 0.72x the eager time, the whole network's 0.90x; whole 8-epoch runs (throughput
suite, tput8-*-compile rows) warm epochs 0.81x at K=4, 0.87x end-to-end, 0.97x block-wise, after
about 150 s of compiling a run, which made those runs slower than eager ones; a 40-epoch
ResNet-20 end-to-end run (tput40 rows) took 0.89x the eager time. So it pays on long runs only,
and more for K=4 module-wise training than for end-to-end.

What stays eager: the loss (a cross-entropy on the logits), the optimizer step, and every
eval-mode pass (validation, test, the feature cache): each would be one more compile per module
for a few percent of the run.

Refused where its cost is not known or it cannot run: with a memory budget (the compiler's own
memory, inductor's worker processes and the C++ compiler it starts, is not planned), with
--backend ort (no torch while training), and where no C compiler is found (inductor's CPU code is
C++, built at run time)."""

from __future__ import annotations

import shutil

from .errors import UserError

COMPILERS = ("cc", "gcc", "clang", "g++")


def check_compile_options(cfg) -> None:
    """TrainConfig.validate's rule: --compile is not planned under a memory budget. (--backend ort
    refuses it in its target's rules; whether a compiler is here: require_compiler.)"""
    if cfg.compile and (cfg.mem_budget is not None or cfg.profile is not None):
        raise UserError("--compile cannot be planned under a memory budget yet: the compiler's "
                        "own memory (inductor's worker processes and the C++ compiler it starts) "
                        "is not measured by the planner, so the budget could not be promised. "
                        "Leave out --compile, or --mem-budget / --profile.")


def compiler_found() -> str | None:
    """The first C/C++ compiler on PATH (what `edge-trgl env` reports for --compile), else None."""
    return next((path for c in COMPILERS if (path := shutil.which(c))), None)


def require_compiler(cfg) -> None:
    """The torch targets' availability check for --compile: inductor builds its kernels at run
    time with the C/C++ compiler (on CUDA, triton builds its launcher with it). Checked where a
    run is about to train here, not when a stored config is read (an export needs none)."""
    if cfg.compile and compiler_found() is None:
        raise UserError("--compile needs a C/C++ compiler (inductor builds its kernels at run "
                        f"time) and none was found on PATH ({', '.join(COMPILERS)}). Install one "
                        "(e.g. `apt-get install build-essential`) or leave out --compile.")


def compiled(cfg, fn):
    """`fn` through torch.compile with --compile, else `fn` itself. Shapes are static: a run
    compiles once per batch shape it meets (the full batch and the epoch's last, shorter one)
    and once more where BatchNorm switches to eval mode (--aug-policy training's harvest)."""
    if not cfg.compile:
        return fn
    import torch
    return torch.compile(fn, dynamic=False)
