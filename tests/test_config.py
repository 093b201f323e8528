import pytest

from edge_trgl.config import TrainConfig
from edge_trgl.errors import UserError
from edge_trgl.memory.plan import resolve_splits
from edge_trgl.targets import get_target, validate


@pytest.mark.parametrize("change,match", [
    ({"scheme": "magic"}, "--scheme"), ({"tau": -1.0}, "--tau"), ({"epochs": 0}, "--epochs"),
    ({"module_size": 2, "modules": 3}, "only one"), ({"backend": "ort", "scheme": "e2e"}, "ort"),
])
def test_bad_config_is_a_user_error(change, match):
    with pytest.raises(UserError, match=match):
        validate(TrainConfig(**change))  # the options' own rules, then the target's


def test_target_rules_belong_to_the_target():
    """TrainConfig checks what holds on every target; the target adds its own rules."""
    cfg = TrainConfig(backend="ort", scheme="e2e")
    assert cfg.validate() is cfg
    with pytest.raises(UserError, match="sequential and multilap"):
        get_target(cfg).validate(cfg)
    with pytest.raises(UserError, match="CPU only"):
        validate(TrainConfig(backend="ort", device="cuda"))
    assert get_target(TrainConfig(device="cuda", amp="fp16")).name == "cuda"
    validate(TrainConfig(device="cuda", amp="fp16"))  # mixed precision is the CUDA target's
    with pytest.raises(UserError, match="--amp"):
        validate(TrainConfig(amp="fp16"))


def test_splits_from_module_size_modules_and_points():
    assert resolve_splits(10, TrainConfig(module_size=3)) == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert resolve_splits(10, TrainConfig(modules=4)) == [(0, 3), (3, 6), (6, 8), (8, 10)]
    assert resolve_splits(10, TrainConfig(splits=[2, 7])) == [(0, 2), (2, 7), (7, 10)]
    with pytest.raises(UserError, match="--splits"):
        resolve_splits(10, TrainConfig(splits=[7, 2]))
    with pytest.raises(UserError, match="more than"):
        resolve_splits(10, TrainConfig(modules=11))


def test_identity_hash_ignores_output_location():
    a, b = TrainConfig(out="x"), TrainConfig(out="y")
    assert a.identity_hash() == b.identity_hash()
    assert a.identity_hash() != TrainConfig(tau=2.0).identity_hash()
