"""GRPOModule: the policy, its frozen reference, the rewards and the optimiser.

``training_step`` hands each batch of prompts to :class:`~lit_vr1.loop.RolloutUpdateLoop`
under manual optimisation, so the Trainer's ``global_step`` counts optimiser steps.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from lit_vr1 import parallel
from lit_vr1.loop import GRPOConfig, RolloutUpdateLoop
from lit_vr1.models import precision
from lit_vr1.module import VLMModule
from lit_vr1.rewards.base import Reward
from lit_vr1.rewards.rec import IoUReward, RecJsonFormat

SKIPPED_KEY = "lit_vr1_skipped_steps"  # checkpoint key of the skipped-step counters


class GRPOModule(VLMModule):
    """GRPO for a vision-language model.

    Args:
        rewards: reward functions with their weights (``class_path`` in YAML);
            default: REC IoU + 0.5 x REC JSON format.
        grpo: the algorithm's knobs (see :class:`~lit_vr1.loop.GRPOConfig`).
        **kwargs: model, optimizer, lr_scheduler, min_pixels, max_pixels, dtype,
            attn_implementation, seed, box_frame, eval_max_new_tokens, export_dir
            (see :class:`~lit_vr1.module.VLMModule`).

    Non-finite values: a step whose loss or gradient norm is nan or inf on any process is
    skipped (no optimiser or scheduler step; the gradients are dropped) and counted, see
    :meth:`step_is_finite`. ``global_step`` counts applied steps only, so ``max_steps``,
    the LR schedule, PTST stages and threshold schedules all follow applied updates, and a
    run with skips reads more batches to reach ``max_steps``.
    """

    max_skips_in_a_row = 10  # skipped steps with no applied one between them before the fit stops

    def __init__(self, rewards: list[Reward] | None = None, grpo: GRPOConfig | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters(ignore=["rewards", "optimizer", "lr_scheduler"])
        self.automatic_optimization = False
        self.rewards = rewards if rewards is not None else [IoUReward(), RecJsonFormat(weight=0.5)]
        self.config = grpo or GRPOConfig()
        self.ref_model: torch.nn.Module | None = None
        self.loop = RolloutUpdateLoop(self, self.config)
        self.skipped_steps = 0  # optimiser steps skipped for a non-finite loss or grad norm (whole run)
        self.skips_in_a_row = 0

    def configure_model(self) -> None:
        """Build the policy and, when beta > 0, a frozen copy as the reference (once; with
        LoRA there is no copy: the reference is the policy with its adapters disabled)."""
        if self.policy is not None:
            parallel.shard(self)  # built before fit: shard it now if the strategy asks (idempotent)
            return
        super().configure_model()
        if self.config.disable_dropout:
            precision.disable_dropout(self.policy)
        if self.config.beta != 0.0 and self.lora is None:
            self.ref_model = copy.deepcopy(self.policy).eval()
            self.ref_model.requires_grad_(False)
        parallel.shard(self)  # FSDP2 under ModelParallelStrategy; nothing otherwise

    def setup(self, stage: str) -> None:
        if stage == "fit":
            from lit_vr1.checks import check_fit  # the configuration rules, before any model is built

            check_fit(self)
            parallel.check_strategy(self.trainer, self)

    @contextlib.contextmanager
    def generation_context(self) -> Iterator[None]:
        """Wraps a rollout: sharded weights (FSDP2, ZeRO-3) are gathered once for all of it."""
        with parallel.gathered_for_generation(self):
            yield

    @contextlib.contextmanager
    def reference_context(self) -> Iterator[torch.nn.Module]:
        """Yields the reference model, in eval mode, with no gradient (with LoRA: the policy
        itself, its adapters disabled)."""
        if self.lora is not None and self.policy is not None:
            was_training = self.policy.training
            self.policy.eval()
            try:
                with torch.no_grad(), self.policy.disable_adapter():
                    yield self.policy
            finally:
                self.policy.train(was_training)
            return
        if self.ref_model is None:
            raise RuntimeError("no reference model: beta is 0")
        with torch.no_grad():
            yield self.ref_model

    # -- optimisation ----------------------------------------------------------------------
    def optimizer_step(self, opt, loss: float, max_norm: float | None) -> float:
        """Clip, step (optimiser and scheduler) and zero the gradients of one mini-batch; return
        the global gradient norm before clipping.

        A non-finite loss or gradient norm on any process skips the step (no optimiser or
        scheduler step, gradients dropped, ``global_step`` unchanged: it counts applied steps;
        see :meth:`step_is_finite`). Under DeepSpeed the engine owns the gradients (``p.grad``
        is None, partitioned under ZeRO): it clips them (``gradient_clipping`` in its config),
        skips a step whose gradients are not finite, and reports the norm it computed.
        """
        engine = parallel.deepspeed_engine(self)
        if engine is not None:
            opt.step()
            norm = parallel.engine_grad_norm(engine)  # None: the engine was told not to compute it
            if self.step_is_finite(loss, 0.0 if norm is None else norm):
                self._scheduler_step()
            norm = math.nan if norm is None else norm
        else:
            norm = self.clip_and_norm(opt, max_norm)
            if self.step_is_finite(loss, norm):
                opt.step()
                self._scheduler_step()
        opt.zero_grad(set_to_none=True)
        return norm

    def _scheduler_step(self) -> None:
        sched = self.lr_schedulers()
        if sched is not None:
            sched.step()

    def clip_and_norm(self, opt, max_norm: float | None) -> float:
        """Global gradient norm before clipping; clips to ``max_norm`` when set and the norm
        is finite (a non-finite one means the step is skipped, see :meth:`step_is_finite`)."""
        grads = [p.grad for p in self.policy.parameters() if p.grad is not None]
        if not grads:
            return 0.0
        norm = float(torch.nn.utils.get_total_norm(grads))
        if max_norm is not None and math.isfinite(norm):
            self.clip_gradients(opt, gradient_clip_val=max_norm, gradient_clip_algorithm="norm")
        return norm

    def step_is_finite(self, loss: float, grad_norm: float) -> bool:
        """True when the loss and gradient norm are finite on every process (all processes
        get the same answer, so they step or skip together and never diverge). On False
        the caller skips the step: the skip is counted in ``skipped_steps`` (logged as
        ``train/skipped_steps``, saved in checkpoints), and after ``max_skips_in_a_row``
        skips with no step between them the fit stops with an error."""
        bad = torch.tensor(0.0 if math.isfinite(loss) and math.isfinite(grad_norm) else 1.0, device=self.device)
        if float(self.all_reduce_sum(bad)) == 0.0:
            self.skips_in_a_row = 0
            return True
        self.skipped_steps += 1
        self.skips_in_a_row += 1
        rank_zero_warn(f"step {self.global_step}: loss {loss}, gradient norm {grad_norm}: not finite on every process; "
                       f"the optimiser step is skipped ({self.skipped_steps} skipped so far)")
        if self.skips_in_a_row >= self.max_skips_in_a_row:
            raise FloatingPointError(
                f"{self.skips_in_a_row} optimiser steps in a row had a non-finite loss or gradient norm (the last at "
                f"global step {self.global_step}; the weights are unchanged since): training has diverged. Lower the "
                "learning rate, set model.grpo.gradient_clip_val, or resume from an earlier checkpoint.")
        return False

    def reached_max_steps(self) -> bool:
        """True once the Trainer's max_steps optimiser steps are done (a rollout may hold more)."""
        max_steps = self.trainer.max_steps
        return max_steps is not None and max_steps >= 0 and self.global_step >= max_steps

    def all_reduce_sum(self, value: Tensor) -> Tensor:
        if self.trainer.world_size == 1:
            return value
        return self.trainer.strategy.reduce(value, reduce_op="sum")

    # -- steps -----------------------------------------------------------------------------
    def training_step(self, batch, batch_idx: int) -> None:
        stats = self.loop.run(batch)
        self.log("reward", stats["reward/total/mean"], prog_bar=True, logger=False, batch_size=len(batch))

    # -- checkpoints: the skipped-step count survives a resume -----------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[SKIPPED_KEY] = {"skipped_steps": self.skipped_steps, "skips_in_a_row": self.skips_in_a_row}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        saved = checkpoint.get(SKIPPED_KEY, {})
        self.skipped_steps = int(saved.get("skipped_steps", 0))
        self.skips_in_a_row = int(saved.get("skips_in_a_row", 0))

    def log_step(self, metrics: dict[str, float]) -> None:
        """Send one optimiser step's statistics to every logger at the current global step
        (averaged over processes; nan where a reward applied to nothing is left out)."""
        if self.trainer.world_size > 1:
            keys = sorted(metrics)
            t = torch.tensor([metrics[k] for k in keys], dtype=torch.float64, device=self.device)
            t = self.trainer.strategy.reduce(t, reduce_op="mean")
            metrics = dict(zip(keys, t.tolist()))
        self.last_metrics = metrics
        for logger in self.loggers:
            logger.log_metrics({"train/" + k: v for k, v in metrics.items() if not math.isnan(v)}, step=self.global_step)
        self.log("loss", metrics["loss"], prog_bar=True, logger=False)
