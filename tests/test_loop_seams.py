"""The loop's seams for research code (a library user's trial, helper-77): another advantage
estimator, groups left out of the update (DAPO's dynamic sampling), a loop class of one's own."""

import dataclasses
import math
from types import SimpleNamespace

import pytest
import torch
from helpers import LengthReward, fit
from lightning.pytorch import seed_everything

from lit_vr1 import loop
from lit_vr1.config import GRPOConfig
from lit_vr1.grpo import GRPOModule
from lit_vr1.loss import group_advantages
from lit_vr1.rewards.base import Reward
from lit_vr1.scoring import logprobs

G = 4


class RLOOLoop(loop.RolloutUpdateLoop):
    """REINFORCE leave-one-out (Ahmadian et al. 2024): each reward minus the mean of the others'."""

    def advantages(self, rollout, scores, reduce_sum):
        r = scores.total.view(-1, rollout.group_size)
        others = (r.sum(dim=1, keepdim=True) - r) / (rollout.group_size - 1)
        return dataclasses.replace(super().advantages(rollout, scores, reduce_sum), values=(r - others).reshape(-1))


class KeepSecondGroup(loop.RolloutUpdateLoop):
    def groups_to_train(self, rollout, scores, advantages):
        return [1]


class KeepNone(loop.RolloutUpdateLoop):
    def groups_to_train(self, rollout, scores, advantages):
        return []


class NoStats(loop.RolloutUpdateLoop):
    def run(self, samples):
        super().run(samples)
        return {"mine": 1.0}


def module_with(loop_cls, rewards=None, loss_type="grpo", mini_batch_size=None, **kwargs):
    cls = type(f"With{loop_cls.__name__}", (GRPOModule,), {"loop_class": loop_cls})
    cfg = GRPOConfig(num_generations=G, max_completion_length=12, beta=0.0, gradient_clip_val=None, loss_type=loss_type,
                     mini_batch_size=mini_batch_size)
    return cls(model="tiny:qwen2_5_vl", rewards=rewards or [LengthReward()], grpo=cfg,
               optimizer=lambda p: torch.optim.SGD(p, lr=1.0), seed=0, **kwargs)


def weights(module):
    return {k: v.detach().clone() for k, v in module.policy.state_dict().items()}


def test_a_module_subclass_runs_its_own_loop_and_its_advantages_are_what_the_update_reads(samples):
    seed_everything(0)
    module = module_with(RLOOLoop)
    assert type(module.loop) is RLOOLoop
    fit(module, samples[:2], max_steps=1)
    rollout, scores = module.loop.last_rollout, module.loop.last_scores
    r = scores.total.view(-1, G)
    torch.testing.assert_close(rollout.advantages, (r - (r.sum(1, keepdim=True) - r) / (G - 1)).reshape(-1))
    assert not torch.allclose(rollout.advantages, group_advantages(scores.total, G).values)


class NanOnFirstPrompt(Reward):
    """The length reward, nan (unscored: out of the advantages and the loss) on the first prompt's group."""

    default_name = "length"

    def score(self, completions, contexts):
        first = contexts[0].id
        return [math.nan if c.id == first else len(t) / 100.0 for t, c in zip(completions, contexts)]


@pytest.mark.parametrize("freeze_vision", [False, True])  # True: the rollout's image features are reused, cut too
def test_groups_left_out_train_as_if_they_had_never_been_scored(samples, freeze_vision):
    """Leaving the first group out of the update moves the weights as that group being unscored
    does (same rollout, same seed; bnpo divides by the loss tokens, which leave unscored
    completions out): the kept rows are cut with their own prompt and images."""
    seed_everything(0)
    frozen = {"freeze_vision": freeze_vision, "freeze_merger": freeze_vision}
    kept = module_with(KeepSecondGroup, loss_type="bnpo", **frozen)
    logger = fit(kept, samples[:2], max_steps=1)
    seed_everything(0)
    unscored = module_with(loop.RolloutUpdateLoop, rewards=[NanOnFirstPrompt()], loss_type="bnpo", **frozen)
    fit(unscored, samples[:2], max_steps=1)
    # the same rollout sampled; last_rollout (RolloutLog's, RolloutTable's) is the whole of it
    assert len(kept.loop.last_rollout) == 2 * G
    assert kept.loop.last_rollout.completions == unscored.loop.last_rollout.completions
    assert (kept.loop.last_rollout.image_features is not None) is freeze_vision
    fresh = module_with(loop.RolloutUpdateLoop, **frozen)
    fresh.configure_model()
    before = fresh.policy.state_dict()
    a, b = weights(kept), weights(unscored)
    assert any(not torch.equal(a[k], before[k]) for k in a)  # it trained
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)
    row = next(m for _, m in logger.rows if "train/loss" in m)
    assert row["train/groups_kept_frac"] == 0.5
    assert row["train/groups_tied_frac"] == 0.0  # of the whole rollout, as sampled


def test_a_selected_group_scores_as_it_did_in_the_whole_rollout(samples):
    seed_everything(0)
    module = module_with(loop.RolloutUpdateLoop)
    fit(module, samples[:3], batch_size=3, max_steps=1)
    rollout = module.loop.last_rollout
    part = rollout.select_groups([2, 0])
    rows = torch.cat([torch.arange(2 * G, 3 * G), torch.arange(0, G)])
    assert part.images_per_row == [rollout.images_per_row[2], rollout.images_per_row[0]]
    assert torch.equal(part.completion_ids, rollout.completion_ids[rows])
    with torch.no_grad():
        torch.testing.assert_close(logprobs(module.policy, part, grad=False),
                                   logprobs(module.policy, rollout, rows, grad=False), atol=1e-5, rtol=1e-5)


def test_a_rollout_with_every_group_left_out_trains_nothing(samples):
    seed_everything(0)
    module = module_with(KeepNone)
    module.configure_model()
    before = weights(module)
    fit(module, samples[:4], max_steps=1, limit_train_batches=2, max_epochs=1)
    assert module.global_step == 0 and all(torch.equal(before[k], v) for k, v in weights(module).items())


def test_a_filter_that_keeps_nothing_rollout_after_rollout_stops_the_fit(samples):
    """No optimiser step is taken, so max_steps is never reached: the fit read its data forever
    (a README example on a random model, whose groups all tie)."""
    seed_everything(0)
    module = module_with(type("KeepNoneThrice", (KeepNone,), {"max_rollouts_without_groups": 3}))
    with pytest.raises(ValueError, match=r"groups_to_train kept no group in 3 rollouts in a row \(the last at step 0"):
        fit(module, samples[:8], max_steps=1, limit_train_batches=4, max_epochs=1)


def test_processes_that_keep_different_numbers_of_groups_are_stopped():
    learner = SimpleNamespace(world_size=2, device=torch.device("cpu"))
    lp = loop.RolloutUpdateLoop.__new__(KeepSecondGroup)
    lp.module = learner
    other_keeps = lambda k: lambda t: t + torch.tensor([k, k * k], dtype=torch.float64)  # noqa: E731
    with pytest.raises(ValueError, match="kept 1 groups on this process"):
        lp.kept_groups(None, None, None, [1], other_keeps(2.0))


def test_an_override_of_run_that_drops_the_statistics_is_named(samples):
    seed_everything(0)
    with pytest.raises(ValueError, match=r"NoStats.run returned no reward/total/mean or groups_tied_frac"):
        fit(module_with(NoStats), samples[:2], max_steps=1)


def test_each_process_keeps_as_many_groups_as_the_fewest_any_keeps():
    """A DAPO filter keeps each process's untied groups, which differ: cut to the fewest."""
    lp = loop.RolloutUpdateLoop.__new__(loop.RolloutUpdateLoop)
    other = torch.tensor([0.0, 2.0], dtype=torch.float64)  # rank 1 keeps 2 groups
    lp.module = SimpleNamespace(world_size=2, global_rank=0, device=torch.device("cpu"), reduce_sum=lambda t: t + other)
    assert lp.as_many_everywhere([0, 3, 5]) == [0, 3]
    lp.module = SimpleNamespace(world_size=1)
    assert lp.as_many_everywhere([0, 3, 5]) == [0, 3, 5]


@pytest.mark.parametrize("loop_cls, warned", [(loop.RolloutUpdateLoop, True), (KeepSecondGroup, False)])
def test_max_steps_inside_a_rollout_is_warned_of_only_where_rollouts_take_a_fixed_number_of_steps(tmp_path, loop_cls,
                                                                                                    warned, recwarn):
    """Two prompts x G in mini-batches of G: two optimiser steps a rollout, so max_steps=1 ends
    inside one. A loop that leaves groups out takes as many steps as its kept groups fill
    (here one), so the warning's count would be wrong there (helper-77, helper-78)."""
    from lightning.pytorch import Trainer

    from lit_vr1.data.datamodule import GroundingDataModule
    from lit_vr1.data.synthetic import SyntheticSpec

    seed_everything(0)
    module = module_with(loop_cls, mini_batch_size=G, min_pixels=3136, max_pixels=3136)
    data = GroundingDataModule(synthetic=SyntheticSpec(num_samples=4, canvas=56), synthetic_dir=str(tmp_path / "d"),
                               num_val_samples=0, batch_size=2)
    Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0).fit(module, data)
    inside = [str(w.message) for w in recwarn if "ends inside a rollout" in str(w.message)]
    assert bool(inside) == warned, inside
    assert module.global_step == 1
