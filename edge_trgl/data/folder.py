"""Your own images: a folder of class folders (``--data folder --data-dir DIR``).

Layouts (class names are the sub-folder names, sorted; label i is the i-th name):

* ``DIR/train/<class>/*`` and ``DIR/test/<class>/*`` (both ``train`` and ``test`` present, with
  the same class folders): the test set is ``DIR/test``;
* ``DIR/<class>/*``: a seeded, class-stratified ``TEST_FRACTION`` (20 %) of each class's images
  becomes the test set (``round(0.2 * n)`` of a class of n, so a class of 1 or 2 images has none
  in the test set and all in training); ``--seed`` chooses which.

Images: JPEG, PNG, WebP and BMP files directly inside a class folder (other files and
sub-folders are skipped), decoded with Pillow (the optional ``folder`` extra), turned upright by
their EXIF orientation, converted to RGB (grey, palette and transparent images alike: the
dataset always has 3 channels, transparency is dropped), then resized so that the shorter side is
``image_size`` (bilinear) and centre-cropped to ``image_size`` x ``image_size``. Without
``--image-size``, ``image_size`` is the median shorter side of the training images (all images
in the one-folder layout) rounded to a multiple of 8, at least 8 and at most 64
(``default_image_size``).

A run decodes every image once, a few at a time, into its on-disk arrays (``folder_stream``,
data/ondisk.py) and its trainers read batches from there: no process holds the decoded folder
(3 x S x S bytes an image: 20,000 images at 96 px are 553 MB). ``load_folder`` (in memory) is
what export and evaluate use. Mean/std are measured on the training images; a horizontal flip is
a valid augmentation.

Numpy and Pillow only: this module must never import torch.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from edge_trgl.data.arrays import ArraySet, per_channel_stats
from edge_trgl.data.registry import RawData
# one opener for training and predict: images of more decoded pixels than MAX_IMAGE_PIXELS are
# refused before decoding (a small file can claim a huge size)
from edge_trgl.deploy_runtime import MAX_IMAGE_PIXELS, ImageTooLarge, open_image
from edge_trgl.errors import UserError

__all__ = ["IMAGE_EXTENSIONS", "TEST_FRACTION", "MAX_DEFAULT_SIZE", "default_image_size",
           "find_layout", "load_folder", "folder_raw", "folder_stream"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
TEST_FRACTION = 0.2        # the one-folder layout: this part of each class is the test set
MAX_DEFAULT_SIZE = 64      # the default image size is at most this (time and disk per image)
SIZE_STEP = 8              # ... and a multiple of this
_TEST_STREAM = 0xF01DE5    # the RNG stream of the one-folder test split (data/__init__ has others)
_KINDS = "JPEG, PNG, WebP or BMP"
CHUNK_IMAGES = 64          # images decoded at a time while converting (64 x 3 x 128^2: 3 MB)


def require_pillow():
    """PIL.Image, or a UserError saying how to install it."""
    try:
        from PIL import Image, ImageOps
    except ImportError:
        raise UserError("Reading an image folder (--data folder) needs Pillow, which is not "
                        "installed. Install the project's folder extra: `pip install -e "
                        "\".[folder]\"` (or `pip install Pillow`).") from None
    return Image, ImageOps


def _entries(folder: Path) -> list[Path]:
    """The entries of `folder`, sorted by name; an unreadable folder is a UserError."""
    try:
        return sorted(folder.iterdir(), key=lambda p: p.name)
    except OSError as exc:
        raise UserError(f"The folder {folder} cannot be read ({exc.strerror or exc}). Check its "
                        f"permissions, or give another --data-dir.") from None


def _is_image(path: Path) -> bool:
    return (path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")
            and path.is_file())


def _subfolders(folder: Path) -> list[Path]:
    return [p for p in _entries(folder) if p.is_dir() and not p.name.startswith(".")]


def _class_files(folder: Path, where: str) -> list[tuple[str, list[Path]]]:
    """[(class name, its image files sorted by name)] for the class folders in `folder`."""
    classes = _subfolders(folder)
    if not classes:
        raise UserError(f"{where} holds no class folders. An image folder dataset is one "
                        f"sub-folder per class holding that class's images ({where}/cat/1.jpg, "
                        f"{where}/dog/2.png, ...), optionally split into train/ and test/ "
                        f"folders of the same classes.")
    out = []
    for cls in classes:
        entries = _entries(cls)
        files = [p for p in entries if _is_image(p)]
        if not files:
            inside = [p.name for p in entries if not p.name.startswith(".")]
            what = ("it is empty" if not inside else
                    f"it holds {len(inside)} entries but no {_KINDS} file (e.g. "
                    f"{', '.join(inside[:3])})")
            hint = (f" If {cls} is the dataset (its sub-folders the classes, or train/ and "
                    f"test/), give --data-dir {cls}."
                    if inside and all((cls / n).is_dir() for n in inside) else "")
            raise UserError(f"The class folder {cls} has no images: {what}. Every class folder "
                            f"needs at least one {_KINDS} image (other files are skipped); "
                            f"remove the folder if it is not a class.{hint}")
        out.append((cls.name, files))
    return out


def find_layout(data_dir) -> tuple[list[str], list[tuple[str, list[Path]]],
                                   list[tuple[str, list[Path]]] | None]:
    """(class names, the train classes' files, the test classes' files or None for the
    one-folder layout), checked: the folder exists, there are at least two classes, every class
    has an image, and train/ and test/ have the same classes."""
    root = Path(os.path.expanduser(str(data_dir)))
    if not root.exists():
        raise UserError(f"The image folder {root} does not exist. Give --data-dir the folder "
                        f"that holds one sub-folder per class (or train/ and test/ folders of "
                        f"class folders).")
    if not root.is_dir():
        raise UserError(f"{root} is a file, not a folder. --data folder reads a folder of class "
                        f"folders: give --data-dir the folder that holds them.")
    split_dirs = {p.name: p for p in _subfolders(root) if p.name in ("train", "test")}
    others = [p.name for p in _subfolders(root) if p.name not in ("train", "test")]
    # train/ or test/ is a split folder when it holds folders; holding images, it is a class
    looks_split = [name for name, p in split_dirs.items() if _subfolders(p)
                   and not any(_is_image(f) for f in _entries(p))]
    if not looks_split:
        train = _class_files(root, str(root))
        test = None
    else:
        if len(split_dirs) < 2 or others:
            have = sorted(split_dirs) + others
            raise UserError(f"The image folder {root} holds {', '.join(have)}: train/ and "
                            f"test/ folders of class folders come together, with the same "
                            f"classes and nothing else beside them (DIR/train/<class>/*, "
                            f"DIR/test/<class>/*). "
                            f"For a seeded {TEST_FRACTION:.0%} test split instead, put the class "
                            f"folders directly in {root}.")
        train = _class_files(split_dirs["train"], str(split_dirs["train"]))
        test = _class_files(split_dirs["test"], str(split_dirs["test"]))
        train_names, test_names = [c for c, _ in train], [c for c, _ in test]
        if train_names != test_names:
            only_train = sorted(set(train_names) - set(test_names))
            only_test = sorted(set(test_names) - set(train_names))
            diff = "; ".join(part for part in (
                f"only in train/: {', '.join(only_train)}" if only_train else "",
                f"only in test/: {', '.join(only_test)}" if only_test else "") if part)
            raise UserError(f"The train/ and test/ folders of {root} must hold the same class "
                            f"folders ({diff}). Add the missing class folders, or remove the "
                            f"extra ones.")
    names = [c for c, _ in train]
    if len(names) < 2:
        raise UserError(f"The image folder {root} has only one class ({names[0]}); a classifier "
                        f"needs at least two class folders.")
    return names, train, test


def _open(Image, path: Path):
    """A Pillow image of `path` (only its header read so far), its size checked first."""
    too_large = UserError(f"The image {path} is too large to read (more than "
                          f"{MAX_IMAGE_PIXELS / 1e6:.0f} megapixels, which would take hundreds "
                          f"of MB to decode only to be shrunk). Resize it first, or remove it.")
    try:
        return open_image(Image, path)
    except ImageTooLarge:
        raise too_large from None
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError...
        raise _unreadable(path, exc) from None


def _unreadable(path: Path, exc: BaseException) -> UserError:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return UserError(f"The image {path} cannot be read ({text[:200]}): it is damaged or not a "
                     f"{_KINDS} image. Replace it with an intact copy, or remove it.")


def default_image_size(sides) -> int:
    """The median of the images' shorter sides rounded to a multiple of 8, in [8, 64]."""
    median = float(np.median(np.asarray(list(sides), dtype=np.float64)))
    size = int(math.floor(median / SIZE_STEP + 0.5)) * SIZE_STEP
    return max(SIZE_STEP, min(MAX_DEFAULT_SIZE, size))


def _shorter_sides(Image, files: list[Path]) -> list[int]:
    sides = []
    for path in files:
        with _open(Image, path) as img:
            sides.append(min(img.size))
    return sides


def _decode(Image, ImageOps, path: Path, size: int) -> np.ndarray:
    """(3, size, size) uint8: upright, RGB, shorter side resized to `size`, centre-cropped (the
    function `predict` prepares an image with, so both see a photo alike)."""
    from ..deploy_runtime import fit_image
    try:
        with _open(Image, path) as img:
            img, _ = fit_image(Image, img, size, size)   # EXIF first, while the file's tags
            arr = np.asarray(img.convert("RGB"), dtype=np.uint8)  # are still on the image
    except UserError:
        raise
    except Exception as exc:  # a truncated or corrupt file fails here, when it is decoded
        raise _unreadable(path, exc) from None
    return arr.transpose(2, 0, 1)


def _read_split(Image, ImageOps, classes, size: int) -> ArraySet:
    count = sum(len(files) for _, files in classes)
    images = np.empty((count, 3, size, size), dtype=np.uint8)
    labels = np.empty((count,), dtype=np.int64)
    i = 0
    for label, (_, files) in enumerate(classes):
        for path in files:
            images[i] = _decode(Image, ImageOps, path, size)
            labels[i] = label
            i += 1
    return ArraySet(images=images, labels=labels)


def load_folder(data_dir, *, seed: int = 0, image_size: int | None = None
                ) -> tuple[ArraySet, ArraySet, list[str], int]:
    """(train, test, class names, image size) of an image folder; see the module's docstring."""
    Image, ImageOps = require_pillow()
    names, train_classes, test_classes = find_layout(data_dir)
    if image_size is None:
        image_size = default_image_size(_shorter_sides(
            Image, [f for _, files in train_classes for f in files]))
    train = _read_split(Image, ImageOps, train_classes, image_size)
    if test_classes is not None:
        test = _read_split(Image, ImageOps, test_classes, image_size)
    else:
        from edge_trgl.data import class_balanced_split
        rng = np.random.default_rng([int(seed), _TEST_STREAM])
        test_idx, train_idx = class_balanced_split(train.labels, TEST_FRACTION, rng,
                                                   keep_one=False)
        train, test = train.subset(train_idx), train.subset(test_idx)
        if len(test) == 0:
            raise UserError(f"The image folder {data_dir} is too small for a test split: "
                            f"{TEST_FRACTION:.0%} of each class is held out for testing, which "
                            f"rounds to no image for classes of 1 or 2 images, as all of yours "
                            f"are. Add images (3 or more in a class), or give train/ and test/ "
                            f"folders.")
    return train, test, names, image_size


def folder_raw(data_dir, *, seed: int = 0, image_size: int | None = None, **_) -> RawData:
    """The registry's loader: the folder's images at `image_size` (default: the median rule),
    with the training images' own mean/std; flipped images are valid."""
    train, test, names, _ = load_folder(data_dir, seed=seed, image_size=image_size)
    mean, std = per_channel_stats(train.images)
    std = tuple(s if s > 0 else 1.0 for s in std)  # a constant channel: nothing to scale
    return RawData(train, test, names, mean, std, hflip=True)


def folder_stream(data_dir, *, seed: int = 0, image_size: int | None = None, **_):
    """The registry's streaming loader: the layout and labels from the folder names (and, for
    the default size, the images' headers), then each image decoded as the conversion reaches
    it, CHUNK_IMAGES at a time; mean/std measured on the training images as they stream past.
    Chooses the same images, sizes and test split as load_folder."""
    from .stream import RawStream
    Image, ImageOps = require_pillow()
    names, train_classes, test_classes = find_layout(data_dir)
    if image_size is None:
        image_size = default_image_size(_shorter_sides(
            Image, [f for _, files in train_classes for f in files]))

    def flat(classes):
        files = [path for _, paths in classes for path in paths]
        labels = np.array([k for k, (_, paths) in enumerate(classes) for _ in paths], np.int64)
        return files, labels
    train_files, train_labels = flat(train_classes)
    if test_classes is not None:
        test_files, test_labels = flat(test_classes)
    else:
        from edge_trgl.data import class_balanced_split
        rng = np.random.default_rng([int(seed), _TEST_STREAM])
        test_idx, train_idx = class_balanced_split(train_labels, TEST_FRACTION, rng,
                                                   keep_one=False)
        if len(test_idx) == 0:
            raise UserError(f"The image folder {data_dir} is too small for a test split: "
                            f"{TEST_FRACTION:.0%} of each class is held out for testing, which "
                            f"rounds to no image for classes of 1 or 2 images, as all of yours "
                            f"are. Add images (3 or more in a class), or give train/ and test/ "
                            f"folders.")
        test_files, test_labels = [train_files[i] for i in test_idx], train_labels[test_idx]
        train_files, train_labels = [train_files[i] for i in train_idx], train_labels[train_idx]
    files = {"train": (train_files, train_labels), "test": (test_files, test_labels)}

    def chunks(split: str):
        paths, labels = files[split]
        for start in range(0, len(paths), CHUNK_IMAGES):
            part = paths[start:start + CHUNK_IMAGES]
            images = np.empty((len(part), 3, image_size, image_size), np.uint8)
            for i, path in enumerate(part):
                images[i] = _decode(Image, ImageOps, path, image_size)
            yield images, labels[start:start + len(part)]
    return RawStream(train_labels, test_labels, (3, image_size, image_size), names, chunks,
                     hflip=True, zero_std_to_one=True)
