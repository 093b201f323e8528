"""`--data folder --data-dir DIR`: your own images, one sub-folder per class (data/folder.py).

Every image folder is written here with Pillow in tmp_path (no committed images). The loader tests
take well under a second; the end-to-end ones (train, export, predict, resume) are marked slow."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge_trgl.config import TrainConfig
from edge_trgl.data import load_dataset
from edge_trgl.data.folder import TEST_FRACTION, default_image_size
from edge_trgl.data.registry import dataset_entry
from edge_trgl.errors import UserError
from helpers import assert_one_paragraph_error, cli

CLASSES = ("cat", "dog", "owl")                       # sorted: labels 0, 1, 2
COLOURS = {"cat": (200, 30, 30), "dog": (30, 200, 30), "owl": (30, 30, 200)}
FORMATS = (".png", ".jpg", ".webp", ".bmp")


def pil():
    """PIL.Image, or skip the test saying why (Pillow is the optional `folder` extra)."""
    return pytest.importorskip("PIL.Image", reason="Pillow is not installed (the optional "
                               "`folder` extra: pip install -e \".[folder]\"); the image folder "
                               "dataset needs it")


def write_image(path: Path, size: tuple[int, int], colour, *, grey: bool = False,
                seed: int = 0) -> Path:
    """A width x height image of `colour` plus a little seeded noise, saved by its suffix."""
    Image = pil()
    w, h = size
    rng = np.random.default_rng(seed)
    arr = np.clip(np.array(colour, np.int64) + rng.integers(-20, 21, (h, w, 3)), 0, 255)
    img = Image.fromarray(arr.astype(np.uint8))
    if grey:
        img = img.convert("L")
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def write_classes(root: Path, per_class: int, *, sizes=((40, 30), (28, 36), (33, 33), (50, 31)),
                  grey_one: bool = True, seed: int = 0) -> Path:
    """root/<class>/<i><suffix> for CLASSES: mixed sizes and formats, the first image grey."""
    n = 0
    for cls in CLASSES:
        for i in range(per_class):
            write_image(root / cls / f"{i:03d}{FORMATS[i % len(FORMATS)]}",
                        sizes[i % len(sizes)], COLOURS[cls], grey=grey_one and n == 0,
                        seed=seed + n)
            n += 1
    return root


@pytest.fixture
def split_dir(tmp_path):
    """DIR/train/<class>/* (6 each) and DIR/test/<class>/* (2 each)."""
    write_classes(tmp_path / "imgs" / "train", 6)
    write_classes(tmp_path / "imgs" / "test", 2, grey_one=False, seed=100)
    return tmp_path / "imgs"


@pytest.fixture
def flat_dir(tmp_path):
    """DIR/<class>/* (10 each), no train/test folders."""
    return write_classes(tmp_path / "imgs", 10)


# --- layouts ---------------------------------------------------------------------------------------

def test_registered_as_folder_and_read_from_disk():
    entry = dataset_entry("folder")
    assert entry is not None and entry.needs_data_dir
    assert entry.loader == "edge_trgl.data.folder:folder_raw"


def test_train_and_test_folders(split_dir):
    ds = load_dataset("folder", split_dir, val_fraction=0.0)
    # shorter sides 30, 28, 33, 31, 30, 28 in each class: median 30, rounded to 32
    assert ds.in_shape == (3, 32, 32)
    assert ds.class_names == list(CLASSES) and ds.num_classes == 3
    assert len(ds.train) == 18 and len(ds.test) == 6 and len(ds.val) == 0
    assert list(ds.train.class_counts(3)) == [6, 6, 6] and list(ds.test.class_counts(3)) == [2, 2, 2]
    assert ds.hflip is True
    # every image is its class's colour (the labels follow the sorted folder names)
    means = ds.train.images.reshape(len(ds.train), 3, -1).mean(axis=2)
    for mean, label in zip(means, ds.train.labels):
        cls = CLASSES[label]
        assert abs(mean - np.array(COLOURS[cls])).max() < 25 or np.ptp(mean) < 1  # grey: R=G=B
    # the grey image (the first cat) became three equal channels
    grey = ds.train.images[0]
    assert np.array_equal(grey[0], grey[1]) and np.array_equal(grey[1], grey[2])
    # mean/std measured on the training images
    from edge_trgl.data.arrays import per_channel_stats
    assert (ds.mean, ds.std) == per_channel_stats(ds.train.images)


def test_one_folder_gets_a_seeded_stratified_test_split(flat_dir):
    a = load_dataset("folder", flat_dir, seed=0, val_fraction=0.0)
    assert list(a.test.class_counts(3)) == [round(TEST_FRACTION * 10)] * 3
    assert len(a.train) + len(a.test) == 30
    again = load_dataset("folder", flat_dir, seed=0, val_fraction=0.0)
    assert a.fingerprint() == again.fingerprint()
    other = load_dataset("folder", flat_dir, seed=1, val_fraction=0.0)
    assert not np.array_equal(a.test.images, other.test.images)
    # train and test are disjoint and together hold every image
    rows = lambda s: {r.tobytes() for r in s.images}  # noqa: E731
    assert not rows(a.train) & rows(a.test) and len(rows(a.train) | rows(a.test)) == 30


def test_image_size_resizes_the_shorter_side_and_crops_the_centre(tmp_path):
    """A 40x20 image: red | green | blue thirds of 10, 20, 10 columns. At 10 px its shorter side
    becomes 10 (20x10), and the centre 10x10 crop is the green part."""
    Image = pil()
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :10] = (255, 0, 0)
    arr[:, 10:30] = (0, 255, 0)
    arr[:, 30:] = (0, 0, 255)
    for cls in ("a", "b"):
        for i in range(3):
            (tmp_path / "imgs" / cls).mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(tmp_path / "imgs" / cls / f"{i}.png")
    ds = load_dataset("folder", tmp_path / "imgs", image_size=10, val_fraction=0.0)
    assert ds.in_shape == (3, 10, 10)
    img = ds.train.images[0]
    assert (img[1, :, 1:-1] > 200).all() and (img[0, :, 1:-1] < 40).all() and \
        (img[2, :, 1:-1] < 40).all()


def test_exif_orientation_is_applied(tmp_path):
    """A landscape image tagged 'rotate 90 degrees' (EXIF orientation 6) is read upright: the
    red left half of the stored pixels ends up at the top."""
    Image = pil()
    arr = np.zeros((16, 32, 3), np.uint8)
    arr[:, :16] = (255, 0, 0)
    arr[:, 16:] = (0, 0, 255)
    for cls in ("a", "b"):
        for i in range(3):
            (tmp_path / "imgs" / cls).mkdir(parents=True, exist_ok=True)
            img = Image.fromarray(arr)
            exif = img.getexif()
            exif[0x0112] = 6
            img.save(tmp_path / "imgs" / cls / f"{i}.png", exif=exif)
    ds = load_dataset("folder", tmp_path / "imgs", image_size=16, val_fraction=0.0)
    img = ds.train.images[0].astype(int)
    # upright it is 16 wide and 32 tall; the 16x16 centre crop has red above and blue below
    assert img[0, 1].mean() > 200 and img[2, 1].mean() < 40
    assert img[2, -2].mean() > 200 and img[0, -2].mean() < 40


def test_predict_prepares_an_image_as_training_does(tmp_path):
    """`predict` (deploy_runtime.load_image) and `--data folder` (folder._decode) turn a photo into
    the same pixels: upright by EXIF, resized with its aspect kept, centre-cropped. Before, predict
    squeezed a 96x48 image of red | green | blue stripes to 32x32 and kept the red and blue that
    training crops away."""
    Image = pil()
    from edge_trgl.data.folder import _decode
    from edge_trgl.deploy_runtime import load_image
    from PIL import ImageOps
    arr = np.zeros((48, 96, 3), np.uint8)
    arr[:, :32], arr[:, 32:64], arr[:, 64:] = (255, 0, 0), (0, 255, 0), (0, 0, 255)
    plain, rotated = tmp_path / "stripes.png", tmp_path / "rotated.png"
    Image.fromarray(arr).save(plain)
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(rotated, exif=exif)
    for path in (plain, rotated):
        trained = _decode(Image, ImageOps, path, 32).astype(np.float32)
        predicted, note = load_image(path, (3, 32, 32))
        np.testing.assert_array_equal(predicted, trained)
        assert "centre-cropped" in note
    centre, _ = load_image(plain, (3, 32, 32))
    # the centre third is green; a sixth of red and of blue is left at the edges (squeezed: a third)
    assert centre[1].mean() > 150 and centre[0].mean() < 60 and centre[2].mean() < 60


@pytest.mark.parametrize("sides, size", [([30, 33, 35], 32), ([500, 700, 900], 64),
                                         ([3, 4, 5], 8), ([20, 44], 32), ([47, 48, 49, 200], 48)])
def test_default_image_size(sides, size):
    assert default_image_size(sides) == size


def test_changed_pixels_change_the_fingerprint(flat_dir):
    before = load_dataset("folder", flat_dir).fingerprint()
    path = flat_dir / "dog" / "000.png"
    write_image(path, (40, 30), (0, 0, 0))
    assert load_dataset("folder", flat_dir).fingerprint() != before


def test_other_files_and_subfolders_are_skipped(flat_dir):
    (flat_dir / "cat" / "notes.txt").write_text("not an image")
    (flat_dir / "cat" / ".hidden.png").write_bytes(b"junk")
    (flat_dir / "cat" / "nested").mkdir()
    (flat_dir / ".cache").mkdir()
    ds = load_dataset("folder", flat_dir, val_fraction=0.0)
    assert ds.class_names == list(CLASSES) and len(ds.train) + len(ds.test) == 30


# --- errors: each one paragraph, exit status 2 -------------------------------------------------------

def _error(capsys, data_dir, *extra) -> str:
    rc, _, err = cli(capsys, "plan", "--data", "folder", "--data-dir", data_dir, "--threads", "1",
                     "--quiet", *extra)
    assert_one_paragraph_error(rc, err)
    return " ".join(err.split())


def test_missing_folder(capsys, tmp_path):
    assert "does not exist" in _error(capsys, tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    assert "is a file, not a folder" in _error(capsys, tmp_path / "file")


def test_no_class_folders(capsys, tmp_path):
    write_image(tmp_path / "imgs" / "loose.png", (8, 8), (0, 0, 0))
    assert "holds no class folders" in _error(capsys, tmp_path / "imgs")


def test_a_class_without_images(capsys, flat_dir):
    (flat_dir / "emu").mkdir()
    text = _error(capsys, flat_dir)
    assert "emu has no images: it is empty" in text
    (flat_dir / "emu" / "readme.txt").write_text("x")
    assert "no JPEG, PNG, WebP or BMP file (e.g. readme.txt)" in _error(capsys, flat_dir)


def test_one_level_too_high_says_so(capsys, split_dir):
    text = _error(capsys, split_dir.parent)  # tmp_path holds only imgs/
    assert "has no images" in text and f"give --data-dir {split_dir}" in text


def test_corrupt_and_truncated_images_are_named(capsys, flat_dir):
    bad = flat_dir / "owl" / "999.png"
    bad.write_bytes(b"this is not a PNG")
    text = _error(capsys, flat_dir)
    assert f"The image {bad} cannot be read" in text
    bad.unlink()
    jpeg = flat_dir / "dog" / "001.jpg"
    data = jpeg.read_bytes()
    jpeg.write_bytes(data[:len(data) // 2])
    assert f"The image {jpeg} cannot be read" in _error(capsys, flat_dir)


def test_an_unreadable_folder(capsys, flat_dir, monkeypatch):
    real = Path.iterdir

    def iterdir(self):
        if self.name == "owl":
            raise PermissionError(13, "Permission denied")
        return real(self)
    monkeypatch.setattr(Path, "iterdir", iterdir)
    assert "owl cannot be read (Permission denied)" in _error(capsys, flat_dir)


def test_fewer_than_two_classes(capsys, tmp_path):
    write_image(tmp_path / "imgs" / "cat" / "a.png", (8, 8), (0, 0, 0))
    assert "has only one class (cat)" in _error(capsys, tmp_path / "imgs")


def test_train_without_test_and_mismatched_classes(capsys, split_dir, tmp_path):
    import shutil
    shutil.rmtree(split_dir / "test")
    assert "train/ and test/ folders of class folders come together" in _error(capsys, split_dir)
    write_classes(split_dir / "test", 1)
    shutil.rmtree(split_dir / "test" / "owl")
    write_image(split_dir / "test" / "yak" / "0.png", (8, 8), (0, 0, 0))
    text = _error(capsys, split_dir)
    assert "only in train/: owl; only in test/: yak" in text


def test_too_few_images_for_a_test_split(capsys, tmp_path):
    write_classes(tmp_path / "imgs", 2)
    assert "too small for a test split" in _error(capsys, tmp_path / "imgs")


def test_image_size_and_data_dir_options_are_checked(capsys, tmp_path):
    rc, _, err = cli(capsys, "plan", "--data", "folder", "--quiet")
    assert_one_paragraph_error(rc, err, "--data folder", "give --data-dir DIR")
    rc, _, err = cli(capsys, "plan", "--image-size", "48", "--quiet")
    assert_one_paragraph_error(rc, err, "--image-size resizes the images of --data folder",
                               "synthetic")
    for bad in ("4", "1000"):
        rc, _, err = cli(capsys, "plan", "--data", "folder", "--data-dir", tmp_path,
                         "--image-size", bad, "--quiet")
        assert_one_paragraph_error(rc, err, "--image-size must be a whole number of pixels "
                                   "from 8 to 512")


def test_without_pillow_the_error_says_how_to_install_it(capsys, flat_dir, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "PIL", None)  # `from PIL import ...` raises ImportError
    text = _error(capsys, flat_dir)
    assert "needs Pillow" in text and 'pip install -e ".[folder]"' in text


def test_image_size_is_a_later_field_that_keeps_old_identities():
    """A run written before --image-size existed resumes: its config.json (no image_size) reads
    as None, and the identity hash of a config without --image-size is the one the earlier
    version computed (config.identity_hash as it was, here by hand)."""
    import hashlib
    cfg = TrainConfig(data="folder", data_dir="x")
    old = cfg.to_json()
    del old["image_size"]                               # a config.json written before the field
    for later in ("test_modules", "distributed", "wire_dtype", "dist_timeout_s", "compile"):
        del old[later]                                  # (and before these later ones)
    assert TrainConfig.from_json(old).image_size is None
    for key in ("out", "progress", "keep_cache", "threads", "module_peaks"):
        del old[key]
    for key, earlier in {"lr_schedule": "constant", "warmup_epochs": 0.0,
                         "checkpoint_segments": None}.items():
        if old[key] == earlier:
            del old[key]
    earlier_hash = hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()
    assert cfg.identity_hash() == earlier_hash
    assert TrainConfig(data="folder", data_dir="x", image_size=48).identity_hash() != \
        TrainConfig(data="folder", data_dir="x").identity_hash()


# --- end to end: train, export, predict, resume -----------------------------------------------------

def tiny_folder_config(data_dir, out, **extra) -> TrainConfig:
    settings = dict(model="resnet8", width=0.25, modules=2, epochs=1, batch_size=16, threads=1,
                    progress=False)
    return TrainConfig(data="folder", data_dir=str(data_dir), out=str(out),
                       **{**settings, **extra})


@pytest.mark.slow
def test_train_export_predict_a_folder_run(capsys, tmp_path):
    """A 48 px folder run trains; its export carries the folder names as class names, and
    predict (library and CLI) answers with them; a changed image refuses the rebuild of the
    run's lost data copy on resume."""
    from edge_trgl import export, predict, train
    data = write_classes(tmp_path / "imgs", 8, sizes=((60, 48), (48, 52), (49, 70)))
    summary = train(tiny_folder_config(data, tmp_path / "run"))
    assert summary["run_dir"] == str(tmp_path / "run") and summary["data"] == "folder"
    assert summary["best_module"] in (0, 1) and len(summary["modules"]) == 2
    pytest.importorskip("onnx", reason="export needs onnx (the ort extra)")
    pytest.importorskip("onnxruntime", reason="export needs onnxruntime (the ort extra)")
    report = export(summary["run_dir"])
    desc = json.loads((Path(report["out"]) / "model.json").read_text())
    assert desc["class_names"] == list(CLASSES) and desc["in_shape"] == [3, 48, 48]
    images = [str(data / cls / "000.png") for cls in CLASSES]
    results = predict(report["out"], images, top=3)
    assert [r["file"] for r in results] == images
    assert all(r["class"] in CLASSES and {t["class"] for t in r["top"]} == set(CLASSES)
               for r in results)
    rc, out, err = cli(capsys, "predict", report["out"], *images)
    assert rc == 0, err
    assert [line.split(": ")[1].split(" ")[0] for line in out.splitlines()] == \
        [r["class"] for r in results]
    rc, out, err = cli(capsys, "predict", summary["run_dir"], images[0])  # PyTorch, run dir
    assert rc == 0 and out.split(": ")[1].split(" ")[0] in CLASSES, err
    # the run trains on its own copy of the decoded images (RUN/data); when that copy is lost
    # and must be rebuilt from the folder (as a resume does), one changed image refuses it
    write_image(data / "owl" / "003.bmp", (49, 70), (0, 0, 0))
    import shutil

    from edge_trgl.run import Run
    from edge_trgl.rundata import open_run_data
    shutil.rmtree(Path(summary["run_dir"]) / "data")
    with pytest.raises(UserError, match="fingerprint changed"):
        open_run_data(Run.open(Path(summary["run_dir"])), tiny_folder_config(data, tmp_path / "x"))


@pytest.mark.slow
def test_an_export_of_a_run_with_an_explicit_image_size_evaluates(capsys, tmp_path):
    """model.json records --image-size, so `evaluate` on the export loads the test images at the
    size the model was trained for (not the folder's default size)."""
    pytest.importorskip("onnx", reason="export needs onnx (the ort extra)")
    pytest.importorskip("onnxruntime", reason="export needs onnxruntime (the ort extra)")
    from edge_trgl import export, train
    data = write_classes(tmp_path / "imgs", 8, sizes=((60, 48), (48, 52), (49, 70)))
    summary = train(tiny_folder_config(data, tmp_path / "run", image_size=24))
    report = export(summary["run_dir"])
    desc = json.loads((Path(report["out"]) / "model.json").read_text())
    assert desc["in_shape"] == [3, 24, 24] and desc["dataset"]["image_size"] == 24
    rc, out, err = cli(capsys, "evaluate", report["out"])
    assert rc == 0, err
    assert "%" in out


@pytest.mark.slow
@pytest.mark.parametrize("size", [64, 128])
@pytest.mark.parametrize("model", ["vgg8", "vit2"])
def test_other_model_families_take_larger_images(tmp_path, model, size):
    from edge_trgl import train
    data = write_classes(tmp_path / "imgs", 5, sizes=((size, size + 16), (size + 6, size)))
    summary = train(tiny_folder_config(data, tmp_path / "run", image_size=size, model=model))
    assert summary["best_module"] is not None and summary["best_test_acc"] is not None


@pytest.mark.parametrize("name", ["folder", "synthetic"])
def test_evaluate_streams_the_same_test_images_it_would_load(tmp_path, name):
    """`evaluate` of an exported model reads the test split a chunk at a time (and no train
    images); the images, labels and order are the in-memory loader's, test_fraction included."""
    from edge_trgl.cli.evaluate import StreamedTest, _test_options
    from edge_trgl.data import load_dataset
    if name == "folder":
        data = write_classes(tmp_path / "imgs", 6)
        ds = {"name": "folder", "data_dir": str(data), "seed": 3, "image_size": 24,
              "test_fraction": 1.0}
    else:
        ds = {"name": "synthetic", "seed": 1, "synthetic_train": 50, "synthetic_test": 300,
              "test_fraction": 0.5}
    meta = {"dataset": ds}
    from edge_trgl.data.registry import dataset_entry
    assert dataset_entry(name).stream is not None       # read with its streaming loader
    streamed = StreamedTest(meta, None, None)
    chunks = list(streamed.chunks())
    images = np.concatenate([c[0] for c in chunks])
    labels = np.concatenate([c[1] for c in chunks])
    data, options = _test_options(meta, None, None)
    loaded = load_dataset(data, options.pop("data_dir"), **options)
    np.testing.assert_array_equal(images, loaded.test.images)
    np.testing.assert_array_equal(labels, loaded.test.labels)
    assert streamed.count == len(labels) and streamed.in_shape == tuple(loaded.in_shape)
    assert streamed.num_classes == loaded.num_classes
