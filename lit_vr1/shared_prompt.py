"""Shared-prompt passes: each prompt (and its images) goes through the model once for all
of its G completions, in the rollout and in every training forward.

A GRPO batch holds P prompts with G completions each. Peers repeat every prompt G times
(TRL, EasyR1 and verl build N = P*G rows of prompt + completion), so the vision tower
encodes each image G times and the language model runs over each prompt G times, in the
rollout's prefill and again in the old, reference and policy passes. Here:

1. the prompt pass runs the P prompts (images included) once and keeps its key/value cache
   (with gradients when training);
2. the cache rows are repeated for the completions that share a prompt (``index_select``,
   so gradients add up over the G uses, in a fixed order: see :func:`select_cache_rows`);
3. the completion pass runs the N completions' tokens against that cache.

The logits equal those of the full (prompt + completion) forward: the prompt's last logit
predicts the first completion token, the completion pass predicts the rest, with the
completion tokens placed where the full forward's position rule puts them (Qwen-VL's
M-RoPE: text after the prompt continues from the prompt's largest position + 1).

Sampling uses the same two passes: one prefill for the P prompts, then a decode loop over
the N rows, sampling from :func:`lit_vr1.loss.sampling_logits` (the distribution the loss
scores) with ``torch.multinomial`` as transformers' sampler does.

Callers do not come here for scores: :func:`lit_vr1.scoring.logprobs` decides, per
rollout, whether these passes or the repeated-prompt forward run.

With a frozen vision tower (its projector included: ``freeze_vision`` + ``freeze_merger``,
or LoRA, which adapts the language model only) the image features are computed once per
rollout and handed to every pass through transformers' ``mm_encoder_outputs`` (Qwen2-VL,
Qwen2.5-VL). Supported: Qwen2-VL, Qwen2.5-VL, Qwen3-VL; InternVL falls back to repeated rows.

Shapes: P prompts, N completion rows, Lp prompt tokens (left-padded), T completion tokens,
V vocabulary; ``prompt_index`` (N,) is the prompt row of each completion row.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers import DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPooling

from lit_vr1 import decode_graph, kv_cache, replay_cache
from lit_vr1.config import SamplingConfig
from lit_vr1.loss import sampling_logits, token_logprobs
from lit_vr1.models import families
from lit_vr1.models.families import base_model
from lit_vr1.rollout import ImageFeatures, Rollout

SHARED_FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")  # M-RoPE positions from the model's get_rope_index
# image features handed back through mm_encoder_outputs (Qwen3-VL's DeepStack features are not: its tower
# runs once per prompt in each pass instead)
REUSE_FAMILIES = ("qwen2_vl", "qwen2_5_vl")
VISION_KEYS = ("pixel_values", "image_grid_thw")


@functools.lru_cache(maxsize=None)
def _cache_argument(model_class: type) -> str:
    """The forward argument that takes the key/value cache: ``cache`` in transformers >= 5.2x,
    where ``past_key_values`` is deprecated (removed in 5.40); ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def with_cache(model: nn.Module, cache: DynamicCache) -> dict[str, DynamicCache]:
    """``{argument: cache}`` for ``model``'s forward, whichever name the installed transformers uses."""
    return {_cache_argument(type(base_model(model))): cache}


def unsupported_reason(model: nn.Module) -> str | None:
    """Why the shared-prompt passes cannot run on ``model`` (None: they can)."""
    family = families.find_family(base_model(model))
    if family is None or family.name not in SHARED_FAMILIES:
        name = family.name if family is not None else type(base_model(model)).__name__
        return f"model family {name} (shared prompt passes support {', '.join(SHARED_FAMILIES)})"
    return None


def update_repeats_prompts(model: nn.Module) -> bool:
    """True when a forward with gradients must repeat the prompts: gradient checkpointing under a
    transformers whose checkpointed layers drop the key/value cache (no ``_can_checkpoint_with_cache``
    switch, see :mod:`lit_vr1.replay_cache`). The rollout and the passes without gradients, which
    checkpoint nothing, share the prompts all the same."""
    return torch.is_grad_enabled() and checkpointing_drops_cache(model)


def checkpointing_drops_cache(model: nn.Module) -> bool:
    """True when a checkpointed layer of ``model`` would drop the key/value cache it is given."""
    return replay_cache.cache_dropped(base_model(model))


def vision_frozen(model: nn.Module) -> bool:
    """True when no parameter of the vision tower (projector included) is trained."""
    base = base_model(model)
    family = families.find_family(base)
    tower = family.tower(base) if family is not None else None
    return tower is not None and not any(p.requires_grad for p in tower.parameters())


@functools.lru_cache(maxsize=None)
def takes_encoder_outputs(model_class: type) -> bool:
    """Whether ``model_class``'s forward takes ``mm_encoder_outputs`` (transformers >= 5.18).
    Before, its ``**kwargs`` swallowed the features without a word while ``pixel_values`` was
    left out, so every pass with a frozen tower (and every LoRA run) ran image-blind: logits off
    by 0.5-1.0 on transformers 5.0-5.17, found by a trial of the oldest versions the package
    declared (2026-12-07)."""
    return "mm_encoder_outputs" in inspect.signature(model_class.forward).parameters


def image_features(model: nn.Module, prompt: dict[str, Tensor], images_per_prompt: list[int]) -> ImageFeatures | None:
    """Encode the images of a prompt batch once (None when it has none, for a family whose
    features cannot be handed back to the model: see ``REUSE_FAMILIES``, or with a transformers
    whose forward does not take them back, :func:`takes_encoder_outputs`: the tower then runs in
    each pass, on the pixels)."""
    family = families.find_family(base_model(model))
    if "pixel_values" not in prompt or family is None or family.name not in REUSE_FAMILIES:
        return None
    if not takes_encoder_outputs(type(base_model(model))):
        return None
    out = base_model(model).model.get_image_features(prompt["pixel_values"], prompt["image_grid_thw"], return_dict=True)
    return ImageFeatures(tuple(out.pooler_output), list(images_per_prompt))


def next_positions(model: nn.Module, prompt: dict[str, Tensor]) -> Tensor:
    """(P,) position of the first token after each prompt, by the model's own rule: Qwen-VL's
    M-RoPE gives text after the prompt the prompt's largest position + 1 (padding skipped);
    a batch without images gets positions 0..Lp-1, padding included (the model's default)."""
    ids, mask = prompt["input_ids"], prompt["attention_mask"]
    if "image_grid_thw" not in prompt:
        return torch.full((ids.shape[0],), ids.shape[1], dtype=torch.long, device=ids.device)
    kwargs = {k: prompt[k] for k in ("mm_token_type_ids", "image_grid_thw") if k in prompt}
    positions, _ = base_model(model).model.get_rope_index(input_ids=ids, attention_mask=mask, **kwargs)
    return positions.masked_fill(mask[None] == 0, -1).amax(dim=(0, 2)) + 1


@dataclass
class PromptPass:
    """cache: key/values of the prompt rows; last_logits (rows, V): the prediction of the
    first completion token; next_position (rows,); attention_mask (rows, Lp)."""

    cache: DynamicCache
    last_logits: Tensor
    next_position: Tensor
    attention_mask: Tensor

    def select(self, index: Tensor) -> PromptPass:
        """The pass for rows ``index`` (repeats allowed), in place for the cache."""
        select_cache_rows(self.cache, index)
        return PromptPass(self.cache, self.last_logits.index_select(0, index), self.next_position[index],
                          self.attention_mask[index])


def select_cache_rows(cache: DynamicCache, index: Tensor) -> None:
    """Keep rows ``index`` (repeats allowed) of every layer's keys and values, in place.

    With ``index_select``, whose backward (``index_add``) sums the G copies' gradients in a
    fixed order. transformers' ``batch_select_indices`` indexes with ``keys[index]``, whose
    backward on the CPU (``index_put_`` with accumulate) adds repeated rows from several
    threads in whatever order they finish: the gradients then differ in their last bits from
    run to run, more so on a loaded machine, and a long training run drifts apart."""
    layers = getattr(cache, "layers", None)
    if layers is None:  # a cache without per-layer tensors: transformers' own selection
        cache.batch_select_indices(index)
        return
    for layer in layers:
        keys = getattr(layer, "keys", None)
        if isinstance(keys, Tensor) and keys.numel():
            layer.keys = keys.index_select(0, index)
            layer.values = layer.values.index_select(0, index)


def prompt_pass(model: nn.Module, prompt: dict[str, Tensor], features: BaseModelOutputWithPooling | None = None,
                cache: DynamicCache | None = None) -> PromptPass:
    """Run the prompts once, keeping their cache (and the autograd graph when grads are on);
    ``cache``: the empty cache to fill (a :class:`~lit_vr1.replay_cache.ReplayCache` for a pass
    that trains; None: a ``DynamicCache``, which the sampler's decoding steps write on)."""
    inputs = dict(prompt)
    if features is not None:
        inputs.pop("pixel_values", None)
        inputs["mm_encoder_outputs"] = {"image": features}
    cache = DynamicCache() if cache is None else cache  # filled in place by the forward
    out = model(**inputs, **with_cache(model, cache), use_cache=True, logits_to_keep=1)
    return PromptPass(cache, out.logits[:, -1], next_positions(model, prompt), prompt["attention_mask"])


def end_at_eos(ids: Tensor, eos_ids: list[int], pad_id: int) -> tuple[Tensor, Tensor, Tensor]:
    """(ids with pad after the first EOS, mask (N, T) 1 up to and including it, has_eos (N,))."""
    is_eos = torch.isin(ids, torch.tensor(eos_ids, device=ids.device))
    has_eos = is_eos.any(dim=1)
    first = torch.where(has_eos, is_eos.int().argmax(dim=1), torch.full_like(has_eos, ids.shape[1], dtype=torch.long))
    mask = (torch.arange(ids.shape[1], device=ids.device)[None] <= first[:, None]).long()
    return ids.masked_fill(mask == 0, pad_id), mask, has_eos


def _text_positions(start: Tensor, length: int) -> Tensor:
    """(3, rows, length) M-RoPE positions of text tokens starting at ``start`` (rows,)."""
    pos = start[:, None] + torch.arange(length, device=start.device)[None]
    return pos[None].expand(3, -1, -1)


def completion_logits(model: nn.Module, rollout: Rollout, rows: Tensor, features: ImageFeatures | None = None) -> Tensor:
    """Logits predicting the completion tokens of ``rows``, (n, T, V), equal to those of the
    full forward over prompt + completion; each distinct prompt of the rows runs once
    (``features``: image features to hand to the prompt pass instead of running the tower)."""
    completion_ids, completion_mask = rollout.completion_ids[rows], rollout.completion_mask[rows]
    uniq, inverse = torch.unique(rollout.prompt_index(rows), return_inverse=True)
    feats = features.select(uniq.tolist()) if features is not None else None
    # each pass writes its own ReplayCache: a checkpointed layer replayed in backward rewrites nothing
    cache = replay_cache.ReplayCache()
    shared = prompt_pass(model, rollout.prompt_rows(uniq), feats, cache).select(inverse.to(completion_ids.device))
    if cache.get_seq_length() == 0:  # a layer dropped the cache: the completions would be scored without their prompt
        raise RuntimeError("the prompt pass left its key/value cache empty (a checkpointed layer dropped it?); "
                           "set model.grpo.shared_prompt=false")
    first = shared.last_logits[:, None]
    if completion_ids.shape[1] == 1:
        return first
    mask = torch.cat([shared.attention_mask, completion_mask[:, :-1].to(shared.attention_mask.dtype)], dim=1)
    out = model(input_ids=completion_ids[:, :-1], attention_mask=mask, **with_cache(model, cache.fork()),
                use_cache=True, position_ids=_text_positions(shared.next_position, completion_ids.shape[1] - 1))
    return torch.cat([first, out.logits], dim=1)


@dataclass
class Sampled:
    """completion_ids (N, T) with pad after EOS; mask (N, T) 1 up to and including EOS;
    has_eos (N,); logprobs (N, T) of the sampled tokens (0 after EOS) when asked for."""

    completion_ids: Tensor
    mask: Tensor
    has_eos: Tensor
    logprobs: Tensor | None


# How often the decode loop reads whether every row has ended, per device type: each read waits
# for the device (on a GPU the host then cannot queue the next token's kernels ahead). Off the CPU
# the loop may decode up to CHECK_EVERY - 1 steps past the last end of turn (pads, trimmed off;
# the random stream moves on by those draws); on the CPU it stops at once, as before.
CHECK_EVERY = {"cpu": 1}
CHECK_EVERY_DEFAULT = 8


def ready_masks_allowed(model: nn.Module) -> bool:
    """True when a decoding step may get a ready 4D boolean mask: SDPA attention and no
    sliding-window layer (a ready mask would reach those unwindowed; eager attention adds the
    mask to its scores, flash-attention takes 2D masks)."""
    config = base_model(model).config
    text = getattr(config, "text_config", None) or config
    windowed = bool(getattr(text, "use_sliding_window", False)) or any(
        kind != "full_attention" for kind in (getattr(text, "layer_types", None) or ()))
    return getattr(config, "_attn_implementation", None) == "sdpa" and not windowed


def decode_masks(model: nn.Module, prompt_mask: Tensor, width: int) -> Callable[[int], Tensor | None]:
    """``mask(length)``: the attention mask for a decoding step over ``length`` cached
    positions, for rows whose prompt mask is ``prompt_mask`` (N, Lp) and whose decoded
    tokens all count (up to ``width`` of them).

    Under SDPA the step gets the mask transformers itself would build, so it reads no mask
    values at each step (transformers checks a 2D mask for padding at every forward, a host
    sync): None when no row has padding (one check here: transformers then drops the mask), else
    the (N, 1, 1, length) boolean mask (True: attend; one query, so the causal part is all
    True). Other attention implementations (eager, flash-attention) and models with
    sliding-window layers get the 2D mask (see :func:`ready_masks_allowed`)."""
    full = torch.cat([prompt_mask, prompt_mask.new_ones(prompt_mask.shape[0], width)], dim=1)
    if not ready_masks_allowed(model):
        return lambda length: full[:, :length]
    if bool(prompt_mask.all()):
        return lambda length: None
    boolean = full[:, None, None, :].bool()
    return lambda length: boolean[..., :length]


@torch.no_grad()
def sample(model: nn.Module, prompt: dict[str, Tensor], group_size: int, cfg: SamplingConfig, eos_ids: list[int],
           pad_id: int, features: ImageFeatures | None = None, with_logprobs: bool = False,
           static: bool | None = None) -> Sampled:
    """``group_size`` completions per prompt: one prefill of the P prompts, then a decode loop
    over the N = P * group_size rows.

    The decoding steps run over a cache that grows in place (:mod:`lit_vr1.kv_cache`) or, with
    ``static`` (None: on CUDA with ``cfg.cuda_graph``, where the model allows it), over a
    fixed-size cache, replayed from a captured CUDA graph on CUDA (:mod:`lit_vr1.decode_graph`)."""
    device = prompt["input_ids"].device
    n_prompts = prompt["input_ids"].shape[0]
    index = torch.arange(n_prompts, device=device).repeat_interleave(group_size)
    feats = features.select(list(range(n_prompts))) if features is not None else None
    state = prompt_pass(model, prompt, feats).select(index)
    logits, start = state.last_logits.float(), state.next_position
    prompt_len, width = state.attention_mask.shape[1], cfg.max_completion_length
    decoder = _static_decoder(model, state, width, cfg.cuda_graph if static is None else static, static is None)
    if decoder is None:
        kv_cache.reserve(state.cache, width)  # decoded tokens are written in place, not concatenated
        step_mask = decode_masks(model, state.attention_mask, width)
    every = CHECK_EVERY.get(device.type, CHECK_EVERY_DEFAULT)
    eos = torch.tensor(eos_ids, device=device)
    suppress = torch.tensor(cfg.suppress_ids, dtype=torch.long, device=device)  # once: a copy to a GPU waits for it
    done = torch.zeros(index.numel(), dtype=torch.bool, device=device)
    tokens, logps = [], []
    for t in range(width):
        if cfg.greedy:
            dist = sampling_logits(logits, 1.0, 0, 1.0, suppress)
            tok = dist.argmax(dim=-1)
        else:
            dist = sampling_logits(logits, cfg.temperature, cfg.top_k, cfg.top_p, suppress)
            tok = torch.multinomial(dist.softmax(dim=-1), num_samples=1).squeeze(1)
        tok = tok.masked_fill(done, pad_id)
        if with_logprobs:
            logps.append(token_logprobs(dist[:, None], tok[:, None])[:, 0].masked_fill(done, 0.0))
        tokens.append(tok)
        done = done | torch.isin(tok, eos)
        if t == width - 1 or ((t + 1) % every == 0 and bool(done.all())):
            break
        if decoder is not None:
            logits = decoder.step(tok, t)
            continue
        out = model(input_ids=tok[:, None], attention_mask=step_mask(prompt_len + t + 1),
                    **with_cache(model, state.cache), use_cache=True,
                    position_ids=_text_positions(start + t, 1), logits_to_keep=1)
        logits = out.logits[:, -1].float()
    if decoder is not None and decoder.refused:
        decode_graph.note_refusal(model, decoder.refused)
    ids, keep, has_eos = end_at_eos(torch.stack(tokens, dim=1), eos_ids, pad_id)
    lp = torch.stack(logps, dim=1).masked_fill(keep == 0, 0.0) if with_logprobs else None
    if every > 1:  # steps decoded after every row had ended hold pads only: drop them
        width = max(1, int(keep.sum(dim=1).max()))
        ids, keep, lp = ids[:, :width], keep[:, :width], lp[:, :width] if lp is not None else None
    return Sampled(ids, keep, has_eos, lp)


def _static_decoder(model: nn.Module, state: PromptPass, width: int, wanted: bool,
                    auto: bool) -> decode_graph.StaticDecoder | None:
    """The fixed-size-cache decoder for ``state`` (captured on CUDA), or None for the growing
    cache: not ``wanted``, or (``auto``) off CUDA, or a model or cache it cannot serve."""
    device = state.last_logits.device
    if not wanted:
        return None
    if not ready_masks_allowed(model):
        if not auto:
            raise ValueError("the static decoding cache needs SDPA attention and no sliding-window layers")
        return None
    if width < 2:
        return None
    refusal = decode_graph.can_capture(model, device)
    if auto and refusal is not None:
        return None
    write_at = torch.zeros(1, dtype=torch.long, device=device)
    capacity = state.attention_mask.shape[1] + width
    layers = decode_graph.static_cache(state.cache, capacity, write_at)
    if layers is None:
        return None
    forward = decode_graph.model_forward(model, with_cache(model, state.cache))
    return decode_graph.StaticDecoder(forward, layers, write_at, state.attention_mask, state.next_position, capacity,
                                      capture=refusal is None)
