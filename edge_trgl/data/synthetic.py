"""A built-in, procedurally generated 10-class image dataset (3x32x32 uint8 RGB).

Every image shows one object on a cluttered background. A class is a combination of four
attributes of the object, and classes deliberately share attributes in pairs, so that no single
cue separates them:

* shape: disc, (randomly rotated) square, or ring;
* texture: a two-tone sinusoidal grating at one of four orientations (0/45/90/135 degrees,
  jittered by +-12 degrees) with a random phase;
* texture frequency: coarse (~8 px period) or fine (~4 px period), scaled with the object;
* colour palette: warm, cool or green/purple, with strong per-image colour jitter.

Nuisances: translation (+-6 px), scale (0.75-1.25), grating contrast, a smooth random colour
background carrying its own grating of random orientation and frequency, two background blobs, an
occluding blob in 30% of the images, global brightness/contrast jitter and Gaussian pixel noise.

The random phase and translation make the texture cues nearly invisible to a linear classifier on
raw pixels (which mostly reads colour and coarse layout), whereas a small CNN picks them up within
a few epochs.

Generation is vectorised numpy, deterministic in the seed, and image ``i`` of a split depends only
on ``(seed, split, i)``: asking for more images extends a split without changing its prefix.
"""

from __future__ import annotations

import numpy as np

from edge_trgl.data.arrays import ArraySet, per_channel_stats
from edge_trgl.data.registry import RawData
from edge_trgl.errors import UserError

__all__ = ["make_synthetic", "synthetic_raw", "synthetic_stream", "SYNTHETIC_CLASS_NAMES", "SYNTHETIC_NUM_CLASSES",
           "SYNTHETIC_SHAPE"]

SYNTHETIC_NUM_CLASSES = 10
SYNTHETIC_SHAPE = (3, 32, 32)

_SIZE = 32
_CHUNK = 1000  # images generated per RNG stream; fixed so that image i depends only on i
_SPLIT_TRAIN, _SPLIT_TEST = 0, 1

_DISC, _SQUARE, _RING = 0, 1, 2
_COARSE, _FINE = 0, 1
_WARM, _COOL, _GREEN = 0, 1, 2

# (shape, orientation in degrees, frequency, palette) per class.
_CLASSES = (
    (_DISC, 0, _COARSE, _WARM),
    (_DISC, 90, _COARSE, _WARM),  # differs from 0 only by orientation
    (_SQUARE, 0, _FINE, _COOL),
    (_SQUARE, 45, _FINE, _COOL),  # differs from 2 only by orientation
    (_RING, 135, _COARSE, _GREEN),
    (_RING, 45, _COARSE, _WARM),  # shares palette with 0/1/7, orientation with 3/6
    (_DISC, 45, _FINE, _GREEN),
    (_SQUARE, 135, _COARSE, _WARM),  # shares orientation with 4, palette with 0/1/5
    (_RING, 90, _FINE, _COOL),
    (_SQUARE, 90, _COARSE, _GREEN),  # shares orientation with 1/8, shape with 2/3/7
)
_SHAPE_NAMES = ("disc", "square", "ring")
_FREQ_NAMES = ("coarse", "fine")
_PALETTE_NAMES = ("warm", "cool", "greenpurple")
SYNTHETIC_CLASS_NAMES = [
    f"{_SHAPE_NAMES[s]}-{o}deg-{_FREQ_NAMES[f]}-{_PALETTE_NAMES[p]}" for s, o, f, p in _CLASSES
]

_FREQS = np.array([0.125, 0.25], dtype=np.float32)  # cycles per pixel at scale 1
_PALETTES = np.array(
    [
        [[0.85, 0.35, 0.20], [0.95, 0.80, 0.30]],
        [[0.20, 0.40, 0.85], [0.30, 0.80, 0.80]],
        [[0.30, 0.75, 0.30], [0.60, 0.30, 0.70]],
    ],
    dtype=np.float32,
)  # (palette, tone, rgb)
_TABLE = np.array(_CLASSES, dtype=np.int64)  # (10, 4)

_COORD = np.arange(_SIZE, dtype=np.float32) - (_SIZE - 1) / 2.0  # pixel centres, centred at 0


def _upsample_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) bilinear interpolation weights (align_corners=False, edge-clamped)."""
    t = (np.arange(n_out, dtype=np.float64) + 0.5) * n_in / n_out - 0.5
    t = np.clip(t, 0, n_in - 1)
    lo = np.floor(t).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    w_hi = t - lo
    m = np.zeros((n_out, n_in), dtype=np.float64)
    m[np.arange(n_out), lo] += 1.0 - w_hi
    m[np.arange(n_out), hi] += w_hi
    return m.astype(np.float32)


_UP4 = _upsample_matrix(4, _SIZE)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _gauss_blob(cy: np.ndarray, cx: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """(n, H, W) Gaussian bumps of height 1 (separable, so cheap)."""
    gy = np.exp(-0.5 * ((_COORD[None, :] - cy[:, None]) / sigma[:, None]) ** 2)
    gx = np.exp(-0.5 * ((_COORD[None, :] - cx[:, None]) / sigma[:, None]) ** 2)
    return gy[:, :, None] * gx[:, None, :]


def _render(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Render one chunk of images for ``labels``; returns uint8 (n, 3, 32, 32)."""
    n = labels.shape[0]
    f32 = np.float32
    u = lambda lo, hi, size=n: rng.uniform(lo, hi, size=size).astype(f32)  # noqa: E731

    shape_id, orient_deg, freq_id, palette_id = (_TABLE[labels, k] for k in range(4))

    # ---- background: smooth colour field + grating of random orientation + two blobs ----
    grid = u(0.15, 0.85, (n, 3, 4, 4))
    bg = np.einsum("hi,ncij,wj->nchw", _UP4, grid, _UP4, optimize=True)
    yy = _COORD[None, :, None]
    xx = _COORD[None, None, :]
    bth = u(0.0, np.pi)
    bfreq = u(0.06, 0.3)
    bphase = u(0.0, 2 * np.pi)
    bamp = u(0.05, 0.2)
    bgr = np.cos(
        2 * np.pi * bfreq[:, None, None]
        * (xx * np.cos(bth)[:, None, None] + yy * np.sin(bth)[:, None, None])
        + bphase[:, None, None]
    )
    bg += (bamp[:, None, None] * bgr)[:, None]
    for _ in range(2):
        blob = _gauss_blob(u(-16, 16), u(-16, 16), u(2.0, 5.0))
        alpha = (u(0.5, 0.9)[:, None, None] * blob)[:, None]
        col = u(0.0, 1.0, (n, 3))[:, :, None, None]
        bg = bg * (1 - alpha) + col * alpha

    # ---- object geometry ----
    scale = u(0.65, 1.2)
    cy = u(-6.0, 6.0)
    cx = u(-6.0, 6.0)
    dy = (yy - cy[:, None, None]) / scale[:, None, None]  # (n, H, 1)
    dx = (xx - cx[:, None, None]) / scale[:, None, None]  # (n, 1, W)
    radius = 9.0
    r = np.sqrt(dy * dy + dx * dx)
    rot = u(0.0, np.pi / 2)
    cr, sr = np.cos(rot)[:, None, None], np.sin(rot)[:, None, None]
    cheb = np.maximum(np.abs(dx * cr + dy * sr), np.abs(-dx * sr + dy * cr))
    edge = 0.5 / scale[:, None, None]
    disc = _sigmoid((radius - r) / edge)
    square = _sigmoid((0.85 * radius - cheb) / edge)
    ring = disc * _sigmoid((r - 0.55 * radius) / edge)
    mask = np.where(
        (shape_id == _DISC)[:, None, None],
        disc,
        np.where((shape_id == _SQUARE)[:, None, None], square, ring),
    ).astype(f32)

    # ---- object texture: oriented two-tone grating in the class palette ----
    theta = np.deg2rad(orient_deg.astype(f32)) + np.deg2rad(u(-20.0, 20.0))
    freq = _FREQS[freq_id]
    phase = u(0.0, 2 * np.pi)
    g = np.cos(
        2 * np.pi * freq[:, None, None]
        * (dx * np.cos(theta)[:, None, None] + dy * np.sin(theta)[:, None, None])
        + phase[:, None, None]
    )
    contrast = u(0.3, 1.0)
    t = 0.5 + 0.5 * contrast[:, None, None] * g  # (n, H, W) in [0, 1]
    tones = _PALETTES[palette_id] + rng.normal(0.0, 0.12, size=(n, 2, 3)).astype(f32)
    fg = (
        tones[:, 0, :, None, None] * t[:, None]
        + tones[:, 1, :, None, None] * (1 - t[:, None])
    )
    m = mask[:, None]
    img = bg * (1 - m) + fg * m

    # ---- occluder on top in 30% of images ----
    occ = rng.random(n) < 0.5
    blob = _gauss_blob(u(-12, 12), u(-12, 12), u(2.0, 3.5))
    alpha = ((occ * u(0.6, 1.0))[:, None, None] * blob)[:, None]
    col = u(0.0, 1.0, (n, 3))[:, :, None, None]
    img = img * (1 - alpha) + col * alpha

    # ---- global photometric jitter and pixel noise ----
    gain = u(0.7, 1.2)[:, None, None, None]
    bias = u(-0.1, 0.1)[:, None, None, None]
    img = (img - 0.5) * gain + 0.5 + bias
    img += rng.normal(0.0, 0.08, size=img.shape).astype(f32)
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def _chunk_labels(seed: int, split: int, chunk: int) -> tuple[np.ndarray, np.random.Generator]:
    """A chunk's labels (its generator's first draw) and the generator, ready to render it."""
    rng = np.random.default_rng([seed, split, chunk])
    return rng.permutation(np.arange(_CHUNK) % SYNTHETIC_NUM_CLASSES), rng


def _split_labels(seed: int, split: int, n: int) -> np.ndarray:
    """The labels of the first n images of a split, without rendering any image."""
    return np.concatenate([_chunk_labels(seed, split, c)[0] for c in range(-(-n // _CHUNK))]
                          )[:n].astype(np.int64)


def _split_chunks(seed: int, split: int, n: int):
    """(images, labels) of a split, _CHUNK images at a time (one chunk's float work at once)."""
    for start in range(0, n, _CHUNK):
        stop = min(start + _CHUNK, n)
        # Always render a full chunk (and keep its prefix) so that image i never depends on n.
        chunk_labels, rng = _chunk_labels(seed, split, start // _CHUNK)
        yield _render(chunk_labels, rng)[: stop - start], chunk_labels[: stop - start]


def _make_split(seed: int, split: int, n: int) -> ArraySet:
    images = np.empty((n, *SYNTHETIC_SHAPE), dtype=np.uint8)
    labels = np.empty((n,), dtype=np.int64)
    for start, (chunk, chunk_labels) in zip(range(0, n, _CHUNK), _split_chunks(seed, split, n)):
        images[start:start + len(chunk)] = chunk
        labels[start:start + len(chunk)] = chunk_labels
    return ArraySet(images=images, labels=labels)


def _check_args(seed, n_train, n_test) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UserError(
            f"The synthetic dataset seed must be a non-negative integer, got {seed!r}. "
            "Pass a seed such as 0 (e.g. --seed 0)."
        )
    for what, n in (("n_train", n_train), ("n_test", n_test)):
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise UserError(
                f"The synthetic dataset size {what} must be a positive integer, got {n!r}. "
                "Ask for at least one image (the defaults are 4000 train and 1000 test images)."
            )


def make_synthetic(seed: int, n_train: int = 4000, n_test: int = 1000) -> tuple[ArraySet, ArraySet]:
    """Generate the built-in dataset: ``(train, test)`` ArraySets of 3x32x32 uint8 images.

    Deterministic: the same ``seed`` gives byte-identical arrays. Train and test come from
    independent random streams. Each full block of 1000 images holds exactly 100 per class.
    """
    _check_args(seed, n_train, n_test)
    seed = int(seed)
    return _make_split(seed, _SPLIT_TRAIN, int(n_train)), _make_split(seed, _SPLIT_TEST, int(n_test))


def synthetic_raw(data_dir=None, *, seed: int = 0, synthetic_train: int = 4000,
                  synthetic_test: int = 1000, **_) -> RawData:
    """The registry's loader (data_dir is not used): the generated sets, with the train set's
    own per-channel statistics."""
    train, test = make_synthetic(seed, n_train=synthetic_train, n_test=synthetic_test)
    mean, std = per_channel_stats(train.images)
    return RawData(train, test, list(SYNTHETIC_CLASS_NAMES), mean, std, hflip=True)


def synthetic_stream(data_dir=None, *, seed: int = 0, synthetic_train: int = 4000,
                     synthetic_test: int = 1000, **_):
    """The registry's streaming loader: labels at once (each chunk's first draw), images
    rendered a chunk of 1000 at a time while converting; mean/std measured on the train images
    as they stream past (the same figures as synthetic_raw's)."""
    from .stream import RawStream
    _check_args(seed, synthetic_train, synthetic_test)
    sizes = {_SPLIT_TRAIN: int(synthetic_train), _SPLIT_TEST: int(synthetic_test)}

    def chunks(split: str):
        which = _SPLIT_TEST if split == "test" else _SPLIT_TRAIN
        return _split_chunks(int(seed), which, sizes[which])
    return RawStream(_split_labels(int(seed), _SPLIT_TRAIN, sizes[_SPLIT_TRAIN]),
                     _split_labels(int(seed), _SPLIT_TEST, sizes[_SPLIT_TEST]), SYNTHETIC_SHAPE,
                     list(SYNTHETIC_CLASS_NAMES), chunks, hflip=True)
