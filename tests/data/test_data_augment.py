"""augment_batch (random crop with zero padding + flip) and normalize."""

import numpy as np
import pytest

from edge_trgl.data import augment_batch, normalize


def _distinct_images(b=4, c=3, h=8, w=8):
    # Every pixel value is nonzero and unique within an image, so shifts/flips are identifiable.
    base = (np.arange(c * h * w) % 250 + 1).astype(np.uint8).reshape(c, h, w)
    return np.stack([base] * b)


def _shift(img, dy, dx):
    """Content moved down by dy and right by dx, zero fill."""
    c, h, w = img.shape
    out = np.zeros_like(img)
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[:, yd, xd] = img[:, ys, xs]
    return out


def test_shape_dtype_new_array_and_input_untouched():
    x = _distinct_images(5)
    before = x.copy()
    out = augment_batch(x, np.random.default_rng(0), pad=2, flip=True)
    assert out.shape == x.shape and out.dtype == np.uint8 and out.flags["C_CONTIGUOUS"]
    assert not np.shares_memory(out, x)
    assert np.array_equal(x, before)


def test_flip_only_flips_exactly_half_the_time():
    x = _distinct_images(400, c=2, h=5, w=7)
    out = augment_batch(x, np.random.default_rng(1), pad=0, flip=True)
    same = np.array([np.array_equal(o, i) for o, i in zip(out, x)])
    flipped = np.array([np.array_equal(o, i[:, :, ::-1]) for o, i in zip(out, x)])
    assert np.all(same ^ flipped)  # each image is either untouched or exactly mirrored
    assert 150 < flipped.sum() < 250
    # The mirror is left-right: the first column becomes the last.
    k = int(np.flatnonzero(flipped)[0])
    assert np.array_equal(out[k, :, :, 0], x[k, :, :, -1])


def test_no_flip_no_pad_is_identity():
    x = _distinct_images(6)
    assert np.array_equal(augment_batch(x, np.random.default_rng(2), pad=0, flip=False), x)


def test_crop_is_a_zero_filled_shift_covering_all_offsets():
    pad = 2
    x = _distinct_images(600, c=1, h=6, w=6)
    out = augment_batch(x, np.random.default_rng(3), pad=pad, flip=False)
    seen = set()
    for o, i in zip(out, x):
        matches = [
            (dy, dx)
            for dy in range(-pad, pad + 1)
            for dx in range(-pad, pad + 1)
            if np.array_equal(o, _shift(i, dy, dx))
        ]
        assert len(matches) == 1, "each output must be exactly one zero-filled shift"
        seen.add(matches[0])
    assert len(seen) == (2 * pad + 1) ** 2  # every offset in [-pad, pad]^2 occurs
    # A shifted image has a zero border on the side it moved away from.
    k = next(n for n, o in enumerate(out) if np.array_equal(o, _shift(x[n], pad, pad)))
    assert np.all(out[k, :, :pad, :] == 0) and np.all(out[k, :, :, :pad] == 0)
    assert np.all(out[k, :, pad:, pad:] > 0)


def test_same_rng_state_gives_same_augmentation():
    x = np.random.default_rng(9).integers(0, 256, size=(16, 3, 32, 32), dtype=np.uint8)
    a = augment_batch(x, np.random.default_rng(42))
    b = augment_batch(x, np.random.default_rng(42))
    c = augment_batch(x, np.random.default_rng(43))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_augment_rejects_bad_shapes():
    with pytest.raises(ValueError):
        augment_batch(np.zeros((3, 8, 8), np.uint8), np.random.default_rng(0))
    with pytest.raises(ValueError):
        augment_batch(np.zeros((1, 3, 8, 8), np.uint8), np.random.default_rng(0), pad=-1)


def test_normalize_matches_formula_per_channel():
    x = np.random.default_rng(0).integers(0, 256, size=(4, 3, 5, 5), dtype=np.uint8)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    out = normalize(x, mean, std)
    assert out.dtype == np.float32 and out.shape == x.shape
    ref = (x / 255.0 - np.array(mean)[:, None, None]) / np.array(std)[:, None, None]
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5)
    # Extremes: 0 -> -mean/std, 255 -> (1-mean)/std in each channel.
    ext = normalize(np.array([[[[0]], [[255]], [[0]]]], np.uint8), mean, std)
    np.testing.assert_allclose(
        ext.reshape(-1), [-mean[0] / std[0], (1 - mean[1]) / std[1], -mean[2] / std[2]], atol=1e-5
    )


def test_normalize_single_channel_scalar_stats_and_errors():
    x = np.array([[[[0, 255]]]], np.uint8)
    np.testing.assert_allclose(normalize(x, 0.1307, 0.3081).reshape(-1), [-0.1307 / 0.3081, (1 - 0.1307) / 0.3081], atol=1e-5)
    with pytest.raises(ValueError):
        normalize(np.zeros((1, 3, 2, 2), np.uint8), (0.5, 0.5), (0.2, 0.2))
    with pytest.raises(ValueError):
        normalize(np.zeros((1, 1, 2, 2), np.uint8), 0.5, 0.0)
