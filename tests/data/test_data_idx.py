"""IDX (MNIST format) parsing, raw and gzipped, on hand-written files and the real MNIST."""

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from edge_trgl.data import load_dataset
from edge_trgl.data.idx import MNIST_FILES, load_mnist, parse_idx, read_idx, write_idx
from edge_trgl.errors import UserError
from helpers import SHARED_DATA

REAL_MNIST = SHARED_DATA / "mnist"


def _idx_bytes(code: int, dims, payload: bytes) -> bytes:
    """Hand-written IDX: 0x0000, dtype code, ndim, big-endian uint32 dims, then the payload."""
    return bytes([0, 0, code, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims) + payload


def _write_fake_mnist(folder: Path, gz: bool, n_train=12, n_test=5):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        imgs = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labs = (np.arange(n) % 10).astype(np.uint8)
        arrays[prefix] = (imgs, labs)
        for stem, code, dims, payload in (
            (f"{prefix}-images-idx3-ubyte", 0x08, (n, 28, 28), imgs.tobytes()),
            (f"{prefix}-labels-idx1-ubyte", 0x08, (n,), labs.tobytes()),
        ):
            blob = _idx_bytes(code, dims, payload)
            (folder / (stem + (".gz" if gz else ""))).write_bytes(gzip.compress(blob) if gz else blob)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_hand_written_mnist_round_trip(tmp_path, gz):
    arrays = _write_fake_mnist(tmp_path / "mnist", gz)
    train, test, names = load_mnist(tmp_path)  # the parent with a 'mnist' subfolder works
    assert train.images.shape == (12, 1, 28, 28) and test.images.shape == (5, 1, 28, 28)
    assert train.images.dtype == np.uint8 and train.labels.dtype == np.int64
    assert np.array_equal(train.images[:, 0], arrays["train"][0])
    assert np.array_equal(test.labels, arrays["t10k"][1].astype(np.int64))
    assert names == [str(i) for i in range(10)]


def test_raw_and_gz_give_identical_arrays(tmp_path):
    _write_fake_mnist(tmp_path / "raw", gz=False)
    _write_fake_mnist(tmp_path / "gz", gz=True)
    a, b = load_mnist(tmp_path / "raw"), load_mnist(tmp_path / "gz")
    assert np.array_equal(a[0].images, b[0].images) and np.array_equal(a[1].labels, b[1].labels)


def test_parse_idx_big_endian_types():
    vals = np.array([[1, -2, 300], [40000 - 65536, 7, -1]], dtype=np.int16)
    blob = _idx_bytes(0x0B, (2, 3), vals.astype(">i2").tobytes())
    out = parse_idx(blob)
    assert out.shape == (2, 3) and np.array_equal(out, vals) and out.dtype.isnative
    f = np.array([1.5, -0.25], dtype=">f4")
    assert np.array_equal(parse_idx(_idx_bytes(0x0D, (2,), f.tobytes())), [1.5, -0.25])


@pytest.mark.parametrize("compress", [False, True])
def test_write_idx_read_idx_round_trip(tmp_path, compress):
    arr = np.random.default_rng(1).integers(0, 256, size=(3, 4, 5), dtype=np.uint8)
    path = tmp_path / ("x.idx.gz" if compress else "x.idx")
    write_idx(path, arr)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == compress
    assert np.array_equal(read_idx(path), arr)


@pytest.mark.parametrize(
    "blob,needle",
    [
        (b"\x00\x00", "fewer than"),
        (b"\x01\x00\x08\x01" + struct.pack(">I", 1) + b"\x00", "magic"),
        (_idx_bytes(0x07, (1,), b"\x00"), "data type code"),
        (_idx_bytes(0x08, (2, 28, 28), bytes(2 * 28 * 28 - 1)), "data bytes"),
        (_idx_bytes(0x08, (2, 28, 28), bytes(2 * 28 * 28 + 5)), "data bytes"),
        (bytes([0, 0, 8, 3]) + struct.pack(">I", 2), "header"),
    ],
)
def test_bad_idx_bytes_raise_user_error(tmp_path, blob, needle):
    path = tmp_path / "bad-idx"
    path.write_bytes(blob)
    with pytest.raises(UserError) as info:
        read_idx(path)
    assert str(path) in str(info.value) and needle in str(info.value)


def test_truncated_gzip_raises_user_error(tmp_path):
    folder = tmp_path / "m"
    _write_fake_mnist(folder, gz=True)
    p = folder / "train-images-idx3-ubyte.gz"
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError) as info:
        load_mnist(folder)
    assert "train-images-idx3-ubyte.gz" in str(info.value)


def test_label_problems_raise_user_error(tmp_path):
    folder = tmp_path / "m"
    _write_fake_mnist(folder, gz=False)
    lab = folder / "t10k-labels-idx1-ubyte"
    lab.write_bytes(_idx_bytes(0x08, (4,), bytes([0, 1, 2, 3])))  # 4 labels for 5 images
    with pytest.raises(UserError, match="4 labels"):
        load_mnist(folder)
    lab.write_bytes(_idx_bytes(0x08, (5,), bytes([0, 1, 2, 3, 12])))
    with pytest.raises(UserError, match="0..9"):
        load_mnist(folder)
    # Images stored as a 1-D array are refused too.
    (folder / "t10k-images-idx3-ubyte").write_bytes(_idx_bytes(0x08, (5,), bytes(5)))
    with pytest.raises(UserError, match="t10k-images"):
        load_mnist(folder)


def test_missing_dir_and_files(tmp_path):
    with pytest.raises(UserError) as info:
        load_dataset("mnist", tmp_path / "nope")
    assert str(tmp_path / "nope") in str(info.value)
    assert all(name in str(info.value) for name in MNIST_FILES)
    folder = tmp_path / "mnist"
    _write_fake_mnist(folder, gz=True)
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(UserError, match="missing t10k-labels-idx1-ubyte"):
        load_mnist(tmp_path)


@pytest.mark.skipif(
    not (REAL_MNIST / "train-images-idx3-ubyte.gz").is_file(),
    reason=f"real MNIST not found at {REAL_MNIST} (a fresh clone has no ../shared/data)",
)
def test_real_mnist_loads():
    ds = load_dataset("mnist", SHARED_DATA, val_fraction=0.0)
    assert ds.train.images.shape == (60000, 1, 28, 28) and ds.train.images.dtype == np.uint8
    assert ds.test.images.shape == (10000, 1, 28, 28)
    assert ds.in_shape == (1, 28, 28) and ds.num_classes == 10
    assert ds.mean == (0.1307,) and ds.std == (0.3081,)
    assert set(np.unique(ds.train.labels)) == set(range(10))
    assert np.bincount(ds.test.labels).sum() == 10000 and ds.train.labels[:5].tolist() == [5, 0, 4, 1, 9]
    np.testing.assert_allclose(ds.train.images.mean() / 255, 0.1307, atol=1e-3)
