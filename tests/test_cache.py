import numpy as np
import pytest

from edge_trgl.cache import CacheReader, CacheWriter
from edge_trgl.errors import UserError

from helpers import fill_disk_after


def write(tmp_path, x, dtype="fp32", shard_bytes=1000):
    w = CacheWriter(tmp_path, "cache/module_00", "train-v0", len(x), x.shape[1:], dtype,
                    shard_bytes=shard_bytes)
    for i in range(0, len(x), 7):
        w.write(x[i:i + 7])
    return w.finish()


def test_roundtrip_random_access_across_shards(tmp_path):
    x = np.random.default_rng(0).standard_normal((100, 2, 3, 3)).astype(np.float32)
    shards = write(tmp_path, x)
    assert len(shards) > 3 and sum(s.count for s in shards) == 100
    reader = CacheReader(tmp_path, shards)
    idx = np.array([99, 0, 57, 13, 13])
    assert np.array_equal(reader.read(idx), x[idx])
    # shards are plain .npy files
    assert np.load(tmp_path / shards[0].file, allow_pickle=False).shape[1:] == (2, 3, 3)


def test_fp16_halves_disk(tmp_path):
    x = np.ones((50, 4, 4, 4), np.float32)
    s16 = write(tmp_path / "a", x, "fp16", 10**6)
    s32 = write(tmp_path / "b", x, "fp32", 10**6)
    size = lambda root, s: (root / s[0].file).stat().st_size  # noqa: E731
    assert size(tmp_path / "a", s16) < 0.6 * size(tmp_path / "b", s32)


def test_corrupted_shard_is_detected(tmp_path):
    x = np.zeros((20, 8), np.float32)
    shards = write(tmp_path, x, shard_bytes=200)
    path = tmp_path / shards[1].file
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="checksum"):
        CacheReader(tmp_path, shards)


def test_disk_full_gives_clear_error_and_no_partial_shard(tmp_path, monkeypatch):
    x = np.zeros((40, 8), np.float32)
    w = CacheWriter(tmp_path, "cache/module_00", "val", 40, (8,), "fp32", shard_bytes=320)
    w.write(x[:10])   # one complete shard
    import builtins
    fill_disk_after(monkeypatch, builtins, 0)
    with pytest.raises(UserError, match="disk filled up"):
        w.write(x[10:])
    monkeypatch.undo()
    files = sorted(p.name for p in (tmp_path / "cache/module_00").iterdir())
    assert files == ["val-00000.npy"]  # the complete shard stays, no temp file left behind
