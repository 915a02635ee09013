"""The rollout-update loop under a real Trainer, on the tiny Qwen2.5-VL."""

import copy

import pytest
import torch
from helpers import LengthReward, count_tensor_reads, fit
from lightning.pytorch import seed_everything

from lit_vr1 import loop
from lit_vr1 import loss as lit_loss
from lit_vr1.config import GRPOConfig
from lit_vr1.grpo import GRPOModule
from lit_vr1.scoring import logprobs_in_parts


def make(beta=0.0, lr=1e-3, **grpo):
    cfg = GRPOConfig(num_generations=4, max_completion_length=12, beta=beta, gradient_clip_val=None, **grpo)
    opt = lambda p: torch.optim.SGD(p, lr=lr)  # noqa: E731
    return GRPOModule(model="tiny:qwen2_5_vl", rewards=[LengthReward()], grpo=cfg, optimizer=opt, seed=0)


def train_rows(logger):
    return [m for _, m in logger.rows if "train/loss" in m]


def test_one_step_per_rollout_has_ratio_one_and_no_old_logprob_pass(samples, monkeypatch):
    seed_everything(0)
    module = make()
    calls = []
    monkeypatch.setattr(loop, "logprobs_in_parts", lambda *a: calls.append(a[0]) or logprobs_in_parts(*a))
    logger = fit(module, samples[:4], max_steps=2)
    rows = train_rows(logger)
    assert len(rows) == 2 and [s for s, m in logger.rows if "train/loss" in m] == [1, 2]
    assert all(m["train/ratio_mean"] == 1.0 and m["train/clip_low"] == 0.0 and m["train/clip_high"] == 0.0 for m in rows)
    assert calls == []  # neither old (single step) nor reference (beta = 0) log-probs were computed
    assert module.loop.last_rollout.old_logprobs is None
    assert module.ref_model is None  # beta = 0 builds no reference


def test_two_iterations_reuse_stored_old_logprobs_and_clip(samples, monkeypatch):
    seed_everything(0)
    module = make(lr=0.5, num_iterations=2, epsilon=0.01)
    calls = []
    monkeypatch.setattr(loop, "logprobs_in_parts", lambda *a: calls.append(a[0]) or logprobs_in_parts(*a))
    logger = fit(module, samples[:2], max_steps=2)
    rows = train_rows(logger)
    assert len(rows) == 2 and [r["train/iteration"] for r in rows] == [0, 1]
    assert calls == [module.policy]  # one old-logprob pass per rollout, stored and reused
    assert rows[0]["train/ratio_mean"] == pytest.approx(1.0, abs=1e-6)  # first step: policy == old
    assert abs(rows[1]["train/ratio_mean"] - 1.0) > 1e-3  # second step: the policy moved
    assert rows[1]["train/clip_low"] + rows[1]["train/clip_high"] > 0


def test_reference_gets_no_gradient_and_stays_bit_identical(samples):
    seed_everything(0)
    module = make(beta=0.1, lr=1e-2)
    module.configure_model()
    before = copy.deepcopy(module.ref_model.state_dict())
    policy_before = copy.deepcopy(module.policy.state_dict())
    logger = fit(module, samples[:4], max_steps=2)
    assert all(p.grad is None and not p.requires_grad for p in module.ref_model.parameters())
    after = module.ref_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert any(not torch.equal(policy_before[k], v) for k, v in module.policy.state_dict().items())
    rows = train_rows(logger)
    assert rows[0]["train/kl"] == pytest.approx(0.0, abs=1e-6)  # policy == reference at step 1
    assert rows[1]["train/kl"] > 0


def test_micro_batch_accumulation_matches_full_batch(samples):
    params = []
    for micro in (None, 3):
        seed_everything(0)
        module = make(lr=1.0, micro_batch_size=micro)
        fit(module, samples[:2], max_steps=1)
        params.append({k: v.clone() for k, v in module.policy.state_dict().items()})
    for k in params[0]:
        torch.testing.assert_close(params[0][k], params[1][k], atol=1e-5, rtol=1e-4)
    seed_everything(0)
    fresh = make()
    fresh.configure_model()
    moved = any(not torch.allclose(fresh.policy.state_dict()[k], params[0][k]) for k in params[0])
    assert moved


def test_logged_token_means_do_not_depend_on_the_micro_batches(samples, monkeypatch):
    """Entropy, KL, clip fractions and the ratio are the mini-batch's token means however it is cut
    (each micro-batch counted by its share of the sequences, KL moved by up to 3.7%: a new user's trial)."""
    generate = loop.generate

    def completions_of_several_lengths(*args, **kwargs):  # a random model rarely ends a completion early
        rollout = generate(*args, **kwargs)
        width = rollout.completion_mask.shape[1]
        for i in range(len(rollout)):
            rollout.completion_mask[i, max(1, width - 3 * i):] = False
        return rollout

    monkeypatch.setattr(loop, "generate", completions_of_several_lengths)
    rows = {}
    for micro in (None, 3):
        seed_everything(0)
        rows[micro] = train_rows(fit(make(lr=1e-2, beta=0.04, micro_batch_size=micro), samples[:2], max_steps=2))[1]
    assert rows[None]["train/kl"] > 0
    for key in ("train/kl", "train/entropy", "train/ratio_mean", "train/clip_low", "train/clip_high", "train/loss"):
        assert rows[3][key] == pytest.approx(rows[None][key], rel=1e-4, abs=1e-7), key


def test_mini_batches_take_several_steps_per_rollout(samples):
    seed_everything(0)
    module = make(mini_batch_size=4)
    logger = fit(module, samples[:2], max_steps=4)  # 8 completions / 4 = 2 steps a rollout
    rows = train_rows(logger)
    assert len(rows) == 4 and module.trainer.global_step == 4
    assert rows[0]["train/reward/total/mean"] == rows[1]["train/reward/total/mean"]  # same rollout


def test_every_required_statistic_is_logged(samples):
    seed_everything(0)
    module = make(beta=0.04)
    row = train_rows(fit(module, samples[:2], max_steps=1))[0]
    for key in (
        "reward/length/mean", "reward/length/std", "reward/total/mean", "reward/total/std", "advantage/mean",
        "advantage/std", "kl", "clip_low", "clip_high", "completion/length_mean", "completion/length_max",
        "groups_tied_frac", "entropy", "time/rollout_s", "time/rewards_s", "time/update_s", "loss", "grad_norm", "lr",
    ):
        assert "train/" + key in row, key


class ConstantReward(LengthReward):
    default_name = "constant"

    def score(self, completions, contexts):
        return [0.0] * len(completions)


def test_a_fit_with_every_group_tied_warns_once_and_a_signal_resets_it(samples):
    """A random model scored 0 everywhere: every advantage is 0, GRPO learns nothing, and
    the fit says so (once) after ``tied_rollouts_warning`` rollouts in a row."""
    seed_everything(0)
    module = make()
    module.rewards = [ConstantReward()]
    module.tied_rollouts_warning = 2
    with pytest.warns(UserWarning, match=r"the last 2 rollouts had every group tied .* GRPO learns nothing") as seen:
        logger = fit(module, samples[:2], max_steps=3, batch_size=1)
    assert [m["train/groups_tied_frac"] for m in train_rows(logger)] == [1.0, 1.0, 1.0]
    assert sum("every group tied" in str(w.message) for w in seen) == 1
    assert not any("Rewards failed" in str(w.message) for w in seen)
    module.warn_when_nothing_to_learn(0.5, 0.3)  # a rollout with signal starts the count again
    assert module.tied_in_a_row == 0
    module.rewards[0].errors = 96  # a judge that stopped answering, masked: the rest tie without it
    with pytest.warns(UserWarning, match=r"Rewards failed and were masked .* constant \(96 completions, "
                                         r"train/reward/constant/errors\)"):
        for _ in range(module.tied_rollouts_warning):
            module.warn_when_nothing_to_learn(1.0, 0.0)


def test_unknown_choices_are_refused_with_the_valid_ones():
    with pytest.raises(ValueError, match="loss_type='ppo' is not valid; choose one of grpo, bnpo, dr_grpo, dapo"):
        GRPOConfig(loss_type="ppo")
    with pytest.raises(ValueError, match="scale_rewards='max' is not valid; choose one of group, batch, none"):
        GRPOConfig(scale_rewards="max")


def test_gradient_clipping_bounds_the_update(samples):
    seed_everything(0)
    module = GRPOModule(model="tiny:qwen2_5_vl", rewards=[LengthReward()], seed=0,
                        grpo=GRPOConfig(num_generations=4, max_completion_length=12, beta=0.0, gradient_clip_val=1e-3),
                        optimizer=lambda p: torch.optim.SGD(p, lr=1.0))
    module.configure_model()
    before = [p.detach().clone() for p in module.policy.parameters()]
    row = train_rows(fit(module, samples[:2], max_steps=1))[0]
    step = torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(module.policy.parameters(), before)))
    assert row["train/grad_norm"] > 1e-3  # the raw norm is logged, before clipping
    assert step.item() == pytest.approx(1e-3, rel=1e-3)  # SGD with lr 1 moves by the clipped norm


def test_lr_scheduler_steps_every_optimiser_step(samples):
    seed_everything(0)
    module = make(mini_batch_size=4)
    module.scheduler_factory = lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (step + 1))
    rows = train_rows(fit(module, samples[:2], max_steps=3))
    assert [r["train/lr"] for r in rows] == pytest.approx([1e-3 / 2, 1e-3 / 3, 1e-3 / 4])


def _host_reads_in_update(module, samples, monkeypatch) -> int:
    """Tensor values read into Python (float, int, bool, item, tolist) by the loop and loss
    code while :meth:`RolloutUpdateLoop.update` runs one step: on a GPU each one waits for it."""
    calls = count_tensor_reads(monkeypatch, files=(loop.__file__, lit_loss.__file__))
    calls["active"] = False
    update = module.loop.update

    def counting_update(*args, **kwargs):
        calls["active"] = True
        try:
            return update(*args, **kwargs)
        finally:
            calls["active"] = False

    monkeypatch.setattr(module.loop, "update", counting_update)
    fit(module, samples[:2], max_steps=1)
    return calls["n"]


def test_statistics_are_read_once_per_step_not_per_micro_batch(samples, monkeypatch):
    """The loss statistics stay on the device over the micro-batches: the step reads them
    (and the has-tokens flag) in one transfer, so 8 micro-batches read no more than 1."""
    counts = {}
    for micro in (None, 1):  # 8 completions: one micro-batch, then eight
        seed_everything(0)
        counts[micro] = _host_reads_in_update(make(beta=0.04, loss_type="dapo", micro_batch_size=micro), samples,
                                              monkeypatch)
    assert counts[None] == counts[1] == 1, counts


def test_the_rewards_time_is_logged(samples):
    """A slow reward (a judge, a function calling out) showed nowhere: the rollout's and the
    update's times did not include it."""
    import time

    class Slow(LengthReward):
        default_name = "slow"

        def score(self, completions, contexts):
            time.sleep(0.3)
            return super().score(completions, contexts)

    seed_everything(0)
    module = make()
    module.rewards = [Slow()]
    row = train_rows(fit(module, samples[:2], max_steps=1))[0]
    assert row["train/time/rewards_s"] >= 0.3


class FirstRolloutUnscored(LengthReward):
    """nan (not applicable) for every completion of the first rollout, then the length reward."""

    default_name = "late"
    calls = 0

    def score(self, completions, contexts):
        self.calls += 1
        return [float("nan")] * len(completions) if self.calls == 1 else super().score(completions, contexts)


def test_a_step_without_loss_tokens_logs_nan_not_zero_and_beta_0_logs_no_kl(samples):
    """A skipped step with nothing scored logged loss, grad_norm, entropy, ratio and clip fractions as 0
    (a ratio of 0 beside the applied steps' 0.86); beta 0 logged train/kl 0.0 on every step, which
    reads as "no drift" (helper-69)."""
    import math
    import warnings

    seed_everything(0)
    module = make()
    module.rewards = [FirstRolloutUnscored()]
    from lightning.pytorch.callbacks import EarlyStopping

    stop = EarlyStopping(monitor="loss", patience=100, strict=False, check_on_train_epoch_end=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the skip's own warning
        rows = [m for _, m in fit(module, samples[:2], max_steps=1, callbacks=[stop]).rows if "train/skipped_steps" in m]
    # the nan loss stays out of the callbacks' metrics too: EarlyStopping stopped at it after the skipped step (helper-70)
    assert module.skipped_steps == 1 and len(rows) == 2 and module.global_step == 1
    skipped, applied = rows  # nan figures are left out of a logged row (an empty cell in metrics.csv)
    for key in ("loss", "grad_norm", "entropy", "ratio_mean", "clip_low", "clip_high"):
        assert "train/" + key not in skipped and math.isfinite(applied["train/" + key]), key
    assert skipped["train/skipped_steps"] == 1.0 and applied["train/ratio_mean"] == 1.0
    assert not any("train/kl" in r for r in rows)  # beta 0: no reference, no KL measured
