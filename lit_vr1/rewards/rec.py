"""Rewards for referring-expression comprehension (one box per prompt) and answer format."""

from __future__ import annotations

import json
import re
import warnings

import torch
from torchmetrics.functional.detection import intersection_over_union

from lit_vr1.rewards.base import Reward, SampleContext
from lit_vr1.rewards.boxes import (
    answer_text,
    box_solution_problem,
    check_optional_frame,
    first_box,
    frame_of,
    is_degenerate,
    solution_boxes,
    to_original,
)

_LAYOUT_RE = re.compile(r"\s*<think>(.*?)</think>\s*<answer>(.*?)</answer>\s*", re.DOTALL)
_TAG_RE = re.compile(r"</?(?:think|answer)>")


def think_answer_ok(completion: str) -> bool:
    """True when the whole completion is one ``<think>...</think>`` block then one
    ``<answer>...</answer>`` block, both non-empty, neither holding the tags again
    (matched across lines: the seed repos' regex without DOTALL missed multi-line thinking)."""
    m = _LAYOUT_RE.fullmatch(completion)
    return bool(m) and all(body.strip() and not _TAG_RE.search(body) for body in m.groups())


def rec_ious(completions: list[str], contexts: list[SampleContext], frame: str | None = None) -> list[float]:
    """IoU of each completion's first box with the solution's box, both in original pixels.

    The prediction is mapped from ``frame`` (None: each sample's ``box_frame``, see
    :func:`~lit_vr1.rewards.boxes.frame_of`) to the first image's original size; the
    solution is written in original pixels (VLM-R1's REC data). A completion without a
    box, or whose first box has no area, scores 0 (a later box does not stand in for it).
    IoU comes from torchmetrics, in float64 (float32 is off by up to 1e-5).
    """
    check_optional_frame(frame)
    preds, targets, valid = [], [], []
    for completion, ctx in zip(completions, contexts):
        ctx_frame = frame_of(frame, ctx)
        gts = solution_boxes(ctx.solution)
        gt = gts[0].box if gts else None
        if gt is None:
            raise ValueError(f"sample {ctx.id!r}: solution {ctx.solution!r} holds no box")
        if ctx.image_size is None and ctx_frame != "original_pixels":
            raise ValueError(f"box frame {ctx_frame!r} needs the image size, and the sample has no image")
        box = first_box(completion)  # the first box written, with or without an area
        if box is not None and ctx_frame != "original_pixels":
            box = to_original(box, ctx_frame, ctx.input_size, ctx.image_size)
        ok = box is not None and not is_degenerate(box)
        preds.append(box if ok else (0.0, 0.0, 1.0, 1.0))
        targets.append(gt)
        valid.append(ok)
    if not preds:
        return []
    iou = intersection_over_union(
        torch.tensor(preds, dtype=torch.float64), torch.tensor(targets, dtype=torch.float64), aggregate=False
    ).diagonal()
    return [float(v) if ok else 0.0 for v, ok in zip(iou, valid)]


def differentiate(value: float, zero_below: float | None, one_above: float | None) -> float:
    """Vision-R1's differentiation rule (Zhan et al., 2025, progressive rule refinement):
    a score under ``zero_below`` counts as 0 and one at or over ``one_above`` as 1 (the
    paper's Eq. 8, as :class:`~lit_vr1.rewards.vision_r1.ThresholdStage` applies it), so
    loose answers earn nothing and good ones earn full credit; in between it is kept as is."""
    if one_above is not None and value >= one_above:
        return 1.0
    if zero_below is not None and value < zero_below:
        return 0.0
    return value


class IoUReward(Reward):
    """REC IoU reward (VLM-R1): the IoU of the predicted box with the ground truth.

    Args:
        threshold: when set, the reward is 1.0 for IoU > threshold and 0.0 otherwise
            (the strict Acc@0.5 rule for threshold=0.5); when None, the IoU itself.
        zero_below: Vision-R1's differentiation of the continuous IoU (see
            :func:`differentiate`): an IoU under it scores 0, punishing loose, hedging boxes,
            which a plain IoU reward teaches a weak model. Not together with ``threshold``.
        one_above: an IoU at or over it scores 1 (Vision-R1's differentiation).
        box_frame: frame the model writes boxes in (see ``lit_vr1.rewards.boxes.BOX_FRAMES``);
            None (default): the policy's own, from its model family (or the module's
            ``box_frame``), as validation reads it.
    """

    default_name = "iou"

    def __init__(self, threshold: float | None = None, zero_below: float | None = None, one_above: float | None = None,
                 box_frame: str | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        check_optional_frame(box_frame)
        if threshold is not None and (zero_below is not None or one_above is not None):
            raise ValueError("IoUReward: give either threshold or zero_below/one_above, not both")
        if zero_below is not None and one_above is not None and zero_below > one_above:
            raise ValueError(f"IoUReward: zero_below={zero_below} must not exceed one_above={one_above}")
        self.threshold = threshold
        self.zero_below, self.one_above = zero_below, one_above
        self.box_frame = box_frame

    def solution_problem(self, ctx: SampleContext) -> str | None:
        return box_solution_problem(ctx, empty_ok=False)

    def score(self, completions: list[str], contexts: list[SampleContext]) -> list[float]:
        if not getattr(self, "_warned_multi", False):
            multi = next((c for c in contexts if len(solution_boxes(c.solution)) > 1), None)
            if multi is not None:
                self._warned_multi = True
                warnings.warn(f"{type(self).__name__} ({self.name!r}) scores the first box of an answer against the "
                              f"first box of the solution, but sample {multi.id!r} ({multi.source or 'no source'}) has "
                              f"{len(solution_boxes(multi.solution))} solution boxes; for several objects per image use "
                              "DetectionMAP, ODLength, DetectionWeightedSum or the Vision-R1 rewards", stacklevel=2)
        ious = rec_ious(completions, contexts, self.box_frame)
        if self.threshold is not None:
            return [1.0 if v > self.threshold else 0.0 for v in ious]
        return [differentiate(v, self.zero_below, self.one_above) for v in ious]


class ThinkAnswerFormat(Reward):
    """1.0 when the whole completion is ``<think>...</think>`` then ``<answer>...</answer>``.

    The R1 format reward (DeepSeek-R1; VLM-R1's ``format_reward``), matched with
    DOTALL so that reasoning spanning several lines still counts.
    """

    default_name = "format"

    def score(self, completions: list[str], contexts: list[SampleContext]) -> list[float]:
        return [1.0 if think_answer_ok(c) else 0.0 for c in completions]


class RecJsonFormat(Reward):
    """1.0 when the answer is a JSON list (bare or in a ```json fence) whose first item
    has a ``bbox_2d`` of four finite numbers with area (x1 < x2, y1 < y2): Qwen2.5-VL's
    grounding format (VLM-R1's REC format; as its regex, no label is required and later items
    are not read).

    Args:
        require_think: also demand the think/answer layout of :class:`ThinkAnswerFormat`.
    """

    default_name = "rec_format"

    def __init__(self, require_think: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.require_think = require_think

    def _ok(self, completion: str) -> bool:
        if self.require_think and not think_answer_ok(completion):
            return False
        text = answer_text(completion).strip()
        fenced = re.fullmatch(r"```(?:json)?\s*(.*?)```", text, re.DOTALL)
        try:
            obj = json.loads(fenced.group(1) if fenced else text)
        except (json.JSONDecodeError, RecursionError):
            return False
        if not isinstance(obj, list) or not obj or not isinstance(obj[0], dict):
            return False
        box = obj[0].get("bbox_2d")  # the first item's own box: a later item's box read for it before 2026-12-06
        numbers = isinstance(box, list) and len(box) == 4 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)
        return numbers and not is_degenerate(tuple(float(v) for v in box))  # area, finite coordinates

    def score(self, completions: list[str], contexts: list[SampleContext]) -> list[float]:
        return [1.0 if self._ok(c) else 0.0 for c in completions]
