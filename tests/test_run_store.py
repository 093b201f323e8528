import json

import numpy as np
import pytest

from edge_trgl.errors import UserError
from edge_trgl.run import Run
from edge_trgl.store import load_tensors, save_tensors


def test_store_roundtrip_and_checksum(tmp_path):
    arrays = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "n": np.array(3, dtype=np.int64)}
    sha = save_tensors(tmp_path, "blocks/block_000.safetensors", arrays, {"epoch": 2})
    back, meta = load_tensors(tmp_path, "blocks/block_000.safetensors", sha)
    assert np.array_equal(back["w"], arrays["w"]) and meta == {"epoch": 2}
    path = tmp_path / "blocks/block_000.safetensors"
    raw = bytearray(path.read_bytes())
    raw[-2] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(UserError, match="checksum"):
        load_tensors(tmp_path, "blocks/block_000.safetensors", sha)


def test_staging_publish_and_refusals(tmp_path):
    out = tmp_path / "run"
    run = Run.staging(out)
    run.write_json("config.json", {"a": 1})
    assert not out.exists()          # nothing visible until published
    run.publish()
    assert json.loads((out / "manifest.json").read_text())["format"] == 1
    with pytest.raises(UserError, match="--resume"):
        Run.staging(out)
    other = tmp_path / "notarun"
    other.mkdir()
    (other / "file.txt").write_text("x")
    with pytest.raises(UserError, match="not an edge-trgl run"):
        Run.staging(other)
    with pytest.raises(UserError, match="not an edge-trgl run"):
        Run.open(other)


def test_torn_metrics_line_is_dropped_on_open(tmp_path):
    run = Run.staging(tmp_path / "r")
    run.publish()
    run.log_metrics({"epoch": 1})
    run.save()  # a line counts once a manifest save (the epoch's checkpoint) follows it
    run.log_metrics({"epoch": 2, "uncommitted": True})  # crash before the checkpoint: redone
    with open(run.root / "metrics.jsonl", "a") as fh:
        fh.write('{"epoch": 2, "tr')
    reopened = Run.open(run.root)
    assert reopened.read_metrics() == [{"epoch": 1}]
