"""Math answers as a verl / EasyR1 user brings them: expressions a numeric match would read as
their last number, rows without an answer found at fit start, validation that matches answers as
training rewards them, Parquet files named for what they are, and a run whose every step is
skipped ending in one line."""

from __future__ import annotations

import json

import pytest
import torch
from lightning.pytorch import Trainer
from test_bad_data import vr1, write

from lit_vr1.cli import user_error
from lit_vr1.config import GRPOConfig
from lit_vr1.data.datamodule import GroundingDataModule
from lit_vr1.data.jsonl import DataError, JsonlDataset
from lit_vr1.grpo import GRPOModule
from lit_vr1.rewards import HFRRF, Accuracy, IoUReward
from lit_vr1.rewards.accuracy import answer_problem, numeric_match
from lit_vr1.rewards.base import SampleContext


@pytest.mark.parametrize("solution", [r"\sqrt{2}", r"2\pi", r"\frac{\pi}{6}", "x^2", r"12\,\mathrm{cm}^2",
                                      r"5 \times 10^{3}", "√2", "2π"])
def test_an_expression_is_not_read_as_its_last_number(solution):
    """numeric mode scored the answer "2" right against the solution \\sqrt{2} (and "6" against
    \\frac{\\pi}{6}): the solution is refused, pointing to mode math."""
    with pytest.raises(ValueError, match="is an expression, not a number.*use mode math"):
        numeric_match("2", solution)
    assert "is an expression" in answer_problem(solution, "numeric")
    assert answer_problem(solution, "math") is None  # math-verify compares expressions


@pytest.mark.parametrize("solution, right, wrong", [
    ("12", "12", "13"), (r"\frac{3}{4}", "0.75", "0.7"), ("$12$", "12", "21"), (r"\boxed{5}", "5", "6"),
    (r"30^\circ", "30 degrees", "60"), (r"30^{\circ}", "30°", "31"), (r"12 \text{cm}", "12", "1.2"), ("75%", "0.75", "7.5"),
])
def test_plain_numbers_in_latex_still_match_numerically(solution, right, wrong):
    assert answer_problem(solution, "numeric") is None
    assert numeric_match(right, solution) and not numeric_match(wrong, solution)


@pytest.mark.parametrize("solution, mode, problem", [
    ("", "numeric", "the solution is empty"), ("  ", "exact", "the solution is empty"),
    ("<answer> </answer>", "math", "the solution is empty"), ("no number here", "numeric", "holds no number"),
    ("maybe", "choice", "names no option letter"), (r"\sqrt{2}", "numeric", "is an expression"),
])
def test_answer_rewards_name_rows_they_cannot_score(solution, mode, problem):
    ctx = SampleContext(id="r", prompt="q", solution=solution, source="data.jsonl:3")
    for reward in (Accuracy(mode=mode), HFRRF(mode=mode)):
        assert problem in reward.solution_problem(ctx)
    assert Accuracy(mode=mode).solution_problem(SampleContext(id="r", prompt="q", solution="B" if mode == "choice"
                                                              else "4")) is None


def trainer(tmp_path, **kw) -> Trainer:
    return Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path, **kw)


def test_rows_without_an_answer_are_refused_at_fit_start_under_answer_rewards(tmp_path):
    """HFRRF scored such rows 0 until the policy wrote the layout, then stopped the run; Accuracy
    stopped at the first rollout, after the model was built."""
    f, d = write(tmp_path, [vr1(1, "4"), vr1(2, ""), vr1(3, r"\sqrt{2}"), vr1(4, "3")])
    module = GRPOModule(model="tiny:qwen2_5_vl", rewards=[HFRRF(mode="numeric")],
                        grpo=GRPOConfig(num_generations=2, max_completion_length=4))
    with pytest.raises(DataError) as info:
        trainer(tmp_path).fit(module, GroundingDataModule(train_files=f, train_images=d, batch_size=1, template="r1",
                                                          check_boxes=False))
    rows = str(info.value).split("\n  ")
    assert rows[0].startswith("2 rows whose solution a reward cannot score")
    assert rows[1].startswith(f"{f}:2: the solution is empty") and rows[2].startswith(f"{f}:3: solution '\\\\sqrt{{2}}'")
    assert module.policy is None


def test_validation_matches_answers_as_the_training_reward_does():
    """eval_task answer matched numerically whatever the reward's mode: \\sqrt{2} answered "2" was right."""
    assert GRPOModule(model="tiny:qwen2_5_vl", rewards=[IoUReward(), HFRRF(mode="math")]).answer_mode() == "math"
    assert GRPOModule(model="tiny:qwen2_5_vl", rewards=[Accuracy(mode="choice")],
                      eval_answer_mode="exact").answer_mode() == "exact"
    assert GRPOModule(model="tiny:qwen2_5_vl", rewards=[IoUReward()]).answer_mode() == "numeric"
    with pytest.raises(ValueError, match=r"model.eval_answer_mode='maths' is not valid; choose one of"):
        GRPOModule(model="tiny:qwen2_5_vl", eval_answer_mode="maths")


def test_the_reasoning_recipe_matches_answers_as_math():
    import yaml

    with open("configs/grpo_vision_r1_reason_qwen25vl_3b.yaml") as f:
        rewards = yaml.safe_load(f)["model"]["init_args"]["rewards"]
    assert [r["init_args"]["mode"] for r in rewards] == ["math"]


def test_a_parquet_file_is_named_for_what_it_is(tmp_path):
    f, d = write(tmp_path, [vr1(1, "4")])
    with open(f, "wb") as out:
        out.write(b"PAR1" + b"\x00" * 64)
    with pytest.raises(DataError, match=r"a Parquet file \(verl's and EasyR1's data format\), not JSON lines.*"
                                        r"python -m lit_vr1.data.convert .*data.jsonl .*data_converted.jsonl --images "):
        JsonlDataset(f, d)


def test_verls_prompt_and_reward_model_fields_are_pointed_to_their_places(tmp_path):
    f, d = write(tmp_path, [json.dumps({"id": 1, "image": "a.png", "prompt": "<image>How many?", "solution": "2"}),
                            json.dumps({"id": 2, "image": "a.png", "problem": "<image>How many?",
                                        "reward_model": {"ground_truth": "2"}})])
    with pytest.raises(DataError) as info:
        JsonlDataset(f, d)
    text = str(info.value)
    assert ("'prompt', a chat of LLaMA-Factory's, TRL's or verl's layout, is not read: convert the file with python -m "
            f"lit_vr1.data.convert {f} <out>.jsonl --images <image folder>, or put the question's text in 'problem'") in text
    assert "field 'reward_model' (verl's, with a ground_truth) is not read; the answer goes in field 'solution'" in text
    # a label-free row with some other reward_model field is left alone
    f, d = write(tmp_path, [json.dumps({"id": 3, "image": "a.png", "problem": "<image>Why?", "reward_model": "rm-7b"})])
    assert JsonlDataset(f, d).records[0].solution == ""


def test_a_run_whose_steps_are_all_skipped_ends_in_one_line():
    module = GRPOModule(model="tiny:qwen2_5_vl")
    module.max_skips_in_a_row = 1
    try:
        module.record_skip("no completion was scored")
    except FloatingPointError as stop:
        assert user_error(stop) is stop  # the command prints it as "lit-vr1: error: ..." (exit 2)
    else:
        raise AssertionError("no error after the skips allowed")


def test_a_run_of_skipped_steps_is_warned_of_once():
    """Every skip printed its own warning: ten near-identical lines before the stop (helper-57)."""
    import warnings

    module = GRPOModule(model="tiny:qwen2_5_vl")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(5):
            module.record_skip("no completion was scored")
        module.skips_in_a_row = 0  # a step applied between
        module.record_skip("no completion was scored")
    said = [str(w.message) for w in caught if "the optimiser step is skipped" in str(w.message)]
    assert len(said) == 2 and "(1 skipped so far; skips that follow it in a row are counted" in said[0]
    assert "(6 skipped so far" in said[1] and module.skipped_steps == 6


def test_a_run_that_skips_most_steps_is_said_once_and_its_runs_of_skips_three_times():
    """mask_truncated_completions with nearly every completion cut: 22 of 28 steps skipped, a step
    applied now and then, 5+ warnings alike and never the stop (helper-82)."""
    import warnings

    class Applied(GRPOModule):
        applied = 0  # the optimiser steps applied (a trainer's global_step)

        @property
        def global_step(self) -> int:
            return self.applied

    module = Applied(model="tiny:qwen2_5_vl")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(8):  # three skips, then one applied step, eight times: 24 of 32 skipped
            for _ in range(3):
                module.record_skip("no completion was scored")
            module.skips_in_a_row, module.applied = 0, module.applied + 1
    said = [str(w.message) for w in caught]
    runs = [m for m in said if "the optimiser step is skipped" in m]
    assert len(runs) == 3 and "later runs of skips are counted, not said" in runs[2]
    mostly = [m for m in said if "barely trains" in m]
    assert len(mostly) == 1 and mostly[0].startswith("16 of the 21 optimiser steps so far were skipped")


def test_a_parameter_default_shadowing_a_data_column_is_warned_of():
    """verl code reads data_source; declared with a default it kept the default, silently."""
    from lit_vr1.rewards import FunctionReward

    def routed(completions, solution, data_source=None, **kwargs):
        return [1.0 if data_source is None else 0.0 for _ in completions]

    ctx = SampleContext(id="a", prompt="q", solution="1", metadata={"data_source": "geo"})
    with pytest.warns(UserWarning, match=r"declares data_source with a default, and the data has a column of that name"):
        assert FunctionReward(fn=routed)(["x"], [ctx]) == [1.0]


@pytest.mark.parametrize("flag, expected", [
    ("--data.max_response_length=64", "use --model.grpo.max_completion_length=64"),
    ("--model.grpo.kl_coef=0.01", "use --model.grpo.beta=0.01 (lit-vr1's KL term is in the loss"),
    ("--worker.rollout.n=8", "use --model.grpo.num_generations=8"),
    ("--worker.actor.global_batch_size=128", "use --model.grpo.mini_batch_size (completions per optimiser step"),
    ("--algorithm.adv_estimator=grpo", "nothing: lit-vr1 trains GRPO"),
    ("--worker.actor.clip_ratio_high=0.28", "use --model.grpo.epsilon_high=0.28"),
])
def test_verl_and_easyr1_names_say_where_their_setting_lives(flag, expected):
    from lit_vr1.trl_names import misplaced_trl_flag

    message = misplaced_trl_flag([flag])
    assert message.startswith(f"{flag.split('=')[0]}: verl / EasyR1's ") and expected in message


def test_a_verl_key_in_a_config_file_says_where_it_lives(tmp_path):
    import subprocess
    import sys

    config = tmp_path / "verl.yaml"
    config.write_text("worker:\n  rollout:\n    n: 8\n")
    done = subprocess.run([sys.executable, "-m", "lit_vr1.cli", "fit", "--config", "configs/quickstart.yaml",
                           "--config", str(config)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert (f"lit-vr1: error: worker.rollout.n: verl / EasyR1's n is not a lit-vr1 option (in config file {config}); "
            "use --model.grpo.num_generations=8") in done.stderr


def test_a_verl_style_dict_result_gives_its_score():
    from lit_vr1.rewards import FunctionReward

    def scored(completions, **kwargs):
        return [{"score": 1.0, "acc": True}, {"score": 0.25}]

    ctx = [SampleContext(id=str(i), prompt="q", solution="1") for i in range(2)]
    assert FunctionReward(fn=scored)(["a", "b"], ctx) == [1.0, 0.25]


def test_held_out_answers_are_read_in_validations_mode_before_it_starts(tmp_path):
    """A held-out \\sqrt{2} under numeric matching failed at the first validation, hours in."""
    f, d = write(tmp_path, [vr1(1, "4"), vr1(2, "3")])
    val, val_images = write(tmp_path, [vr1(1, "4"), vr1(2, r"\sqrt{2}")], name="val")
    module = GRPOModule(model="tiny:qwen2_5_vl", rewards=[HFRRF(mode="numeric")], eval_task="answer",
                        grpo=GRPOConfig(num_generations=2, max_completion_length=4))
    data = GroundingDataModule(train_files=f, train_images=d, val_files=val, val_images=val_images, batch_size=1,
                               template="r1", check_boxes=False)
    with pytest.raises(DataError, match=r"val\.jsonl:2: solution '\\\\sqrt\{2\}' is an expression.*answers matched as "
                                        r"numeric"):
        trainer(tmp_path, limit_val_batches=1).validate(module, data)


def test_a_data_column_missing_from_one_batch_stays_a_maskable_failure():
    """Only the columns some row of the batch has are passed: a batch without the column is that
    batch's failure (masked under on_error="nan"), not a broken reward that stops the run."""
    from lit_vr1.rewards import FunctionReward

    def needs_answer(completions, answer, **kwargs):
        return [float(a == "1") for a in answer]

    reward = FunctionReward(fn=needs_answer, on_error="nan")
    with_column = [SampleContext(id="a", prompt="q", solution="1", metadata={"answer": "1"}),
                   SampleContext(id="b", prompt="q", solution="1")]
    assert reward(["x", "y"], with_column) == [1.0, 0.0]
    with pytest.warns(UserWarning, match="needs 'answer', a data column no row of this batch has"):
        assert reward(["z"], [SampleContext(id="c", prompt="q", solution="1")]) != [0.0]
    assert reward.errors == 1


def test_a_missing_optional_package_is_one_line(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "math_verify", None)  # import math_verify raises ImportError
    try:
        Accuracy(mode="math")
    except ImportError as missing:
        assert user_error(missing) is missing and "pip install math-verify" in str(missing)
    else:
        raise AssertionError("mode math built without math-verify")


# A reasoning user's hand-graded answers (helper-52): math-verify read "3 circles" as a product with
# the letters (0) and "3 triangles" as 3 (1); "12.5 cm^2" read as its last number, 2, in numeric mode;
# an option letter or yes/no written in a sentence scored 0 in math mode.
HAND_GRADED = [
    ("3 circles", "3", True), ("3 cats", "3", True), ("2 red circles", "2", True), ("I think 4", "4", True),
    ("5 centimeters", "5", True), ("There are 3 circles.", "3", True), ("3 triangles", "3", True),
    ("4 sides", "3", False), ("not 3", "3", False), ("3 or 4", "3", False), ("3x", "3", False),
    ("3 apples and 4 pears", "3", False), ("3 m/s^2", "3", True),
    ("12.5 cm^2", "12.5", True), ("12.5 cm²", "12.5", True), (r"12.5\text{ cm}^2", "12.5", True),
    ("B. 12", "B", True), ("B) 12", "B", True), ("Option B", "B", True), ("The answer is (B).", "B", True),
    ("B", "B. 12", True), (r"\boxed{B}", "B", True), ("A", "B", False), ("Point A", "A", False),
    ("Yes, there is", "yes", True), ("No, there isn't", "no", True), ("yes and no", "yes", False),
    (r"\frac{1}{2}", "0.5", True), (r"\sqrt{12}", r"2\sqrt{3}", True), ("2", r"\sqrt{2}", False), ("on", "no", False),
    ("x = 4", "4", True), ("xy", "yx", True),
]


@pytest.mark.parametrize("answer, solution, right", HAND_GRADED)
def test_math_mode_grades_answers_as_a_careful_human_does(answer, solution, right):
    pytest.importorskip("math_verify")
    from lit_vr1.rewards.accuracy import match_answer

    assert match_answer(answer, solution, "math") is right
    ctx = SampleContext(id="a", prompt="Q", solution=solution)
    completion = f"<think>r</think><answer>{answer}</answer>"
    assert HFRRF(mode="math")([completion], [ctx]) == [1.0 if right else 0.0]


@pytest.mark.parametrize("answer, solution, right", [
    ("12.5 cm^2", "12.5", True), ("5 m/s^{2}", "5", True), ("x^2", "2", False), ("2^3", "3", True)])
def test_numeric_mode_reads_no_number_in_a_units_power(answer, solution, right):
    """The last number of "12.5 cm^2" was 2; a power after a digit is still a number (2^3 ends in 3)."""
    assert numeric_match(answer, solution) is right


def test_validation_matches_each_routed_rows_answer_in_its_own_rewards_mode(monkeypatch):
    """With rewards routed by task, every held-out row was matched in the first reward's mode (a
    reasoning user's multiple-choice rows, rewarded in choice mode, scored in math mode)."""
    from types import SimpleNamespace

    from lit_vr1 import evaluate

    module = GRPOModule(model="tiny:qwen2_5_vl", rewards=[Accuracy(mode="exact", tasks=["default"]),
                                                          Accuracy(mode="numeric", tasks=["count"], name="count_acc")])
    assert [module.answer_mode(t) for t in (None, "default", "count", "other")] == ["exact", "exact", "numeric", "exact"]
    rollout = SimpleNamespace(completions=["<answer>3 circles</answer>"] * 2, completion_mask=torch.ones(2, 3),
                              truncated=torch.zeros(2, dtype=torch.bool))
    monkeypatch.setattr(evaluate, "greedy_rollout", lambda *args, **kwargs: rollout)
    rows = [SimpleNamespace(task="count", solution="3"), SimpleNamespace(task="default", solution="3")]
    assert [p.answer_ok for p in evaluate.predict_answer(None, None, rows, 8, module.answer_mode)] == [True, False]
    assert GRPOModule(model="tiny:qwen2_5_vl", rewards=module.rewards, eval_answer_mode="numeric").answer_mode("default") \
        == "numeric"  # set: every row in it


@pytest.mark.parametrize("answer, solution", [
    ("minus 3", "3"), ("negative 3", "3"), ("less than 3", "3"), ("at least 3", "3"), ("up to 3", "3"),
    ("almost 3", "3"), ("3 squared", "3"), ("3 hundred", "3"), ("3 dozen", "3"), ("2 pi", "2"), ("half of 8", "8"),
    ("square root of 16", "16"), ("4 is wrong", "4"), ("3", "minus 3"), ("A", "B. 12"), ("max 3", "3"),
    ("approx 3", "3"), ("3 tenths", "3"), ("3 fifths", "3"), ("C. 12", "B. 12"), ("A: 12", "B. 12"), ("C", "B. $")])
def test_words_that_change_the_number_are_not_read_past(answer, solution):
    """The review's counter-examples to reading one number among words (helper-53)."""
    pytest.importorskip("math_verify")
    from lit_vr1.rewards.accuracy import match_answer

    assert match_answer(answer, solution, "math") is False


@pytest.mark.parametrize("answer, solution, right", [
    ("It is not 3.", "3", False), ("The answer is not 3", "3", False), ("3 or more", "3", False),
    (r"It is not \(3\).", "3", False), ("The answer is not $3$", "3", False), ("It isn't 3", "3", False),
    ("The answer is $3$, not $4$", "3", False),
    ("It is 3.", "3", True), ("The answer is $3$.", "3", True), ("sqrt(9)", "3", True), (r"$\sqrt{9}$", "3", True),
    (r"The answer is \boxed{3}, not 4", "3", True), ("x > 3", "x > 3", True), ("Furthermore, it is 3", "3", True),
    ("There are 3 birds above the tree", "3", True), ("No, it is 3.", "3", True)])
def test_math_mode_reads_no_number_past_prose_that_denies_or_hedges_it(answer, solution, right):
    """math-verify reads "It is not 3." and "3 or more" as 3 (a reward-hacking review, helper-72):
    against a solution that is a number, such prose is no match; a boxed answer is read by its box."""
    pytest.importorskip("math_verify")
    from lit_vr1.rewards.accuracy import match_answer

    assert match_answer(answer, solution, "math") is right


@pytest.mark.parametrize("answer, solution", [
    ("12", "B. 12"), ("45°", "(C) 45°"), ("The answer is 12", "B. 12"), ("cat", "B. cat"),
    # words that leave the number as it is (the second review's: "of", "some", "per", "times", "square" were refused)
    ("The number of circles is 3", "3"), ("There are 3 of them", "3"), ("a total of 7", "7"),
    ("I count 5 cubes, some red", "5"), ("There are 3 people per table", "3"), ("It happened 3 times", "3"),
    ("The area is 12 square meters", "12")])
def test_an_option_solution_that_gives_its_text_accepts_the_text(answer, solution):
    pytest.importorskip("math_verify")
    from lit_vr1.rewards.accuracy import match_answer

    assert match_answer(answer, solution, "math") is True


@pytest.mark.parametrize("solution", ["A:B", "B.12", "T:F", "A:1"])
def test_a_solution_the_start_check_passes_is_one_the_matcher_reads(solution):
    """'A:B' looked like an option letter to the matcher but not to choice's reader: it passed the
    check at fit start and raised at every rollout. Both take one decision now."""
    pytest.importorskip("math_verify")
    from lit_vr1.rewards.accuracy import match_answer

    assert answer_problem(solution, "math") is None
    assert match_answer("C", solution, "math") is False  # read, not raised
