"""Detection evaluation: dataset-level mAP against pycocotools' COCOeval run directly, the
ODINW-style per-category prompting, and `lit-vr1 validate` with eval_task=detection."""

from __future__ import annotations

import json
import random
import re

import pytest
from test_rewards_detection import coco_dataset_stats, random_case

from lit_vr1.metrics import DetectionMetrics
from lit_vr1.rewards.boxes import ParsedBox as P


def test_detection_metrics_hand_computed():
    m = DetectionMetrics()
    # image 1: the cat found exactly; image 2: the dog missed (the box is elsewhere) -> AP cat 1, AP dog 0
    m.update([[P((0, 0, 10, 10), "cat")], [P((5, 5, 20, 20), "Dog ")]],
             [[P((0, 0, 10, 10), "cat")], [P((30, 30, 40, 40), "dog")]])
    out = m.compute()
    assert float(out["map"]) == pytest.approx(0.5) and float(out["map_50"]) == pytest.approx(0.5)
    assert int(out["images"]) == 2


# Seed 3 (random.Random(103)) once differed (AP50 0.3480 against 0.3497): torchmetrics'
# float32 recall thresholds dropped the curve point of a recall exactly on COCO's grid.
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_detection_metrics_equal_cocoeval_over_a_dataset(seed):
    rng = random.Random(100 + seed)
    images = [random_case(rng) for _ in range(6)]
    m = DetectionMetrics()
    for preds, gts in images[:3]:  # several updates accumulate
        m.update([preds], [gts])
    m.update([p for p, _ in images[3:]], [g for _, g in images[3:]])
    out = m.compute()
    stats = coco_dataset_stats(images)
    assert float(out["map"]) == pytest.approx(stats[0], abs=1e-6)
    assert float(out["map_50"]) == pytest.approx(stats[1], abs=1e-6)
    assert float(out["map_75"]) == pytest.approx(stats[2], abs=1e-6)


def test_per_category_prompting_asks_once_per_present_category(samples):
    from dataclasses import replace

    from lit_vr1.evaluate import detection_prompts

    s = replace(samples[0], solution=[["red circle", [1, 2, 10, 12]], ["blue square", [20, 20, 30, 30]],
                                      ["red circle", [40, 40, 50, 50]]])
    prompts = detection_prompts([s, samples[1]], "per_category")
    other = json.loads(samples[1].solution)[0]["label"]
    assert [(i, c) for i, _, c in prompts] == [(0, "red circle"), (0, "blue square"), (1, other)]
    assert "Locate every blue square" in prompts[1][1].messages[0]["content"][-1]["text"]
    assert [c for _, _, c in detection_prompts([s], "all")] == [None]
    with pytest.raises(ValueError, match="choose one of all, per_category"):
        detection_prompts([s], "odinw")


def test_validate_detection_writes_map_to_the_results_json(tmp_path):
    from lightning.pytorch import Trainer

    from lit_vr1.data.datamodule import GroundingDataModule
    from lit_vr1.data.synthetic import SyntheticSpec
    from lit_vr1.grpo import GRPOModule

    dm = GroundingDataModule(synthetic=SyntheticSpec(num_samples=4, canvas=56, task="detection"),
                             synthetic_dir=str(tmp_path / "d"), num_val_samples=3, batch_size=2)
    results = tmp_path / "results.json"
    module = GRPOModule(min_pixels=3136, max_pixels=3136, eval_max_new_tokens=12, results_path=str(results),
                        eval_task="detection", detection_prompting="per_category")
    Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False).validate(module, dm)
    (run,) = json.loads(results.read_text())
    assert run["split"] == "val" and run["n"] == 3 and run["prompting"] == "per_category"
    assert all(0.0 <= run[k] <= 1.0 for k in ("map", "map_50", "map_75"))
    with pytest.raises(ValueError, match="eval_task='seg' is not valid"):
        GRPOModule(eval_task="seg")


def test_validate_answers_logs_hfrrf_accuracy_layout_and_length(tmp_path, monkeypatch):
    """eval_task=answer: accuracy counts only answers in the think/answer layout with the right
    count (HFRRF); the layout rate and the mean length are logged beside it."""
    from lightning.pytorch import Trainer

    from lit_vr1 import module as module_file
    from lit_vr1.data.datamodule import GroundingDataModule
    from lit_vr1.data.synthetic import SyntheticSpec
    from lit_vr1.evaluate import AnswerPrediction, mode_of
    from lit_vr1.grpo import GRPOModule
    from lit_vr1.rewards.accuracy import is_correct, solution_text
    from lit_vr1.rewards.rec import think_answer_ok

    modes = []

    def answers(model, processor, batch, max_new_tokens, mode):  # the truth, without the think block but on ids 0, 4, ...
        modes.extend(mode_of(mode, s.task) for s in batch)
        out = []
        for s in batch:
            right = f"<answer> {solution_text(s.solution)} </answer>"
            text = right if int(s.id.split("-")[1]) % 4 else f"<think> I count. </think> {right}"
            out.append(AnswerPrediction(s, text, is_correct(text, s.solution, "numeric"), think_answer_ok(text), 10, False))
        return out

    monkeypatch.setattr(module_file, "predict_answer", answers)
    dm = GroundingDataModule(synthetic=SyntheticSpec(num_samples=4, canvas=56, task="count"),
                             synthetic_dir=str(tmp_path / "d"), num_val_samples=4, batch_size=2, val_batch_size=3)
    results = tmp_path / "results.json"
    module = GRPOModule(min_pixels=3136, max_pixels=3136, eval_max_new_tokens=12, results_path=str(results),
                        eval_task="answer")
    # three answers of four are right out of the layout: said once (a model taught plain answers validated at 0)
    with pytest.warns(UserWarning, match=r"val/acc counts an answer only in .*1\.000 of the held-out answers are "
                                         r"right in any layout \(val/answer_acc\)"):
        Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False).validate(module, dm)
    (run,) = json.loads(results.read_text())
    # what was scored is named (a mixed-task trial's five entries were told apart by their order alone)
    assert run == {"split": "val", "step": 0, "model": module.model_name, "ckpt_path": None, "eval_task": "answer",
                   "val_files": str(tmp_path / "d"), "val_reward_methods": None, "acc": 0.25,
                   "answer_acc": 1.0, "format": 0.25, "tokens": 10.0, "n": 4}
    assert set(modes) == {"numeric"}  # no answer reward: numeric matching


def test_a_wrong_box_frame_is_named_when_held_out_boxes_reach_past_their_images(tmp_path, monkeypatch):
    """A Qwen2.5-VL checkpoint validated with box_frame=norm1000 (or a Qwen2-VL one with
    input_pixels) scored acc50 0 without a word."""
    from lightning.pytorch import Trainer

    from lit_vr1 import module as module_file
    from lit_vr1.data.datamodule import GroundingDataModule
    from lit_vr1.data.synthetic import SyntheticSpec
    from lit_vr1.evaluate import Prediction, frame_note, outside_image
    from lit_vr1.sft import SFTModule

    assert outside_image((0, 0, 110, 50), (100, 100)) and not outside_image((0, 0, 104, 50), (100, 100))
    assert frame_note(1, 4, "norm1000", "val") is not None and frame_note(1, 5, "norm1000", "val") is None
    # boxes that no frame reads better are bad boxes, not a wrong frame (helper-85: a weak cold start was told
    # to change box_frame); another frame that reads them better keeps the frame's advice
    bad = frame_note(199, 200, "input_pixels", "val", {"input_pixels": 2.0, "norm1000": 3.0}, 200)
    assert "no other box frame reads them better (mean IoU: input_pixels 0.010, norm1000 0.015)" in bad
    assert "box_frame set to it" not in bad
    wrong = frame_note(199, 200, "input_pixels", "val", {"input_pixels": 2.0, "norm1000": 120.0}, 200)
    assert "needs model.box_frame set to it" in wrong

    def answers(model, processor, batch, max_new_tokens, box_frame):  # every box twice the image's width; one cut
        return [Prediction(s, "[0, 0, 1, 1]", (0.0, 0.0, 2.0 * s.image_sizes[0][0], 10.0), 0.0, True,
                           truncated=s.id.endswith("-0")) for s in batch]

    monkeypatch.setattr(module_file, "predict_rec", answers)
    dm = GroundingDataModule(synthetic=SyntheticSpec(num_samples=4, canvas=56), synthetic_dir=str(tmp_path / "d"),
                             num_val_samples=4, batch_size=2, val_batch_size=2)
    module = SFTModule(model="tiny:qwen2_5_vl", min_pixels=3136, max_pixels=3136, box_frame="norm1000",
                       eval_max_new_tokens=40)
    with pytest.warns(UserWarning) as seen:
        Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False).validate(module, dm)
    said = [str(w.message) for w in seen]
    assert any(re.search(r"4 of 4 held-out boxes reach past their image once read in box_frame norm1000 "
                         r"\(val/acc50 counts them wrong\)", m) for m in said), said
    # a cut answer's format read as broken, silently (a norm1 frame's longer numbers at 40 tokens)
    assert any("1 of 4 val answers were cut short at model.eval_max_new_tokens=40" in m for m in said), said


def test_results_are_written_by_the_first_process_only(tmp_path, monkeypatch):
    """Under DDP every process appended to results_path (one file: duplicated entries, or a
    half-written file read by another process)."""
    from lightning.pytorch.utilities import rank_zero_only

    from lit_vr1.sft import SFTModule

    module = SFTModule(model="tiny:qwen2_5_vl", results_path=str(tmp_path / "results.json"))
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    module._write_results("val", {"acc50": 1.0})
    assert not (tmp_path / "results.json").exists()


def test_evaluating_a_checkpoint_with_another_template_is_warned_of(tmp_path):
    """A model trained with template: plain, validated through a data module left at the default
    template (its extra instructions), scored acc50 0 without a word."""
    from lightning.pytorch import Trainer

    from lit_vr1.data.datamodule import GroundingDataModule
    from lit_vr1.data.synthetic import SyntheticSpec
    from lit_vr1.sft import SFTModule

    def data(template):
        return GroundingDataModule(synthetic=SyntheticSpec(num_samples=4, canvas=56), synthetic_dir=str(tmp_path / "d"),
                                   num_val_samples=2, batch_size=2, val_batch_size=2, template=template)

    def trainer():
        return Trainer(accelerator="cpu", max_steps=1, logger=False, enable_progress_bar=False,
                       enable_model_summary=False, default_root_dir=tmp_path, num_sanity_val_steps=0,
                       limit_val_batches=1)

    module = SFTModule(model="tiny:qwen2_5_vl", min_pixels=3136, max_pixels=3136, eval_max_new_tokens=2)
    fitted = trainer()
    fitted.fit(module, data("plain"))
    path = str(tmp_path / "run.ckpt")
    fitted.save_checkpoint(path)
    with pytest.warns(UserWarning, match=r"the checkpoint's run trained with data.template='plain'; this validate "
                                         r"prompts with 'qwen_rec'"):
        trainer().validate(module, data("qwen_rec"), ckpt_path=path)
    import warnings

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        trainer().validate(module, data("plain"), ckpt_path=path)
    assert not [w for w in seen if "data.template" in str(w.message)]


@pytest.mark.parametrize("rows, processes", [(1, 2), (7, 2), (8, 2), (5, 3), (9, 4)])
def test_held_out_rows_over_processes_are_each_scored_once(rows, processes):
    """Each process gets as many rows (its batches line up with the others'); the rows past the
    padding are marked repeats, so over all processes each row is scored once."""
    from lit_vr1.data.jsonl import Sample, scored
    from lit_vr1.data.sampler import EvalSampler, WithRepeats

    data = WithRepeats([Sample(str(i), [], [], "q", "", f"f:{i}") for i in range(rows)])
    served = [[data[i] for i in EvalSampler(data, processes, rank)] for rank in range(processes)]
    assert len({len(s) for s in served}) == 1
    counted = sorted(int(s.id) for rank in served for s, c in zip(rank, scored(rank)) if c)
    assert counted == list(range(rows))


def test_validate_on_two_processes_scores_each_held_out_row_once(tmp_path):
    """7 held-out rows on 2 processes: Lightning's sampler repeated the first row so each
    process had 4, and the figures counted 8 (helper-79)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    results = tmp_path / "results.json"
    cmd = [sys.executable, "-m", "lit_vr1", "validate", "--config", str(root / "configs/quickstart.yaml"),
           "--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.limit_val_batches=1.0",
           "--trainer.logger=false", "--trainer.callbacks=[]", "--data.num_val_samples=7", "--data.val_batch_size=2",
           "--model.eval_max_new_tokens=4", f"--model.results_path={results}",
           f"--data.synthetic_dir={tmp_path / 'data'}", f"--trainer.default_root_dir={tmp_path}"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(root))
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = json.loads(results.read_text())
    assert run["n"] == 7, run


def test_a_stand_in_for_a_row_that_failed_to_load_is_not_scored_twice_over_processes():
    """Under data.bad_rows=skip and several processes a row that fails is replaced by the next that
    loads, which is scored at its own index too: marked, it counts once (helper-80)."""
    import dataclasses

    from lit_vr1.data.jsonl import Sample, SkippedRow, scored
    from lit_vr1.data.sampler import EvalSampler, WithRepeats

    rows = [Sample(str(i), [], [], "q", "", f"f:{i}") for i in range(5)]
    rows[2] = dataclasses.replace(rows[3], skipped=[SkippedRow("2", "the image is cut off")])  # what the set serves
    data = WithRepeats(rows)
    served = [[data[i] for i in EvalSampler(data, 2, rank)] for rank in range(2)]
    counted = sorted(s.id for rank in served for s, c in zip(rank, scored(rank)) if c)
    assert counted == ["0", "1", "3", "4"]


def test_boxes_written_in_pixels_and_read_as_norm1000_are_named_by_the_frame_that_scores_better(tmp_path, monkeypatch):
    """Pixel boxes read as 0-1000 shrink inside the image (none reaches past it), so the check of
    boxes past the image was silent: a trial's validation read acc50 0 with format 1 (helper-82)."""
    from types import SimpleNamespace

    import torch
    from lightning.pytorch import Trainer

    from lit_vr1 import evaluate as evaluate_file
    from lit_vr1 import module as module_file
    from lit_vr1.data.datamodule import GroundingDataModule
    from lit_vr1.data.synthetic import SyntheticSpec
    from lit_vr1.evaluate import Prediction, better_frame_note, predict_rec
    from lit_vr1.rewards.base import SampleContext
    from lit_vr1.sft import SFTModule

    assert better_frame_note({"norm1000": 0.0, "input_pixels": 0.8 * 12}, 12, "norm1000", "val") is not None
    assert better_frame_note({"norm1000": 0.0, "input_pixels": 0.8 * 9}, 9, "norm1000", "val") is None  # too few
    assert better_frame_note({"input_pixels": 0.5 * 12, "norm1000": 0.55 * 12}, 12, "input_pixels", "val") is None

    def rollout(model, processor, samples, max_new_tokens):  # the right box, in the pixels of a 100 x 100 input
        contexts = [SampleContext(id=s.id, prompt="", solution='[{"bbox_2d": [10, 20, 60, 70]}]',
                                  image_sizes=[(100, 100)], input_sizes=[(100, 100)]) for s in samples]
        return SimpleNamespace(completions=['[{"bbox_2d": [10, 20, 60, 70]}]'] * len(samples), contexts=contexts,
                               truncated=torch.zeros(len(samples), dtype=torch.bool))

    monkeypatch.setattr(evaluate_file, "greedy_rollout", rollout)
    (pred,) = predict_rec(None, None, [SimpleNamespace(id="a")], box_frame="norm1000")
    assert pred.iou == 0.0 and pred.frame_ious["input_pixels"] == pytest.approx(1.0)
    assert pred.frame_ious["original_pixels"] == pytest.approx(1.0) and pred.frame_ious["norm1"] == 0.0

    def answers(model, processor, batch, max_new_tokens, box_frame):
        return [Prediction(s, "[10, 20, 60, 70]", (1.0, 2.0, 6.0, 7.0), 0.0, True,
                           frame_ious={"input_pixels": 0.9, "original_pixels": 0.9, "norm1000": 0.0, "norm1": 0.0})
                for s in batch]

    monkeypatch.setattr(module_file, "predict_rec", answers)
    dm = GroundingDataModule(synthetic=SyntheticSpec(num_samples=4, canvas=56), synthetic_dir=str(tmp_path / "d"),
                             num_val_samples=12, batch_size=2, val_batch_size=4)
    module = SFTModule(model="tiny:qwen2_5_vl", min_pixels=3136, max_pixels=3136, box_frame="norm1000")
    with pytest.warns(UserWarning, match=r"val/miou is 0\.000 with the boxes read in box_frame norm1000, and 0\.900 "
                                         r"read in input_pixels: the model likely writes input_pixels; set "
                                         r"model.box_frame=input_pixels"):
        Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False).validate(module, dm)


def test_a_validate_capped_by_limit_val_batches_says_how_many_rows_it_scores():
    """val_subset=2000 over a config with limit_val_batches 4 (batches of 50) scored 200 rows, unsaid."""
    from types import SimpleNamespace

    from lit_vr1.module import capped_evaluation_note

    data = SimpleNamespace(val_set=list(range(3000)), val_batch_size=50, held_out=lambda: list(range(2000)))
    assert capped_evaluation_note("validate", "limit_val_batches", 4, data) == (
        "lit-vr1 validate scores 200 of the 2000 held-out rows: trainer.limit_val_batches=4 (batches of "
        "data.val_batch_size=50; a config that limits validation in fits limits it here too); give "
        "--trainer.limit_val_batches=1.0 to score every row")
    assert "scores 1000 of the 2000" in capped_evaluation_note("test", "limit_test_batches", 0.5, data)
    assert capped_evaluation_note("validate", "limit_val_batches", 1.0, data) is None
    assert capped_evaluation_note("validate", "limit_val_batches", 40, data) is None  # 40 x 50 covers 2000
