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
