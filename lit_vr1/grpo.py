"""GRPOModule: the policy, its frozen reference, the rewards and the optimiser.

``training_step`` hands each batch of prompts to :class:`~lit_vr1.loop.RolloutUpdateLoop`
under manual optimisation, so the Trainer's ``global_step`` counts optimiser steps.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import difflib
import math
from collections.abc import Iterator
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor

from lit_vr1 import decode_graph, loss_scale, parallel, step_stats, val_schedule
from lit_vr1.checkpoint import SettingsRefused
from lit_vr1.checks import check_fit, steps_per_rollout, uneven_mini_batches_note
from lit_vr1.config import GRPOConfig
from lit_vr1.loop import RolloutUpdateLoop, StepOutcome
from lit_vr1.models import precision
from lit_vr1.module import VLMModule, refuse_unknown_module_keywords
from lit_vr1.no_signal import SilentRewards, cold_sampling_note, strong_kl_note, tied_cause
from lit_vr1.predict import frame_of
from lit_vr1.rewards.accuracy import HFRRF, Accuracy
from lit_vr1.rewards.base import Reward, SampleContext, forget_warnings, reward_names_distinct, some_reward_weighs
from lit_vr1.rewards.function import as_rewards
from lit_vr1.rewards.rec import IoUReward, RecJsonFormat
from lit_vr1.rules import ConfigError, enforce, settings_object

SKIPPED_KEY = "lit_vr1_skipped_steps"  # checkpoint key of the skipped-step counters
REWARDS_KEY = "lit_vr1_rewards"  # checkpoint key of the rewards the run scored with (see reward_list)
REFERENCE_KEY = "lit_vr1_reference_weights"  # with LoRA: the reference's adapters (see reset_reference)
NOTHING_SCORED = "no completion of the mini-batch counts in the loss"
SKIP_RUNS_SAID = 3  # runs of skipped steps warned of one by one; later ones are counted only
MOSTLY_SKIPPED_AFTER = 20  # optimiser steps tried before "most steps were skipped" may be said


class GRPOModule(VLMModule):
    """GRPO for a vision-language model (the :class:`~lit_vr1.loop.Learner` its loop drives).

    Args:
        rewards: reward functions with their weights (``class_path`` in YAML);
            default: REC IoU + 0.5 x REC JSON format. From Python a plain function
            (``def my_reward(completions, **kwargs)``, TRL's ``reward_funcs``) is wrapped in a
            :class:`~lit_vr1.rewards.FunctionReward` named after it; anything else that is not a
            :class:`~lit_vr1.rewards.Reward` is refused here, named by its position.
        grpo: the algorithm's knobs (see :class:`~lit_vr1.config.GRPOConfig`).
        **kwargs: model, optimizer, lr_scheduler, min_pixels, max_pixels, dtype,
            float32_lm_head, attn_implementation, seed, tiny_spec, freeze_vision, freeze_merger,
            gradient_checkpointing, lora, box_frame, eval_max_new_tokens, export_dir, eval_task,
            detection_prompting, results_path (see :class:`~lit_vr1.module.VLMModule`).

    Non-finite values: a step whose loss or gradient norm is nan or inf on any process is
    skipped (no optimiser or scheduler step; the gradients are dropped) and counted, see
    :meth:`apply_update`. ``global_step`` counts applied steps only, so ``max_steps``,
    the LR schedule, PTST stages and threshold schedules all follow applied updates, and a
    run with skips reads more batches to reach ``max_steps``. Under ``16-mixed`` the gradients
    carry the loss scaler's scale until the optimiser step: the norm and the clipping read them
    unscaled, and an overflow is the scaler's skip, which halves its scale
    (:mod:`lit_vr1.loss_scale`).
    """

    eval_rows_at_optimiser_step = True  # validation rows beside the training row of the step evaluated
    recipe = "GRPO"
    # the loop each training batch runs: a subclass of GRPOModule names its own RolloutUpdateLoop subclass here
    # (another advantage estimator, groups left out; see the loop's seams), and a config names that module class
    loop_class: type[RolloutUpdateLoop] = RolloutUpdateLoop
    max_skips_in_a_row = 10  # skipped steps with no applied one between them before the fit stops
    tied_rollouts_warning = 10  # rollouts in a row with every group tied before the fit warns (once)

    def __init__(self, rewards: list[Reward] | None = None, grpo: GRPOConfig | None = None, **kwargs) -> None:
        refuse_unknown_module_keywords(type(self).__name__, kwargs, {
            f.name: f"a GRPOConfig field: {type(self).__name__}(grpo=GRPOConfig({f.name}=...))"
            for f in dataclasses.fields(GRPOConfig)})
        grpo = settings_object(grpo, GRPOConfig, "grpo")
        super().__init__(**kwargs)
        self.save_hyperparameters(ignore=["rewards", "optimizer", "lr_scheduler"])
        self.automatic_optimization = False
        self.rewards = as_rewards(rewards) if rewards is not None else [IoUReward(), RecJsonFormat(weight=0.5)]
        self.config = grpo or GRPOConfig()
        self.ref_model: torch.nn.Module | None = None
        self.step_before_batch: int | None = None  # the optimiser step a training batch started at
        # with LoRA: the trainable weights the reference runs with (None: the base, adapters disabled)
        self.reference_weights: dict[str, Tensor] | None = None
        self.loop = self.loop_class(self, self.config)
        self.skipped_steps = 0  # optimiser steps skipped for a non-finite loss or grad norm (whole run)
        self.skips_in_a_row = 0
        self.skip_runs_said, self.mostly_skipped_said = 0, False  # warnings of this process (not saved)
        self.tied_in_a_row = 0  # rollouts in a row whose every group tied (see warn_when_nothing_to_learn)

    def __setstate__(self, state: dict) -> None:
        # a module pickled before config and rewards were properties kept them under these names
        for name in ("config", "rewards"):
            if name in state and f"_{name}" not in state:
                state[f"_{name}"] = state.pop(name)
        state.setdefault("skip_runs_said", 0)
        state.setdefault("mostly_skipped_said", False)
        super().__setstate__(state)

    @property
    def rewards(self) -> list[Reward]:
        """The rewards, each a :class:`Reward`; a list assigned between fits is read as
        ``GRPOModule(rewards=...)`` reads it (plain functions wrapped in a FunctionReward)."""
        return self._rewards

    @rewards.setter
    def rewards(self, value: Any) -> None:
        rewards = as_rewards(value)
        enforce(reward_names_distinct(rewards))  # two lambdas: said now, not at the first step
        enforce(some_reward_weighs(rewards))
        self._rewards = rewards

    @property
    def config(self) -> GRPOConfig:
        """The GRPO settings (``model.grpo``). Assigning another GRPOConfig (or a dict of its
        fields) between fits reaches the loop and the checkpoint's hyperparameters, as changing
        its fields in place does."""
        return self._config

    @config.setter
    def config(self, value: Any) -> None:
        value = settings_object(value, GRPOConfig, "grpo") or GRPOConfig()
        self._config = value
        if getattr(self, "loop", None) is not None:
            self.loop.config = value
        if "grpo" in self.hparams:
            self.hparams["grpo"] = value

    def set_rollout_size(self, max_completion_length: int, num_generations: int) -> None:
        """Set the completion length and group size G of the next rollouts (PTST's stages),
        checked by the same field rules as ``model.grpo``; the loop reads them at each rollout."""
        dataclasses.replace(self.config, max_completion_length=max_completion_length, num_generations=num_generations)
        if not hasattr(self, "_configured_rollout"):  # what model.grpo set, for the checkpoints' hyper_parameters
            self._configured_rollout = {"max_completion_length": self.config.max_completion_length,
                                        "num_generations": self.config.num_generations}
        self.config.max_completion_length = max_completion_length
        self.config.num_generations = num_generations

    def configure_model(self) -> None:
        """Build the policy and, when beta > 0, a frozen copy as the reference (once; with
        LoRA there is no copy: the reference is the policy with its adapters disabled)."""
        if self.policy is not None:  # built before: a later fit, or settings changed since (a notebook's next cell)
            if self.config.disable_dropout:
                precision.disable_dropout(self.policy)
            if not self.config.cuda_graph:
                decode_graph.turn_off(self.policy, "model.grpo.cuda_graph is false")
            self._reference_for_a_raised_beta()
            self._reference_storage_for_this_fit()
            parallel.shard(self)  # built before fit: shard it now if the strategy asks (idempotent)
            return
        super().configure_model()
        if self.config.disable_dropout:
            precision.disable_dropout(self.policy)
        if not self.config.cuda_graph:  # rollouts, validation and predictions alike
            decode_graph.turn_off(self.policy, "model.grpo.cuda_graph is false")
        if self.config.beta != 0.0 and self.lora is None:
            self.ref_model = self._frozen_copy()
        parallel.shard(self)  # FSDP2 under ModelParallelStrategy; nothing otherwise

    def _reference_for_a_raised_beta(self) -> None:
        """A module built with beta 0 has no reference copy; when beta was raised before this fit
        (a notebook's next run), the reference is a frozen copy of the policy as it is now."""
        trainer = getattr(self, "_trainer", None)
        fitting = trainer is not None and trainer.state.fn == "fit"  # validate / predict read no reference
        if not fitting or self.config.beta == 0.0 or self.lora is not None or self.ref_model is not None:
            return
        if parallel.is_fsdp(self.policy) or parallel.deepspeed_engine(self) is not None:
            raise ConfigError(f"model.grpo.beta is {self.config.beta} but this module was built with beta 0, without a "
                              "reference model, and its policy is sharded now: build a new GRPOModule with beta > 0")
        rank_zero_warn(f"model.grpo.beta is {self.config.beta} but this module was built with beta 0: its reference "
                       "model is a frozen copy of the policy as it is at this fit's start")
        self.ref_model = self._frozen_copy()

    def _frozen_copy(self) -> torch.nn.Module:
        """A frozen copy of the policy, the reference. Under mixed precision (``bf16-mixed``,
        ``16-mixed``) on one device or DDP its linear and convolution weights are stored in the
        autocast dtype, which every reference pass casts them to anyway: the same log-probs to the
        last bit for half their bytes (a Qwen2.5-VL-3B reference: 14.0 GiB -> 7.6 GiB; 7B: 30.9 -> 17.5)."""
        ref = copy.deepcopy(self.policy).eval()
        ref.requires_grad_(False)
        dtype = self._reference_storage_dtype()
        if dtype is not None:
            precision.store_cast_weights(ref, dtype)
        return ref

    def _reference_storage_for_this_fit(self) -> None:
        """A reference built by an earlier fit (a notebook's next cell) stored as this fit runs it:
        weights stored in an autocast dtype this fit does not run under go back to float32 (with
        the earlier fit's rounding, said once), then this fit's own dtype applies."""
        trainer = getattr(self, "_trainer", None)
        if self.ref_model is None or parallel.is_fsdp(self.ref_model) or trainer is None or trainer.state.fn != "fit":
            return
        dtype = self._reference_storage_dtype()
        policy = dict(self.policy.named_parameters())
        stored = [p for n, p in self.ref_model.named_parameters()
                  if p.dtype in precision.HALF and p.dtype != dtype and n in policy and policy[n].dtype == torch.float32]
        if stored:
            rank_zero_warn(f"the reference model was stored in {stored[0].dtype} for an earlier fit under mixed "
                           f"precision; this fit runs it under trainer.precision={self.trainer.precision}, so its "
                           f"weights go back to float32 as that fit rounded them")
            for p in stored:
                p.data = p.data.float()
        if dtype is not None:
            precision.store_cast_weights(self.ref_model, dtype)

    def _reference_storage_dtype(self) -> torch.dtype | None:
        """The autocast dtype the reference runs under in this fit, when its weights may be stored
        in it: not under FSDP2 (one dtype per sharded group) or DeepSpeed (which casts the whole
        module itself under bf16)."""
        trainer = getattr(self, "_trainer", None)
        if trainer is None or getattr(self, "device_mesh", None) is not None or parallel.is_deepspeed(trainer.strategy):
            return None
        return precision.MIXED_PRECISION_DTYPES.get(str(trainer.precision))

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit":
            self.step_before_batch = None
            val_schedule.validate_at_step_multiples(self.trainer)  # val_check_interval counts steps
            self.rewards = self.rewards  # entries appended in place since (a plain function) are wrapped too
            train_set = getattr(getattr(self.trainer, "datamodule", None), "train_set", None)
            # first: under data.bad_rows=skip it may leave rows out, which the row-count rule must see
            check_solutions(self.rewards, train_set)
            check_routing(self.rewards, train_set)
            for reward in self.rewards:  # a reward object reused from an earlier fit warns afresh
                forget_warnings(reward)
            self.loop.__dict__.pop("_failed_in_a_row", None)  # and counts its failed rollouts afresh
            setup = check_fit(self)  # every fit-time and strategy rule, each problem listed
            self._rollout_steps = steps_per_rollout(setup)  # max_steps is judged from the step the fit starts at
            note = uneven_mini_batches_note(setup)
            if note:
                rank_zero_warn(note)
            for reward in self.rewards:  # a judge that is not running: say so now, not at the first rollout
                reward.check_ready()

    @contextlib.contextmanager
    def generation_context(self) -> Iterator[None]:
        """Wraps a rollout: sharded weights (FSDP2, ZeRO-3) are gathered once for all of it, and
        under mixed precision each weight is cast to bf16 once for all of it."""
        with parallel.gathered_for_generation(self), precision.cached_autocast(self.device.type):
            yield

    def reset_reference(self) -> None:
        """Make the reference the policy as it is now (``callbacks.ColdStart`` after its warm-up,
        so that the KL term anchors GRPO to the warmed-up model). Without LoRA the reference copy
        takes the policy's weights; with LoRA the reference is the policy run with a copy of its
        trainable weights as they are now (the warm-up's adapters), kept in checkpoints, instead
        of the base with its adapters disabled."""
        if self.lora is None:
            if self.ref_model is not None:
                self.ref_model.load_state_dict(self.policy.state_dict())
            return
        if self.config.beta == 0.0:
            return  # no reference pass
        self._refuse_sharded_reference_weights()
        self.reference_weights = {n: p.detach().clone() for n, p in self.policy.named_parameters() if p.requires_grad}

    def _refuse_sharded_reference_weights(self) -> None:
        if parallel.is_fsdp(self.policy) or parallel.deepspeed_engine(self) is not None:
            raise RuntimeError(
                "LoRA with a cold-start reference (callbacks.ColdStart, or a checkpoint of such a run) runs on one "
                "device or under DDP only: under FSDP2 or DeepSpeed the reference's adapters would be written into "
                "sharded weights. Run the cold start as its own SFT with model.export_dir, then start GRPO with "
                "LoRA from that model (its base is then the reference)")

    @contextlib.contextmanager
    def _reference_weights_in_place(self) -> Iterator[None]:
        """The policy's trainable weights replaced by :attr:`reference_weights` for the block, then
        put back bit for bit (copies of the adapters only; no autograd graph is alive here, and
        Lightning's autocast keeps no weight cache that could hold the trained values)."""
        self._refuse_sharded_reference_weights()
        params = dict(self.policy.named_parameters())
        for n, w in self.reference_weights.items():
            if w.device != params[n].device:  # loaded from a checkpoint onto the saving process's device
                self.reference_weights[n] = w.to(params[n].device)
        trained = {n: params[n].detach().clone() for n in self.reference_weights}
        try:
            with torch.no_grad():
                for n, w in self.reference_weights.items():
                    params[n].copy_(w)
            yield
        finally:
            with torch.no_grad():
                for n, w in trained.items():
                    params[n].copy_(w)

    @contextlib.contextmanager
    def reference_context(self) -> Iterator[torch.nn.Module]:
        """Yields the reference model, in eval mode, with no gradient (with LoRA: the policy
        itself, its adapters disabled, or after :meth:`reset_reference` run with the adapters
        it had then)."""
        if self.lora is not None and self.policy is not None:
            was_training = self.policy.training
            self.policy.eval()
            weights = (self._reference_weights_in_place() if self.reference_weights is not None
                       else self.policy.disable_adapter())
            try:
                with torch.no_grad(), weights:
                    yield self.policy
            finally:
                self.policy.train(was_training)
            return
        if self.ref_model is None:
            raise RuntimeError(f"no reference model: this module was built with beta 0 (beta is {self.config.beta} "
                               "now; a fit builds the reference when it starts)")
        try:
            with torch.no_grad():
                yield self.ref_model
        finally:
            parallel.reshard(self.ref_model)  # FSDP2: the root's gathered weights freed once the pass is done

    # -- optimisation ----------------------------------------------------------------------
    @contextlib.contextmanager
    def gradient_sync(self, enabled: bool) -> Iterator[None]:
        """Wraps one micro-batch's backward. ``enabled`` False under DDP: the gradients stay
        local (Lightning's ``block_backward_sync``, DDP's ``no_sync``), and the update's last
        micro-batch all-reduces their sum once, instead of an all-reduce per micro-batch.
        Other strategies reduce as they do: FSDP2 reduce-scatters each micro-batch (its
        gradients stay sharded), DeepSpeed manages its own, one process has nothing to skip.

        The forward ran outside the context (Lightning calls ``training_step`` once through the
        DDP wrapper, which leaves the reducer unarmed); under manual optimisation Lightning's
        ``DDPStrategy.pre_backward`` arms it before each backward only while DDP's
        ``require_backward_grad_sync`` is on, which ``no_sync`` turns off: the synced last
        backward then all-reduces every micro-batch's gradients, already summed in ``p.grad``."""
        block = getattr(self.trainer.strategy, "block_backward_sync", None) if self._trainer is not None else None
        if enabled or block is None:
            yield
            return
        with block():
            yield

    def apply_update(self, loss: float, max_norm: float | None, has_tokens: bool = True) -> StepOutcome:
        """Clip, step (optimiser and scheduler) and zero the gradients of one mini-batch; return
        the global gradient norm before clipping (nan when none was computed), the learning
        rate after the scheduler's step and the run's count of skipped steps.

        The step is skipped (no optimiser or scheduler step, gradients dropped, ``global_step``
        unchanged: it counts applied steps) when the loss or gradient norm is not finite on
        some process, or when the mini-batch holds no scored token on any process
        (``has_tokens`` False everywhere: every completion unscored, e.g. a judge that is down),
        see :meth:`record_skip`. Under DeepSpeed the engine owns the gradients (``p.grad`` is
        None, partitioned under ZeRO): it clips them (``gradient_clipping`` in its config) and
        may itself skip a step whose gradients are not finite; that skip is read from
        ``engine.was_step_applied()`` and counted the same way.
        """
        opt = self.optimizers()
        engine = parallel.deepspeed_engine(self)
        scaler = loss_scale.loss_scaler(self.trainer) if engine is None else None
        scale = scaler.get_scale() if scaler is not None else 1.0
        norm = self.clip_and_norm(opt, max_norm, scale if scaler is not None else None) if engine is None else 0.0
        loss_bad, norm_bad, tokens = self._skip_flags(loss, norm, has_tokens)
        reason = self._reason(loss, norm, loss_bad or norm_bad, tokens)
        # float16 gradients too large at this loss scale (a finite loss, an inf or nan among the gradients, as the
        # scaler itself checks): the scaler skips the step and lowers its scale. A nan loss is the forward's, which no
        # scale mends: a plain skip, counted toward the stop
        overflow = (scaler is not None and norm_bad and not loss_bad and tokens
                    and loss_scale.gradients_not_finite(self.policy.parameters()))
        if overflow:
            reason = (f"float16 gradients overflowed at loss scale {scale:g} (gradient norm {norm}); the loss scaler "
                      f"lowered its scale to {loss_scale.skip_overflow(scaler, opt.optimizer):g}")
        if reason is None:
            opt.step()
            if engine is not None:
                norm = parallel.engine_grad_norm(engine)
                norm = math.nan if norm is None else norm
                if not engine.was_step_applied():
                    reason = f"DeepSpeed skipped the step (gradient norm {norm})"
        if reason is None:
            self.skips_in_a_row = 0
            sched = self.lr_schedulers()
            if sched is not None:
                sched.step()
        else:  # an overflow at a scale above 1 is float16's range, not divergence: the scaler's next try is lower
            self.record_skip(reason, toward_stop=not overflow or scale <= 1.0)
        opt.zero_grad(set_to_none=True)
        return StepOutcome(norm, opt.param_groups[0]["lr"], self.skipped_steps)

    def _skip_flags(self, loss: float, grad_norm: float, has_tokens: bool) -> tuple[bool, bool, bool]:
        """(the loss not finite on some process, the gradient norm not finite on some process, a
        scored token on some process): one all-reduce, so every process agrees."""
        flags = torch.tensor([float(not math.isfinite(loss)), float(not math.isfinite(grad_norm)), float(has_tokens)],
                             device=self.device)
        loss_bad, norm_bad, tokens = self.reduce_sum(flags).tolist()
        return bool(loss_bad), bool(norm_bad), bool(tokens)

    def _reason(self, loss: float, grad_norm: float, bad: bool, tokens: bool) -> str | None:
        """Why this step must be skipped on every process (from :meth:`_skip_flags`' agreed flags), or None."""
        if bad:
            return f"loss {loss}, gradient norm {grad_norm}: not finite on every process"
        if not tokens:
            unscored = "no reward gave a finite value: each was nan, not applicable or failed, or infinite"
            if getattr(getattr(self, "config", None), "mask_truncated_completions", False):
                return (f"{NOTHING_SCORED} on any process: each completion was unscored ({unscored}) or truncated, "
                        "and model.grpo.mask_truncated_completions=true leaves truncated ones out of the loss "
                        "(train/completion/truncated_frac; raise model.grpo.max_completion_length)")
            return f"{NOTHING_SCORED} on any process ({unscored})"
        return None

    def record_skip(self, reason: str, toward_stop: bool = True) -> None:
        """Count a skipped step in ``skipped_steps`` (logged as ``train/skipped_steps``, saved in
        checkpoints); after ``max_skips_in_a_row`` skips with no applied step between them the
        fit stops with an error. A float16 overflow the loss scaler answers by lowering its
        scale (``toward_stop`` False) is said and counted, not counted toward the stop: a fit
        starting at 65536 may overflow a few times in a row before its scale fits."""
        self.skipped_steps += 1
        if not toward_stop:
            rank_zero_info(f"step {self.global_step}: {reason}; the optimiser step is skipped ({self.skipped_steps} "
                           "skipped so far, counted in train/skipped_steps)")
            return
        self.skips_in_a_row += 1
        if self.skips_in_a_row == 1 and self.skip_runs_said < SKIP_RUNS_SAID:  # the first of a run of skips
            self.skip_runs_said += 1
            later = ("; later runs of skips are counted, not said" if self.skip_runs_said == SKIP_RUNS_SAID else "")
            rank_zero_warn(f"step {self.global_step}: {reason}; the optimiser step is skipped ({self.skipped_steps} "
                           f"skipped so far; skips that follow it in a row are counted in train/skipped_steps, and "
                           f"{self.max_skips_in_a_row} in a row stop the fit{later})")
        tried = self.global_step + self.skipped_steps
        if not self.mostly_skipped_said and tried >= MOSTLY_SKIPPED_AFTER and self.skipped_steps * 2 > tried:
            self.mostly_skipped_said = True  # a run that applies a step now and then never reaches the stop
            rank_zero_warn(f"{self.skipped_steps} of the {tried} optimiser steps so far were skipped (the last: "
                           f"{reason}): this run barely trains; the steps applied between the skips keep it from "
                           f"the stop at {self.max_skips_in_a_row} in a row")
        if self.skips_in_a_row >= self.max_skips_in_a_row:
            what = ("Check the rewards: a judge server that is down, rewards that apply to none of the data's tasks, "
                    "or rewards that return nan or inf (train/reward/<name>/errors and /nonfinite count them); or, "
                    "with model.grpo.mask_truncated_completions, completions that all reach max_completion_length."
                    if reason.startswith(NOTHING_SCORED) else "Training has diverged. " + diverged_advice(
                        self.config.gradient_clip_val, self.learning_rates()))
            raise FloatingPointError(f"{self.skips_in_a_row} optimiser steps in a row were skipped (the last at global "
                                     f"step {self.global_step}: {reason}; the weights are unchanged since). {what}")

    def learning_rates(self) -> list[float]:
        """The optimiser's rates now, one per parameter group ([] before it is built)."""
        trainer = self._trainer
        return [float(g["lr"]) for o in (trainer.optimizers if trainer is not None else []) for g in o.param_groups]

    def clip_and_norm(self, opt, max_norm: float | None, scale: float | None = None) -> float:
        """Global gradient norm before clipping; clips to ``max_norm`` when set and the norm
        is finite (a non-finite one means the step is skipped, see :meth:`apply_update`).
        ``scale``: the float16 loss scale the gradients still carry (``16-mixed``; the optimiser
        step divides them by it; None: no loss scaler): the norm returned is the true one,
        ``norm(grads) / scale``, and the scaled gradients are clipped at ``max_norm * scale``, the
        same clip coefficient as clipping the true ones at ``max_norm`` (:mod:`lit_vr1.loss_scale`)."""
        params = [p for p in self.policy.parameters() if p.grad is not None]
        if not params:
            return 0.0
        total = torch.nn.utils.get_total_norm([p.grad for p in params])
        norm = float(total) / (scale or 1.0)
        if max_norm is not None and math.isfinite(norm):
            if scale is not None:  # directly: Lightning's clip refuses a fused optimiser under the scaler; this one is valid
                torch.nn.utils.clip_grads_with_norm_(params, max_norm * scale, total)
            else:
                self.clip_gradients(opt, gradient_clip_val=max_norm, gradient_clip_algorithm="norm")
        return norm

    def reached_max_steps(self) -> bool:
        """True once the Trainer's max_steps optimiser steps are done (a rollout may hold more)."""
        max_steps = self.trainer.max_steps
        return max_steps is not None and max_steps >= 0 and self.global_step >= max_steps

    @property
    def world_size(self) -> int:
        """Processes of the fit."""
        return self.trainer.world_size

    def reduce_sum(self, value: Tensor) -> Tensor:
        """``value`` (moved to this process's device) summed over the processes."""
        if self.trainer.world_size == 1:
            return value
        return self.trainer.strategy.reduce(value.to(self.device), reduce_op="sum")

    # -- steps -----------------------------------------------------------------------------
    def on_train_start(self) -> None:
        """Warn when ``trainer.max_steps`` ends inside a rollout, counted from the step this fit
        starts at (a resumed one's; counted from 0 the warning was wrong both ways after a resume).
        Not for a loop that leaves groups out: its rollouts take as many steps as the groups kept.
        Also when ``model.grpo.beta`` is 1 or more (:func:`lit_vr1.no_signal.strong_kl_note`), and when
        completions are sampled below temperature 0.3 (:func:`lit_vr1.no_signal.cold_sampling_note`)."""
        super().on_train_start()
        steps = [] if self.loop.leaves_groups_out() else getattr(self, "_rollout_steps", [])
        for note in (max_steps_note(self.trainer.max_steps, steps, self.global_step), strong_kl_note(self.config.beta),
                     cold_sampling_note(self.config.temperature)):
            if note:
                rank_zero_warn(note)

    def training_step(self, batch, batch_idx: int) -> None:
        self.step_before_batch = self.global_step  # validation counts steps (lit_vr1.val_schedule)
        stats = self.loop.run(batch)
        missing = [k for k in ("reward/total/mean", "groups_tied_frac") if k not in (stats or {})]
        if missing:
            raise ValueError(f"{type(self.loop).__name__}.run returned no {' or '.join(missing)}: an override of run "
                               "returns the statistics super().run(samples) returns, keys added as it likes")
        if math.isfinite(stats["reward/total/mean"]):  # nothing scored: no figure (EarlyStopping stops at a nan)
            self.log("reward", stats["reward/total/mean"], prog_bar=True, logger=False, batch_size=len(batch))
        self.warn_when_nothing_to_learn(stats["groups_tied_frac"], stats["reward/total/mean"], stats)
        if self.__dict__.get("_silent_rewards") is None:
            self._silent_rewards = SilentRewards(self.tied_rollouts_warning)
        for note in self._silent_rewards.update(stats, self.rewards, frame_of(self.policy, self.box_frame)):
            rank_zero_warn(note)

    def answer_mode(self, task: str | None = None) -> str:
        """``eval_answer_mode``, else the mode of the first reward that matches answers
        (:class:`~lit_vr1.rewards.Accuracy`, :class:`~lit_vr1.rewards.HFRRF`) and scores a row
        of ``task`` (its ``tasks``; any reward's for None), else "numeric": validation scores
        answers as training rewards them. With rewards routed by task (a ``math`` one for
        ``default``, a ``choice`` one for ``mc``), each held-out row is matched in its own task's
        mode; before, every row in the first reward's (an ``mc`` row answered ``B`` against
        ``B. 12`` scored 0 in math mode, 1 in training)."""
        if self.eval_answer_mode is not None:
            return self.eval_answer_mode
        matchers = self._answer_rewards()
        routed = [r for r in matchers if task is None or r.tasks is None or task in r.tasks]
        return (routed or matchers)[0].mode if matchers else "numeric"

    def _answer_rewards(self) -> list[Reward]:
        """The rewards that match answers (:class:`~lit_vr1.rewards.Accuracy`, :class:`~lit_vr1.rewards.HFRRF`)."""
        return [r for r in self.rewards if isinstance(r, (Accuracy, HFRRF))]

    def unrouted_answer_note(self, task: str) -> str | None:
        """A note for held-out rows of ``task`` that no answer reward scores (every one has other
        ``tasks``): they are matched in the first one's mode, and a held-out file given without
        ``data.val_reward_methods`` has task ``default`` (a mixed-task trial read "solution 'C' holds
        no number" where the file's task was unset)."""
        matchers = self._answer_rewards()
        if (task != "default" or self.eval_answer_mode is not None or not matchers
                or any(r.tasks is None or task in r.tasks for r in matchers)):
            return None
        tasks = sorted({t for r in matchers for t in r.tasks})
        return (f"these rows have no task ('default'), which no answer reward scores (theirs: {', '.join(tasks)}), so "
                f"they are matched as the first one's ({matchers[0].mode}): name their task with "
                "data.val_reward_methods (a held-out file's) or the rows' reward_method")

    def warn_when_nothing_to_learn(self, tied_frac: float, reward: float, stats: dict | None = None) -> None:
        """Warn once when ``tied_rollouts_warning`` rollouts in a row had every group tied
        (each prompt's G completions scored alike, ``train/groups_tied_frac`` 1): every
        advantage is 0, so GRPO has no signal and the policy stays as it is. The cause named
        is read from the last rollout's ``stats`` (:func:`lit_vr1.no_signal.tied_cause`)."""
        self.tied_in_a_row = self.tied_in_a_row + 1 if tied_frac >= 1.0 else 0
        if self.tied_in_a_row == self.tied_rollouts_warning:
            rank_zero_warn(
                f"the last {self.tied_in_a_row} rollouts had every group tied (each prompt's G completions got the same "
                f"reward; mean reward {reward:.3f} at step {self.global_step}): every advantage is 0, so GRPO learns "
                "nothing. " + tied_cause({"reward/total/mean": reward, **(stats or {})}, self.config.temperature,
                                         self.config.max_completion_length)
                + failing_rewards_note(self.rewards))

    # -- checkpoints: the skipped-step count survives a resume -----------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        hparams = checkpoint.get("hyper_parameters") or {}
        configured = getattr(self, "_configured_rollout", None)
        # PTST sets the stage's G and length on this config, which the hyper_parameters hold too: the checkpoint
        # keeps the run's own (a resume compared them with its config and warned of a change on every PTST run)
        if configured and isinstance(hparams.get("grpo"), GRPOConfig):
            hparams["grpo"] = dataclasses.replace(hparams["grpo"], **configured)
        elif configured and isinstance(hparams.get("grpo"), dict):
            hparams["grpo"] = {**hparams["grpo"], **configured}
        checkpoint[SKIPPED_KEY] = {"skipped_steps": self.skipped_steps, "skips_in_a_row": self.skips_in_a_row}
        checkpoint[REWARDS_KEY] = reward_list(self.rewards)
        if self.reference_weights is not None:
            checkpoint[REFERENCE_KEY] = self.reference_weights

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.refuse_other_recipe(checkpoint)
        self._match_reference(checkpoint)
        note = rounded_reference_note(checkpoint.get("state_dict") or {}, self.ref_model, self._trainer)
        if note:
            rank_zero_warn(note)
        super().on_load_checkpoint(checkpoint)
        saved = checkpoint.get(SKIPPED_KEY, {})
        self.skipped_steps = int(saved.get("skipped_steps", 0))
        self.skips_in_a_row = int(saved.get("skips_in_a_row", 0))
        self.reference_weights = checkpoint.get(REFERENCE_KEY)
        if getattr(getattr(self._trainer, "state", None), "fn", None) != "predict":  # predict scores nothing
            warn_changed_rewards(checkpoint.get(REWARDS_KEY), reward_list(self.rewards))
        if getattr(getattr(self._trainer, "state", None), "fn", None) == "fit":
            note = changed_settings_note((checkpoint.get("hyper_parameters") or {}).get("grpo"), self.config)
            if note:
                rank_zero_warn(note)

    def unrecorded_settings(self, checkpoint: dict) -> list[str]:
        """As the base module's, and the rewards (saved since 2026-12-05)."""
        missing = super().unrecorded_settings(checkpoint)
        return missing + (["rewards (model.rewards)"] if REWARDS_KEY not in checkpoint else [])

    def _match_reference(self, checkpoint: dict) -> None:
        """A checkpoint written with a reference model (beta != 0) loaded into a module without
        one (beta 0), or the other way round: a resume is refused naming ``model.grpo.beta``
        (before, strict loading stopped it with a traceback of every reference key); validate,
        test and predict, which never run the reference, load the policy alone. Under LoRA too
        (the run's beta tells): a run with beta 0 keeps no reference adapters, so after
        ``callbacks.ColdStart`` a resume with beta > 0 anchored its KL to the untrained base
        (KL 0.0525 against an uninterrupted run's 0.0011, a new user's trial)."""
        hparams = checkpoint.get("hyper_parameters") or {}
        if "lora" in hparams and (hparams["lora"] is None) != (self.lora is None):
            return  # a LoRA run's checkpoint without LoRA now (or back): the model check names model.lora
        grpo = hparams.get("grpo")
        was = grpo.get("beta") if isinstance(grpo, dict) else getattr(grpo, "beta", None)
        if self.lora is not None:  # no reference copy: the run's beta tells whether it kept a reference
            state, saved = None, (was != 0) if was is not None else None
            if saved is None or saved == (self.config.beta != 0):
                return
        elif "state_dict" in checkpoint:
            state = checkpoint["state_dict"]
            saved = any(k.startswith("ref_model.") for k in state)
        elif was is not None:  # FSDP2 and DeepSpeed load the weights themselves: the run's beta tells
            state, saved = None, was != 0
        else:
            return
        if self.lora is None and saved == (self.ref_model is not None):
            return
        trainer = self._trainer
        if trainer is not None and trainer.state.fn == "fit":
            then = f"beta {was!r}" if was is not None else "a beta" + (" other than 0" if saved else " of 0")
            raise SettingsRefused(
                f"model.grpo.beta: the checkpoint's run trained {'with' if saved else 'without'} a reference model "
                f"({then}) and this run has {'none' if saved else 'one'} (beta {self.config.beta!r}); a resume goes on "
                "with the run's own beta: give it, or start a new fit from the exported model (python -m "
                "lit_vr1.export) with the new one")
        if state is None:
            return
        if saved:
            checkpoint["state_dict"] = {k: v for k, v in state.items() if not k.startswith("ref_model.")}
        else:  # the reference as this module built it (the model it was loaded from)
            checkpoint["state_dict"] = {**{k: v for k, v in self.state_dict().items() if k.startswith("ref_model.")},
                                        **state}

    def log_step(self, metrics: dict[str, float]) -> None:
        """Send one optimiser step's statistics to every logger at the current global step,
        combined over processes as each was computed (:func:`lit_vr1.step_stats.combine`: means
        weighted by what they count, pooled stds, summed counts, the largest of maxima; nan where
        a reward applied to nothing is left out)."""
        if self.trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[dict[str, float] | None] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, metrics)
            metrics = step_stats.combine(gathered)
        else:
            metrics = step_stats.local(metrics)
        self.last_metrics = metrics
        # beside them, what callbacks set for the steps to come (callbacks.PTST's ptst/stage): one row a step
        self.log_row({**{"train/" + k: v for k, v in metrics.items()}, **getattr(self, "step_figures", {})})
        if math.isfinite(metrics["loss"]):  # a skipped step's: no figure (EarlyStopping(monitor="loss") stopped at its nan)
            self.log("loss", metrics["loss"], prog_bar=True, logger=False)


def rounded_reference_note(state: dict[str, Tensor], ref_model: torch.nn.Module | None, trainer: Any) -> str | None:
    """A note when a checkpoint's reference weights were stored in bf16 or fp16 (its run trained
    under mixed precision) and this fit keeps a float32 reference (``32-true``, or FSDP2): the
    reference then runs with the weights as that run rounded them, not the float32 originals."""
    if ref_model is None or getattr(getattr(trainer, "state", None), "fn", None) != "fit":
        return None
    mine = dict(ref_model.named_parameters())
    half = [k for k, v in state.items() if k.startswith("ref_model.") and isinstance(v, Tensor)
            and v.dtype in precision.HALF and getattr(mine.get(k[len("ref_model."):]), "dtype", None) == torch.float32]
    if not half:
        return None
    return (f"the checkpoint's reference model holds {len(half)} weights in {state[half[0]].dtype} (its run trained "
            f"under mixed precision); this fit keeps a float32 reference (trainer.precision="
            f"{getattr(trainer, 'precision', '?')}), which runs with those rounded weights, not their float32 originals")


def max_steps_note(max_steps: int, steps: list[int], start: int = 0) -> str | None:
    """A note when ``max_steps`` ends inside a rollout of ``steps`` optimiser steps (one value:
    the fit's G does not change), the fit's rollouts starting at step ``start`` (a resumed fit's
    step; checkpoints fall on rollout ends), else None."""
    if len(steps) != 1 or steps[0] < 2 or max_steps is None or max_steps <= start or (max_steps - start) % steps[0] == 0:
        return None
    k, left = steps[0], max_steps - start
    ends = sorted({start + (left // k * k or k), start + (left // k + 1) * k})
    since = f", from step {start} where this fit starts" if start else ""
    return (f"trainer.max_steps={max_steps} ends inside a rollout (each takes {k} optimiser steps{since}): the remaining "
            f"{k - left % k} step(s) of that rollout are not trained, and a resume of this run with more steps starts a new "
            f"rollout where one run would have finished that one (not the same run); give "
            f"{'a multiple of ' + str(k) if not start else f'{start} + a multiple of {k}'} ({' or '.join(map(str, ends))})")


def diverged_advice(clip: float | None, rates: list[float]) -> str:
    """What to change when steps keep coming out non-finite, with the values the run has (a
    trial's run at lr 10 was told to set gradient_clip_val, which was 1.0 already)."""
    rate = f" (now {', '.join(f'{r:g}' for r in dict.fromkeys(rates))})" if rates else ""
    clipping = (f"lower model.grpo.gradient_clip_val (now {clip:g})" if clip else
                "set model.grpo.gradient_clip_val (1.0, say; now none)")
    return f"Lower the learning rate{rate}, {clipping}, or resume from an earlier checkpoint."


def failing_rewards_note(rewards: list[Reward]) -> str:
    """For the tied-groups warning: rewards whose masked failures (``on_error: nan``) may be
    the cause, a judge that stopped answering leaving only the rewards that tie."""
    failing = [f"{r.name} ({r.errors} completions, train/reward/{r.name}/errors)" for r in rewards if getattr(r, "errors", 0)]
    if not failing:
        return ""
    return (f". Rewards failed and were masked (on_error: nan) in this run: {', '.join(failing)}; the rest may tie "
            "without them: read their first warning, or set on_error: raise to stop at the failure")


def reward_list(rewards: list[Reward]) -> list[str]:
    """The rewards a run scores with, as checkpoints record them: ``name (Class, weight w)``."""
    return [f"{r.name} ({type(r).__name__}, weight {r.weight:g})" for r in rewards]


SETTINGS_OF_SPEED_ONLY = ("micro_batch_size", "shared_prompt", "cuda_graph")  # the same updates either way


def changed_settings_note(saved: Any, now: GRPOConfig) -> str | None:
    """A note when a resume trains with other ``model.grpo`` settings than the checkpoint's run:
    a config file whose values replace flags the run was started with (``num_iterations: 1`` over
    the run's ``--model.grpo.num_iterations=2``) did so without a word, and ``metrics.csv`` then
    holds one curve of two objectives. A change may be meant; it should not pass unsaid. Settings
    that change only the speed (:data:`SETTINGS_OF_SPEED_ONLY`) are left out; ``beta`` switched on
    or off is refused elsewhere."""
    if dataclasses.is_dataclass(saved):
        saved = dataclasses.asdict(saved)
    if not isinstance(saved, dict):
        return None
    current = dataclasses.asdict(now)
    changed = [f"{k} {saved[k]!r} -> {v!r}" for k, v in current.items()
               if k in saved and k not in SETTINGS_OF_SPEED_ONLY and saved[k] != v]
    if not changed:
        return None
    return (f"this resume trains with other model.grpo settings than the checkpoint's run: {', '.join(changed)}; "
            "give the run's own (its config.yaml, or the flags it was started with) to go on as it did")


def warn_changed_rewards(saved: list[str] | None, now: list[str]) -> None:
    """Warn when a module loads a checkpoint whose run scored with other rewards: rewards are
    not hyperparameters (they hold functions and clients), so ``GRPOModule.load_from_checkpoint``
    without ``rewards=`` builds the default ones, and a resume with other rewards in its config
    trains on another objective. Either may be meant; neither should pass unsaid."""
    if saved is None or list(saved) == now:
        return
    rank_zero_warn(f"this checkpoint's run scored with [{'; '.join(saved)}]; this module scores with "
                   f"[{'; '.join(now)}]. To go on as the run did, give the same rewards (GRPOModule.load_from_checkpoint"
                   "(path, rewards=[...]), or the run's config.yaml's model.init_args.rewards)")


def check_routing(rewards: list[Reward], train_set) -> None:
    """The rewards' ``tasks`` against the training rows' tasks (their file's ``data.reward_methods``
    entry, or a row's own ``reward_method``; "default" without either). When no reward scores any
    row, every completion is unscored, every step is skipped and the run stops after ten of them
    with a FloatingPointError: refused here, naming both sides. Rows no reward scores (they add
    nothing to any update) and a reward that scores no row (a recipe's reward for another task)
    are warned of. A training set without records (a plain DataLoader) is not read."""
    records = getattr(train_set, "records", None)
    if not records or not rewards:
        return
    tasks: dict[str, int] = {}
    for record in records:
        tasks[record.task] = tasks.get(record.task, 0) + 1

    def scores(reward: Reward, task: str) -> bool:
        return reward.tasks is None or task in reward.tasks

    def routed(reward: Reward) -> str:
        return f"{reward.name!r} (tasks {reward.tasks})" if reward.tasks is not None else f"{reward.name!r} (every task)"

    rows = ", ".join(f"{task!r} ({n} rows)" for task, n in tasks.items())
    unscored = {task: n for task, n in tasks.items() if not any(scores(r, task) for r in rewards)}
    named, present = sorted({t for r in rewards if r.tasks is not None for t in r.tasks}), set(tasks)
    idle = [r for r in rewards if not any(scores(r, task) for task in tasks)]  # rewards that score no row
    # the rows read once more only when something is said (a data set of 200,000 rows passes through here)
    field = unread_task_field(records, named) if unscored or idle else ""
    how = ("set each reward's tasks to the rows' (or leave tasks unset: every row), or give the rows their task with "
           "data.reward_methods (one per train file) or a row's own reward_method field" + field)
    if len(unscored) == len(tasks):
        raise ValueError(f"no reward scores any training row: the rows' tasks are {rows}, and the rewards score "
                         f"{'; '.join(routed(r) for r in rewards)}; {how}")
    if unscored:
        means = [f"{t!r} for {near!r}" for t in unscored if (near := misspelt_task(t, named, present)) is not None]
        rank_zero_warn(f"{sum(unscored.values())} training rows are scored by no reward (task(s) "
                       f"{', '.join(map(repr, unscored))}): their completions are left out of every update; {how}"
                       + (f" (a misspelt task? {', '.join(means)})" if means else ""))
    for reward in idle:
        rank_zero_warn(f"reward {routed(reward)} scores none of the training rows (their tasks: {rows}); it will "
                       "log nothing this run" + field)
    for task, n in tasks.items():
        near = misspelt_task(task, named, present)
        if near is not None and task not in unscored:  # scored, but only by the rewards of every task
            rank_zero_warn(f"{n} training row(s) have task {task!r}, which no reward's tasks name: only the rewards of "
                           f"every task score them ({', '.join(repr(r.name) for r in rewards if r.tasks is None)}); "
                           f"did you mean {near!r}? ({', '.join(routed(r) for r in rewards if near in (r.tasks or ()))})")


def unread_task_field(records: list, named: list[str]) -> str:
    """A note when rows without a task ("default") carry another field whose values are the
    rewards' tasks (``"task": "rec"``, a mixed-task trial's rows): that field is not read, and the
    rows trained as task 'default' with nothing said of the field. Empty otherwise."""
    if not named:
        return ""
    counts: dict[str, int] = {}
    for record in records:
        if record.task != "default":
            continue
        for key, value in (getattr(record, "metadata", None) or {}).items():
            if isinstance(value, str) and value in named:
                counts[key] = counts.get(key, 0) + 1
    if not counts:
        return ""
    field = max(counts, key=counts.get)
    return (f" (the rows' field {field!r} holds the rewards' tasks in {counts[field]} row(s), but is not read: a row's "
            f"task goes in field 'reward_method')")


def misspelt_task(task: str, named: list[str], rows: set[str] = frozenset()) -> str | None:
    """The task of ``named`` (the rewards') that ``task`` (a row's, which no reward names) is likely
    a misspelling of: the same but for case and surrounding spaces, or close by
    :func:`difflib.get_close_matches` (``'cuont'`` for ``'count'``) where no row has the named task
    itself (``refcocog`` rows beside ``refcoco`` ones are another data set); None otherwise."""
    if task in named:
        return None
    same = [t for t in named if t.strip().casefold() == task.strip().casefold()]
    close = same or [t for t in difflib.get_close_matches(task, named, n=1, cutoff=0.8) if t not in rows]
    return close[0] if close else None


def imageless_boxes(reward: Reward, record) -> str | None:
    """A box reward's row whose solution holds boxes but which has no image (field 'image'
    missing or null): its boxes cannot be read in the policy's frame; the first rollout to draw
    it stopped the run."""
    from lit_vr1.rewards.boxes import solution_boxes

    if not hasattr(reward, "box_frame") or record.image_sizes or not solution_boxes(record.solution):
        return None
    return ("the row has no image (field 'image' missing or null) but its solution holds boxes, which are read in "
            "an image's pixels: give the row its image")


def record_context(record) -> SampleContext:
    """What a reward reads of a training row (a :class:`~lit_vr1.data.jsonl.Record`), before any
    completion: its id, question, solution, metadata, task, source and image sizes."""
    return SampleContext(id=record.id, prompt=record.question, solution=record.solution, metadata=record.metadata,
                         task=record.task, source=record.source, image_sizes=list(record.image_sizes))


def check_solutions(rewards: list[Reward], train_set) -> list:
    """Every training row whose solution a reward that applies to it cannot score (a REC
    answer without a box for the IoU reward, see :meth:`Reward.solution_problem`), refused
    all at once, or left out under ``data.bad_rows=skip`` (``JsonlDataset.check_rows``);
    before, the first rollout to reach such a row stopped the run. A reward with
    ``on_error="nan"`` is not asked: its failures are masked and counted, as chosen. A training set that is not
    a JSONL dataset (a plain DataLoader) is not read. Returns the rows left out."""
    if not hasattr(train_set, "check_rows"):
        return []

    def problem(record) -> str | None:
        ctx = record_context(record)
        for reward in rewards:  # on_error="nan": the user chose to mask and count what it cannot score
            found = reward.on_error != "nan" and reward.applies(ctx) and (reward.solution_problem(ctx)
                                                                          or imageless_boxes(reward, record))
            if found:
                return f"{record.source}: {found} (reward {reward.name!r} scores this row)"
        return None

    mixed = len({r.task for r in train_set.records}) > 1
    tasks = (", or give each reward the tasks of its rows (tasks: [...]; a box reward scoring a counting row)"
             if mixed else "")
    return train_set.check_rows(problem, "rows whose solution a reward cannot score",
                                f"fix or remove them{tasks}, or set data.bad_rows=skip to leave them out",
                                "no training row has a solution the rewards can score",
                                "does each reward score only its own rows' task (a reward's tasks: [...])?")

