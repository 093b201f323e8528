"""The torch-free trainer process and the pieces it runs: its optimizers follow torch's update
rules, and a real trainer process never has torch in sys.modules."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")


def _params(seed):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(np.float32) for shape in ((4, 3), (5,), (2, 2, 3))]


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_numpy_optimizers_follow_torch(ort_available, name):
    from edge_trgl.backends.ort_worker import NumpyAdamW, NumpySGD
    params = _params(0)
    tparams = [torch.tensor(p.copy(), requires_grad=True) for p in params]
    if name == "sgd":
        ours = NumpySGD(lr=0.05, momentum=0.9, weight_decay=2e-4, count=len(params))
        theirs = torch.optim.SGD(tparams, lr=0.05, momentum=0.9, weight_decay=2e-4)
    else:
        ours = NumpyAdamW(lr=1e-2, weight_decay=2e-4, count=len(params))
        theirs = torch.optim.AdamW(tparams, lr=1e-2, weight_decay=2e-4)
    for step in range(4):
        grads = _params(10 + step)
        for t, g in zip(tparams, grads):
            t.grad = torch.from_numpy(g.copy())
        theirs.step()
        ours.step(params, grads)
        for p, t in zip(params, tparams):
            np.testing.assert_allclose(p, t.detach().numpy(), rtol=1e-6, atol=1e-7)
    # the state round-trips through torch's format (what the block store holds)
    from edge_trgl.modules import optimizer_to_numpy
    torch_state = optimizer_to_numpy(theirs)
    assert set(ours.state()) == set(torch_state)
    for key, value in torch_state.items():
        np.testing.assert_allclose(ours.state()[key], value, rtol=1e-6, atol=1e-7, err_msg=key)
    fresh = type(ours)(**({"lr": 0.05, "momentum": 0.9, "weight_decay": 2e-4} if name == "sgd"
                         else {"lr": 1e-2, "weight_decay": 2e-4}), count=len(params))
    fresh.load(torch_state)
    assert set(fresh.state()) == set(torch_state)


def test_trainer_process_never_imports_torch(small_module):
    """A real trainer child (the memory probe runs the training code path: ORT Module train steps,
    the numpy optimizer, an eval batch) reports its sys.modules: no torch."""
    from edge_trgl.targets.ort import _probe_worker
    cfg, art_dir, _ = small_module
    result = _probe_worker(cfg, art_dir, [4], 1)
    assert result["torch_imported"] is False
    (entry,) = result["results"]
    assert entry["batch"] == 4 and entry["peak_bytes"] > result["baseline_bytes"] > 0
    # a process that imported torch would start at ~220 MB; the trainer starts far below
    assert result["baseline_bytes"] < 150e6


def test_average_pool_rewrite_keeps_the_numbers(small_module):
    """The conv head's 2x2 average pool is rewritten to Reshape + ReduceMean for ORT's training
    graph (its AveragePool gradient crashes); the eval graph keeps AveragePool. Both agree."""
    from edge_trgl.backends.ort_worker import OrtModule
    cfg, art_dir, meta = small_module
    assert meta["average_pools_rewritten"] == 1
    mod = OrtModule(art_dir, threads=1)
    rng = np.random.default_rng(0)
    state = {n: (rng.standard_normal(mod.params[n].data.shape()).astype(np.float32) * 0.1
                 if n in mod.params else np.zeros((), np.int64)) for n in meta["state_keys"]}
    for n in meta["frozen"]:
        if n.endswith("running_var"):
            state[n] = np.ones_like(state[n])
    mod.set_state(state)
    x = rng.standard_normal((6, *meta["in_shape"])).astype(np.float32)
    y = rng.integers(0, meta["num_classes"], 6)
    # zero weight of the energy, and a zero learning rate: the train graph's logits are a
    # forward pass in training mode; compare them against torch on the same weights
    from edge_trgl.backends.ort_worker import NumpySGD
    out = mod.train_step(x, y, 0.0, NumpySGD(0.0, 0.0, 0.0, len(mod.trainable)))
    from edge_trgl.models import build_blocks, make_head
    blocks = build_blocks(meta["model"], tuple(meta["in_shape"]), meta["num_classes"],
                          width=meta["width"], seed=0)[meta["lo"]:meta["hi"]]
    head = make_head(cfg.head, tuple(blocks[-1].out_shape), meta["num_classes"], seed=0)
    for j, b in enumerate(blocks):
        b.load_state_dict({k: torch.from_numpy(np.asarray(state[f"blocks.{j}.{k}"])) for k in b.state_dict()})
    head.load_state_dict({k: torch.from_numpy(np.asarray(state[f"head.{k}"])) for k in head.state_dict()})
    from edge_trgl.backends.torch_backend import forward_module
    with torch.no_grad():
        _, logits, _ = forward_module([b.train() for b in blocks], head.train(), torch.from_numpy(x))
    np.testing.assert_allclose(out["logits"], logits.numpy(), atol=1e-4)

