"""Which backend and device a run with a device profile trains on (profiles.py holds the profiles
themselves). A profile names a backend and a device; `apply_profile_target` uses them where the
user chose none (TrainConfig's defaults are config.Unchosen; an explicit --backend / --device, or
`TrainConfig(backend=...)`, wins) and they can train here, and otherwise falls back to torch / the
CPU, recording what it used and why in cfg.extra["profile_target"] (the plan's note:
profiles.target_note). It must run before the target is chosen (targets.get_target reads
cfg.backend / cfg.device): train.train and the API's plan / compare call it first.

Torch-free, like the orchestrator that calls it: ONNX Runtime's availability is read from the
installed files (the ORT target's own check), CUDA's from torch's version file or, for a CUDA
build of torch, a short child process. A module of its own because it asks the targets, and the
targets' memory models read the profiles (profiles.py must not import the targets)."""

from __future__ import annotations

from pathlib import Path

from .profiles import apply_profile, load_profile


def apply_profile_target(cfg) -> None:
    """cfg.backend / cfg.device from cfg.profile (see the module docstring), then the profile's
    other defaults (profiles.apply_profile). Nothing without a profile; calling it again changes
    nothing."""
    if cfg.profile is None:
        return
    if "profile_target" not in cfg.extra:
        cfg.extra["profile_target"] = profile_target(cfg, load_profile(cfg.profile))
    apply_profile(cfg)


def profile_target(cfg, prof: dict) -> dict:
    """{"backend", "device", "note"}: what a run with profile `prof` trains on. The profile's
    backend / device where the user gave none and they can train here; else the user's; else
    (the profile's cannot train here) torch / cpu, with the reason in the note."""
    from .config import chosen
    name = prof["name"]
    want = (str(prof["backend"]), str(prof["device_type"]))
    given = (chosen(cfg.backend), chosen(cfg.device))
    mine = (str(cfg.backend), str(cfg.device))
    first = tuple(m if g else w for m, g, w in zip(mine, given, want))
    overridden = [f"--{opt} {m}" for opt, m, g, w in zip(("backend", "device"), mine, given, want)
                  if g and m != w]
    if overridden:
        says = (f"{', '.join(overridden)} given, which wins over profile {name}'s "
                f"{describe_target(*want)}")
    else:
        says = f"as profile {name} says"
    why = unusable_reason(cfg, *first)
    if why is None:
        return {"backend": first[0], "device": first[1],
                "note": f"training with {describe_target(*first)}, {says}"}
    # what the profile chose cannot train here: fall back, part by part, to the defaults
    candidates = []
    for backend in [first[0]] + ([] if given[0] else ["torch"]):
        for device in [first[1]] + ([] if given[1] else ["cpu"]):
            if (backend, device) != first and (backend, device) not in candidates:
                candidates.append((backend, device))
    for backend, device in candidates:
        if unusable_reason(cfg, backend, device) is None:
            return {"backend": backend, "device": device,
                    "note": f"training with {describe_target(backend, device)} INSTEAD of "
                            f"{describe_target(*first)}, which profile {name} names "
                            + (f"({', '.join(overridden)} given) " if overridden else "")
                            + f"but which cannot train on this machine: {why}"}
    # no fallback trains this configuration either: keep the first choice, which the target's
    # own check then refuses with its own message (before anything is written)
    return {"backend": first[0], "device": first[1],
            "note": f"{describe_target(*first)} ({says}) cannot train on this machine: {why}"}


def describe_target(backend: str, device: str) -> str:
    """"torch on the CPU", "ONNX Runtime (--backend ort) on the CPU", "torch on a CUDA GPU"."""
    what = {"torch": "torch", "ort": "ONNX Runtime (--backend ort)"}.get(backend, backend)
    where = {"cpu": "the CPU", "cuda": "a CUDA GPU"}.get(device, device)
    return f"{what} on {where}"


def unusable_reason(cfg, backend: str, device: str) -> str | None:
    """Why `backend` on `device` cannot train cfg here (a sentence without its full stop), or None.
    Torch-free (this runs in the orchestrator): ONNX Runtime's availability is read from the
    installed files, CUDA's from torch's version file or, for a CUDA build, a short child."""
    import dataclasses

    from .errors import UserError
    from .targets import get_target
    trial = dataclasses.replace(cfg, backend=backend, device=device)
    try:
        target = get_target(trial)
        target.validate(trial)
        if backend == "ort":
            target.check_available(trial, setup=True)
    except UserError as exc:
        return str(exc).strip().rstrip(".")
    if backend == "torch" and device == "cuda":
        return cuda_unavailable_reason()
    return None


def cuda_unavailable_reason() -> str | None:
    """Why torch cannot train on a CUDA device here, or None where it can. Never imports torch in
    this process (unless it is already imported): a CPU-only build says so in torch/version.py,
    and a CUDA build is asked in a fresh child process."""
    import sys

    from .targets.cuda import no_cuda_device
    torch = sys.modules.get("torch")
    if torch is not None:
        if torch.cuda.is_available():
            return None
        return no_cuda_device(torch.__version__, torch.version.cuda)
    import importlib.util
    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return "torch is not installed"
    root = Path(list(spec.submodule_search_locations)[0])
    version, cuda = _torch_version_file(root / "version.py")
    if cuda is None:
        return no_cuda_device(version, None)
    import subprocess
    try:
        proc = subprocess.run([sys.executable, "-c", "import sys, torch; "
                               "sys.exit(0 if torch.cuda.is_available() else 3)"],
                              capture_output=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired):
        return no_cuda_device(version, cuda)
    return None if proc.returncode == 0 else no_cuda_device(version, cuda)


def _torch_version_file(path: Path) -> tuple[str, str | None]:
    """(__version__, cuda) from torch/version.py, read as text: ("?", None) where unreadable."""
    import ast
    found = {"__version__": "?", "cuda": None}
    try:
        tree = ast.parse(path.read_text())
    except (OSError, SyntaxError, ValueError):
        return "?", None
    for node in tree.body:
        targets = (node.targets if isinstance(node, ast.Assign)
                   else [node.target] if isinstance(node, ast.AnnAssign) else [])
        for t in targets:
            if isinstance(t, ast.Name) and t.id in found and node.value is not None:
                try:
                    found[t.id] = ast.literal_eval(node.value)
                except ValueError:
                    pass
    return str(found["__version__"]), found["cuda"]
