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
memory, inductor's worker processes and the C++ compiler it starts, is not planned), with --backend
ort (no torch while training), where no C compiler is found (inductor's CPU code is C++, built at
run time), and where the code inductor generates crashes on this machine. That last one is real:
with torch 2.13.0 on an AVX2-only AMD EPYC (2026-12-02) the compiled graph's
`aten.convolution_backward` killed the process with SIGSEGV, so `train --compile` died with no
message. Before the first compiled run on a machine, a child process compiles and steps a tiny
ResNet (`python -m edge_trgl.compile_probe DEVICE`, a minute or two); a child killed by a signal is
a clear refusal instead. The outcome is cached per machine and torch version with the planner's
measurements (memory/probe_cache.py), so later runs pay nothing."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

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
    time with the C/C++ compiler (on CUDA, triton builds its launcher with it), and the code it
    builds must run here (require_compiled_code_runs). Checked where a run is about to train
    here, not when a stored config is read (an export needs none)."""
    if cfg.compile and compiler_found() is None:
        raise UserError("--compile needs a C/C++ compiler (inductor builds its kernels at run "
                        f"time) and none was found on PATH ({', '.join(COMPILERS)}). Install one "
                        "(e.g. `apt-get install build-essential`) or leave out --compile.")
    require_compiled_code_runs(cfg)


# Bump when the probe's step changes, so outcomes recorded for the old step are not reused.
PROBE_FORMAT = 1
PROBE_TIMEOUT_S = 1800.0
# Set (to the cache key) in a process whose compiled code was found to run, for its children: a
# command's trainer child checks again and need not read the cache for it.
PROBED_ENV = "EDGE_TRGL_COMPILE_PROBED"


def probe_command(device: str) -> list[str]:
    return [sys.executable, "-m", "edge_trgl.compile_probe", device]


def probe_key(device: str) -> str:
    from .memory.probe_cache import machine_key
    return machine_key({"what": "compile-probe", "format": PROBE_FORMAT, "device": device}, 1)


def cached_probe(device: str) -> dict | None:
    """This machine's recorded probe outcome for `device` (what `edge-trgl env` shows), or None."""
    from .memory.probe_cache import load_cache
    return load_cache().get(probe_key(device))


def require_compiled_code_runs(cfg) -> None:
    """The probe described at the top: UserError where compiled code crashed on this machine."""
    if not cfg.compile:
        return
    key = probe_key(cfg.device)
    if os.environ.get(PROBED_ENV) == key:
        return
    from .memory.probe_cache import cache_file, load_cache, store_cache
    outcome = load_cache().get(key)
    if outcome is None:
        if cfg.progress:
            print("--compile: checking once on this machine that torch.compile's code runs "
                  "(a tiny compiled training step in a child process, a minute or two)",
                  file=sys.stderr, flush=True)
        outcome = run_probe(cfg.device)
        try:
            store_cache({key: outcome})
        except OSError:  # an unwritable cache: probed again next time, nothing lost
            pass
    if outcome.get("ok"):
        os.environ[PROBED_ENV] = key
        return
    try:
        recorded = (f" The outcome is recorded in {cache_file()} with the planner's measurements "
                    f"(delete that file to check again).")
    except OSError:  # the cache directory cannot be made: nothing was recorded
        recorded = ""
    raise UserError(
        f"--compile cannot be used on this machine: torch.compile's generated code crashed here. "
        f"A one-step compiled training of a tiny ResNet (the kind of step --compile compiles), "
        f"run in a child process on {cfg.device}, was killed by signal {outcome['signal']} "
        f"({outcome['signal_name']}){': ' + outcome['fatal'] if outcome.get('fatal') else ''}. "
        f"That is a fault of torch {outcome.get('torch')}'s inductor compiler on this CPU "
        f"({outcome.get('cpu') or 'unknown model'}), not of your data or model, and a run with "
        f"--compile would die the same way. Leave out --compile (eager training, the default, "
        f"computes the same thing), or try another torch version.{recorded}")


def run_probe(device: str) -> dict:
    """Run the probe child: {"ok": True, "seconds": s} or, killed by a signal, the signal and the
    first "Fatal" line it printed. A child that failed otherwise (an exception, a time-out) is a
    UserError now and not recorded: it may not be this machine's fault."""
    from .memory.probe_cache import machine_identity
    started = time.monotonic()
    try:
        done = subprocess.run(probe_command(device), capture_output=True, text=True,
                              timeout=PROBE_TIMEOUT_S, env=dict(os.environ, OMP_NUM_THREADS="1"))
    except subprocess.TimeoutExpired:
        raise UserError(f"--compile: the check that torch.compile's code runs on this machine (a "
                        f"tiny compiled training step in a child process) did not finish in "
                        f"{PROBE_TIMEOUT_S:.0f} s, so a compiled run would spend longer compiling "
                        f"than it could save. Leave out --compile.") from None
    seconds = round(time.monotonic() - started, 1)
    if done.returncode == 0:
        return {"ok": True, "seconds": seconds}
    if done.returncode < 0:
        number = -done.returncode
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = "unknown signal"
        fatal = next((line.strip() for line in done.stderr.splitlines() if "Fatal" in line), "")
        ident = machine_identity(1)
        return {"ok": False, "signal": number, "signal_name": name, "fatal": fatal,
                "seconds": seconds, "torch": ident["torch"], "cpu": ident["cpu"]}
    last = next((line.strip() for line in reversed(done.stderr.splitlines()) if line.strip()),
                "no message")
    raise UserError(f"--compile: the check that torch.compile's code runs on this machine (a tiny "
                    f"compiled training step in a child process) failed with exit status "
                    f"{done.returncode}: {last[-500:]}. Fix what it names, or leave out --compile.")


def compiled(cfg, fn):
    """`fn` through torch.compile with --compile, else `fn` itself. Shapes are static: a run
    compiles once per batch shape it meets (the full batch and the epoch's last, shorter one)
    and once more where BatchNorm switches to eval mode (--aug-policy training's harvest)."""
    if not cfg.compile:
        return fn
    import torch
    return torch.compile(fn, dynamic=False)
