"""The label-free demo (make demo TASK=label_free): the judge's data, its trust figures, the
reward's move to the served judge, and the whole demo end to end at a tiny size (policy SFT,
judge SFT, the judge server started and stopped by the demo, GRPO on its score alone, the
control, the report)."""

import json
from pathlib import Path

import pytest

from lit_vr1 import demo_label_free as dl
from lit_vr1.data.jsonl import JsonlDataset
from lit_vr1.data.prompts import DEFAULT_JUDGE_PROMPT
from lit_vr1.data.synthetic import SyntheticSpec, write_synthetic
from lit_vr1.evaluate import AnswerPrediction

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_judge_task_pairs_each_image_with_its_true_count_and_a_wrong_one(tmp_path):
    spec = SyntheticSpec(num_samples=40, task="judge", min_shapes=1, max_shapes=4, min_size=20, max_size=40, seed=7)
    write_synthetic(tmp_path / "judge", spec)
    write_synthetic(tmp_path / "count", SyntheticSpec(**{**vars(spec), "task": "count"}))
    judge, count = _lines(tmp_path / "judge" / "train.jsonl"), _lines(tmp_path / "count" / "train.jsonl")
    assert len(judge) == 80 and [r["id"] for r in judge[:2]] == ["train-0-yes", "train-0-no"]
    near = 0
    for i, truth_record in enumerate(count):
        truth = int(truth_record["conversations"][1]["value"].split()[1])  # "<answer> 3 </answer>"
        yes, no = judge[2 * i], judge[2 * i + 1]
        assert yes["image"] == no["image"] == truth_record["image"]  # the same drawing as the other tasks
        asked = [r["conversations"][0]["value"] for r in (yes, no)]
        question = "How many shapes are in the image?"
        assert asked[0] == "<image>" + DEFAULT_JUDGE_PROMPT.format(question=question, answer=truth)
        wrong = int(asked[1].split("Candidate answer: ")[1].split("\n")[0])
        assert wrong != truth and 0 <= wrong <= spec.max_shapes + 1
        near += abs(wrong - truth) == 1
        said = [r["conversations"][1]["value"] for r in (yes, no)]
        assert said[0].endswith("</think>yes") and said[1].endswith("</think>no")
        assert said[0].removesuffix("yes") == said[1].removesuffix("no")  # one reasoning: the shapes, numbered
        assert f"{truth}: " in said[0] and f"{truth + 1}: " not in said[0]
    assert 0.45 <= near / len(count) <= 0.95  # mostly near misses: the mistakes a counting policy makes


def test_label_free_training_data_has_no_answer_and_its_held_out_split_has_the_count(tmp_path):
    spec = SyntheticSpec(num_samples=6, task="label_free", max_shapes=4)
    write_synthetic(tmp_path, spec, "train")
    write_synthetic(tmp_path, spec, "val")
    assert all(set(r) == {"id", "image", "problem"} for r in _lines(tmp_path / "train.jsonl"))
    val = JsonlDataset(str(tmp_path / "val.jsonl"), str(tmp_path / "images"), "plain")
    assert all(val[i].solution.startswith("<answer> ") for i in range(len(val)))


def test_judge_pairs_are_read_back_and_agreement_is_counted_per_side(tmp_path):
    write_synthetic(tmp_path, SyntheticSpec(num_samples=5, task="judge", max_shapes=4), "val")
    items, labels = dl.judge_pairs(str(tmp_path))
    assert labels == [True, False] * 5
    assert all(it.question == "How many shapes are in the image?" and it.answer.isdigit() for it in items)
    stats = dl.agreement([0.9, 0.2, 0.4, 0.7], [True, False, True, False])
    assert stats["agreement"] == 0.5 and stats["yes_right"] == 0.5 and stats["no_right"] == 0.5
    assert stats["mean_score_yes"] == pytest.approx(0.65) and stats["pairs"] == 4


def test_verdicts_on_a_policys_answers_skip_the_answerless_and_count_false_yes_and_no():
    class Judge:
        def __init__(self):
            self.seen = []

        def score(self, items):
            self.seen.extend(it.answer for it in items)
            return [0.9 if it.answer in ("2", "3") else 0.1 for it in items]

    def pred(i, completion, ok):
        sample = type("S", (), {"messages": [{"content": [{"type": "image"}, {"type": "text", "text": "q"}]}],
                                "images": [None], "id": str(i)})()
        return AnswerPrediction(sample, completion, ok, True, 10, False)

    preds = [pred(0, "<answer> 2 </answer>", True), pred(1, "<answer> 3 </answer>", False),
             pred(2, "<answer> 1 </answer>", True), pred(3, "<answer> 4 </answer>", False), pred(4, "2", True)]
    judge = Judge()
    v = dl.verdicts(judge, preds)
    assert judge.seen == ["2", "3", "1", "4"] and v["answers"] == 4
    assert v["agreement"] == 0.5 and v["false_yes"] == 0.5 and v["false_no"] == 0.5


def test_the_grpo_configs_judge_url_moves_to_the_served_judge(tmp_path):
    from lit_vr1.demo import judge_rewards

    (arg,) = judge_rewards(str(CONFIGS / "grpo_label_free.yaml"), "http://127.0.0.1:5555")
    rewards = json.loads(arg.split("=", 1)[1])
    assert [r["init_args"]["url"] for r in rewards] == ["http://127.0.0.1:5555/score"]
    assert judge_rewards(str(CONFIGS / "grpo_reasoning.yaml"), "http://127.0.0.1:5555") == []


def test_a_grpo_config_without_a_remote_judge_is_one_clear_error(tmp_path, capsys):
    from lit_vr1.demo import main

    with pytest.raises(SystemExit):
        main(["--task", "label_free", "--grpo-config", str(CONFIGS / "grpo_reasoning.yaml"), "--out", str(tmp_path / "r")])
    assert "RemoteRewardModel reward" in capsys.readouterr().err and not (tmp_path / "r").exists()
    with pytest.raises(SystemExit):
        main(["--task", "label_free", "--judge-model", str(tmp_path / "nope"), "--out", str(tmp_path / "r")])
    assert f"--judge-model {tmp_path / 'nope'}: no such directory" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--task", "label_free", "--judge-think-tokens", "-2", "--out", str(tmp_path / "r")])
    assert "--judge-think-tokens -2: must be 0" in capsys.readouterr().err and not (tmp_path / "r").exists()
    # a control model without its cold start, or one that is not there, stops before any fit
    with pytest.raises(SystemExit):
        main(["--task", "label_free", "--control-model", str(tmp_path), "--out", str(tmp_path / "r")])
    assert "give that cold start with --sft-model" in capsys.readouterr().err and not (tmp_path / "r").exists()
    with pytest.raises(SystemExit):
        main(["--task", "label_free", "--sft-model", str(tmp_path), "--control-model", str(tmp_path / "nope"),
              "--out", str(tmp_path / "r")])
    assert f"--control-model {tmp_path / 'nope'}: no such directory" in capsys.readouterr().err


def _small(config: str, tmp_path: Path) -> Path:
    """The reasoning demo test's small copy of a demo config (64 training and 4 held-out images),
    at most 2 steps; the judge is asked about every completion (a 2-step cold start writes no
    <answer> block, and the served judge would never be reached)."""
    from tests.test_demo_reasoning import _small as small

    path = small(config, tmp_path)
    text = path.read_text().replace("max_steps: 1000", "max_steps: 2").replace("T_max: 1000", "T_max: 2")
    path.write_text(text.replace("          batch_size: 40\n", "          batch_size: 40\n          answer_required: false\n"))
    return path


def test_the_label_free_demo_runs_end_to_end(tmp_path, capsys):
    from lit_vr1.demo import main, read_metrics

    out = tmp_path / "run"
    result = main(["--task", "label_free", "--seed", "3", "--out", str(out), "--data-dir", str(tmp_path / "data"),
                   "--sft-config", str(_small("sft_reasoning.yaml", tmp_path)),
                   "--grpo-config", str(_small("grpo_label_free.yaml", tmp_path)),
                   "--judge-config", str(_small("judge_label_free.yaml", tmp_path)), "--judge-think-tokens", "8",
                   "--sft-steps", "2", "--grpo-steps", "2", "--control-steps", "2", "--quiet"])
    assert result["task"] == "label_free" and result["held_out_images"] == 4
    assert set(result["gains"]) == {"grpo_vs_sft", "grpo_vs_control"}
    for name in ("sft", "judge", "grpo", "control"):
        assert (out / f"{name}_model").is_dir()
    # the GRPO data are questions only; the judge trained on pairs of its own images
    assert all(set(r) == {"id", "image", "problem"} for r in _lines(tmp_path / "data_grpo" / "train.jsonl"))
    assert len(_lines(tmp_path / "data_judge" / "train.jsonl")) == 128
    # GRPO's reward came from the served judge: logged at both steps, and asked over HTTP
    rows = read_metrics(str(out / "grpo"))
    assert len([r for r in rows if r.get("train/reward/reward_model/mean")]) == 2
    judge = result["judge"]
    assert judge["requests"] >= 1
    assert judge["pairs"]["pairs"] == 8 and set(judge["on_answers"]) == {"sft", "grpo"}
    assert result["times"]["judge_s"] > 0 and (out / "answers.png").stat().st_size > 0
    printed = capsys.readouterr().out
    assert "judge: agrees with the labels on" in printed and "SFT control" in printed
    # a judge given by --judge-model and a control by --control-model: neither fit again, both reported
    again = main(["--task", "label_free", "--seed", "3", "--out", str(tmp_path / "again"),
                  "--data-dir", str(tmp_path / "data2"), "--sft-model", str(out / "sft_model"),
                  "--judge-model", str(out / "judge_model"), "--control-model", str(out / "control_model"),
                  "--sft-config", str(_small("sft_reasoning.yaml", tmp_path)),
                  "--grpo-config", str(_small("grpo_label_free.yaml", tmp_path)),
                  "--judge-config", str(_small("judge_label_free.yaml", tmp_path)), "--judge-think-tokens", "8",
                  "--grpo-steps", "1", "--control-steps", "2", "--quiet"])
    assert not (tmp_path / "again" / "judge_model").exists() and again["judge"]["pairs"]["pairs"] == 8
    assert not (tmp_path / "again" / "control_model").exists() and "control_s" not in again["times"]
    assert again["control"] == result["control"]  # the same model, the same held-out answers
