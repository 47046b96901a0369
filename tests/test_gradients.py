"""Attacks compute input gradients only: no weight gradient, eager or compiled."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import advkit
from advkit import checks


class OpCounter(TorchDispatchMode):
    """Counts the aten operators executed inside the block."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.ops[func._overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def matmuls(ops: Counter[str]) -> int:
    return sum(ops[k] for k in ("mm", "addmm", "bmm", "matmul"))


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)
    )


def count_step_matmuls(model: nn.Module, steps: int) -> int:
    x, y = torch.rand(4, 8), torch.tensor([0, 1, 2, 0])
    pgd = advkit.PGD(eps=0.1, steps=steps)
    with OpCounter() as counter:
        res = pgd(model, x, y)
    assert res.backward_passes == steps
    return matmuls(counter.ops)


def test_eager_step_costs_one_forward_and_one_input_backward() -> None:
    model = mlp()
    # Per gradient step: 3 forward matmuls + 3 input-gradient matmuls (weight gradients would
    # add 3 more); the final forward, which scores the last iterate, adds 3 (from a random
    # start there is no pass on the clean input).
    extra = count_step_matmuls(model, 2) - count_step_matmuls(model, 1)
    assert extra == 6
    assert count_step_matmuls(model, 1) == 6 + 3


def test_compiled_model_computes_no_weight_gradients() -> None:
    """AOTAutograd traces a backward for every input that requires grad when it traces;
    the guard freezes the parameters, so the compiled backward leaves weight gradients out.

    The backward graph that torch.compile builds is inspected directly: one matmul per
    Linear layer (the input gradient), where weight gradients would double that."""
    from torch._dynamo.backends.common import aot_autograd
    from torch._functorch.aot_autograd import make_boxed_func

    backward_graphs: list[torch.fx.GraphModule] = []

    def fw(gm: torch.fx.GraphModule, example: Any) -> Any:
        return make_boxed_func(gm.forward)

    def bw(gm: torch.fx.GraphModule, example: Any) -> Any:
        backward_graphs.append(gm)
        return make_boxed_func(gm.forward)

    torch._dynamo.reset()
    model = mlp()
    compiled = torch.compile(
        model, backend=aot_autograd(fw_compiler=fw, bw_compiler=bw), dynamic=False
    )
    res = advkit.PGD(eps=0.1, steps=2)(compiled, torch.rand(4, 8), torch.tensor([0, 1, 2, 0]))
    assert res.backward_passes == 2
    assert len(backward_graphs) == 1
    nodes = backward_graphs[0].graph.nodes
    mms = [n for n in nodes if n.op == "call_function" and "mm" in str(n.target)]
    assert len(mms) == 3
    assert all(p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())


def test_attacks_work_under_no_grad_but_not_inference_mode() -> None:
    model = mlp()
    x, y = torch.rand(4, 8), torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        res = advkit.PGD(eps=0.1, steps=2)(model, x, y)
    assert res.backward_passes == 2
    with torch.inference_mode(), pytest.raises(checks.ConfigError, match="inference_mode"):
        advkit.PGD(eps=0.1, steps=2)(model, x, y)
