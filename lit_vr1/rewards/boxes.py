"""Box parsing and coordinate frames, in one place.

A completion answers with boxes either as JSON (``[{"bbox_2d": [x1, y1, x2, y2],
"label": "..."}]``, Qwen2.5-VL's grounding format) inside ``<answer>...</answer>`` or a
```json fence, as a bare quadruple of numbers, or in Qwen2-VL's own syntax
(``<|box_start|>(x1,y1),(x2,y2)<|box_end|>``). Boxes are (x1, y1, x2, y2).

Parsing never raises: small JSON damage (single quotes, trailing commas, a missing
closing bracket, a truncated last item) is repaired, then a regex reads ``bbox_2d``
items, then bare quadruples.

A box the model wrote is a prediction even when it has no area (x2 <= x1, y2 <= y1, or a
non-finite coordinate): the rewards score it as a false positive (:func:`flatten_box`
turns it into a zero-area box that overlaps nothing), so writing such boxes is never free.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

import json_repair

from lit_vr1.models.families.base import BOX_FRAMES  # one list of the frames, beside the families that name theirs

ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
FENCE_RE = re.compile(r"```(?:json)?\s*(.*?)(?:```|$)", re.DOTALL)
NUM = r"(-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)"
QUAD_RE = re.compile(r"\[\s*" + r"\s*,\s*".join([NUM] * 4) + r"\s*\]")
ITEM_RE = re.compile(
    r"""["']?(?:bbox_2d|bbox)["']?\s*:\s*\[\s*""" + r"\s*,\s*".join([NUM] * 4) + r"""\s*\]"""
    r"""(?:[^{}\[\]]*?["']label["']\s*:\s*(?:"([^"]*)"|'([^']*)'))?"""
)
# Qwen2-VL's own grounding syntax: <|object_ref_start|>label<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>
# (norm1000), or what is left of it once the special tokens are skipped in decoding: "label(x1,y1),(x2,y2)"
# With its box tokens the pairs may be spaced; without them (decoded with special tokens skipped) only
# Qwen2-VL's own tight form "(521,185),(938,833)" is read, not any two pairs of numbers in prose.
_REF = r"(?:<\|object_ref_start\|>((?:(?!<\|object_ref_end\|>).)*?)<\|object_ref_end\|>\s*)?"
PAIR_RE = re.compile(_REF + r"<\|box_start\|>\s*\(\s*" + NUM + r"\s*,\s*" + NUM + r"\s*\)\s*,\s*\(\s*" + NUM
                     + r"\s*,\s*" + NUM + r"\s*\)\s*<\|box_end\|>", re.DOTALL)
TIGHT_PAIR_RE = re.compile(r"(?<![\d.,)])\((\d+),(\d+)\),\((\d+),(\d+)\)(?![\d.,(])")
LABEL_FIRST_RE = re.compile(r"""["']label["']\s*:\s*(?:"([^"]*)"|'([^']*)')\s*,\s*(?=["']?(?:bbox_2d|bbox))""")

Box = tuple[float, float, float, float]


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


def flatten_box(box: Box) -> Box:
    """A box as the rewards score it: unchanged when it has an area; else a zero-area box
    at its first corner, (x1, y1, max(x1, x2), max(y1, y2)), which overlaps nothing and
    so counts as a false positive ((0, 0, 0, 0) when a coordinate is not finite)."""
    if not all(math.isfinite(v) for v in box):
        return (0.0, 0.0, 0.0, 0.0)
    if not is_degenerate(box):
        return box
    x1, y1, x2, y2 = box
    return (x1, y1, max(x1, x2), max(y1, y2))


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
    """Mend the JSON damage small models make (single quotes, trailing commas, a truncated
    last item, missing closing brackets, text around the value) with ``json_repair``, the
    library VLM-R1 uses; "" when nothing can be made of it. Never raises."""
    try:
        return json_repair.repair_json(text, skip_json_loads=True)
    except (RecursionError, ValueError, TypeError, IndexError):
        return ""


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

    Tries JSON in the answer (or in a ```json fence inside it) as written; then repaired
    (:func:`repair_json`), unless a regex over ``"bbox_2d": [...]`` items (with their
    labels) or over bracketed quadruples of numbers finds more boxes. Boxes with no area
    are dropped unless ``keep_degenerate``.
    """
    text = answer_text(completion)
    boxes = _strict_json_boxes(text)
    if not boxes:
        # repaired JSON may keep only one of several values ("[1,2,3,4] [5,6,7,8]" -> the
        # last): the regex readings win when they find more boxes
        scanned = _item_boxes(text) or _quad_boxes(text) or _pair_boxes(text)
        repaired = _repaired_json_boxes(text)
        boxes = repaired if len(repaired) >= len(scanned) else scanned
    return boxes if keep_degenerate else [b for b in boxes if not is_degenerate(b.box)]


def _decoded_boxes(text: str) -> list[ParsedBox]:
    try:
        return _boxes_from_json(json.loads(text))
    except (json.JSONDecodeError, ValueError, RecursionError):
        return []


def _strict_json_boxes(text: str) -> list[ParsedBox]:
    for cand in _json_candidates(text):
        boxes = _decoded_boxes(cand)
        if boxes:
            return boxes
    return []


def _repaired_json_boxes(text: str) -> list[ParsedBox]:
    for cand in _json_candidates(text):
        boxes = _decoded_boxes(repair_json(cand))
        if boxes:
            return boxes
    return []


def _item_boxes(text: str) -> list[ParsedBox]:
    """``"bbox_2d": [...]`` items read by regex, with their labels (before or after the box)."""
    labels_first = {m.end(): m.group(1) or m.group(2) for m in LABEL_FIRST_RE.finditer(text)}
    out = []
    for m in ITEM_RE.finditer(text):
        label = m.group(5) or m.group(6) or labels_first.get(m.start(), "")
        out.append(ParsedBox(tuple(float(v) for v in m.groups()[:4]), label or ""))  # type: ignore[arg-type]
    return out


def _quad_boxes(text: str) -> list[ParsedBox]:
    """Every bracketed quadruple of numbers."""
    return [ParsedBox(tuple(float(v) for v in m)) for m in QUAD_RE.findall(text)]  # type: ignore[arg-type]


def _pair_boxes(text: str) -> list[ParsedBox]:
    """Qwen2-VL's grounding answers: ``<|box_start|>(x1,y1),(x2,y2)<|box_end|>``, labelled by the
    ``<|object_ref_start|>...<|object_ref_end|>`` before it when there is one; without the box
    tokens, only its tight form ``(x1,y1),(x2,y2)`` (integers, no spaces)."""
    found = [ParsedBox(tuple(float(v) for v in m.groups()[1:]), (m.group(1) or "").strip())  # type: ignore[arg-type]
             for m in PAIR_RE.finditer(text)]
    return found or [ParsedBox(tuple(float(v) for v in m.groups())) for m in TIGHT_PAIR_RE.finditer(text)]  # type: ignore[arg-type]


def first_box(completion: str) -> Box | None:
    """The first box a completion's answer writes, or None. It may have no area (see
    :func:`is_degenerate`): a REC answer is its first box, so a degenerate first box is a
    wrong answer, not a cue to read on to the next one."""
    boxes = parse_boxes(completion, keep_degenerate=True)
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


DEFAULT_FRAME = "input_pixels"  # when neither the reward nor the sample names one


def frame_of(own: str | None, ctx) -> str:
    """The frame to read a completion's boxes in: the reward's own ``box_frame`` when set,
    else the sample's (the policy's family, set by the rollout), else input_pixels."""
    return own or getattr(ctx, "box_frame", None) or DEFAULT_FRAME


def check_optional_frame(frame: str | None) -> str | None:
    """``frame`` checked, None allowed (a reward that takes the model's frame)."""
    return None if frame is None else check_frame(frame)


def check_frame(frame: str) -> str:
    if frame not in BOX_FRAMES:
        raise ValueError(f"box frame {frame!r} is not valid; choose one of {', '.join(BOX_FRAMES)}")
    return frame


def frame_extent(frame: str, input_size: tuple[int, int]) -> tuple[float, float] | None:
    """(width, height) of the coordinate space of ``frame``: the model input's for
    "input_pixels", 1000 x 1000 for "norm1000", 1 x 1 for "norm1"; None for "original_pixels"."""
    check_frame(frame)
    return {"input_pixels": input_size, "norm1000": (1000, 1000), "norm1": (1, 1)}.get(frame)


def to_original(box: Box, frame: str, input_size: tuple[int, int], original_size: tuple[int, int]) -> Box:
    """Map a predicted box written in ``frame`` to original-image pixels.

    Frames: "input_pixels" (absolute pixels of the resized model input, Qwen2.5-VL),
    "original_pixels" (already original), "norm1000" (0-1000, Qwen2-VL and InternVL),
    "norm1" (0-1). Sizes are (width, height).
    """
    extent = frame_extent(frame, input_size)
    return box if extent is None else rescale_box(box, extent, original_size)


def from_original(box: Box, frame: str, input_size: tuple[int, int], original_size: tuple[int, int]) -> Box:
    """The inverse of :func:`to_original`: a box in original-image pixels as written in ``frame``."""
    extent = frame_extent(frame, input_size)
    return box if extent is None else rescale_box(box, original_size, extent)


def answer_in_frame(text: str, frame: str, input_size: tuple[int, int] | None,
                    original_size: tuple[int, int] | None) -> str:
    """A box answer written in original-image pixels (a solution, as the data give it) with
    every bracketed quadruple ``[x1, y1, x2, y2]`` rewritten in ``frame``, the frame the model
    writes and the rewards and evaluation read (Qwen2.5-VL: pixels of the resized input):
    what supervised steps must teach, or a model trained on images the processor resizes
    learns original pixels that everything downstream reads as input pixels. Pixel and
    0-1000 coordinates are rounded to integers (as Qwen-VL writes them), 0-1 to 3 decimals.
    Unchanged where the frame's mapping is the identity (original pixels; input pixels of an
    image the processor did not resize) or the image size is unknown."""
    if frame == "original_pixels" or original_size is None:
        return text
    if frame == "input_pixels" and (input_size is None or tuple(input_size) == tuple(original_size)):
        return text

    def write(v: float) -> str:
        return f"{round(v, 3):g}" if frame == "norm1" else str(int(round(v)))

    def convert(match: re.Match) -> str:
        box = from_original(tuple(float(g) for g in match.groups()), frame, input_size, original_size)
        return "[" + ", ".join(write(v) for v in box) + "]"

    return QUAD_RE.sub(convert, text)


def predicted_boxes(completion: str, image_size: tuple[int, int] | None, input_size: tuple[int, int] | None,
                    frame: str, keep_degenerate: bool = False) -> list[ParsedBox]:
    """A completion's boxes in original-image pixels, in the order written.

    ``image_size`` is the original (width, height) of the first image, ``input_size`` the
    size the model saw (None: the original). Without an image only "original_pixels" maps;
    other frames raise ValueError (a sample without an image cannot be scored in them).
    Boxes with no area are dropped, or with ``keep_degenerate`` kept as zero-area boxes
    (:func:`flatten_box`): the rewards keep them, so that they count as false positives.
    """
    check_frame(frame)
    boxes = parse_boxes(completion, keep_degenerate=True)
    if frame != "original_pixels":
        if image_size is None:
            raise ValueError(f"box frame {frame!r} needs the image size, and the sample has no image")
        size_in = input_size or image_size
        boxes = [ParsedBox(to_original(b.box, frame, size_in, image_size), b.label) for b in boxes]
    if keep_degenerate:
        return [ParsedBox(flatten_box(b.box), b.label) for b in boxes]
    return [b for b in boxes if not is_degenerate(b.box)]


def solution_boxes(solution: Any) -> list[ParsedBox]:
    """Ground-truth boxes (original pixels) of a sample's solution, in any of the data
    formats we read: a JSON list of {"bbox_2d", "label"} (VLM-R1 OVD), a list of
    [category, box] pairs (Vision-R1 detection), a bare quadruple (VLM-R1 REC), as a
    string or already decoded. Degenerate boxes are kept: the data's problem, not the
    model's (the data loader reports them)."""
    if isinstance(solution, str):
        return parse_boxes(solution, keep_degenerate=True)
    return _boxes_from_json(solution)


FENCED_RE = re.compile(r"```(?:json)?\s*(.*?)\s*```", re.DOTALL)


def unfenced_answer(text: str) -> str:
    """The answer of a solution string: inside its last ``<answer>`` tags (:func:`answer_text`),
    stripped, without a fenced block's ```` ``` ```` / ```` ```json ```` marks."""
    text = answer_text(text).strip()
    fenced = FENCED_RE.fullmatch(text)
    return fenced.group(1).strip() if fenced else text


NO_OBJECTS_WORDS = ("none", "null")  # VLM-R1's OVD data answers an image without the object <answer>None</answer>


def is_empty_solution(solution: Any) -> bool:
    """Whether a solution says "no objects": None, an empty list or dict, or a string that is
    the JSON ``[]`` / ``{}`` or the word None (VLM-R1's OVD negatives; any case), inside
    <answer> tags or a fenced block too. An empty string is not: it is what a row without a
    ``solution`` field reads as (a missing label), and scored as an image without objects it
    gave full reward to any completion that wrote no box."""
    if solution is None:
        return True
    if isinstance(solution, (list, tuple, dict)):
        return len(solution) == 0
    if isinstance(solution, str):
        text = unfenced_answer(solution)
        if not text:
            return False
        if text.lower() in NO_OBJECTS_WORDS:
            return True
        try:
            return json.loads(text) in ([], {})
        except (json.JSONDecodeError, ValueError):
            return False
    return False


def box_solution_problem(ctx: Any, empty_ok: bool) -> str | None:
    """Why the solution of ``ctx`` (a :class:`~lit_vr1.rewards.base.SampleContext`, or
    anything with ``solution`` and ``metadata``) gives a box reward nothing to compare with,
    or None: it holds no box, and is not an image without objects (``empty_ok``: detection,
    where [] or ``metadata num_instances: 0`` says so; REC always names one object)."""
    if solution_boxes(ctx.solution):
        return None
    if empty_ok and (is_empty_solution(ctx.solution) or (getattr(ctx, "metadata", None) or {}).get("num_instances") == 0):
        return None
    text = repr(ctx.solution) if not isinstance(ctx.solution, str) else repr(ctx.solution[:200])
    what = "no solution (field 'solution' missing or empty)" if ctx.solution == "" else f"solution {text} holds no box"
    return what + ("; for an image without objects give [] or metadata num_instances: 0" if empty_ok
                   else "; a box is [x1, y1, x2, y2] in pixels of the image")

