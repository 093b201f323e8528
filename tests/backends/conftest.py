"""Shared set-up for the ONNX Runtime backend tests: build one small module's artifacts once per
test session (building takes a few seconds). `ort_available` (skip cleanly without the [ort]
extra) is in tests/conftest.py."""

from __future__ import annotations

import pytest

# A small but complete module: ResNet-8 at width 0.5 on 16x16 inputs, blocks 0..1 (the stem with
# BatchNorm and a BasicBlock with a residual energy) + the default conv head (3x3 conv, 2x2
# average pool, BatchNorm1d, Linear): every kind of layer the backend has to handle.
MODEL, WIDTH, IN_SHAPE, CLASSES, LO, HI = "resnet8", 0.5, (3, 16, 16), 10, 0, 2


def small_config(**overrides):
    from edge_trgl.config import TrainConfig
    cfg = TrainConfig(model=MODEL, width=WIDTH, lr=0.05, momentum=0.9, weight_decay=2e-4,
                      label_smoothing=0.1)
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


@pytest.fixture(scope="session")
def small_module(ort_available, tmp_path_factory):
    """(cfg, artifact dir, meta) for blocks LO..HI-1 of the small model."""
    from edge_trgl.backends.ort_artifacts import build_artifacts
    cfg = small_config()
    out = tmp_path_factory.mktemp("ort") / "module"
    meta = build_artifacts(cfg, IN_SHAPE, CLASSES, LO, HI, out)
    return cfg, out, meta
