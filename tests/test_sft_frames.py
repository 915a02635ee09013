"""Supervised steps teach boxes in the frame the model writes and everything downstream reads
(Qwen2.5-VL: pixels of the resized input; Qwen2-VL: 0-1000), not in the original pixels the
solutions are written in. Before, an SFT'd model wrote the training boxes verbatim on images the
processor resizes, and validation, predict and the GRPO rewards read them 64/56 too large."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from lit_vr1.data.jsonl import JsonlDataset, is_box_answer
from lit_vr1.models.tiny import TinySpec, build_processor
from lit_vr1.rewards.boxes import answer_in_frame, from_original, predicted_boxes, to_original
from lit_vr1.sft import teacher_forced


def dataset(tmp_path, size: int, answers: list[str], check_boxes: bool = True) -> JsonlDataset:
    Image.new("RGB", (size, size), (90, 90, 90)).save(tmp_path / "a.png")
    rows = [{"id": i, "image": "a.png", "conversations": [{"from": "human", "value": "<image>Where is it?"},
                                                          {"from": "gpt", "value": a}]} for i, a in enumerate(answers)]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return JsonlDataset(str(tmp_path / "d.jsonl"), str(tmp_path), check_boxes=check_boxes)


@pytest.mark.parametrize("frame", ["input_pixels", "norm1000", "norm1", "original_pixels"])
def test_from_original_inverts_to_original(frame):
    box = (10.0, 12.0, 40.0, 44.0)
    back = to_original(from_original(box, frame, (56, 56), (64, 64)), frame, (56, 56), (64, 64))
    assert back == pytest.approx(box)


def test_an_answer_is_rewritten_in_the_frame_and_left_as_it_is_where_the_frame_is_the_identity():
    text = '<answer>[{"bbox_2d": [10, 12, 40, 44], "label": "cat"}]</answer>'
    assert answer_in_frame(text, "input_pixels", (56, 56), (64, 64)) == (
        '<answer>[{"bbox_2d": [9, 10, 35, 38], "label": "cat"}]</answer>')
    assert answer_in_frame("[10, 12, 40, 44]", "norm1000", (56, 56), (64, 32)) == "[156, 375, 625, 1375]"
    assert answer_in_frame("[16, 8, 48, 24]", "norm1", (56, 56), (64, 32)) == "[0.25, 0.25, 0.75, 0.75]"
    for frame, input_size in (("input_pixels", (64, 64)), ("original_pixels", (56, 56))):
        assert answer_in_frame("[10.0, 12, 40, 44.5]", frame, input_size, (64, 64)) == "[10.0, 12, 40, 44.5]"


@pytest.mark.parametrize("size, pixels, frame, seen", [(64, 3136, "input_pixels", 56), (64, 3136, "norm1000", 56),
                                                       (64, 7056, "input_pixels", 84), (56, 3136, "input_pixels", 56)])
def test_sft_teaches_the_boxes_the_rewards_read_back_as_the_truth(tmp_path, size, pixels, frame, seen):
    processor = build_processor("qwen2_5_vl", TinySpec(min_pixels=pixels, max_pixels=pixels))
    answers = ["[10, 12, 40, 44]", '[{"bbox_2d": [2, 30, 20, 50], "label": "sq"}]', "a red circle"]
    ds = dataset(tmp_path, size, answers)
    samples = [ds[i] for i in range(len(ds))]
    taught = teacher_forced(processor, samples, answers, box_frame=frame).completions
    if frame == "input_pixels" and seen == size:
        assert taught == answers  # the processor kept the image's size: nothing to map
    else:
        assert taught[:2] != answers[:2]
    assert taught[2] == "a red circle"  # not a box answer
    for text, truth in zip(taught[:2], ([10, 12, 40, 44], [2, 30, 20, 50])):
        read = predicted_boxes(text, (size, size), (seen, seen), frame)[0].box  # as validation and the rewards read it
        assert read == pytest.approx(truth, abs=max(size / seen, size / 1000) / 2 + 1e-9)  # the rounding to integers


def test_the_demos_answers_are_taught_as_written(tmp_path):
    """The demos draw 112 px images at 12544 px (and 56 px at 3136): their taught text, and with it
    every figure of their tables, is what it was."""
    from lit_vr1.data.jsonl import solution_text
    from lit_vr1.data.synthetic import SyntheticSpec, write_synthetic

    for canvas, task in ((112, "rec"), (112, "detection"), (112, "vision_r1"), (56, "rec")):
        root = tmp_path / f"{canvas}_{task}"
        spec = SyntheticSpec(num_samples=8, canvas=canvas, min_shapes=1, max_shapes=2, task=task, teacher_margin=0.2)
        write_synthetic(root, spec, "train")
        ds = JsonlDataset(str(root / "train.jsonl"), str(root / "images"), "qwen_rec")
        samples = [ds[i] for i in range(len(ds))]
        answers = [solution_text(s.solution) for s in samples]
        assert all(is_box_answer(a) for a in answers)  # box answers, which a resize would rewrite
        processor = build_processor("qwen2_5_vl", TinySpec(min_pixels=canvas * canvas, max_pixels=canvas * canvas))
        assert teacher_forced(processor, samples, answers).completions == answers


def test_answers_the_data_say_are_not_boxes_are_taught_as_written(tmp_path):
    """data.check_boxes: false is for answers that are lists of four numbers but not boxes."""
    processor = build_processor("qwen2_5_vl", TinySpec(min_pixels=3136, max_pixels=3136))
    answers = ["[10, 12, 40, 44]"]
    ds = dataset(tmp_path, 64, answers, check_boxes=False)
    assert teacher_forced(processor, [ds[0]], answers).completions == answers

