"""A tiny random Qwen2.5-VL with the proportions of Qwen2.5-VL-3B, for the speed benchmarks.

Qwen2.5-VL-3B-Instruct (its config.json): language model hidden 2048, MLP 11008 (5.4x),
36 layers, 16 query / 2 key-value heads, vocabulary 151,936 (LM head ~11% of the decoder
layers' weights); vision tower hidden 1280, MLP 3420 (2.7x), 32 blocks with full attention
in every 8th and 112 px windows elsewhere, 14 px patches merged 2x2 into one LM token.

Here every ratio is kept at 1/8 of the width: LM hidden 256, MLP 1376, 4 heads of 64 with
2 key-value heads, vocabulary 3,200 (head ~11% of the layers), vision hidden 160, MLP 428,
full attention every 4th block. The depths are set so that the vision tower costs about a
third of the language model per image token (the proportion the performance issue asks
for; by weight count the real 3B's tower costs about 0.9x, so sharing the tower's work
is worth more at full size than measured here): 6 LM layers, 2 vision blocks.

The tokenizer is lit-vr1's tiny BPE (557 tokens): ids above it are real rows of the
embedding and head that decode to nothing, as Qwen's padded vocabulary does.
"""

from __future__ import annotations

import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from lit_vr1.models.tiny import SPECIAL_TOKENS, TinySpec, build_processor

LM = dict(hidden_size=256, intermediate_size=1376, num_hidden_layers=6, num_attention_heads=4,
          num_key_value_heads=2, vocab_size=3200)
VISION = dict(hidden_size=160, intermediate_size=428, depth=2, num_heads=2, window_size=112,
              fullatt_block_indexes=[1])


def build(path: str, image_px: int = 224, seed: int = 0, lm_layers: int | None = None,
          vision_depth: int | None = None) -> None:
    """Write the model and its processor to ``path`` (``save_pretrained``): both trainers
    load the very same weights from there. Images are resized to ``image_px`` squared."""
    spec = TinySpec(min_pixels=image_px * image_px, max_pixels=image_px * image_px)
    processor = build_processor("qwen2_5_vl", spec, seed)
    tok = processor.tokenizer
    ids = {name: tok.convert_tokens_to_ids(name) for name in SPECIAL_TOKENS}
    head_dim = LM["hidden_size"] // LM["num_attention_heads"]
    half = head_dim // 2
    mrope = [half - 2 * (half * 3 // 8), half * 3 // 8, half * 3 // 8]
    text = dict(LM, max_position_embeddings=8192, rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                                                     "mrope_section": mrope},
                bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    if lm_layers:
        text["num_hidden_layers"] = lm_layers
    vision = dict(VISION, out_hidden_size=LM["hidden_size"])
    if vision_depth:
        vision["depth"] = vision_depth
        vision["fullatt_block_indexes"] = [i for i in range(vision_depth) if i % 4 == 3] or [vision_depth - 1]
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                              video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                              vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.save_pretrained(path)
    processor.save_pretrained(path)
