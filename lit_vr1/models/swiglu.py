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

import functools

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


# transformers' MLP classes whose forward is exactly down(act(gate(x)) * up(x)) (Qwen2-VL's and
# Qwen2.5-VL's language models, Qwen2.5-VL's vision blocks, Qwen3-VL's language model, the
# Qwen2 / Qwen3 / Llama language models of InternVL checkpoints); a class of the same shape
# with more logic (multipliers, clamps) is not one of them
SWIGLU_CLASSES = frozenset({"Qwen2MLP", "Qwen2_5_VLMLP", "Qwen3VLTextMLP", "Qwen3MLP", "LlamaMLP"})


def _forward(module: nn.Module, x: Tensor) -> Tensor:
    gate, up = module.gate_proj(x), module.up_proj(x)
    if not torch.is_grad_enabled():  # nothing is saved without gradients: the plain ops (same bits)
        return module.down_proj(F.silu(gate) * up)
    return module.down_proj(SwiGLU.apply(gate, up))


def _is_swiglu(module: nn.Module) -> bool:
    """One of :data:`SWIGLU_CLASSES` with its SiLU activation (the class reads ``hidden_act``)."""
    act = getattr(module, "act_fn", None)
    silu = isinstance(act, nn.SiLU) or type(act).__name__ == "SiLUActivation"
    return silu and type(module).__name__ in SWIGLU_CLASSES


def recompute_silu(model: nn.Module) -> int:
    """Give every SwiGLU MLP of ``model`` the forward above (in place; a ``functools.partial``,
    which pickles and deep-copies with its module); returns how many. Other MLPs keep
    transformers' own forward."""
    count = 0
    for module in model.modules():
        if _is_swiglu(module):
            module.forward = functools.partial(_forward, module)
            count += 1
    return count
