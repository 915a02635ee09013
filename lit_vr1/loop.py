"""RolloutUpdateLoop: one training batch of prompts -> rollout -> rewards -> advantages
-> ``num_iterations`` passes of clipped updates over mini-batches.

A plain class owned by the module (it does not subclass Lightning's private loops).
It talks to the module through a small surface: the policy and reference models,
the processor, ``manual_backward``, ``clip_gradients``, the optimiser and scheduler,
and ``log_step``; so the same loop runs under DDP, FSDP2 or a single process.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from lit_vr1 import prefix
from lit_vr1.data.jsonl import Sample
from lit_vr1.loss import (
    LOSS_TYPES,
    SCALE_REWARDS,
    Advantages,
    batch_std_from_sums,
    batch_sums,
    check_choice,
    group_advantages,
    grpo_loss,
    token_entropy,
    token_logprobs,
)
from lit_vr1.rewards.base import RewardScores, score_all
from lit_vr1.rollout import (
    Rollout,
    SamplingConfig,
    completion_logits,
    distribution_logits,
    generate,
    policy_logprobs,
    vision_token_ids,
)

if TYPE_CHECKING:
    from lit_vr1.grpo import GRPOModule


@dataclass
class GRPOConfig:
    """Every knob of the GRPO algorithm (TRL's GRPOConfig name in brackets where it differs).

    Mini-batches hold whole groups (the G completions of a prompt stay together), so each
    micro-batch runs as few prompt passes as it can. Completions no reward scored (every
    reward nan: not applicable, failed under ``on_error="nan"``, or inf) get advantage 0,
    stay out of their group's statistics and have no loss tokens (in grpo / dr_grpo they
    still count in the average over sequences, as TRL counts masked truncated completions),
    and are counted (``train/reward/unscored``); a mini-batch with no scored token anywhere
    takes no step.

    The loss (policy, old and reference log-probs alike) scores tokens under the
    temperature-scaled distribution without the top-k / top-p cut, as TRL and verl do:
    under the cut, a token sampled near its edge gets log p = -inf once a recomputed logit
    moves by 2e-4 (a NaN loss), and the reference could not be scored under the policy's
    cut (a biased KL). top_k / top_p thus only shape what is sampled.

    Attributes:
        num_generations: G, completions sampled per prompt.
        temperature: sampling temperature (the loss scores the same tempered distribution).
        top_p: nucleus sampling; 1.0 is off. Shapes sampling only (see above).
        top_k: top-k sampling; 0 is off. Shapes sampling only (see above).
        max_completion_length: most tokens a completion may have.
        num_iterations: passes of updates over one rollout (GRPO's mu).
        epsilon: lower clip range of the ratio (and the upper one unless epsilon_high is set).
        epsilon_high: upper clip range (DAPO's clip-higher); None: the same as epsilon.
        beta: weight of the k3 KL to the reference; 0 builds no reference model.
        loss_type: grpo, bnpo, dr_grpo or dapo (see ``lit_vr1.loss.grpo_loss``).
        scale_rewards: group, batch or none (see ``lit_vr1.loss.group_advantages``).
        mask_truncated_completions: leave completions without EOS out of the loss (DAPO).
        mini_batch_size: completions per optimiser step (None: the whole rollout, one step).
        micro_batch_size: completions per forward/backward (None: the mini-batch); gradients
            of a mini-batch's micro-batches are accumulated before the step.
        gradient_clip_val: max global grad norm (None: no clipping) [max_grad_norm].
        shared_prompt: run each prompt (and its images) once for its G completions, in the
            rollout and in every training forward, instead of G times (see ``lit_vr1.prefix``);
            models it does not support (InternVL, gradient checkpointing) fall back to
            repeated prompts, with a warning. Same logits and gradients either way.
        disable_dropout: set every dropout of the policy (LoRA's included) to 0, so that the
            old, reference and policy passes score the model the rollout sampled from (the
            ratio is exactly 1 until the weights move), as TRL's ``disable_dropout``.
    """

    num_generations: int = 4
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_completion_length: int = 64
    num_iterations: int = 1
    epsilon: float = 0.2
    epsilon_high: float | None = None
    beta: float = 0.04
    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo"] = "grpo"
    scale_rewards: Literal["group", "batch", "none"] = "group"
    mask_truncated_completions: bool = False
    mini_batch_size: int | None = None
    micro_batch_size: int | None = None
    gradient_clip_val: float | None = 1.0
    shared_prompt: bool = True
    disable_dropout: bool = True

    def __post_init__(self) -> None:
        check_choice("model.grpo.loss_type", self.loss_type, LOSS_TYPES)
        check_choice("model.grpo.scale_rewards", self.scale_rewards, SCALE_REWARDS)
        for name in ("num_generations", "max_completion_length", "num_iterations"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.grpo.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("mini_batch_size", "micro_batch_size"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"model.grpo.{name} must be >= 1 or null, got {v}")

    def sampling(self, suppress_ids: tuple[int, ...] = ()) -> SamplingConfig:
        return SamplingConfig(self.temperature, self.top_p, self.top_k, self.max_completion_length,
                              suppress_ids=suppress_ids)


def chunks(rows: Tensor, size: int) -> list[Tensor]:
    return [rows[i : i + size] for i in range(0, rows.numel(), size)]


def group_order(n: int, group_size: int, generator: torch.Generator | None) -> Tensor:
    """(n,) completion rows with whole groups in random order (each group's G rows stay side
    by side, in order); ``generator`` None: all rows in order."""
    if generator is None:
        return torch.arange(n)
    groups = torch.randperm(n // group_size, generator=generator)
    return (groups[:, None] * group_size + torch.arange(group_size)[None]).flatten()


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

    def __init__(self, module: GRPOModule, config: GRPOConfig) -> None:
        self.module = module
        self.config = config
        self.suppress_ids = vision_token_ids(module.processor)  # never generated, never scored
        self.last_rollout: Rollout | None = None
        self.last_scores: RewardScores | None = None
        self._warned = False

    @property
    def sampling(self) -> SamplingConfig:
        """What the rollout samples from, read from the config at each use (PTST changes it)."""
        return self.config.sampling(self.suppress_ids)

    @property
    def scoring(self) -> SamplingConfig:
        """What the loss scores: the sampling temperature, without top-k / top-p."""
        return self.sampling.scoring()

    # -- the steps ---------------------------------------------------------------------
    def rollout(self, samples: list[Sample]) -> Rollout:
        m = self.module
        was_training = m.policy.training
        m.policy.eval()
        try:
            with m.generation_context():
                return generate(m.policy, m.processor, samples, self.config.num_generations, self.sampling,
                                shared_prompt=self.shared_prompt(),
                                global_step=m.global_step, box_frame=m.box_frame)
        finally:
            m.policy.train(was_training)

    def score(self, rollout: Rollout) -> RewardScores:
        return score_all(self.module.rewards, rollout.completions, rollout.contexts)

    def steps_per_rollout(self, n: int) -> tuple[int, int]:
        """(mini-batch size, number of optimiser steps) for a rollout of n completions."""
        mini = min(self.config.mini_batch_size or n, n)
        return mini, self.config.num_iterations * math.ceil(n / mini)

    def shared_prompt(self) -> bool:
        """Whether the shared-prompt passes run (asked for and supported by the policy)."""
        if not self.config.shared_prompt:
            return False
        reason = prefix.unsupported_reason(self.module.policy)
        if reason is not None and not self._warned:
            rank_zero_warn(f"grpo.shared_prompt: prompts are repeated G times instead: not supported for {reason}")
            self._warned = True
        return reason is None

    def forward_logits(self, model, rollout: Rollout, rows: Tensor, *, reuse_features: bool) -> Tensor:
        """Logits predicting the completion tokens of ``rows``: (n, T, V). With shared prompts
        each distinct prompt of the rows runs once; ``reuse_features`` hands the rollout's
        image features to the pass instead of running the vision tower again."""
        if not self.shared_prompt():
            return completion_logits(model, rollout.model_inputs(rows), rollout.completion_ids.shape[1])
        features = rollout.extras.get("image_features") if reuse_features else None
        return prefix.completion_logits(model, rollout.prompt, rollout.images_per_row, rollout.image_rows,
                                        rollout.prompt_index(rows), rollout.completion_ids[rows],
                                        rollout.completion_mask[rows], features)

    @torch.no_grad()
    def _logprobs(self, model, rollout: Rollout, parts: list[Tensor], reuse_features: bool) -> Tensor:
        """(N, T) float32 log-probs under :attr:`scoring`, computed over the micro-batches ``parts``."""
        out = torch.zeros(rollout.completion_ids.shape, dtype=torch.float32, device=rollout.completion_ids.device)
        for rows in parts:
            logits = self.forward_logits(model, rollout, rows, reuse_features=reuse_features)
            out[rows.to(out.device)] = policy_logprobs(logits, rollout.completion_ids[rows], self.scoring)
        return out

    def micro_batches(self, order: Tensor, n: int) -> list[Tensor]:
        """The micro-batches one pass over ``order`` runs: its mini-batches, each cut into micro-batches."""
        mini, _ = self.steps_per_rollout(n)
        micro = self.config.micro_batch_size or mini
        return [part for rows in chunks(order, mini) for part in chunks(rows, micro)]

    def prepare_logprobs(self, rollout: Rollout, first_order: Tensor) -> None:
        """Old log-probs only when more than one optimiser step uses this rollout;
        reference log-probs only when beta > 0. Both run over the micro-batches of the first
        iteration (``first_order``) with the update's own forward (the same rows together, image
        features computed the same way), so that each prompt runs once per pass and the first
        update's ratio is 1 to the last bit wherever the forward is deterministic (dropout off)."""
        cfg, m = self.config, self.module
        n = len(rollout)
        _, steps = self.steps_per_rollout(n)
        parts = self.micro_batches(first_order, n)
        frozen = prefix.vision_frozen(m.policy)
        if steps > 1:  # image features as the update gets them (the rollout's only with the tower frozen)
            rollout.old_logprobs = self._logprobs(m.policy, rollout, parts, reuse_features=frozen)
        if cfg.beta != 0.0:
            with m.reference_context() as ref:
                rollout.ref_logprobs = self._logprobs(ref, rollout, parts, reuse_features=frozen)

    def update(self, rollout: Rollout, rows: Tensor, loss_mask: Tensor) -> dict[str, float]:
        """One optimiser step on the completions ``rows``, in micro-batches."""
        cfg, m = self.config, self.module
        opt = m.optimizers()
        micro = cfg.micro_batch_size or rows.numel()
        n_tok_local = loss_mask[rows].sum()
        n_tok = m.all_reduce_sum(n_tok_local.float()) / m.trainer.world_size if cfg.loss_type == "dapo" else n_tok_local
        totals = {"loss": 0.0, "kl": 0.0, "clip_low": 0.0, "clip_high": 0.0, "ratio_mean": 0.0, "entropy": 0.0}
        for part in chunks(rows, micro):
            tokens = rollout.completion_ids[part]
            mask = loss_mask[part]
            logits = self.forward_logits(m.policy, rollout, part, reuse_features=prefix.vision_frozen(m.policy))
            logits = distribution_logits(logits, self.scoring)
            logp = token_logprobs(logits, tokens)  # float32
            old = rollout.old_logprobs[part] if rollout.old_logprobs is not None else logp.detach()
            ref = rollout.ref_logprobs[part] if rollout.ref_logprobs is not None else None
            loss, stats = grpo_loss(
                logp, old, rollout.advantages[part], mask, ref_logp=ref, beta=cfg.beta, epsilon=cfg.epsilon,
                epsilon_high=cfg.epsilon_high, loss_type=cfg.loss_type, max_completion_length=cfg.max_completion_length,
                num_sequences=rows.numel(), num_tokens=float(n_tok.clamp(min=1.0)),
            )
            m.manual_backward(loss)
            share = part.numel() / rows.numel()
            ent = token_entropy(logits.detach())
            totals["loss"] += float(loss.detach())
            totals["entropy"] += float((ent * mask).sum() / mask.sum().clamp(min=1)) * share
            for key in ("kl", "clip_low", "clip_high", "ratio_mean"):
                totals[key] += getattr(stats, key) * share
            del logits, logp, loss, ent  # not alive during the next micro-batch's forward
        totals["grad_norm"] = m.apply_update(opt, totals["loss"], cfg.gradient_clip_val, has_tokens=bool(n_tok_local > 0))
        totals["lr"] = opt.param_groups[0]["lr"]
        totals["skipped_steps"] = float(m.skipped_steps)
        return totals

    # -- the whole batch -----------------------------------------------------------------
    def run(self, samples: list[Sample]) -> dict[str, float]:
        cfg, m = self.config, self.module
        t0 = time.perf_counter()
        rollout = self.rollout(samples)
        t_rollout = time.perf_counter() - t0

        scores = self.score(rollout)
        reduce_sum = (lambda t: m.all_reduce_sum(t.to(m.device))) if m.trainer.world_size > 1 else None
        adv = rollout_advantages(scores, rollout.group_size, cfg.scale_rewards, reduce_sum)
        device = rollout.completion_ids.device
        rollout.advantages = adv.values.to(device)
        loss_mask = rollout.completion_mask.float() * (~scores.unscored).float().to(device).unsqueeze(1)
        if cfg.mask_truncated_completions:
            loss_mask = loss_mask * (~rollout.truncated).float().unsqueeze(1)

        n = len(rollout)
        mini, _ = self.steps_per_rollout(n)
        shuffle = torch.Generator().manual_seed(int(m.global_step)) if mini < n else None
        orders = [group_order(n, rollout.group_size, shuffle) for _ in range(cfg.num_iterations)]
        t1 = time.perf_counter()
        self.prepare_logprobs(rollout, orders[0])
        lengths = rollout.completion_mask.sum(dim=1).float()
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
        }
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
        self.last_rollout, self.last_scores = rollout, scores
        return rollout_stats


# Modules built in Python keep this dataclass in their hparams; Lightning loads checkpoints
# with weights_only=True, which refuses classes it was not told are safe.
torch.serialization.add_safe_globals([GRPOConfig])
