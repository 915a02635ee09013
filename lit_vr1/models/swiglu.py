"""Gated MLPs that keep two activations for the backward pass instead of three.

A SwiGLU MLP computes ``down(silu(gate(x)) * up(x))`` (Shazeer 2020, "GLU Variants Improve
Transformer"; every Qwen-VL language model and Qwen2.5-VL's vision tower). Under autograd the
product keeps ``silu(gate(x))`` and ``up(x)``, and the SiLU keeps ``gate(x)``: three tensors of
the MLP's width per token, the widest activations of a decoder layer. :class:`SwiGLU` keeps
``gate(x)`` and ``up(x)`` and recomputes the SiLU in the backward pass (the trade Liger-Kernel's
fused SwiGLU makes), so each layer holds one MLP-width tensor less. The arithmetic is that of
autograd's own formulas (``grad * up`` into ``silu_backward``, ``grad * silu(gate)``), so values
and gradients are bit-identical (``tests/test_swiglu.py``); the cost is one SiLU per layer in
the backward pass.
"""

from __future__ import annotations

import types

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class SwiGLU(torch.autograd.Function):
    """``silu(gate) * up``, saving ``gate`` and ``up`` only."""

    @staticmethod
    def forward(ctx, gate: Tensor, up: Tensor) -> Tensor:
        ctx.save_for_backward(gate, up)
        return F.silu(gate) * up

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor]:
        gate, up = ctx.saved_tensors
        grad_gate = torch.ops.aten.silu_backward(grad * up, gate)
        return grad_gate, grad * F.silu(gate)


def _forward(self: nn.Module, x: Tensor) -> Tensor:
    return self.down_proj(SwiGLU.apply(self.gate_proj(x), self.up_proj(x)))


def _is_swiglu(module: nn.Module) -> bool:
    """A transformers gated MLP (``gate_proj``, ``up_proj``, ``down_proj``) whose activation is SiLU."""
    act = getattr(module, "act_fn", None)
    silu = isinstance(act, nn.SiLU) or type(act).__name__ == "SiLUActivation"
    return silu and all(isinstance(getattr(module, name, None), nn.Module)
                        for name in ("gate_proj", "up_proj", "down_proj"))


def recompute_silu(model: nn.Module) -> int:
    """Give every SwiGLU MLP of ``model`` the forward above (in place); returns how many.
    MLPs of another shape or activation keep transformers' own forward."""
    count = 0
    for module in model.modules():
        if _is_swiglu(module):
            module.forward = types.MethodType(_forward, module)
            count += 1
    return count
