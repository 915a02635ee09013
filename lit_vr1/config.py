"""The settings of GRPO (``model.grpo``) and of sampling, with their field rules.

:class:`GRPOConfig` holds every knob of the algorithm; :class:`SamplingConfig` is what one
rollout samples from, derived from it at each rollout (:meth:`GRPOConfig.sampling`), so a
callback that changes the config between rollouts (PTST's stages) is read at once.
Each field rule below runs when the config is built and reports every problem at once;
the rules that need more than one object (G against the batch, the strategy) run at fit
start in :mod:`lit_vr1.checks`.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Literal

import torch

from lit_vr1.loss import LOSS_TYPES, SCALE_REWARDS
from lit_vr1.rules import named_fields_only, one_of, problems_of, refuse, rule
from lit_vr1.trl_names import BOOLEAN_CHOICES


@named_fields_only
@dataclass
class SamplingConfig:
    """How completions are drawn. top_k=0 and top_p=1.0 switch those filters off;
    ``greedy`` decodes the argmax (evaluation). ``suppress_ids`` are tokens never
    generated (image and video placeholders: one in a completion would break the
    image-token count of the next forward). ``cuda_graph``: on CUDA, replay the decoding
    step from a captured CUDA graph (``lit_vr1.decode_graph``)."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_completion_length: int = 64
    greedy: bool = False
    suppress_ids: tuple[int, ...] = ()
    cuda_graph: bool = True

    def scoring(self) -> SamplingConfig:
        """The distribution the loss scores these samples under: the same temperature and
        suppressed tokens, without top-k / top-p (every sampled token keeps a finite log-prob
        under any weights, and the reference is scored under the same distribution; see
        ``GRPOConfig``)."""
        return SamplingConfig(temperature=self.temperature, max_completion_length=self.max_completion_length,
                              suppress_ids=self.suppress_ids)


@named_fields_only
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
            rollout and in every training forward, instead of G times (see
            ``lit_vr1.shared_prompt``); models it does not support (InternVL, gradient
            checkpointing) fall back to repeated prompts, said once (an info line). Same logits
            and gradients either way.
        disable_dropout: set every dropout of the policy (LoRA's included) to 0, so that the
            old, reference and policy passes score the model the rollout sampled from (the
            ratio is exactly 1 until the weights move), as TRL's ``disable_dropout``.
        cuda_graph: on CUDA, with shared prompts, decode over a fixed-size key/value cache and
            replay each decoding step from a captured CUDA graph (``lit_vr1.decode_graph``):
            the same distribution, without launching every kernel from Python at every token
            (bf16 logits may differ from the growing cache's in their last bits). A model that
            cannot be captured samples without it (one warning); false also covers validation
            and predict.
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
    cuda_graph: bool = True

    def __post_init__(self) -> None:
        # a NaN or inf passes no range rule and fails every one, each with a wrong reason ("nan is negative")
        nonfinite = [f"model.grpo.{name}={value} is not a finite number" for name in FLOAT_FIELDS
                     if isinstance(value := getattr(self, name), numbers.Real) and not math.isfinite(value)]
        refuse(nonfinite or problems_of(self), "model.grpo")

    def sampling(self, suppress_ids: tuple[int, ...] = ()) -> SamplingConfig:
        """What a rollout samples from now (read at each rollout)."""
        return SamplingConfig(self.temperature, self.top_p, self.top_k, self.max_completion_length,
                              suppress_ids=suppress_ids, cuda_graph=self.cuda_graph)


# -- field rules (each runs when a GRPOConfig is built) ----------------------------------------------
@rule("model.grpo.loss_type", "config", on="GRPOConfig")
def loss_type_known(c: GRPOConfig) -> str | None:
    return one_of("model.grpo.loss_type", c.loss_type, LOSS_TYPES)


FLOAT_FIELDS = ("temperature", "top_p", "epsilon", "epsilon_high", "beta", "gradient_clip_val")


@rule("model.grpo.scale_rewards", "config", on="GRPOConfig")
def scale_rewards_known(c: GRPOConfig) -> str | None:
    if isinstance(c.scale_rewards, bool):  # TRL's GRPOConfig takes True / False too
        meant = BOOLEAN_CHOICES["scale_rewards"][str(c.scale_rewards).lower()]
        return (f"model.grpo.scale_rewards={c.scale_rewards} is TRL's boolean form; here write {meant!r} (choose one "
                f"of {', '.join(SCALE_REWARDS)})")
    return one_of("model.grpo.scale_rewards", c.scale_rewards, SCALE_REWARDS)


def _at_least_one(c: GRPOConfig, name: str, nullable: bool = False) -> str | None:
    value = getattr(c, name)
    if (value is None and nullable) or (value is not None and value >= 1):
        return None
    return f"model.grpo.{name}={value} must be >= 1{' or null' if nullable else ''}"


@rule("model.grpo.num_generations", "config", on="GRPOConfig")
def num_generations_at_least_one(c: GRPOConfig) -> str | None:
    return _at_least_one(c, "num_generations")


@rule("model.grpo.max_completion_length", "config", on="GRPOConfig")
def max_completion_length_at_least_one(c: GRPOConfig) -> str | None:
    return _at_least_one(c, "max_completion_length")


@rule("model.grpo.num_iterations", "config", on="GRPOConfig")
def num_iterations_at_least_one(c: GRPOConfig) -> str | None:
    return _at_least_one(c, "num_iterations")


@rule("model.grpo.mini_batch_size", "config", on="GRPOConfig")
def mini_batch_size_at_least_one(c: GRPOConfig) -> str | None:
    return _at_least_one(c, "mini_batch_size", nullable=True)


@rule("model.grpo.micro_batch_size", "config", on="GRPOConfig")
def micro_batch_size_at_least_one(c: GRPOConfig) -> str | None:
    return _at_least_one(c, "micro_batch_size", nullable=True)


def _positive(name: str, value: float | None, what: str) -> str | None:
    if value is None or value > 0:
        return None
    return f"model.grpo.{name}={value} must be > 0: {what}"


@rule("model.grpo.beta", "config", on="GRPOConfig")
def beta_not_negative(c: GRPOConfig) -> str | None:
    if c.beta >= 0:
        return None
    return (f"model.grpo.beta={c.beta} is negative, which would reward drifting away from the reference; "
            "set it >= 0 (0: no KL term and no reference model; the recipes use 0.04)")


@rule("model.grpo.epsilon", "config", on="GRPOConfig")
def epsilon_positive(c: GRPOConfig) -> str | None:
    return _positive("epsilon", c.epsilon, "it is the clip range of the probability ratio (typically 0.2)")


@rule("model.grpo.epsilon_high", "config", on="GRPOConfig")
def epsilon_high_at_least_epsilon(c: GRPOConfig) -> str | None:
    if c.epsilon_high is None or c.epsilon_high >= c.epsilon:
        return None
    return (f"model.grpo.epsilon_high={c.epsilon_high} is below model.grpo.epsilon={c.epsilon}: it is the upper clip "
            "range of DAPO's clip-higher and should be >= epsilon (e.g. 0.28), or null to use epsilon")


@rule("model.grpo.temperature", "config", on="GRPOConfig")
def temperature_positive(c: GRPOConfig) -> str | None:
    return _positive("temperature", c.temperature, "completions are sampled at this temperature (1.0: the model's "
                                                   "distribution)")


@rule("model.grpo.top_p", "config", on="GRPOConfig")
def top_p_in_range(c: GRPOConfig) -> str | None:
    if 0 < c.top_p <= 1:
        return None
    return f"model.grpo.top_p={c.top_p} must be in (0, 1]: the nucleus mass kept when sampling (1.0: off)"


@rule("model.grpo.top_k", "config", on="GRPOConfig")
def top_k_leaves_a_choice(c: GRPOConfig) -> str | None:
    if c.top_k == 0 or c.top_k > 1:
        return None
    if c.top_k == 1:  # greedy: the G samples of a prompt are one completion, every group ties
        return ("model.grpo.top_k=1 keeps only the most likely token: each prompt's G completions would be the same "
                "greedy text with the same rewards, so every advantage is 0 and GRPO learns nothing; use 0 (off) or "
                "a value of 2 or more (e.g. 50)")
    return f"model.grpo.top_k={c.top_k} must be >= 0: the most likely tokens kept when sampling (0: off)"


@rule("model.grpo.gradient_clip_val", "config", on="GRPOConfig")
def gradient_clip_positive(c: GRPOConfig) -> str | None:
    return _positive("gradient_clip_val", c.gradient_clip_val, "the largest global gradient norm; set null for no "
                                                               "clipping")


# Modules built in Python keep this dataclass in their hparams; Lightning loads checkpoints
# with weights_only=True, which refuses classes it was not told are safe.
# (also under lit_vr1.loop, where earlier releases defined it)
torch.serialization.add_safe_globals([GRPOConfig, (GRPOConfig, "lit_vr1.loop.GRPOConfig")])
