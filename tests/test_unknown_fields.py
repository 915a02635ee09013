"""Settings classes built from Python refuse keywords they have no field for, all at once, each
with the closest field names or, for a TRL GRPOConfig name, where that setting lives here."""

import pytest

from lit_vr1.config import GRPOConfig, SamplingConfig
from lit_vr1.data.synthetic import SyntheticSpec
from lit_vr1.models.lora import LoraSpec
from lit_vr1.rules import UnknownFieldError
from lit_vr1.trl_names import PYTHON_HINTS, TRL_NAMES


def test_a_trl_name_says_where_the_setting_lives():
    with pytest.raises(TypeError, match=r"learning_rate: TRL's learning_rate is not a GRPOConfig field; use the "
                                        r"optimiser's lr: GRPOModule\(optimizer=lambda params: torch\.optim\.AdamW"):
        GRPOConfig(learning_rate=1e-6)


def test_every_unknown_keyword_is_named_at_once_with_the_closest_fields():
    with pytest.raises(UnknownFieldError) as err:
        GRPOConfig(num_generation=8, bf16=True, epsilon=0.3)
    msg = str(err.value)
    assert msg.startswith("2 unknown keywords for GRPOConfig:")
    assert "num_generation: not a GRPOConfig field; did you mean num_generations" in msg
    assert "bf16: TRL's bf16 is not a GRPOConfig field; use Trainer(precision=\"bf16-mixed\")" in msg


@pytest.mark.parametrize("cls", [GRPOConfig, SamplingConfig, LoraSpec, SyntheticSpec])
def test_a_name_with_nothing_close_lists_the_fields(cls):
    with pytest.raises(UnknownFieldError, match=rf"zzz: not a {cls.__name__} field \(its fields: "):
        cls(zzz=1)


def test_known_fields_and_positional_arguments_still_build():
    assert GRPOConfig(num_generations=8, beta=0.0).num_generations == 8
    assert SamplingConfig(0.7).temperature == 0.7
    assert LoraSpec(r=4).r == 4


def test_every_trl_name_the_cli_answers_has_a_python_answer():
    assert set(TRL_NAMES) == set(PYTHON_HINTS)


# -- the modules built from Python (a notebook's mistakes) ---------------------------------------
def test_a_module_names_every_unknown_keyword_and_where_it_belongs():
    """Python's own refusal named the first keyword only, and the base class:
    "VLMModule.__init__() got an unexpected keyword argument 'freeze_visoin'"."""
    from lit_vr1.grpo import GRPOModule
    from lit_vr1.sft import SFTModule

    with pytest.raises(UnknownFieldError) as err:
        GRPOModule(model="tiny:qwen2_5_vl", freeze_visoin=True, num_generations=8, r=8, learning_rate=1e-6)
    msg = str(err.value)
    assert msg.startswith("4 unknown keywords for GRPOModule:")
    assert "freeze_visoin: not a GRPOModule keyword; did you mean freeze_vision?" in msg
    assert "num_generations: not a GRPOModule keyword; a GRPOConfig field: GRPOModule(grpo=GRPOConfig(" in msg
    assert "r: not a GRPOModule keyword; a LoraSpec field: GRPOModule(lora=LoraSpec(r=...))" in msg
    assert "learning_rate: TRL's learning_rate is not a GRPOModule keyword; use the optimiser's lr" in msg
    with pytest.raises(UnknownFieldError, match="export_dri: not a SFTModule keyword; did you mean export_dir"):
        SFTModule(model="tiny:qwen2_5_vl", export_dri="out")


def test_settings_given_as_dicts_are_read_as_their_classes():
    """A dict for grpo / lora / tiny_spec / synthetic was accepted, then failed deep in fit
    ("'dict' object has no attribute 'num_generations'")."""
    from lit_vr1.data.datamodule import GroundingDataModule
    from lit_vr1.grpo import GRPOModule
    from lit_vr1.models.tiny import TinySpec

    module = GRPOModule(model="tiny:qwen2_5_vl", grpo={"num_generations": 2}, lora={"r": 4},
                        tiny_spec={"num_layers": 2})
    assert module.config == GRPOConfig(num_generations=2) and module.lora == LoraSpec(r=4)
    assert module.tiny_spec == TinySpec(num_layers=2)
    data = GroundingDataModule(synthetic={"num_samples": 8, "canvas": 56})
    assert data.synthetic == SyntheticSpec(num_samples=8, canvas=56)
    with pytest.raises(UnknownFieldError, match="num_generatoins: not a GRPOConfig field; did you mean num_generations"):
        GRPOModule(model="tiny:qwen2_5_vl", grpo={"num_generatoins": 2})
    with pytest.raises(TypeError, match="lora: expected a LoraSpec \\(or a dict of its fields\\), got int"):
        GRPOModule(model="tiny:qwen2_5_vl", lora=4)


def test_an_optimizer_object_or_a_model_object_gets_what_to_give_instead():
    import torch

    from lit_vr1.grpo import GRPOModule

    params = [torch.nn.Parameter(torch.zeros(1))]
    with pytest.raises(TypeError, match=r"optimizer takes a factory .* optimizer=lambda params: torch\.optim\.AdamW\("
                                        r"params, lr=1e-5\); got AdamW"):
        GRPOModule(model="tiny:qwen2_5_vl", optimizer=torch.optim.AdamW(params, lr=1e-5))
    with pytest.raises(TypeError, match=r"model takes a name or a path .* not a Linear object: save yours with "
                                        r"\.save_pretrained\(folder\)"):
        GRPOModule(model=torch.nn.Linear(1, 1))
    from pathlib import Path

    assert GRPOModule(model=Path("tiny:qwen2_5_vl")).model_name == "tiny:qwen2_5_vl"


def test_a_checkpoint_records_settings_as_plain_values_however_they_were_given():
    """A model given as a Path (or settings through a user's subclass) reached the checkpoint's
    hyperparameters as objects, which the export and --ckpt_path refused."""
    from pathlib import Path

    from lit_vr1.grpo import GRPOModule
    from lit_vr1.module import CLASS_KEY

    class Mine(GRPOModule):  # a subclass defined where it cannot be imported by name (<locals>)
        def __init__(self, **kwargs):
            super().__init__(**kwargs)

    for module in (GRPOModule(model=Path("tiny:qwen2_5_vl"), grpo=GRPOConfig(num_generations=2), lora={"r": 4}),
                   Mine(model="tiny:qwen2_5_vl", grpo={"num_generations": 2}, lora=LoraSpec(r=4))):
        checkpoint = {"hyper_parameters": dict(module.hparams), "state_dict": {}}
        module.on_save_checkpoint(checkpoint)
        saved = checkpoint["hyper_parameters"]
        assert saved["model"] == "tiny:qwen2_5_vl" and saved["grpo"]["num_generations"] == 2, saved
        assert saved["lora"]["r"] == 4 and isinstance(saved["lora"], dict)
        assert checkpoint.get(CLASS_KEY) == (None if isinstance(module, Mine) else "lit_vr1.grpo.GRPOModule")


def test_a_tiny_spec_for_a_model_that_is_not_tiny_is_warned_of(tmp_path):
    """A config written for a tiny: model, pointed at the exported model: its tiny_spec did nothing, silently."""
    from lit_vr1.grpo import GRPOModule
    from lit_vr1.models.loading import load_model, load_processor

    processor = load_processor("tiny:qwen2_5_vl")
    processor.save_pretrained(tmp_path / "hf_model")
    load_model("tiny:qwen2_5_vl", processor).config.save_pretrained(tmp_path / "hf_model")
    with pytest.warns(UserWarning, match=r"model.tiny_spec sizes a tiny: model only; '.*hf_model' is loaded as it was"):
        GRPOModule(model=str(tmp_path / "hf_model"), tiny_spec={"num_layers": 2})


# -- a TRL user's values (helper-46's trial, 2026-12-05) ------------------------------------------
def test_lora_values_are_checked_where_the_spec_is_built():
    # before: r=0 ended in peft's traceback, alpha=0 trained nothing (grad norm 0), dropout -0.1 passed
    from lit_vr1.rules import ConfigError

    for kwargs, said in [({"r": 0}, r"model.lora.r=0 must be >= 1"), ({"alpha": 0}, r"alpha=0 must be > 0: .* trains "
                                                                                     "nothing"),
                         ({"dropout": 1.5}, r"dropout=1.5 must be in \[0, 1\)"), ({"dropout": -0.1}, r"dropout=-0.1"),
                         ({"bias": "some"}, r"model.lora.bias='some' is not valid")]:
        with pytest.raises(ConfigError, match=said):
            LoraSpec(**kwargs)
    assert LoraSpec(target_modules="all-linear").target_modules == "all-linear"  # peft's shorthand


def test_lora_all_linear_and_a_single_name_reach_peft_as_meant():
    from torch import nn

    from lit_vr1.models.lora import resolve_targets

    model = nn.Sequential()
    model.add_module("q_proj", nn.Linear(2, 2))
    assert resolve_targets(model, LoraSpec(target_modules="all-linear")) == "all-linear"
    assert resolve_targets(model, LoraSpec(target_modules="q_proj")) == ["q_proj"]  # a list of one, not a pattern


def test_trl_values_and_names_get_their_meaning_here():
    from lit_vr1.cli_errors import _choice_hint
    from lit_vr1.rules import ConfigError

    with pytest.raises(ConfigError, match=r"beta=nan is not a finite number"):  # before: "nan is negative"
        GRPOConfig(beta=float("nan"))
    with pytest.raises(ConfigError, match=r"scale_rewards=False is TRL's boolean form; here write 'none'"):
        GRPOConfig(scale_rewards=False)
    with pytest.raises(ConfigError, match=r"loss_type='DAPO' is not valid; did you mean dapo\?"):
        GRPOConfig(loss_type="DAPO")
    literal = "typing.Literal['group', 'batch', 'none']"
    assert _choice_hint("model.grpo.scale_rewards", "true", literal) == " (TRL's scale_rewards=true is 'group' here)"
    assert "did you mean dr_grpo" in _choice_hint("model.grpo.loss_type", "DR_GRPO",
                                                  "typing.Literal['grpo', 'bnpo', 'dr_grpo', 'dapo']")
    for name in ("delta", "importance_sampling_level", "min_p", "use_peft", "lora_r", "warmup_ratio"):
        with pytest.raises(UnknownFieldError, match=rf"{name}: TRL's {name} is not a GRPOConfig field"):
            GRPOConfig(**{name: 1})


def test_a_bad_value_is_named_with_the_config_file_that_holds_it(tmp_path, monkeypatch):
    # --config A.yaml --config E.yaml, A's value bad and E's good: the error named E.yaml
    from lit_vr1.cli_errors import LitVR1ArgumentParser, name_config_files

    monkeypatch.setattr(LitVR1ArgumentParser, "start_dir", str(tmp_path))
    (tmp_path / "A.yaml").write_text("model:\n  init_args:\n    grpo:\n      scale_rewards: false\n")
    (tmp_path / "E.yaml").write_text("model:\n  init_args:\n    grpo:\n      scale_rewards: batch\n")
    line = "model.grpo.scale_rewards: expected one of 'group', 'batch', 'none', got 'False'"
    assert name_config_files(line, ["A.yaml", "E.yaml"], set()).endswith("(in config file A.yaml)")
    # a flag sets the key too (--model.grpo.scale_rewards=batch): the file holding the bad value is still named
    assert name_config_files(line, ["A.yaml"], {"model.grpo.scale_rewards"}).endswith("(in config file A.yaml)")
