"""Vision-tower attention in one SDPA call per chunk length instead of one per chunk.

The Qwen-VL vision towers (Qwen2-VL, Qwen2.5-VL, Qwen3-VL) attend within chunks of the packed
patch sequence: each image, or under Qwen2.5-VL's window attention each window of each image
(``cu_seqlens`` marks the bounds). With flash-attention the chunks go to one varlen kernel;
under SDPA transformers runs one attention call per chunk, so a batch of 32 images at
224 px through a windowed block makes 128 calls of 16 patches each, and the calls' overhead
outweighs their arithmetic. :func:`batch_chunks` gives those modules a forward that stacks
the chunks of one length into a batch and makes one call for them (chunks of the same
length usually are all of them: images of one size).

The arithmetic is unchanged: SDPA computes every (batch row, head) on its own, so the outputs
and gradients are bit-identical on the CPU (``tests/test_vision_attention.py``). Other
attention implementations keep transformers' forward.
"""

from __future__ import annotations

import functools
import sys

import torch
from torch import Tensor, nn
from torch.nn import functional as F

# transformers' vision attention classes whose forward is: qkv projection, rotary embedding,
# attention within the chunks of cu_seqlens, output projection (identical in the three)
CHUNKED_CLASSES = frozenset({"VisionAttention", "Qwen2_5_VLVisionAttention", "Qwen3VLVisionAttention"})


def attend_chunks(q: Tensor, k: Tensor, v: Tensor, lengths: list[int], scale: float, dropout: float) -> Tensor:
    """Attention within consecutive chunks of ``lengths`` positions. q, k, v: (S, H, d) with
    S = sum(lengths); returns (S, H, d). Chunks of one length run as one batched call."""
    if len(set(lengths)) == 1:  # the usual case: views, no copies
        n, length = len(lengths), lengths[0]
        out = F.scaled_dot_product_attention(*(x.view(n, length, *x.shape[1:]).transpose(1, 2) for x in (q, k, v)),
                                             dropout_p=dropout, scale=scale)
        return out.transpose(1, 2).reshape(q.shape)
    starts = [0]
    for length in lengths[:-1]:
        starts.append(starts[-1] + length)
    pieces: list[Tensor | None] = [None] * len(lengths)
    for length in sorted(set(lengths)):
        members = [i for i, n in enumerate(lengths) if n == length]
        stacked = [torch.stack([x[starts[i]: starts[i] + length] for i in members]).transpose(1, 2) for x in (q, k, v)]
        out = F.scaled_dot_product_attention(*stacked, dropout_p=dropout, scale=scale).transpose(1, 2)
        for j, i in enumerate(members):
            pieces[i] = out[j]
    return torch.cat(pieces, dim=0)


def _forward(module: nn.Module, hidden_states: Tensor, cu_seqlens: Tensor,
             position_embeddings: tuple[Tensor, Tensor] | None = None, max_seqlen: int | None = None,
             **kwargs) -> Tensor:
    if module.config._attn_implementation != "sdpa":
        return type(module).forward(module, hidden_states, cu_seqlens, position_embeddings=position_embeddings,
                                    max_seqlen=max_seqlen, **kwargs)
    seq = hidden_states.shape[0]
    q, k, v = module.qkv(hidden_states).reshape(seq, 3, module.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    rotary = sys.modules[type(module).__module__].apply_rotary_pos_emb_vision
    q, k = rotary(q, k, *position_embeddings)
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
    dropout = module.attention_dropout if module.training else 0.0
    out = attend_chunks(q, k, v, lengths, module.scaling, dropout)
    return module.proj(out.reshape(seq, -1))


def batch_chunks(model: nn.Module) -> int:
    """Give every vision attention module of :data:`CHUNKED_CLASSES` in ``model`` the forward
    above (in place; a ``functools.partial``, which pickles and deep-copies with its module);
    returns how many."""
    count = 0
    for module in model.modules():
        if type(module).__name__ in CHUNKED_CLASSES and hasattr(module, "qkv") and hasattr(module, "scaling"):
            module.forward = functools.partial(_forward, module)
            count += 1
    return count
