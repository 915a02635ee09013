"""A fit that cannot learn says why (a new user's trial, 2026-12-07: every completion cut at the
length limit was blamed on the format, a reward reading boxes in another frame scored 0 on every
step without a word, and a learning rate of 0, a KL weight of 100, every reward at weight 0 and
nothing trainable were silent or a traceback)."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import LengthReward, fit
from lightning.pytorch import Trainer, seed_everything

from lit_vr1.checks import something_trains, zero_learning_rate_note
from lit_vr1.config import GRPOConfig
from lit_vr1.grpo import GRPOModule
from lit_vr1.no_signal import SilentRewards, cold_sampling_note, strong_kl_note, tied_cause
from lit_vr1.rewards import IoUReward, RecJsonFormat
from lit_vr1.rules import ConfigError


def test_the_tied_groups_cause_is_read_from_the_rollout():
    cut = tied_cause({"completion/truncated_frac": 1.0, "reward/total/mean": 0.0}, 1.0, 6)
    assert "max_completion_length=6" in cut and "truncated_frac 1" in cut and "cold start" not in cut
    alike = tied_cause({"completion/truncated_frac": 0.2, "reward/total/mean": 0.915}, 0.01, 64)
    assert "mean 0.915" in alike and "temperature=0.01" in alike and "cold start" not in alike
    blank = tied_cause({"completion/truncated_frac": 0.5, "reward/total/mean": 0.0}, 1.0, 64)
    assert "answer format" in blank and "cold start" in blank


def stats(**means):
    out = {"groups_tied_frac": means.pop("tied", 0.0)}
    for name, mean in means.items():
        out[f"reward/{name}/mean"], out[f"reward/{name}/std"] = mean, 0.0 if mean == 0 else 0.1
    return out


def test_a_reward_at_zero_on_every_completion_is_named_once_with_the_frame_for_a_box_reward():
    watch, rewards = SilentRewards(3), [IoUReward(), RecJsonFormat(weight=0.5)]
    notes = [watch.update(stats(iou=0.0, rec_format=0.6), rewards, "norm1000") for _ in range(5)]
    assert [len(n) for n in notes] == [0, 0, 1, 0, 0]
    assert "reward iou scored 0 on every completion of the last 3 rollouts" in notes[2][0]
    assert "read in norm1000" in notes[2][0] and "input_pixels" in notes[2][0]


def test_a_rollout_without_the_reward_neither_counts_nor_breaks_the_run_and_a_value_resets_it():
    watch, rewards = SilentRewards(3), [LengthReward()]
    name = rewards[0].name
    assert not watch.update(stats(**{name: 0.0}), rewards) and not watch.update({f"reward/{name}/mean": math.nan}, rewards)
    assert watch.update(stats(**{name: 0.0}), rewards) == [] and watch.in_a_row[name] == 2
    watch.update(stats(**{name: 0.3}), rewards)
    assert watch.in_a_row[name] == 0
    notes = [watch.update(stats(**{name: 0.0}), rewards) for _ in range(3)]
    assert len(notes[2]) == 1 and "box_frame" not in notes[2][0]


def test_a_penalty_at_its_best_and_a_reward_logged_at_weight_zero_are_not_silent_rewards():
    """RepetitionPenalty scores 0 when nothing repeats, as it should (helper-83)."""
    from lit_vr1.rewards import RepetitionPenalty

    watch, rewards = SilentRewards(2), [RepetitionPenalty(), IoUReward(weight=0), RecJsonFormat()]
    notes = [watch.update(stats(repetition=0.0, iou=0.0, rec_format=0.5), rewards) for _ in range(4)]
    assert notes == [[], [], [], []]


def test_a_silent_reward_is_left_to_the_tied_warning_when_every_group_ties():
    watch, rewards = SilentRewards(2), [IoUReward()]
    assert [watch.update(stats(iou=0.0, tied=1.0), rewards) for _ in range(3)] == [[], [], []]
    assert len(watch.update(stats(iou=0.0), rewards)) == 1  # groups apart again, the reward still 0: said


def make():
    cfg = GRPOConfig(num_generations=4, max_completion_length=12, beta=0.0, gradient_clip_val=None)
    return GRPOModule(model="tiny:qwen2_5_vl", rewards=[LengthReward()], grpo=cfg, seed=0,
                      optimizer=lambda p: torch.optim.SGD(p, lr=1e-3))


class Zero(LengthReward):
    default_name = "zero"

    def score(self, completions, contexts):
        return [0.0] * len(completions)


def test_a_fit_warns_of_a_reward_at_zero_while_another_varies(samples):
    seed_everything(0)
    module = make()
    module.rewards = [Zero(), LengthReward()]
    module.tied_rollouts_warning = 2
    with pytest.warns(UserWarning, match=r"reward zero scored 0 on every completion of the last 2 rollouts") as seen:
        fit(module, samples[:2], max_steps=3, batch_size=1)
    assert sum("reward zero scored 0" in str(w.message) for w in seen) == 1
    assert not any("every group tied" in str(w.message) or "temperature" in str(w.message) for w in seen)


def test_a_fit_sampling_near_greedy_is_told_at_its_start(samples):
    module = make()
    module.config.temperature = 0.1
    with pytest.warns(UserWarning, match=r"model.grpo.temperature=0.1 samples each prompt's G completions near"):
        fit(module, samples[:1], max_steps=1, batch_size=1)


def test_every_reward_at_weight_zero_is_refused():
    with pytest.raises(ConfigError, match=r"every reward has weight 0 \(iou, rec_format\)"):
        GRPOModule(model="tiny:qwen2_5_vl", rewards=[IoUReward(weight=0), RecJsonFormat(weight=0)])
    GRPOModule(model="tiny:qwen2_5_vl", rewards=[IoUReward(), RecJsonFormat(weight=0)])  # one logged beside: fine


def test_nothing_trainable_and_a_zero_learning_rate():
    class Frozen:
        freeze_vision, freeze_merger, lora = True, True, None

    said = something_trains([], Frozen())
    assert "nothing would train" in said and "model.freeze_vision=True" in said
    assert something_trains([torch.nn.Parameter(torch.zeros(1))], Frozen()) is None
    w = [torch.nn.Parameter(torch.zeros(1))]
    assert "learning rate is 0" in zero_learning_rate_note(torch.optim.AdamW(w, lr=0.0))
    assert zero_learning_rate_note(torch.optim.AdamW(w, lr=1e-3)) is None


@pytest.mark.parametrize("lr", [0.0, 1e-3])
def test_a_zero_learning_rate_is_said_and_a_warm_up_from_zero_is_not(lr, recwarn):
    """The rate is read before the scheduler: a warm-up whose first factor is 0 sets the rate to 0
    at once, and is right."""
    module = GRPOModule(model="tiny:qwen2_5_vl", optimizer=lambda p: torch.optim.AdamW(p, lr=lr),
                        lr_scheduler=lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda step: step / 10))
    module.configure_model()
    module.trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    got = module.configure_optimizers()
    assert got["optimizer"].param_groups[0]["lr"] == 0.0  # the warm-up's first rate
    said = [str(w.message) for w in recwarn if "learning rate is 0" in str(w.message)]
    assert len(said) == (1 if lr == 0 else 0)


def test_a_strong_kl_weight_is_said():
    assert strong_kl_note(0.04) is None and strong_kl_note(0.5) is None
    assert "beta=100" in strong_kl_note(100.0) and "2500x" in strong_kl_note(100.0)
    assert GRPOConfig(beta=100.0).beta == 100.0  # allowed, said at fit start


def test_sampling_near_greedy_is_said():
    """At temperature 0.01 a trial's groups tied 60-90% for rollouts on end, unsaid (helper-82)."""
    assert cold_sampling_note(1.0) is None and cold_sampling_note(0.7) is None and cold_sampling_note(0.3) is None
    note = cold_sampling_note(0.01)
    assert note.startswith("model.grpo.temperature=0.01") and "train/groups_tied_frac" in note


def test_a_cosine_that_ends_before_max_steps_is_said():
    """Extended past T_max, torch's cosine climbed back (0 at step 10, 1e-4 at 14), unsaid (helper-85)."""
    from lit_vr1.checks import cosine_period_note

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-4)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
    note = cosine_period_note(cosine, 14)
    assert note.startswith("model.lr_scheduler is a CosineAnnealingLR with T_max=10 below trainer.max_steps=14")
    assert cosine_period_note(cosine, 10) is None and cosine_period_note(cosine, -1) is None
    assert cosine_period_note(None, 14) is None
    assert cosine_period_note(torch.optim.lr_scheduler.LinearLR(opt, total_iters=5), 14) is None

