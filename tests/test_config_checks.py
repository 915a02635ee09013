"""Configuration rules: each refuses its mistake with a message that names the flag; the
registry (lit_vr1.rules.all_rules) is generated from the code, and every rule in it is
exercised here; fit-time rules report every problem at once; and ``lit-vr1 fit`` with a
bad value stops before a model is built."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lit_vr1 import checks, parallel
from lit_vr1.checks import FitSetup, problems
from lit_vr1.config import GRPOConfig
from lit_vr1.rules import WHEN, ConfigError, all_rules, declaring_modules

ROOT = Path(__file__).resolve().parents[1]
RULES = all_rules()
BY_NAME = {r.name: r for r in RULES}


def setup_with(group_sizes=None, batch_size=2, train_rows=100, num_workers=0, world_size=1, **grpo) -> FitSetup:
    cfg = GRPOConfig(**grpo)
    return FitSetup(cfg, group_sizes or [cfg.num_generations], batch_size, train_rows, num_workers, world_size)


def _deepspeed_stub(config: dict):
    """A DeepSpeedStrategy without its __init__ (which needs deepspeed installed)."""
    from lightning.pytorch.strategies import DeepSpeedStrategy

    stub = DeepSpeedStrategy.__new__(DeepSpeedStrategy)
    stub.config = config
    return stub


def _strategy_setup(strategy, export_dir=None, tensor_parallel=1, **grpo) -> FitSetup:
    ds, cfg = parallel.is_deepspeed(strategy), GRPOConfig(**grpo)
    return FitSetup(cfg, [cfg.num_generations], 2, 100, 0, 1, strategy=strategy, deepspeed=ds,
                    deepspeed_config=dict(strategy.config) if ds else {}, tensor_parallel=tensor_parallel,
                    export_dir=export_dir)


def _model_parallel(tp=1):
    from lightning.pytorch.strategies import ModelParallelStrategy

    return ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=tp)


# fit rule name -> (a setup that breaks it, text its message must hold besides the flag)
FIT_CASES = {
    "group_at_least_two": lambda mp: (setup_with(num_generations=1), "every advantage is 0"),
    "mini_batch_multiple_of_group": lambda mp: (setup_with(num_generations=4, mini_batch_size=6), "not a multiple of"),
    "mini_batch_fits_rollout": lambda mp: (setup_with(num_generations=4, mini_batch_size=16), "exceeds the rollout"),
    "batch_size_positive": lambda mp: (setup_with(batch_size=0), "must be >= 1"),
    "num_workers_not_negative": lambda mp: (setup_with(num_workers=-1), "must be >= 0"),
    "data_fills_a_batch": lambda mp: (setup_with(train_rows=3, world_size=2), "nothing would train"),
    "half_precision_keeps_no_master": lambda mp: (FitSetup(precision="bf16-true", dtype="float32"),
                                                  "float32 master weights"),
    "half_dtype_keeps_no_master": lambda mp: (FitSetup(precision="bf16-mixed", dtype="bfloat16"), "model.dtype=float32"),
    "no_trainer_gradient_clip": lambda mp: (FitSetup(GRPOConfig(), [4], trainer_clip=1.0), "model.grpo.gradient_clip_val"),
    "no_trainer_accumulation": lambda mp: (FitSetup(GRPOConfig(), [4], trainer_accumulation=2),
                                           "model.grpo.micro_batch_size"),
    "no_trainer_clip_algorithm": lambda mp: (FitSetup(GRPOConfig(), [4], trainer_clip_algorithm="value"),
                                             "by their global norm"),
    "no_accumulation_scheduler": lambda mp: (FitSetup(GRPOConfig(), [4], callback_classes=[
        {"GradientAccumulationScheduler", "Callback", "object"}]), "model.grpo.mini_batch_size"),
    "no_weight_averaging": lambda mp: (FitSetup(callback_classes=[{"StochasticWeightAveraging", "WeightAveraging",
                                                                   "Callback", "object"}]),
                                       "StochasticWeightAveraging copies the module in its setup"),
    "no_fsdp1": lambda mp: (_strategy_setup(__import__("lightning.pytorch.strategies", fromlist=["x"]).FSDPStrategy()),
                            "cannot do manual optimisation"),
    "no_tensor_parallel": lambda mp: (_strategy_setup(_model_parallel(2), tensor_parallel=2), "data_parallel_size"),
    "no_export_with_sharded_weights": lambda mp: (_strategy_setup(_model_parallel(), export_dir="out"),
                                                  "not supported yet"),
    "deepspeed_no_gradient_clip_val": lambda mp: (_strategy_setup(_deepspeed_stub({}), gradient_clip_val=1.0),
                                                  "gradient_clipping: 1.0"),
    "deepspeed_unmanaged_accumulation": lambda mp: (
        _strategy_setup(_deepspeed_stub({}), gradient_clip_val=None, micro_batch_size=2), "managed_gradient_accumulation"),
    "deepspeed_release_knows_unmanaged_accumulation": lambda mp: (
        mp.setattr(parallel, "deepspeed_knows_unmanaged_accumulation", lambda: False),
        _strategy_setup(_deepspeed_stub({"managed_gradient_accumulation": False}), gradient_clip_val=None,
                        micro_batch_size=2))[1:] + ("pip install -U deepspeed",),
    "rewards_read_the_policy_frame": lambda mp: (
        FitSetup(box_frame="norm1000", reward_frames=[(1, "LocalizationPrecision", "input_pixels")]),
        "model.rewards[1] (LocalizationPrecision) box_frame=input_pixels: the policy writes boxes in norm1000"),
}


def test_the_registry_is_generated_from_the_code_and_every_rule_has_a_case():
    assert len(BY_NAME) == len(RULES) > 50
    assert all(r.when in WHEN and r.flag and r.where.split(".")[-1] == r.name for r in RULES)
    assert {r.name for r in RULES if r.when == "fit"} == set(FIT_CASES)
    assert {r.name for r in RULES if r.when != "fit"} == set(EXISTING)
    # the modules that declare rules are found by reading the code: the config, checks, data, models, rewards, PTST
    assert {"lit_vr1.config", "lit_vr1.checks", "lit_vr1.module", "lit_vr1.data.jsonl", "callbacks.ptst"} <= set(
        declaring_modules())


def test_a_sound_setup_breaks_no_rule():
    assert problems(setup_with()) == []
    assert problems(setup_with(num_generations=8, mini_batch_size=8, epsilon_high=0.28, top_p=0.9, top_k=50)) == []
    assert problems(FitSetup()) == []  # nothing known: nothing to say


@pytest.mark.parametrize("name", sorted(FIT_CASES))
def test_each_fit_rule_names_its_flag_and_what_to_do(name, monkeypatch):
    setup, text = FIT_CASES[name](monkeypatch)
    rule = BY_NAME[name]
    message = rule.check(setup)
    assert message is not None and rule.flag in message and text in message, message
    assert problems(setup) == [message]  # and no other rule fires
    with pytest.raises(ConfigError) as err:  # one problem: its own text, not a list of one
        checks.check(setup)
    assert str(err.value) == message


def test_every_fit_problem_is_listed_at_once():
    from lightning.pytorch.strategies import FSDPStrategy

    setup = _strategy_setup(FSDPStrategy(), num_generations=1)
    setup.batch_size, setup.trainer_clip = 0, 1.0
    with pytest.raises(ConfigError) as err:
        checks.check(setup)
    text = str(err.value)
    assert text.startswith("4 problem(s) in the configuration")
    for flag in ("model.grpo.num_generations", "data.batch_size", "trainer.gradient_clip_val", "trainer.strategy"):
        assert f"  - {flag}=" in text


def test_every_field_problem_of_grpo_config_is_listed_at_once():
    with pytest.raises(ConfigError) as err:
        GRPOConfig(num_generations=0, beta=-1.0, top_p=0.0)
    text = str(err.value)
    assert text.startswith("3 problem(s) in model.grpo")
    for flag in ("model.grpo.num_generations", "model.grpo.beta", "model.grpo.top_p"):
        assert f"  - {flag}=" in text


def test_greedy_sampling_is_refused_for_grpo():
    """top_k=1 samples the greedy completion G times: every group ties, nothing is learned."""
    with pytest.raises(ValueError) as err:
        GRPOConfig(top_k=1)
    assert "model.grpo.top_k=1" in str(err.value) and "GRPO learns nothing" in str(err.value)
    assert GRPOConfig(top_k=2).top_k == 2 and GRPOConfig(top_k=0).top_k == 0


def test_ptst_stages_count_as_group_sizes():
    from callbacks import PTST

    ptst = PTST(stages=[{"max_completion_length": 8, "num_generations": 8, "steps": 1},
                        {"max_completion_length": 16, "num_generations": 6, "steps": 1}])
    module = SimpleNamespace(config=GRPOConfig(num_generations=8, mini_batch_size=8),
                             trainer=SimpleNamespace(callbacks=[ptst], datamodule=None, world_size=1))
    setup = checks.fit_setup(module)
    assert setup.group_sizes == [8, 6]  # the stages cover every step: the config's own G never runs
    with pytest.raises(ConfigError, match=r"mini_batch_size=8 is not a multiple of model.grpo.num_generations=6"):
        checks.check_fit(module)
    # 12 fits both stages' G; the config's unused G of 10 refused it (a new user's trial)
    module.config = GRPOConfig(num_generations=10, mini_batch_size=12)
    ptst.stages[0].num_generations = 4
    checks.check_fit(module)


def test_a_ptst_stage_is_set_through_the_module_and_checked_as_the_config_is():
    from lit_vr1.grpo import GRPOModule

    module = GRPOModule(model="tiny:qwen2_5_vl", grpo=GRPOConfig(num_generations=4, max_completion_length=8))
    module.set_rollout_size(16, 2)
    assert (module.config.max_completion_length, module.config.num_generations) == (16, 2)
    assert (module.loop.sampling.max_completion_length, module.loop.config.num_generations) == (16, 2)
    with pytest.raises(ConfigError, match="max_completion_length=0 must be >= 1"):
        module.set_rollout_size(0, 2)
    assert module.config.max_completion_length == 16  # a refused stage changes nothing


# -- the rules of one setting: each fires where its value is built, naming its option ------------------
def _lora(targets):
    from lit_vr1.models.lora import LoraSpec, resolve_targets

    model = torch.nn.Module()
    model.proj = torch.nn.Linear(2, 2)
    return resolve_targets(model, LoraSpec(target_modules=targets))


def _flash_on_cpu(monkeypatch):
    from lit_vr1.module import check_attention

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "flash_attn" else real(name, *a))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    check_attention("flash_attention_2")


def _data(**kwargs):
    from lit_vr1.data.datamodule import GroundingDataModule

    return GroundingDataModule(**kwargs)


def _module(**kwargs):
    from lit_vr1.grpo import GRPOModule

    return GRPOModule(**kwargs)


def _lora_spec(**kwargs):
    from lit_vr1.models.lora import LoraSpec

    return LoraSpec(**kwargs)


EXISTING = {
    "loss_type_known": lambda mp: GRPOConfig(loss_type="ppo"),
    "scale_rewards_known": lambda mp: GRPOConfig(scale_rewards="max"),
    "num_generations_at_least_one": lambda mp: GRPOConfig(num_generations=0),
    "max_completion_length_at_least_one": lambda mp: GRPOConfig(max_completion_length=0),
    "num_iterations_at_least_one": lambda mp: GRPOConfig(num_iterations=0),
    "mini_batch_size_at_least_one": lambda mp: GRPOConfig(mini_batch_size=0),
    "micro_batch_size_at_least_one": lambda mp: GRPOConfig(micro_batch_size=0),
    "beta_not_negative": lambda mp: GRPOConfig(beta=-0.1),
    "epsilon_positive": lambda mp: GRPOConfig(epsilon=0.0),
    "epsilon_high_at_least_epsilon": lambda mp: GRPOConfig(epsilon=0.2, epsilon_high=0.1),
    "temperature_positive": lambda mp: GRPOConfig(temperature=0.0),
    "top_p_in_range": lambda mp: GRPOConfig(top_p=1.5),
    "top_k_leaves_a_choice": lambda mp: GRPOConfig(top_k=-1),
    "gradient_clip_positive": lambda mp: GRPOConfig(gradient_clip_val=0.0),
    "lora_default_targets_match": lambda mp: _lora(None),
    "lora_targets_not_empty": lambda mp: _lora([]),
    "lora_targets_match": lambda mp: _lora(["q_proj"]),
    "lora_rank_positive": lambda mp: _lora_spec(r=0),
    "lora_alpha_positive": lambda mp: _lora_spec(alpha=0),
    "lora_dropout_in_range": lambda mp: _lora_spec(dropout=1.0),
    "lora_bias_known": lambda mp: _lora_spec(bias="some"),
    "dtype_known": lambda mp: _module(dtype="float64"),
    "attn_implementation_known": lambda mp: __import__("lit_vr1.module", fromlist=["x"]).check_attention("fast"),
    "flash_attention_installed": lambda mp: (mp.setattr(importlib.util, "find_spec", lambda *a: None),
                                             __import__("lit_vr1.module", fromlist=["x"]).check_attention("flash_attention_2")),
    "flash_attention_needs_cuda": _flash_on_cpu,
    "box_frame_known": lambda mp: _module(box_frame="pixels"),
    "eval_task_known": lambda mp: _module(eval_task="vqa"),
    "eval_answer_mode_known": lambda mp: _module(eval_answer_mode="maths"),
    "detection_prompting_known": lambda mp: _module(detection_prompting="x"),
    "rewards_not_empty": lambda mp: __import__("lit_vr1.rewards.base", fromlist=["x"]).score_all([], [], []),
    "reward_names_distinct": lambda mp: __import__("lit_vr1.rewards.base", fromlist=["x"]).score_all(
        [__import__("lit_vr1.rewards", fromlist=["x"]).IoUReward()] * 2, [], []),
    "some_reward_weighs": lambda mp: __import__("lit_vr1.grpo", fromlist=["x"]).GRPOModule(
        rewards=[__import__("lit_vr1.rewards", fromlist=["x"]).IoUReward(weight=0)]),
    "something_trains": lambda mp: checks.check_master_weights([], _module()),
    "reward_on_error_known": lambda mp: __import__("lit_vr1.rewards", fromlist=["x"]).IoUReward(on_error="ignore"),
    "train_data_given": lambda mp: _data(),
    "train_images_given": lambda mp: _data(train_files="a.jsonl"),
    "val_images_given": lambda mp: _data(val_files="a.jsonl"),
    "one_image_folder_per_file": lambda mp: __import__("lit_vr1.data.jsonl", fromlist=["x"]).pair_files("a:b:c", "d:e"),
    "one_reward_method_per_file": lambda mp: __import__("lit_vr1.data.jsonl", fromlist=["x"]).file_tasks("a:b", "x:y:z"),
    "data_files_exist": lambda mp: __import__("lit_vr1.data.jsonl", fromlist=["x"]).read_records("gone.jsonl", "img"),
    "template_known": lambda mp: __import__("lit_vr1.data.prompts", fromlist=["x"]).check_template("fancy"),
    "bad_rows_known": lambda mp: _data(train_files="a", train_images="b", bad_rows="ignore"),
    "max_prompt_length_positive": lambda mp: _data(train_files="a", train_images="b", max_prompt_length=0),
    "synthetic_task_known": lambda mp: __import__("lit_vr1.data.synthetic", fromlist=["x"]).SyntheticSpec(task="vqa"),
    "synthetic_distractors_known": lambda mp: __import__("lit_vr1.data.synthetic", fromlist=["x"]).SyntheticSpec(
        distractors="many"),
    "synthetic_box_order_known": lambda mp: __import__("lit_vr1.data.synthetic", fromlist=["x"]).SyntheticSpec(
        box_order="random"),
    "synthetic_background_known": lambda mp: __import__("lit_vr1.data.synthetic", fromlist=["x"]).SyntheticSpec(
        background="noise"),
    "synthetic_teacher_valid": lambda mp: __import__("lit_vr1.data.synthetic", fromlist=["x"]).SyntheticSpec(
        task="reason", teacher_miss=-0.1),
    "synthetic_teacher_margin_valid": lambda mp: __import__("lit_vr1.data.synthetic", fromlist=["x"]).SyntheticSpec(
        teacher_margin=1.5),
    "ptst_stages_valid": lambda mp: __import__("callbacks", fromlist=["x"]).PTST(
        stages=[{"max_completion_length": 8, "num_generations": 1, "steps": 1}]),
    "trained_weights_float32": lambda mp: checks.check_master_weights(
        [torch.nn.Parameter(torch.zeros(2, dtype=torch.bfloat16))], SimpleNamespace(dtype_name="auto", _trainer=None)),
}
# the option name each message holds where it is not the flag's last part
MENTIONS = {
    "one_image_folder_per_file": "image_folders", "one_reward_method_per_file": "reward_methods",
    "rewards_not_empty": "model.rewards", "reward_names_distinct": "name", "ptst_stages_valid": "num_generations",
    "flash_attention_installed": "flash_attention_2", "flash_attention_needs_cuda": "flash_attention_2",
    "reward_on_error_known": "on_error",
}


@pytest.mark.parametrize("name", sorted(EXISTING))
def test_rules_of_one_setting_fire_naming_their_option(name, monkeypatch):
    with pytest.raises(ValueError) as err:
        EXISTING[name](monkeypatch)
    mention = MENTIONS.get(name, BY_NAME[name].flag.split(".")[-1])
    assert mention in str(err.value), str(err.value)


def _swa():
    from lightning.pytorch.callbacks import StochasticWeightAveraging

    return StochasticWeightAveraging(swa_lrs=1e-3)


def _accumulation_scheduler():
    from lightning.pytorch.callbacks import GradientAccumulationScheduler

    return GradientAccumulationScheduler(scheduling={0: 2})


@pytest.mark.parametrize("name, kwargs", [("no_trainer_gradient_clip", {"gradient_clip_val": 1.0}),
                                          ("no_trainer_accumulation", {"accumulate_grad_batches": 2}),
                                          ("no_trainer_clip_algorithm", {"gradient_clip_algorithm": "value"}),
                                          ("no_accumulation_scheduler", {"callbacks": "scheduler"}),
                                          ("no_weight_averaging", {"callbacks": "swa"})])
def test_trainer_clipping_and_accumulation_are_refused_before_a_model_is_built(name, kwargs, samples, monkeypatch):
    """The last three failed after ColdStart and the first rollout (a clip algorithm, the scheduler: a
    58-89 line traceback) or never (weight averaging copied the module before its policy was built and
    averaged nothing, helper-65)."""
    from lightning.pytorch import Trainer
    from torch.utils.data import DataLoader

    from lit_vr1.data.datamodule import collate
    from lit_vr1.grpo import GRPOModule

    monkeypatch.setattr("lit_vr1.module.load_model", _no_model)
    if "callbacks" in kwargs:
        kwargs = {"callbacks": [{"swa": _swa, "scheduler": _accumulation_scheduler}[kwargs["callbacks"]]()]}
    trainer = Trainer(accelerator="cpu", devices=1, max_steps=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, **kwargs)
    with pytest.raises(Exception, match=BY_NAME[name].flag.split(".")[-1]):
        trainer.fit(GRPOModule(), DataLoader(samples[:2], batch_size=2, collate_fn=collate))


def test_weight_averaging_is_refused_for_sft_too(samples, monkeypatch):
    from lightning.pytorch import Trainer
    from torch.utils.data import DataLoader

    from lit_vr1.data.datamodule import collate
    from lit_vr1.sft import SFTModule

    monkeypatch.setattr("lit_vr1.module.load_model", _no_model)
    trainer = Trainer(accelerator="cpu", devices=1, max_steps=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, callbacks=[_swa()])
    with pytest.raises(ConfigError, match="StochasticWeightAveraging copies the module in its setup"):
        trainer.fit(SFTModule(), DataLoader(samples[:2], batch_size=2, collate_fn=collate))


class _ModelBuilt(Exception):
    """Raised instead of building a model: the fit got as far as configure_model."""


def _no_model(*args, **kwargs):
    raise _ModelBuilt("a model was about to be built")


# -- the CLI -----------------------------------------------------------------------------------------
def test_cli_fit_with_a_bad_value_stops_before_any_model_is_built(tmp_path, monkeypatch):
    from lit_vr1.cli import LitVR1CLI

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("lit_vr1.module.load_model", _no_model)
    args = ["fit", "--config", str(ROOT / "configs/quickstart.yaml"), f"--trainer.default_root_dir={tmp_path}",
            "--trainer.logger=false", "--trainer.callbacks=[]", "--trainer.enable_progress_bar=false",
            f"--data.init_args.synthetic_dir={tmp_path / 'data'}", "--data.init_args.synthetic.num_samples=4",
            "--data.init_args.num_val_samples=0", "--data.init_args.batch_size=2"]
    with pytest.raises(ConfigError) as err:  # two fit-time rules: G against the group, the batch against the mini-batch
        LitVR1CLI(args=args + ["--model.init_args.grpo.num_generations=1", "--model.init_args.grpo.mini_batch_size=64"])
    text = str(err.value)
    assert "2 problem(s)" in text and "model.grpo.num_generations=1" in text and "mini_batch_size=64 exceeds" in text
    with pytest.raises(_ModelBuilt):  # the same run with sound values passes the checks and goes on to the model
        LitVR1CLI(args=args)


def test_cli_reports_every_bad_field_of_model_grpo_in_one_line_error(tmp_path, monkeypatch, capsys):
    from lit_vr1.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("lit_vr1.module.load_model", _no_model)
    with pytest.raises(SystemExit) as done:
        main(["fit", "--config", str(ROOT / "configs/quickstart.yaml"), "--model.grpo.top_p=0", "--model.grpo.beta=-1"])
    err = capsys.readouterr().err
    assert done.value.code == 2 and "Traceback" not in err
    assert "lit-vr1: error: 2 problem(s) in model.grpo" in err and "model.grpo.top_p=0" in err and "beta=-1" in err


def test_a_mini_batch_that_does_not_divide_the_rollout_is_said():
    """12 of 16 completions: steps of 12 and 4, with nothing said (TRL refuses it; helper-69)."""
    from lit_vr1.checks import uneven_mini_batches_note

    note = uneven_mini_batches_note(setup_with(batch_size=4, num_generations=4, mini_batch_size=12))
    assert note == ("model.grpo.mini_batch_size=12 does not divide a rollout's 16 completions (data.batch_size x G = "
                    "4 x 4): each pass over it takes steps of 12 and one of 4, as large a step on fewer completions; a "
                    "divisor of 16 makes every step alike")
    assert uneven_mini_batches_note(setup_with(batch_size=4, num_generations=4, mini_batch_size=8)) is None
    assert uneven_mini_batches_note(setup_with(batch_size=4, num_generations=4)) is None
    staged = setup_with(group_sizes=[4, 6], batch_size=2, num_generations=4, mini_batch_size=4)  # PTST: 8 and 12
    assert uneven_mini_batches_note(staged) is None
