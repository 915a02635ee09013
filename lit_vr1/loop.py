"""RolloutUpdateLoop: one training batch of prompts -> rollout -> rewards -> advantages
-> ``num_iterations`` passes of clipped updates over mini-batches.

A plain class owned by the module (it does not subclass Lightning's private loops).
It talks to the module through a narrow, typed surface, :class:`Learner`: the policy,
reference and processor, and backward, step, reduce and log; so the same loop runs under
DDP, FSDP2, DeepSpeed or a single process. Generation is :mod:`lit_vr1.generation`,
every log-prob :mod:`lit_vr1.scoring`, every formula :mod:`lit_vr1.loss`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from transformers import ProcessorMixin

from lit_vr1 import oom, shared_prompt
from lit_vr1.config import GRPOConfig, SamplingConfig
from lit_vr1.data.jsonl import Sample
from lit_vr1.generation import generate
from lit_vr1.loss import Advantages, batch_std_from_sums, batch_sums, group_advantages, group_rows, grpo_loss
from lit_vr1.models.families import vision_token_ids
from lit_vr1.rewards.base import Reward, RewardScores, failed_rollout_flags, score_all, stop_on_failing_rewards
from lit_vr1.rollout import Rollout
from lit_vr1.scoring import logprobs_and_entropy, logprobs_in_parts


@dataclass
class StepOutcome:
    """What one optimiser step did: the global gradient norm before clipping (nan when none
    was computed), the learning rate after the scheduler's step, and the run's count of
    skipped steps."""

    grad_norm: float
    lr: float
    skipped_steps: int


class Learner(Protocol):
    """What the loop needs from the module that owns it (:class:`lit_vr1.grpo.GRPOModule`):
    the models, the processor and rewards, and its actions (backward and its gradient sync, step, reduce, log)."""

    policy: nn.Module
    processor: ProcessorMixin
    rewards: list[Reward]
    box_frame: str

    @property
    def global_step(self) -> int: ...

    @property
    def world_size(self) -> int: ...

    def generation_context(self) -> AbstractContextManager[None]:
        """Wraps a rollout (sharded weights gathered once, weights cast once under autocast)."""

    def reference_context(self) -> AbstractContextManager[nn.Module]:
        """Yields the reference model, without gradients."""

    def manual_backward(self, loss: Tensor) -> None:
        """Backward of one micro-batch's loss (the strategy's, e.g. DDP's gradient sync)."""

    def gradient_sync(self, enabled: bool) -> AbstractContextManager[None]:
        """Wraps a micro-batch's backward: with ``enabled`` False the strategy keeps the
        gradients local (DDP's ``no_sync``) and the next synced backward reduces their sum."""

    def apply_update(self, loss: float, max_norm: float | None, has_tokens: bool) -> StepOutcome:
        """Clip, step (or skip a non-finite step) and zero the gradients."""

    def reduce_sum(self, value: Tensor) -> Tensor:
        """``value`` summed over the processes."""

    def log_step(self, metrics: dict[str, float]) -> None:
        """Send one optimiser step's statistics to the loggers."""

    def reached_max_steps(self) -> bool:
        """True once the Trainer's max_steps optimiser steps are done."""


STEP_STATS = ("loss", "entropy", "kl", "clip_low", "clip_high", "ratio_mean")  # summed over an update's micro-batches


def chunks(rows: Tensor, size: int) -> list[Tensor]:
    return [rows[i : i + size] for i in range(0, rows.numel(), size)]


def group_order(n: int, group_size: int, generator: torch.Generator | None) -> Tensor:
    """(n,) completion rows with whole groups in random order (each group's G rows stay side
    by side, in order); ``generator`` None: all rows in order."""
    if generator is None:
        return torch.arange(n)
    groups = torch.randperm(n // group_size, generator=generator)
    return (groups[:, None] * group_size + torch.arange(group_size)[None]).flatten()


def rollout_steps(n: int, mini_batch_size: int | None, num_iterations: int) -> tuple[int, int]:
    """(mini-batch size, optimiser steps) of a rollout of ``n`` completions: ``num_iterations``
    passes over it, each cut into mini-batches of ``mini_batch_size`` (None: the whole rollout),
    one optimiser step each."""
    mini = min(mini_batch_size or n, n)
    return mini, num_iterations * math.ceil(n / mini)


def rollout_advantages(scores: RewardScores, group_size: int, scale: str,
                       reduce_sum: Callable[[Tensor], Tensor] | None = None) -> Advantages:
    """Group advantages of a rollout's scored completions (unscored ones left out, see
    :class:`~lit_vr1.rewards.base.RewardScores`). With ``scale="batch"`` the std is that of
    the whole batch over every process: ``reduce_sum`` sums a tensor over the processes
    (one all-reduce of three numbers; None: this process is the batch)."""
    valid = ~scores.unscored
    batch_std = None
    if scale == "batch" and reduce_sum is not None:
        batch_std = batch_std_from_sums(reduce_sum(batch_sums(scores.total, valid)).cpu())
    return group_advantages(scores.total, group_size, scale, valid=valid, batch_std=batch_std)


class RolloutUpdateLoop:
    """Runs one GRPO training batch for ``module`` with ``config``.

    ``run(samples)`` returns the statistics of the rollout (rewards, advantages,
    lengths, timings); each optimiser step's statistics are sent to
    ``module.log_step`` as they happen.
    """

    max_rollouts_without_groups = 10  # rollouts in a row with no group kept (groups_to_train) before the fit stops

    def __init__(self, module: Learner, config: GRPOConfig) -> None:
        self.module = module
        self.config = config
        self.suppress_ids = vision_token_ids(module.processor)  # never generated, never scored
        self.last_rollout: Rollout | None = None
        self.last_scores: RewardScores | None = None
        self._warned = False

    @property
    def sampling(self) -> SamplingConfig:
        """What the next rollout samples from, derived from the config at each use (PTST changes
        the config between rollouts); the rollout keeps the distribution its tokens are scored under."""
        return self.config.sampling(self.suppress_ids)

    # -- the steps ---------------------------------------------------------------------
    def rollout(self, samples: list[Sample]) -> Rollout:
        m = self.module
        was_training = m.policy.training
        m.policy.eval()
        prompts, group, tokens = len(samples), self.config.num_generations, self.config.max_completion_length
        try:
            with oom.in_phase("the rollout",
                              lambda: oom.rollout_size(oom.TextShape.of(m.policy), prompts, group, tokens,
                                                       oom.value_bytes(m.policy, m.device)),
                              lambda: oom.not_taken(oom.rollout_options(prompts, group, tokens, self.config.shared_prompt),
                                                    m), m.device,
                              self.held), \
                    m.generation_context():
                return generate(m.policy, m.processor, samples, self.config.num_generations, self.sampling,
                                shared=self.use_shared_prompt(), global_step=m.global_step, box_frame=m.box_frame)
        finally:
            m.policy.train(was_training)

    def score(self, rollout: Rollout) -> RewardScores:
        return score_all(self.module.rewards, rollout.completions, rollout.contexts)

    def advantages(self, rollout: Rollout, scores: RewardScores,
                   reduce_sum: Callable[[Tensor], Tensor] | None) -> Advantages:
        """Each completion's advantage, (N,) in ``values``, and the groups that tie, (N // G,) in
        ``tied`` (logged as ``train/groups_tied_frac``): GRPO's group-relative advantage
        (:func:`rollout_advantages`, ``config.scale_rewards``). Override it in a subclass for
        another estimator (RLOO's leave-one-out mean, a rank transform); the loss reads ``values``.
        ``reduce_sum`` sums a tensor over the processes (None: one process)."""
        return rollout_advantages(scores, rollout.group_size, self.config.scale_rewards, reduce_sum)

    def groups_to_train(self, rollout: Rollout, scores: RewardScores, advantages: Advantages) -> list[int] | None:
        """The groups (prompt rows) of the scored rollout to train on, in order; None: all of them.
        Override it to leave groups out, e.g. DAPO's dynamic sampling (Yu et al. 2025, sec. 3.2)
        keeps the groups that do not tie: ``[p for p, t in enumerate(advantages.tied) if not t]``
        (draw more prompts per batch, ``data.batch_size``, to keep about as many). The rewards and
        advantages logged are the whole rollout's, with ``train/groups_kept_frac`` beside them, and
        ``last_rollout`` (what RolloutLog and RolloutTable show) is the whole rollout too; a
        rollout with no group kept trains and logs nothing (:meth:`stop_when_nothing_is_kept`).
        Under several processes each must keep as many groups (else their optimiser steps
        differ; :meth:`as_many_everywhere` cuts each list to the fewest): a mismatch stops the fit."""
        return None

    def as_many_everywhere(self, keep: list[int]) -> list[int]:
        """``keep`` cut to the fewest groups any process keeps (one all-reduce of one number a
        process; ``keep`` as it is in one process): a :meth:`groups_to_train` for several
        processes returns ``self.as_many_everywhere([...])``, since each process's rollout ties
        in its own groups."""
        m = self.module
        if m.world_size <= 1:
            return list(keep)
        counts = torch.zeros(m.world_size, dtype=torch.float64, device=m.device)
        counts[int(getattr(m, "global_rank", 0))] = float(len(keep))
        return list(keep)[: int(m.reduce_sum(counts).min())]

    def stop_when_nothing_is_kept(self, kept: int, tied_frac: float) -> None:
        """Stop the fit when :meth:`groups_to_train` kept no group in ``max_rollouts_without_groups``
        rollouts in a row: no optimiser step is taken, so ``trainer.max_steps`` is never reached
        and the fit would read its data over and over (verl stops DAPO's resampling alike)."""
        self.kept_none_in_a_row = 0 if kept else getattr(self, "kept_none_in_a_row", 0) + 1
        if self.kept_none_in_a_row >= self.max_rollouts_without_groups:
            raise ValueError(
                f"{type(self).__name__}.groups_to_train kept no group in {self.kept_none_in_a_row} rollouts in a row "
                f"(the last at step {self.module.global_step}, {tied_frac:.0%} of its groups tied): nothing has been "
                "trained since. Groups that all tie come from a model that does not yet write what the rewards score: "
                "start from a cold start that does, give the rewards partial credit, or raise "
                "model.grpo.num_generations or temperature")

    def kept_groups(self, rollout: Rollout, scores: RewardScores, advantages: Advantages, keep: list[int],
                    reduce_sum: Callable[[Tensor], Tensor] | None) -> tuple[Rollout, RewardScores, Advantages]:
        """The rollout, scores and advantages of groups ``keep`` alone (:meth:`groups_to_train`)."""
        if reduce_sum is not None:  # one all-reduce of two numbers: the counts agree iff W * sum(k^2) == sum(k)^2
            k = float(len(keep))
            total, squares = reduce_sum(torch.tensor([k, k * k], dtype=torch.float64, device=self.module.device)).cpu()
            if abs(float(squares) * self.module.world_size - float(total) ** 2) > 0.5:
                raise ValueError(
                    f"{type(self).__name__}.groups_to_train kept {len(keep)} groups on this process and other numbers "
                    f"on others ({float(total):.0f} over {self.module.world_size} processes): each process must train "
                    "on as many groups, or their optimiser steps differ and the processes wait on each other")
        groups = torch.tensor(keep, dtype=torch.long)
        return rollout.select_groups(keep), scores.select(group_rows(groups, rollout.group_size)), \
            advantages.select_groups(groups)

    def stop_on_failing_rewards(self, scores: RewardScores, contexts, reduce_sum) -> None:
        """Stop the fit when a judge whose failures ``on_error="nan"`` masks failed on every
        completion routed to it in :data:`~lit_vr1.rewards.base.FAILED_ROLLOUTS_STOP` rollouts in
        a row over :data:`~lit_vr1.rewards.base.FAILED_SECONDS_STOP` seconds (one all-reduce of 3
        numbers a reward, so every process stops together)."""
        rewards, streaks = self.module.rewards, self.__dict__.setdefault("_failed_in_a_row", {})
        if all(r.rescore_singly for r in rewards):  # no judge: nothing to count, no all-reduce a rollout
            return
        flags = failed_rollout_flags(rewards, scores.errors, contexts, streaks)
        if reduce_sum is not None:
            flags = reduce_sum(flags.to(self.module.device)).cpu()
        stop_on_failing_rewards(rewards, flags, streaks, self.module.world_size)

    def steps_per_rollout(self, n: int) -> tuple[int, int]:
        """(mini-batch size, number of optimiser steps) for a rollout of n completions."""
        return rollout_steps(n, self.config.mini_batch_size, self.config.num_iterations)

    def leaves_groups_out(self) -> bool:
        """Whether this loop's :meth:`groups_to_train` is an override: a rollout then takes as many
        optimiser steps as its kept groups fill mini-batches, not :meth:`steps_per_rollout` of the
        whole rollout, so no count of steps per rollout holds for the fit."""
        return type(self).groups_to_train is not RolloutUpdateLoop.groups_to_train

    def use_shared_prompt(self) -> bool:
        """Whether the shared-prompt passes run (asked for and supported by the policy)."""
        if not self.config.shared_prompt:
            return False
        reason = shared_prompt.unsupported_reason(self.module.policy)
        if reason is not None and not self._warned:
            # said, not warned: shared_prompt is on by default, so every user of such a model would be warned
            rank_zero_info(f"lit-vr1: grpo.shared_prompt does not apply to {reason}: each prompt is repeated for its "
                           "G completions")
            self._warned = True
        elif reason is None and not self._warned and shared_prompt.checkpointing_drops_cache(self.module.policy):
            rank_zero_info("lit-vr1: under gradient_checkpointing this transformers' checkpointed layers drop the "
                           "key/value cache (no _can_checkpoint_with_cache switch): the update repeats each prompt for "
                           "its G completions; the rollout and the passes without gradients share it")
            self._warned = True
        return reason is None

    def micro_batches(self, order: Tensor, n: int) -> list[Tensor]:
        """The micro-batches one pass over ``order`` runs: its mini-batches, each cut into micro-batches."""
        mini, _ = self.steps_per_rollout(n)
        micro = self.config.micro_batch_size or mini
        return [part for rows in chunks(order, mini) for part in chunks(rows, micro)]

    def prepare_logprobs(self, rollout: Rollout, first_order: Tensor) -> None:
        """Old log-probs only when more than one optimiser step uses this rollout;
        reference log-probs only when beta > 0. Both run over the micro-batches of the first
        iteration (``first_order``) with the update's own forward (:mod:`lit_vr1.scoring`, the
        same rows together), so that each prompt runs once per pass and the first update's ratio
        is 1 to the last bit wherever the forward is deterministic (dropout off)."""
        cfg, m = self.config, self.module
        n = len(rollout)
        _, steps = self.steps_per_rollout(n)
        parts = self.micro_batches(first_order, n)
        if steps > 1:
            with self.out_of_memory("the old-policy log-prob pass", rollout, parts, update=False):
                rollout.old_logprobs = logprobs_in_parts(m.policy, rollout, parts)
        if cfg.beta != 0.0:
            with self.out_of_memory("the reference log-prob pass", rollout, parts, update=False), \
                    m.reference_context() as ref:
                rollout.ref_logprobs = logprobs_in_parts(ref, rollout, parts)

    def out_of_memory(self, phase: str, rollout: Rollout, parts: list[Tensor],
                      update: bool) -> AbstractContextManager[None]:
        """An out-of-memory error in a scoring pass over ``parts`` said with its size and options."""
        rows, tokens = max(p.numel() for p in parts), rollout.completion_ids.shape[1]
        what = "micro-batches" if len(parts) > 1 else "one pass"
        return oom.in_phase(phase, lambda: oom.scoring_size(oom.TextShape.of(self.module.policy), rows, tokens, what),
                            lambda: oom.not_taken(oom.scoring_options(rows, self.config.micro_batch_size, tokens, update),
                                                  self.module),
                            self.module.device, self.held)

    def held(self) -> oom.Held | None:
        """What the process holds on its device: weights, reference, gradients, optimiser state."""
        return oom.held_by(self.module)

    def accumulate(self, rollout: Rollout, rows: Tensor, parts: list[Tensor], loss_mask: Tensor,
                   denominator: Tensor, totals: Tensor) -> None:
        """Forward and backward of each micro-batch of ``rows`` (``parts``), the statistics added to
        ``totals`` on the device; the gradients accumulate for one optimiser step. Each micro-batch's
        token means (entropy, KL, clip fractions, ratio) count by its share of the tokens, so the
        logged figures are the mini-batch's token means however it is cut (by its share of the
        sequences, ``train/kl`` moved by up to 3.7% with micro_batch_size while the loss did not)."""
        cfg, m = self.config, self.module
        tokens = loss_mask[rows].sum().clamp(min=1.0)
        for i, part in enumerate(parts):
            mask = loss_mask[part]
            logp, ent = logprobs_and_entropy(m.policy, rollout, part)  # float32
            old = rollout.old_logprobs[part] if rollout.old_logprobs is not None else logp.detach()
            ref = rollout.ref_logprobs[part] if rollout.ref_logprobs is not None else None
            loss, stats = grpo_loss(
                logp, old, rollout.advantages[part], mask, ref_logp=ref, beta=cfg.beta, epsilon=cfg.epsilon,
                epsilon_high=cfg.epsilon_high, loss_type=cfg.loss_type, max_completion_length=cfg.max_completion_length,
                num_sequences=rows.numel(), num_tokens=denominator,
            )
            with m.gradient_sync(i == len(parts) - 1):  # DDP reduces the gradients once, after the last micro-batch
                m.manual_backward(loss)
            share = mask.sum() / tokens
            entropy = (ent * mask).sum() / mask.sum().clamp(min=1)
            totals += torch.stack([loss.detach().double()] + [t.double() * share for t in (
                entropy, stats.kl, stats.clip_low, stats.clip_high, stats.ratio_mean)])
            del logp, loss, ent  # not alive during the next micro-batch's forward

    def update(self, rollout: Rollout, rows: Tensor, loss_mask: Tensor) -> dict[str, float]:
        """One optimiser step on the completions ``rows``, in micro-batches."""
        cfg, m = self.config, self.module
        micro = cfg.micro_batch_size or rows.numel()
        n_tok_local = loss_mask[rows].sum()
        n_tok = m.reduce_sum(n_tok_local.float()) / m.world_size if cfg.loss_type == "dapo" else n_tok_local
        parts = chunks(rows, micro)
        denominator = n_tok.clamp(min=1.0)
        # every statistic stays on the device until the step's end: one host sync per step, not per micro-batch
        totals = torch.zeros(len(STEP_STATS), dtype=torch.float64, device=loss_mask.device)
        with self.out_of_memory("the policy update (forward and backward)", rollout, parts, update=True):
            self.accumulate(rollout, rows, parts, loss_mask, denominator, totals)
        *values, tokens = torch.cat([totals, n_tok_local.double().view(1)]).tolist()
        has_tokens = tokens > 0
        out = {**dict(zip(STEP_STATS, values)), "n/tokens": tokens}  # the token means' count (lit_vr1.step_stats)
        if cfg.beta == 0:  # no reference: no KL was measured (a logged 0 read as "no drift")
            del out["kl"]
        skipped_before = getattr(m, "skipped_steps", 0)
        with oom.in_phase("the optimiser step (clipping and the optimiser's update: AdamW's state is made at the first)",
                          lambda: f"{sum(p.numel() for p in m.policy.parameters() if p.requires_grad)} trainable parameters",
                          lambda: oom.not_taken(oom.STATIC_OPTIONS, m), m.device, self.held):
            outcome = m.apply_update(out["loss"], cfg.gradient_clip_val, has_tokens=bool(has_tokens))
        out.update(grad_norm=outcome.grad_norm, lr=outcome.lr, skipped_steps=float(outcome.skipped_steps))
        if not has_tokens and outcome.skipped_steps > skipped_before:  # skipped with nothing to score: no loss, no gradient
            out.update(loss=math.nan, grad_norm=math.nan)
        out.update(oom.memory_figures(m.device))  # read from counters: no wait for the device
        return out

    # -- the whole batch -----------------------------------------------------------------
    def run(self, samples: list[Sample]) -> dict[str, float]:
        """Rollout, rewards, advantages, then ``num_iterations`` passes of updates; returns the
        rollout's statistics, which the module logs under ``train/`` and reads
        (``reward/total/mean``, ``groups_tied_frac``): an override returns ``super().run``'s,
        keys added as it likes. The seams to override: :meth:`rollout`, :meth:`score`,
        :meth:`advantages`, :meth:`groups_to_train`, :meth:`update`."""
        cfg, m = self.config, self.module
        t0 = time.perf_counter()
        rollout = self.rollout(samples)
        t_rollout = time.perf_counter() - t0

        t_score = time.perf_counter()
        scores = self.score(rollout)
        t_rewards = time.perf_counter() - t_score
        reduce_sum = m.reduce_sum if m.world_size > 1 else None
        self.stop_on_failing_rewards(scores, rollout.contexts, reduce_sum)
        adv = self.advantages(rollout, scores, reduce_sum)
        lengths = rollout.completion_mask.sum(dim=1).float()
        n = len(rollout)
        rollout_stats = {
            **scores.stats(),
            "advantage/mean": float(adv.values.mean()),
            "advantage/std": float(adv.values.std()) if adv.values.numel() > 1 else 0.0,
            "advantage/abs_max": float(adv.values.abs().max()),
            "groups_tied_frac": float(adv.tied.float().mean()),
            "completion/length_mean": float(lengths.mean()),
            "completion/length_max": float(lengths.max()),
            "completion/truncated_frac": float(rollout.truncated.float().mean()),
            "time/rollout_s": t_rollout,
            "time/rewards_s": t_rewards,  # every reward of the rollout (a slow judge or function shows here)
            "n/completions": float(n), "n/groups": float(n // rollout.group_size),  # counts: lit_vr1.step_stats
        }
        rollout.advantages = adv.values.to(rollout.completion_ids.device)
        sampled, sampled_scores = rollout, scores  # what last_rollout shows (RolloutLog, RolloutTable): all of it
        keep = self.groups_to_train(rollout, scores, adv)
        if keep is None and reduce_sum is not None and type(self).groups_to_train is not RolloutUpdateLoop.groups_to_train:
            keep = range(n // rollout.group_size)  # all of them: counted with the other processes' lists
        if keep is not None:
            rollout, scores, adv = self.kept_groups(rollout, scores, adv, list(keep), reduce_sum)
            rollout_stats["groups_kept_frac"] = len(keep) / max(n // rollout.group_size, 1)
            n = len(rollout)
            self.stop_when_nothing_is_kept(n, rollout_stats["groups_tied_frac"])
        t1 = time.perf_counter()
        if n == 0:  # every group left out: nothing to train on
            rollout_stats["time/logprob_and_update_s"] = 0.0
            self.last_rollout, self.last_scores = sampled, sampled_scores
            return rollout_stats
        device = rollout.completion_ids.device
        loss_mask = rollout.completion_mask.float() * (~scores.unscored).float().to(device).unsqueeze(1)
        if cfg.mask_truncated_completions:
            loss_mask = loss_mask * (~rollout.truncated).float().unsqueeze(1)

        mini, _ = self.steps_per_rollout(n)
        shuffle = torch.Generator().manual_seed(int(m.global_step)) if mini < n else None
        orders = [group_order(n, rollout.group_size, shuffle) for _ in range(cfg.num_iterations)]
        self.prepare_logprobs(rollout, orders[0])
        for iteration, order in enumerate(orders):
            for rows in chunks(order, mini):
                if m.reached_max_steps():
                    break
                t_step = time.perf_counter()
                stats = self.update(rollout, rows, loss_mask)
                stats["time/update_s"] = time.perf_counter() - t_step
                stats["iteration"] = iteration
                m.log_step({**rollout_stats, **stats})
        rollout_stats["time/logprob_and_update_s"] = time.perf_counter() - t1
        self.last_rollout, self.last_scores = sampled, sampled_scores
        return rollout_stats

