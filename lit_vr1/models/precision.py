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
- :func:`store_cast_weights`: a frozen model that only runs under autocast (the reference
  under ``bf16-mixed``) stores the weights autocast casts in its dtype: half their bytes,
  the same outputs to the last bit.
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


# Modules whose forward hands its weight and bias to an op that autocast casts to its dtype
# (F.linear, F.conv*d: "lower precision" ops on CPU and CUDA alike). Exact types: a subclass
# (Float32Head, peft's LoRA layers, a quantised linear) may compute otherwise.
AUTOCAST_CAST_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)

MIXED_PRECISION_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def store_cast_weights(model: nn.Module, dtype: torch.dtype) -> int:
    """Store in ``dtype`` the float32 weights and biases of ``model``'s linear and convolution
    layers (exact :data:`AUTOCAST_CAST_MODULES` types), which autocast to ``dtype`` casts to
    ``dtype`` at every call anyway; returns the bytes freed. For a frozen model that only runs
    under that autocast (the reference under ``bf16-mixed``): its outputs are bit-identical,
    since a float32 weight cast to bf16 is the bf16 weight stored here (round to nearest even
    either way), and a weight already in ``dtype`` is used as it is. Embeddings, norms and the
    float32 head keep their float32 weights; a parameter shared with any other module (a tied
    head) is left as it is. Outside that autocast the model would compute otherwise: call it
    only for such a model."""
    cast = {id(p) for m in model.modules() if type(m) in AUTOCAST_CAST_MODULES for p in m.parameters(recurse=False)}
    shared = {id(p) for m in model.modules() if type(m) not in AUTOCAST_CAST_MODULES
              for p in m.parameters(recurse=False)}
    freed = 0
    for p in model.parameters():
        if id(p) in cast and id(p) not in shared and p.dtype == torch.float32:
            freed += p.numel() * (p.element_size() - dtype.itemsize)
            p.data = p.data.to(dtype)
    return freed
