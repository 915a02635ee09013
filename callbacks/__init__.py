"""Lightning callbacks for lit-vr1 (YAML: ``class_path: callbacks.RolloutTable``)."""

from callbacks.cold_start import ColdStart
from callbacks.merged_export import MergedExport
from callbacks.prediction_writer import PredictionWriter
from callbacks.ptst import PTST, PTSTStage
from callbacks.rollout_log import RolloutLog
from callbacks.rollout_table import RolloutTable

__all__ = ["PTST", "ColdStart", "MergedExport", "PTSTStage", "PredictionWriter", "RolloutLog", "RolloutTable"]
