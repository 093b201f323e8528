"""What every part of a run needs (`Context`): its config, data sources, run directory, plan,
the progress and metrics it reports, its memory phases and the safe-stop signal handling."""

from __future__ import annotations

import os
import signal
import sys
import time

from .cache import CacheReader, Shard
from .errors import UserError
from .memory.measure import peak_rss_bytes, release_memory, reset_peak, rss_bytes
from .sources import CachedSource, RawSource, epoch_rng, view_rng


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
        self.interrupted = False
        # a trainer child (ORT) that does the work now: stop requests are passed on to it
        self.forward_signals_to: int | None = None
        self.flip = dataset.hflip

    # --- data sources ------------------------------------------------------------------------
    def raw(self, split: str):
        """The raw (un-augmented here; `batches` augments) images of `split`, or None if empty."""
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
        return self.raw(split) if k == 0 else self._cached(k - 1, split, split)

    def train_source(self, k: int, lap: int, epoch: int, input_views: int):
        if k == 0:
            aug = epoch_rng(self.cfg.seed, lap, k, epoch, 1) if self.cfg.augment else None
            return self.raw("train"), aug
        return self._cached(k - 1, f"train-v{epoch % max(1, input_views)}", "train"), None

    def cache_input(self, k: int, split: str, view: int | None = None):
        """(source, aug_rng) whose outputs through module k make cache k's `split`/`view`."""
        if split != "train":
            return self.source(k, split), None
        if k > 0:
            return self._cached(k - 1, f"train-v{view}", "train"), None
        augmented = self.cfg.augment and self.cfg.aug_policy in ("views", "training")
        return self.raw("train"), (view_rng(self.cfg.seed, view) if augmented else None)

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
            where = f"lap {stats['lap']} module {stats['module']}"
            if "rank" in stats:  # --distributed: the figures are of the rank's last module
                where = f"rank {stats['rank']} (modules {stats['modules']}, figures of the last)"
            print(f"  {where} epoch {stats['epoch']}: "
                  f"loss {stats['train_loss']:.3f} ce {stats['train_ce']:.3f} "
                  f"energy {stats['energy']:.4f} train {100 * stats['train_acc']:.1f}% val {val} "
                  f"({stats['samples_per_s']:.0f} samples/s)", file=sys.stderr, flush=True)

    def over_budget_bytes(self) -> int | None:
        """What the watchdog saw when this process went over its share of the budget, if it did
        and the run stops then (the engines raise their own error, loop.py asks each step)."""
        dog = self.watchdog
        if dog is None or dog.exceeded_bytes is None:
            return None
        return dog.exceeded_bytes if self.cfg.extra.get("on_over_budget", "stop") == "stop" else None

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
        if hasattr(self.watchdog, "phase_budgeted_bytes"):
            # the target's own currency (CUDA: device memory), comparable with the plan
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
            if self.interrupted:  # second Ctrl-C: stop now (files are still atomic)
                if exit_code_now is not None:
                    os._exit(exit_code_now)
                raise KeyboardInterrupt
            self.interrupted = True
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
        if self.interrupted:
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
