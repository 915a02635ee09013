"""Every fit-time and strategy rule, and their one entry point, :func:`check_fit`.

At fit start (``GRPOModule.setup``, before a model is built or a forward runs) :func:`check_fit`
reads a :class:`FitSetup` from the module, its Trainer, strategy and data module, runs every
rule declared ``when="fit"`` (see :mod:`lit_vr1.rules`) and raises one
:class:`~lit_vr1.rules.ConfigError` that lists every problem, each with the flag to change
and what to change it to. The rules of a single setting (``GRPOConfig``'s fields, the
module's arguments) run where the setting is built; :func:`lit_vr1.rules.all_rules` lists
them all, generated from the code.

Not a rule, on purpose: ``micro_batch_size`` need not divide ``mini_batch_size``. The
loop normalises each micro-batch's loss by the whole mini-batch (``num_sequences``,
``num_tokens`` in ``RolloutUpdateLoop.update``), so a smaller last micro-batch is
weighted exactly; likewise a rollout that ``mini_batch_size`` does not divide ends with a
smaller mini-batch, which is normalised by its own size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lit_vr1 import parallel
from lit_vr1.loop import rollout_steps
from lit_vr1.models.precision import half_trainable
from lit_vr1.rules import ConfigError, enforce, problems_of, refuse, rule  # noqa: F401 - ConfigError: checks.ConfigError


@dataclass
class FitSetup:
    """What the rules look at, read from a module and its Trainer (see :func:`fit_setup`).

    grpo: the module's :class:`~lit_vr1.config.GRPOConfig` (None: not a GRPO module).
    group_sizes: every G the fit will use: each PTST stage's, else ``grpo.num_generations``.
    batch_size: prompts per rollout on each process (``data.batch_size``; None: unknown).
    train_rows: rows of the training set (None: unknown). num_workers: ``data.num_workers``.
    world_size: processes.
    precision: ``trainer.precision`` as Lightning normalised it (``bf16-mixed``, ``32-true``, ...).
    dtype: ``model.dtype``. lora: LoRA adapters are trained. deepspeed: a DeepSpeed strategy.
    strategy: the Trainer's strategy object (None: unknown). deepspeed_config: its DeepSpeed
    config ({} otherwise). tensor_parallel: ModelParallelStrategy's tensor-parallel size (1
    otherwise). export_dir: ``model.export_dir``. trainer_clip, trainer_accumulation,
    trainer_clip_algorithm: the Trainer's ``gradient_clip_val``, ``accumulate_grad_batches`` and
    ``gradient_clip_algorithm`` (GRPO has its own). callback_classes: the class names of each of
    the Trainer's callbacks and their bases.
    box_frame: the frame the policy writes boxes in (``model.box_frame``, by default its family's).
    reward_frames: (position in ``model.rewards``, class name, frame) of each reward that names
    a ``box_frame`` of its own.
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
    strategy: Any = None
    deepspeed_config: dict = field(default_factory=dict)
    tensor_parallel: int = 1
    export_dir: str | None = None
    trainer_clip: float | None = None
    trainer_accumulation: int = 1
    trainer_clip_algorithm: str | None = None
    callback_classes: list[set[str]] = field(default_factory=list)
    box_frame: str | None = None
    reward_frames: list[tuple[int, str, str]] = field(default_factory=list)


def _grpo(setup: FitSetup, name: str) -> Any:
    return getattr(setup.grpo, name) if setup.grpo is not None else None


# -- GRPO against the batch -------------------------------------------------------------------------
@rule("model.grpo.num_generations", "fit", on="FitSetup")
def group_at_least_two(s: FitSetup) -> str | None:
    bad = sorted({g for g in s.group_sizes if g < 2})
    if not bad:
        return None
    return (f"model.grpo.num_generations={bad[0]} (or a PTST stage's num_generations): GRPO compares the G completions "
            "of a prompt with each other, so with G < 2 every advantage is 0 and nothing is learned; set it to 2 or more "
            "(the recipes use 8)")


@rule("model.grpo.mini_batch_size", "fit", on="FitSetup")
def mini_batch_multiple_of_group(s: FitSetup) -> str | None:
    mini = _grpo(s, "mini_batch_size")
    bad = sorted({g for g in s.group_sizes if mini is not None and g >= 1 and mini % g})
    if not bad:
        return None
    return (f"model.grpo.mini_batch_size={mini} is not a multiple of model.grpo.num_generations={bad[0]} (G, also per "
            "PTST stage): a mini-batch counts completions, and each optimiser step should see whole groups; set it to a "
            f"multiple of G (e.g. {bad[0] * max(1, mini // bad[0])}) or null for one step per rollout")


@rule("model.grpo.mini_batch_size", "fit", on="FitSetup")
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


# -- data ----------------------------------------------------------------------------------------------
@rule("data.batch_size", "fit", on="FitSetup")
def batch_size_positive(s: FitSetup) -> str | None:
    if s.batch_size is None or s.batch_size >= 1:
        return None
    return f"data.batch_size={s.batch_size} must be >= 1: prompts per rollout on each process"


@rule("data.num_workers", "fit", on="FitSetup")
def num_workers_not_negative(s: FitSetup) -> str | None:
    if s.num_workers is None or s.num_workers >= 0:
        return None
    return f"data.num_workers={s.num_workers} must be >= 0 (0: load in the main process)"


@rule("data.batch_size", "fit", on="FitSetup")
def data_fills_a_batch(s: FitSetup) -> str | None:
    if s.train_rows is None or s.batch_size is None or s.batch_size < 1:
        return None
    need = s.batch_size * s.world_size
    if s.train_rows >= need:
        return None
    return (f"data.batch_size={s.batch_size}: the training set has {s.train_rows} row(s), fewer than data.batch_size x "
            f"{s.world_size} process(es) = {need}, so an epoch has no full batch and nothing would train; lower "
            "data.batch_size or add data")


# -- precision -----------------------------------------------------------------------------------------
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


@rule("trainer.precision", "fit", on="FitSetup")
def half_precision_keeps_no_master(s: FitSetup) -> str | None:
    if _deepspeed_keeps_masters(s.deepspeed, s.precision) or s.precision not in ("bf16-true", "16-true"):
        return None
    return _master_weights_message(f"trainer.precision={s.precision} casts every weight, trained ones included, to "
                                   "half precision")


@rule("model.dtype", "fit", on="FitSetup")
def half_dtype_keeps_no_master(s: FitSetup) -> str | None:
    if _deepspeed_keeps_masters(s.deepspeed, s.precision) or s.lora or s.dtype not in ("bfloat16", "float16") \
            or s.precision in ("bf16-true", "16-true"):
        return None
    return _master_weights_message(f"model.dtype={s.dtype} stores the trained weights in half precision")


@rule("model.dtype", "optimizer")
def trained_weights_float32(params: list, module: Any) -> str | None:
    """Trainable bf16/fp16 parameters (as they are after the precision plugin and
    ``model.dtype``, ``auto`` included) are refused unless DeepSpeed keeps float32 masters."""
    half = half_trainable(params)
    trainer = getattr(module, "_trainer", None)
    if not half or (trainer is not None and _deepspeed_keeps_masters(parallel.is_deepspeed(trainer.strategy),
                                                                      trainer.precision)):
        return None
    what = ", ".join(f"{n} trainable parameter(s) in {str(d).replace('torch.', '')}" for d, n in half.items())
    return _master_weights_message(f"{what} (model.dtype={getattr(module, 'dtype_name', '?')}, "
                                   f"trainer.precision={getattr(trainer, 'precision', '?')})")


@rule("model.freeze_vision", "optimizer")
def something_trains(params: list, module: Any) -> str | None:
    """No trainable parameter left (the tower frozen and LoRA only on it, say): torch's
    optimisers refuse an empty list with a traceback that names no setting (a new user's trial)."""
    if params:
        return None
    lora = getattr(module, "lora", None)
    targets = getattr(lora, "target_modules", None)
    settings = [f"model.freeze_vision={getattr(module, 'freeze_vision', None)}",
                f"model.freeze_merger={getattr(module, 'freeze_merger', None)}"]
    if lora is not None:
        settings.append(f"model.lora.target_modules={targets}")
    return (f"nothing would train: every parameter of the policy is frozen ({', '.join(settings)}); unfreeze a part, or "
            "give LoRA target modules outside the frozen parts (the language model's q_proj, v_proj, ...)")


def check_master_weights(params: list, module: Any) -> None:
    """Run :func:`something_trains` and :func:`trained_weights_float32` where the optimiser is
    built (SFT and GRPO both)."""
    enforce(something_trains(params, module))
    enforce(trained_weights_float32(params, module))


def zero_learning_rate_note(optimizer: Any) -> str | None:
    """A note when every parameter group's learning rate is 0 before any scheduler: nothing
    would move, while the fit logs rewards and losses as if it trained (``train/kl`` 0 and
    ``train/ratio_mean`` 1 every step). A warm-up scheduler that starts at 0 is fine: it scales
    the rate given here, which must not be 0 itself."""
    if not optimizer.param_groups or any(float(g.get("lr", 0.0)) != 0.0 for g in optimizer.param_groups):
        return None
    return ("the optimiser's learning rate is 0 (model.optimizer's lr): no weight will move, and the fit's rewards will "
            "only wander; give it a learning rate (a warm-up scheduler scales it from 0 by itself)")


def cosine_period_note(scheduler: Any, max_steps: int) -> str | None:
    """A note when a ``CosineAnnealingLR`` reaches its low point before ``trainer.max_steps``:
    torch's cosine is periodic (its rate climbs back after ``T_max`` steps, to the full rate at
    ``2 x T_max``), so a run extended past ``T_max`` trained on at rising rates without a word
    (a new user's trial: the rate went 0 at step 10, then 7e-6, ... 1e-4 at step 14)."""
    from torch.optim.lr_scheduler import CosineAnnealingLR

    if not isinstance(scheduler, CosineAnnealingLR) or max_steps is None or max_steps <= scheduler.T_max:
        return None
    return (f"model.lr_scheduler is a CosineAnnealingLR with T_max={scheduler.T_max} below trainer.max_steps="
            f"{max_steps}: its rate reaches eta_min at step {scheduler.T_max} and climbs again after it (torch's cosine "
            "is periodic). Set T_max to the run's max_steps (a resume refuses a changed T_max: to go on past it, "
            "export the model and start a new fit from it)")


# -- the Trainer under manual optimisation (Lightning refuses both too, with its own words) -------------
@rule("trainer.gradient_clip_val", "fit", on="FitSetup")
def no_trainer_gradient_clip(s: FitSetup) -> str | None:
    if s.grpo is None or not s.trainer_clip:  # None or 0: no clipping asked (Lightning refuses only > 0)
        return None
    return (f"trainer.gradient_clip_val={s.trainer_clip}: GRPO steps its optimiser itself (manual optimisation), "
            f"so the Trainer cannot clip; set model.grpo.gradient_clip_val={s.trainer_clip} and leave "
            "trainer.gradient_clip_val unset")


@rule("trainer.accumulate_grad_batches", "fit", on="FitSetup")
def no_trainer_accumulation(s: FitSetup) -> str | None:
    if s.grpo is None or s.trainer_accumulation == 1:
        return None
    return (f"trainer.accumulate_grad_batches={s.trainer_accumulation}: GRPO accumulates micro-batches itself "
            "(manual optimisation); set model.grpo.micro_batch_size (completions per forward) and "
            "model.grpo.mini_batch_size (completions per optimiser step) instead, and leave "
            "trainer.accumulate_grad_batches at 1")


@rule("trainer.gradient_clip_algorithm", "fit", on="FitSetup")
def no_trainer_clip_algorithm(s: FitSetup) -> str | None:
    algorithm = str(getattr(s.trainer_clip_algorithm, "value", s.trainer_clip_algorithm))
    if s.grpo is None or s.trainer_clip_algorithm is None or algorithm == "norm":
        return None
    return (f"trainer.gradient_clip_algorithm={algorithm}: GRPO clips its gradients itself, by their global norm "
            "(model.grpo.gradient_clip_val); leave trainer.gradient_clip_algorithm unset (Lightning stopped the first "
            "optimiser step over the two settings)")


def _has_callback(s: FitSetup, *names: str) -> str | None:
    return next((n for classes in s.callback_classes for n in names if n in classes), None)


@rule("trainer.callbacks", "fit", on="FitSetup")
def no_accumulation_scheduler(s: FitSetup) -> str | None:
    if s.grpo is None or not _has_callback(s, "GradientAccumulationScheduler"):
        return None
    return ("trainer.callbacks: GradientAccumulationScheduler schedules Lightning's gradient accumulation, which GRPO "
            "does not use (manual optimisation); set model.grpo.micro_batch_size (completions per forward) and "
            "model.grpo.mini_batch_size (completions per optimiser step) instead, and remove the callback")


@rule("trainer.callbacks", "fit", on="FitSetup")
def no_weight_averaging(s: FitSetup) -> str | None:
    name = _has_callback(s, "StochasticWeightAveraging", "WeightAveraging")
    if name is None:
        return None
    return (f"trainer.callbacks: {name} copies the module in its setup, before lit-vr1 builds the model (in the "
            "module's own setup), so it would average no weights and leave the trained ones as they are (it also "
            "swaps in its own learning-rate schedule); remove it: lit-vr1 does not support weight averaging")


# -- the strategy ----------------------------------------------------------------------------------------
def _lightning_strategy(name: str) -> type:
    from lightning.pytorch import strategies

    return getattr(strategies, name)


@rule("trainer.strategy", "fit", on="FitSetup")
def no_fsdp1(s: FitSetup) -> str | None:
    if s.strategy is None or not isinstance(s.strategy, _lightning_strategy("FSDPStrategy")):
        return None
    return (f"trainer.strategy={type(s.strategy).__name__} (FSDP1) cannot do manual optimisation, which GRPO uses (one "
            "rollout, several optimiser steps). Use ModelParallelStrategy (FSDP2: --config configs/strategy/fsdp2.yaml) "
            "or DeepSpeed (--config configs/strategy/deepspeed_zero3.yaml).")


@rule("trainer.strategy.init_args.tensor_parallel_size", "fit", on="FitSetup")
def no_tensor_parallel(s: FitSetup) -> str | None:
    return parallel.tensor_parallel_message(s.tensor_parallel) if s.tensor_parallel > 1 else None


def _zero3(s: FitSetup) -> bool:
    return s.deepspeed and (s.deepspeed_config.get("zero_optimization") or {}).get("stage") == 3


@rule("model.export_dir", "fit", on="FitSetup")
def no_export_with_sharded_weights(s: FitSetup) -> str | None:
    fsdp2 = s.strategy is not None and isinstance(s.strategy, _lightning_strategy("ModelParallelStrategy"))
    if not s.export_dir or not (fsdp2 or _zero3(s)):
        return None
    return (f"model.export_dir={s.export_dir!r} is not supported yet with sharded weights ({type(s.strategy).__name__}"
            f"{' ZeRO-3' if _zero3(s) else ''}): the export runs on rank 0 alone and cannot gather the other ranks' "
            "shards. Set model.export_dir=null and keep Lightning's checkpoint, or train with DDP / ZeRO-2.")


@rule("model.grpo.gradient_clip_val", "fit", on="FitSetup")
def deepspeed_no_gradient_clip_val(s: FitSetup) -> str | None:
    clip = _grpo(s, "gradient_clip_val")
    if not s.deepspeed or clip is None:
        return None
    return (f"model.grpo.gradient_clip_val={clip} cannot work under DeepSpeed, which owns the gradients (partitioned "
            "under ZeRO) and clips them itself: put gradient clipping in the DeepSpeed config "
            f"(trainer.strategy.init_args.config.gradient_clipping: {clip}) and set model.grpo.gradient_clip_val=null "
            "(configs/strategy/deepspeed_*.yaml do both).")


# The loop accumulates micro-batches itself: several backward passes, then one step. DeepSpeed
# by default steps (and reduces) at every backward unless told otherwise.
@rule("model.grpo.micro_batch_size", "fit", on="FitSetup")
def deepspeed_unmanaged_accumulation(s: FitSetup) -> str | None:
    micro = _grpo(s, "micro_batch_size")
    if not s.deepspeed or micro is None or not s.deepspeed_config.get("managed_gradient_accumulation", True):
        return None
    return (f"model.grpo.micro_batch_size={micro} takes several backward passes per optimiser step, which DeepSpeed "
            "only supports with \"managed_gradient_accumulation\": false in its config "
            "(trainer.strategy.init_args.config.managed_gradient_accumulation: false, as in "
            "configs/strategy/deepspeed_*.yaml); or set model.grpo.micro_batch_size=null.")


@rule("model.grpo.micro_batch_size", "fit", on="FitSetup")
def deepspeed_release_knows_unmanaged_accumulation(s: FitSetup) -> str | None:
    micro = _grpo(s, "micro_batch_size")
    if not s.deepspeed or micro is None or s.deepspeed_config.get("managed_gradient_accumulation", True) \
            or parallel.deepspeed_knows_unmanaged_accumulation():
        return None
    return ("the DeepSpeed config sets managed_gradient_accumulation: false, which this deepspeed release does not "
            "know (micro-batches would be stepped one by one): upgrade with pip install -U deepspeed, or set "
            f"model.grpo.micro_batch_size={micro} to null.")


# -- the entry point -------------------------------------------------------------------------------------
@rule("model.rewards", "fit", on="FitSetup")
def rewards_read_the_policy_frame(s: FitSetup) -> str | None:
    # a reward pinned to another frame scores every right box as wrong (a Qwen2-VL model writes
    # 0-1000 units; read as Qwen2.5-VL input pixels its boxes miss), while SFT, ColdStart and
    # validation use the policy's frame
    off = [(i, name, frame) for i, name, frame in s.reward_frames if s.box_frame is not None and frame != s.box_frame]
    if not off:
        return None
    listed = ", ".join(f"model.rewards[{i}] ({name}) box_frame={frame}" for i, name, frame in off)
    return (f"{listed}: the policy writes boxes in {s.box_frame} (model.box_frame, by default its model family's), "
            "which validation and the cold start use too; remove the reward's box_frame (a box reward reads the "
            "policy's frame by default), or set model.box_frame if the model writes another frame")


def steps_per_rollout(s: FitSetup) -> list[int]:
    """The optimiser steps a rollout takes, for each G of the fit (unknown batch size: none)."""
    if s.grpo is None or s.batch_size is None or s.batch_size < 1:
        return []
    return sorted({rollout_steps(s.batch_size * g, s.grpo.mini_batch_size, s.grpo.num_iterations)[1]
                   for g in s.group_sizes if g >= 1})


def uneven_mini_batches_note(s: FitSetup) -> str | None:
    """A note when ``mini_batch_size`` does not divide a rollout's completions: each pass over the
    rollout ends with a smaller mini-batch, whose optimiser step is as large as the others' on fewer
    completions (TRL refuses such sizes; here they are allowed, so that one size can serve PTST
    stages of several G)."""
    mini = _grpo(s, "mini_batch_size")
    if not mini or s.batch_size is None or s.batch_size < 1:
        return None
    uneven = sorted({s.batch_size * g for g in s.group_sizes if s.batch_size * g > mini and (s.batch_size * g) % mini})
    if not uneven:
        return None
    n = uneven[0]
    return (f"model.grpo.mini_batch_size={mini} does not divide a rollout's {n} completions (data.batch_size x G = "
            f"{s.batch_size} x {n // s.batch_size}): each pass over it takes steps of {mini} and one of {n % mini}, as "
            f"large a step on fewer completions; a divisor of {n} makes every step alike")


def problems(setup: FitSetup) -> list[str]:
    """The problem text of every fit rule that ``setup`` breaks, in declaration order."""
    return problems_of(setup, "fit")


def check(setup: FitSetup) -> None:
    """Raise :class:`ConfigError` listing every problem of ``setup`` (nothing when none)."""
    refuse(problems(setup))


def _group_sizes(grpo: Any, callbacks: list[Any]) -> list[int]:
    """Every G the fit's rollouts use: those of the stages of a stage-scheduling callback (PTST:
    its stages cover every step, the first from step 0, the last to the fit's end, so the
    config's own G never runs; a valid ``mini_batch_size`` of 12 for stages of G 4 and 6 was
    refused against the recipe's unused G of 10), else the config's."""
    staged = [g for cb in callbacks for stage in getattr(cb, "stages", None) or []
              if isinstance(g := getattr(stage, "num_generations", None), int)]
    if staged:
        return staged
    return [grpo.num_generations] if grpo is not None else []


def fit_setup(module: Any) -> FitSetup:
    """A :class:`FitSetup` from a LightningModule attached to a Trainer (its data module
    read when there is one: with a bare DataLoader the data rules are skipped)."""
    try:
        trainer = module.trainer
    except RuntimeError:  # a LightningModule not attached to a Trainer
        trainer = None
    grpo = getattr(module, "config", None)
    callbacks = list(getattr(trainer, "callbacks", None) or [])
    strategy = getattr(trainer, "strategy", None) if trainer is not None else None
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
        deepspeed=parallel.is_deepspeed(strategy),
        strategy=strategy,
        deepspeed_config=dict((getattr(strategy, "config", None) or {}) if parallel.is_deepspeed(strategy) else {}),
        tensor_parallel=parallel.tensor_parallel_size(strategy, getattr(module, "device_mesh", None)),
        export_dir=getattr(module, "export_dir", None),
        **_trainer_settings(grpo, trainer),
        box_frame=getattr(module, "box_frame", None),
        reward_frames=[(i, type(r).__name__, r.box_frame) for i, r in enumerate(getattr(module, "rewards", None) or [])
                       if getattr(r, "box_frame", None) is not None],
    )


def check_fit(module: Any) -> FitSetup:
    """Run every fit-time and strategy rule for ``module``'s fit; raise :class:`ConfigError`
    with every problem, else return the :class:`FitSetup` checked. Called from
    ``GRPOModule.setup("fit")``: after the data module is set up, before ``configure_model``
    builds (or downloads) a model."""
    setup = fit_setup(module)
    check(setup)
    return setup


SFT_RULES = (no_tensor_parallel, no_export_with_sharded_weights)  # the strategy rules an SFT fit meets too


def check_sft_fit(module: Any) -> None:
    """The strategy rules of :data:`SFT_RULES` for an SFT fit (``SFTModule.setup("fit")``): the
    GRPO rules read ``model.grpo`` and manual optimisation, which SFT has not."""
    setup = fit_setup(module)
    refuse([p for rule_fn in SFT_RULES if (p := rule_fn(setup))])


TRAINER_RULES = (no_trainer_gradient_clip, no_trainer_accumulation, no_trainer_clip_algorithm, no_accumulation_scheduler,
                 no_weight_averaging)


def check_trainer(module: Any, trainer: Any) -> None:
    """The rules about the Trainer (:data:`TRAINER_RULES`: settings manual optimisation cannot take,
    callbacks lit-vr1 cannot work with), for ``module`` before ``trainer.fit`` is called: Lightning
    checks the clip value and accumulation at the start of a fit, before any setup hook runs, and
    stops with its own exception (a traceback under the CLI, and no word of GRPO's settings); it
    stopped the others later (the first optimiser step, after ``ColdStart``), or never (weight
    averaging). The CLI calls this first (``LitVR1CLI.before_fit``); the module's ``setup`` again,
    for a fit from Python."""
    grpo = getattr(module, "config", None) if not getattr(module, "automatic_optimization", True) else None
    setup = FitSetup(grpo=grpo, **_trainer_settings(grpo, trainer))
    refuse([p for rule_fn in TRAINER_RULES if (p := rule_fn(setup))])


FITTED = "_lit_vr1_fitted"  # set on a Trainer at each fit's start: a weak reference to the module it fits


def reused_for_this_fit(module: Any, trainer: Any) -> str | None:
    """Why a fit from Python cannot go on with what an earlier fit used, read at its start (after
    a resume's restore, which sets both anew): a Trainer that already fitted another module
    goes on from its step count (it stopped at once, ``max_steps`` reached, and the new module
    trained no step, without a word from lit-vr1), and a ``ModelCheckpoint`` that saved in
    another Trainer's fit keeps that fit's folder and last step (it saved nothing for the new
    fit, and its ``last.ckpt`` held the old fit's weights; a sweep user's trial). None when
    neither; a Trainer's second fit of its own module (training on) is not refused."""
    import weakref

    from lit_vr1.checkpoint import selected_checkpoint

    before = getattr(trainer, FITTED, None)
    fitted = before() if before is not None else None
    setattr(trainer, FITTED, weakref.ref(module))
    if selected_checkpoint(trainer) or getattr(trainer, "ckpt_path", None):  # a resume: its restore sets both anew
        return None
    if before is not None and fitted is not module and trainer.global_step > 0:
        return (f"this Trainer already ran a fit of another module (global_step {trainer.global_step}, max_steps "
                f"{trainer.max_steps}): Lightning goes on from its step count, so this module would train "
                f"{max(trainer.max_steps - trainer.global_step, 0) if trainer.max_steps > 0 else 'the rest of the'} "
                "steps, or none; build a new Trainer for each fit")
    if before is None:
        for cb in getattr(trainer, "checkpoint_callbacks", None) or []:
            saved = getattr(cb, "last_model_path", "") or getattr(cb, "best_model_path", "")
            if saved:
                return (f"the ModelCheckpoint given to this fit saved {saved} in an earlier fit: Lightning keeps that "
                        "fit's folder and its last saved step, so it would save nothing for this one (or beside the "
                        "other fit's checkpoints); give each fit its own ModelCheckpoint")
    return None


def _trainer_settings(grpo: Any, trainer: Any) -> dict[str, Any]:
    """The FitSetup fields read from the Trainer: its clip and accumulation settings (GRPO's
    only: SFT's automatic optimisation takes them) and its callbacks' class names."""
    grpo_only = grpo is not None
    return {"trainer_clip": getattr(trainer, "gradient_clip_val", None) if grpo_only else None,
            "trainer_accumulation": getattr(trainer, "accumulate_grad_batches", 1) if grpo_only else 1,
            "trainer_clip_algorithm": getattr(trainer, "gradient_clip_algorithm", None) if grpo_only else None,
            "callback_classes": [{c.__name__ for c in type(cb).__mro__} for cb in getattr(trainer, "callbacks", None) or []]}
