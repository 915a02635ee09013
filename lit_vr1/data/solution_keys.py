"""What the items of a ground-truth box answer are called, checked when the data are read.

A solution written as Qwen2.5-VL JSON items (``[{"bbox_2d": [x1, y1, x2, y2], "label": "cat"}]``)
is read by key. Converted datasets often name things otherwise, and each such item used to be
read without a word, but wrongly:

- ``"bbox"``: COCO's key, whose box is ``[x, y, width, height]``; read as corners, a box
  [20, 10, 60, 50] (truly [20, 10, 80, 60]) made a right answer score mAP 0.1;
- ``"category"`` (or another name) instead of ``"label"``: the label read as "", and a right,
  labelled answer scored mAP 0;
- a ``bbox_2d`` of five numbers: the row read as one without a box.

Only items with a box key are read (other JSON answers are not boxes; ``data.check_boxes:
false`` turns every box check off). :func:`solution_key_problem` says what is wrong with the
item and what to write.
"""

from __future__ import annotations

import json
from typing import Any

from lit_vr1.rewards.boxes import unfenced_answer

# keys other datasets give an object's category (ours, Qwen2.5-VL's and VLM-R1's is "label")
LABEL_LOOKALIKES = ("category", "category_name", "class", "class_name", "cls", "name", "labels", "categories")


def decoded_items(solution: Any) -> list | None:
    """The items of a solution: a decoded list as it is, a string holding a JSON list or object
    (inside ``<answer>`` tags or a fenced block too) decoded; None for anything else (a REC
    quadruple string is a list of numbers, whose items are not objects)."""
    if isinstance(solution, list):
        return solution
    if not isinstance(solution, str):
        return None
    text = unfenced_answer(solution)
    if not text.startswith(("[", "{")):
        return None
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, ValueError):
        return None
    return [value] if isinstance(value, dict) else value if isinstance(value, list) else None


def item_problem(item: Any) -> str | None:
    """What is wrong with one item of a box answer, or None. Only objects with a box key
    (``bbox_2d`` or ``bbox``) are read: other JSON answers (``{"name": "Alice"}``) are not boxes,
    and Vision-R1's [category, box] pairs are left to the box checks (an empty category is a
    class-agnostic box, which precision, recall and IoU score without labels)."""
    if not isinstance(item, dict) or not ("bbox_2d" in item or "bbox" in item):
        return None
    if "bbox" in item and "bbox_2d" not in item:
        return ("gives its box under 'bbox', COCO's key for [x, y, width, height]; lit-vr1 reads [x1, y1, x2, y2] "
                "under 'bbox_2d' (Qwen2.5-VL's grounding format): convert COCO boxes (x2 = x + width, y2 = y + "
                "height), or rename the key to 'bbox_2d' if they are corners already")
    box = item.get("bbox_2d")
    if box is not None and (not isinstance(box, list) or len(box) != 4):
        size = f"{len(box)} values" if isinstance(box, list) else f"a {type(box).__name__}"
        return f"has a 'bbox_2d' of {size}; a box is [x1, y1, x2, y2]"
    if "label" not in item:
        near = [k for k in LABEL_LOOKALIKES if k in item]
        if near:
            return (f"names its object under {near[0]!r}, which is not read (the label would be empty and a right "
                    f"answer would score 0 in the label-matching rewards); rename it to 'label'")
    return None


def solution_key_problem(solution: Any, field: str) -> str | None:
    """The first item of ``solution`` (its ``field``, for the message) read wrongly by key, as
    "<field> item <k> <problem>", or None. Items are counted from 1, as lines are."""
    for k, item in enumerate(decoded_items(solution) or [], start=1):
        problem = item_problem(item)
        if problem:
            return f"{field} item {k} {problem}"
    return None
