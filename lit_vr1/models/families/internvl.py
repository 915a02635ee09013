"""InternVL (transformers' native ``InternVLForConditionalGeneration``, the ``-hf``
checkpoints such as ``OpenGVLab/InternVL3-1B-hf``): vision tower ``model.vision_tower``
(InternViT), projector ``model.multi_modal_projector`` beside it (pixel shuffle + MLP),
language model ``model.language_model``. Boxes in relative 0-1000 coordinates.

Images are cut into square tiles (``image_processor.size``, 448 px in the released
models): the image is resized onto the grid of cols x rows tiles whose aspect ratio is
closest to its own (min_patches <= cols*rows <= max_patches), plus one thumbnail tile of
the whole image when there is more than one. ``pixel_values`` is (tiles, 3, H, W); each
tile becomes ``image_seq_length`` ``<IMG_CONTEXT>`` tokens between ``<img>`` and ``</img>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor
from transformers import InternVLForConditionalGeneration, InternVLProcessor
from transformers.models.got_ocr2.image_processing_got_ocr2 import get_optimal_tiled_canvas

from lit_vr1.models.families.base import DECODER_LINEARS, Family

INTERNVL_VISION_TOKENS = ("<img>", "</img>", "<IMG_CONTEXT>", "<video>")


def _tile(processor: Any) -> tuple[int, int]:
    size = processor.image_processor.size
    size = size if isinstance(size, dict) else vars(size)
    return int(size["height"]), int(size["width"])


@dataclass(frozen=True)
class TileImages:
    """InternVL's layout: an image owns as many ``pixel_values`` rows as it has tiles,
    read from its ``<img>...</img>`` span: context tokens / ``image_seq_length``."""

    def pixel_rows(self, inputs: dict[str, Tensor], processor: Any) -> list[int]:
        if "pixel_values" not in inputs:
            return []
        start, end, ctx = processor.start_image_token_id, processor.end_image_token_id, processor.image_token_id
        per_tile = int(processor.image_seq_length)
        out = []
        for ids in inputs["input_ids"].tolist():
            inside, count = False, 0
            for t in ids:
                if t == start:
                    inside, count = True, 0
                elif t == end and inside:
                    if count % per_tile:
                        raise ValueError(f"an InternVL image span holds {count} {processor.image_token} tokens, "
                                         f"not a multiple of image_seq_length={per_tile}")
                    out.append(count // per_tile)
                    inside = False
                elif t == ctx and inside:
                    count += 1
        if sum(out) != inputs["pixel_values"].shape[0]:
            raise ValueError(f"the prompts' <img> spans account for {sum(out)} tiles, but pixel_values holds "
                             f"{inputs['pixel_values'].shape[0]}")
        return out

    def input_sizes(self, inputs: dict[str, Tensor], image_sizes: list[tuple[int, int]],
                    processor: Any) -> list[tuple[int, int]]:
        """(width, height) of the tile canvas each image was resized onto: cols x rows
        tiles (one tile when the image was not cut)."""
        tiles = self.pixel_rows(inputs, processor)
        if len(tiles) != len(image_sizes):
            raise ValueError(f"{len(image_sizes)} image sizes given for {len(tiles)} images in the batch")
        th, tw = _tile(processor)
        ip = processor.image_processor
        out = []
        for n, (w, h) in zip(tiles, image_sizes):
            if n == 1:
                out.append((tw, th))
                continue
            cols, rows = get_optimal_tiled_canvas((h, w), (th, tw), int(ip.min_patches), int(ip.max_patches))
            if cols * rows + 1 != n:
                raise ValueError(f"an image of {w}x{h} was cut into {n} tiles, but its tile grid is {cols}x{rows}")
            out.append((cols * tw, rows * th))
        return out

    def placeholder_tokens(self, processor: Any, counted: Any) -> list[int]:
        """``<img>``, ``image_seq_length`` context tokens per tile, ``</img>``. Counted from the
        tiles, not from ``num_image_tokens``: transformers 5.24 counted ``<img>``/``</img>`` in it,
        5.25 no longer does."""
        return [2 + int(processor.image_seq_length) * int(n) for n in counted.num_image_patches]

    def set_pixel_bounds(self, processor: Any, min_pixels: int | None, max_pixels: int | None) -> None:
        if min_pixels is None and max_pixels is None:
            return
        th, tw = _tile(processor)
        raise ValueError(
            f"min_pixels/max_pixels do not apply to InternVL: it cuts images into {tw}x{th} tiles "
            f"(image_processor.min_patches..max_patches of them) instead of resizing to a pixel budget; "
            f"leave min_pixels and max_pixels unset"
        )


INTERNVL = Family(
    name="internvl",
    model_types=("internvl",),
    model_class=InternVLForConditionalGeneration,
    processor_class=InternVLProcessor,
    vision_tower="model.vision_tower",
    vision_projector=("model.multi_modal_projector",),
    lora_target_regex=DECODER_LINEARS,
    box_frame="norm1000",
    vision_tokens=INTERNVL_VISION_TOKENS,
    images=TileImages(),
    hints={"internvl_chat": "the original InternVL checkpoints (remote code) are not supported; use their "
                            "transformers-native '-hf' conversion, e.g. OpenGVLab/InternVL3-1B-hf"},
)
