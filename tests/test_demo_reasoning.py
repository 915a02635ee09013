"""The reasoning demo (make demo TASK=reasoning): its data, its held-out figures and the whole
demo end to end at a tiny size (SFT, GRPO under PTST, GRPO without PTST, the control, the report)."""

import json
from pathlib import Path

import pytest

from lit_vr1 import demo_reasoning as dr
from lit_vr1.data.synthetic import SyntheticSpec, write_synthetic
from lit_vr1.evaluate import AnswerPrediction
from lit_vr1.rewards.accuracy import HFRRF
from lit_vr1.rewards.base import SampleContext

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _pred(i: int, completion: str, truth: int, tokens: int = 20, truncated: bool = False) -> AnswerPrediction:
    sample = type("S", (), {"id": f"val-{i}", "solution": f"<think> x </think> <answer> {truth} </answer>"})()
    from lit_vr1.rewards.accuracy import is_correct
    from lit_vr1.rewards.rec import think_answer_ok

    return AnswerPrediction(sample, completion, is_correct(completion, sample.solution, "numeric"),
                            think_answer_ok(completion), tokens, truncated)


def test_the_reason_task_numbers_the_shapes_top_to_bottom_then_answers_the_count(tmp_path):
    spec = SyntheticSpec(num_samples=30, task="reason", min_shapes=1, max_shapes=4, min_size=20, max_size=40)
    write_synthetic(tmp_path, spec)
    counts = set()
    for line in open(tmp_path / "train.jsonl"):
        human, gpt = json.loads(line)["conversations"]
        assert human["value"] == "<image>How many shapes are in the image?"
        answer = gpt["value"]
        think = answer[answer.index("<think>") + 7 : answer.index("</think>")].split(".")
        items = [t.strip() for t in think if t.strip()]
        n = int(answer[answer.index("<answer>") + 8 : answer.index("</answer>")])
        assert [int(t.split(":")[0]) for t in items] == list(range(1, n + 1))  # numbered 1..n, the answer is n
        counts.add(n)
        ctx = SampleContext(id="t", prompt="", solution=answer)
        assert HFRRF(mode="numeric")([answer], [ctx]) == [1.0]  # the cold-start answer earns the GRPO reward
    assert counts == {1, 2, 3, 4}


def test_accuracy_is_hfrrf_layout_and_count_and_the_rest_is_reported_beside_it():
    preds = [_pred(0, "<think> 1: red circle. </think> <answer> 1 </answer>", 1),
             _pred(1, "<answer> 2 </answer>", 2),                                   # right count, no think: not accurate
             _pred(2, "<think> 1: red circle. </think> <answer> 3 </answer>", 2, tokens=30, truncated=True)]
    f = dr.figures(preds)
    assert f == {"accuracy": pytest.approx(1 / 3), "answer": pytest.approx(2 / 3), "format": pytest.approx(2 / 3),
                 "tokens": pytest.approx(70 / 3), "truncated": pytest.approx(1 / 3), "over": pytest.approx(1 / 3),
                 "under": 0.0, "count_ratio": pytest.approx(6 / 5),
                 "consistent": pytest.approx(1 / 3)}  # the third lists 1 shape and answers 3 (true 2)
    assert dr.per_count(preds) == {"1": 1.0, "2": 0.0}


def test_an_answer_counts_its_list_only_when_the_number_is_the_items_listed():
    assert dr.listed("<think> 1: red circle. 2: blue square. </think> <answer> 2 </answer>") == 2
    assert dr.listed("<think> I see shapes. </think> <answer> 2 </answer>") == 0
    assert dr.listed("<think> 1: red circle.") is None  # cut off inside the think block
    preds = [_pred(0, "<think> 1: red circle. 2: blue square. </think> <answer> 2 shapes </answer>", 2),
             _pred(1, "<think> 1: red circle. </think> <answer> 2 </answer>", 2)]   # right, but not what it lists
    f = dr.figures(preds)
    assert f["accuracy"] == 1.0 and f["consistent"] == 0.5 and f["over"] == f["under"] == 0.0


def test_the_majority_answer_and_paired_gains():
    sols = [f"<think> x </think> <answer> {n} </answer>" for n in (2, 3, 2, 1)]
    assert dr.majority_answer(sols) == "2"
    before = [_pred(i, "<think> a </think> <answer> 1 </answer>", 2) for i in range(4)]
    after = [_pred(i, f"<think> a </think> <answer> {2 if i < 2 else 1} </answer>", 2) for i in range(4)]
    g = dr.gain(before, after)
    assert g["mean"] == pytest.approx(0.5) and g["se"] == pytest.approx(((1 / 3) ** 0.5) / 2)
    with pytest.raises(ValueError, match="different images"):
        dr.gain(before, after[::-1])


def _small(config: str, tmp_path: Path) -> Path:
    """A copy of a demo config drawing 64 training and 4 held-out images, PTST stages of one step."""
    text = (CONFIGS / config).read_text()
    text = text.replace("num_samples: 4000", "num_samples: 64").replace("num_val_samples: 200", "num_val_samples: 4")
    text = text.replace("steps: 80}", "steps: 1}")
    path = tmp_path / config
    path.write_text(text)
    return path


def test_the_reasoning_demo_runs_end_to_end(tmp_path, capsys):
    from lit_vr1.demo import main

    out = tmp_path / "run"
    result = main(["--task", "reasoning", "--seed", "3", "--out", str(out), "--data-dir", str(tmp_path / "data"),
                   "--sft-config", str(_small("sft_reasoning.yaml", tmp_path)),
                   "--grpo-config", str(_small("grpo_reasoning.yaml", tmp_path)),
                   "--sft-steps", "2", "--grpo-steps", "2", "--control-steps", "2", "--quiet"])
    assert set(result) >= {"sft", "grpo", "no_ptst", "control", "majority", "gains"}
    assert set(result["gains"]) == {"grpo_vs_sft", "grpo_vs_control", "grpo_vs_no_ptst", "no_ptst_vs_sft"}
    assert result["held_out_images"] == 4 and result["task"] == "reasoning"
    # GRPO read its own data (the true counts of the same images) beside the SFT data's teacher traces
    assert (tmp_path / "data_grpo" / "train.jsonl").is_file() and result["teacher"]["images"] == 64
    assert result["teacher"]["accuracy"] < 1.0  # the SFT data came from the imperfect teacher
    for name in ("sft", "grpo", "no_ptst", "control"):
        assert (out / f"{name}_model" if name != "sft" else out / "sft_model").is_dir()
    # GRPO ran its two PTST stages (one step each), the ablation none
    stages = [r["ptst/stage"] for r in dr_rows(out / "grpo") if r.get("ptst/stage")]
    assert stages == ["0.0", "1.0"]
    assert not any(r.get("ptst/stage") for r in dr_rows(out / "no_ptst"))
    assert (out / "answers.png").stat().st_size > 0 and (out / "curves.png").exists()
    assert json.loads((out / "results.json").read_text())["majority"] == result["majority"]
    printed = capsys.readouterr().out
    assert "GRPO, no PTST" in printed and "majority" in printed


def test_a_missing_config_or_a_grpo_config_without_ptst_is_one_clear_error(tmp_path, capsys):
    from lit_vr1.demo import main

    with pytest.raises(SystemExit):
        main(["--task", "reasoning", "--sft-config", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "run")])
    assert f"--sft-config {tmp_path / 'nope.yaml'}: no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--task", "reasoning", "--grpo-config", str(CONFIGS / "grpo_synthetic.yaml"), "--out", str(tmp_path / "run")])
    assert "has none; give a GRPO config with PTST stages or --no-ptst-ablation" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # nothing was trained


def dr_rows(folder: Path) -> list[dict]:
    from lit_vr1.demo import read_metrics

    return read_metrics(str(folder))


def test_the_teacher_misses_only_small_shapes_and_only_in_the_training_traces(tmp_path):
    base = dict(num_samples=200, min_shapes=1, max_shapes=4, min_size=20, max_size=40)
    traces = SyntheticSpec(task="reason", teacher_blind_size=28, teacher_miss=0.6, **base)
    for split in ("train", "val"):
        write_synthetic(tmp_path / "t", traces, split)
        write_synthetic(tmp_path / "c", SyntheticSpec(task="count", **base), split)
    from lit_vr1.rewards.accuracy import answer_text

    def counts(folder, split):
        return [int(answer_text(json.loads(line)["conversations"][1]["value"]))
                for line in open(tmp_path / folder / f"{split}.jsonl")]
    taught, true = counts("t", "train"), counts("c", "train")
    assert all(1 <= a <= b for a, b in zip(taught, true))   # the teacher only leaves shapes out
    assert 0.3 < sum(a == b for a, b in zip(taught, true)) / len(true) < 0.8
    assert counts("t", "val") == counts("c", "val")          # held out: the truth
    # the images are the same with and without the teacher
    assert (tmp_path / "t/images/train_00003.png").read_bytes() == (tmp_path / "c/images/train_00003.png").read_bytes()
    # a shape the teacher sees is never missed: with a blind size below every shape, the traces are the truth
    write_synthetic(tmp_path / "s", SyntheticSpec(task="reason", teacher_blind_size=20, teacher_miss=1.0, **base))
    assert counts("s", "train") == true


def test_teacher_settings_are_checked():
    with pytest.raises(ValueError, match="teacher_miss=1.5 must be a probability"):
        SyntheticSpec(task="reason", teacher_miss=1.5)
    with pytest.raises(ValueError, match="teacher_miss is for task 'reason'"):
        SyntheticSpec(task="rec", teacher_miss=0.5)


def test_no_validation_trains_the_very_same_models_without_held_out_curves(tmp_path):
    """--no-validation (what `make test-learning` runs) skips only the periodic held-out
    validation: validation is greedy and draws no random numbers, so every fit's weights come
    out bit-identical to a run that validates after every step."""
    from lit_vr1.demo import main

    configs = {}
    for name in ("sft_reasoning.yaml", "grpo_reasoning.yaml"):
        path = _small(name, tmp_path)
        text = path.read_text().replace("val_check_interval: 250", "val_check_interval: 1")
        text = text.replace("val_check_interval: 50", "val_check_interval: 1")
        # a reward that varies over any completion, so that GRPO moves the weights after 3 SFT steps
        path.write_text(text.replace("          mode: numeric\n",
                                     "          mode: numeric\n      - class_path: lit_vr1.rewards.length.RepetitionPenalty\n"
                                     "        init_args: {ngram_size: 1}\n"))
        configs[name] = path
    runs = {}
    for flag in ("--validation", "--no-validation"):
        out = tmp_path / flag.strip("-")
        main(["--task", "reasoning", "--seed", "1", "--out", str(out), "--data-dir", str(tmp_path / "data"),
              "--sft-config", str(configs["sft_reasoning.yaml"]), "--grpo-config", str(configs["grpo_reasoning.yaml"]),
              "--sft-steps", "3", "--grpo-steps", "2", "--control-steps", "2", "--no-ptst-ablation", "--quiet", flag])
        runs[flag] = out
    weights = {}
    for name in ("sft", "grpo", "control"):
        validated, unvalidated = [(runs[flag] / f"{name}_model" / "model.safetensors").read_bytes() for flag in runs]
        assert validated == unvalidated, name
        weights[name] = validated
        held_out = [[r for r in dr_rows(runs[flag] / name) if r.get("val/acc")] for flag in runs]
        assert len(held_out[0]) >= 2 and held_out[1] == [], (name, held_out)
    assert weights["grpo"] != weights["sft"]  # GRPO took steps, in both runs alike
    assert (runs["--no-validation"] / "curves.png").stat().st_size > 0
