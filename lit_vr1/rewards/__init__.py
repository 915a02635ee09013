"""Reward functions: choose them in YAML with ``class_path: lit_vr1.rewards.IoUReward``."""

from lit_vr1.rewards.base import Reward, RewardScores, SampleContext, score_all
from lit_vr1.rewards.rec import IoUReward, RecJsonFormat, ThinkAnswerFormat

__all__ = ["IoUReward", "RecJsonFormat", "Reward", "RewardScores", "SampleContext", "ThinkAnswerFormat", "score_all"]
