"""What every tiny model family shares: its sizes (:class:`TinySpec`), the locally trained
byte-level BPE tokenizer (Qwen's pre-tokenizer and special tokens) and a Qwen-style chat
template with image items. :mod:`lit_vr1.models.tiny` (Qwen2-VL, Qwen2.5-VL) and
:mod:`lit_vr1.models.tiny_families` (Qwen3-VL, InternVL) build on it.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import Qwen2Tokenizer

# Qwen's special tokens, in Qwen's order.
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

def chat_template(image_item: str, video_item: str) -> str:
    """A Qwen-style chat template (default system turn, ``<|im_start|>role\n...<|im_end|>\n``)
    that renders an image item as ``image_item`` and a video item as ``video_item``."""
    return (
        "{% for message in messages %}"
        "{% if loop.first and message['role'] != 'system' %}"
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
        "<|im_start|>{{ message['role'] }}\n"
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for item in message['content'] %}"
        f"{{% if item['type'] == 'image' %}}{image_item}"
        f"{{% elif item['type'] == 'video' %}}{video_item}"
        "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
        "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )


# Qwen-VL's chat layout: a default system turn, <|im_start|>role\n...<|im_end|>\n, and an
# image item rendered as <|vision_start|><|image_pad|><|vision_end|> (the processor then
# expands <|image_pad|> to one token per merged patch).
CHAT_TEMPLATE = chat_template("<|vision_start|><|image_pad|><|vision_end|>", "<|vision_start|><|video_pad|><|vision_end|>")

# Qwen2's pre-tokenizer split (digits one by one, words with a leading space, ...).
QWEN_SPLIT = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

@dataclass
class TinySpec:
    """Sizes of a tiny model. The defaults give 1.1-1.3 million parameters (Qwen2.5-VL's: 1,188,544).

    rope_theta: 10 rather than Qwen's 1e6, so that a small model can tell the columns
    of a 4x4 image-token grid apart (measured: with 1e6 it hardly can).
    """

    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 384
    vision_hidden: int = 64
    vision_depth: int = 2
    vision_heads: int = 2
    vocab_size: int = 1024
    rope_theta: float = 10.0
    min_pixels: int = 28 * 28
    max_pixels: int = 224 * 224


def _corpus(seed: int) -> list[str]:
    """Text the tokenizer is trained on: grounding prompts, JSON answers, the R1 tags."""
    from lit_vr1.data.prompts import TEMPLATES
    from lit_vr1.data.synthetic import COLOURS, SHAPES

    rng = random.Random(seed)
    lines = [CHAT_TEMPLATE, "You are a helpful assistant.", "system user assistant"]
    lines += [t.format(question="") for t in TEMPLATES.values()]
    for _ in range(400):
        colour, shape = rng.choice(COLOURS), rng.choice(SHAPES)
        box = [rng.randint(0, 999) for _ in range(4)]
        lines.append(f"Locate the {colour} {shape} in the image and output its bbox coordinates in JSON format.")
        lines.append(f'```json\n[{{"bbox_2d": [{box[0]}, {box[1]}, {box[2]}, {box[3]}], "label": "{colour} {shape}"}}]\n```')
        lines.append(f"<think>The {colour} {shape} is at {box}.</think>\n<answer>{box}</answer>")
    return lines


def build_tokenizer(vocab_size: int = 1024, seed: int = 0, special_tokens: list[str] | None = None,
                    named_tokens: dict[str, str] | None = None, chat_template: str = CHAT_TEMPLATE) -> Qwen2Tokenizer:
    """Train a byte-level BPE with Qwen's pre-tokenizer and wrap it in ``Qwen2Tokenizer``.
    ``special_tokens`` (default: Qwen's) start with the pad token; ``named_tokens`` are
    model-specific ones a processor reads by name (``start_image_token="<img>"``)."""
    special_tokens = special_tokens or SPECIAL_TOKENS
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(seed), trainer=trainer)


    state = json.loads(tok.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in state["merges"]]
    tokenizer = Qwen2Tokenizer(
        vocab=state["vocab"],
        merges=merges,
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=special_tokens[1:],
        **(named_tokens or {}),
    )
    tokenizer.chat_template = chat_template
    return tokenizer


# kept in hparams: loadable with weights_only=True (also under the path of earlier releases)
torch.serialization.add_safe_globals([TinySpec, (TinySpec, "lit_vr1.models.tiny.TinySpec")])
