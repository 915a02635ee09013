"""The REC demo's loose annotator (data.synthetic.teacher_margin) and the report's floor."""

import json

import pytest
from helpers import saved_model

from lit_vr1.data.synthetic import SyntheticSpec, loose_box, write_synthetic
from lit_vr1.evaluate import best_constant_box, constant_box_miou
from lit_vr1.rewards.boxes import first_box
from lit_vr1.rewards.detection import iou_matrix

BASE = dict(num_samples=60, canvas=112, min_shapes=1, max_shapes=1, min_size=28, max_size=72)


def box_iou(a, b) -> float:
    return float(iou_matrix([a], [b])[0, 0])


def _boxes(folder, split):
    return [first_box(json.loads(line)["conversations"][1]["value"]) for line in open(folder / f"{split}.jsonl")]


def test_the_loose_box_widens_every_side_by_the_margin_and_stays_on_the_canvas():
    assert loose_box((40, 20, 80, 40), 0.15, 112) == (34, 17, 86, 43)  # 6 px of 40 wide, 3 px of 20 high
    assert loose_box((0, 100, 30, 112), 0.2, 112) == (0, 98, 36, 112)  # 6 and 2 px, clipped at the edges
    assert loose_box((10, 10, 50, 50), 0.0, 112) == (10, 10, 50, 50)
    # a 40 px square widened by 15% a side: 52 px, IoU 1600 / 2704
    assert box_iou([30, 30, 70, 70], list(loose_box((30, 30, 70, 70), 0.15, 112))) == pytest.approx(1600 / 2704)


def test_only_the_training_boxes_are_the_loose_annotators(tmp_path):
    loose, true = tmp_path / "loose", tmp_path / "true"
    for split in ("train", "val"):
        write_synthetic(loose, SyntheticSpec(teacher_margin=0.15, **BASE), split)
        write_synthetic(true, SyntheticSpec(**BASE), split)
    taught, truth = _boxes(loose, "train"), _boxes(true, "train")
    assert [loose_box(tuple(b), 0.15, 112) for b in truth] == [tuple(b) for b in taught]
    assert all(box_iou(t, b) < 0.75 for t, b in zip(taught, truth))  # every training box is loose
    assert _boxes(loose, "val") == _boxes(true, "val")  # held out: the truth
    # the images and the questions are the same with and without the annotator
    assert (loose / "images/train_00007.png").read_bytes() == (true / "images/train_00007.png").read_bytes()
    questions = lambda folder: [json.loads(line)["conversations"][0]["value"] for line in open(folder / "train.jsonl")]
    assert questions(loose) == questions(true)


def test_the_detection_annotator_loosens_every_training_box(tmp_path):
    base = {**BASE, "max_shapes": 2, "task": "detection", "num_samples": 20}
    for folder, margin in (("loose", 0.2), ("true", 0.0)):
        for split in ("train", "val"):
            write_synthetic(tmp_path / folder, SyntheticSpec(teacher_margin=margin, **base), split)

    def boxes(folder, split):
        from lit_vr1.rewards.boxes import solution_boxes

        return [sorted(b.box for b in solution_boxes(json.loads(line)["conversations"][1]["value"]))
                for line in open(tmp_path / folder / f"{split}.jsonl")]
    taught, truth = boxes("loose", "train"), boxes("true", "train")
    assert sum(map(len, truth)) > 20  # some images hold two shapes
    assert [sorted(loose_box(tuple(b), 0.2, 112) for b in image) for image in truth] == \
        [[tuple(b) for b in image] for image in taught]
    assert boxes("loose", "val") == boxes("true", "val")


def test_teacher_margin_is_checked():
    with pytest.raises(ValueError, match=r"teacher_margin=-0.1 must be a fraction of the side in \[0, 1\]"):
        SyntheticSpec(teacher_margin=-0.1)
    with pytest.raises(ValueError, match="teacher_margin is for the box tasks 'rec', 'detection', 'vision_r1'"):
        SyntheticSpec(task="count", teacher_margin=0.1)


def test_the_floor_is_fitted_on_the_true_training_boxes_not_the_loose_ones(tmp_path, tiny_qwen25):
    from lit_vr1.demo import report

    model, processor = tiny_qwen25
    loose, true = tmp_path / "loose", tmp_path / "true"
    for folder, margin in ((loose, 0.3), (true, 0.0)):
        write_synthetic(folder, SyntheticSpec(teacher_margin=margin, **BASE), "train")
        write_synthetic(folder, SyntheticSpec(**{**BASE, "num_samples": 4}), "val")
    model_dir = saved_model(model, processor, tmp_path / "model")
    models = {"sft": model_dir, "grpo": model_dir}
    result = report(models, str(loose), "plain", str(tmp_path / "out"), max_new_tokens=6, grpo_data_dir=str(true))
    held = _boxes(true, "val")
    box, _ = best_constant_box(_boxes(true, "train"), held, 112)
    assert result["constant_box"] == {"box": box, "miou": pytest.approx(constant_box_miou(box, held))}
    assert result["annotator"]["images"] == 60 and result["annotator"]["area_ratio"] > 1.5
    alone = report(models, str(loose), "plain", str(tmp_path / "out2"), max_new_tokens=6)
    assert alone["constant_box"]["box"] != box  # the loose boxes would have given another floor
    assert "annotator" not in alone  # nothing to compare them with


def test_the_annotator_figures_score_the_sft_boxes_against_the_truth():
    from lit_vr1.demo import annotator_figures

    truth = [(10, 10, 50, 50), (0, 0, 20, 20)]
    taught = [loose_box(b, 0.25, 112) for b in truth]  # 60 x 60 around 40 x 40; 25 x 25 clipped at the corner
    f = annotator_figures(taught, truth)
    assert f["images"] == 2 and f["acc50"] == 0.5  # IoU 1600 / 3600 = 0.44 fails, 400 / 625 = 0.64 passes
    assert f["miou"] == pytest.approx((1600 / 3600 + 400 / 625) / 2)
    assert f["area_ratio"] == pytest.approx((3600 + 625) / (1600 + 400))
    with pytest.raises(ValueError, match="not the same images"):
        annotator_figures(taught, truth[:1])
