"""Qwen2-VL: vision tower ``model.visual`` with its merger ``model.visual.merger``; boxes
in relative 0-1000 coordinates; images as patch grids (``image_grid_thw``) of 14-pixel
patches, resized to multiples of 28 between min_pixels and max_pixels."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

from torch import Tensor
from transformers import Qwen2VLForConditionalGeneration, Qwen2VLProcessor

from lit_vr1.models.families.base import DECODER_LINEARS, Family

# Qwen-VL's vision placeholders: <|vision_start|><|image_pad|>...<|vision_end|> per image.
QWEN_VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")


@dataclass(frozen=True)
class GridImages:
    """Qwen-VL's layout: ``pixel_values`` (X, D) are the flattened patches of all images one
    after another, ``image_grid_thw`` (I, 3) the (t, h, w) patch grid of each image. The
    image at the model input is (w * patch_size, h * patch_size) pixels."""

    def pixel_rows(self, inputs: dict[str, Tensor], processor: Any = None) -> list[int]:
        if "image_grid_thw" not in inputs:
            return []
        return [int(n) for n in inputs["image_grid_thw"].prod(dim=-1).tolist()]

    def input_sizes(self, inputs: dict[str, Tensor], image_sizes: list[tuple[int, int]],
                    processor: Any) -> list[tuple[int, int]]:
        if "image_grid_thw" not in inputs:
            return []
        patch = int(processor.image_processor.patch_size)
        return [(int(w) * patch, int(h) * patch) for _, h, w in inputs["image_grid_thw"].tolist()]

    def placeholder_tokens(self, processor: Any, counted: Any) -> list[int]:
        """One ``<|image_pad|>`` per merged patch (the ``<|vision_start|>``/``<|vision_end|>``
        around it are the chat template's text, not the processor's)."""
        return [int(n) for n in counted.num_image_tokens]

    def set_pixel_bounds(self, processor: Any, min_pixels: int | None, max_pixels: int | None) -> None:
        """qwen-vl-utils' convention: min_pixels <= h*w <= max_pixels after resizing."""
        if min_pixels is None and max_pixels is None:
            return
        ip = processor.image_processor
        size = dict(getattr(ip, "size", None) or {})
        if min_pixels is not None:
            size["shortest_edge"] = min_pixels
        if max_pixels is not None:
            size["longest_edge"] = max_pixels
        low, high = size.get("shortest_edge"), size.get("longest_edge")
        if isinstance(low, int) and isinstance(high, int) and low > high:  # no size between them
            if min_pixels is not None and max_pixels is not None:
                raise ValueError(f"model.min_pixels={min_pixels} is above model.max_pixels={max_pixels}: no image size "
                                 "is between them; give min_pixels <= max_pixels")
            # one bound given past the processor's other one (a Qwen3-VL checkpoint's own min_pixels is
            # 65536): the given one wins, the other is moved to it, and that is said
            flag, other, value = (("max_pixels", "min_pixels", high) if max_pixels is not None
                                  else ("min_pixels", "max_pixels", low))
            warnings.warn(f"model.{flag}={value} is past the processor's own {other} ({high if flag == 'min_pixels' else low}):"
                          f" its {other} is set to {value} too, so every image is resized to about {value} px, small "
                          f"ones up (give model.{other} to choose another)", stacklevel=2)
            size["shortest_edge"] = size["longest_edge"] = value
            ip.size = size
            return  # one warning: the moved bound's note would name a setting the user did not give
        ip.size = size
        note = pixel_bounds_note(low, high, int(ip.patch_size) * int(getattr(ip, "merge_size", 1)))
        if note:
            warnings.warn(note, stacklevel=2)


def pixel_bounds_note(min_pixels: int | None, max_pixels: int | None, factor: int) -> str | None:
    """A note when no square image fits between ``min_pixels`` and ``max_pixels`` at the sides the
    processor resizes to (multiples of ``factor``: 28 for Qwen2-VL / Qwen2.5-VL, 32 for Qwen3-VL),
    so images are fed smaller than min_pixels (the tiny twins' 3136 = 56 x 56 gave Qwen3-VL
    32 x 32, one image token); None when one fits or a bound is unset."""
    if max_pixels is not None and max_pixels < factor * factor:
        return (f"model.max_pixels={max_pixels} is under one image token ({factor}x{factor} = {factor * factor} px, this "
                f"model's image-token size): every image is fed at {factor * factor} px or more, over max_pixels")
    if min_pixels is None or max_pixels is None or min_pixels > max_pixels:
        return None
    k = max(1, math.isqrt(max_pixels // (factor * factor)))
    if (k * factor) ** 2 >= min_pixels:
        return None
    fits = ", ".join(str((j * factor) ** 2) for j in (k, k + 1))
    return (f"model.min_pixels={min_pixels} and model.max_pixels={max_pixels} hold no square image whose sides are "
            f"multiples of {factor} px (this model's image-token size): images are fed under min_pixels (a square one "
            f"at {k * factor}x{k * factor}); give bounds around a square of {factor} px multiples ({fits}, ...)")


QWEN2_VL = Family(
    name="qwen2_vl",
    model_types=("qwen2_vl",),
    model_class=Qwen2VLForConditionalGeneration,
    processor_class=Qwen2VLProcessor,
    vision_tower="model.visual",
    vision_projector=("model.visual.merger",),
    lora_target_regex=DECODER_LINEARS,
    box_frame="norm1000",
    vision_tokens=QWEN_VISION_TOKENS,
    images=GridImages(),
)
