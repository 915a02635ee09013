"""Box parsing and coordinate frames, in one place.

A completion answers with boxes either as JSON (``[{"bbox_2d": [x1, y1, x2, y2],
"label": "..."}]``, Qwen2.5-VL's grounding format) inside ``<answer>...</answer>`` or a
```json fence, or as a bare quadruple of numbers. Boxes are (x1, y1, x2, y2).

Parsing never raises: small JSON damage (single quotes, trailing commas, a missing
closing bracket, a truncated last item) is repaired, then a regex reads ``bbox_2d``
items, then bare quadruples. Boxes with no area are dropped.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
FENCE_RE = re.compile(r"```(?:json)?\s*(.*?)(?:```|$)", re.DOTALL)
NUM = r"(-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)"
QUAD_RE = re.compile(r"\[\s*" + r"\s*,\s*".join([NUM] * 4) + r"\s*\]")
ITEM_RE = re.compile(
    r"""["']?(?:bbox_2d|bbox)["']?\s*:\s*\[\s*""" + r"\s*,\s*".join([NUM] * 4) + r"""\s*\]"""
    r"""(?:[^{}\[\]]*?["']label["']\s*:\s*(?:"([^"]*)"|'([^']*)'))?"""
)
LABEL_FIRST_RE = re.compile(r"""["']label["']\s*:\s*(?:"([^"]*)"|'([^']*)')\s*,\s*(?=["']?(?:bbox_2d|bbox))""")

Box = tuple[float, float, float, float]
BOX_FRAMES = ("input_pixels", "original_pixels", "norm1000", "norm1")


@dataclass
class ParsedBox:
    """One box with its label (may be empty); the frame is the caller's to know."""

    box: Box
    label: str = ""


def answer_text(completion: str) -> str:
    """The answer part of a completion: inside the last complete ``<answer>...</answer>``;
    else after the last ``<answer>`` (a truncated answer); else after the last ``</think>``
    (so boxes named while reasoning are not taken for the answer); else the whole text."""
    found = ANSWER_RE.findall(completion)
    if found:
        return found[-1]
    for tag in ("<answer>", "</think>"):
        if tag in completion:
            return completion.rsplit(tag, 1)[1]
    return completion


def is_degenerate(box: Box) -> bool:
    """True for a box with no area (x2 <= x1 or y2 <= y1) or a non-finite coordinate."""
    return not all(math.isfinite(v) for v in box) or box[2] <= box[0] or box[3] <= box[1]


def _as_box(raw: Any) -> Box | None:
    if isinstance(raw, (list, tuple)) and len(raw) == 4:
        try:
            box = tuple(float(v) for v in raw)
        except (TypeError, ValueError, OverflowError):  # OverflowError: a JSON integer beyond float range
            return None
        if all(isinstance(v, (int, float, str)) and not isinstance(v, bool) for v in raw):
            return box  # type: ignore[return-value]
    return None


def _boxes_from_json(obj: Any) -> list[ParsedBox]:
    """Boxes of a decoded JSON value: a list of {"bbox_2d"|"bbox", "label"} items, one
    such item, a list of quadruples, one quadruple, or Vision-R1's [label, box] pairs."""
    if isinstance(obj, dict):
        obj = [obj]
    if not isinstance(obj, list):
        return []
    if _as_box(obj) is not None and not any(isinstance(v, (list, dict)) for v in obj):
        return [ParsedBox(_as_box(obj))]  # type: ignore[arg-type]
    out = []
    for item in obj:
        box, label = None, ""
        if isinstance(item, dict):
            box = _as_box(item.get("bbox_2d", item.get("bbox")))
            label = item.get("label", "")
        elif isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], str):
            label, box = item[0], _as_box(item[1])  # Vision-R1: [category, [x1, y1, x2, y2]]
        else:
            box = _as_box(item)
        if box is not None:
            out.append(ParsedBox(box, str(label) if label is not None else ""))
    return out


def repair_json(text: str) -> str:
    """Mend the JSON damage small models make: single quotes, trailing commas, a
    truncated last item and missing closing brackets."""
    s = text.strip()
    if "'" in s and '"' not in s:
        s = s.replace("'", '"')
    s = re.sub(r",\s*([\]}])", r"\1", s)
    # drop an unfinished trailing item, then close what is still open
    stack = []
    in_str = False
    last_complete = 0
    for i, ch in enumerate(s):
        if ch == '"' and (i == 0 or s[i - 1] != "\\"):
            in_str = not in_str
        elif not in_str:
            if ch in "[{":
                stack.append(ch)
            elif ch in "]}" and stack:
                stack.pop()
                if len(stack) <= 1:
                    last_complete = i + 1
    if stack:
        s = s[:last_complete].rstrip().rstrip(",") if last_complete else s
        depth = []
        in_str = False
        for i, ch in enumerate(s):
            if ch == '"' and (i == 0 or s[i - 1] != "\\"):
                in_str = not in_str
            elif not in_str and ch in "[{":
                depth.append(ch)
            elif not in_str and ch in "]}" and depth:
                depth.pop()
        s += "".join("]" if ch == "[" else "}" for ch in reversed(depth))
    return s


def _json_candidates(text: str) -> list[str]:
    out = []
    fence = FENCE_RE.search(text)
    if fence:
        out.append(fence.group(1))
    stripped = text.strip()
    out.append(stripped)
    start = min((i for i in (stripped.find("["), stripped.find("{")) if i >= 0), default=-1)
    if start > 0:
        out.append(stripped[start:])
    return out


def parse_boxes(completion: str, keep_degenerate: bool = False) -> list[ParsedBox]:
    """All boxes of a completion's answer, in reading order; [] when it names none. Never raises.

    Tries JSON in the answer (or in a ```json fence inside it), as written and then
    repaired; then a regex over ``"bbox_2d": [...]`` items (with their labels); then every
    bracketed quadruple of numbers. Boxes with no area are dropped unless ``keep_degenerate``.
    """
    text = answer_text(completion)
    boxes: list[ParsedBox] = []
    for cand in _json_candidates(text):
        for attempt in (cand, repair_json(cand)):
            try:
                boxes = _boxes_from_json(json.loads(attempt))
            except (json.JSONDecodeError, ValueError, RecursionError):
                continue
            if boxes:
                break
        if boxes:
            break
    if not boxes:
        labels_first = {m.end(): m.group(1) or m.group(2) for m in LABEL_FIRST_RE.finditer(text)}
        for m in ITEM_RE.finditer(text):
            label = m.group(5) or m.group(6) or labels_first.get(m.start(), "")
            boxes.append(ParsedBox(tuple(float(v) for v in m.groups()[:4]), label or ""))
    if not boxes:
        boxes = [ParsedBox(tuple(float(v) for v in m)) for m in QUAD_RE.findall(text)]
    return boxes if keep_degenerate else [b for b in boxes if not is_degenerate(b.box)]


def first_box(completion: str) -> Box | None:
    """The first box (with an area) of a completion, or None."""
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


def check_frame(frame: str) -> str:
    if frame not in BOX_FRAMES:
        raise ValueError(f"box frame {frame!r} is not valid; choose one of {', '.join(BOX_FRAMES)}")
    return frame


def to_original(box: Box, frame: str, input_size: tuple[int, int], original_size: tuple[int, int]) -> Box:
    """Map a predicted box written in ``frame`` to original-image pixels.

    Frames: "input_pixels" (absolute pixels of the resized model input, Qwen2.5-VL),
    "original_pixels" (already original), "norm1000" (0-1000, Qwen2-VL and InternVL),
    "norm1" (0-1). Sizes are (width, height).
    """
    check_frame(frame)
    if frame == "input_pixels":
        return rescale_box(box, input_size, original_size)
    if frame == "original_pixels":
        return box
    if frame == "norm1000":
        return rescale_box(box, (1000, 1000), original_size)
    return rescale_box(box, (1, 1), original_size)


def predicted_boxes(completion: str, image_size: tuple[int, int] | None, input_size: tuple[int, int] | None,
                    frame: str) -> list[ParsedBox]:
    """A completion's boxes in original-image pixels (degenerate ones dropped).

    ``image_size`` is the original (width, height) of the first image, ``input_size`` the
    size the model saw (None: the original). Without an image only "original_pixels" maps;
    other frames raise ValueError (a sample without an image cannot be scored in them).
    """
    check_frame(frame)
    boxes = parse_boxes(completion)
    if frame == "original_pixels":
        return boxes
    if image_size is None:
        raise ValueError(f"box frame {frame!r} needs the image size, and the sample has no image")
    size_in = input_size or image_size
    out = [ParsedBox(to_original(b.box, frame, size_in, image_size), b.label) for b in boxes]
    return [b for b in out if not is_degenerate(b.box)]


def solution_boxes(solution: Any) -> list[ParsedBox]:
    """Ground-truth boxes (original pixels) of a sample's solution, in any of the data
    formats we read: a JSON list of {"bbox_2d", "label"} (VLM-R1 OVD), a list of
    [category, box] pairs (Vision-R1 detection), a bare quadruple (VLM-R1 REC), as a
    string or already decoded. Degenerate boxes are kept: the data's problem, not the
    model's (the data loader reports them)."""
    if isinstance(solution, str):
        return parse_boxes(solution, keep_degenerate=True)
    return _boxes_from_json(solution)
