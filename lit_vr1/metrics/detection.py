"""Dataset-level detection metrics: COCO mAP, AP50 and AP75 of greedy answers, through
torchmetrics' ``MeanAveragePrecision`` (the seeds evaluate COCO and ODINW this way).

The model states no confidence, so boxes rank in the order they were written, images in
the order they were evaluated: each box gets a score that falls with its running index
(the same ranking as COCOeval's stable sort of equal scores; with truly equal scores two
COCO implementations break ties across images differently, and AP moves with that).
Labels are compared stripped and lower-cased; each label gets one id for the whole run.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric
from torchmetrics.detection import MeanAveragePrecision

from lit_vr1.rewards.boxes import ParsedBox
from lit_vr1.rewards.detection import COCO_IOU_THRESHOLDS, COCO_REC_THRESHOLDS, clean_gt_box, normalize_label


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
            scores = 1.0 / (1.0 + 1e-3 * rank)
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
