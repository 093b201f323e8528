"""arm64 (Raspberry Pi, Jetson) facts that can be checked on x86: the `ort` extra's platform
marker, what `edge-trgl env` and `--backend ort` say where ONNX Runtime's training API cannot
exist, and that tools/arm64_check.sh installs what the README tells a Pi user to install."""

from __future__ import annotations

import importlib.util
import json
import platform
import re
import shlex
import tomllib
from pathlib import Path

import pytest

from edge_trgl.errors import UserError

REPO = Path(__file__).resolve().parent.parent

# Environments for the ort extra's markers: Debian trixie / Raspberry Pi OS (Python 3.13), an
# arm64 board with Python 3.11, the x86 test machines, and platforms that do have wheels.
PI_TRIXIE = {"platform_machine": "aarch64", "sys_platform": "linux", "python_version": "3.13"}
PI_311 = {"platform_machine": "aarch64", "sys_platform": "linux", "python_version": "3.11"}
X86_311 = {"platform_machine": "x86_64", "sys_platform": "linux", "python_version": "3.11"}
X86_313 = {"platform_machine": "x86_64", "sys_platform": "linux", "python_version": "3.13"}
MAC_ARM = {"platform_machine": "arm64", "sys_platform": "darwin", "python_version": "3.12"}


def _ort_requirements():
    markers = pytest.importorskip("packaging.requirements")
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    return [markers.Requirement(r) for r in extras["ort"]]


def test_ort_extra_has_a_marker_that_excludes_linux_arm64():
    reqs = _ort_requirements()
    assert {r.name for r in reqs} == {"onnxruntime-training-cpu", "onnx"}
    for req in reqs:
        assert req.marker is not None, f"{req.name} in the ort extra has no platform marker"
        assert not req.marker.evaluate(PI_TRIXIE)
        assert not req.marker.evaluate(PI_311)
        assert not req.marker.evaluate(X86_313)  # 1.19.2 has no CPython 3.13 wheels
        assert req.marker.evaluate(X86_311)
        assert req.marker.evaluate(MAC_ARM)  # macOS universal2 wheels exist


def test_no_training_build_reasons():
    from edge_trgl.targets.ort import no_training_build
    arm = no_training_build("aarch64", "linux", (3, 11))
    assert "Linux aarch64" in arm and "no Linux arm64 build" in arm and "inference-only" in arm
    assert "Python 3.13" in no_training_build("x86_64", "linux", (3, 13))
    assert no_training_build("x86_64", "linux", (3, 11)) is None
    assert no_training_build("arm64", "darwin", (3, 12)) is None


def _hide_onnxruntime(monkeypatch):
    """As on a Pi: no onnxruntime training build importable (find_spec is what require_ort asks)."""
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        if name.split(".")[0] == "onnxruntime":
            return None
        return real(name, *args, **kwargs)
    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def test_backend_ort_on_arm64_points_to_torch(monkeypatch):
    from edge_trgl.targets.ort import OrtTarget
    _hide_onnxruntime(monkeypatch)
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    with pytest.raises(UserError) as err:
        OrtTarget().check_available(None)
    text = str(err.value)
    assert "cannot train on this machine" in text and "Linux aarch64" in text
    assert "Use --backend torch" in text
    assert "pip install" not in text  # no install hint where nothing can be installed


def test_backend_ort_on_x86_without_the_extra_says_how_to_install(monkeypatch):
    from edge_trgl.targets.ort import OrtTarget
    _hide_onnxruntime(monkeypatch)
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.setattr("edge_trgl.targets.ort.sys.version_info", (3, 11, 0))
    with pytest.raises(UserError, match=r"pip install -e \"\.\[ort\]\""):
        OrtTarget().check_available(None)


def test_train_backend_ort_on_arm64_exits_2(monkeypatch, tmp_path, capsys):
    from edge_trgl.cli.main import main
    _hide_onnxruntime(monkeypatch)
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    out = tmp_path / "run"
    code = main(["train", "--backend", "ort", "--synthetic-train", "40", "--synthetic-test", "20",
                 "--model", "resnet8", "--width", "0.25", "--epochs", "1", "--out", str(out)])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2
    assert "no Linux arm64 build" in err and "--backend torch" in err
    assert not out.exists()  # refused before anything was written


def _env_output(monkeypatch, capsys, *, machine: str, as_json: bool):
    import edge_trgl.envinfo as envinfo
    from edge_trgl.cli.env import run
    real = envinfo.report

    def report():
        info = real()
        info["backends"]["ort"] = False  # as where onnxruntime-training is not installed
        return info
    monkeypatch.setattr(envinfo, "report", report)
    monkeypatch.setattr(platform, "machine", lambda: machine)
    monkeypatch.setattr("edge_trgl.targets.ort.sys.version_info", (3, 11, 0))

    class Args:
        json = as_json
    assert run(Args()) == 0
    return capsys.readouterr().out


def test_env_says_ort_training_has_no_arm64_build(monkeypatch, capsys):
    text = _env_output(monkeypatch, capsys, machine="aarch64", as_json=False)
    line = next(l for l in text.splitlines() if "ONNX Runtime training" in l)
    assert "no Linux arm64 build" in line and "--backend torch trains here" in line
    info = json.loads(_env_output(monkeypatch, capsys, machine="aarch64", as_json=True))
    assert info["ort_training"]["available"] is False
    assert "Linux aarch64" in info["ort_training"]["no_build_reason"]


def test_env_on_x86_without_ort_says_how_to_install(monkeypatch, capsys):
    text = _env_output(monkeypatch, capsys, machine="x86_64", as_json=False)
    line = next(l for l in text.splitlines() if "ONNX Runtime training" in l)
    assert "not installed" in line and ".[ort]" in line and "arm64" not in line


# --- the README's Raspberry Pi install is what tools/arm64_check.sh checks -----------------------

def _readme_pi_block() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("### Install on a Raspberry Pi (arm64)", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.strip() for line in block.splitlines() if line.strip()]


def _script() -> str:
    return (REPO / "tools" / "arm64_check.sh").read_text()


def test_readme_apt_packages_match_the_check_script():
    apt = next(l for l in _readme_pi_block() if l.startswith("sudo apt install"))
    readme_pkgs = {w for w in shlex.split(apt) if w.startswith("python3-")}
    script_pkgs = set(re.search(r'^APT_PACKAGES="([^"]+)"', _script(), re.M).group(1).split())
    assert readme_pkgs == script_pkgs
    assert {"python3-torch", "python3-venv"} <= readme_pkgs
    assert "--no-install-recommends" in apt and "--no-install-recommends" in _script()


def test_readme_venv_and_pip_lines_are_the_scripts():
    block = _readme_pi_block()
    venv = next(l for l in block if l.startswith("python3 -m venv"))
    pip = next(l for l in block if l.startswith("pip install"))
    assert "--system-site-packages" in venv and "--no-deps" in pip
    flat = " ".join(_script().split())
    assert venv.split(" && ")[0] in flat and pip in flat


def test_readme_names_pytorchs_cpu_index_as_untested():
    text = (REPO / "README.md").read_text()
    section = text.split("### Install on a Raspberry Pi (arm64)", 1)[1].split("\n## ", 1)[0]
    assert "https://download.pytorch.org/whl/cpu" in section
    assert "not tested here" in section
