"""End-to-end training with gradient checkpointing (--scheme e2e --checkpoint-segments N|auto):
the same training as plain e2e, bit for bit, for less memory, planned from a probe of itself."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from edge_trgl.cli.main import build_parser
from edge_trgl.config import TrainConfig
from edge_trgl.errors import UserError
from edge_trgl.segments import checkpoint_segment_count, segment_bounds
from edge_trgl.train import train

from helpers import assert_imports_no_dynamo, run_arrays

TINY = dict(synthetic_train=200, synthetic_test=100, model="resnet8", width=0.5, batch_size=32,
            threads=1, progress=False, scheme="e2e", epochs=2)


def test_segments_auto_is_twice_the_square_root_rule_and_balanced():
    cfg = TrainConfig(scheme="e2e", checkpoint_segments=0)
    assert checkpoint_segment_count(cfg, 28) == 11 and checkpoint_segment_count(cfg, 10) == 7
    assert checkpoint_segment_count(TrainConfig(scheme="e2e", checkpoint_segments=50), 10) == 10
    assert checkpoint_segment_count(TrainConfig(scheme="e2e"), 10) is None
    assert segment_bounds(10, 4) == [(0, 3), (3, 6), (6, 8), (8, 10)]
    assert segment_bounds(28, 6)[0] == (0, 5) and segment_bounds(28, 6)[-1] == (24, 28)


def test_options_parse_and_are_checked():
    args = build_parser().parse_args(["train", "--scheme", "e2e", "--checkpoint-segments", "auto"])
    assert args.checkpoint_segments == 0
    assert build_parser().parse_args(["train", "--checkpoint-segments", "9"]).checkpoint_segments == 9
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--checkpoint-segments", "0"])
    with pytest.raises(UserError, match="--scheme e2e"):
        TrainConfig(scheme="sequential", checkpoint_segments=4).validate()


def test_checkpointed_training_is_plain_training_bit_for_bit(tmp_path):
    """Recomputation gives the same gradients, and BatchNorm's running statistics (and its
    batch count) are updated once per step, not twice: every stored tensor is equal."""
    plain = train(TrainConfig(**TINY, out=str(tmp_path / "plain")))
    for segments in (2, 0):
        out = tmp_path / f"ckpt{segments}"
        done = train(TrainConfig(**TINY, checkpoint_segments=segments, out=str(out)))
        a, b = run_arrays(tmp_path / "plain"), run_arrays(out)
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
        assert done["best_test_acc"] == plain["best_test_acc"]
        plan = json.loads((out / "plan.json").read_text())
        assert any("gradient checkpointing in" in note for note in plan["notes"])


def test_a_checkpointed_step_does_not_import_dynamo():
    """torch's non-reentrant checkpoint imports torch._dynamo (sympy and ~800 modules) on its
    first call: tens of MB held for the process's life, which made checkpointed end-to-end peak
    above plain end-to-end at small batches."""
    assert_imports_no_dynamo(
        "import torch\n"
        "from edge_trgl.models import build_blocks\n"
        "from edge_trgl.modules import forward_blocks\n"
        "blocks = build_blocks('resnet8', (3, 16, 16), 10, seed=0)\n"
        "out, energy = forward_blocks(blocks, torch.randn(4, 3, 16, 16), 3)\n"
        "(out.sum() + energy).backward()\n"
        "assert all(p.grad is not None for b in blocks for p in b.parameters())")


def test_the_recomputation_runs_under_the_forward_passes_autocast():
    """--amp: backward recomputes a segment outside the caller's autocast context, so it must
    re-enter the one its forward pass ran under (CPU bfloat16 here; CUDA float16 the same way)."""
    import torch
    from edge_trgl.models import build_blocks
    from edge_trgl.modules import forward_blocks

    def grads(segments):
        blocks = build_blocks("resnet8", (3, 16, 16), 10, seed=0)
        x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, energy = forward_blocks(blocks, x, segments)
            assert out.dtype == torch.bfloat16
            loss = out.float().sum() + energy.float()
        loss.backward()
        return [p.grad for b in blocks for p in b.parameters()]
    plain, checkpointed = grads(None), grads(3)
    assert all(torch.equal(a, b) for a, b in zip(plain, checkpointed))


@pytest.mark.slow
def test_the_probe_measures_less_for_a_checkpointed_network(tmp_path, monkeypatch):
    """The planner's probe of the whole network trains it as the trainer would: checkpointed,
    it measures well below plain end-to-end (ResNet-56, batch 64, one thread: measured 430 vs
    614 MB above the probe's baseline; on ResNet-20 at batch 64 the activations are too small a
    part of the peak for checkpointing to pay, 298 vs 264 MB)."""
    monkeypatch.setenv("EDGE_TRGL_CACHE", str(tmp_path / "cache"))
    from edge_trgl.data import load_dataset
    from edge_trgl.memory.estimate import probe_module
    from edge_trgl.modules import architecture
    data = load_dataset("synthetic", seed=0, synthetic_train=100, synthetic_test=20)
    peaks = {}
    for segments in (None, 0):
        cfg = TrainConfig(model="resnet56", scheme="e2e", checkpoint_segments=segments, threads=1)
        arch = architecture(cfg, data.in_shape, data.num_classes)
        peaks[segments] = probe_module(cfg, data.in_shape, data.num_classes, arch, 0, len(arch),
                                       [64], 1)[64]
    assert peaks[0] < 0.85 * peaks[None], peaks
    assert math.isfinite(peaks[0]) and peaks[0] > 0


def test_the_comparison_prefers_end_to_end_only_at_the_requested_batch():
    from edge_trgl.choose import choose, format_comparison

    def row(name, batch, fits=True):
        return {"name": name, "fits": fits, "batch_size": batch, "modules": 1,
                "estimated_peak_bytes": 400_000_000, "why": "too small. Give more"}
    rows = [row("module-wise", 128), row("end-to-end, checkpointed", 128), row("end-to-end", 64)]
    assert choose(rows, 128)[0] == "end-to-end, checkpointed"
    rows = [row("module-wise", 128), row("end-to-end, checkpointed", 64), row("end-to-end", 32)]
    pick, why = choose(rows, 128)
    assert pick == "module-wise" and "batch 128" in why
    rows = [row("module-wise", 128), row("end-to-end, checkpointed", 128), row("end-to-end", 128)]
    assert choose(rows, 128)[0] == "end-to-end"
    rows = [row(n, 0, fits=False) for n in ("module-wise", "end-to-end, checkpointed", "end-to-end")]
    assert choose(rows, 128)[0] is None
    text = format_comparison({"budget_bytes": 500_000_000, "requested_batch_size": 128,
                              "candidates": rows, "pick": None, "why": "none fits"})
    assert text.count(" no ") == 3 and "pick: none" in text


def test_with_little_data_the_comparison_picks_trgl_module_wise():
    """At most SMALL_TRAIN_IMAGES training images: TRGL module-wise (measured more accurate
    there) is the pick when it fits at the requested batch, even where end-to-end fits too; not
    for greedy training, not for more images, not at a smaller batch."""
    from edge_trgl.choose import SMALL_TRAIN_IMAGES, choose

    def row(name, batch):
        return {"name": name, "fits": True, "batch_size": batch, "modules": 4,
                "estimated_peak_bytes": 400_000_000}
    rows = [row("module-wise", 128), row("end-to-end, checkpointed", 128), row("end-to-end", 128)]
    pick, why = choose(rows, 128, train_images=800)
    assert pick == "module-wise" and "800 training images" in why and "45.6 %" in why
    assert choose(rows, 128, train_images=800, trgl=False)[0] == "end-to-end"
    assert choose(rows, 128, train_images=SMALL_TRAIN_IMAGES + 1)[0] == "end-to-end"
    assert choose(rows, 128)[0] == "end-to-end"           # size unknown: the general rule
    rows[0] = row("module-wise", 64)
    assert choose(rows, 128, train_images=800)[0] == "end-to-end"
    rows[0] = dict(row("module-wise", 128), modules=1)    # one module: end-to-end with a head
    assert choose(rows, 128, train_images=800)[0] == "end-to-end"


def test_help_documents_checkpointing_and_the_comparison(capsys):
    for argv in (["train", "--help"], ["plan", "--help"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(argv)
    flat = " ".join(capsys.readouterr().out.split())
    assert "--checkpoint-segments N|auto" in flat and "ceil(2*sqrt(blocks))" in flat
    assert "--compare" in flat and "--lr-schedule" in flat
