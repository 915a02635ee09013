"""Reward functions: choose them in YAML with ``class_path: lit_vr1.rewards.IoUReward``.

Families (one module each): ``rec`` (IoU, formats), ``detection`` (mAP, odLength,
weighted sum), ``vision_r1`` (localisation precision/recall, dual format, progressive
thresholds), ``accuracy`` (exact/numeric/choice/yes-no/math, HFRRF), ``length``
(cosine length, repetition), ``function`` (your own TRL-style function),
``reward_model`` (a judge in-process or over HTTP; the server is
``python -m lit_vr1.rewards.serve``).
"""

from lit_vr1.rewards.accuracy import HFRRF, Accuracy
from lit_vr1.rewards.base import BrokenReward, Reward, RewardError, RewardScores, SampleContext, score_all
from lit_vr1.rewards.detection import DetectionMAP, DetectionWeightedSum, ODLength
from lit_vr1.rewards.function import FunctionReward
from lit_vr1.rewards.length import CosineLength, RepetitionPenalty
from lit_vr1.rewards.rec import IoUReward, RecJsonFormat, ThinkAnswerFormat
from lit_vr1.rewards.reward_model import RemoteRewardModel, RewardModelReward
from lit_vr1.rewards.vision_r1 import DualFormat, LocalizationPrecision, LocalizationRecall, ThresholdSchedule

__all__ = [
    "HFRRF", "Accuracy", "BrokenReward", "CosineLength", "DetectionMAP", "DetectionWeightedSum", "DualFormat",
    "FunctionReward", "IoUReward", "LocalizationPrecision", "LocalizationRecall", "ODLength", "RecJsonFormat",
    "RemoteRewardModel", "RepetitionPenalty", "Reward", "RewardError", "RewardModelReward", "RewardScores",
    "SampleContext", "ThinkAnswerFormat", "ThresholdSchedule", "score_all",
]
