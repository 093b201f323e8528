"""Training backends. Each implements the small `Backend` protocol of base.py."""

from __future__ import annotations


def get_backend(cfg):
    if cfg.backend == "ort":
        from .ort_backend import OrtBackend
        return OrtBackend(cfg)
    from .torch_backend import TorchBackend
    return TorchBackend(cfg)
