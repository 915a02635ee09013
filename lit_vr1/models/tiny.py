"""Tiny, randomly initialised VLMs with a locally trained tokenizer.

Everything here is built in-process from a seed: a byte-level BPE tokenizer trained
on a small corpus (Qwen's pre-tokenizer, Qwen's special tokens, a Qwen-style chat
template with image items), transformers' own Qwen2-VL / Qwen2.5-VL processor and
model classes (Qwen3-VL and InternVL: :mod:`lit_vr1.models.tiny_families`; what every
family shares, sizes and tokenizer: :mod:`lit_vr1.models.tiny_parts`). Nothing is
downloaded. The result saves and loads with ``save_pretrained`` / ``from_pretrained``
like any real checkpoint.
"""

from __future__ import annotations

import torch
from transformers import (
    PreTrainedModel,
    ProcessorMixin,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2Tokenizer,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
)

from lit_vr1.models import tiny_families
from lit_vr1.models.tiny_parts import CHAT_TEMPLATE, SPECIAL_TOKENS, TinySpec, build_tokenizer

FAMILIES = ("qwen2_5_vl", "qwen2_vl", "qwen3_vl", "internvl")
OTHER_FAMILIES = ("qwen3_vl", "internvl")  # built in lit_vr1.models.tiny_families


def build_processor(family: str = "qwen2_5_vl", spec: TinySpec | None = None, seed: int = 0) -> ProcessorMixin:
    """transformers' processor of ``family`` around the tiny tokenizer."""
    spec = spec or TinySpec()
    if _check_family(family) in OTHER_FAMILIES:
        return tiny_families.build_processor(family, spec, seed)
    tokenizer = build_tokenizer(spec.vocab_size, seed)
    image_processor = Qwen2VLImageProcessor(
        size={"shortest_edge": spec.min_pixels, "longest_edge": spec.max_pixels},
        patch_size=14,
        merge_size=2,
        temporal_patch_size=2,
    )
    cls = {"qwen2_5_vl": Qwen2_5_VLProcessor, "qwen2_vl": Qwen2VLProcessor}[_check_family(family)]
    return cls(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=CHAT_TEMPLATE,
    )


def _check_family(family: str) -> str:
    if family not in FAMILIES:
        raise ValueError(f"tiny model family {family!r} is not known; choose one of {', '.join(FAMILIES)}")
    return family


def build_model(family: str, tokenizer: Qwen2Tokenizer, spec: TinySpec | None = None, seed: int = 0) -> PreTrainedModel:
    """A randomly initialised model of ``family`` sized by ``spec``, deterministic from ``seed``."""
    spec = spec or TinySpec()
    if _check_family(family) in OTHER_FAMILIES:
        return tiny_families.build_model(family, tokenizer, spec, seed)
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in SPECIAL_TOKENS}
    head_dim = spec.hidden_size // spec.num_heads
    half = head_dim // 2
    mrope = [half - 2 * (half * 3 // 8), half * 3 // 8, half * 3 // 8]  # temporal, height, width
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": spec.rope_theta, "mrope_section": mrope},
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    common = dict(
        text_config=text,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    family = _check_family(family)
    if family == "qwen2_5_vl":
        vision = dict(
            depth=spec.vision_depth,
            hidden_size=spec.vision_hidden,
            intermediate_size=spec.vision_hidden * 2,
            num_heads=spec.vision_heads,
            out_hidden_size=spec.hidden_size,
            window_size=112,
            fullatt_block_indexes=[spec.vision_depth - 1],
        )
        config, cls = Qwen2_5_VLConfig(vision_config=vision, **common), Qwen2_5_VLForConditionalGeneration
    else:
        vision = dict(
            depth=spec.vision_depth,
            embed_dim=spec.vision_hidden,
            hidden_size=spec.hidden_size,
            num_heads=spec.vision_heads,
            mlp_ratio=2,
        )
        config, cls = Qwen2VLConfig(vision_config=vision, **common), Qwen2VLForConditionalGeneration
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(config)
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    return model


def build_tiny(family: str = "qwen2_5_vl", seed: int = 0, spec: TinySpec | None = None):
    """(model, processor) of a tiny random VLM of ``family``, deterministic from ``seed``."""
    processor = build_processor(family, spec, seed)
    return build_model(family, processor.tokenizer, spec, seed), processor


__all__ = ["FAMILIES", "SPECIAL_TOKENS", "TinySpec", "build_model", "build_processor", "build_tiny"]
