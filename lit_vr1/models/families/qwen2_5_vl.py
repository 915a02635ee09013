"""Qwen2.5-VL: laid out as Qwen2-VL (``model.visual``, its merger, 14-pixel patch grids),
but boxes are absolute pixels of the resized model-input image."""

from __future__ import annotations

from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

from lit_vr1.models.families.base import DECODER_LINEARS, Family
from lit_vr1.models.families.qwen2_vl import QWEN_VISION_TOKENS, GridImages

QWEN2_5_VL = Family(
    name="qwen2_5_vl",
    model_types=("qwen2_5_vl",),
    model_class=Qwen2_5_VLForConditionalGeneration,
    processor_class=Qwen2_5_VLProcessor,
    vision_tower="model.visual",
    vision_projector=("model.visual.merger",),
    lora_target_regex=DECODER_LINEARS,
    box_frame="input_pixels",
    vision_tokens=QWEN_VISION_TOKENS,
    images=GridImages(),
)
