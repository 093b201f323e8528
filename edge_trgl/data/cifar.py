"""CIFAR-10 from the original "python version" download, read with a restricted unpickler.

The batch files are pickles, and a pickle can run arbitrary code when loaded. We therefore never
call ``pickle.load`` on them; :class:`RestrictedUnpickler` resolves only the few globals that
genuine CIFAR-10 files reference (numpy array reconstruction) and refuses everything else before
it can be called.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np

from edge_trgl.data.arrays import ArraySet
from edge_trgl.data.registry import RawData
from edge_trgl.errors import UserError

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR10_FILES",
    "CIFAR10_DIRNAME",
    "RestrictedUnpickler",
    "restricted_loads",
    "find_cifar10_dir",
    "load_cifar10",
    "cifar10_raw",
    "cifar10_stream",
]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_DIRNAME = "cifar-10-batches-py"
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILE = "test_batch"
CIFAR10_META_FILE = "batches.meta"
CIFAR10_FILES = (*CIFAR10_TRAIN_FILES, CIFAR10_TEST_FILE, CIFAR10_META_FILE)
_NUM_CLASSES = 10
_ROW = 3 * 32 * 32


def _numpy_reconstruct():
    try:  # numpy >= 2
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def _allowed_global(module: str, name: str):
    if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        return _numpy_reconstruct()
    if module == "numpy" and name == "ndarray":
        return np.ndarray
    if module == "numpy" and name == "dtype":
        return np.dtype
    if module == "_codecs" and name == "encode":
        # Protocol-2 pickles written by Python 3 store bytes as _codecs.encode(str, 'latin1').
        return _latin1_encode
    return None


def _latin1_encode(text, encoding="utf-8", errors="strict"):
    """``_codecs.encode`` limited to what pickle protocol 2 uses for bytes: str -> latin-1."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "iso-8859-1"):
        raise pickle.UnpicklingError(
            f"_codecs.encode is only allowed as str -> latin1 bytes, got encoding {encoding!r}"
        )
    return text.encode("latin-1", errors="strict")


# Globals that other writers of CIFAR-style batches use (numpy's reconstructors for pickle protocol
# 4/5 -- Python 3's default -- and for numpy scalars; builtin and collections containers): they run
# no code of the file's choosing, but this reader does not admit them, so a file that uses them is
# refused as "unsupported", not as "crafted to run code".
_HARMLESS_MODULES = ("numpy", "numpy.core.multiarray", "numpy._core.multiarray",
                     "numpy.core.numeric", "numpy._core.numeric")
_HARMLESS_NUMPY = ("_frombuffer", "frombuffer", "scalar", "array", "asarray", "ndarray", "dtype",
                   "_reconstruct", "matrix", "int64", "int32", "uint8", "float32", "float64")
_HARMLESS_BUILTINS = ("set", "frozenset", "bytearray", "bytes", "str", "int", "float", "complex",
                      "list", "dict", "tuple", "bool", "slice", "range")


def _harmless(module: str, name: str) -> bool:
    if module in _HARMLESS_MODULES:
        return name in _HARMLESS_NUMPY
    if module in ("builtins", "__builtin__"):
        return name in _HARMLESS_BUILTINS
    return module == "collections" and name in ("OrderedDict", "defaultdict", "deque")


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that admits only numpy array reconstruction and plain containers.

    ``source`` names the file in error messages.
    """

    def __init__(self, file, *, source: str | os.PathLike = "<pickle>") -> None:
        # encoding='bytes' keeps the Python-2 str keys (b'data', b'labels') as bytes.
        super().__init__(file, encoding="bytes")
        self._source = str(source)

    def find_class(self, module: str, name: str):
        obj = _allowed_global(module, name)
        if obj is None and _harmless(module, name):
            how = ("numpy arrays or numpy numbers (e.g. labels) pickled by Python 3 look like this"
                   if module.startswith("numpy") else "a Python container type")
            raise UserError(
                f"The file {self._source} stores its data with '{module}.{name}', which the "
                f"original CIFAR-10 batch files never use ({how}). That is harmless, but "
                "this reader admits only what the original files contain, so the file was not "
                "loaded. Use the official CIFAR-10 'python version' download "
                "(cifar-10-python.tar.gz), or re-save the batch with pickle protocol 2: "
                "pickle.dump({b'data': uint8 array (N, 3072), b'labels': list of ints}, f, "
                "protocol=2)."
            )
        if obj is None:
            raise UserError(
                f"The file {self._source} tries to load the forbidden global '{module}.{name}' (a "
                "function or class that unpickling would import and call). Genuine CIFAR-10 batch "
                "files only contain numpy arrays, lists, dicts and strings, so this file is not a "
                "CIFAR-10 batch and may have been crafted to run code; it was not loaded and "
                "nothing in it was executed. Replace it with a fresh copy of the official CIFAR-10 "
                "'python version' download (cifar-10-python.tar.gz)."
            )
        return obj

    def persistent_load(self, pid):
        raise UserError(
            f"The file {self._source} uses pickle persistent ids, which CIFAR-10 batch files never "
            "contain; it was not loaded. Replace it with a fresh copy of the official CIFAR-10 "
            "'python version' download (cifar-10-python.tar.gz)."
        )


def restricted_loads(data: bytes, *, source: str | os.PathLike = "<pickle>"):
    """Unpickle ``data`` with :class:`RestrictedUnpickler`; any failure becomes a UserError."""
    try:
        return RestrictedUnpickler(io.BytesIO(data), source=source).load()
    except UserError:
        raise
    except Exception as exc:  # truncated / corrupted data raises many different types
        raise UserError(
            f"Could not read {source}: the file is truncated or corrupted and is not a valid "
            f"CIFAR-10 batch pickle ({type(exc).__name__}: {exc}). Replace it with a fresh copy "
            "from the official CIFAR-10 'python version' download (cifar-10-python.tar.gz)."
        ) from None


def _layout_help(path: Path) -> str:
    return (
        f"Expected a directory holding the CIFAR-10 'python version' files "
        f"({', '.join(CIFAR10_FILES)}), or a directory with a '{CIFAR10_DIRNAME}' subfolder "
        f"holding them. Download cifar-10-python.tar.gz from "
        f"https://www.cs.toronto.edu/~kriz/cifar.html, extract it, and pass the extracted "
        f"'{CIFAR10_DIRNAME}' folder (or its parent) as --data-dir."
    )


def find_cifar10_dir(data_dir: str | os.PathLike) -> Path:
    """The directory that holds the CIFAR-10 batch files: ``data_dir`` or ``data_dir/cifar-10-batches-py``."""
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise UserError(
            f"The CIFAR-10 data directory {root} does not exist or is not a directory. "
            + _layout_help(root)
        )
    for cand in (root, root / CIFAR10_DIRNAME):
        if cand.is_dir() and all((cand / f).is_file() for f in CIFAR10_FILES):
            return cand
    cand = root / CIFAR10_DIRNAME if (root / CIFAR10_DIRNAME).is_dir() else root
    missing = [f for f in CIFAR10_FILES if not (cand / f).is_file()]
    raise UserError(
        f"The CIFAR-10 data directory {cand} is missing {', '.join(missing)}. " + _layout_help(root)
    )


def _read_pickle(path: Path):
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(
            f"Could not read the CIFAR-10 file {path}: {exc.strerror or exc}. Check that the file "
            "exists and is readable, or replace it with a fresh copy of the official download."
        ) from None
    return restricted_loads(data, source=path)


def _get(d: dict, key: str):
    """Look a key up as bytes (Python-2 pickles) or str (re-pickled under Python 3)."""
    if key.encode() in d:
        return d[key.encode()]
    return d.get(key)


def _bad(path: Path, what: str) -> UserError:
    return UserError(
        f"The CIFAR-10 file {path} is not a valid batch: {what}. Replace it with a fresh copy "
        "from the official CIFAR-10 'python version' download (cifar-10-python.tar.gz)."
    )


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    obj = _read_pickle(path)
    if not isinstance(obj, dict):
        raise _bad(path, f"expected a pickled dict, found {type(obj).__name__}")
    data, labels = _get(obj, "data"), _get(obj, "labels")
    if data is None or labels is None:
        raise _bad(path, "the dict has no 'data' and 'labels' entries")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        raise _bad(path, f"'data' must be a uint8 numpy array, found {type(data).__name__}"
                   + (f" of dtype {data.dtype}" if isinstance(data, np.ndarray) else ""))
    if data.ndim != 2 or data.shape[1] != _ROW or data.shape[0] == 0:
        raise _bad(path, f"'data' must have shape (N, {_ROW}), found {data.shape}")
    try:
        lab = np.asarray(labels)
        if lab.dtype == object or not np.issubdtype(lab.dtype, np.integer):
            raise TypeError(f"dtype {lab.dtype}")
        lab = lab.astype(np.int64)
    except (TypeError, ValueError) as exc:
        raise _bad(path, f"'labels' must be a list of integers ({exc})") from None
    if lab.ndim != 1 or lab.shape[0] != data.shape[0]:
        raise _bad(path, f"{data.shape[0]} images but labels of shape {lab.shape}")
    if lab.size and (lab.min() < 0 or lab.max() >= _NUM_CLASSES):
        raise _bad(path, f"labels must lie in 0..{_NUM_CLASSES - 1}, found {lab.min()}..{lab.max()}")
    return data.reshape(-1, 3, 32, 32), lab


def _read_meta(path: Path) -> list[str]:
    obj = _read_pickle(path)
    names = _get(obj, "label_names") if isinstance(obj, dict) else None
    if not isinstance(names, list) or len(names) != _NUM_CLASSES:
        raise _bad(path, f"expected a dict with a 'label_names' list of {_NUM_CLASSES} names")
    out = []
    for n in names:
        if isinstance(n, bytes):
            n = n.decode("utf-8", errors="replace")
        if not isinstance(n, str):
            raise _bad(path, "'label_names' must hold strings")
        out.append(n)
    return out


def load_cifar10(data_dir: str | os.PathLike) -> tuple[ArraySet, ArraySet, list[str]]:
    """Load CIFAR-10: ``(train, test, class_names)`` with images uint8 (N, 3, 32, 32)."""
    root = find_cifar10_dir(data_dir)
    class_names = _read_meta(root / CIFAR10_META_FILE)
    # Fill one preallocated array batch by batch: holding all five parsed batches and then
    # concatenating them doubled the loading peak (~460 MB, more than a small budget allows).
    images, labels, filled = None, [], 0
    for f in CIFAR10_TRAIN_FILES:
        batch_images, batch_labels = _read_batch(root / f)
        if images is None:
            images = np.empty((batch_images.shape[0] * len(CIFAR10_TRAIN_FILES), 3, 32, 32), np.uint8)
        if filled + len(batch_images) > len(images):
            images = np.concatenate([images[:filled], batch_images])
        else:
            images[filled:filled + len(batch_images)] = batch_images
        filled += len(batch_images)
        labels.append(batch_labels)
        del batch_images
    train = ArraySet(images=images[:filled], labels=np.concatenate(labels))
    test_images, test_labels = _read_batch(root / CIFAR10_TEST_FILE)
    test = ArraySet(images=np.ascontiguousarray(test_images), labels=test_labels)
    return train, test, class_names


def cifar10_raw(data_dir: str | os.PathLike, **_) -> RawData:
    """The registry's loader: CIFAR-10 with its usual statistics; flipped images are valid."""
    train, test, class_names = load_cifar10(data_dir)
    return RawData(train, test, class_names, CIFAR10_MEAN, CIFAR10_STD, hflip=True)


def cifar10_stream(data_dir: str | os.PathLike, **_):
    """The registry's streaming loader: one batch file parsed at a time (its labels first, for
    the split selection; its images again while converting), never the five together."""
    from .stream import RawStream
    root = find_cifar10_dir(data_dir)
    class_names = _read_meta(root / CIFAR10_META_FILE)
    files = {"train": CIFAR10_TRAIN_FILES, "test": (CIFAR10_TEST_FILE,)}
    labels = {split: np.concatenate([_read_batch(root / f)[1] for f in names])
              for split, names in files.items()}

    def chunks(split: str):
        for f in files[split]:
            images, batch_labels = _read_batch(root / f)
            yield images, batch_labels
            del images
    return RawStream(labels["train"], labels["test"], (3, 32, 32), class_names, chunks,
                     CIFAR10_MEAN, CIFAR10_STD, hflip=True)
