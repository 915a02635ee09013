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
