"""Configuration checks at fit start: every mistake found at once, each with the flag to
change and what to change it to, before a model is built or a forward runs.

:data:`RULES` is the registry of every configuration rule of lit-vr1: those checked here
(``where="lit_vr1/checks.py"``, with a ``check`` function) and those enforced elsewhere,
listed with the place that enforces them, so that the count is honest and no rule is
written twice. :func:`check_fit` (called from ``GRPOModule.setup``) runs the rules of
this module over a :class:`FitSetup` read from the module, its Trainer and data module,
and raises one :class:`ConfigError` that lists every problem.

Not a rule, on purpose: ``micro_batch_size`` need not divide ``mini_batch_size``. The
loop normalises each micro-batch's loss by the whole mini-batch (``num_sequences``,
``num_tokens`` in ``RolloutUpdateLoop.update``), so a smaller last micro-batch is
weighted exactly; likewise a rollout that ``mini_batch_size`` does not divide ends with a
smaller mini-batch, which is normalised by its own size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lit_vr1 import parallel
from lit_vr1.models.precision import half_trainable

# where the rules of this module are enforced
HERE = "lit_vr1/checks.py (check_fit, at fit start)"


class ConfigError(ValueError):
    """The configuration cannot train; the message lists every problem with its flag."""


@dataclass
class FitSetup:
    """What the rules look at, read from a module and its Trainer (see :func:`fit_setup`).

    grpo: the module's :class:`~lit_vr1.loop.GRPOConfig` (None: not a GRPO module).
    group_sizes: every G the fit will use: ``grpo.num_generations`` and each PTST stage's.
    batch_size: prompts per rollout on each process (``data.batch_size``; None: unknown).
    train_rows: rows of the training set (None: unknown). num_workers: ``data.num_workers``.
    world_size: processes.
    precision: ``trainer.precision`` as Lightning normalised it (``bf16-mixed``, ``32-true``, ...).
    dtype: ``model.dtype``. lora: LoRA adapters are trained. deepspeed: a DeepSpeed strategy.
    """

    grpo: Any = None
    group_sizes: list[int] = field(default_factory=list)
    batch_size: int | None = None
    train_rows: int | None = None
    num_workers: int | None = None
    world_size: int = 1
    precision: str | None = None
    dtype: str | None = None
    lora: bool = False
    deepspeed: bool = False


@dataclass(frozen=True)
class Rule:
    """One configuration rule: its name, the flag it is about, where it is enforced, and
    (for the rules of this module) ``check(setup) -> problem text or None``."""

    name: str
    flag: str
    where: str
    check: Callable[[FitSetup], str | None] | None = None


# -- the rules checked here -----------------------------------------------------------------------
def _grpo(setup: FitSetup, name: str) -> Any:
    return getattr(setup.grpo, name) if setup.grpo is not None else None


def group_at_least_two(s: FitSetup) -> str | None:
    bad = sorted({g for g in s.group_sizes if g < 2})
    if not bad:
        return None
    return (f"model.grpo.num_generations={bad[0]} (or a PTST stage's num_generations): GRPO compares the G completions "
            "of a prompt with each other, so with G < 2 every advantage is 0 and nothing is learned; set it to 2 or more "
            "(the recipes use 8)")


def mini_batch_multiple_of_group(s: FitSetup) -> str | None:
    mini = _grpo(s, "mini_batch_size")
    bad = sorted({g for g in s.group_sizes if mini is not None and g >= 1 and mini % g})
    if not bad:
        return None
    return (f"model.grpo.mini_batch_size={mini} is not a multiple of model.grpo.num_generations={bad[0]} (G, also per "
            "PTST stage): a mini-batch counts completions, and each optimiser step should see whole groups; set it to a "
            f"multiple of G (e.g. {bad[0] * max(1, mini // bad[0])}) or null for one step per rollout")


def mini_batch_fits_rollout(s: FitSetup) -> str | None:
    mini = _grpo(s, "mini_batch_size")
    if mini is None or s.batch_size is None or s.batch_size < 1:
        return None
    smallest = min((g for g in s.group_sizes if g >= 1), default=None)
    if smallest is None or mini <= s.batch_size * smallest:
        return None
    rollout = s.batch_size * smallest
    return (f"model.grpo.mini_batch_size={mini} exceeds the rollout, data.batch_size x G = {s.batch_size} x {smallest} = "
            f"{rollout} completions per process, so it would silently mean one step per rollout; set it to at most "
            f"{rollout}, or null for one step per rollout")


def _positive(name: str, value: Any, what: str) -> str | None:
    if value is None or value > 0:
        return None
    return f"model.grpo.{name}={value} must be > 0: {what}"


def beta_not_negative(s: FitSetup) -> str | None:
    beta = _grpo(s, "beta")
    if beta is None or beta >= 0:
        return None
    return (f"model.grpo.beta={beta} is negative, which would reward drifting away from the reference; "
            "set it >= 0 (0: no KL term and no reference model; the recipes use 0.04)")


def epsilon_positive(s: FitSetup) -> str | None:
    return _positive("epsilon", _grpo(s, "epsilon"), "it is the clip range of the probability ratio (typically 0.2)")


def epsilon_high_valid(s: FitSetup) -> str | None:
    low, high = _grpo(s, "epsilon"), _grpo(s, "epsilon_high")
    if high is None or low is None or high >= low:
        return None
    return (f"model.grpo.epsilon_high={high} is below model.grpo.epsilon={low}: it is the upper clip range of DAPO's "
            "clip-higher and should be >= epsilon (e.g. 0.28), or null to use epsilon")


def temperature_positive(s: FitSetup) -> str | None:
    return _positive("temperature", _grpo(s, "temperature"),
                     "completions are sampled at this temperature (1.0: the model's distribution)")


def top_p_in_range(s: FitSetup) -> str | None:
    top_p = _grpo(s, "top_p")
    if top_p is None or 0 < top_p <= 1:
        return None
    return f"model.grpo.top_p={top_p} must be in (0, 1]: the nucleus mass kept when sampling (1.0: off)"


def top_k_not_negative(s: FitSetup) -> str | None:
    top_k = _grpo(s, "top_k")
    if top_k is None or top_k >= 0:
        return None
    return f"model.grpo.top_k={top_k} must be >= 0: the most likely tokens kept when sampling (0: off)"


def gradient_clip_positive(s: FitSetup) -> str | None:
    return _positive("gradient_clip_val", _grpo(s, "gradient_clip_val"),
                     "the largest global gradient norm; set null for no clipping")


def batch_size_positive(s: FitSetup) -> str | None:
    if s.batch_size is None or s.batch_size >= 1:
        return None
    return f"data.batch_size={s.batch_size} must be >= 1: prompts per rollout on each process"


def num_workers_not_negative(s: FitSetup) -> str | None:
    if s.num_workers is None or s.num_workers >= 0:
        return None
    return f"data.num_workers={s.num_workers} must be >= 0 (0: load in the main process)"


def data_fills_a_batch(s: FitSetup) -> str | None:
    if s.train_rows is None or s.batch_size is None or s.batch_size < 1:
        return None
    need = s.batch_size * s.world_size
    if s.train_rows >= need:
        return None
    return (f"data.batch_size={s.batch_size}: the training set has {s.train_rows} row(s), fewer than data.batch_size x "
            f"{s.world_size} process(es) = {need}, so an epoch has no full batch and nothing would train; lower "
            "data.batch_size or add data")


MASTER_WEIGHTS_FIX = (
    "keep float32 master weights: set trainer.precision=bf16-mixed and model.dtype=float32 (bf16 compute under "
    "autocast, float32 weights and optimiser), or train LoRA adapters (model.lora, with model.dtype=bfloat16 and "
    "trainer.precision=bf16-mixed: peft keeps the adapters float32), or use a DeepSpeed strategy (its bf16 "
    "optimiser keeps float32 masters: --config configs/strategy/deepspeed_zero2.yaml)")


def _master_weights_message(what: str) -> str:
    return (f"{what}: a plain optimiser would step half-precision weights directly, and most small updates round "
            "away (10 AdamW steps at lr 1e-6 change about 2% of a bf16 weight's entries, all of a float32 one's), "
            f"so the run would silently not learn; {MASTER_WEIGHTS_FIX}")


def _deepspeed_keeps_masters(deepspeed: bool, precision: str | None) -> bool:
    """DeepSpeed keeps float32 master weights when it trains in bf16 / fp16 (Lightning turns its
    bf16 or fp16 mode on for those precisions); in its float32 mode it steps what it is given."""
    return deepspeed and str(precision).startswith(("bf16", "16"))


def half_precision_keeps_no_master(s: FitSetup) -> str | None:
    if _deepspeed_keeps_masters(s.deepspeed, s.precision) or s.precision not in ("bf16-true", "16-true"):
        return None
    return _master_weights_message(f"trainer.precision={s.precision} casts every weight, trained ones included, to "
                                   "half precision")


def half_dtype_keeps_no_master(s: FitSetup) -> str | None:
    if _deepspeed_keeps_masters(s.deepspeed, s.precision) or s.lora or s.dtype not in ("bfloat16", "float16") \
            or s.precision in ("bf16-true", "16-true"):
        return None
    return _master_weights_message(f"model.dtype={s.dtype} stores the trained weights in half precision")


def check_master_weights(params: list, module: Any) -> None:
    """Refuse trainable bf16/fp16 parameters (as they are after the precision plugin and
    ``model.dtype``, ``auto`` included) unless DeepSpeed keeps float32 masters for them.
    Called where the optimiser is built, so SFT and GRPO both get it."""
    half = half_trainable(params)
    trainer = getattr(module, "_trainer", None)
    if not half or (trainer is not None and _deepspeed_keeps_masters(parallel.is_deepspeed(trainer.strategy),
                                                                      trainer.precision)):
        return
    what = ", ".join(f"{n} trainable parameter(s) in {str(d).replace('torch.', '')}" for d, n in half.items())
    raise ConfigError(_master_weights_message(f"{what} (model.dtype={getattr(module, 'dtype_name', '?')}, "
                                              f"trainer.precision={getattr(trainer, 'precision', '?')})"))


# -- the registry -----------------------------------------------------------------------------------
RULES: list[Rule] = [
    # checked here, at fit start
    Rule("group_at_least_two", "model.grpo.num_generations", HERE, group_at_least_two),
    Rule("mini_batch_multiple_of_group", "model.grpo.mini_batch_size", HERE, mini_batch_multiple_of_group),
    Rule("mini_batch_fits_rollout", "model.grpo.mini_batch_size", HERE, mini_batch_fits_rollout),
    Rule("beta_not_negative", "model.grpo.beta", HERE, beta_not_negative),
    Rule("epsilon_positive", "model.grpo.epsilon", HERE, epsilon_positive),
    Rule("epsilon_high_at_least_epsilon", "model.grpo.epsilon_high", HERE, epsilon_high_valid),
    # (lit_vr1/loss.py sampling_logits refuses temperature <= 0 too, but only at the first loss)
    Rule("temperature_positive", "model.grpo.temperature", HERE, temperature_positive),
    Rule("top_p_in_range", "model.grpo.top_p", HERE, top_p_in_range),
    Rule("top_k_not_negative", "model.grpo.top_k", HERE, top_k_not_negative),
    Rule("gradient_clip_positive", "model.grpo.gradient_clip_val", HERE, gradient_clip_positive),
    Rule("batch_size_positive", "data.batch_size", HERE, batch_size_positive),
    Rule("num_workers_not_negative", "data.num_workers", HERE, num_workers_not_negative),
    Rule("data_fills_a_batch", "data.batch_size", HERE, data_fills_a_batch),
    Rule("half_precision_keeps_no_master", "trainer.precision", HERE, half_precision_keeps_no_master),
    Rule("half_dtype_keeps_no_master", "model.dtype", HERE, half_dtype_keeps_no_master),
    Rule("trained_weights_float32", "model.dtype", "lit_vr1/checks.py check_master_weights (when the optimiser is built)"),
    # enforced where the value is read (listed, not repeated)
    Rule("loss_type_known", "model.grpo.loss_type", "lit_vr1/loop.py GRPOConfig.__post_init__"),
    Rule("scale_rewards_known", "model.grpo.scale_rewards", "lit_vr1/loop.py GRPOConfig.__post_init__"),
    Rule("num_generations_at_least_one", "model.grpo.num_generations", "lit_vr1/loop.py GRPOConfig.__post_init__"),
    Rule("max_completion_length_at_least_one", "model.grpo.max_completion_length",
         "lit_vr1/loop.py GRPOConfig.__post_init__"),
    Rule("num_iterations_at_least_one", "model.grpo.num_iterations", "lit_vr1/loop.py GRPOConfig.__post_init__"),
    Rule("mini_batch_size_at_least_one", "model.grpo.mini_batch_size", "lit_vr1/loop.py GRPOConfig.__post_init__"),
    Rule("micro_batch_size_at_least_one", "model.grpo.micro_batch_size", "lit_vr1/loop.py GRPOConfig.__post_init__"),
    Rule("no_fsdp1", "trainer.strategy", "lit_vr1/parallel.py check_strategy"),
    Rule("no_tensor_parallel", "trainer.strategy.init_args.tensor_parallel_size",
         "lit_vr1/parallel.py check_strategy, data_parallel_mesh"),
    Rule("no_export_with_sharded_weights", "model.export_dir", "lit_vr1/parallel.py check_strategy"),
    Rule("deepspeed_no_gradient_clip_val", "model.grpo.gradient_clip_val", "lit_vr1/parallel.py check_strategy"),
    Rule("deepspeed_unmanaged_accumulation", "model.grpo.micro_batch_size", "lit_vr1/parallel.py check_strategy"),
    Rule("deepspeed_release_knows_unmanaged_accumulation", "model.grpo.micro_batch_size",
         "lit_vr1/parallel.py check_strategy"),
    Rule("lora_default_targets_match", "model.lora.target_modules", "lit_vr1/models/lora.py resolve_targets"),
    Rule("lora_targets_not_empty", "model.lora.target_modules", "lit_vr1/models/lora.py resolve_targets"),
    Rule("lora_targets_match", "model.lora.target_modules", "lit_vr1/models/lora.py resolve_targets"),
    Rule("attn_implementation_known", "model.attn_implementation", "lit_vr1/module.py check_attention"),
    Rule("flash_attention_installed", "model.attn_implementation", "lit_vr1/module.py check_attention"),
    Rule("flash_attention_needs_cuda", "model.attn_implementation", "lit_vr1/module.py check_attention"),
    Rule("box_frame_known", "model.box_frame", "lit_vr1/module.py VLMModule.__init__"),
    Rule("eval_task_known", "model.eval_task", "lit_vr1/module.py VLMModule.__init__"),
    Rule("detection_prompting_known", "model.detection_prompting", "lit_vr1/module.py VLMModule.__init__"),
    Rule("rewards_not_empty", "model.rewards", "lit_vr1/rewards/base.py score_all (first step)"),
    Rule("reward_names_distinct", "model.rewards", "lit_vr1/rewards/base.py score_all (first step)"),
    Rule("reward_on_error_known", "model.rewards.init_args.on_error", "lit_vr1/rewards/base.py Reward.__init__"),
    Rule("train_data_given", "data.train_files", "lit_vr1/data/datamodule.py GroundingDataModule.__init__"),
    Rule("train_images_given", "data.train_images", "lit_vr1/data/datamodule.py GroundingDataModule.__init__"),
    Rule("one_image_folder_per_file", "data.train_images", "lit_vr1/data/jsonl.py pair_files"),
    Rule("one_reward_method_per_file", "data.reward_methods", "lit_vr1/data/jsonl.py file_tasks"),
    Rule("data_files_exist", "data.train_files", "lit_vr1/data/jsonl.py read_records"),
    Rule("template_known", "data.template", "lit_vr1/data/prompts.py check_template"),
    Rule("bad_rows_known", "data.bad_rows", "lit_vr1/data/jsonl.py check_bad_rows"),
    Rule("max_prompt_length_positive", "data.max_prompt_length", "lit_vr1/data/datamodule.py GroundingDataModule"),
    Rule("synthetic_task_known", "data.synthetic.task", "lit_vr1/data/synthetic.py SyntheticSpec"),
    Rule("ptst_stages_valid", "trainer.callbacks (callbacks.PTST stages)", "callbacks/ptst.py PTST.__init__"),
    Rule("no_trainer_gradient_clip", "trainer.gradient_clip_val",
         "Lightning (manual optimisation: clipping is model.grpo.gradient_clip_val)"),
    Rule("no_trainer_accumulation", "trainer.accumulate_grad_batches",
         "Lightning (manual optimisation: accumulation is model.grpo.micro_batch_size)"),
]


def problems(setup: FitSetup, rules: list[Rule] | None = None) -> list[str]:
    """The problem text of every rule of this module that ``setup`` breaks, in registry order."""
    return [msg for rule in rules or RULES if rule.check is not None for msg in [rule.check(setup)] if msg]


def check(setup: FitSetup) -> None:
    """Raise :class:`ConfigError` listing every problem of ``setup`` (nothing when none)."""
    found = problems(setup)
    if found:
        lines = "\n".join(f"  - {p}" for p in found)
        raise ConfigError(f"{len(found)} problem(s) in the configuration; fix them and start again:\n{lines}")


def _group_sizes(grpo: Any, callbacks: list[Any]) -> list[int]:
    """G of the config and of every stage of a stage-scheduling callback (PTST)."""
    sizes = [grpo.num_generations] if grpo is not None else []
    for cb in callbacks:
        for stage in getattr(cb, "stages", None) or []:
            g = getattr(stage, "num_generations", None)
            if isinstance(g, int):
                sizes.append(g)
    return sizes


def fit_setup(module: Any) -> FitSetup:
    """A :class:`FitSetup` from a LightningModule attached to a Trainer (its data module
    read when there is one: with a bare DataLoader the data rules are skipped)."""
    try:
        trainer = module.trainer
    except RuntimeError:  # a LightningModule not attached to a Trainer
        trainer = None
    grpo = getattr(module, "config", None)
    callbacks = list(getattr(trainer, "callbacks", None) or [])
    dm = getattr(trainer, "datamodule", None) if trainer is not None else None
    train_set = getattr(dm, "train_set", None)
    return FitSetup(
        grpo=grpo,
        group_sizes=_group_sizes(grpo, callbacks),
        batch_size=getattr(dm, "batch_size", None),
        train_rows=len(train_set) if train_set is not None else None,
        num_workers=getattr(dm, "num_workers", None),
        world_size=getattr(trainer, "world_size", 1) if trainer is not None else 1,
        precision=str(trainer.precision) if getattr(trainer, "precision", None) is not None else None,
        dtype=getattr(module, "dtype_name", None),
        lora=getattr(module, "lora", None) is not None,
        deepspeed=parallel.is_deepspeed(getattr(trainer, "strategy", None)),
    )


def check_fit(module: Any) -> None:
    """Run the rules of this module for ``module``'s fit; raise :class:`ConfigError` with
    every problem. Called from ``GRPOModule.setup("fit")``: after the data module is set
    up, before ``configure_model`` builds (or downloads) a model."""
    check(fit_setup(module))
