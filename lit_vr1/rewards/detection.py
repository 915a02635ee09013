"""Rewards for object detection: several labelled boxes per answer against several
ground-truth boxes (VLM-R1's open-vocabulary detection, Vision-R1's detection data).

The math lives in pure functions (:func:`detection_map`, :func:`length_factor`,
:func:`weighted_sum_score` and their helpers); the reward classes only parse boxes and
call them. Boxes are compared in original-image pixels: the prediction is mapped there
from the frame the model writes in (``box_frame``), the solution is read as written.

Labels are compared after :func:`normalize_label` (stripped, lower case), so "Dog " and
"dog" are the same class. An empty label is a label like any other ("" matches "").
"""

from __future__ import annotations

import importlib.util
import math
from typing import Any

import numpy as np
import torch

from lit_vr1.rewards.base import Reward, SampleContext
from lit_vr1.rewards.boxes import (
    Box,
    ParsedBox,
    box_solution_problem,
    check_optional_frame,
    frame_of,
    predicted_boxes,
    solution_boxes,
)

MAP_METRICS = ("map", "map_50", "map_75")
MAP_BACKENDS = ("pycocotools", "faster_coco_eval")  # torchmetrics' COCO backends
# COCOeval's own thresholds, in float64 (pycocotools' Params.setDetParams). torchmetrics'
# defaults come from torch.linspace in float32: 36 of its 101 recall points round above
# COCO's grid (0.6 -> 0.6000000238), so a recall of exactly 3/5 missed its point.
COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1).tolist()
COCO_REC_THRESHOLDS = np.linspace(0.0, 1.0, int(np.round((1.0 - 0.0) / 0.01)) + 1).tolist()
_IOU_THRESHOLDS = {"map": COCO_IOU_THRESHOLDS, "map_50": [0.5], "map_75": [0.75]}
CONSTANT_SCORE = 1.0  # the confidence every predicted box gets: the model gives none


def normalize_label(label: Any) -> str:
    """The class key of a label: stripped and lower-cased ("" for None)."""
    return "" if label is None else str(label).strip().lower()


def label_ids(gt_labels: list[str], pred_labels: list[str]) -> tuple[list[int], list[int]]:
    """Integer class ids for one sample, after :func:`normalize_label`.

    Ground-truth labels are numbered first, in order of appearance; a predicted label the
    ground truth lacks gets an id of its own (so its boxes are false positives and can
    never match a ground-truth box of another class).
    """
    ids: dict[str, int] = {}
    gt = [ids.setdefault(normalize_label(label), len(ids)) for label in gt_labels]
    pred = [ids.setdefault(normalize_label(label), len(ids)) for label in pred_labels]
    return gt, pred


def clean_gt_box(box: Box) -> Box:
    """A ground-truth box fit for COCO: an inverted box (x2 < x1 or y2 < y1, the data's
    fault) becomes a zero-area box at its first corner, which no prediction can match, so
    it counts as an object that was missed. Non-finite coordinates raise ValueError."""
    if not all(math.isfinite(v) for v in box):
        raise ValueError(f"ground-truth box {box} has a non-finite coordinate")
    x1, y1, x2, y2 = box
    return (x1, y1, max(x1, x2), max(y1, y2))


def map_evaluator(metric: str = "map", backend: str = "faster_coco_eval"):
    """A torchmetrics ``MeanAveragePrecision`` set up to compute ``metric`` as its "map".

    For "map_50" / "map_75" it evaluates only that IoU threshold: the same number as
    COCO's AP50 / AP75 (each threshold is evaluated on its own) for a tenth of the work.
    """
    from torchmetrics.detection import MeanAveragePrecision

    if metric not in MAP_METRICS:
        raise ValueError(f"metric={metric!r} is not valid; choose one of {', '.join(MAP_METRICS)}")
    if backend not in MAP_BACKENDS:
        raise ValueError(f"backend={backend!r} is not valid; choose one of {', '.join(MAP_BACKENDS)}")
    if importlib.util.find_spec(backend) is None:
        raise ModuleNotFoundError(f"the mAP backend {backend!r} is not installed (pip install {backend.replace('_', '-')})")
    evaluator = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", iou_thresholds=_IOU_THRESHOLDS[metric],
                                     rec_thresholds=COCO_REC_THRESHOLDS, backend=backend)
    evaluator.warn_on_many_detections = False  # COCO keeps 100 boxes per class; the rest are ignored, as documented
    return evaluator


def detection_map(preds: list[ParsedBox], gts: list[ParsedBox], metric: str = "map", evaluator=None) -> float:
    """COCO-style mean average precision of one answer's boxes against one image's ground truth.

    Every predicted box gets the same score (VLM-R1 does the same: the model states no
    confidence), so COCO's score sort, which is stable, keeps the order the boxes were
    written in: earlier boxes act as the more confident ones, and a false positive before
    a true one lowers the precision of that true one. The mean runs over the classes the
    ground truth has (COCO leaves out classes without ground truth), so a box with a
    label absent from the image costs nothing here (see :class:`ODLength` for a penalty).
    Per class and image only the first 100 boxes count (COCO's maxDets=100).

    Edge cases: no ground truth and no boxes: 1.0 (a correct "nothing here", as VLM-R1);
    either side empty and the other not: 0.0; torchmetrics' -1 (no class with ground
    truth left to average, e.g. only ignored boxes) is also 0.0.

    Args:
        preds, gts: boxes in the same frame (original pixels), with labels.
        metric: "map" (IoU 0.50:0.95), "map_50" or "map_75".
        evaluator: a :func:`map_evaluator` for ``metric`` to reuse (made here when None).
    """
    if not gts and not preds:
        return 1.0
    if not gts or not preds:
        return 0.0
    if evaluator is None:
        evaluator = map_evaluator(metric)
    gt_ids, pred_ids = label_ids([g.label for g in gts], [p.label for p in preds])
    target = {
        "boxes": torch.tensor([clean_gt_box(g.box) for g in gts], dtype=torch.float64),
        "labels": torch.tensor(gt_ids, dtype=torch.int64),
    }
    pred = {
        "boxes": torch.tensor([p.box for p in preds], dtype=torch.float64),
        "scores": torch.full((len(preds),), CONSTANT_SCORE, dtype=torch.float64),
        "labels": torch.tensor(pred_ids, dtype=torch.int64),
    }
    evaluator.reset()
    evaluator.update([pred], [target])
    value = float(evaluator.compute()["map"])
    evaluator.reset()
    return value if value >= 0 else 0.0


def length_factor(n_gt: int, n_pred: int) -> float:
    """VLM-R1's count penalty: min(1, n_gt / n_pred); 1.0 when nothing was predicted
    (then the mAP it multiplies is already 0, or 1 for an empty image)."""
    if n_pred <= 0:
        return 1.0
    return min(1.0, n_gt / n_pred)


def iou_matrix(preds: list[Box], gts: list[Box]) -> np.ndarray:
    """IoU of every prediction (rows) with every ground-truth box (columns), continuous
    coordinates (area = (x2 - x1) * (y2 - y1)); 0 where the union is empty."""
    if not preds or not gts:
        return np.zeros((len(preds), len(gts)))
    p = np.asarray(preds, dtype=np.float64)[:, None, :]
    g = np.asarray(gts, dtype=np.float64)[None, :, :]
    w = np.clip(np.minimum(p[..., 2], g[..., 2]) - np.maximum(p[..., 0], g[..., 0]), 0, None)
    h = np.clip(np.minimum(p[..., 3], g[..., 3]) - np.maximum(p[..., 1], g[..., 1]), 0, None)
    inter = w * h
    area_p = np.clip(p[..., 2] - p[..., 0], 0, None) * np.clip(p[..., 3] - p[..., 1], 0, None)
    area_g = np.clip(g[..., 2] - g[..., 0], 0, None) * np.clip(g[..., 3] - g[..., 1], 0, None)
    union = area_p + area_g - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def greedy_match(ious: np.ndarray, threshold: float) -> list[tuple[int, int, float]]:
    """Greedy one-to-one matching, best IoU first: repeatedly take the (prediction,
    ground truth) pair with the highest IoU among the still unmatched, while it is at
    least ``threshold``. Ties go to the earlier prediction, then the earlier ground truth.
    Returns (pred_index, gt_index, iou) in the order matched."""
    if ious.size == 0:
        return []
    rows, cols = np.nonzero(ious >= threshold)
    order = sorted(zip(rows.tolist(), cols.tolist()), key=lambda rc: (-ious[rc], rc[0], rc[1]))
    used_p, used_g, out = set(), set(), []
    for r, c in order:
        if r not in used_p and c not in used_g:
            used_p.add(r)
            used_g.add(c)
            out.append((r, c, float(ious[r, c])))
    return out


def weighted_sum_score(preds: list[ParsedBox], gts: list[ParsedBox], position_weight: float = 0.7,
                       completeness_weight: float = 0.3, iou_threshold: float = 0.5,
                       mislabel_is_error: bool = False) -> float:
    """VLM-R1's "weighted_sum" detection score (its ``detection_score``), in [0, 1].

    Predictions are matched to ground truth with :func:`greedy_match` (IoU >= threshold,
    best pairs first, labels not looked at). A matched pair whose labels differ keeps its
    two boxes matched but scores IoU 0.

    - position = (sum of the IoUs of the matched pairs) / n_gt: the mean IoU over the
      ground truth, where a missed object counts as 0 (extra boxes do not enter here).
    - completeness = 1 - (misses / n_gt + false_alarms / n_pred) / 2, with misses the
      unmatched ground-truth boxes and false_alarms the unmatched predictions.
    - score = (position_weight * position + completeness_weight * completeness)
      / (position_weight + completeness_weight).

    VLM-R1 counts a wrongly labelled pair as matched in completeness; with
    ``mislabel_is_error`` such a pair counts as one miss and one false alarm instead.
    Edge cases (as VLM-R1): no ground truth: 1.0 without boxes, else 0.0; ground truth
    but no boxes: 0.0. Unlike VLM-R1 the IoU is the plain continuous one (VLM-R1 mixes a
    +1-pixel intersection with an exclusive union).
    """
    if not gts:
        return 1.0 if not preds else 0.0
    if not preds:
        return 0.0
    ious = iou_matrix([p.box for p in preds], [clean_gt_box(g.box) for g in gts])
    matches = greedy_match(ious, iou_threshold)
    position, good = 0.0, 0
    for r, c, iou in matches:
        if normalize_label(preds[r].label) == normalize_label(gts[c].label):
            position += iou
            good += 1
    position /= len(gts)
    counted = good if mislabel_is_error else len(matches)
    misses = len(gts) - counted
    false_alarms = len(preds) - counted
    completeness = 1.0 - (misses / len(gts) + false_alarms / len(preds)) / 2.0
    total = position_weight + completeness_weight
    return (position_weight * position + completeness_weight * completeness) / total


class _DetectionReward(Reward):
    """Shared parsing: the completion's boxes in original pixels and the solution's boxes."""

    def __init__(self, box_frame: str | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.box_frame = check_optional_frame(box_frame)

    def solution_problem(self, ctx: SampleContext) -> str | None:
        return box_solution_problem(ctx, empty_ok=True)

    def boxes(self, completion: str, ctx: SampleContext) -> tuple[list[ParsedBox], list[ParsedBox]]:
        """(predicted, ground truth) boxes of one completion, both in original pixels. Every
        box written is a prediction: one without an area is kept as a zero-area box, a
        false positive (``boxes.flatten_box``)."""
        frame = frame_of(self.box_frame, ctx)
        if ctx.image_size is None and frame != "original_pixels":
            raise ValueError(f"box_frame={frame!r} needs the image size, and the sample has no image")
        problem = box_solution_problem(ctx, empty_ok=True)  # a row without a solution is not an image without objects
        if problem:
            raise ValueError(f"sample {ctx.id!r}: {problem}")
        preds = predicted_boxes(completion, ctx.image_size, ctx.input_size, frame, keep_degenerate=True)
        return preds, solution_boxes(ctx.solution)


class DetectionMAP(_DetectionReward):
    """COCO mean average precision of the answer's boxes (VLM-R1's ``map`` / ``od``
    accuracy reward for open-vocabulary detection).

    Per completion: AP = area under the interpolated precision-recall curve (COCO's
    101 recall points), averaged over the ground-truth classes and, for "map", over the
    IoU thresholds 0.50, 0.55, ..., 0.95 (Lin et al., 2014, COCO detection evaluation),
    computed by torchmetrics' ``MeanAveragePrecision`` (faster_coco_eval backend: the
    same numbers as pycocotools, 3.5x the throughput here). All boxes
    get one constant score, so their written order ranks them. See
    :func:`detection_map` for labels and edge cases (empty image and empty answer: 1.0).

    Args:
        metric: "map" (AP@[.50:.95]), "map_50" (AP@.50) or "map_75" (AP@.75).
        box_frame: frame the model writes boxes in (``lit_vr1.rewards.boxes.BOX_FRAMES``);
            None: the policy's own (its model family's).
        backend: torchmetrics' COCO backend, "faster_coco_eval" (default, a C++ port) or
            "pycocotools" (the reference; the tests check both against COCOeval).
        **kwargs: weight, name (default: the metric), tasks, on_error (see ``Reward``).
    """

    default_name = "map"

    def __init__(self, metric: str = "map", box_frame: str | None = None, backend: str = "faster_coco_eval",
                 **kwargs) -> None:
        if metric not in MAP_METRICS:
            raise ValueError(f"metric={metric!r} is not valid; choose one of {', '.join(MAP_METRICS)}")
        name = kwargs.pop("name", None)
        if name is None and type(self) is DetectionMAP:
            name = metric  # "map", "map_50" or "map_75"
        super().__init__(box_frame=box_frame, name=name, **kwargs)
        self.metric = metric
        self.backend = backend
        self._evaluator = map_evaluator(metric, backend)  # reused (reset) for every completion

    def _map(self, preds: list[ParsedBox], gts: list[ParsedBox], cache: dict) -> float:
        key = (tuple((p.box, normalize_label(p.label)) for p in preds),
               tuple((g.box, normalize_label(g.label)) for g in gts))
        if key not in cache:
            cache[key] = detection_map(preds, gts, self.metric, self._evaluator)
        return cache[key]

    def score(self, completions: list[str], contexts: list[SampleContext]) -> list[float]:
        cache: dict = {}  # identical answers to the same sample are common within a group
        out = []
        for completion, ctx in zip(completions, contexts):
            preds, gts = self.boxes(completion, ctx)
            out.append(self._map(preds, gts, cache))
        return out


class ODLength(DetectionMAP):
    """VLM-R1's ``odLength`` reward: mAP times a penalty for answering with more boxes
    than there are objects, ``map * min(1, n_gt / n_pred)``.

    COCO's mAP does not punish extra boxes of absent classes, nor extra boxes ranked
    after all true ones, so a model learns to list many boxes; the factor removes that
    incentive. n_pred counts every box written (those without an area too, and those
    past COCO's 100); with n_pred = 0 the factor is 1, so the reward is the mAP's own edge
    case: 0.0, or 1.0 when the image has no objects either.

    Args: as :class:`DetectionMAP` (metric default "map", as VLM-R1).
    """

    default_name = "od_length"

    def score(self, completions: list[str], contexts: list[SampleContext]) -> list[float]:
        cache: dict = {}
        out = []
        for completion, ctx in zip(completions, contexts):
            preds, gts = self.boxes(completion, ctx)
            out.append(self._map(preds, gts, cache) * length_factor(len(gts), len(preds)))
        return out


class DetectionWeightedSum(_DetectionReward):
    """VLM-R1's "weighted_sum" detection reward: a weighted mean of how well the matched
    boxes sit (mean IoU over the ground truth) and how complete the answer is (few
    misses, few false alarms). Formula and edge cases: :func:`weighted_sum_score`.

    Args:
        position_weight: weight of the position score (VLM-R1's alpha, 0.7).
        completeness_weight: weight of the completeness score (VLM-R1's gamma, 0.3).
        iou_threshold: IoU a prediction needs to match a ground-truth box (0.5).
        mislabel_is_error: count a matched pair with the wrong label as a miss and a
            false alarm in completeness (VLM-R1 does not: False).
        box_frame: frame the model writes boxes in (None: the policy's own).
        **kwargs: weight, name, tasks, on_error (see ``Reward``).
    """

    default_name = "det_weighted_sum"

    def __init__(self, position_weight: float = 0.7, completeness_weight: float = 0.3, iou_threshold: float = 0.5,
                 mislabel_is_error: bool = False, box_frame: str | None = None, **kwargs) -> None:
        super().__init__(box_frame=box_frame, **kwargs)
        if position_weight < 0 or completeness_weight < 0 or position_weight + completeness_weight <= 0:
            raise ValueError(f"DetectionWeightedSum: position_weight={position_weight} and completeness_weight="
                             f"{completeness_weight} must be >= 0 with a positive sum")
        if not 0.0 < iou_threshold <= 1.0:
            raise ValueError(f"DetectionWeightedSum: iou_threshold={iou_threshold} must be in (0, 1]")
        self.position_weight = float(position_weight)
        self.completeness_weight = float(completeness_weight)
        self.iou_threshold = float(iou_threshold)
        self.mislabel_is_error = bool(mislabel_is_error)

    def score(self, completions: list[str], contexts: list[SampleContext]) -> list[float]:
        out = []
        for completion, ctx in zip(completions, contexts):
            preds, gts = self.boxes(completion, ctx)
            out.append(weighted_sum_score(preds, gts, self.position_weight, self.completeness_weight,
                                          self.iou_threshold, self.mislabel_is_error))
        return out
