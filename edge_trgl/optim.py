"""SGD (momentum, weight decay) and AdamW with torch.optim's update rules, without its cost.

`torch.optim.SGD(...).step()` imports `torch._dynamo` on its first call (for its compile
graph-break), which imports sympy and ~500 other modules: about 67 MB of memory that every
trainer and probe process then holds for its whole life, on a device where the budget may be
512 MB. These subclasses of `torch.optim.Optimizer` do the same arithmetic as torch's
single-tensor code paths (what torch runs for CPU tensors), in the same order, so results are
bit-identical on the CPU (tests/test_optim.py checks it against torch.optim); their state dicts
have torch's layout ("momentum_buffer"; "step", "exp_avg", "exp_avg_sq"), so checkpoints and the
ONNX Runtime trainer's numpy optimizers read them unchanged.

The base class's own methods (zero_grad, state_dict, ...) are wrapped in torch's lazy "disable
dynamo" decorator, which would import torch._dynamo the same way on first use; `_no_lazy_dynamo`
marks them as already disabled -- this package never compiles -- so the import never happens.
"""

from __future__ import annotations

import torch
from torch.optim import Optimizer


def _no_lazy_dynamo() -> None:
    compile_mod = getattr(torch, "_compile", None)
    disable = getattr(compile_mod, "_disable_dynamo", None)
    if disable is None:
        return
    marker = disable(lambda: None).__code__
    for fn in vars(Optimizer).values():
        inner = getattr(fn, "__wrapped__", None)
        if getattr(fn, "__code__", None) is marker and inner is not None:
            inner.__dynamo_disable = inner  # what torch caches after its own first call


_no_lazy_dynamo()


class SGD(Optimizer):
    """torch.optim.SGD(lr, momentum, weight_decay) with dampening 0, no Nesterov."""

    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      dampening=0.0, nesterov=False, maximize=False,
                                      foreach=False, differentiable=False, fused=None))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                if wd != 0:
                    grad = grad.add(param, alpha=wd)
                if momentum != 0:
                    state = self.state[param]
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = grad.detach().clone()
                        state["momentum_buffer"] = buf
                    else:
                        buf.mul_(momentum).add_(grad, alpha=1)
                    grad = buf
                param.add_(grad, alpha=-lr)
        return None


class AdamW(Optimizer):
    """torch.optim.AdamW(lr, betas, eps, weight_decay), no amsgrad."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps,
                                      weight_decay=weight_decay, amsgrad=False, maximize=False,
                                      foreach=False, capturable=False, differentiable=False,
                                      fused=None, decoupled_weight_decay=True))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                state = self.state[param]
                if not state:
                    state["step"] = torch.tensor(0.0, dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                exp_avg, exp_avg_sq, step_t = state["exp_avg"], state["exp_avg_sq"], state["step"]
                step_t += 1
                if wd != 0:
                    param.mul_(1 - lr * wd)
                exp_avg.lerp_(grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                step = step_t.item()
                bias_correction1 = 1 - beta1 ** step
                bias_correction2 = 1 - beta2 ** step
                step_size = lr / bias_correction1
                bias_correction2_sqrt = bias_correction2 ** 0.5
                denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
                param.addcdiv_(exp_avg, denom, value=-step_size)
        return None
