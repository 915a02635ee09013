"""Detection data converted from other formats, as a VLM-R1 / Vision-R1 user brings it: every
way a box answer was read wrongly without a word is refused naming the file, line and item;
rewards read boxes in the frame the policy writes; the recipes validate with their task's
metric; a multi-image question reaches the rewards whole."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import yaml
from PIL import Image

from lit_vr1.data.jsonl import DataError, JsonlDataset
from lit_vr1.rewards.base import SampleContext

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path, rows: list[dict]) -> tuple[str, str]:
    folder = tmp_path / "img"
    folder.mkdir(exist_ok=True)
    Image.new("RGB", (200, 100), (40, 40, 40)).save(folder / "a.png")
    Image.new("RGB", (60, 60), (200, 0, 0)).save(folder / "b.png")
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path), str(folder)


def ovd(answer) -> dict:
    text = answer if isinstance(answer, str) else json.dumps(answer)
    return {"id": "r", "image": "a.png", "conversations": [{"from": "human", "value": "<image>Find the boxes."},
                                                          {"from": "gpt", "value": text}]}


GOOD = ovd([{"bbox_2d": [20, 10, 80, 60], "label": "red box"}])
MISREAD = [
    # COCO's bbox is [x, y, width, height]: [20, 10, 60, 50] is the box [20, 10, 80, 60], read as corners it scored mAP 0.1
    (ovd([{"bbox": [20, 10, 60, 50], "label": "red box"}]),
     r"data\.jsonl:2: field 'conversations' \(gpt turn\) item 1 gives its box under 'bbox', COCO's key for \[x, y, "
     r"width, height\].*x2 = x \+ width.*rename the key to 'bbox_2d' if they are corners already"),
    # the label under another key read as "": a right answer labelled "red box" scored mAP 0
    (ovd([{"bbox_2d": [1, 1, 9, 9], "label": "a"}, {"bbox_2d": [20, 10, 80, 60], "category": "red box"}]),
     r"data\.jsonl:2: .* item 2 names its object under 'category', which is not read .*rename it to 'label'"),
    (ovd("```json\n" + json.dumps([{"bbox_2d": [20, 10, 80, 60, 1], "label": "x"}]) + "\n```"),
     r"data\.jsonl:2: .* item 1 has a 'bbox_2d' of 5 values; a box is \[x1, y1, x2, y2\]"),
    ({"id": "w", "image": "a.png", "problem": "Find.", "solution": [["cat", [20, 10, 80, 60]]], "width": "200",
      "height": 100}, r"data\.jsonl:2: field 'width' is '200'; give the image's size in pixels as integers"),
    ({"id": "n", "image": "a.png", "problem": "Find.", "solution": [["cat", [20, float("nan"), 80, 60]]]},
     r"data\.jsonl:2: field 'solution' item 1 \[20, nan, 80, 60\] has a coordinate that is not a finite number"),
]


@pytest.mark.parametrize("row, message", MISREAD, ids=["coco_bbox", "category_key", "five_values", "width_string",
                                                        "nan"])
def test_box_answers_read_wrongly_by_key_are_refused_naming_line_and_item(tmp_path, row, message):
    f, d = write(tmp_path, [GOOD, row])
    with pytest.raises(DataError, match=message):
        JsonlDataset(f, d)


def test_the_usual_forms_still_pass(tmp_path):
    rows = [GOOD, ovd("[20, 10, 80, 60]"), ovd([{"bbox_2d": [20, 10, 80, 60]}]),  # REC: a box without a label
            {"id": "v", "image": "a.png", "problem": "Find.", "solution": [["cat", [20, 10, 80, 60]]],
             "width": 200.0, "height": 100}, ovd("<answer>None</answer>"), ovd("[]"),
            {"id": "c", "image": "a.png", "problem": "Find.", "solution": [["", [20, 10, 80, 60]]]},  # class-agnostic
            ovd('<answer>{"class": "cat"}</answer>'), ovd([{"name": "Alice"}, {"name": "Bob"}])]  # JSON, not boxes
    f, d = write(tmp_path, rows)
    assert len(JsonlDataset(f, d)) == 9


def test_a_question_about_several_images_reaches_the_rewards_whole(tmp_path):
    row = {"id": "m", "image": ["a.png", "b.png"], "problem": "<image> and <image>: locate the red box in the first.",
           "solution": "[20, 10, 80, 60]"}
    one = {"id": "o", "image": "a.png", "problem": "<image>Locate the red box.", "solution": "[20, 10, 80, 60]"}
    f, d = write(tmp_path, [row, one])
    ds = JsonlDataset(f, d)
    many, single = (SampleContext.of(s, input_sizes=s.image_sizes) for s in (ds[0], ds[1]))
    assert many.prompt == "<image> and <image>: locate the red box in the first."  # was " and "
    assert single.prompt == "Locate the red box."  # images first: the text alone, as before


def test_a_box_reward_pinned_to_another_frame_than_the_policy_writes_is_refused_at_fit_start():
    from lit_vr1.checks import fit_setup, problems
    from lit_vr1.grpo import GRPOModule
    from lit_vr1.rewards import IoUReward
    from lit_vr1.rewards.vision_r1 import DualFormat, LocalizationPrecision

    # a Qwen2-VL writes 0-1000 units; the Vision-R1 recipe used to pin its rewards to Qwen2.5-VL's input pixels, and
    # every exactly right box scored precision and recall 0 with no warning
    pinned = GRPOModule(model="tiny:qwen2_vl", rewards=[DualFormat(), LocalizationPrecision(box_frame="input_pixels")])
    found = problems(fit_setup(pinned))
    assert found == ["model.rewards[1] (LocalizationPrecision) box_frame=input_pixels: the policy writes "
                     "boxes in norm1000 (model.box_frame, by default its model family's), which validation and the cold "
                     "start use too; remove the reward's box_frame (a box reward reads the policy's frame by default), "
                     "or set model.box_frame if the model writes another frame"], found
    following = GRPOModule(model="tiny:qwen2_vl", rewards=[LocalizationPrecision()])  # reads the policy's frame
    agreeing = GRPOModule(model="tiny:qwen2_5_vl", rewards=[IoUReward(box_frame="input_pixels")])
    assert problems(fit_setup(following)) == problems(fit_setup(agreeing)) == []


def _recipe(name: str) -> dict:
    return yaml.safe_load((ROOT / "configs" / name).read_text())["model"]["init_args"]


def test_the_recipes_follow_the_policy_frame_and_validate_with_their_task_metric():
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        model = yaml.safe_load(path.read_text()).get("model", {}).get("init_args", {})
        pinned = [r for r in model.get("rewards") or [] if "box_frame" in (r.get("init_args") or {})]
        assert not pinned and "box_frame" not in model, path.name  # a reward follows the policy's frame
    tasks = {name: _recipe(name).get("eval_task", "rec") for name in (
        "grpo_rec_qwen25vl_3b.yaml", "grpo_ovd_qwen25vl_3b.yaml", "grpo_vision_r1_loc_qwen25vl_3b.yaml",
        "grpo_vision_r1_reason_qwen25vl_3b.yaml", "grpo_r1v_free_qwen25vl_3b.yaml")}
    assert tasks == {"grpo_rec_qwen25vl_3b.yaml": "rec", "grpo_ovd_qwen25vl_3b.yaml": "detection",
                     "grpo_vision_r1_loc_qwen25vl_3b.yaml": "detection",
                     "grpo_vision_r1_reason_qwen25vl_3b.yaml": "answer", "grpo_r1v_free_qwen25vl_3b.yaml": "answer"}
    for name in tasks:  # validation answers as long as the rollouts' (64 tokens cut a reasoning answer short)
        recipe = _recipe(name)
        assert recipe["eval_max_new_tokens"] == recipe["grpo"]["max_completion_length"], name


def test_rec_validation_on_rows_with_several_boxes_says_to_use_detection(tmp_path):
    from lit_vr1.evaluate import several_boxes_note

    two = ovd([{"bbox_2d": [20, 10, 80, 60], "label": "a"}, {"bbox_2d": [100, 10, 150, 60], "label": "b"}])
    f, d = write(tmp_path, [GOOD, two])
    held_out = JsonlDataset(f, d)
    note = several_boxes_note("rec", held_out)
    assert note.startswith(f"1 held-out row(s) hold several boxes (the first: {f}:2)") and \
        "set model.eval_task=detection" in note
    assert several_boxes_note("detection", held_out) is None
    assert several_boxes_note("rec", JsonlDataset(*write(tmp_path, [GOOD]))) is None


def test_validate_with_validation_turned_off_says_so_instead_of_scoring_nothing(tmp_path):
    from lightning.pytorch import Trainer

    from lit_vr1.data.datamodule import GroundingDataModule
    from lit_vr1.grpo import GRPOModule

    f, d = write(tmp_path, [GOOD, GOOD])
    trainer = Trainer(accelerator="cpu", devices=1, limit_val_batches=0, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=tmp_path)
    dm = GroundingDataModule(train_files=f, train_images=d, val_files=f, val_images=d)
    with pytest.raises(ValueError, match=r"lit-vr1 validate has nothing to score: trainer\.limit_val_batches is 0 .*"
                                         r"give --trainer\.limit_val_batches=1\.0"):
        trainer.validate(GRPOModule(model="tiny:qwen2_5_vl"), dm)


def test_per_category_prompts_name_each_category_once_as_scoring_counts_them(tmp_path):
    from lit_vr1.evaluate import detection_prompts

    row = ovd([{"bbox_2d": [20, 10, 80, 60], "label": "red box"}, {"bbox_2d": [100, 10, 150, 60], "label": "Red Box "},
               {"bbox_2d": [120, 20, 160, 70], "label": "cat"}])
    f, d = write(tmp_path, [row])
    prompts = detection_prompts([JsonlDataset(f, d)[0]], "per_category")
    assert [category for _, _, category in prompts] == ["red box", "cat"]


def test_per_category_prompts_carry_every_image_of_a_multi_image_row(tmp_path):
    """The template's one marker, a row of two images: both images go first, in the row's order
    (before, the prompt was refused as "1 <image> marker(s) but the sample has 2 image(s)")."""
    from lit_vr1.evaluate import detection_prompts

    row = {"id": 1, "image": ["a.png", "b.png"], "problem": "<image> <image> Locate every square in the first image.",
           "solution": [["square", [20, 10, 80, 60]]]}
    f, d = write(tmp_path, [row])
    sample = JsonlDataset(f, d)[0]
    ((_, prompt, category),) = detection_prompts([sample], "per_category")
    content = prompt.messages[-1]["content"]
    assert category == "square" and [c["type"] for c in content] == ["image", "image", "text"]
    assert prompt.images == sample.images and "<image>" not in content[2]["text"]


def test_left_out_rows_are_warned_of_once_a_new_one_when_it_first_fails():
    from types import SimpleNamespace

    from lit_vr1.data.datamodule import SkippedRowsReport
    from lit_vr1.data.jsonl import SkippedRow

    report = SkippedRowsReport(SimpleNamespace(val_set=None))
    a, b = SkippedRow("1", "bad json"), SkippedRow("2", "cannot be decoded")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report._warn_new({"epoch": 0, "at_build": [a], "at_load": []}, None)
        report._warn_new({"epoch": 1, "at_build": [a], "at_load": []}, None)  # the same row again: no word
        report._warn_new({"epoch": 2, "at_build": [a], "at_load": [b]}, None)
    texts = [str(w.message) for w in caught if "data.bad_rows=skip" in str(w.message)]
    assert len(texts) == 2 and "epoch 0 left out 1 row(s) (1 when the data was read): ids 1" in texts[0]
    assert "epoch 2 left out 1 row(s) not reported before (0 when the data was read, 1 at load time, training rows " \
           "replaced in their batches by other rows): ids 2" in texts[1], texts
