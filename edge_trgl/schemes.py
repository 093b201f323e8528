"""The training schemes, as plain loops.

- sequential / multilap: module k is loaded from the block store, trained to completion on the
  previous module's cached features (module 0 on the raw images), written back, its outputs
  cached, and freed (backend.train_module + backend.write_features). Multi-lap repeats the pass
  `laps` times with the module's epochs split across laps, keeping weights and optimizer state.
- parallel: every module is resident; each batch goes through module 0 which steps, its detached
  output feeds module 1 which steps, and so on.
- e2e: the usual backprop through the whole network, the last module's head as classifier,
  optionally with the kinetic energy of every block added (--e2e-energy).
"""

from __future__ import annotations

import os
import signal
import sys
import time

import numpy as np

from .backends.base import ModuleTask
from .atomic import sha256_file
from .cache import CacheReader, Shard
from .errors import UserError
from .memory.measure import peak_rss_bytes, release_memory, reset_peak, rss_bytes
from .sources import CachedSource, RawSource, epoch_rng, view_rng
from .trgl import energy_weight, tau_schedule

PHASES = {"train": 0, "cache": 1, "done": 2}


class Interrupted(Exception):
    """Ctrl-C / SIGTERM arrived; the run stopped at the last safe point."""


class Context:
    """What every part of a run needs: config, data, run directory, plan, and I/O helpers."""

    def __init__(self, run, cfg, dataset, in_shape, num_classes, splits, batch_size, views,
                 watchdog=None):
        self.run, self.cfg, self.dataset = run, cfg, dataset
        self.in_shape, self.num_classes = tuple(in_shape), num_classes
        self.splits, self.batch_size, self.views = splits, batch_size, views
        self.eval_batch_size = max(batch_size, 1)
        self.watchdog = watchdog
        self._readers: dict[tuple[int, str], CacheReader] = {}
        self._interrupted = False
        # a trainer child (ORT) that does the work now: stop requests are passed on to it
        self.forward_signals_to: int | None = None
        self.flip = dataset.name != "mnist"

    # --- data sources ------------------------------------------------------------------------
    def _raw(self, split: str):
        arrays = getattr(self.dataset, split)
        if len(arrays.labels) == 0:
            return None
        return RawSource(arrays.images, arrays.labels, self.dataset.mean, self.dataset.std,
                         flip=self.flip)

    def _cached(self, k: int, name: str, split: str):
        key = (k, name)
        if key not in self._readers:
            entry = self.run.manifest["caches"].get(str(k))
            if not entry or not entry.get("complete") or name not in entry["splits"]:
                raise UserError(f"The feature cache of module {k} ({name}) is missing from the run "
                                f"in {self.run.root}; resume the run to rebuild it.")
            shards = [Shard.from_json(s) for s in entry["splits"][name]]
            self._readers[key] = CacheReader(self.run.root, shards)
        labels = getattr(self.dataset, split).labels
        return CachedSource(self._readers[key], labels)

    def source(self, k: int, split: str):
        """Un-augmented input of module k for `split` ("val"/"test")."""
        if len(getattr(self.dataset, split).labels) == 0:
            return None
        return self._raw(split) if k == 0 else self._cached(k - 1, split, split)

    def train_source(self, k: int, lap: int, epoch: int, input_views: int):
        if k == 0:
            aug = epoch_rng(self.cfg.seed, lap, k, epoch, 1) if self.cfg.augment else None
            return self._raw("train"), aug
        return self._cached(k - 1, f"train-v{epoch % max(1, input_views)}", "train"), None

    def cache_input(self, k: int, split: str, view: int | None = None):
        """(source, aug_rng) whose outputs through module k make cache k's `split`/`view`."""
        if split != "train":
            return self.source(k, split), None
        if k > 0:
            return self._cached(k - 1, f"train-v{view}", "train"), None
        augmented = self.cfg.augment and self.cfg.aug_policy == "views"
        return self._raw("train"), (view_rng(self.cfg.seed, view) if augmented else None)

    def close_readers(self, k: int | None = None) -> None:
        for key in [key for key in self._readers if k is None or key[0] == k]:
            self._readers.pop(key).close()

    # --- reporting -----------------------------------------------------------------------------
    def progress_bar(self, iterable, total=None, desc=""):
        if not (self.cfg.progress and sys.stderr.isatty()):
            return iterable
        from tqdm import tqdm
        return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)

    def log_epoch(self, stats: dict) -> None:
        stats = {"time": time.time(), **stats}
        self.run.log_metrics(stats)
        if self.cfg.progress:
            val = "-" if stats.get("val_acc") is None else f"{100 * stats['val_acc']:.1f}%"
            print(f"  lap {stats['lap']} module {stats['module']} epoch {stats['epoch']}: "
                  f"loss {stats['train_loss']:.3f} ce {stats['train_ce']:.3f} "
                  f"energy {stats['energy']:.4f} train {100 * stats['train_acc']:.1f}% val {val} "
                  f"({stats['samples_per_s']:.0f} samples/s)", file=sys.stderr, flush=True)

    @staticmethod
    def rss_now() -> int:
        return rss_bytes()

    # Per-module peaks: VmHWM is reset (clear_refs) when a module starts, read when it ends; the
    # process-wide peak is the max over all phases, kept here since each reset forgets it.
    # Resetting VmHWM also resets what the parent later reads as the child's ru_maxrss (the kernel
    # takes it from the same high-water mark at exit), so it is opt-in (--module-peaks); by
    # default a module's peak is the RSS watchdog's sampled maximum during that module.
    def start_phase(self) -> None:
        self.peak_bytes = max(getattr(self, "peak_bytes", 0), peak_rss_bytes())
        release_memory()
        if self.cfg.module_peaks:
            reset_peak()
        if self.watchdog is not None:
            self.watchdog.start_phase()

    def end_phase(self) -> int:
        if self.cfg.module_peaks:
            phase = peak_rss_bytes()
        else:
            phase = self.watchdog.phase_max_bytes if self.watchdog is not None else peak_rss_bytes()
        self.peak_bytes = max(getattr(self, "peak_bytes", 0), phase)
        # survives a crash: a resumed run's summary reports the peak of all its processes
        manifest = self.run.manifest
        manifest["peak_rss_bytes_so_far"] = max(manifest.get("peak_rss_bytes_so_far", 0), phase)
        if self.cfg.device == "cuda" and hasattr(self.watchdog, "phase_budgeted_bytes"):
            # what the budget covers on this device, comparable with the plan (memory/cuda.py)
            return self.watchdog.phase_budgeted_bytes(phase)
        return phase

    def process_peak_bytes(self) -> int:
        return max(getattr(self, "peak_bytes", 0), peak_rss_bytes())

    # --- interruption ---------------------------------------------------------------------------
    def install_signal_handlers(self, *, exit_code_now: int | None = None):
        """Ctrl-C / SIGTERM: the first stops at the next safe point, the second stops now. With
        `exit_code_now` (a trainer child, which its orchestrator speaks for) the second exits the
        process at once with that status and nothing is printed: a KeyboardInterrupt raised at an
        arbitrary point of a process that is already winding down can escape as a traceback."""
        def handler(signum, frame):
            child = self.forward_signals_to
            if child is not None:  # it runs in its own process group: nothing else tells it
                try:
                    os.kill(child, signum)
                except ProcessLookupError:
                    pass
            if self._interrupted:  # second Ctrl-C: stop now (files are still atomic)
                if exit_code_now is not None:
                    os._exit(exit_code_now)
                raise KeyboardInterrupt
            self._interrupted = True
            if exit_code_now is None:
                again = ("Ctrl-C again to stop now" if signum == signal.SIGINT
                         else f"send {signal.Signals(signum).name} again to stop now")
                print(f"\nstopping at the next safe point (end of this epoch); {again}",
                      file=sys.stderr, flush=True)
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for s in previous:
            signal.signal(s, handler)
        return previous

    def check_interrupt(self) -> None:
        if self._interrupted:
            raise Interrupted()

    def run_guarded(self, body) -> None:
        """Run the training `body()` under the watchdog with the safe-stop signal handlers; a
        stop asked for by a signal becomes Stopped with the resume command. Handlers and cache
        readers are restored/closed whatever happens."""
        from .errors import Stopped
        previous = self.install_signal_handlers()
        try:
            with self.watchdog:
                body()
        except Interrupted:
            raise Stopped(f"Training stopped at a safe point as asked; everything up to the last "
                          f"finished epoch is saved in {self.run.root}. Continue with "
                          f"`edge-trgl train --resume {self.run.root}`.") from None
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
            self.close_readers()


def module_weights(cfg, num_modules: int) -> list[float | None]:
    if cfg.tau_mode == "adaptive":
        return [None] * num_modules
    taus = tau_schedule(cfg.tau, num_modules, varying=cfg.tau_mode == "varying")
    return [energy_weight(t) for t in taus]


def lap_epochs(cfg, k: int) -> int:
    if cfg.scheme != "multilap":
        return cfg.module_epochs(k)
    return max(1, round(cfg.module_epochs(k) / cfg.laps))


def _position(progress: dict) -> tuple[int, int, int]:
    if not progress:
        return (-1, -1, -1)
    return (progress["lap"], progress["module"], PHASES[progress["phase"]])


def run_modulewise(ctx: Context, backend) -> None:
    cfg, run = ctx.cfg, ctx.run
    num_modules = len(ctx.splits)
    weights = module_weights(cfg, num_modules)
    laps = cfg.laps if cfg.scheme == "multilap" else 1

    def make_task(lap: int, k: int) -> ModuleTask:
        lo, hi = ctx.splits[k]
        return ModuleTask(k=k, lap=lap, lo=lo, hi=hi, num_modules=num_modules,
                          epochs=lap_epochs(cfg, k), energy_weight=weights[k],
                          batch_size=ctx.batch_size,
                          views=0 if k == num_modules - 1 else ctx.views, input_views=ctx.views)

    first = True
    for lap in range(laps):
        for k, (lo, hi) in enumerate(ctx.splits):
            where = _position(run.manifest["progress"])
            # "done" counts only once the module's accuracies are saved with it: a crash between
            # the backend's last save and the record below redoes the cache phase.
            recorded = run.manifest["modules"].get(str(k), {}).get("lap") == lap
            if where > (lap, k, PHASES["done"]) or (where == (lap, k, PHASES["done"]) and recorded):
                continue
            task = make_task(lap, k)
            if first and k > 0:
                restore_input_cache(ctx, backend, lap, k, make_task)
            first = False
            ctx.start_phase()
            if where < (lap, k, PHASES["cache"]):
                train_stats = backend.train_module(ctx, task)
                run.manifest["modules"].setdefault(str(k), {})["train"] = train_stats
            ctx.close_readers(k)
            acc = backend.write_features(ctx, task)
            record = run.manifest["modules"].setdefault(str(k), {})
            record.update({"lo": lo, "hi": hi, "lap": lap, **acc})
            record["measured_peak_bytes"] = max(record.get("measured_peak_bytes", 0), ctx.end_phase())
            ctx.close_readers(k - 1)
            if k > 0 and not cfg.keep_cache:
                run.drop_cache(k - 1)
            run.save()
            ctx.check_interrupt()
    ctx.close_readers()


def cache_intact(run, k: int, lap: int) -> bool:
    """Module k's cache is listed as complete for this lap and every shard matches its sha256."""
    entry = run.manifest["caches"].get(str(k))
    if not entry or not entry.get("complete") or entry.get("lap") != lap:
        return False
    for shards in entry["splits"].values():
        for shard in shards:
            path = run.root / shard["file"]
            if not path.is_file() or sha256_file(path) != shard["sha256"]:
                return False
    return True


def restore_input_cache(ctx: Context, backend, lap: int, k: int, make_task) -> None:
    """On resume, module k reads cache k-1. If a crash, a full disk or damage left it missing or
    corrupt, rebuild it from the saved weights of the finished modules before it (going back as far
    as the nearest intact cache, or the raw images); the rebuilt cache is bit-identical, since the
    forward passes are deterministic. The resume point (progress) is kept."""
    run = ctx.run
    j = k - 1
    while j >= 0 and not cache_intact(run, j, lap):
        j -= 1
    if j == k - 1:
        return
    print(f"the feature cache of module {k - 1} is missing or damaged; rebuilding it from the saved "
          f"weights of modules {j + 1}..{k - 1}", file=sys.stderr, flush=True)
    saved = dict(run.manifest["progress"])
    for m in range(j + 1, k):
        ctx.close_readers()
        backend.write_features(ctx, make_task(lap, m))
        if m > 0 and not ctx.cfg.keep_cache:
            ctx.close_readers()
            run.drop_cache(m - 1)
    ctx.close_readers()
    run.manifest["progress"] = saved
    run.save()


def run_resident(ctx: Context) -> None:
    """The parallel and end-to-end schemes: every block resident, raw images in."""
    from .resident import train_resident
    train_resident(ctx)


def best_module(modules: dict) -> int | None:
    scored = []
    for k, rec in modules.items():
        score = rec.get("val_acc") if rec.get("val_acc") is not None else rec.get("test_acc")
        if score is not None:
            scored.append((score, -int(k)))
    return -max(scored)[1] if scored else None


def np_seed_all(seed: int) -> None:
    import torch
    np.random.seed(seed)
    torch.manual_seed(seed)
