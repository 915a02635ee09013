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
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from lit_vr1.loop import GRPOConfig, RolloutUpdateLoop
from lit_vr1.metrics.rec import RECMetrics
from lit_vr1.models.loading import load_model, load_processor
from lit_vr1.rewards.base import Reward
from lit_vr1.rewards.rec import IoUReward, RecJsonFormat, rec_ious
from lit_vr1.rollout import SamplingConfig, generate


def default_optimizer(params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0)


class GRPOModule(LightningModule):
    """GRPO for a vision-language model.

    Args:
        model: checkpoint name or path (``Qwen/Qwen2.5-VL-3B-Instruct``, a
            ``save_pretrained`` directory) or a tiny random model (``tiny:qwen2_5_vl``,
            ``tiny:qwen2_vl``).
        rewards: reward functions with their weights (``class_path`` in YAML);
            default: REC IoU + REC JSON format.
        grpo: the algorithm's knobs (see :class:`~lit_vr1.loop.GRPOConfig`).
        optimizer: optimiser factory (LightningCLI injects ``--optimizer``); AdamW(lr=1e-5) by default.
        lr_scheduler: scheduler factory, stepped after every optimiser step.
        min_pixels, max_pixels: image size bounds of the processor (multiples of 28).
        dtype: weights' dtype: float32, bfloat16, float16 or auto.
        attn_implementation: sdpa, eager or flash_attention_2.
        seed: seed of a tiny model's weights and tokenizer.
    """

    def __init__(
        self,
        model: str = "tiny:qwen2_5_vl",
        rewards: list[Reward] | None = None,
        grpo: GRPOConfig | None = None,
        optimizer: OptimizerCallable = default_optimizer,
        lr_scheduler: LRSchedulerCallable | None = None,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        dtype: str = "float32",
        attn_implementation: str = "sdpa",
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["rewards", "optimizer", "lr_scheduler"])
        self.automatic_optimization = False
        self.model_name = model
        self.rewards = rewards if rewards is not None else [IoUReward(), RecJsonFormat(weight=0.5)]
        self.config = grpo or GRPOConfig()
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self.dtype_name = dtype
        self.attn_implementation = attn_implementation
        self.seed = seed
        self.processor = load_processor(model, min_pixels, max_pixels, seed)
        self.policy: torch.nn.Module | None = None
        self.ref_model: torch.nn.Module | None = None
        self.loop = RolloutUpdateLoop(self, self.config)
        self.val_metrics = RECMetrics()
        self.val_format = RecJsonFormat()

    # -- models ----------------------------------------------------------------------------
    def configure_model(self) -> None:
        """Build the policy and, when beta > 0, a frozen copy as the reference (once)."""
        if self.policy is not None:
            return
        self.policy = load_model(self.model_name, self.processor, self.dtype_name, self.attn_implementation, self.seed)
        if self.config.beta != 0.0:
            self.ref_model = copy.deepcopy(self.policy).eval()
            self.ref_model.requires_grad_(False)

    @contextlib.contextmanager
    def generation_context(self) -> Iterator[None]:
        """Wraps a rollout (a strategy may gather sharded weights here)."""
        yield

    @contextlib.contextmanager
    def reference_context(self) -> Iterator[torch.nn.Module]:
        """Yields the reference model, in eval mode, with no gradient."""
        if self.ref_model is None:
            raise RuntimeError("no reference model: beta is 0")
        with torch.no_grad():
            yield self.ref_model

    # -- optimisation ----------------------------------------------------------------------
    def configure_optimizers(self):
        params = [p for p in self.policy.parameters() if p.requires_grad]
        opt = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": self.scheduler_factory(opt), "interval": "step"}}

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

    def validation_step(self, batch, batch_idx: int) -> None:
        """Greedy decoding on held-out prompts: REC Acc@0.5, mean IoU and JSON-format rate."""
        cfg = SamplingConfig(max_completion_length=self.config.max_completion_length, greedy=True,
                             suppress_ids=self.loop.sampling.suppress_ids)
        rollout = generate(self.policy, self.processor, batch, 1, cfg, global_step=self.global_step)
        frame = next((r.box_frame for r in self.rewards if isinstance(r, IoUReward)), "input_pixels")
        ious = torch.tensor(rec_ious(rollout.completions, rollout.contexts, frame))
        self.val_metrics.update(ious)
        fmt = torch.tensor(self.val_format(rollout.completions, rollout.contexts)).mean()
        self.log("val/format", fmt, batch_size=len(batch), sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        out = self.val_metrics.compute()
        self.log("val/acc50", out["acc50"], prog_bar=True, sync_dist=False)
        self.log("val/miou", out["miou"], prog_bar=True, sync_dist=False)
        self.val_metrics.reset()

    def log_step(self, metrics: dict[str, float]) -> None:
        """Send one optimiser step's statistics to every logger at the current global step
        (averaged over processes; nan where a reward applied to nothing)."""
        if self.trainer.world_size > 1:
            keys = sorted(metrics)
            t = torch.tensor([metrics[k] for k in keys], dtype=torch.float64, device=self.device)
            t = self.trainer.strategy.reduce(t, reduce_op="mean")
            metrics = dict(zip(keys, t.tolist()))
        self.last_metrics = metrics
        for logger in self.loggers:
            logger.log_metrics({"train/" + k: v for k, v in metrics.items() if not math.isnan(v)}, step=self.global_step)
        self.log("loss", metrics["loss"], prog_bar=True, logger=False)
