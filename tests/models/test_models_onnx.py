"""One block + head exports to ONNX in training mode with (logits, energy) outputs."""

import io
import warnings

import pytest
import torch
from torch import nn

from edge_trgl.models import build_blocks, make_head

onnx = pytest.importorskip("onnx")


class _BlockWithHead(nn.Module):
    def __init__(self, block, head):
        super().__init__()
        self.block, self.head = block, head

    def forward(self, x):
        y, energy = self.block(x)
        return self.head(y), energy


def _export(model, x):
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (x,), f, dynamo=False, opset_version=17,
            training=torch.onnx.TrainingMode.TRAINING, do_constant_folding=False,
            input_names=["x"], output_names=["logits", "energy"],
            dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
        )
    proto = onnx.load_from_string(f.getvalue())
    onnx.checker.check_model(proto)
    return proto


@pytest.mark.parametrize("name,in_shape,index,head", [
    # Stride-2 projection block on MNIST: 14x14 -> 7x7, so the conv head pools 7x7 -> 2x2.
    ("resnet20", (1, 28, 28), 7, "conv"),
    ("vit", (1, 28, 28), 1, "linear"),
])
def test_training_mode_export(name, in_shape, index, head):
    block = build_blocks(name, in_shape, 10, seed=0)[index]
    model = _BlockWithHead(block, make_head(head, block.out_shape, 10, seed=0)).train()
    proto = _export(model, torch.randn(2, *block.in_shape))

    outs = {o.name: o for o in proto.graph.output}
    assert list(outs) == ["logits", "energy"]
    assert len(outs["energy"].type.tensor_type.shape.dim) == 0  # a scalar
    assert len(outs["logits"].type.tensor_type.shape.dim) == 2
    ops = {n.op_type for n in proto.graph.node}
    assert "ReduceMean" in ops
    if name.startswith("resnet"):
        bns = [n for n in proto.graph.node if n.op_type == "BatchNormalization"]
        assert bns and all(
            any(a.name == "training_mode" and a.i == 1 for a in n.attribute) for n in bns
        )
    else:
        assert {"MatMul", "Softmax", "LayerNormalization"} <= ops

    # The graph computes what PyTorch computes (training-mode BN, another batch size).
    ref = pytest.importorskip("onnx.reference")
    x = torch.randn(3, *block.in_shape)
    logits, energy = ref.ReferenceEvaluator(proto).run(None, {"x": x.numpy()})
    with torch.no_grad():
        t_logits, t_energy = model(x)
    assert logits.shape == (3, 10)
    assert abs(float(energy) - t_energy.item()) <= 1e-5 * max(1.0, abs(t_energy.item()))
    assert torch.allclose(torch.from_numpy(logits), t_logits, atol=1e-4)
    assert t_energy.item() > 0
