"""Parse errors of the ``lit-vr1`` command print as one short message (lit_vr1/cli_errors.py)."""

from __future__ import annotations

import pytest

from lit_vr1.cli import main
from lit_vr1.cli_errors import condense

# jsonargparse 4.53's messages, as it printed them for these command lines
NESTED_OPTION = """Parser key "model":
  Does not validate against any of the Union subtypes
  Subtypes: [<class 'lightning.pytorch.core.module.LightningModule'>, <class 'NoneType'>]
  Errors:
    - Problem with given class_path 'lit_vr1.grpo.GRPOModule':
        Parser key "grpo":
          Does not validate against any of the Union subtypes
          Subtypes: [<class 'lit_vr1.config.GRPOConfig'>, <class 'NoneType'>]
          Errors:
            - Problem with given class_path 'lit_vr1.config.GRPOConfig':
                Option 'num_generation' is not accepted
            - Expected a <class 'NoneType'>
          Given value type: <class 'jsonargparse._util.NestedArg'>
          Given value: NestedArg(key='num_generation', val='8')
    - Expected a <class 'NoneType'>
  Given value type: <class 'jsonargparse._util.NestedArg'>
  Given value: NestedArg(key='grpo.num_generation', val='8')"""

WRONG_TYPE = """Parser key "data":
  Does not validate against any of the Union subtypes
  Subtypes: [<class 'lightning.pytorch.core.datamodule.LightningDataModule'>, <class 'NoneType'>]
  Errors:
    - Problem with given class_path 'lit_vr1.data.datamodule.GroundingDataModule':
        Parser key "batch_size":
          Expected a <class 'int'>. Got value: x
    - Expected a <class 'NoneType'>
  Given value type: <class 'jsonargparse._util.NestedArg'>
  Given value: NestedArg(key='batch_size', val='x')"""

CHOICES = """Parser key "trainer.precision":
  Does not validate against any of the Union subtypes
  Subtypes: [typing.Literal[64, 32], typing.Literal['bf16-mixed', '32-true'], <class 'NoneType'>]
  Errors:
    - Expected a <class 'int'>
    - Expected a typing.Literal['bf16-mixed', '32-true']
    - Expected a typing.Literal['bf16']
    - Expected a <class 'NoneType'>
  Given value type: <class 'str'>
  Given value: bf17"""

MISSPELLED_CLASS = """Parser key "model":
  Does not validate against any of the Union subtypes
  Subtypes: [<class 'lightning.pytorch.core.module.LightningModule'>, <class 'NoneType'>]
  Errors:
    - Problem with given class_path 'lit_vr1.grpo.GRPOModul':
        module 'lit_vr1.grpo' has no attribute 'GRPOModul'
    - Expected a <class 'NoneType'>
  Given value type: <class 'jsonargparse._util.NestedArg'>
  Given value: NestedArg(key='class_path', val='lit_vr1.grpo.GRPOModul')"""


def test_an_unknown_option_inside_a_class_is_named_by_its_key_with_the_nearest_options():
    assert condense(NESTED_OPTION) == ("model.grpo.num_generation: not an option of GRPOConfig; did you mean "
                                       "num_generations or num_iterations? (--model.grpo.help lists them)")


def test_a_wrong_type_names_the_key_the_type_and_the_value():
    assert condense(WRONG_TYPE) == "data.batch_size: expected int, got 'x'"


def test_union_alternatives_become_one_list_of_what_is_accepted():
    assert condense(CHOICES) == "trainer.precision: got 'bf17'; expected int or one of 'bf16-mixed', '32-true', 'bf16'"


def test_a_misspelled_class_path_gets_the_nearest_name_in_its_module():
    message = condense(MISSPELLED_CLASS)
    assert message.startswith("model: module 'lit_vr1.grpo' has no attribute 'GRPOModul'; did you mean GRPOModule?")


def test_unrecognized_flags_get_the_nearest_known_flags_and_other_messages_pass_through():
    flags = ["--trainer.max_steps", "--trainer.min_steps", "--trainer.precision"]
    assert condense("unrecognized arguments: --trainer.max_step=2", flags) == (
        "unrecognized arguments: --trainer.max_step=2; did you mean --trainer.max_steps or --trainer.min_steps?")
    assert condense("unrecognized arguments: --zzz", flags) == "unrecognized arguments: --zzz"
    assert condense('Parser key "config": File does not exist: \'x.yaml\'') == "config: File does not exist: 'x.yaml'"


@pytest.mark.parametrize("flag, expected", [
    ("--model.grpo.num_generation=8", "did you mean num_generations"),
    ("--model.init_args.grpo.num_generations=eight", "model.grpo.num_generations: expected int, got 'eight'"),
    ("--trainer.max_step=2", "did you mean --trainer.max_steps"),
    # a PTST stage's misspelt field: 11 lines of jsonargparse's subclass forms before (helper-52)
    ("--trainer.callbacks=[{class_path: callbacks.PTST, init_args: {stages: [{max_completion_length: 12, "
     "num_generation: 2, steps: 5}]}}]",
     "trainer.callbacks.stages.num_generation: not an option of PTSTStage; did you mean num_generations?"),
    # a reward's tasks as a string: which reward of the list (a mixed-task trial could not tell)
    ("--model.init_args.rewards=[{class_path: lit_vr1.rewards.RecJsonFormat}, {class_path: lit_vr1.rewards.IoUReward, "
     "init_args: {tasks: rec}}]", "model.rewards.tasks (IoUReward): got 'rec'; expected list"),
])
def test_the_command_prints_two_lines_without_usage_or_the_nested_dump(flag, expected, capsys):
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", "configs/quickstart.yaml", flag])
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert expected in err and err.startswith("lit-vr1: error: ")
    assert "usage:" not in err and "Union subtypes" not in err and "NestedArg" not in err
    assert err.strip().splitlines()[-1] == "(lit-vr1 fit --help lists every option)" and len(err.strip().splitlines()) == 2


@pytest.mark.parametrize("text, expected", [
    ("model:\n  init_args:\n    grpo: {beta: 0.04\n", "line 4, column 1: expected ',' or '}'"),
    ("trainer:\n\tmax_steps: 2\n", "line 2, column 1: found character '\\t' that cannot start any token"),
])
def test_a_yaml_syntax_error_names_the_config_file_line_and_column(text, expected, tmp_path, capsys):
    bad = tmp_path / "mine.yaml"
    bad.write_text(text)
    for flag in (["--config", str(bad)], [f"--config={bad}"], ["-c", str(bad)]):
        with pytest.raises(SystemExit) as info:
            main(["fit", "--config", "configs/quickstart.yaml", *flag])
        err = capsys.readouterr().err
        assert info.value.code == 2
        assert err.startswith(f"lit-vr1: error: config file {bad} is not valid YAML, {expected}")
        assert "<unicode string>" not in err and len(err.strip().splitlines()) == 2


def test_a_misspelled_key_in_a_config_file_names_the_file_and_the_nearest_keys(tmp_path, capsys):
    mine = tmp_path / "mine.yaml"
    mine.write_text("trainer:\n  max_stepz: 3\n")
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", "configs/quickstart.yaml", "--config", str(mine)])
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert err.startswith(f"lit-vr1: error: trainer.max_stepz: not an option of lit-vr1 fit (in config file {mine}); "
                          "did you mean trainer.max_steps")


def test_every_misspelled_key_of_the_config_files_in_one_message(tmp_path, capsys):
    one, two = tmp_path / "one.yaml", tmp_path / "two.yaml"
    one.write_text("trainer:\n  max_stepz: 3\nmodel:\n  class_path: lit_vr1.grpo.GRPOModule\n  init_args:\n"
                   "    grpo:\n      num_generation: 4\n")
    two.write_text("data:\n  init_args:\n"  # its class_path from quickstart.yaml
                   "    batch_sise: 2\n    synthetic:\n      sead: 3\nseed_everythin: 1\n")
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", "configs/quickstart.yaml", "--config", str(one), "--config", str(two)])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2
    assert err[0] == "lit-vr1: error: 5 keys of the config files are not options:"
    assert err[1:6] == [
        f"  trainer.max_stepz: not an option of lit-vr1 fit (in config file {one}); did you mean trainer.max_steps"
        " or trainer.max_time?",
        f"  model.grpo.num_generation: not an option of GRPOConfig (in config file {one}); did you mean "
        "num_generations or num_iterations? (--model.grpo.help lists them)",
        f"  data.batch_sise: not an option of GroundingDataModule (in config file {two}); did you mean batch_size or "
        "val_batch_size? (--data.help lists them)",
        f"  data.synthetic.sead: not an option of SyntheticSpec (in config file {two}); did you mean seed? "
        "(--data.synthetic.help lists them)",
        f"  seed_everythin: not an option of lit-vr1 fit (in config file {two}); did you mean seed_everything?",
    ]
    assert err[6:] == ["(lit-vr1 fit --help lists every option)"]


def test_the_shipped_configs_have_no_unknown_key():
    import glob

    from lit_vr1.cli import LitVR1CLI
    from lit_vr1.config_keys import unknown_keys

    found = {}

    class Probe(LitVR1CLI):
        def parse_arguments(self, parser, args):
            dests = [a.dest for a in self._subcommand_parsers["fit"]._actions]
            assert "trainer.max_steps" in dests and "model" in dests
            for path in sorted(glob.glob("configs/**/*.yaml", recursive=True)):
                found[path] = unknown_keys([path], dests, "fit")
            raise SystemExit(0)

    with pytest.raises(SystemExit):
        Probe(args=["fit"])
    assert len(found) >= 10 and not any(found.values()), found


def test_keys_jsonargparse_accepts_are_not_reported(tmp_path, capsys):
    """A config before the subcommand, ``dict_kwargs`` beside ``init_args``, arguments of a class a
    later file replaces: none is listed, only the two real typos."""
    top, kwargs, replaced, typos = (tmp_path / f"{n}.yaml" for n in ("top", "kwargs", "replaced", "typos"))
    top.write_text("fit:\n  trainer:\n    max_steps: 2\n")
    kwargs.write_text("model:\n  class_path: lit_vr1.grpo.GRPOModule\n  dict_kwargs: {}\n  init_args:\n    seed: 1\n")
    replaced.write_text("model:\n  init_args:\n    grpo:\n      num_generations: 4\n")  # GRPOModule's, dropped below
    typos.write_text("model:\n  class_path: lit_vr1.sft.SFTModule\n  init_args:\n    seedd: 1\n"
                     "trainer:\n  max_stepz: 3\n")
    with pytest.raises(SystemExit) as info:
        main(["--config", str(top), "fit", "--config", "configs/quickstart.yaml", "--config", str(kwargs),
              "--config", str(replaced), "--config", str(typos)])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2
    assert err[0] == "lit-vr1: error: 2 keys of the config files are not options:", err
    assert [line.split(":")[0].strip() for line in err[1:3]] == ["model.seedd", "trainer.max_stepz"]
    assert "SFTModule" in err[1]


def test_typos_in_rewards_callbacks_and_the_optimizer_and_a_slipped_indent(tmp_path, capsys):
    mine = tmp_path / "mine.yaml"
    mine.write_text("trainer:\n  callbacks:\n    - class_path: callbacks.ColdStart\n      init_args:\n        stepz: 10\n"
                    "model:\n  grpo:\n    beta: 0.1\n  init_args:\n    rewards:\n"
                    "      - class_path: lit_vr1.rewards.IoUReward\n        init_args:\n          treshold: 0.5\n"
                    "    optimizer:\n      class_path: torch.optim.AdamW\n      init_args:\n        lrr: 0.1\n")
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", "configs/quickstart.yaml", "--config", str(mine)])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2
    assert err[0] == "lit-vr1: error: 4 keys of the config files are not options:", err
    assert err[1:5] == [
        f"  trainer.callbacks[0].stepz: not an option of ColdStart (in config file {mine}); did you mean steps?",
        f"  model.grpo: beside init_args, where it is not read (in config file {mine}); indent it under "
        "model.init_args",
        f"  model.rewards[0].treshold: not an option of IoUReward (in config file {mine}); did you mean threshold?",
        f"  model.optimizer.lrr: not an option of AdamW (in config file {mine}); did you mean lr?",
    ]


def test_what_the_walk_cannot_judge_is_left_to_jsonargparse(tmp_path):
    from lit_vr1.config_keys import unknown_keys

    dests = ["trainer.logger", "trainer.max_steps", "trainer.callbacks", "model"]
    judged = tmp_path / "judged.yaml"  # CSVLogger takes no **kwargs: its keys are judged
    judged.write_text("trainer:\n  logger:\n    class_path: lightning.pytorch.loggers.CSVLogger\n    init_args:\n"
                      "      save_dirr: x\n")
    assert [u.key for u in unknown_keys([str(judged)], dests, "fit")] == ["trainer.logger.save_dirr"]
    handed_on = tmp_path / "handed_on.yaml"  # WandbLogger passes unknown keys to wandb.init: nothing to judge by
    handed_on.write_text("trainer:\n  logger:\n    class_path: lightning.pytorch.loggers.WandbLogger\n"
                         "    init_args:\n      entity: me\n      mode: offline\n")
    assert unknown_keys([str(handed_on)], dests, "fit") == []
    made = tmp_path / "made.yaml"  # a class_path naming a function that returns the class, and jsonargparse's $schema
    made.write_text("$schema: x.json\ntrainer:\n  callbacks:\n    - class_path: lit_vr1.data.synthetic.write_synthetic\n"
                    "      init_args:\n        anything: 1\nmodel:\n  $schema: y.json\n"
                    "  class_path: lit_vr1.grpo.GRPOModule\n  init_args:\n    seed: 1\n")
    assert unknown_keys([str(made)], dests, "fit") == []


def test_a_section_error_of_its_own_is_kept_beside_the_list(tmp_path, capsys):
    mine = tmp_path / "mine.yaml"  # a misspelled reward class and a misspelled key of another reward
    mine.write_text("model:\n  init_args:\n    rewards:\n      - class_path: lit_vr1.rewards.RecJsonFormatt\n"
                    "      - class_path: lit_vr1.rewards.IoUReward\n        init_args:\n          treshold: 0.5\n")
    with pytest.raises(SystemExit):
        main(["fit", "--config", "configs/quickstart.yaml", "--config", str(mine)])
    err = capsys.readouterr().err
    assert f"model.rewards[1].treshold: not an option of IoUReward (in config file {mine})" in err
    assert "no attribute 'RecJsonFormatt'; did you mean RecJsonFormat?" in err


@pytest.mark.parametrize("text, expected", [
    ("trainer:\n  precision: bf17\n", "trainer.precision: got 'bf17'; expected int or one of"),
    ("model:\n  init_args:\n    grpo:\n      num_generations: eight\n",
     "model.grpo.num_generations: expected int, got 'eight'"),
    ("data:\n  batch_size: two\n", "data.batch_size: expected int, got 'two'"),  # beside class_path: read alike
])
def test_a_value_of_the_wrong_type_in_a_config_file_names_the_file(text, expected, tmp_path, capsys):
    mine, other = tmp_path / "mine.yaml", tmp_path / "other.yaml"
    mine.write_text(text)
    other.write_text("trainer:\n  max_steps: 2\n")
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", "configs/quickstart.yaml", "--config", str(mine), "--config", str(other)])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2
    assert err[0].startswith(f"lit-vr1: error: {expected}") and err[0].endswith(f" (in config file {mine})"), err
    assert len(err) == 2


def test_a_value_of_the_wrong_type_given_as_a_flag_names_no_file(tmp_path, capsys):
    """The flag wins over the file that sets the same key, so the error is the flag's."""
    mine = tmp_path / "mine.yaml"
    mine.write_text("model:\n  init_args:\n    grpo:\n      num_generations: 4\n")
    for flag in ("--model.grpo.num_generations=eight", "--model.init_args.grpo.num_generations=eight"):
        with pytest.raises(SystemExit):
            main(["fit", "--config", "configs/quickstart.yaml", "--config", str(mine), flag])
        err = capsys.readouterr().err.strip().splitlines()
        assert err[0] == "lit-vr1: error: model.grpo.num_generations: expected int, got 'eight'", err


def test_trl_setting_names_in_a_config_file_say_where_the_setting_lives(tmp_path, capsys):
    mine = tmp_path / "mine.yaml"
    mine.write_text("trainer:\n  max_grad_norm: 0.5\nmodel:\n  init_args:\n    grpo:\n      learning_rate: 1.0e-6\n"
                    "      num_generation: 4\n")
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", "configs/quickstart.yaml", "--config", str(mine)])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2
    assert err[0] == "lit-vr1: error: 3 keys of the config files are not options:", err
    assert err[1] == (f"  trainer.max_grad_norm: TRL's max_grad_norm is not a lit-vr1 option there (in config file "
                      f"{mine}); use --model.grpo.gradient_clip_val=0.5")
    assert err[2].startswith(f"  model.grpo.learning_rate: TRL's learning_rate is not a lit-vr1 option there (in config "
                             f"file {mine}); use the optimiser's lr: --model.optimizer.init_args.lr=1e-06")
    assert err[3].startswith("  model.grpo.num_generation: not an option of GRPOConfig")  # not a TRL name: nearest names


def test_a_config_file_in_a_folder_is_named_by_the_path_given(tmp_path, monkeypatch, capsys):
    """jsonargparse parses a file from inside its folder; the file is still found and named as given."""
    from pathlib import Path

    quickstart = str(Path("configs/quickstart.yaml").resolve())
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "bad.yaml").write_text("model:\n  init_args:\n    grpo:\n      num_generations: eight\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        main(["fit", "--config", quickstart, "--config", "mine/bad.yaml"])
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == ("lit-vr1: error: model.grpo.num_generations: expected int, got 'eight' "
                      "(in config file mine/bad.yaml)"), err


def test_cold_start_on_two_processes_is_one_line_before_the_model_is_built(tmp_path):
    """It was refused in on_train_start, both models built, with a traceback from each process
    (111 lines; helper-79)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "lit_vr1", "fit", "--config", str(root / "configs/quickstart.yaml"),
           "--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.logger=false", "--data.synthetic.num_samples=16",
           f"--data.synthetic_dir={tmp_path / 'data'}", f"--trainer.default_root_dir={tmp_path}"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(root)),
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("lit-vr1: error:")]
    assert len(errors) == 1 and "callbacks.ColdStart runs in one process" in errors[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr


def test_fsdp2_sizes_that_are_not_the_process_count_are_one_line_naming_the_value():
    from lit_vr1.cli import fsdp2_sizes_error, user_error
    from lit_vr1.rules import ConfigError

    lightning = RuntimeError("The sizes `data_parallel_size=8` and `tensor_parallel_size=1` multiplied should equal "
                             "the world size (2).")
    error = fsdp2_sizes_error(lightning)
    assert isinstance(error, ConfigError)
    assert "data_parallel_size=8 x tensor_parallel_size=1 must equal the number of processes" in str(error)
    assert "give --trainer.strategy.init_args.data_parallel_size=2" in str(error)
    outer = RuntimeError("setup failed")
    outer.__cause__ = lightning
    assert isinstance(user_error(outer), ConfigError)
    assert fsdp2_sizes_error(RuntimeError("another")) is None and fsdp2_sizes_error(ValueError(str(lightning))) is None
