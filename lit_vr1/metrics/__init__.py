"""Evaluation metrics."""

from lit_vr1.metrics.detection import DetectionMetrics
from lit_vr1.metrics.rec import RECMetrics

__all__ = ["DetectionMetrics", "RECMetrics"]
