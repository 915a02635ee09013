"""TRL GRPOConfig names and where their settings live in lit-vr1 (for the CLI's hints and
the README's table). Checked against TRL 1.16.0's ``trl/trainer/grpo_config.py``."""

from __future__ import annotations

# name -> (the flags that take it here, what to write instead; a name these list is left to the
# parser there)
TRL_NAMES: dict[str, tuple[tuple[str, ...], str]] = {
    "seed": (("seed_everything", "model.seed", "data.synthetic.seed"),
             "--seed_everything={value} (the run's seed: weights, data order, sampling; model.seed seeds a tiny "
             "model's random weights)"),
    "max_prompt_length": (("data.max_prompt_length",),
                          "--data.max_prompt_length=N (a longer prompt is refused or skipped, never truncated)"),
    "learning_rate": ((), "the optimiser's lr: --model.optimizer.init_args.lr={value} (YAML: model.init_args.optimizer: "
                          "{class_path: torch.optim.AdamW, init_args: {lr: {value}}}; TRL's default is 1e-6, "
                          "ours 1e-5)"),
    "max_grad_norm": ((), "--model.grpo.gradient_clip_val={value}"),
    "per_device_train_batch_size": ((), "--model.grpo.micro_batch_size (completions per forward/backward); prompts "
                                        "per rollout and process are --data.batch_size, each with G completions"),
    "gradient_accumulation_steps": ((), "--model.grpo.mini_batch_size (completions per optimiser step) with "
                                        "--model.grpo.micro_batch_size: mini / micro forward passes per step"),
    "steps_per_generation": ((), "--model.grpo.mini_batch_size: the rollout's data.batch_size x G completions are split "
                                 "into optimiser steps of mini_batch_size each"),
    "generation_batch_size": ((), "--data.batch_size (prompts per rollout and process) x --model.grpo.num_generations"),
    "reward_weights": ((), "each reward's own weight: model.init_args.rewards: [{class_path: ..., init_args: "
                           "{weight: 0.5}}]"),
    "num_train_epochs": ((), "--trainer.max_epochs"),
    "logging_steps": ((), "nothing: GRPO logs every optimiser step (trainer.log_every_n_steps paces SFT's rows only); "
                          "remove it"),
    "save_steps": ((), "ModelCheckpoint's every_n_train_steps in trainer.callbacks"),
    "bf16": ((), "--trainer.precision=bf16-mixed (weights stay float32: --model.dtype=float32)"),
    "max_steps": (("trainer.max_steps",), "--trainer.max_steps={value}"),
    "output_dir": ((), "--trainer.default_root_dir={value} (checkpoints and logs)"),
    "gradient_checkpointing": (("model.gradient_checkpointing",),
                               "--model.gradient_checkpointing={value} (off by default here; TRL's default is on)"),
    "use_vllm": ((), "no vLLM here: lit-vr1 samples with the policy itself, in the training processes (no "
                     "server to start); remove it"),
    "report_to": ((), "a logger: --trainer.logger=lightning.pytorch.loggers.WandbLogger (a CSV file is the default)"),
    "eval_steps": ((), "--trainer.val_check_interval={value}"),
    "save_total_limit": ((), "ModelCheckpoint's save_top_k in trainer.callbacks"),
    "lr_scheduler_type": ((), "a scheduler class: model.init_args.lr_scheduler: {class_path: "
                              "torch.optim.lr_scheduler.CosineAnnealingLR, init_args: {T_max: <steps>}}"),
    "warmup_ratio": ((), "a scheduler with a warm-up: model.init_args.lr_scheduler: {class_path: "
                         "torch.optim.lr_scheduler.LinearLR, init_args: {start_factor: 0.01, total_iters: <steps>}}"),
    "importance_sampling_level": ((), "not offered: the ratio is per token (GRPO, DAPO, Dr. GRPO); GSPO's "
                                      "sequence-level ratio is not; remove it"),
    "delta": ((), "not offered: the ratio is clipped to [1 - epsilon, 1 + epsilon_high] (--model.grpo.epsilon_high), "
                  "without TRL's two-sided delta bound; remove it"),
    "min_p": ((), "not offered: sampling takes --model.grpo.top_p and --model.grpo.top_k; remove it"),
    "repetition_penalty": ((), "not offered in sampling (the loss scores the sampled distribution); a reward "
                               "lit_vr1.rewards.RepetitionPenalty penalises repeats instead"),
    "top_entropy_quantile": ((), "not offered: every completion token is in the loss; remove it"),
    "vllm_importance_sampling_correction": ((), "no vLLM here (the policy samples itself: nothing to correct); "
                                                "remove it"),
    "cast_lm_head_to_fp32": (("model.float32_lm_head",), "--model.float32_lm_head={value} (on by default here: the LM "
                                                         "head computes in float32)"),
    "log_completions": ((), "the callbacks callbacks.RolloutTable (a table on the console every N steps) and "
                            "callbacks.RolloutLog (every rollout as JSONL) in trainer.callbacks"),
    "sync_ref_model": ((), "not offered: the reference stays the model the fit started from (TR-DPO's refresh is "
                           "not done); remove it"),
    "ref_model_mixup_alpha": ((), "not offered: the reference stays the model the fit started from; remove it"),
    "ref_model_sync_steps": ((), "not offered: the reference stays the model the fit started from; remove it"),
    "use_peft": ((), "LoRA is --model.lora (e.g. --model.lora.r=16; unset: full fine-tuning)"),
    "peft_config": ((), "LoRA is --model.lora: r, alpha, dropout, target_modules, bias"),
    "lora_r": ((), "--model.lora.r={value}"),
    "lora_alpha": ((), "--model.lora.alpha={value}"),
    "lora_dropout": ((), "--model.lora.dropout={value}"),
    "lora_target_modules": ((), "--model.lora.target_modules (a list of module names, or all-linear)"),
}
# TRL settings that take a boolean where lit-vr1 takes a choice: TRL's own mapping (GRPOConfig's
# __post_init__: scale_rewards True is "group", False "none"), keyed by the boolean's text
BOOLEAN_CHOICES: dict[str, dict[str, str]] = {"scale_rewards": {"true": "group", "false": "none"}}
# the same settings as a Python user writes them (GRPOConfig(learning_rate=...) is refused with this)
PYTHON_HINTS: dict[str, str] = {
    "seed": "lightning.seed_everything(N) before building the module (the run's seed; GRPOModule(seed=N) seeds a tiny "
            "model's random weights)",
    "max_prompt_length": "GroundingDataModule(max_prompt_length=N)",
    "learning_rate": "the optimiser's lr: GRPOModule(optimizer=lambda params: torch.optim.AdamW(params, lr=1e-6))",
    "max_grad_norm": "GRPOConfig(gradient_clip_val=1.0)",
    "per_device_train_batch_size": "GRPOConfig(micro_batch_size=N) (completions per forward/backward); prompts per "
                                   "rollout are GroundingDataModule(batch_size=N), each with G completions",
    "gradient_accumulation_steps": "GRPOConfig(mini_batch_size=N) (completions per optimiser step) with "
                                   "micro_batch_size: mini / micro forward passes per step",
    "steps_per_generation": "GRPOConfig(mini_batch_size=N): a rollout's completions are split into optimiser steps "
                            "of mini_batch_size each",
    "generation_batch_size": "GroundingDataModule(batch_size=N) (prompts per rollout) x GRPOConfig(num_generations)",
    "reward_weights": "each reward's own weight: IoUReward(weight=0.5)",
    "num_train_epochs": "Trainer(max_epochs=N)",
    "max_steps": "Trainer(max_steps=N)",
    "logging_steps": "nothing: GRPO logs every optimiser step (Trainer(log_every_n_steps=N) paces SFT's rows only)",
    "save_steps": "ModelCheckpoint(every_n_train_steps=N) in Trainer(callbacks=[...])",
    "bf16": "Trainer(precision=\"bf16-mixed\") (weights stay float32)",
    "output_dir": "Trainer(default_root_dir=...) (checkpoints and logs)",
    "gradient_checkpointing": "GRPOModule(gradient_checkpointing=True) (off by default here; TRL's default is on)",
    "use_vllm": "no vLLM here: lit-vr1 samples with the policy itself; remove it",
    "report_to": "a logger: Trainer(logger=WandbLogger(...)) (Lightning's loggers)",
    "eval_steps": "Trainer(val_check_interval=N)",
    "save_total_limit": "ModelCheckpoint(save_top_k=N)",
    "lr_scheduler_type": "GRPOModule(lr_scheduler=lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max))",
    "warmup_ratio": "a scheduler with a warm-up: GRPOModule(lr_scheduler=lambda opt: "
                    "torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.01, total_iters=N))",
    "importance_sampling_level": "not offered: the ratio is per token (GRPO, DAPO, Dr. GRPO), not GSPO's per sequence",
    "delta": "not offered: the ratio is clipped to [1 - epsilon, 1 + epsilon_high] (GRPOConfig(epsilon_high=...)), "
             "without TRL's two-sided delta bound",
    "min_p": "not offered: sampling takes GRPOConfig(top_p=..., top_k=...)",
    "repetition_penalty": "not offered in sampling; the reward lit_vr1.rewards.RepetitionPenalty penalises repeats",
    "top_entropy_quantile": "not offered: every completion token is in the loss",
    "vllm_importance_sampling_correction": "no vLLM here (the policy samples itself: nothing to correct)",
    "cast_lm_head_to_fp32": "GRPOModule(float32_lm_head=True) (the default here)",
    "log_completions": "callbacks.RolloutTable() and callbacks.RolloutLog() in Trainer(callbacks=[...])",
    "sync_ref_model": "not offered: the reference stays the model the fit started from",
    "ref_model_mixup_alpha": "not offered: the reference stays the model the fit started from",
    "ref_model_sync_steps": "not offered: the reference stays the model the fit started from",
    "use_peft": "GRPOModule(lora=LoraSpec(r=16)) (lit_vr1.models.lora; none: full fine-tuning)",
    "peft_config": "GRPOModule(lora=LoraSpec(r=..., alpha=..., dropout=..., target_modules=...))",
    "lora_r": "GRPOModule(lora=LoraSpec(r=N))",
    "lora_alpha": "GRPOModule(lora=LoraSpec(alpha=N))",
    "lora_dropout": "GRPOModule(lora=LoraSpec(dropout=p))",
    "lora_target_modules": "GRPOModule(lora=LoraSpec(target_modules=[...] or \"all-linear\"))",
}
# TRL GRPOConfig names that are lit-vr1 GRPOConfig fields too: answered with model.grpo wherever else they are put
GRPO_FIELDS = ("num_generations", "beta", "epsilon", "epsilon_high", "temperature", "top_p", "top_k",
               "max_completion_length", "num_iterations", "loss_type", "scale_rewards", "mask_truncated_completions")
# where a TRL name is answered: the command's top level, the Trainer's own options and lit-vr1's
# sections; an option of another class (a scheduler's max_steps, a callback's output_dir) is its own
OWN_SECTIONS = frozenset({"", "trainer", "model", "data", "model.grpo", "model.lora", "model.tiny_spec",
                          "data.synthetic"})
# the value a hint shows when the flag came without one ({value} in a hint is the user's own)
EXAMPLE_VALUES = {"learning_rate": "1e-6", "max_grad_norm": "1.0", "seed": "0"}


# verl's and EasyR1's config names (verl's ppo_trainer.yaml, EasyR1's config.yaml) -> where the setting
# lives here; a key is matched by its last two dotted parts ("rollout.n"), then its last one
VERL_NAMES: dict[str, str] = {
    "rollout.n": "--model.grpo.num_generations={value} (G, completions per prompt)",
    "kl_coef": "--model.grpo.beta={value} (lit-vr1's KL term is in the loss, as verl's use_kl_loss / kl_loss_coef; "
               "verl's algorithm.kl_ctrl.kl_coef puts it in the reward instead; 0: no reference model)",
    "kl_loss_coef": "--model.grpo.beta={value} (the KL term's weight, in the loss as verl's use_kl_loss)",
    "use_kl_loss": "--model.grpo.beta (the KL term is in the loss whenever beta > 0; 0 turns it and the reference off)",
    "kl_loss_type": "nothing: the KL term is the k3 estimator (DeepSeekMath), as verl's low_var_kl; remove it",
    "max_response_length": "--model.grpo.max_completion_length={value} (tokens per completion)",
    "adv_estimator": "nothing: lit-vr1 trains GRPO (group-normalised advantages; --model.grpo.scale_rewards picks the "
                     "normalisation; another estimator overrides RolloutUpdateLoop.advantages, README: Your own loop); "
                     "remove it",
    "clip_ratio": "--model.grpo.epsilon={value}",
    "clip_ratio_low": "--model.grpo.epsilon={value}",
    "clip_ratio_high": "--model.grpo.epsilon_high={value}",
    "train_batch_size": "--data.batch_size (prompts per rollout and process; verl counts prompts over all processes)",
    "rollout_batch_size": "--data.batch_size (prompts per rollout and process; EasyR1 counts prompts over all "
                          "processes)",
    "global_batch_size": "--model.grpo.mini_batch_size (completions per optimiser step: EasyR1's prompts per update x "
                         "G, per process)",
    "ppo_mini_batch_size": "--model.grpo.mini_batch_size (completions per optimiser step: verl's prompts per update x "
                           "G, per process)",
    "micro_batch_size_per_device_for_update": "--model.grpo.micro_batch_size={value} (completions per forward/backward)",
    "ppo_micro_batch_size_per_gpu": "--model.grpo.micro_batch_size={value} (completions per forward/backward)",
    "ppo_epochs": "--model.grpo.num_iterations={value} (updates per rollout)",
    "total_epochs": "--trainer.max_epochs={value}",
    "total_training_steps": "--trainer.max_steps={value}",
    "grad_clip": "--model.grpo.gradient_clip_val={value}",
    "max_grad_norm": "--model.grpo.gradient_clip_val={value}",
    "loss_agg_mode": "--model.grpo.loss_type: verl's token-mean is dapo, seq-mean-token-mean grpo, "
                     "seq-mean-token-sum-norm dr_grpo",
    "filter_groups": "not a setting: tied groups get advantage 0 and add nothing to the loss (train/groups_tied_frac "
                     "counts them); to leave them out of the update (DAPO's dynamic sampling), override "
                     "RolloutUpdateLoop.groups_to_train in a loop of your own (README: Your own loop); remove it",
    "dynamic_sampling": "not a setting: tied groups get advantage 0 (train/groups_tied_frac counts them); to leave "
                        "them out, override RolloutUpdateLoop.groups_to_train (README: Your own loop); remove it",
    "overlong_buffer": "not offered: DAPO's soft overlong penalty is not a built-in reward (--model.grpo."
                       "mask_truncated_completions=true leaves truncated completions out of the loss instead, or write "
                       "the penalty as a reward of your own); remove it",
    "overlong_buffer_len": "not offered: DAPO's soft overlong penalty is not a built-in reward "
                           "(--model.grpo.mask_truncated_completions=true, or a reward of your own); remove it",
    "entropy_coeff": "not offered: the loss has no entropy bonus (train/entropy is logged); remove it",
    "clip_ratio_c": "not offered: no dual clip (the ratio is clipped to [1 - epsilon, 1 + epsilon_high]); remove it",
    "reward_clip": "not offered: rewards are used as scored (clip them in a reward of your own); remove it",
}
# the top-level sections of verl's and EasyR1's configs, none of which lit-vr1 reads
VERL_SECTIONS = frozenset({"worker", "algorithm", "actor_rollout_ref", "critic", "reward_model", "custom_reward_function"})


def verl_hint(key: str, value: str | None = None) -> str | None:
    """Where a verl / EasyR1 setting lives in lit-vr1 when the dotted ``key`` names one
    (``rollout.n``, ``kl_coef``, ``data.max_response_length``), or a note for one of their
    sections (``worker``, ``algorithm``); else None."""
    parts = key.replace(".init_args.", ".").split(".")
    for name in (".".join(parts[-2:]), parts[-1]):
        if name in VERL_NAMES:
            shown = value if value not in (None, "") else "N"
            return advice(VERL_NAMES[name].replace("{value}", shown))
    if len(parts) == 1 and parts[0] in VERL_SECTIONS:
        return ("lit-vr1 has no such section; each verl / EasyR1 setting has its own place (README: \"Coming from "
                "verl or EasyR1\")")
    return None


def trl_hint(key: str, value: str | None = None) -> str | None:
    """Where TRL's setting lives in lit-vr1 when the dotted ``key`` (``model.grpo.max_grad_norm``,
    without ``init_args``) ends in a TRL name that lit-vr1 does not take there: "use ...", with
    ``value`` (the user's own, else an example) written into the hint; else None."""
    key = key.replace(".init_args.", ".").replace(".dict_kwargs.", ".")
    parent, _, name = key.rpartition(".")
    if parent not in OWN_SECTIONS:
        return None
    if name in GRPO_FIELDS and parent != "model.grpo":  # --model.beta, --trainer.num_generations, --temperature
        return f"use --model.grpo.{name}" + (f"={value}" if value not in (None, "") else "") + " (a GRPOConfig field)"
    if name not in TRL_NAMES:
        return None
    valid, hint = TRL_NAMES[name]
    if key in valid:
        return None
    return advice(hint.replace("{value}", value if value not in (None, "") else EXAMPLE_VALUES.get(name, "")))


def advice(hint: str) -> str:
    """A hint as the advice a message gives: "use <hint>", unless it says there is no such
    setting here ("no vLLM here: ...", "nothing: ...")."""
    return hint if hint.startswith(("no ", "nothing", "not offered", "LoRA is")) else f"use {hint}"


def misplaced_trl_flag(argv: list[str]) -> str | None:
    """A message for the first flag of ``argv`` that names a TRL setting where lit-vr1 does
    not take it (``--model.grpo.max_prompt_length``), saying where it lives; else None."""
    for i, arg in enumerate(argv):
        if not arg.startswith("--"):
            continue
        key = arg[2:].split("=", 1)[0]
        value = arg.split("=", 1)[1] if "=" in arg else (
            argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("--") else None)
        hint = trl_hint(key, value)
        if hint:
            return f"--{key}: TRL's {key.rsplit('.', 1)[-1]} is not a lit-vr1 option there; {hint}"
        hint = verl_hint(key, value)
        if hint:
            return f"--{key}: verl / EasyR1's {key.rsplit('.', 1)[-1]} is not a lit-vr1 option; {hint}"
    return None
