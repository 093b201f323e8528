from pathlib import Path

import pytest

from edge_trgl.errors import UserError
from edge_trgl.profiles import REQUIRED, available, load_profile

PROFILE_FILES = sorted((Path(__file__).resolve().parents[1] / "profiles").glob("*.toml"))


def test_required_profiles_exist():
    names = set(available())
    for needed in ("rpi4-2gb", "rpi4-4gb", "rpi5-8gb", "jetson-nano-4gb", "jetson-orin-nano-8gb",
                   "laptop-8gb"):
        assert needed in names


@pytest.mark.parametrize("path", PROFILE_FILES, ids=lambda p: p.stem)
def test_every_profile_loads_and_is_self_describing(path):
    prof = load_profile(path.stem)
    for key in REQUIRED:
        assert key in prof
    assert 0 < prof["budget_bytes"] < prof["ram_bytes"]
    assert prof["backend"] in ("torch", "ort") and prof["device_type"] in ("cpu", "cuda")
    assert f"--profile {path.stem}" in prof["command"]
    assert prof["name"] == path.stem


def test_unknown_profile_lists_choices():
    with pytest.raises(UserError, match="rpi4-2gb"):
        load_profile("toaster")


# --- a profile's backend / device (profile_target.py) ---------------------------------------------

import importlib.util  # noqa: E402
import json  # noqa: E402

from edge_trgl import profile_target  # noqa: E402
from edge_trgl.config import TrainConfig, chosen  # noqa: E402
from edge_trgl.profile_target import apply_profile_target  # noqa: E402


def write_profile(folder: Path, name: str, backend: str, device: str) -> Path:
    path = folder / f"{name}.toml"
    path.write_text(f'name = "{name}"\ndevice = "a test board"\nram = "2GB"\nos_reserve = "600MB"\n'
                    f'backend = "{backend}"\ndevice_type = "{device}"\nthreads = 2\n'
                    f'command = "edge-trgl train --profile {name}"\n')
    return path


@pytest.fixture()
def ort_profile(tmp_path, monkeypatch):
    """A profile that names --backend ort, found by name (EDGE_TRGL_PROFILES)."""
    write_profile(tmp_path, "ortboard", "ort", "cpu")
    monkeypatch.setenv("EDGE_TRGL_PROFILES", str(tmp_path))
    return "ortboard"


def ort_installed(monkeypatch, installed: bool) -> None:
    """ONNX Runtime's training build present or absent, as require_ort looks for it."""
    monkeypatch.setattr("edge_trgl.targets.ort.no_training_build", lambda *a, **k: None)
    from edge_trgl.backends.ort_common import require_ort
    monkeypatch.setattr("edge_trgl.targets.ort.require_ort",
                        (lambda need_onnx: None) if installed else require_ort)
    if installed:
        return
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxruntime" else real(name, *a))


def test_defaults_are_unchosen_and_given_values_are_chosen():
    from edge_trgl.cli.common import config_from_args
    from edge_trgl.cli.main import build_parser
    parser = build_parser()
    default = config_from_args(parser.parse_args(["train"]))
    given = config_from_args(parser.parse_args(["train", "--backend", "torch", "--device", "cpu"]))
    assert default.backend == "torch" and not chosen(default.backend) and not chosen(default.device)
    assert chosen(given.backend) and chosen(given.device)
    assert chosen(TrainConfig(backend="torch").backend) and not chosen(TrainConfig().device)
    # read back from a run's config.json: what was saved is what the run used
    saved = json.loads(json.dumps(TrainConfig().to_json()))
    assert saved["backend"] == "torch" and chosen(TrainConfig.from_json(saved).backend)


def test_a_profiles_backend_is_used_where_it_can_train(ort_profile, monkeypatch):
    ort_installed(monkeypatch, True)
    cfg = TrainConfig(profile=ort_profile)
    apply_profile_target(cfg)
    assert (cfg.backend, cfg.device) == ("ort", "cpu") and cfg.threads == 2
    assert cfg.extra["profile_target"]["note"] == (
        "training with ONNX Runtime (--backend ort) on the CPU, as profile ortboard says")
    apply_profile_target(cfg)  # again: nothing changes
    assert (cfg.backend, cfg.device) == ("ort", "cpu")


def test_without_the_ort_extra_the_plan_says_why_and_what_it_used(ort_profile, monkeypatch):
    ort_installed(monkeypatch, False)
    cfg = TrainConfig(profile=ort_profile)
    apply_profile_target(cfg)
    assert (cfg.backend, cfg.device) == ("torch", "cpu")
    note = cfg.extra["profile_target"]["note"]
    assert note.startswith("training with torch on the CPU INSTEAD of ONNX Runtime (--backend ort) "
                           "on the CPU, which profile ortboard names but which cannot train on "
                           "this machine: ")
    assert "onnxruntime is not installed" in note
    # the note is the plan's: resolve_budget hands it to the planner with the budget's own
    from edge_trgl.memory.budgeted import resolve_budget
    from edge_trgl.memory.model import MemoryModel
    budget, notes = resolve_budget(cfg, MemoryModel())
    assert budget == 1_400_000_000 and notes[-1] == note
    assert notes[0].startswith("budget from profile ortboard")


def test_an_explicit_backend_wins_over_the_profile(ort_profile, monkeypatch):
    from edge_trgl.cli.common import config_from_args
    from edge_trgl.cli.main import build_parser
    ort_installed(monkeypatch, True)
    cfg = config_from_args(build_parser().parse_args(["train", "--profile", ort_profile,
                                                      "--backend", "torch"]))
    apply_profile_target(cfg)
    assert (cfg.backend, cfg.device) == ("torch", "cpu")
    assert cfg.extra["profile_target"]["note"] == (
        "training with torch on the CPU, --backend torch given, which wins over profile "
        "ortboard's ONNX Runtime (--backend ort) on the CPU")


def test_a_cuda_profile_without_a_gpu_trains_on_the_cpu_and_says_so(monkeypatch):
    monkeypatch.setattr(profile_target, "cuda_unavailable_reason", lambda: "no GPU in this test")
    cfg = TrainConfig(profile="jetson-nano-4gb")
    apply_profile_target(cfg)
    assert (cfg.backend, cfg.device) == ("torch", "cpu")
    assert cfg.extra["profile_target"]["note"].endswith("cannot train on this machine: no GPU "
                                                        "in this test")
    monkeypatch.setattr(profile_target, "cuda_unavailable_reason", lambda: None)
    cfg = TrainConfig(profile="jetson-nano-4gb")
    apply_profile_target(cfg)
    assert (cfg.backend, cfg.device) == ("torch", "cuda")


def test_cuda_is_read_from_torchs_version_file_without_importing_torch(tmp_path):
    cpu = tmp_path / "cpu.py"
    cpu.write_text("from typing import Optional\n__version__ = '2.13.0+cpu'\n"
                   "cuda: Optional[str] = None\n")
    gpu = tmp_path / "gpu.py"
    gpu.write_text("__version__ = '2.5.0'\ncuda = '12.4'\n")
    assert profile_target._torch_version_file(cpu) == ("2.13.0+cpu", None)
    assert profile_target._torch_version_file(gpu) == ("2.5.0", "12.4")
    assert profile_target._torch_version_file(tmp_path / "absent.py") == ("?", None)


def test_train_chooses_the_target_after_the_profile(ort_profile, monkeypatch):
    """train() applies the profile before it picks the target (which reads backend / device)."""
    import edge_trgl.driver
    from edge_trgl.train import train
    ort_installed(monkeypatch, True)
    seen = {}

    def fake_run_command(cfg, target, **kw):
        seen["target"] = target.name
        return {}
    monkeypatch.setattr(edge_trgl.driver, "run_command", fake_run_command)
    train(TrainConfig(profile=ort_profile))
    assert seen["target"] == "ort"
    ort_installed(monkeypatch, False)
    train(TrainConfig(profile=ort_profile))
    assert seen["target"] == "cpu"
