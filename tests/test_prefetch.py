"""The batch prefetcher (edge_trgl/prefetch.py), on the CPU: order, bounded read-ahead, errors
re-raised where they happened, the producer thread stopped whenever the consumer is done, and a
forced read-ahead in a CPU run that changes no result. Its GPU test (pinned batches reach the
device) is in test_cuda.py."""

from __future__ import annotations

import gc
import threading
import time

import numpy as np
import pytest
import torch

from edge_trgl.config import TrainConfig
from edge_trgl.prefetch import Prefetcher, prefetch_batches


def source(n, log, fail_at=None):
    try:
        for i in range(n):
            if i == fail_at:
                raise ValueError(f"shard {i} is truncated")
            log["pulled"] = log.get("pulled", 0) + 1
            yield i
    finally:
        log["closed"] = True


def prefetch_threads():
    return [t for t in threading.enumerate() if t.name == "batch-prefetch"]


def test_prefetcher_keeps_order_and_applies_the_transform_in_its_thread():
    log, seen = {}, []

    def transform(i):
        seen.append(threading.current_thread().name)
        return i * 10
    assert list(Prefetcher(source(50, log), transform=transform)) == [10 * i for i in range(50)]
    assert log == {"pulled": 50, "closed": True}
    assert set(seen) == {"batch-prefetch"} and not prefetch_threads()


def test_prefetcher_reraises_the_sources_exception_after_the_batches_before_it():
    log = {}
    got = []
    with pytest.raises(ValueError, match="shard 3 is truncated"):
        for i in Prefetcher(source(10, log, fail_at=3)):
            got.append(i)
    assert got == [0, 1, 2] and log["closed"] and not prefetch_threads()


def test_prefetcher_reraises_a_failing_transform():
    def transform(i):
        if i == 2:
            raise RuntimeError("pinning failed")
        return i
    with pytest.raises(RuntimeError, match="pinning failed"):
        list(Prefetcher(source(10, {}), transform=transform))


@pytest.mark.parametrize("depth", [1, 3])
def test_prefetcher_reads_at_most_depth_plus_one_ahead_and_stops_on_close(depth):
    log = {}
    p = Prefetcher(source(1000, log), depth=depth)
    assert [next(p) for _ in range(3)] == [0, 1, 2]
    time.sleep(0.3)  # let the producer run as far ahead as it may
    assert log["pulled"] <= 3 + depth + 1
    p.close()
    pulled = log["pulled"]
    time.sleep(0.1)
    assert log["pulled"] == pulled and log["closed"] and not prefetch_threads()
    with pytest.raises(StopIteration):
        next(p)


def test_prefetcher_rejects_a_bad_depth():
    with pytest.raises(ValueError):
        Prefetcher([], depth=0)


def test_prefetch_is_a_no_op_on_the_cpu():
    batches = iter([(np.zeros(2), np.zeros(2))])
    assert prefetch_batches(batches, torch.device("cpu")) is batches
    assert prefetch_batches(batches, "cpu") is batches
    assert not prefetch_threads()


def test_prefetch_batches_on_cuda_closes_when_abandoned(monkeypatch):
    import edge_trgl.prefetch as pf
    monkeypatch.setattr(pf, "pin_inputs", lambda batch: batch)  # no pinned memory without CUDA
    log = {}
    gen = prefetch_batches(source(100, log), torch.device("cuda"))
    assert [next(gen), next(gen)] == [0, 1]
    gen.close()
    assert log["closed"] and not prefetch_threads()
    log = {}
    gen = prefetch_batches(source(100, log), "cuda")
    next(gen)
    del gen  # a loop that ended in an exception drops it like this
    gc.collect()
    assert log["closed"] and not prefetch_threads() and log["pulled"] <= 3


@pytest.mark.slow
def test_read_ahead_in_the_training_loops_changes_no_result(tmp_path, monkeypatch):
    """The CUDA read-ahead, forced on in a CPU run (without pinning): training, evaluation and
    feature-cache writing see the same batches in the same order, so the weights are identical."""
    import edge_trgl.backends.torch_backend as tb
    import edge_trgl.prefetch as pf
    from edge_trgl.train import train

    def run(name):
        return train(TrainConfig(model="resnet8", width=0.5, synthetic_train=160, synthetic_test=40,
                                 epochs=1, modules=2, batch_size=32, threads=1, progress=False,
                                 out=str(tmp_path / name)))
    plain = run("plain")
    calls = []

    def forced(batches, device, depth=1):
        calls.append(device)
        return pf._closing(pf.Prefetcher(batches, depth=depth))
    monkeypatch.setattr(tb, "prefetch_batches", forced)  # feature writing
    monkeypatch.setattr(pf, "prefetch_batches", forced)  # training and evaluation (prefetched)
    ahead = run("ahead")
    assert len(calls) >= 6  # train epochs, validation, and every split's feature writing
    assert [m["test_acc"] for m in ahead["modules"]] == [m["test_acc"] for m in plain["modules"]]
    for name in ("blocks/block_000.safetensors", "blocks/block_003.safetensors",
                 "heads/head_01.safetensors"):
        assert (tmp_path / "ahead" / name).read_bytes() == (tmp_path / "plain" / name).read_bytes()
    assert not prefetch_threads()


def test_prefetched_stops_the_read_ahead_when_the_loop_raises(monkeypatch):
    """A loop that stops on an exception (a budget stop) must not leave the producer thread
    reading a cache file the caller is about to close."""
    import edge_trgl.prefetch as pf
    monkeypatch.setattr(pf, "pin_inputs", lambda batch: batch)
    log = {}
    with pytest.raises(RuntimeError, match="over budget"):
        with pf.prefetched(source(100, log), "cuda") as batches:
            for i in batches:
                if i == 2:
                    raise RuntimeError("over budget")
    # the traceback still holds the loop's frame, yet the thread is gone and the source closed
    assert log["closed"] and not prefetch_threads() and log["pulled"] <= 5
