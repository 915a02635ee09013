"""Box parsing and coordinate frames, in one place.

A completion answers with boxes either as JSON (``[{"bbox_2d": [x1, y1, x2, y2],
"label": "..."}]``, Qwen2.5-VL's grounding format) inside ``<answer>...</answer>`` or a
```json fence, or as a bare quadruple of numbers. Boxes are (x1, y1, x2, y2).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
FENCE_RE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)
QUAD_RE = re.compile(r"\[\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*\]")

Box = tuple[float, float, float, float]


@dataclass
class ParsedBox:
    """One predicted box in the frame it was written in, with its label (may be empty)."""

    box: Box
    label: str = ""


def answer_text(completion: str) -> str:
    """The text inside the last complete ``<answer>...</answer>``, else the whole completion."""
    found = ANSWER_RE.findall(completion)
    return found[-1] if found else completion


def _boxes_from_json(obj: object) -> list[ParsedBox]:
    items = obj if isinstance(obj, list) else [obj]
    out = []
    for item in items:
        if isinstance(item, dict):
            raw = item.get("bbox_2d", item.get("bbox"))
            label = str(item.get("label", ""))
        else:
            raw, label = item, ""
        if isinstance(raw, (list, tuple)) and len(raw) == 4 and all(isinstance(v, (int, float)) for v in raw):
            out.append(ParsedBox(tuple(float(v) for v in raw), label))
    return out


def parse_boxes(completion: str) -> list[ParsedBox]:
    """All boxes of a completion, in reading order; [] when it names none.

    Tries JSON in the answer (or in a ```json fence inside it), then falls back to
    every bracketed number quadruple in the answer text.
    """
    text = answer_text(completion)
    fence = FENCE_RE.search(text)
    candidates = [fence.group(1)] if fence else []
    candidates.append(text.strip())
    for cand in candidates:
        try:
            boxes = _boxes_from_json(json.loads(cand))
        except (json.JSONDecodeError, ValueError):
            continue
        if boxes:
            return boxes
    return [ParsedBox(tuple(float(v) for v in m)) for m in QUAD_RE.findall(text)]


def first_box(completion: str) -> Box | None:
    """The first box of a completion, or None."""
    boxes = parse_boxes(completion)
    return boxes[0].box if boxes else None


def rescale_box(box: Box, from_size: tuple[int, int], to_size: tuple[int, int]) -> Box:
    """Map a box from an image of ``from_size`` (width, height) to one of ``to_size``.

    Qwen2.5-VL answers in absolute pixels of the resized model-input image; VLM-R1
    (2025-06 update) maps them back to the original image before scoring. So do we.
    """
    sx = to_size[0] / from_size[0]
    sy = to_size[1] / from_size[1]
    x1, y1, x2, y2 = box
    return (x1 * sx, y1 * sy, x2 * sx, y2 * sy)


def is_degenerate(box: Box) -> bool:
    """True for a box with no area (x2 <= x1 or y2 <= y1)."""
    return box[2] <= box[0] or box[3] <= box[1]


BOX_FRAMES = ("input_pixels", "original_pixels", "norm1000", "norm1")


def to_original(box: Box, frame: str, input_size: tuple[int, int], original_size: tuple[int, int]) -> Box:
    """Map a predicted box written in ``frame`` to original-image pixels.

    Frames: "input_pixels" (absolute pixels of the resized model input, Qwen2.5-VL),
    "original_pixels" (already original), "norm1000" (0-1000, Qwen2-VL and InternVL),
    "norm1" (0-1). Sizes are (width, height).
    """
    if frame == "input_pixels":
        return rescale_box(box, input_size, original_size)
    if frame == "original_pixels":
        return box
    if frame == "norm1000":
        return rescale_box(box, (1000, 1000), original_size)
    if frame == "norm1":
        return rescale_box(box, (1, 1), original_size)
    raise ValueError(f"box frame {frame!r} is not valid; choose one of {', '.join(BOX_FRAMES)}")
