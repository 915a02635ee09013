"""Numerics of a policy whatever its dtype: float32 logits, no dropout in RL passes, and
float32 master weights for the optimiser.

- :func:`float32_head`: the LM head runs in float32, also under bf16 autocast or with
  bf16 weights. Every log-prob, ratio and KL is a function of the logits: a bf16 logit
  near 16 is resolved only to 0.125, so token log-probs would jitter by up to ~0.06 nats
  between passes that ought to agree. MiniMax-M1 (MiniMax 2025) traced a training/inference
  probability mismatch to the LM head's precision and fixed it this way; ScaleRL (Khatri et
  al. 2025) keeps the head in FP32 too (TRL: ``cast_lm_head_to_fp32``, off by default there).
  The head runs outside autocast here, so its operands are not cast back to bf16.
- :func:`cached_autocast`: a rollout under Lightning's mixed precision casts each trained
  weight to bf16 once, not at every decoding step (Lightning's autocast has its cache off).
- :func:`disable_dropout`: dropout off in every pass (the rollout runs in eval mode; an
  old-log-prob pass with dropout on would score another model), as TRL's
  ``disable_dropout``: the ratio is then exactly 1 until the weights move.
- :func:`half_trainable`: trainable parameters stored in bf16/fp16. A plain optimiser
  stepping them loses most small updates (an update below half a bf16 ulp rounds away:
  10 AdamW steps at lr 1e-6 on a 2048 x 2048 bf16 weight of std 0.02 change about 2% of
  its entries, float32 all of them), so the fit refuses them unless a strategy keeps
  float32 masters (DeepSpeed's bf16 optimiser does); see ``lit_vr1.checks``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

HALF = (torch.bfloat16, torch.float16)


class Float32Head(nn.Linear):
    """An ``nn.Linear`` that always computes in float32, autocast or not: float32 logits
    from any hidden state and weight dtype. Same parameters and state-dict keys as the
    ``nn.Linear`` it replaces (:func:`float32_head` swaps the class in place)."""

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            bias = self.bias.float() if self.bias is not None else None
            return F.linear(x.float(), self.weight.float(), bias)


def float32_head(model: nn.Module) -> bool:
    """Make ``model``'s output embedding (the LM head) a :class:`Float32Head`; True when it
    is one afterwards. The weights stay where and what they are (tied embeddings included)."""
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if isinstance(head, Float32Head):
        return True
    if type(head) is not nn.Linear:  # a peft or quantised wrapper: left alone
        return False
    head.__class__ = Float32Head
    return True


@contextlib.contextmanager
def cached_autocast(device_type: str) -> Iterator[None]:
    """Inside an autocast that runs without its weight cache (Lightning's ``bf16-mixed`` /
    ``16-mixed`` enter ``torch.autocast(..., cache_enabled=False)``), autocast again with the
    cache on, so that a no-grad block (a rollout's decoding steps) casts each trained float32
    weight to bf16 once instead of at every step; the cached copies are freed on exit.
    Nothing changes outside autocast."""
    if not torch.is_autocast_enabled(device_type):
        yield
        return
    with torch.autocast(device_type, dtype=torch.get_autocast_dtype(device_type), cache_enabled=True):
        try:
            yield
        finally:
            torch.clear_autocast_cache()


def disable_dropout(model: nn.Module) -> int:
    """Set every dropout of ``model`` to 0 (``nn.Dropout`` modules, LoRA's included, and the
    ``attention_dropout`` rate transformers' attention layers read in train mode). Returns
    how many were above 0."""
    changed = 0
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            changed += module.p > 0
            module.p = 0.0
        rate = getattr(module, "attention_dropout", None)
        if isinstance(rate, float):
            changed += rate > 0
            module.attention_dropout = 0.0
    return changed


def half_trainable(params) -> dict[torch.dtype, int]:
    """Trainable parameters stored in bf16 / fp16: {dtype: number of parameters}."""
    out: dict[torch.dtype, int] = {}
    for p in params:
        if p.requires_grad and p.dtype in HALF:
            out[p.dtype] = out.get(p.dtype, 0) + 1
    return out
