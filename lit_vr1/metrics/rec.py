"""REC evaluation metrics: Acc@0.5 and mean IoU, as torchmetrics Metrics (DDP-synced)."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


class RECMetrics(Metric):
    """Accumulates per-sample IoUs (boxes already in original-image pixels).

    compute() -> {"acc50": fraction with IoU > 0.5 (strict, as RefCOCO evaluation in
    VLM-R1), "miou": mean IoU, "format": fraction of answers in the REC JSON format (when
    ``update`` is given them), "n": answers}. A missing or unparsable box counts as IoU 0.
    """

    full_state_update = False

    def __init__(self, threshold: float = 0.5, **kwargs) -> None:
        super().__init__(**kwargs)
        self.threshold = threshold
        self.add_state("iou_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("hits", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("formatted", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, ious: Tensor, formatted: Tensor | None = None) -> None:
        """``ious`` (n,) of n answers, and ``formatted`` (n,): 1.0 where an answer is in the format."""
        ious = ious.to(torch.float64).flatten()
        self.iou_sum += ious.sum()
        self.hits += (ious > self.threshold).sum()
        self.count += ious.numel()
        if formatted is not None:
            self.formatted += formatted.to(torch.float64).sum()

    def compute(self) -> dict[str, Tensor]:
        n = self.count.clamp(min=1.0)
        return {"acc50": (self.hits / n).float(), "miou": (self.iou_sum / n).float(),
                "format": (self.formatted / n).float(), "n": self.count.clone()}
