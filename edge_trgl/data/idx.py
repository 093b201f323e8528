"""MNIST-format IDX files (raw or gzipped).

IDX layout: two zero bytes, a dtype code byte, a byte with the number of dimensions ``k``, then
``k`` big-endian uint32 sizes, then the data in big-endian C order.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from edge_trgl.data.arrays import ArraySet
from edge_trgl.data.registry import RawData
from edge_trgl.errors import UserError

__all__ = [
    "MNIST_MEAN",
    "MNIST_STD",
    "MNIST_FILES",
    "IDX_DTYPES",
    "parse_idx",
    "read_idx",
    "write_idx",
    "find_mnist_dir",
    "load_mnist",
    "mnist_raw",
    "mnist_stream",
]

MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)
MNIST_TRAIN_IMAGES = "train-images-idx3-ubyte"
MNIST_TRAIN_LABELS = "train-labels-idx1-ubyte"
MNIST_TEST_IMAGES = "t10k-images-idx3-ubyte"
MNIST_TEST_LABELS = "t10k-labels-idx1-ubyte"
MNIST_FILES = (MNIST_TRAIN_IMAGES, MNIST_TRAIN_LABELS, MNIST_TEST_IMAGES, MNIST_TEST_LABELS)
_NUM_CLASSES = 10

# IDX dtype code -> numpy dtype (big-endian as stored on disk).
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def _bad(source, what: str) -> UserError:
    return UserError(
        f"The IDX file {source} is not valid: {what}. It is probably truncated or corrupted; "
        "replace it with a fresh copy of the original MNIST-format file (raw or .gz)."
    )


def parse_idx(data: bytes, *, source: str | os.PathLike = "<idx>") -> np.ndarray:
    """Parse the bytes of an (uncompressed) IDX file into a native-endian numpy array."""
    if len(data) < 4:
        raise _bad(source, f"it has {len(data)} bytes, fewer than the 4-byte IDX magic number")
    zero, code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0:
        raise _bad(source, f"the magic number starts with 0x{zero:04x} instead of 0x0000")
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02x}" for c in IDX_DTYPES)
        raise _bad(source, f"unknown data type code 0x{code:02x} (known: {known})")
    if ndim == 0:
        raise _bad(source, "the header declares zero dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise _bad(source, f"the header needs {header} bytes for {ndim} dimensions, file has {len(data)}")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = IDX_DTYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    got = len(data) - header
    if got != expected:
        raise _bad(
            source,
            f"the header declares shape {tuple(dims)} of {dtype.name} ({expected} data bytes) but "
            f"the file holds {got} data bytes",
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file, transparently gunzipping it when it starts with the gzip magic."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(
            f"Could not read the IDX file {path}: {exc.strerror or exc}. Check that the file "
            "exists and is readable."
        ) from None
    if data[:2] == _GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise _bad(path, f"it is not a complete gzip stream ({type(exc).__name__}: {exc})") from None
    return parse_idx(data, source=path)


def write_idx(path: str | os.PathLike, array: np.ndarray, *, compress: bool | None = None) -> None:
    """Write ``array`` as an IDX file (gzipped when ``compress`` or when the name ends in .gz)."""
    path = Path(path)
    arr = np.asarray(array)
    for code, dt in IDX_DTYPES.items():
        if dt.kind == arr.dtype.kind and dt.itemsize == arr.dtype.itemsize:
            break
    else:
        raise ValueError(f"IDX cannot store dtype {arr.dtype}")
    header = struct.pack(">HBB", 0, code, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    payload = header + np.ascontiguousarray(arr, dtype=dt).tobytes()
    if compress is None:
        compress = path.name.endswith(".gz")
    if compress:
        payload = gzip.compress(payload, mtime=0)
    path.write_bytes(payload)


def _layout_help() -> str:
    names = ", ".join(f"{f}[.gz]" for f in MNIST_FILES)
    return (
        f"Expected a directory holding the four MNIST IDX files ({names}), raw or gzipped, or a "
        "directory with a 'mnist' (or 'MNIST/raw') subfolder holding them. Download them from "
        "the MNIST page (or a mirror), and pass that folder (or its parent) as --data-dir."
    )


def _locate(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        p = folder / name
        if p.is_file():
            return p
    return None


def find_mnist_dir(data_dir: str | os.PathLike) -> dict[str, Path]:
    """Map each MNIST file stem to its path under ``data_dir`` (or its mnist subfolder)."""
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise UserError(
            f"The MNIST data directory {root} does not exist or is not a directory. " + _layout_help()
        )
    candidates = [root, root / "mnist", root / "MNIST" / "raw", root / "MNIST"]
    for cand in candidates:
        if cand.is_dir():
            found = {stem: _locate(cand, stem) for stem in MNIST_FILES}
            if all(found.values()):
                return found  # type: ignore[return-value]
    cand = next((c for c in candidates[1:] if c.is_dir()), root)
    missing = [s for s in MNIST_FILES if _locate(cand, s) is None]
    raise UserError(
        f"The MNIST data directory {cand} is missing {', '.join(missing)} (raw or .gz). "
        + _layout_help()
    )


def _images(path: Path) -> np.ndarray:
    arr = read_idx(path)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[0] == 0:
        raise _bad(path, f"expected uint8 images of shape (N, H, W), found {arr.dtype} {arr.shape}")
    return np.ascontiguousarray(arr[:, None, :, :])


def _labels(path: Path, n: int, images_path: Path) -> np.ndarray:
    arr = read_idx(path)
    if arr.dtype != np.uint8 or arr.ndim != 1:
        raise _bad(path, f"expected uint8 labels of shape (N,), found {arr.dtype} {arr.shape}")
    if arr.shape[0] != n:
        raise _bad(path, f"it has {arr.shape[0]} labels but {images_path} has {n} images")
    if arr.size and arr.max() >= _NUM_CLASSES:
        raise _bad(path, f"labels must lie in 0..{_NUM_CLASSES - 1}, found a {arr.max()}")
    return arr.astype(np.int64)


def load_mnist(data_dir: str | os.PathLike) -> tuple[ArraySet, ArraySet, list[str]]:
    """Load MNIST: ``(train, test, class_names)`` with images uint8 (N, 1, 28, 28)."""
    files = find_mnist_dir(data_dir)
    splits = []
    for img_stem, lab_stem in ((MNIST_TRAIN_IMAGES, MNIST_TRAIN_LABELS), (MNIST_TEST_IMAGES, MNIST_TEST_LABELS)):
        images = _images(files[img_stem])
        labels = _labels(files[lab_stem], images.shape[0], files[img_stem])
        splits.append(ArraySet(images=images, labels=labels))
    train, test = splits
    if train.images.shape[1:] != test.images.shape[1:]:
        raise UserError(
            f"The MNIST train images ({files[MNIST_TRAIN_IMAGES]}) have shape "
            f"{train.images.shape[1:]} but the test images ({files[MNIST_TEST_IMAGES]}) have "
            f"{test.images.shape[1:]}; both must have the same image size. Replace the files with "
            "a consistent copy of the dataset."
        )
    return train, test, [str(i) for i in range(_NUM_CLASSES)]


def mnist_raw(data_dir: str | os.PathLike, **_) -> RawData:
    """The registry's loader: MNIST with its usual statistics. No horizontal flip: a mirrored
    digit is not a digit (a flipped 2 or 7 is not a 2 or 7)."""
    train, test, class_names = load_mnist(data_dir)
    return RawData(train, test, class_names, MNIST_MEAN, MNIST_STD, hflip=False)


def _open_idx(path: Path):
    """(file object, dims) of an IDX file of uint8 images, its header read and checked; raw or
    gzipped. The caller reads the rows and closes it."""
    try:
        fh = gzip.open(path, "rb") if _is_gzip(path) else open(path, "rb")
        head = fh.read(4)
    except (OSError, EOFError, zlib.error) as exc:
        raise _bad(path, f"it cannot be read ({type(exc).__name__}: {exc})") from None
    if len(head) < 4:
        fh.close()
        raise _bad(path, f"it has {len(head)} bytes, fewer than the 4-byte IDX magic number")
    zero, code, ndim = struct.unpack(">HBB", head)
    if zero != 0 or code != 0x08 or ndim != 3:
        fh.close()
        raise _bad(path, f"expected uint8 images of shape (N, H, W) (magic 0x00000803), found "
                         f"magic 0x{zero:04x}{code:02x}{ndim:02x}")
    dims = struct.unpack(">3I", fh.read(12).ljust(12, b"\0"))
    if dims[0] == 0:
        fh.close()
        raise _bad(path, "it holds no images")
    return fh, dims


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == _GZIP_MAGIC


def _image_chunks(path: Path, rows: int = 2048):
    """(n, 1, H, W) uint8 images of an IDX file, `rows` at a time (a few MB), checked for
    truncation and trailing bytes as parse_idx checks the whole file."""
    fh, (n, h, w) = _open_idx(path)
    try:
        done = 0
        while done < n:
            take = min(rows, n - done)
            data = fh.read(take * h * w)
            if len(data) != take * h * w:
                raise _bad(path, f"it ends after {done + len(data) // (h * w)} of the {n} images "
                                 f"its header declares")
            yield np.frombuffer(data, np.uint8).reshape(take, 1, h, w)
            done += take
        if fh.read(1):
            raise _bad(path, f"it has more bytes than the {n} images its header declares")
    except (OSError, EOFError, zlib.error) as exc:
        raise _bad(path, f"it is not a complete gzip stream ({type(exc).__name__}: {exc})") from None
    finally:
        fh.close()


def mnist_stream(data_dir: str | os.PathLike, **_):
    """The registry's streaming loader: the labels files at once (small), the image files read
    a few MB at a time while converting."""
    from .stream import RawStream
    files = find_mnist_dir(data_dir)
    stems = {"train": (MNIST_TRAIN_IMAGES, MNIST_TRAIN_LABELS),
             "test": (MNIST_TEST_IMAGES, MNIST_TEST_LABELS)}
    shapes, labels = {}, {}
    for split, (img_stem, lab_stem) in stems.items():
        fh, dims = _open_idx(files[img_stem])
        fh.close()
        shapes[split] = (1, dims[1], dims[2])
        labels[split] = _labels(files[lab_stem], dims[0], files[img_stem])
    if shapes["train"] != shapes["test"]:
        raise UserError(
            f"The MNIST train images ({files[MNIST_TRAIN_IMAGES]}) have shape "
            f"{shapes['train']} but the test images ({files[MNIST_TEST_IMAGES]}) have "
            f"{shapes['test']}; both must have the same image size. Replace the files with "
            "a consistent copy of the dataset."
        )

    def chunks(split: str):
        done = 0
        for images in _image_chunks(files[stems[split][0]]):
            yield images, labels[split][done:done + len(images)]
            done += len(images)
    return RawStream(labels["train"], labels["test"], shapes["train"],
                     [str(i) for i in range(_NUM_CLASSES)], chunks, MNIST_MEAN, MNIST_STD,
                     hflip=False)
