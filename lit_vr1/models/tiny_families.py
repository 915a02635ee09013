"""Tiny random Qwen3-VL and InternVL (``tiny:qwen3_vl``, ``tiny:internvl``).

Same recipe as :mod:`lit_vr1.models.tiny` (the shared parts in :mod:`lit_vr1.models.tiny_parts`): the
locally trained byte-level BPE tokenizer (extended by the family's own special tokens), a chat template with image items, and
transformers' own processor and model classes, sized by :class:`TinySpec`.

- Qwen3-VL: Qwen's tokens and chat layout; 16-pixel patches merged 2x2 (images resized to
  multiples of 32 within min_pixels..max_pixels), a learned 8x8 position grid resampled
  to each image, one DeepStack merger, interleaved M-RoPE, q/k norms in the decoder.
- InternVL: InternVL's ``<img>``, ``</img>``, ``<IMG_CONTEXT>``, ``<video>`` tokens; an image
  item renders as ``<IMG_CONTEXT>\\n``, which the processor expands to
  ``<img>`` + 16 ``<IMG_CONTEXT>`` per tile + ``</img>``. Tiles are 112 px (InternViT with
  14-pixel patches: 8x8 patches, pixel-shuffled to 4x4 tokens), at most 4 plus a thumbnail.
"""

from __future__ import annotations

import torch
from transformers import (
    GotOcr2ImageProcessor,
    InternVLConfig,
    InternVLForConditionalGeneration,
    InternVLProcessor,
    PreTrainedModel,
    ProcessorMixin,
    Qwen2Tokenizer,
    Qwen2VLImageProcessor,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
)
from transformers.models.internvl.video_processing_internvl import InternVLVideoProcessor
from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

from lit_vr1.models.tiny_parts import CHAT_TEMPLATE, SPECIAL_TOKENS, TinySpec, build_tokenizer, chat_template

QWEN3_PATCH = 16

INTERNVL_TOKENS = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<video>",
}
INTERNVL_TILE = 112
INTERNVL_PATCH = 14
INTERNVL_MAX_TILES = 4
INTERNVL_DOWNSAMPLE = 0.5
# tokens per tile: (tile / patch)^2 patches, pixel shuffle keeps a quarter of them
INTERNVL_TOKENS_PER_TILE = int((INTERNVL_TILE // INTERNVL_PATCH) ** 2 * INTERNVL_DOWNSAMPLE**2)

# InternVL's chat layout (Qwen-style turns); an image item is <IMG_CONTEXT> on its own line.
INTERNVL_CHAT_TEMPLATE = chat_template("<IMG_CONTEXT>\n", "<video>\n")


def build_processor(family: str, spec: TinySpec | None = None, seed: int = 0) -> ProcessorMixin:
    spec = spec or TinySpec()
    if family == "qwen3_vl":
        tokenizer = build_tokenizer(spec.vocab_size, seed)
        image_processor = Qwen2VLImageProcessor(
            size={"shortest_edge": spec.min_pixels, "longest_edge": spec.max_pixels},
            patch_size=QWEN3_PATCH, merge_size=2, temporal_patch_size=2,
            image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
        )
        return Qwen3VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                video_processor=Qwen3VLVideoProcessor(), chat_template=CHAT_TEMPLATE)
    if family == "internvl":
        tokenizer = build_tokenizer(spec.vocab_size, seed, SPECIAL_TOKENS + list(INTERNVL_TOKENS.values()),
                                    INTERNVL_TOKENS, INTERNVL_CHAT_TEMPLATE)
        image_processor = GotOcr2ImageProcessor(
            size={"height": INTERNVL_TILE, "width": INTERNVL_TILE}, crop_to_patches=True,
            min_patches=1, max_patches=INTERNVL_MAX_TILES,
            image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
        )
        return InternVLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                 video_processor=InternVLVideoProcessor(),
                                 image_seq_length=INTERNVL_TOKENS_PER_TILE, chat_template=INTERNVL_CHAT_TEMPLATE)
    raise ValueError(f"no tiny builder here for family {family!r}")


def _text_config(tokenizer: Qwen2Tokenizer, spec: TinySpec, **extra) -> dict:
    pad, eos = tokenizer.convert_tokens_to_ids("<|endoftext|>"), tokenizer.convert_tokens_to_ids("<|im_end|>")
    return dict(
        vocab_size=len(tokenizer), hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads, num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=4096, bos_token_id=pad, eos_token_id=eos, pad_token_id=pad, **extra,
    )


def build_model(family: str, tokenizer: Qwen2Tokenizer, spec: TinySpec | None = None, seed: int = 0) -> PreTrainedModel:
    spec = spec or TinySpec()
    ids = tokenizer.convert_tokens_to_ids
    head_dim = spec.hidden_size // spec.num_heads
    if family == "qwen3_vl":
        half = head_dim // 2
        mrope = [half - 2 * (half * 3 // 8), half * 3 // 8, half * 3 // 8]  # temporal, height, width
        text = _text_config(tokenizer, spec, head_dim=head_dim, rope_parameters={
            "rope_type": "default", "rope_theta": spec.rope_theta, "mrope_section": mrope, "mrope_interleaved": True})
        vision = dict(
            depth=spec.vision_depth, hidden_size=spec.vision_hidden, intermediate_size=spec.vision_hidden * 2,
            num_heads=spec.vision_heads, out_hidden_size=spec.hidden_size, patch_size=QWEN3_PATCH,
            num_position_embeddings=64, deepstack_visual_indexes=[max(spec.vision_depth // 2 - 1, 0)],
        )
        config = Qwen3VLConfig(
            text_config=text, vision_config=vision, image_token_id=ids("<|image_pad|>"),
            video_token_id=ids("<|video_pad|>"), vision_start_token_id=ids("<|vision_start|>"),
            vision_end_token_id=ids("<|vision_end|>"), tie_word_embeddings=False,
        )
        cls = Qwen3VLForConditionalGeneration
    elif family == "internvl":
        text = _text_config(tokenizer, spec, model_type="qwen2",
                            rope_parameters={"rope_type": "default", "rope_theta": spec.rope_theta})
        vision = dict(
            hidden_size=spec.vision_hidden, num_hidden_layers=spec.vision_depth, num_attention_heads=spec.vision_heads,
            intermediate_size=spec.vision_hidden * 2, image_size=INTERNVL_TILE, patch_size=INTERNVL_PATCH,
        )
        config = InternVLConfig(
            vision_config=vision, text_config=text, image_token_id=ids(INTERNVL_TOKENS["context_image_token"]),
            image_seq_length=INTERNVL_TOKENS_PER_TILE, downsample_ratio=INTERNVL_DOWNSAMPLE, tie_word_embeddings=False,
        )
        cls = InternVLForConditionalGeneration
    else:
        raise ValueError(f"no tiny builder here for family {family!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(config)
    model.generation_config.pad_token_id = ids("<|endoftext|>")
    model.generation_config.eos_token_id = ids("<|im_end|>")
    return model
