"""The detection demo's report (lit_vr1.demo_detection): its per-image scores, hedging checks,
bootstrap standard error, trivial policy and the report over saved models."""

import json

import pytest
from helpers import saved_model

from lit_vr1 import demo_detection as dd
from lit_vr1.data.synthetic import SyntheticSpec, write_synthetic
from lit_vr1.rewards.boxes import ParsedBox

RED, BLUE = "red circle", "blue square"
TRUTH = [[ParsedBox((0, 0, 10, 10), RED), ParsedBox((20, 20, 40, 40), BLUE)]]


def test_precision_and_recall_count_label_matched_boxes_at_iou_half():
    preds = [[ParsedBox((0, 0, 10, 10), RED),          # a hit
              ParsedBox((20, 20, 40, 40), RED),        # right place, wrong label: no hit
              ParsedBox((0, 0, 10, 10), RED)]]         # a duplicate: one object counts once
    scores = dd.image_scores(dd.Detections(preds, TRUTH))
    assert scores == {"precision": [pytest.approx(1 / 3)], "recall": [0.5]}
    loose = [[ParsedBox((0, 0, 10, 21), RED)]]         # IoU 100/210 < 0.5
    assert dd.image_scores(dd.Detections(loose, TRUTH)) == {"precision": [0.0], "recall": [0.0]}
    assert dd.image_scores(dd.Detections([[]], TRUTH)) == {"precision": [0.0], "recall": [0.0]}


def test_hedging_counts_boxes_per_object_and_the_matched_area():
    preds = [[ParsedBox((0, 0, 20, 10), RED), ParsedBox((20, 20, 40, 40), BLUE), ParsedBox((50, 50, 60, 60), RED)]]
    h = dd.hedging(dd.Detections(preds, TRUTH))
    assert h["boxes_per_object"] == 1.5
    assert h["area_ratio"] == pytest.approx((200 + 400) / (100 + 400))  # the unmatched third box is left out


def test_the_trivial_policy_writes_one_constant_box_per_named_category():
    sample = type("S", (), {"solution": json.dumps([{"bbox_2d": [0, 0, 5, 5], "label": RED},
                                                    {"bbox_2d": [6, 6, 9, 9], "label": RED},
                                                    {"bbox_2d": [1, 1, 4, 4], "label": BLUE}])})()
    d = dd.constant_detections([sample], (1, 2, 3, 4))
    assert [(b.box, b.label) for b in d.preds[0]] == [((1, 2, 3, 4), RED), ((1, 2, 3, 4), BLUE)]
    assert len(d.gts[0]) == 3


def test_average_precision_and_its_paired_bootstrap():
    truth = TRUTH * 6
    perfect = dd.Detections([list(g) for g in truth], truth)
    assert dd.average_precision(perfect) == {"map": pytest.approx(1.0), "ap50": pytest.approx(1.0)}
    half = dd.Detections([g[:1] if i % 2 else [] for i, g in enumerate(truth)], truth)
    same = dd.paired_bootstrap(half, half, rounds=20)
    assert same == {"map": {"mean": 0.0, "se": 0.0}, "ap50": {"mean": 0.0, "se": 0.0}}
    gain = dd.paired_bootstrap(half, perfect, rounds=20)["ap50"]
    assert gain["mean"] == pytest.approx(1.0 - dd.average_precision(half)["ap50"]) and gain["se"] > 0


def test_the_report_scores_each_model_and_the_trivial_policy(tmp_path, tiny_qwen25, capsys):
    from lit_vr1.demo import report_detection

    model, processor = tiny_qwen25
    spec = SyntheticSpec(num_samples=6, canvas=112, min_shapes=1, max_shapes=3, min_size=28, max_size=48,
                         task="detection", box_order="reading")
    data = tmp_path / "data"
    write_synthetic(data, spec, "train")
    write_synthetic(data, SyntheticSpec(**{**vars(spec), "num_samples": 3}), "val")
    model_dir = saved_model(model, processor, tmp_path / "model")
    result = report_detection({"sft": model_dir, "grpo": model_dir}, str(data), "plain",
                              str(tmp_path / "out"), max_new_tokens=6)
    assert result["held_out_images"] == 3 and set(result) >= {"sft", "grpo", "constant", "gains", "constant_box"}
    assert result["gains"]["grpo_vs_sft"]["ap50"] == {"mean": 0.0, "se": 0.0}  # the same model twice
    assert result["constant"]["boxes_per_object"] <= 1.0
    assert (tmp_path / "out" / "boxes.png").stat().st_size > 0 and (tmp_path / "out" / "curves.png").exists()
    assert "constant boxes" in capsys.readouterr().out


def test_the_annotators_boxes_are_scored_against_the_truth():
    truth = json.dumps([{"bbox_2d": [10, 10, 30, 30], "label": RED}, {"bbox_2d": [50, 50, 60, 70], "label": BLUE}])
    loose = json.dumps([{"bbox_2d": [8, 8, 32, 32], "label": RED}, {"bbox_2d": [40, 40, 70, 80], "label": BLUE}])
    exact = dd.annotator_detections([truth], [truth])
    assert exact["images"] == 1 and exact["ap50"] == pytest.approx(1.0) and exact["area_ratio"] == 1.0
    f = dd.annotator_detections([loose], [truth])
    assert f["precision"] == 0.5 and f["area_ratio"] == pytest.approx((24 * 24 + 30 * 40) / (400 + 200))
    with pytest.raises(ValueError, match="not the same images"):
        dd.annotator_detections([truth], [truth, truth])


def test_the_report_of_a_loose_annotators_run_prints_its_figures(tmp_path, tiny_qwen25, capsys):
    from lit_vr1.demo import report_detection

    model, processor = tiny_qwen25
    spec = SyntheticSpec(num_samples=8, canvas=112, min_shapes=1, max_shapes=2, min_size=28, max_size=48,
                         task="detection", box_order="reading")
    sft_data, grpo_data = tmp_path / "sft", tmp_path / "grpo"
    write_synthetic(sft_data, SyntheticSpec(**{**vars(spec), "teacher_margin": 0.2}), "train")
    write_synthetic(sft_data, SyntheticSpec(**{**vars(spec), "num_samples": 2}), "val")
    write_synthetic(grpo_data, spec, "train")
    model_dir = saved_model(model, processor, tmp_path / "model")
    result = report_detection({"sft": model_dir, "grpo": model_dir}, str(sft_data), "plain", str(tmp_path / "out"),
                              max_new_tokens=4, grpo_data_dir=str(grpo_data))
    annotator = result["annotator"]
    assert annotator["images"] == 8 and 1.3 < annotator["area_ratio"] <= 1.96 + 1e-6
    assert "SFT's training boxes against the truth (8 training images)" in capsys.readouterr().out


def test_reading_order_lists_boxes_top_to_bottom(tmp_path):
    spec = SyntheticSpec(num_samples=20, min_shapes=3, max_shapes=3, task="detection", box_order="reading")
    write_synthetic(tmp_path, spec)
    for line in open(tmp_path / "train.jsonl"):
        boxes = [item["bbox_2d"] for item in json.loads(json.loads(line)["conversations"][1]["value"])]
        assert boxes == sorted(boxes, key=lambda b: (b[1], b[0]))


def test_ood_is_refused_for_detection(capsys):
    from lit_vr1.demo import main

    with pytest.raises(SystemExit):
        main(["--task", "detection", "--ood", "all"])
    assert "--ood is for --task rec" in capsys.readouterr().err


@pytest.mark.parametrize("backend", ["faster_coco_eval", "pycocotools"])
def test_the_fast_coco_ap_gives_torchmetrics_numbers(backend):
    """coco_average_precision (NumPy, for the bootstrap) against DetectionMetrics (torchmetrics'
    COCO evaluation, what validation logs; both of its backends) on random answers: misses,
    extra boxes, wrong labels, duplicates, empty answers and images, integer boxes whose IoU
    lands on a threshold, and inverted true boxes."""
    import random

    from lit_vr1.metrics.detection import DetectionMetrics, coco_average_precision

    rng = random.Random(0)
    labels = ["red circle", "blue square", "green triangle"]

    def box(integer: bool):
        x, y, w, h = rng.uniform(0, 80), rng.uniform(0, 80), rng.uniform(5, 30), rng.uniform(5, 30)
        if integer:
            x, y, w, h = int(x), int(y), rng.choice([10, 20]), rng.choice([10, 20])
        return (x, y, x + w, y + h)

    for trial in range(6):
        integer = trial % 2 == 1
        gts, preds = [], []
        for _ in range(40):
            gt = [ParsedBox(box(integer), rng.choice(labels)) for _ in range(rng.randint(0, 3))]
            if gt and rng.random() < 0.05:
                x1, y1, x2, y2 = gt[0].box
                gt[0] = ParsedBox((x2, y1, x1, y2), gt[0].label)  # inverted: an object nobody can match
            pred = []
            for g in gt:
                if rng.random() < 0.8:
                    if integer:  # shifted by 0-5 px of a 10 or 20 px side: IoU on 0.5, 0.6, 0.75, ... exactly
                        d = rng.randint(0, 5)
                        x1, y1, x2, y2 = g.box[0] + d, g.box[1], g.box[2] + d, g.box[3]
                    else:
                        x1, y1, x2, y2 = (v + rng.uniform(-3, 3) for v in g.box)
                    label = g.label if rng.random() < 0.85 else rng.choice(labels)
                    pred.append(ParsedBox((x1, y1, max(x2, x1 + 1), max(y2, y1 + 1)), label))
            pred += [ParsedBox(box(integer), rng.choice(labels)) for _ in range(rng.randint(0, 2))]
            if pred and rng.random() < 0.2:
                pred.append(pred[0])
            rng.shuffle(pred)
            gts.append(gt)
            preds.append(pred)
        metric = DetectionMetrics(backend=backend)
        metric.update(preds, gts)
        want = metric.compute()
        got = coco_average_precision(preds, gts)
        for key in ("map", "map_50", "map_75"):
            assert got[key] == pytest.approx(float(want[key]), abs=1e-6), (trial, key)


def test_a_box_without_area_is_a_false_positive():
    from lit_vr1.metrics.detection import coco_average_precision

    hit = ParsedBox((0, 0, 10, 10), RED)
    flat = ParsedBox((0, 0, 0, 10), RED)  # written first: it outranks the hit
    assert coco_average_precision([[flat, hit]], TRUTH)["map_50"] == pytest.approx(0.5 * 0.5)  # red: AP 0.5, blue: 0
