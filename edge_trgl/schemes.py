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

import signal
import sys
import time

import numpy as np

from .backends.base import ModuleTask
from .cache import CacheReader, Shard, cache_dir
from .errors import UserError
from .memory.measure import rss_bytes
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

    # --- interruption ---------------------------------------------------------------------------
    def install_signal_handlers(self):
        def handler(signum, frame):
            if self._interrupted:  # second Ctrl-C: stop now (files are still atomic)
                raise KeyboardInterrupt
            self._interrupted = True
            print("\nstopping at the next safe point (end of this epoch); Ctrl-C again to stop now",
                  file=sys.stderr, flush=True)
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for s in previous:
            signal.signal(s, handler)
        return previous

    def check_interrupt(self) -> None:
        if self._interrupted:
            raise Interrupted()


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
    for lap in range(laps):
        for k, (lo, hi) in enumerate(ctx.splits):
            where = _position(run.manifest["progress"])
            if where >= (lap, k, PHASES["done"]):
                continue
            task = ModuleTask(k=k, lap=lap, lo=lo, hi=hi, num_modules=num_modules,
                              epochs=lap_epochs(cfg, k), energy_weight=weights[k],
                              batch_size=ctx.batch_size,
                              views=0 if k == num_modules - 1 else ctx.views,
                              input_views=ctx.views)
            if where < (lap, k, PHASES["cache"]):
                train_stats = backend.train_module(ctx, task)
                run.manifest["modules"].setdefault(str(k), {})["train"] = train_stats
            ctx.close_readers(k)
            acc = backend.write_features(ctx, task)
            record = run.manifest["modules"].setdefault(str(k), {})
            record.update({"lo": lo, "hi": hi, "lap": lap, **acc})
            ctx.close_readers(k - 1)
            if k > 0 and not cfg.keep_cache:
                run.remove_tree(cache_dir(k - 1))
                run.forget_files(cache_dir(k - 1) + "/")
                run.manifest["caches"].pop(str(k - 1), None)
            run.save()
            ctx.check_interrupt()
    ctx.close_readers()


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
