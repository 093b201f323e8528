"""What this machine offers: backends, devices, versions, optional extras."""

from __future__ import annotations

import importlib.util
import os
import platform


def _version(dist: str) -> str | None:
    try:
        from importlib.metadata import version
        return version(dist)
    except Exception:
        return None


def torchvision_usable() -> bool:
    """torchvision imports only where its wheel matches torch (not next to the CPU wheel here)."""
    if importlib.util.find_spec("torchvision") is None:
        return False
    try:
        import torchvision  # noqa: F401
        return True
    except Exception:
        return False


def report() -> dict:
    import torch
    cuda = torch.cuda.is_available()
    info = {
        "python": platform.python_version(), "platform": platform.platform(),
        "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "backends": {
            "torch-cpu": True,
            "torch-cuda": cuda,
            "ort": _version("onnxruntime-training-cpu") is not None or _version("onnxruntime-training") is not None,
        },
        "cuda": None,
        "extras": {
            "ort (onnxruntime-training-cpu==1.19.2, onnx==1.17.0)": {
                "onnxruntime-training-cpu": _version("onnxruntime-training-cpu"),
                "onnx": _version("onnx")},
            "plot (matplotlib)": {"matplotlib": _version("matplotlib")},
            "torchvision (optional, never required)": {"torchvision": _version("torchvision"),
                                                       "importable": torchvision_usable()},
        },
    }
    if cuda:
        props = torch.cuda.get_device_properties(0)
        info["cuda"] = {"device": props.name, "total_bytes": props.total_memory,
                        "capability": f"{props.major}.{props.minor}",
                        "bf16": torch.cuda.is_bf16_supported(), "cuda_version": torch.version.cuda}
    return info
