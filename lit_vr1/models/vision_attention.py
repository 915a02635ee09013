"""Vision-tower attention in one SDPA call per run of equal chunks instead of one per chunk.

The Qwen-VL vision towers (Qwen2-VL, Qwen2.5-VL, Qwen3-VL) attend within chunks of the packed
patch sequence: each image, or in Qwen2.5-VL's windowed blocks each 112 px window of each
image (``cu_seqlens`` marks the bounds). With flash-attention the chunks go to one varlen
kernel; under SDPA transformers makes one attention call per chunk, so 32 images of 224 px
through a windowed block make 128 calls of 64 patches each, and on a GPU each call is a
kernel launch. :func:`batch_chunks` gives those modules a forward that takes each run of
consecutive chunks of one length as one batch, a view of the packed tensors (no copy, so
nothing more is kept for the backward pass), and makes one call for it: one call per block
for images of one size whose side is a multiple of the window (or, in full-attention blocks,
of any one size); a 280 px image's windows (8 x 8, 8 x 8, 8 x 4 merged tokens per row of
windows) make two runs per row of windows.

The arithmetic per (chunk, head) is SDPA's either way. On the CPU the outputs and gradients
came out bit-identical for every chunk length a tower makes (whole 2 x 2 merge units:
multiples of 4 patches; float32 and bf16, batched or not; ``tests/test_vision_attention.py``),
which is an observation about torch's CPU kernel at those sizes, not a guarantee: at 9
positions with head size 8 the last bit differed. On a GPU the kernels may differ in the last
bits. Other attention implementations, and classes whose forward or module does not have the
expected shape, keep transformers' forward.
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

# transformers' vision attention classes whose forward is: qkv projection, rotary embedding,
# attention within the chunks of cu_seqlens, output projection (identical in the three, 5.x)
CHUNKED_CLASSES = frozenset({"VisionAttention", "Qwen2_5_VLVisionAttention", "Qwen3VLVisionAttention"})
FORWARD_PARAMETERS = ("self", "hidden_states", "cu_seqlens", "position_embeddings")


def runs(lengths: list[int]) -> list[tuple[int, int, int]]:
    """(start position, chunks, chunk length) of each run of consecutive equal ``lengths``."""
    out: list[tuple[int, int, int]] = []
    start = 0
    for length in lengths:
        if out and out[-1][2] == length:
            out[-1] = (out[-1][0], out[-1][1] + 1, length)
        else:
            out.append((start, 1, length))
        start += length
    return out


def attend_chunks(q: Tensor, k: Tensor, v: Tensor, lengths: list[int], scale: float, dropout: float) -> Tensor:
    """Attention within consecutive chunks of ``lengths`` positions. q, k, v: (S, H, d) with
    S = sum(lengths); returns (S, H, d). Each run of equal chunks is one batched call over
    views of q, k and v."""
    pieces = []
    for start, n, length in runs(lengths):
        part = [x[start: start + n * length].view(n, length, *x.shape[1:]).transpose(1, 2) for x in (q, k, v)]
        out = F.scaled_dot_product_attention(*part, dropout_p=dropout, scale=scale)
        pieces.append(out.transpose(1, 2).reshape(n * length, *q.shape[1:]))
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=0)


def _forward(module: nn.Module, rotary: Callable, hidden_states: Tensor, cu_seqlens: Tensor,
             position_embeddings: tuple[Tensor, Tensor] | None = None, **kwargs) -> Tensor:
    if module.config._attn_implementation != "sdpa":
        return type(module).forward(module, hidden_states, cu_seqlens, position_embeddings=position_embeddings,
                                    **kwargs)
    seq = hidden_states.shape[0]
    q, k, v = module.qkv(hidden_states).reshape(seq, 3, module.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    q, k = rotary(q, k, *position_embeddings)
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
    dropout = module.attention_dropout if module.training else 0.0
    out = attend_chunks(q, k, v, lengths, module.scaling, dropout)
    return module.proj(out.reshape(seq, -1))


def _rotary_of(module: nn.Module) -> Callable | None:
    """The rotary function of the module's own modeling file, when the module is one of
    :data:`CHUNKED_CLASSES` as transformers defines it (its parts and forward signature)."""
    cls = type(module)
    if cls.__name__ not in CHUNKED_CLASSES or not cls.__module__.startswith("transformers.models."):
        return None
    if not all(hasattr(module, name) for name in ("qkv", "proj", "num_heads", "scaling", "attention_dropout", "config")):
        return None
    if tuple(inspect.signature(cls.forward).parameters)[:4] != FORWARD_PARAMETERS:
        return None
    return getattr(sys.modules.get(cls.__module__), "apply_rotary_pos_emb_vision", None)


def batch_chunks(model: nn.Module) -> int:
    """Give every vision attention module of :data:`CHUNKED_CLASSES` in ``model`` the forward
    above (in place; a ``functools.partial``, which pickles and deep-copies with its module);
    returns how many."""
    count = 0
    for module in model.modules():
        rotary = _rotary_of(module)
        if rotary is not None:
            module.forward = functools.partial(_forward, module, rotary)
            count += 1
    return count
