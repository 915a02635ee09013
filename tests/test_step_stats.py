"""One step's logged figures combined over processes (``lit_vr1.step_stats``), against the
figures computed over all processes' values at once."""

from __future__ import annotations

import math

import pytest
import torch

from lit_vr1.rewards.base import RewardScores
from lit_vr1.step_stats import combine, local


def _scores(iou: list[float], fmt: list[float]) -> RewardScores:
    per_reward = torch.tensor([iou, fmt], dtype=torch.float32)
    total = torch.nan_to_num(per_reward).sum(dim=0)
    return RewardScores(["iou", "format"], per_reward, total, errors=[1, 0], nonfinite=[0, 0])


def test_reward_figures_combine_as_if_computed_over_every_process_at_once():
    nan = math.nan
    a = _scores([0.2, 0.4, 0.9, nan], [1.0, 0.0, 1.0, 1.0])  # iou routed: 3 rows here
    b = _scores([nan, nan, nan, nan], [0.0, 1.0, 1.0, 0.0])  # none of its rows on this process
    c = _scores([0.5, nan, 0.7, 0.1], [1.0, 1.0, 1.0, 0.0])
    got = combine([a.stats(), b.stats(), c.stats()])
    iou = torch.tensor([0.2, 0.4, 0.9, 0.5, 0.7, 0.1])
    fmt = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0])
    assert got["reward/iou/mean"] == pytest.approx(float(iou.mean()), rel=1e-6)  # the mean of means: nan before
    assert got["reward/iou/std"] == pytest.approx(float(iou.std()), rel=1e-6)  # pooled, unbiased
    assert got["reward/format/mean"] == pytest.approx(float(fmt.mean()), rel=1e-6)
    assert got["reward/format/std"] == pytest.approx(float(fmt.std()), rel=1e-6)
    assert got["reward/iou/errors"] == 3.0  # one on each process: summed, not averaged
    assert not any(k.startswith("n/") for k in got)
    # a reward no process could score stays nan (loggers leave it out)
    assert math.isnan(combine([b.stats(), b.stats()])["reward/iou/mean"])


def test_token_means_weigh_by_tokens_and_maxima_take_the_largest():
    a = {"kl": 0.1, "entropy": 2.0, "n/tokens": 300.0, "completion/length_max": 64.0, "completion/length_mean": 40.0,
         "n/completions": 8.0, "groups_tied_frac": 0.5, "n/groups": 2.0, "advantage/abs_max": 1.2, "loss": 0.3,
         "time/rollout_s": 2.0, "lr": 1e-5}
    b = {"kl": 0.4, "entropy": 1.0, "n/tokens": 100.0, "completion/length_max": 20.0, "completion/length_mean": 12.0,
         "n/completions": 8.0, "groups_tied_frac": 0.0, "n/groups": 2.0, "advantage/abs_max": 1.9, "loss": 0.5,
         "time/rollout_s": 3.0, "lr": 1e-5}
    got = combine([a, b])
    assert got["kl"] == pytest.approx((0.1 * 300 + 0.4 * 100) / 400)  # the plain mean gave 0.25
    assert got["entropy"] == pytest.approx(1.75)
    assert got["completion/length_max"] == 64.0 and got["advantage/abs_max"] == 1.9
    assert got["completion/length_mean"] == 26.0 and got["groups_tied_frac"] == 0.25
    assert got["loss"] == pytest.approx(0.4) and got["time/rollout_s"] == 3.0 and got["lr"] == 1e-5
    assert combine([{**a, "loss": math.nan}, b])["loss"] != combine([a, b])["loss"]  # a nan loss stays in sight
    assert math.isnan(combine([{**a, "loss": math.nan}, b])["loss"])
    assert local(a) == {k: v for k, v in a.items() if not k.startswith("n/")}
    diverged = combine([{**a, "kl": math.nan, "entropy": math.inf}, b])  # a nan or inf over tokens stays in sight
    assert math.isnan(diverged["kl"]) and diverged["entropy"] == math.inf
    assert combine([{**a, "kl": math.nan, "n/tokens": 0.0}, b])["kl"] == 0.4  # nothing counted there: left out
