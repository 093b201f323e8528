"""`edge-trgl env`: which backends, devices and optional extras this machine has."""

from __future__ import annotations

import json

HELP = "report backends, devices, versions and installed extras"


def add_parser(sub) -> None:
    p = sub.add_parser("env", help=HELP, description=HELP, allow_abbrev=False)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def ort_training_status(info: dict) -> dict:
    """Whether ONNX Runtime's training API (--backend ort) is here, and if not, why: on Linux
    arm64 (Raspberry Pi, Jetson) no build of it exists, which "install the extra" would hide."""
    from ..envinfo import dist_version
    from ..targets.ort import no_training_build
    if info["backends"].get("ort"):
        return {"available": True, "note": None}
    reason = no_training_build()
    inference = dist_version("onnxruntime")
    if reason is not None:
        note = f"not available: {reason}; --backend torch trains here"
    else:
        note = ("not installed: `pip install -e \".[ort]\"` installs onnxruntime-training-cpu==1.19.2 "
                "and onnx==1.17.0")
    if inference:
        note += (f" (onnxruntime {inference} is installed: inference only, enough for export, "
                 f"evaluate and predict)")
    return {"available": False, "no_build_reason": reason, "onnxruntime_inference": inference,
            "note": note}


def probe_words(probe: dict | None) -> str:
    """What the check that compiled code runs on this machine found (compiled.py), on the CPU."""
    if probe is None:
        return "its code not yet tried here (the first --compile run checks it)"
    if probe.get("ok"):
        return "its code runs here (checked)"
    return f"its code crashed here ({probe['signal_name']}): --compile is refused"


def run(args) -> int:
    from ..envinfo import report
    info = report()
    info["ort_training"] = ort_training_status(info)
    from ..compiled import cached_probe, compiler_found
    info["compile"] = {"c_compiler": compiler_found(), "probe": cached_probe("cpu")}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"python {info['python']} on {info['platform']} ({info['cpu_count']} CPUs)")
    print(f"torch {info['torch']} ({info['torch_threads']} threads)")
    for name, ok in info["backends"].items():
        print(f"  backend {name:<10} {'available' if ok else 'not available'}")
    if info["ort_training"]["note"]:
        print(f"  ONNX Runtime training (--backend ort): {info['ort_training']['note']}")
    print(f"  devices: {', '.join(info['devices'])}")
    cc, probe = info["compile"]["c_compiler"], info["compile"]["probe"]
    print(f"  --compile (torch.compile): {'C compiler ' + cc if cc else 'not available: no C/C++ compiler on PATH'}"
          f"{'; ' + probe_words(probe) if cc else ''}")
    if info["cuda"]:
        c = info["cuda"]
        print(f"  CUDA {c['cuda_version']}, cuDNN {c['cudnn']}, bf16 (native) {c['bf16']}")
        for d in c["devices"]:
            print(f"  cuda:{d['index']}: {d['device']}, {d['total_bytes'] / 1e9:.1f} GB, compute "
                  f"capability {d['capability']}{', integrated (unified memory)' if d['integrated'] else ''}")
        print(f"  memory accounting with --device cuda: {c['memory_accounting']}")
    else:
        print(f"  CUDA: not available ({info['cuda_unavailable']})")
    for extra, pkgs in info["extras"].items():
        desc = ", ".join(f"{k}={v}" for k, v in pkgs.items())
        print(f"  extra {extra}: {desc}")
    return 0
