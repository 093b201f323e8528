"""What this machine offers: backends, devices, versions, optional extras."""

from __future__ import annotations

import importlib.util
import os
import platform


def dist_version(dist: str) -> str | None:
    try:
        from importlib.metadata import version
        return version(dist)
    except Exception:
        return None


def bf16_supported(torch) -> bool:
    """Native bfloat16 (compute capability >= 8.0); emulated bf16 is no faster than fp32."""
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # torch before the including_emulation argument
        return bool(torch.cuda.is_bf16_supported())


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
            "ort": dist_version("onnxruntime-training-cpu") is not None or dist_version("onnxruntime-training") is not None,
        },
        "cuda": None,
        "extras": {
            "ort (onnxruntime-training-cpu==1.19.2, onnx==1.17.0)": {
                "onnxruntime-training-cpu": dist_version("onnxruntime-training-cpu"),
                "onnx": dist_version("onnx")},
            "plot (matplotlib)": {"matplotlib": dist_version("matplotlib")},
            "torchvision (optional, never required)": {"torchvision": dist_version("torchvision"),
                                                       "importable": torchvision_usable()},
        },
    }
    info["devices"] = ["cpu"]
    # What this torch was built for, even without a GPU: a CPU wheel cannot use one at all.
    info["torch_cuda_build"] = torch.version.cuda
    if cuda:
        devices = []
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            devices.append({"index": index, "device": props.name, "total_bytes": props.total_memory,
                            "capability": f"{props.major}.{props.minor}",
                            "integrated": bool(getattr(props, "is_integrated", False))})
            info["devices"].append(f"cuda:{index}")
        first = devices[0]
        info["cuda"] = {**first, "bf16": bf16_supported(torch), "cuda_version": torch.version.cuda,
                        "cudnn": torch.backends.cudnn.version(), "devices": devices,
                        "memory_accounting": ("unified: the budget covers host RSS + CUDA memory"
                                              if first["integrated"] else
                                              "discrete: the budget covers GPU memory")}
    else:
        info["cuda_unavailable"] = ("CPU-only PyTorch build" if torch.version.cuda is None else
                                    f"PyTorch built for CUDA {torch.version.cuda}, but no CUDA "
                                    f"device is visible")
    return info
