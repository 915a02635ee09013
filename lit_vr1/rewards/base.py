"""The reward interface and the weighted sum of rewards.

A reward sees every completion of a batch together with the sample it answered
(:class:`SampleContext`) and returns one float per completion; ``nan`` means "not
applicable here" and is left out of the sum and of the statistics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image
from torch import Tensor


@dataclass
class SampleContext:
    """What a reward may look at for one completion.

    image_sizes: original (width, height) of each image, in prompt order.
    input_sizes: (width, height) of each image as the model saw it (after resizing).
    """

    id: str
    prompt: str
    solution: str
    images: list[Image.Image] = field(default_factory=list)
    image_sizes: list[tuple[int, int]] = field(default_factory=list)
    input_sizes: list[tuple[int, int]] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    completion_length: int = 0
    global_step: int = 0


class Reward:
    """Base class of every reward: subclasses implement :meth:`score`.

    Args:
        weight: factor of this reward in the total.
        name: key under which it is logged (default: the class's ``default_name``).
    """

    default_name = "reward"

    def __init__(self, weight: float = 1.0, name: str | None = None) -> None:
        self.weight = float(weight)
        self.name = name or self.default_name

    def score(self, completions: list[str], contexts: list[SampleContext]) -> list[float]:
        raise NotImplementedError

    def __call__(self, completions: list[str], contexts: list[SampleContext]) -> list[float]:
        values = self.score(completions, contexts)
        if len(values) != len(completions):
            raise ValueError(f"reward {self.name!r} returned {len(values)} values for {len(completions)} completions")
        return [float(v) for v in values]


@dataclass
class RewardScores:
    """Rewards of one batch. per_reward: (R, N), nan where not applicable; total: (N,)."""

    names: list[str]
    per_reward: Tensor
    total: Tensor

    def stats(self) -> dict[str, float]:
        """Mean and std of each reward over the completions where it applied, and of the total."""
        out: dict[str, float] = {}
        for name, row in zip(self.names, self.per_reward):
            valid = row[~torch.isnan(row)]
            out[f"reward/{name}/mean"] = float(valid.mean()) if valid.numel() else math.nan
            out[f"reward/{name}/std"] = float(valid.std()) if valid.numel() > 1 else 0.0
        out["reward/total/mean"] = float(self.total.mean())
        out["reward/total/std"] = float(self.total.std()) if self.total.numel() > 1 else 0.0
        return out


def score_all(rewards: list[Reward], completions: list[str], contexts: list[SampleContext]) -> RewardScores:
    """Run every reward and form the weighted sum, skipping nan entries (a completion no
    reward applies to gets 0)."""
    if not rewards:
        raise ValueError("no reward functions configured: set `model.rewards` in the config")
    rows = [torch.tensor(r(completions, contexts), dtype=torch.float32) for r in rewards]
    per_reward = torch.stack(rows)
    weights = torch.tensor([r.weight for r in rewards], dtype=torch.float32).unsqueeze(1)
    total = torch.nansum(per_reward * weights, dim=0)
    return RewardScores(names=[r.name for r in rewards], per_reward=per_reward, total=total)
