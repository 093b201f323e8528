"""One-batch read-ahead for CUDA training: while the GPU works on batch i, a background thread
prepares batch i+1 (reads it from the feature cache or augments the raw images, normalises it,
and copies it into a pinned host buffer so the host-to-device copy can be asynchronous).

On the CPU there is nothing to overlap with (the same cores would do both), so
`prefetch_batches` returns the source's iterator untouched there: no thread, no extra batch in
memory, the same behaviour as without it.

Bounds, so that read-ahead cannot run away with memory: the producer holds at most `depth` ready
items in the queue plus the one it is preparing, and it stops pulling from the source as soon as
the consumer is done (exhausted, `close()`d, or garbage-collected). An exception in the producer
(a truncated cache shard, a failed augmentation) is re-raised in the consumer at the batch where
it happened, with its original traceback; batches before it are delivered first, in order.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterable, Iterator

_DONE = object()
_FAILED = object()
_POLL_S = 0.05


class Prefetcher:
    """Iterate `iterable` in a background thread, `depth` items ahead, applying `transform` to
    each item in that thread. Use as an iterator, and `close()` it (or use a `with` block, or
    `prefetch_batches`, which closes it for you): the thread holds a reference to it, so an
    abandoned Prefetcher is never collected and keeps its read-ahead until the process ends."""

    def __init__(self, iterable: Iterable, transform: Callable | None = None, depth: int = 1):
        if depth < 1:
            raise ValueError(f"depth must be at least 1, not {depth}")
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._finished = False
        self._thread = threading.Thread(target=self._produce, args=(iter(iterable), transform),
                                        name="batch-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        # A bounded wait in a loop, so a consumer that went away (close()) never leaves the
        # producer blocked on a full queue forever.
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self, iterator: Iterator, transform) -> None:
        try:
            while not self._stop.is_set():
                try:
                    item = next(iterator)
                except StopIteration:
                    self._put((_DONE, None))
                    return
                if transform is not None:
                    item = transform(item)
                if not self._put((None, item)):
                    return
        except BaseException as exc:  # handed to the consumer, which re-raises it
            self._put((_FAILED, exc))
        finally:
            # Runs the source generator's own clean-up (its finally blocks) in this thread, the
            # one that was iterating it; a generator must not be closed while it is running.
            close = getattr(iterator, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    pass

    def __iter__(self) -> "Prefetcher":
        return self

    def __next__(self):
        if self._finished:
            raise StopIteration
        kind, item = self._queue.get()
        if kind is None:
            return item
        self._finished = True
        self._thread.join()
        if kind is _FAILED:
            raise item
        raise StopIteration

    def close(self) -> None:
        """Stop reading ahead and wait for the producer to let go of the source, so the caller
        may close what the source reads from (cache files) right after."""
        self._finished = True
        self._stop.set()
        while True:  # unblock a producer waiting on a full queue, drop what it prepared
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join()

    def __enter__(self) -> "Prefetcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def pin_inputs(batch):
    """(x, y) -> (x copied into page-locked host memory as a torch tensor, y unchanged): a pinned
    source lets `to_device` copy with non_blocking=True, overlapping the transfer with compute.
    The labels stay numpy: evaluation compares them with numpy predictions."""
    import numpy as np
    import torch
    x, *rest = batch  # (x, y) or, when training keeps its outputs, (x, y, indices)
    return (torch.from_numpy(np.ascontiguousarray(x)).pin_memory(), *rest)


def _closing(prefetcher: Prefetcher) -> Iterator:
    try:
        yield from prefetcher
    finally:
        prefetcher.close()


@contextlib.contextmanager
def prefetched(batches: Iterable, device, depth: int = 1):
    """`prefetch_batches` as a `with` block: however the loop ends (exhausted, break, an
    exception such as a budget stop), the read-ahead thread has let go of the source before the
    block is left, so the caller may close the files the source reads right after."""
    iterator = prefetch_batches(batches, device, depth)
    try:
        yield iterator
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()


def prefetch_batches(batches: Iterable, device, depth: int = 1) -> Iterable:
    """The batches of a data source, read one ahead into pinned memory on CUDA; unchanged
    otherwise. The returned generator stops the read-ahead when it is exhausted, closed, or
    collected (a loop that ends in an exception lets go of it when the exception is handled)."""
    if getattr(device, "type", device) != "cuda":
        return batches
    return _closing(Prefetcher(batches, transform=pin_inputs, depth=depth))
