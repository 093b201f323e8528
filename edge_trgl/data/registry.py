"""The registry of dataset loaders that ``load_dataset`` chooses from by name.

Each dataset is registered under its (lower-case) name with a loader that returns the dataset's
original train and test sets as a :class:`RawData`; ``load_dataset`` then takes the seeded
train / val / test subsets, the same way for every dataset. A loader is given either as a
callable or as a ``"module:function"`` string, which is imported only when that dataset is
loaded (so loading one dataset never imports another's parser).

To add a dataset, write one module with a loader function and register it with one line at the
bottom of this file, e.g. for an image-folder dataset in ``edge_trgl/data/imagefolder.py``::

    def imagefolder_raw(data_dir, **_):          # seed / synthetic sizes are passed, unused here
        train, test, class_names = ...           # uint8 (N, C, H, W) ArraySets
        mean, std = per_channel_stats(train.images)   # from edge_trgl.data.arrays
        return RawData(train, test, class_names, mean, std, hflip=True)

    register_dataset("imagefolder", "edge_trgl.data.imagefolder:imagefolder_raw",
                     folder="imagefolder")

This module must never import torch (a torch-free worker imports the data package).
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Callable, NamedTuple, Union

from edge_trgl.data.arrays import ArraySet

__all__ = [
    "RawData",
    "DatasetEntry",
    "register_dataset",
    "unregister_dataset",
    "dataset_entry",
    "dataset_names",
]


class RawData(NamedTuple):
    """What a loader returns: the dataset's whole original train and test sets (before any
    subset or validation split), its class names, per-channel mean/std in [0, 1] pixel units, and
    whether a horizontal flip is a valid augmentation for its images."""

    train: ArraySet
    test: ArraySet
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    hflip: bool = True


# loader(data_dir, *, seed, synthetic_train, synthetic_test) -> RawData
Loader = Callable[..., RawData]


@dataclass(frozen=True)
class DatasetEntry:
    """One registered dataset.

    ``loader`` is a callable or a ``"module:function"`` string (imported on first use);
    ``needs_data_dir`` says whether the dataset is read from disk (then ``load_dataset`` refuses
    a missing data directory before calling the loader); ``folder`` is the name of the folder of
    original files that the "no data directory" message asks for.
    """

    name: str
    loader: Union[Loader, str]
    needs_data_dir: bool = True
    folder: str | None = None
    # (data_dir, *, seed, synthetic_train, synthetic_test, ...) -> data.stream.RawStream: the
    # same data, decoded a chunk at a time (the run's on-disk copy is written from it); None: the
    # conversion wraps `loader`, which holds the whole dataset while it converts
    stream: Union[Callable, str, None] = None

    def resolve(self, which: str = "loader"):
        target = getattr(self, which)
        if callable(target):
            return target
        module, _, attr = target.partition(":")
        return getattr(importlib.import_module(module), attr)

    def load(self, data_dir: str | os.PathLike | None, *, seed: int, synthetic_train: int,
             synthetic_test: int, **options) -> RawData:
        return RawData(*self.resolve()(data_dir, seed=seed, synthetic_train=synthetic_train,
                                       synthetic_test=synthetic_test, **options))


_REGISTRY: dict[str, DatasetEntry] = {}


def register_dataset(name: str, loader: Union[Loader, str], *, needs_data_dir: bool = True,
                     folder: str | None = None, replace: bool = False,
                     stream: Union[Callable, str, None] = None) -> DatasetEntry:
    """Register ``loader`` under ``name`` (lower case). ``folder`` defaults to the name. A name
    that is already registered is refused unless ``replace``."""
    if not isinstance(name, str) or not name or name != name.lower():
        raise ValueError(f"A dataset name must be a non-empty lower-case string, got {name!r}")
    if isinstance(loader, str):
        module, sep, attr = loader.partition(":")
        if not (module and sep and attr):
            raise ValueError(f"A loader string must look like 'package.module:function', got "
                             f"{loader!r}")
    elif not callable(loader):
        raise ValueError(f"A dataset loader must be callable or a 'module:function' string, got "
                         f"{loader!r}")
    if name in _REGISTRY and not replace:
        raise ValueError(f"The dataset {name!r} is already registered")
    entry = DatasetEntry(name=name, loader=loader, needs_data_dir=bool(needs_data_dir),
                         folder=folder if folder is not None else name, stream=stream)
    _REGISTRY[name] = entry
    return entry


def unregister_dataset(name: str) -> None:
    """Remove a registered dataset (e.g. one a test added); unknown names are ignored."""
    _REGISTRY.pop(name, None)


def dataset_entry(name: str) -> DatasetEntry | None:
    """The entry registered under ``name`` (lower case), or None."""
    return _REGISTRY.get(name)


def dataset_names() -> tuple[str, ...]:
    """The registered names, in registration order."""
    return tuple(_REGISTRY)


# --- the built-in datasets (in the order the command line lists them) ---------------------------
register_dataset("synthetic", "edge_trgl.data.synthetic:synthetic_raw", needs_data_dir=False,
                 stream="edge_trgl.data.synthetic:synthetic_stream")
register_dataset("cifar10", "edge_trgl.data.cifar:cifar10_raw", folder="cifar-10-batches-py",
                 stream="edge_trgl.data.cifar:cifar10_stream")
register_dataset("mnist", "edge_trgl.data.idx:mnist_raw", folder="mnist",
                 stream="edge_trgl.data.idx:mnist_stream")
register_dataset("folder", "edge_trgl.data.folder:folder_raw", folder="class folders",
                 stream="edge_trgl.data.folder:folder_stream")
