"""Dataset-level detection metrics: COCO mAP, AP50 and AP75 of greedy answers, through
torchmetrics' ``MeanAveragePrecision`` (the seeds evaluate COCO and ODINW this way).

The model states no confidence, so boxes rank in the order they were written, images in
the order they were evaluated: each box gets a score that falls with its running index
(the same ranking as COCOeval's stable sort of equal scores; with truly equal scores two
COCO implementations break ties across images differently, and AP moves with that).
Labels are compared stripped and lower-cased; each label gets one id for the whole run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.detection import MeanAveragePrecision

from lit_vr1.rewards.boxes import ParsedBox
from lit_vr1.rewards.detection import COCO_IOU_THRESHOLDS, COCO_REC_THRESHOLDS, clean_gt_box, normalize_label


def rank_score(rank):
    """The score of the box at ``rank`` (0, 1, ...; a number or a tensor of them) in a split's
    written order: it falls with the rank, so COCO's ranking follows the order written (the model
    states no confidence). ``lit_vr1.data.coco`` scores a results file with it for COCOeval."""
    return 1.0 / (1.0 + 1e-3 * rank)


class DetectionMetrics(Metric):
    """Accumulates images' predicted and true boxes; ``compute()`` gives
    {"map": AP@[.50:.95], "map_50": AP@.50, "map_75": AP@.75, "images": count}."""

    full_state_update = False

    def __init__(self, backend: str = "faster_coco_eval") -> None:
        super().__init__()
        self.map = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", iou_thresholds=COCO_IOU_THRESHOLDS,
                                        rec_thresholds=COCO_REC_THRESHOLDS, backend=backend)
        self.map.warn_on_many_detections = False
        self.labels: dict[str, int] = {}
        self.add_state("images", default=torch.tensor(0), dist_reduce_fx="sum")
        self.boxes_seen = 0  # running index of predicted boxes: their rank

    def _ids(self, boxes: list[ParsedBox]) -> torch.Tensor:
        return torch.tensor([self.labels.setdefault(normalize_label(b.label), len(self.labels)) for b in boxes],
                            dtype=torch.long)

    def update(self, preds: list[list[ParsedBox]], gts: list[list[ParsedBox]]) -> None:
        """One entry per image: its predicted boxes and its true boxes, original pixels."""
        p_dicts, g_dicts = [], []
        for pred, gt in zip(preds, gts, strict=True):
            p_boxes = torch.tensor([b.box for b in pred], dtype=torch.float64).reshape(-1, 4)
            g_boxes = torch.tensor([clean_gt_box(b.box) for b in gt], dtype=torch.float64).reshape(-1, 4)
            rank = torch.arange(self.boxes_seen, self.boxes_seen + len(pred), dtype=torch.float64)
            self.boxes_seen += len(pred)
            scores = rank_score(rank)
            p_dicts.append({"boxes": p_boxes, "scores": scores, "labels": self._ids(pred)})
            g_dicts.append({"boxes": g_boxes, "labels": self._ids(gt)})
        self.map.update(p_dicts, g_dicts)
        self.images += len(preds)

    def compute(self) -> dict[str, torch.Tensor]:
        out = self.map.compute()
        # torchmetrics reports -1 where nothing can be measured (no ground truth at all)
        return {k: out[k].clamp(min=0.0) for k in ("map", "map_50", "map_75")} | {"images": self.images.clone()}

    def reset(self) -> None:
        super().reset()
        self.map.reset()
        self.boxes_seen = 0


def _iou(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """IoU matrix (P, G) of xyxy boxes, COCO's (no +1 on widths)."""
    if not len(pred) or not len(gt):
        return np.zeros((len(pred), len(gt)))
    lt = np.maximum(pred[:, None, :2], gt[None, :, :2])
    rb = np.minimum(pred[:, None, 2:], gt[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda b: np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area(pred)[:, None] + area(gt)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


@dataclass
class ImageMatches:
    """One image's COCO matching, per IoU threshold. labels: (P,) category id of each
    predicted box, in written order; hits: (T, P) whether the box took a true box at
    threshold t; objects: {category id: number of true boxes}."""

    labels: np.ndarray
    hits: np.ndarray
    objects: dict[int, int]


def coco_matches(preds: list[list[ParsedBox]], gts: list[list[ParsedBox]],
                 iou_thresholds: list[float] = COCO_IOU_THRESHOLDS) -> list[ImageMatches]:
    """COCOeval's per-image matching (``evaluateImg``; Lin et al., 2014): per category and
    threshold t, each predicted box in written order (at most 100 per category) takes the
    unmatched true box of its image with the highest IoU >= t. Category ids are shared by all
    images. A predicted box without an area (the parsers drop those, but rounding can make
    one) overlaps nothing: a false positive."""
    ids: dict[str, int] = {}
    out = []
    for pred, gt in zip(preds, gts, strict=True):
        p_lab = np.array([ids.setdefault(normalize_label(b.label), len(ids)) for b in pred], dtype=int)
        g_lab = np.array([ids.setdefault(normalize_label(b.label), len(ids)) for b in gt], dtype=int)
        p_box = np.array([b.box for b in pred], dtype=np.float64).reshape(-1, 4)
        g_box = np.array([clean_gt_box(b.box) for b in gt], dtype=np.float64).reshape(-1, 4)
        iou = _iou(p_box, g_box)
        hits = np.zeros((len(iou_thresholds), len(pred)), dtype=bool)
        kept = np.zeros(len(pred), dtype=bool)
        for c in set(p_lab.tolist()):
            pi, gi = np.flatnonzero(p_lab == c)[:100], np.flatnonzero(g_lab == c)
            kept[pi] = True
            for ti, t in enumerate(iou_thresholds):
                taken = np.zeros(len(gi), dtype=bool)
                for i in pi:
                    best, m = min(t, 1 - 1e-10), -1
                    for j, g in enumerate(gi):
                        if not taken[j] and iou[i, g] >= best:
                            best, m = iou[i, g], j
                    if m >= 0:
                        taken[m] = hits[ti, i] = True
        objects = {int(c): int((g_lab == c).sum()) for c in set(g_lab.tolist())}
        out.append(ImageMatches(p_lab[kept], hits[:, kept], objects))
    return out


def coco_accumulate(matches: list[ImageMatches], index: list[int] | None = None,
                    iou_thresholds: list[float] = COCO_IOU_THRESHOLDS) -> dict[str, float]:
    """COCOeval's ``accumulate`` and summary over the images at ``index`` (all by default;
    repeats allowed, as a bootstrap resample needs): boxes rank in written order, images in
    ``index`` order; per category and threshold, precision made non-increasing from the
    right, read at the 101 recall points 0, 0.01, ..., 1, averaged; a category without true
    boxes is left out. Returns {"map": AP@[.50:.95], "map_50", "map_75"}."""
    chosen = [matches[i] for i in (range(len(matches)) if index is None else index)]
    labels = np.concatenate([m.labels for m in chosen]) if chosen else np.zeros(0, dtype=int)
    hits = np.concatenate([m.hits for m in chosen], axis=1) if chosen else np.zeros((len(iou_thresholds), 0))
    objects: dict[int, int] = {}
    for m in chosen:
        for c, n in m.objects.items():
            objects[c] = objects.get(c, 0) + n
    recall_points = np.linspace(0.0, 1.0, 101)
    ap = np.full((len(iou_thresholds), len(objects)), np.nan)
    for k, (c, n_gt) in enumerate(sorted(objects.items())):
        h = hits[:, labels == c].astype(np.float64)  # (T, D) in rank order
        tp, fp = np.cumsum(h, axis=1), np.cumsum(1.0 - h, axis=1)
        for ti in range(len(iou_thresholds)):
            if not h.shape[1]:
                ap[ti, k] = 0.0
                continue
            recall = tp[ti] / n_gt
            precision = np.maximum.accumulate((tp[ti] / (tp[ti] + fp[ti] + np.spacing(1)))[::-1])[::-1]
            idx = np.searchsorted(recall, recall_points, side="left")
            ap[ti, k] = np.where(idx < len(precision), precision[np.minimum(idx, len(precision) - 1)], 0.0).mean()
    at = {round(t, 2): i for i, t in enumerate(iou_thresholds)}

    def mean(rows) -> float:
        vals = ap[rows]
        return float(vals.mean()) if vals.size else 0.0

    return {"map": mean(slice(None)), "map_50": mean([at[0.5]]) if 0.5 in at else float("nan"),
            "map_75": mean([at[0.75]]) if 0.75 in at else float("nan")}


def coco_average_precision(preds: list[list[ParsedBox]], gts: list[list[ParsedBox]],
                           iou_thresholds: list[float] = COCO_IOU_THRESHOLDS) -> dict[str, float]:
    """COCO AP of greedy answers as pure NumPy: :func:`coco_matches` then
    :func:`coco_accumulate`. The numbers of :class:`DetectionMetrics` (COCOeval "bbox", area
    "all", 100 boxes per image; tested against it in tests/test_demo_detection.py), with the
    per-image matching separable from the ranking, so a bootstrap matches each image once."""
    return coco_accumulate(coco_matches(preds, gts, iou_thresholds), iou_thresholds=iou_thresholds)
