"""Vision-R1's criterion-driven rewards for object localisation.

Zhan et al., 2025, "Vision-R1: Evolving Human-Free Alignment in Large Vision-Language
Models via Vision-Guided Reinforcement Learning" (arXiv:2503.18013), §3.2-3.3. The
paper scores a completion that lists many boxes with three rule-based signals, summed
with equal weight (here: three rewards with ``weight`` 1 each):

* dual format (:class:`DualFormat`): the answer follows the box-list template and every
  box in it is valid; on an image without objects the right answer is no box at all;
* recall (:class:`LocalizationRecall`): the share of ground-truth objects that some
  prediction finds with enough overlap;
* precision (:class:`LocalizationPrecision`): how well the predicted boxes sit, averaged
  over every prediction, so padding the answer with extra boxes costs reward.

Predictions are paired with ground-truth objects one to one by box overlap alone
(:func:`hungarian_match`; the paper's box-only simplification of DETR's matcher, since a
language model gives a label without class probabilities). Progressive rule refinement
(:class:`ThresholdSchedule`) sharpens the rewards ("differentiation": a score under
xi1 counts 0, one at or over xi2 counts 1) and raises the bar as training goes on
("staged progression": e.g. 0.5/0.5/0.75, then 0.75/0.75/0.9 from step S), both read from
``SampleContext.global_step``.
"""

from __future__ import annotations

import bisect
import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor
from torchmetrics.functional.detection import generalized_intersection_over_union, intersection_over_union

from lit_vr1.rewards.base import Reward, SampleContext
from lit_vr1.rewards.boxes import (
    FENCED_RE,
    Box,
    ParsedBox,
    answer_text,
    box_solution_problem,
    check_optional_frame,
    frame_of,
    is_degenerate,
    parse_boxes,
    predicted_boxes,
    solution_boxes,
    to_original,
)
from lit_vr1.rewards.rec import think_answer_ok

TEMPLATES = ("bbox_2d_json", "label_box_pairs")


# --------------------------------------------------------------------------- matching


def _box(b: ParsedBox | Sequence[float]) -> Box:
    return b.box if isinstance(b, ParsedBox) else tuple(float(v) for v in b)  # type: ignore[return-value]


def _label(b: ParsedBox | Sequence[float]) -> str:
    return b.label.strip().lower() if isinstance(b, ParsedBox) else ""


def box_iou_matrix(pred_boxes: Sequence[ParsedBox | Sequence[float]],
                   gt_boxes: Sequence[ParsedBox | Sequence[float]]) -> Tensor:
    """(P, G) IoU of every prediction with every ground-truth box, (x1, y1, x2, y2) in one
    frame; computed with torchmetrics. Pairs with no union (two empty boxes) get 0."""
    if not pred_boxes or not gt_boxes:
        return torch.zeros(len(pred_boxes), len(gt_boxes))
    p = torch.tensor([_box(b) for b in pred_boxes], dtype=torch.float64)
    g = torch.tensor([_box(b) for b in gt_boxes], dtype=torch.float64)
    iou = intersection_over_union(p, g, aggregate=False)
    return torch.nan_to_num(iou, nan=0.0, posinf=0.0, neginf=0.0).clamp(0.0, 1.0)


def hungarian_match(pred_boxes: Sequence[ParsedBox | Sequence[float]], gt_boxes: Sequence[ParsedBox | Sequence[float]],
                    match_labels: bool = False) -> list[tuple[int, int, float]]:
    """One-to-one pairing of predictions with ground-truth boxes that maximises the total IoU.

    Vision-R1's box-prioritised matching (§3.2): the Hungarian algorithm
    (``scipy.optimize.linear_sum_assignment``, maximising) on the (P, G) IoU matrix, so at
    most min(P, G) pairs. Unlike a greedy pass that takes the best-overlapping pair first,
    it can give up one good pair for two decent ones. Pairs that do not overlap at all are
    left out: they add nothing to the total and the solver places them arbitrarily.

    Args:
        pred_boxes, gt_boxes: :class:`ParsedBox` es or (x1, y1, x2, y2) in the same frame.
        match_labels: pair only boxes whose labels agree (case-insensitive); the paper
            matches on boxes alone (the default).

    Returns:
        (pred_idx, gt_idx, iou) triples sorted by ``pred_idx``; [] when either side is empty.
    """
    if not pred_boxes or not gt_boxes:
        return []
    iou = box_iou_matrix(pred_boxes, gt_boxes)
    if match_labels:
        same = torch.tensor([[_label(p) == _label(g) for g in gt_boxes] for p in pred_boxes])
        iou = iou * same
    rows, cols = linear_sum_assignment(iou.numpy(), maximize=True)
    return [(int(r), int(c), float(iou[r, c])) for r, c in zip(rows, cols) if iou[r, c] > 0]


# --------------------------------------------------------------------------- progressive rule refinement


@dataclass(frozen=True)
class ThresholdStage:
    """The thresholds in force from ``from_step`` (an optimiser step) on.

    match_iou: xi0, the IoU a matched prediction needs to count as a valid detection.
    zero_below: xi1, a score under it counts as 0. one_above: xi2, a score at or over it
    counts as 1 (in between the score is kept as is).
    """

    from_step: int = 0
    match_iou: float = 0.5
    zero_below: float = 0.5
    one_above: float = 0.75

    def differentiate(self, value: float) -> float:
        """Vision-R1's differentiation (Eq. 8): 1 when ``value >= one_above``, 0 when
        ``value < zero_below``, else ``value``; it widens the reward gap between loose and
        tight answers inside a GRPO group."""
        if value >= self.one_above:
            return 1.0
        if value < self.zero_below:
            return 0.0
        return float(value)


def _as_stage(item: Any, i: int) -> ThresholdStage:
    if isinstance(item, ThresholdStage):
        return item
    if isinstance(item, dict):
        unknown = sorted(set(item) - {"from_step", "match_iou", "zero_below", "one_above"})
        if unknown:
            raise ValueError(f"ThresholdSchedule stage {i}: unknown key(s) {', '.join(unknown)}; "
                             "give from_step, match_iou, zero_below, one_above")
        return ThresholdStage(**item)
    raise ValueError(f"ThresholdSchedule stage {i}: expected a mapping with from_step, match_iou, zero_below, "
                     f"one_above, got {type(item).__name__}")


@dataclass
class ThresholdSchedule:
    """Progressive rule refinement (Vision-R1 §3.3): the thresholds by training step.

    Each stage is in force from its ``from_step`` until the next stage starts. The default
    is the paper's beginner stage alone, xi0/xi1/xi2 = 0.5/0.5/0.75 (the paper found that
    Qwen2.5-VL-7B did best without tightening); the paper's two-stage run adds
    0.75/0.75/0.9 from step S (see :meth:`vision_r1`). In YAML::

        schedule:
          stages:
            - {from_step: 0, match_iou: 0.5, zero_below: 0.5, one_above: 0.75}
            - {from_step: 1500, match_iou: 0.75, zero_below: 0.75, one_above: 0.9}

    Validation: at least one stage, the first from step 0, steps strictly increasing,
    thresholds in [0, 1] and ``zero_below <= one_above``; errors name the stage.
    """

    stages: list[ThresholdStage] = field(default_factory=lambda: [ThresholdStage()])

    def __post_init__(self) -> None:
        if isinstance(self.stages, (ThresholdStage, dict)) or not isinstance(self.stages, (list, tuple)):
            raise ValueError(f"ThresholdSchedule.stages must be a list of stages, got {type(self.stages).__name__}")
        self.stages = [_as_stage(s, i) for i, s in enumerate(self.stages)]
        if not self.stages:
            raise ValueError("ThresholdSchedule needs at least one stage")
        for i, s in enumerate(self.stages):
            where = f"ThresholdSchedule stage {i} (from_step={s.from_step})"
            if not isinstance(s.from_step, int) or isinstance(s.from_step, bool) or s.from_step < 0:
                raise ValueError(f"{where}: from_step must be a non-negative integer")
            for name in ("match_iou", "zero_below", "one_above"):
                v = getattr(s, name)
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                    raise ValueError(f"{where}: {name}={v!r} must be a number in [0, 1]")
            if s.zero_below > s.one_above:
                raise ValueError(f"{where}: zero_below={s.zero_below} must not exceed one_above={s.one_above}")
            if i == 0 and s.from_step != 0:
                raise ValueError(f"{where}: the first stage must start at step 0")
            if i > 0 and s.from_step <= self.stages[i - 1].from_step:
                raise ValueError(f"{where}: from_step must be greater than stage {i - 1}'s "
                                 f"({self.stages[i - 1].from_step}); list stages in increasing step order")
        self._starts = [s.from_step for s in self.stages]

    def at(self, global_step: int) -> ThresholdStage:
        """The stage in force at ``global_step`` (the last one that has started)."""
        return self.stages[max(bisect.bisect_right(self._starts, int(global_step)) - 1, 0)]

    @classmethod
    def vision_r1(cls, advanced_from: int) -> ThresholdSchedule:
        """The paper's two stages: 0.5/0.5/0.75, then 0.75/0.75/0.9 from ``advanced_from``."""
        return cls([ThresholdStage(0, 0.5, 0.5, 0.75), ThresholdStage(advanced_from, 0.75, 0.75, 0.9)])


# --------------------------------------------------------------------------- pure reward math


def localization_precision(matched_ious: Sequence[float], num_pred: int, num_gt: int, stage: ThresholdStage) -> float:
    """Vision-R1's precision reward (Eq. 6 with Eq. 8).

    r_prec = (1 / P) * sum over the P predictions of f(IoU_m) * 1[IoU_m >= xi0], where IoU_m
    is the IoU of prediction m with the ground-truth box it was matched to and f the
    stage's differentiation. A prediction left unmatched (more predictions than objects)
    or matched below xi0 adds 0 but still counts in P: the paper's sum runs over all the
    predictions (its prose says "valid predictions"; we follow the formula), so extra or
    duplicate boxes lower the reward. No prediction: 0, except on an image without
    objects, where saying nothing is right (1); any box on such an image scores 0.
    """
    if num_gt == 0:
        return 1.0 if num_pred == 0 else 0.0
    if num_pred == 0:
        return 0.0
    total = sum(stage.differentiate(v) for v in matched_ious if v >= stage.match_iou)
    return total / num_pred


def localization_recall(matched_ious: Sequence[float], num_pred: int, num_gt: int, stage: ThresholdStage,
                        differentiate: bool = True) -> float:
    """Vision-R1's recall reward (Eq. 5 with Eq. 8).

    r_recall = f(#valid / G): the share of the G ground-truth objects whose matched
    prediction reaches IoU >= xi0 (matching is one to one, so each object is found at most
    once), passed as a whole through the stage's differentiation f when ``differentiate``.
    On an image without objects: 1 when nothing is predicted, 0 otherwise (a hallucinated
    box earns no recall).
    """
    if num_gt == 0:
        return 1.0 if num_pred == 0 else 0.0
    recall = sum(1 for v in matched_ious if v >= stage.match_iou) / num_gt
    return stage.differentiate(recall) if differentiate else recall


# --------------------------------------------------------------------------- the released code's variant

VARIANTS = ("paper", "released")


def released_matched_gious(preds: Sequence[ParsedBox], gts: Sequence[ParsedBox]) -> list[float]:
    """The matching of Vision-R1's released training code (``visionr1_qwen.py``,
    ``BoxPriorMatcher``): a DETR-style Hungarian assignment minimising

        cost(p, g) = L1(p, g) - [label(p) == label(g)] - GIoU(p, g)

    with L1 the sum of absolute coordinate differences in original pixels (not
    normalised, so it dominates the other two terms on real images) and labels compared
    lower-cased (a label the image lacks matches nothing). Exactly min(P, G) pairs are
    formed, however far apart. Returns the GIoU of each pair (in [-1, 1], Rezatofighi et
    al., 2019), ordered by prediction index; [] when either side is empty."""
    if not preds or not gts:
        return []
    p = torch.tensor([_box(b) for b in preds], dtype=torch.float64)
    g = torch.tensor([_box(b) for b in gts], dtype=torch.float64)
    giou = torch.nan_to_num(generalized_intersection_over_union(p, g, aggregate=False), nan=-1.0)
    same = torch.tensor([[float(_label(a) == _label(b)) for b in gts] for a in preds], dtype=torch.float64)
    cost = torch.cdist(p, g, p=1) - same - giou
    rows, cols = linear_sum_assignment(cost.numpy())
    return [float(giou[r, c]) for r, c in zip(rows, cols)]


def _squash(value: float, low: float, high: float) -> float:
    """The released code's thresholding: 0 below ``low``, 1 strictly above ``high``, else kept
    (so a value equal to ``high`` keeps its value, where the paper's Eq. 8 gives 1)."""
    if value < low:
        return 0.0
    if value > high:
        return 1.0
    return float(value)


def released_precision(gious: Sequence[float], num_pred: int, num_gt: int, stage: ThresholdStage) -> float:
    """Vision-R1's released precision reward: the mean over the min(P, G) matched pairs of
    their GIoU thresholded at the stage's xi1 / xi2 (:func:`_squash`). Unmatched extra
    predictions are not counted, so padding an answer with boxes costs nothing. No
    prediction: 0, or 1 on an image without objects (any box there: 0)."""
    if num_gt == 0:
        return 1.0 if num_pred == 0 else 0.0
    if num_pred == 0 or not gious:
        return 0.0
    return sum(_squash(v, stage.zero_below, stage.one_above) for v in gious) / len(gious)


def released_recall(gious: Sequence[float], num_pred: int, num_gt: int, stage: ThresholdStage,
                    recall_stage: ThresholdStage) -> float:
    """Vision-R1's released recall reward: each matched pair counts 1 when its GIoU is
    above the stage's xi0 (0 below it, its own GIoU when exactly equal), the sum over G
    objects is the recall, thresholded at ``recall_stage``'s xi1 / xi2 (the released
    code keeps 0.5 / 0.75 in every stage). No prediction: 0, or 1 on an image without
    objects (any box there: 0)."""
    if num_gt == 0:
        return 1.0 if num_pred == 0 else 0.0
    if num_pred == 0:
        return 0.0
    found = sum(_squash(v, stage.match_iou, stage.match_iou) for v in gious)
    return _squash(found / num_gt, recall_stage.zero_below, recall_stage.one_above)


def released_boxes(completion: str, ctx: SampleContext, frame: str) -> list[ParsedBox]:
    """The predictions as the released code reads them: coordinates truncated to integers
    in the frame the model wrote, boxes without an area dropped, then mapped to original
    pixels."""
    if ctx.image_size is None and frame != "original_pixels":
        raise ValueError(f"box frame {frame!r} needs the image size, and the sample has no image")
    out = []
    for b in parse_boxes(completion, keep_degenerate=True):
        if not all(math.isfinite(v) for v in b.box):
            continue
        box: Box = tuple(float(int(v)) for v in b.box)  # type: ignore[assignment]
        if is_degenerate(box):
            continue
        if frame != "original_pixels":
            box = to_original(box, frame, ctx.input_size, ctx.image_size)
        out.append(ParsedBox(box, b.label))
    return out


# --------------------------------------------------------------------------- ground truth


def ground_truth(ctx: SampleContext) -> list[ParsedBox]:
    """The sample's ground-truth boxes (original pixels); [] for an image without objects.

    An image has no objects when ``ctx.metadata["num_instances"] == 0`` (Vision-R1's data
    field) or the solution is an empty list (``[]``, ``"[]"``) or the word None. A solution
    that is none of these and holds no box (an empty string: a row without one) is a data
    error and raises."""
    if ctx.metadata.get("num_instances") == 0:
        return []
    problem = box_solution_problem(ctx, empty_ok=True)
    if problem:
        raise ValueError(f"sample {ctx.id!r}: {problem}")
    return solution_boxes(ctx.solution)


# --------------------------------------------------------------------------- rewards


class _MatchedBoxReward(Reward):
    """Shared part of the precision and recall rewards: parse, map to original pixels,
    match, read the stage of ``ctx.global_step``."""

    def __init__(self, schedule: ThresholdSchedule | None = None, box_frame: str | None = None,
                 match_labels: bool = False, variant: Literal["paper", "released"] = "paper", **kwargs) -> None:
        super().__init__(**kwargs)
        if isinstance(schedule, (list, tuple)):  # from Python, as YAML writes it: the stages
            schedule = ThresholdSchedule(stages=list(schedule))
        elif isinstance(schedule, dict):
            schedule = ThresholdSchedule(**schedule)
        if schedule is not None and not isinstance(schedule, ThresholdSchedule):
            raise ValueError(f"{type(self).__name__}: schedule must be a lit_vr1.rewards.vision_r1.ThresholdSchedule, a "
                             f"dict {{'stages': [...]}} or a list of stages, got {type(schedule).__name__}")
        if variant not in VARIANTS:
            raise ValueError(f"{type(self).__name__}: variant={variant!r} is not valid; choose one of {', '.join(VARIANTS)}")
        if variant == "released" and match_labels:
            raise ValueError(f"{type(self).__name__}: match_labels is for variant='paper'; the released code's "
                             "matching cost already has a label term")
        self.schedule = schedule if schedule is not None else ThresholdSchedule()
        self.box_frame = check_optional_frame(box_frame)
        self.match_labels = bool(match_labels)
        self.variant = variant

    def solution_problem(self, ctx: SampleContext) -> str | None:
        return box_solution_problem(ctx, empty_ok=True)

    def _matched(self, completion: str, ctx: SampleContext) -> tuple[list[float], int, int, ThresholdStage]:
        """(matched overlaps, P, G, stage): IoUs of the valid Hungarian pairs (paper), or the
        GIoUs of the released code's min(P, G) pairs (released)."""
        gt = ground_truth(ctx)
        stage = self.schedule.at(ctx.global_step)
        frame = frame_of(self.box_frame, ctx)
        if self.variant == "released":
            preds = released_boxes(completion, ctx, frame)
            return released_matched_gious(preds, gt), len(preds), len(gt), stage
        # every box written counts in P; one without an area is a zero-area box that matches nothing
        preds = predicted_boxes(completion, ctx.image_size, ctx.input_size, frame, keep_degenerate=True)
        ious = [iou for _, _, iou in hungarian_match(preds, gt, self.match_labels)]
        return ious, len(preds), len(gt), stage


class LocalizationPrecision(_MatchedBoxReward):
    """Vision-R1's precision reward: how tight the predicted boxes are.

    After one-to-one Hungarian matching on IoU, the mean over all P predictions of the
    differentiated IoU of each valid match (IoU >= xi0), unmatched or invalid predictions
    counting 0 (see :func:`localization_precision`). Thresholds come from ``schedule`` at
    the sample's ``global_step``.

    Args:
        schedule: the progressive thresholds (default: one stage, 0.5/0.5/0.75).
        box_frame: frame the model writes boxes in (``lit_vr1.rewards.boxes.BOX_FRAMES``;
            None: the policy's own); predictions are mapped to original pixels, where the
            solution lives.
        match_labels: pair only boxes with the same label (the paper pairs on boxes alone).
        variant: "paper" (default): the paper's Eq. 6 as written, IoU over all P
            predictions, so padding costs; "released": Vision-R1's released training code
            (:func:`released_matched_gious`, :func:`released_precision`: GIoU values, an
            L1 + label + GIoU matching cost, the mean over min(P, G) pairs, xi2 tested
            strictly, integer coordinates), for reproducing its runs.
        **kwargs: ``weight``, ``name``, ``tasks``, ``on_error`` of :class:`Reward`.
    """

    default_name = "loc_precision"

    def score(self, completions: list[str], contexts: list[SampleContext]) -> list[float]:
        rule = released_precision if self.variant == "released" else localization_precision
        return [rule(*self._matched(c, ctx)) for c, ctx in zip(completions, contexts)]


class LocalizationRecall(_MatchedBoxReward):
    """Vision-R1's recall reward: how many of the objects the answer finds.

    The share of ground-truth objects matched (one to one, Hungarian on IoU) with
    IoU >= xi0, then differentiated with the stage's xi1/xi2 (see
    :func:`localization_recall`). Thresholds come from ``schedule`` at ``global_step``.

    Args:
        schedule, box_frame, match_labels: as :class:`LocalizationPrecision`.
        differentiate: pass the recall through the stage's differentiation (the paper does);
            False gives the plain fraction (variant "paper" only).
        variant: "paper" (default) or "released" (:func:`released_recall`: GIoU pairs
            counted above xi0, the recall thresholded with the first stage's xi1 / xi2 in
            every stage, as the released code keeps 0.5 / 0.75).
        **kwargs: ``weight``, ``name``, ``tasks``, ``on_error`` of :class:`Reward`.
    """

    default_name = "loc_recall"

    def __init__(self, schedule: ThresholdSchedule | None = None, box_frame: str | None = None,
                 match_labels: bool = False, differentiate: bool = True,
                 variant: Literal["paper", "released"] = "paper", **kwargs) -> None:
        super().__init__(schedule=schedule, box_frame=box_frame, match_labels=match_labels, variant=variant, **kwargs)
        self.differentiate = bool(differentiate)

    def score(self, completions: list[str], contexts: list[SampleContext]) -> list[float]:
        out = []
        for c, ctx in zip(completions, contexts):
            ious, num_pred, num_gt, stage = self._matched(c, ctx)
            if self.variant == "released":
                out.append(released_recall(ious, num_pred, num_gt, stage, self.schedule.stages[0]))
            else:
                out.append(localization_recall(ious, num_pred, num_gt, stage, self.differentiate))
        return out


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def valid_box_content(bbox: Any, label: Any, extent: tuple[float, float] | None = None) -> bool:
    """Vision-R1's content check of one box: four finite numbers (not strings, not
    booleans), 0 <= x1 < x2 and 0 <= y1 < y2 (inside ``extent`` = (width, height) of the
    frame when given), and a non-empty string label."""
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(_number(v) for v in bbox):
        return False
    x1, y1, x2, y2 = bbox
    if not (0 <= x1 < x2 and 0 <= y1 < y2):
        return False
    if extent is not None and (x2 > extent[0] or y2 > extent[1]):
        return False
    return isinstance(label, str) and bool(label.strip())


def parse_box_list(completion: str) -> Any:
    """The answer of a completion decoded as strict JSON (inside ``<answer>`` when present,
    a ```json fence allowed around it), or None when it is not valid JSON. No repair: the
    format reward is about the model writing it right."""
    text = answer_text(completion).strip()
    fenced = FENCED_RE.fullmatch(text)
    if fenced:
        text = fenced.group(1)
    try:
        return json.loads(text)
    except (json.JSONDecodeError, ValueError, RecursionError):
        return None


class DualFormat(Reward):
    """Vision-R1's dual format reward (§3.2, Eq. 4): 1 only when the answer passes both the
    template check and the content check, else 0.

    Template: the answer (inside ``<answer>`` when present; a ```json fence allowed) is,
    as strict JSON, a non-empty list whose items all have the template's shape:
    ``{"bbox_2d": [...], "label": ...}`` objects (Qwen2.5-VL, ``template="bbox_2d_json"``),
    or ``[label, [x1, y1, x2, y2]]`` pairs (``"label_box_pairs"``, Vision-R1's solutions).
    Content: every box is valid (:func:`valid_box_content`: four finite numbers,
    0 <= x1 < x2, 0 <= y1 < y2, a non-empty string label; with ``check_bounds`` also inside
    the frame's extent).

    Images without objects (solution ``[]`` or ``metadata["num_instances"] == 0``) invert
    it, as the paper does for its negative samples: an answer that holds no box at all
    (``[]``, "There are none.") scores 1 and any box scores 0. In turn, an empty list on an
    image with objects fails the template (a choice of ours: exactly one of the two is right).

    Args:
        template: "bbox_2d_json" (default) or "label_box_pairs".
        box_frame: frame the model writes boxes in (None: the policy's own); used for
            ``check_bounds``.
        check_bounds: also demand x2 <= width and y2 <= height of the frame (the model input
            for "input_pixels", the original for "original_pixels", 1000 or 1 for the
            normalised frames); skipped when the size is unknown.
        require_think: also demand the ``<think>...</think><answer>...</answer>`` layout.
        **kwargs: ``weight``, ``name``, ``tasks``, ``on_error`` of :class:`Reward`.
    """

    default_name = "dual_format"

    def __init__(self, template: Literal["bbox_2d_json", "label_box_pairs"] = "bbox_2d_json",
                 box_frame: str | None = None, check_bounds: bool = False, require_think: bool = False,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        if template not in TEMPLATES:
            raise ValueError(f"template={template!r} is not valid; choose one of {', '.join(TEMPLATES)}")
        self.template = template
        self.box_frame = check_optional_frame(box_frame)
        self.check_bounds = bool(check_bounds)
        self.require_think = bool(require_think)

    def solution_problem(self, ctx: SampleContext) -> str | None:
        return box_solution_problem(ctx, empty_ok=True)

    def _extent(self, ctx: SampleContext) -> tuple[float, float] | None:
        if not self.check_bounds:
            return None
        frame = frame_of(self.box_frame, ctx)
        if frame == "norm1000":
            return (1000.0, 1000.0)
        if frame == "norm1":
            return (1.0, 1.0)
        size = ctx.input_size if frame == "input_pixels" else ctx.image_size
        return (float(size[0]), float(size[1])) if size else None

    def _items(self, obj: Any) -> list[tuple[Any, Any]] | None:
        """(bbox, label) of each item when ``obj`` follows the template, else None."""
        if not isinstance(obj, list) or not obj:
            return None
        items = []
        for item in obj:
            if self.template == "bbox_2d_json":
                if not isinstance(item, dict) or "bbox_2d" not in item or "label" not in item:
                    return None
                items.append((item["bbox_2d"], item["label"]))
            else:
                if not isinstance(item, list) or len(item) != 2:
                    return None
                items.append((item[1], item[0]))
        return items

    def _well_formed(self, completion: str, ctx: SampleContext) -> bool:
        items = self._items(parse_box_list(completion))
        if items is None:
            return False
        extent = self._extent(ctx)
        return all(valid_box_content(bbox, label, extent) for bbox, label in items)

    def score(self, completions: list[str], contexts: list[SampleContext]) -> list[float]:
        out = []
        for c, ctx in zip(completions, contexts):
            if self.require_think and not think_answer_ok(c):
                out.append(0.0)
            elif not ground_truth(ctx):
                out.append(0.0 if parse_boxes(c, keep_degenerate=True) else 1.0)
            else:
                out.append(1.0 if self._well_formed(c, ctx) else 0.0)
        return out


__all__ = ["DualFormat", "LocalizationPrecision", "LocalizationRecall", "ThresholdSchedule", "ThresholdStage",
           "box_iou_matrix", "ground_truth", "hungarian_match", "localization_precision", "localization_recall",
           "parse_box_list", "released_matched_gious", "released_precision", "released_recall", "valid_box_content"]
