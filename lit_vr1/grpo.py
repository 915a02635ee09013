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
from torch import Tensor

from lit_vr1 import parallel
from lit_vr1.loop import GRPOConfig, RolloutUpdateLoop
from lit_vr1.module import VLMModule
from lit_vr1.rewards.base import Reward
from lit_vr1.rewards.rec import IoUReward, RecJsonFormat


class GRPOModule(VLMModule):
    """GRPO for a vision-language model.

    Args:
        rewards: reward functions with their weights (``class_path`` in YAML);
            default: REC IoU + 0.5 x REC JSON format.
        grpo: the algorithm's knobs (see :class:`~lit_vr1.loop.GRPOConfig`).
        **kwargs: model, optimizer, lr_scheduler, min_pixels, max_pixels, dtype,
            attn_implementation, seed, box_frame, eval_max_new_tokens, export_dir
            (see :class:`~lit_vr1.module.VLMModule`).
    """

    def __init__(self, rewards: list[Reward] | None = None, grpo: GRPOConfig | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters(ignore=["rewards", "optimizer", "lr_scheduler"])
        self.automatic_optimization = False
        self.rewards = rewards if rewards is not None else [IoUReward(), RecJsonFormat(weight=0.5)]
        self.config = grpo or GRPOConfig()
        self.ref_model: torch.nn.Module | None = None
        self.loop = RolloutUpdateLoop(self, self.config)

    def configure_model(self) -> None:
        """Build the policy and, when beta > 0, a frozen copy as the reference (once; with
        LoRA there is no copy: the reference is the policy with its adapters disabled)."""
        if self.policy is not None:
            parallel.shard(self)  # built before fit: shard it now if the strategy asks (idempotent)
            return
        super().configure_model()
        if self.config.beta != 0.0 and self.lora is None:
            self.ref_model = copy.deepcopy(self.policy).eval()
            self.ref_model.requires_grad_(False)
        parallel.shard(self)  # FSDP2 under ModelParallelStrategy; nothing otherwise

    def setup(self, stage: str) -> None:
        if stage == "fit":
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
    def clip_and_norm(self, opt, max_norm: float | None) -> float:
        """Global gradient norm before clipping; clips to ``max_norm`` when set."""
        grads = [p.grad for p in self.policy.parameters() if p.grad is not None]
        if not grads:
            return 0.0
        norm = float(torch.nn.utils.get_total_norm(grads))
        if max_norm is not None:
            self.clip_gradients(opt, gradient_clip_val=max_norm, gradient_clip_algorithm="norm")
        return norm

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
