"""Qwen3-VL (dense): vision tower ``model.visual`` with two kinds of projector, the final
``merger`` and the DeepStack mergers (``deepstack_merger_list``) that feed intermediate
vision features into the first decoder layers; 16-pixel patches (images resized to
multiples of 32); boxes in relative 0-1000 coordinates again, as Qwen2-VL.
The MoE variant (model_type ``qwen3_vl_moe``) is not covered: its decoder MLPs are experts."""

from __future__ import annotations

from transformers import Qwen3VLForConditionalGeneration, Qwen3VLProcessor

from lit_vr1.models.families.base import DECODER_LINEARS, Family
from lit_vr1.models.families.qwen2_vl import QWEN_VISION_TOKENS, GridImages

QWEN3_VL = Family(
    name="qwen3_vl",
    model_types=("qwen3_vl",),
    model_class=Qwen3VLForConditionalGeneration,
    processor_class=Qwen3VLProcessor,
    vision_tower="model.visual",
    vision_projector=("model.visual.merger", "model.visual.deepstack_merger_list"),
    lora_target_regex=DECODER_LINEARS,
    box_frame="norm1000",
    vision_tokens=QWEN_VISION_TOKENS,
    images=GridImages(),
    hints={"qwen3_vl_moe": "Qwen3-VL MoE checkpoints are not supported yet (expert MLPs); use a dense Qwen3-VL"},
)
