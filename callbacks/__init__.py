"""Lightning callbacks for lit-vr1 (YAML: ``class_path: callbacks.RolloutTable``)."""

from callbacks.merged_export import MergedExport
from callbacks.rollout_log import RolloutLog
from callbacks.rollout_table import RolloutTable

__all__ = ["MergedExport", "RolloutLog", "RolloutTable"]
