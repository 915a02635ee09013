"""Detection rewards: mAP (checked against pycocotools' COCOeval), odLength and VLM-R1's weighted sum."""

from __future__ import annotations

import contextlib
import io
import json
import math
import random

import numpy as np
import pytest

from lit_vr1.rewards.base import RewardError, SampleContext
from lit_vr1.rewards.boxes import BOX_FRAMES, ParsedBox
from lit_vr1.rewards.detection import (
    DetectionMAP,
    DetectionWeightedSum,
    ODLength,
    detection_map,
    greedy_match,
    iou_matrix,
    label_ids,
    length_factor,
    map_evaluator,
    weighted_sum_score,
)


def P(box, label="cat"):
    return ParsedBox(tuple(float(v) for v in box), label)


def answer(boxes) -> str:
    """A Qwen2.5-VL style completion listing (box, label) pairs."""
    items = [{"bbox_2d": list(b), "label": lab} for b, lab in boxes]
    return f"<think>look</think><answer>```json\n{json.dumps(items)}\n```</answer>"


def ctx(solution, image=(640, 480), input_size=None, task="default", id="s"):
    return SampleContext(id=id, prompt="find", solution=solution, image_sizes=[image] if image else [],
                         input_sizes=[input_size] if input_size else [], task=task)


A = (0, 0, 100, 100)
B = (200, 200, 300, 300)
FAR = (500, 400, 600, 470)
# IoU(A, A72) = (100 * 72) / (100 * 100) = 0.72: a match at 0.50..0.70 (5 of COCO's 10 thresholds), not at 0.75
A72 = (0, 0, 100, 72)


# ---------------------------------------------------------------- mAP, by hand


def test_map_exact_box_is_one():
    assert detection_map([P(A)], [P(A)]) == pytest.approx(1.0)


def test_map_iou_072_counts_half_of_the_thresholds():
    # one object, one box at IoU 0.72: AP = 1 at thresholds 0.50, 0.55, 0.60, 0.65, 0.70 and 0 at 0.75..0.95
    assert detection_map([P(A72)], [P(A)], "map") == pytest.approx(0.5, abs=1e-6)
    assert detection_map([P(A72)], [P(A)], "map_50") == pytest.approx(1.0)
    assert detection_map([P(A72)], [P(A)], "map_75") == pytest.approx(0.0)


def test_map_half_recall_is_51_of_101_points():
    # two objects, one found with precision 1: COCO's 101 recall points 0.00..0.50 (51 of them) have precision 1
    assert detection_map([P(A)], [P(A), P(B)]) == pytest.approx(51 / 101, abs=1e-6)


def test_map_order_of_boxes_ranks_them():
    # constant scores keep the written order. TP then FP: precision 1 at recall 1 -> AP 1.
    assert detection_map([P(A), P(FAR)], [P(A)]) == pytest.approx(1.0)
    # FP then TP: recall reaches 1 only at precision 1/2, which the envelope carries to all points -> AP 0.5
    assert detection_map([P(FAR), P(A)], [P(A)]) == pytest.approx(0.5, abs=1e-6)


def test_map_mean_over_ground_truth_classes():
    # cat: exact (AP 1); dog: IoU 0.72 (AP 0.5) -> (1 + 0.5) / 2
    gts = [P(A, "cat"), P((0, 0, 100, 100), "dog")]
    preds = [P(A, "cat"), P(A72, "dog")]
    assert detection_map(preds, gts) == pytest.approx(0.75, abs=1e-6)


def test_map_labels():
    # the right box with the wrong label finds nothing: the cat class has AP 0
    assert detection_map([P(A, "dog")], [P(A, "cat")]) == 0.0
    # labels are compared stripped and case-insensitively
    assert detection_map([P(A, " Cat ")], [P(A, "cat")]) == pytest.approx(1.0)
    # a box of a class absent from the image is a false positive in a class COCO does not average over
    assert detection_map([P(A, "cat"), P(B, "fish")], [P(A, "cat")]) == pytest.approx(1.0)
    # a mislabelled box ahead of the right one does not lower the cat class's precision either
    assert detection_map([P(A, "dog"), P(A, "cat")], [P(A, "cat")]) == pytest.approx(1.0)
    # but a same-class false positive ahead of it does (see the order test): 0.5
    assert detection_map([P(B, "cat"), P(A, "cat")], [P(A, "cat")]) == pytest.approx(0.5, abs=1e-6)


def test_map_edge_cases():
    assert detection_map([], []) == 1.0  # nothing there, nothing predicted
    assert detection_map([], [P(A)]) == 0.0
    assert detection_map([P(A)], []) == 0.0
    # an inverted ground-truth box becomes an object no box can find: recall at most 1/2
    assert detection_map([P(A)], [P(A), P((50, 50, 40, 40))]) == pytest.approx(51 / 101, abs=1e-6)


def test_label_ids_give_absent_predicted_labels_their_own_id():
    gt, pred = label_ids(["cat", "Dog", "cat"], ["dog ", "fish", "CAT", "fish"])
    assert gt == [0, 1, 0]
    assert pred == [1, 2, 0, 2]


# ---------------------------------------------------------------- mAP against pycocotools


def coco_stats(preds: list[ParsedBox], gts: list[ParsedBox]) -> np.ndarray:
    """COCOeval run directly on one image (see :func:`coco_dataset_stats`)."""
    return coco_dataset_stats([(preds, gts)])


def coco_dataset_stats(images: list[tuple[list[ParsedBox], list[ParsedBox]]], size=(640, 480)) -> np.ndarray:
    """COCOeval run directly over several images: categories = every label seen (stripped,
    lower case), constant scores."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    names = sorted({b.label.strip().lower() for preds, gts in images for b in preds + gts})
    cat = {n: i + 1 for i, n in enumerate(names)}

    def xywh(b):
        return [b[0], b[1], b[2] - b[0], b[3] - b[1]]

    anns, dets = [], []
    for i, (preds, gts) in enumerate(images, start=1):
        anns += [{"id": len(anns) + k + 1, "image_id": i, "category_id": cat[g.label.strip().lower()],
                  "bbox": xywh(g.box), "area": xywh(g.box)[2] * xywh(g.box)[3], "iscrowd": 0} for k, g in enumerate(gts)]
        dets += [{"image_id": i, "category_id": cat[p.label.strip().lower()], "bbox": xywh(p.box), "score": 1.0}
                 for p in preds]
    gt = {"info": {}, "images": [{"id": i, "width": size[0], "height": size[1]} for i in range(1, len(images) + 1)],
          "categories": [{"id": i, "name": n} for n, i in cat.items()], "annotations": anns}
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(dets), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


def random_case(rng: random.Random, w=640, h=480):
    labels = ["cat", "dog", "bird"]
    gts = []
    for _ in range(rng.randint(1, 6)):
        x1, y1 = rng.randint(0, w - 60), rng.randint(0, h - 60)
        gts.append(P((x1, y1, x1 + rng.randint(8, 150), y1 + rng.randint(8, 150)), rng.choice(labels)))
    preds = []
    for g in gts:
        for _ in range(rng.choice([0, 1, 1, 1, 2])):  # missed, found, or found twice
            x1, y1, x2, y2 = (int(v) + rng.randint(-12, 12) for v in g.box)
            if x2 > x1 and y2 > y1:
                label = g.label if rng.random() < 0.8 else rng.choice(labels + ["fish"])
                preds.append(P((x1, y1, x2, y2), label if rng.random() < 0.8 else label.upper() + " "))
    for _ in range(rng.randint(0, 3)):  # false positives anywhere
        x1, y1 = rng.randint(0, w - 60), rng.randint(0, h - 60)
        preds.append(P((x1, y1, x1 + rng.randint(8, 100), y1 + rng.randint(8, 100)), rng.choice(labels + ["fish"])))
    rng.shuffle(preds)
    if not preds:
        preds.append(P(gts[0].box, gts[0].label))
    return preds, gts


@pytest.mark.parametrize("backend", ["faster_coco_eval", "pycocotools"])
@pytest.mark.parametrize("seed", range(12))
def test_map_equals_cocoeval(seed, backend):
    preds, gts = random_case(random.Random(seed))
    stats = coco_stats(preds, gts)  # pycocotools' COCOeval, run directly
    for metric, ref in (("map", stats[0]), ("map_50", stats[1]), ("map_75", stats[2])):
        assert detection_map(preds, gts, metric, map_evaluator(metric, backend)) == pytest.approx(ref, abs=1e-6)


def test_map_reward_on_completions_equals_cocoeval():
    rng = random.Random(1234)
    cases = [random_case(rng) for _ in range(6)]
    completions = [answer([(p.box, p.label) for p in preds]) for preds, _ in cases]
    # half the solutions as VLM-R1 JSON strings, half as Vision-R1 [category, box] pairs
    solutions = [json.dumps([{"bbox_2d": list(g.box), "label": g.label} for g in gts]) if i % 2 else
                 [[g.label, list(g.box)] for g in gts] for i, (_, gts) in enumerate(cases)]
    contexts = [ctx(s) for s in solutions]
    got_map = DetectionMAP(box_frame="original_pixels")(completions, contexts)
    got_50 = DetectionMAP(metric="map_50", box_frame="original_pixels")(completions, contexts)
    for (preds, gts), v, v50 in zip(cases, got_map, got_50):
        stats = coco_stats(preds, gts)
        assert v == pytest.approx(stats[0], abs=1e-6)
        assert v50 == pytest.approx(stats[1], abs=1e-6)
    # the reused evaluator is reset between completions: a case scored alone gives the same number
    assert DetectionMAP(box_frame="original_pixels")(completions[3:4], contexts[3:4])[0] == pytest.approx(got_map[3])
    # and the cases are not all trivial
    assert len({round(v, 4) for v in got_map}) > 2


# ---------------------------------------------------------------- odLength


def test_length_factor():
    assert length_factor(2, 4) == 0.5
    assert length_factor(3, 2) == 1.0
    assert length_factor(3, 0) == 1.0
    assert length_factor(0, 2) == 0.0


def test_od_length_by_hand():
    sol = json.dumps([{"bbox_2d": list(A), "label": "cat"}])
    r = ODLength(box_frame="original_pixels")
    values = r(
        [
            answer([(A, "cat")]),  # mAP 1, 1 box for 1 object -> 1
            answer([(A, "cat"), (FAR, "cat")]),  # mAP 1 (TP first) * min(1, 1/2) -> 0.5
            answer([(FAR, "cat"), (A, "cat")]),  # mAP 0.5 (FP first) * 1/2 -> 0.25
            answer([(A, "cat"), (B, "fish"), (FAR, "dog")]),  # mAP 1 (absent classes cost nothing) * 1/3
            "<answer>none</answer>",  # no boxes -> 0
        ],
        [ctx(sol)] * 5,
    )
    assert values == pytest.approx([1.0, 0.5, 0.25, 1 / 3, 0.0], abs=1e-6)
    assert r.name == "od_length"
    # an image without objects and an answer without boxes: 1
    assert r(["<answer>[]</answer>"], [ctx("[]")]) == [1.0]
    assert r([answer([(A, "cat")])], [ctx("[]")]) == [0.0]


# ---------------------------------------------------------------- weighted sum


def test_iou_matrix_and_greedy_match():
    ious = iou_matrix([A72, FAR], [A, B])
    assert ious.shape == (2, 2)
    assert ious[0, 0] == pytest.approx(0.72)
    assert ious[0, 1] == 0.0 and ious[1, 0] == 0.0
    # highest IoU first, not prediction order: P1 prefers G2 (0.667) but P2 fits G2 better (0.818)
    g1, g2 = (0, 0, 100, 100), (50, 0, 150, 100)
    p1, p2 = (30, 0, 130, 100), (60, 0, 160, 100)
    m = iou_matrix([p1, p2], [g1, g2])
    # IoU(p1,g1) = 70*100 / 13000 = 7/13; IoU(p1,g2) = 80*100/12000 = 2/3; IoU(p2,g2) = 90*100/11000 = 9/11
    assert m[0, 0] == pytest.approx(7 / 13) and m[0, 1] == pytest.approx(2 / 3) and m[1, 1] == pytest.approx(9 / 11)
    assert greedy_match(m, 0.5) == [(1, 1, pytest.approx(9 / 11)), (0, 0, pytest.approx(7 / 13))]
    # ties go to the earlier prediction
    assert greedy_match(np.array([[0.6], [0.6]]), 0.5) == [(0, 0, 0.6)]
    assert greedy_match(np.array([[0.49]]), 0.5) == []


def test_weighted_sum_by_hand():
    # one box at IoU 0.72: position 0.72, completeness 1 -> 0.7 * 0.72 + 0.3
    assert weighted_sum_score([P(A72)], [P(A)]) == pytest.approx(0.7 * 0.72 + 0.3)
    # IoU 0.4 < 0.5: no match; position 0, completeness 1 - (1/1 + 1/1) / 2 = 0
    assert weighted_sum_score([P((0, 0, 100, 40))], [P(A)]) == 0.0
    # greedy case above: position (9/11 + 7/13) / 2 = 97/143, completeness 1
    g = [P((0, 0, 100, 100)), P((50, 0, 150, 100))]
    p = [P((30, 0, 130, 100)), P((60, 0, 160, 100))]
    assert weighted_sum_score(p, g) == pytest.approx(0.7 * 97 / 143 + 0.3)
    # one of two objects found exactly, plus one false alarm:
    # position (1 + 0) / 2 = 0.5; completeness 1 - (1/2 + 1/2) / 2 = 0.5 -> 0.35 + 0.15
    assert weighted_sum_score([P(A), P(FAR)], [P(A), P(B)]) == pytest.approx(0.5)
    # weights are normalised by their sum
    assert weighted_sum_score([P(A72)], [P(A)], 1.0, 0.0) == pytest.approx(0.72)
    assert weighted_sum_score([P(A72)], [P(A)], 2.0, 2.0) == pytest.approx((0.72 + 1) / 2)


def test_weighted_sum_mislabel():
    gts = [P(A, "cat"), P(B, "dog")]
    preds = [P((0, 0, 100, 80), "cat"), P(B, "cat"), P(FAR, "dog")]
    # greedy: (pred1, B) IoU 1 first, wrong label -> counts 0; then (pred0, A) IoU 0.8; pred2 unmatched
    # position = (0.8 + 0) / 2 = 0.4
    # VLM-R1: the mislabelled pair is matched: misses 0/2, false alarms 1/3 -> completeness 1 - (1/3)/2 = 5/6
    assert weighted_sum_score(preds, gts) == pytest.approx(0.7 * 0.4 + 0.3 * 5 / 6)  # 0.53
    # strict: it is a miss and a false alarm: 1 - (1/2 + 2/3) / 2 = 5/12
    assert weighted_sum_score(preds, gts, mislabel_is_error=True) == pytest.approx(0.7 * 0.4 + 0.3 * 5 / 12)  # 0.405
    # case and spaces do not make a mislabel
    assert weighted_sum_score([P(A, " CAT")], [P(A, "cat")]) == pytest.approx(1.0)


def test_weighted_sum_edge_cases():
    assert weighted_sum_score([], []) == 1.0
    assert weighted_sum_score([P(A)], []) == 0.0
    assert weighted_sum_score([], [P(A)]) == 0.0
    with pytest.raises(ValueError, match="completeness_weight"):
        DetectionWeightedSum(position_weight=0.0, completeness_weight=0.0)
    with pytest.raises(ValueError, match="iou_threshold"):
        DetectionWeightedSum(iou_threshold=0.0)


def test_weighted_sum_reward_on_completions():
    sol = [["cat", list(A)], ["dog", list(B)]]  # Vision-R1's pairs
    r = DetectionWeightedSum(box_frame="original_pixels")
    out = r([answer([((0, 0, 100, 80), "cat"), (B, "cat"), (FAR, "dog")]), answer([(A, "cat"), (B, "Dog")]),
             "no boxes"], [ctx(sol)] * 3)
    assert out == pytest.approx([0.53, 1.0, 0.0])
    assert r.name == "det_weighted_sum"


# ---------------------------------------------------------------- frames, rescaling, routing


@pytest.mark.parametrize("reward_cls", [DetectionMAP, ODLength, DetectionWeightedSum])
def test_input_pixels_of_a_half_size_input_score_as_original_pixels(reward_cls):
    # original 400x300, the model saw 200x150: its box (10, 10, 50, 35) is (20, 20, 100, 70) in the original
    sol = json.dumps([{"bbox_2d": [20, 20, 100, 70], "label": "cat"}, {"bbox_2d": [150, 100, 300, 280], "label": "dog"}])
    in_input = answer([((10, 10, 50, 35), "cat"), ((80, 55, 140, 130), "dog")])
    in_original = answer([((20, 20, 100, 70), "cat"), ((160, 110, 280, 260), "dog")])
    c = ctx(sol, image=(400, 300), input_size=(200, 150))
    scaled = reward_cls(box_frame="input_pixels")([in_input], [c])[0]
    direct = reward_cls(box_frame="original_pixels")([in_original], [c])[0]
    assert scaled == pytest.approx(direct)
    assert 0.0 < direct < 1.0  # the dog box is off: a value rescaling errors would move
    # read in the wrong frame the same answer scores differently
    assert reward_cls(box_frame="original_pixels")([in_input], [c])[0] != pytest.approx(direct)
    # norm1000 maps through the original size: (20, 20, 100, 70) of 400x300 is (50, 66.67, 250, 233.33)
    in_norm = answer([((50, 200 / 3, 250, 700 / 3), "cat"), ((400, 1100 / 3, 700, 2600 / 3), "dog")])
    assert reward_cls(box_frame="norm1000")([in_norm], [c])[0] == pytest.approx(direct, abs=1e-6)


def test_input_size_defaults_to_original():
    sol = json.dumps([{"bbox_2d": list(A), "label": "cat"}])
    assert DetectionMAP()([answer([(A, "cat")])], [ctx(sol)]) == [pytest.approx(1.0)]


@pytest.mark.parametrize("reward_cls", [DetectionMAP, ODLength, DetectionWeightedSum])
def test_frame_validation_and_missing_image(reward_cls):
    with pytest.raises(ValueError) as err:
        reward_cls(box_frame="pixels")
    assert all(f in str(err.value) for f in BOX_FRAMES)
    sol = json.dumps([{"bbox_2d": list(A), "label": "cat"}])
    no_image = ctx(sol, image=None)
    with pytest.raises(RewardError, match="image"):
        reward_cls()([answer([(A, "cat")])], [no_image])
    masked = reward_cls(on_error="nan")
    assert math.isnan(masked([answer([(A, "cat")])], [no_image])[0]) and masked.errors == 1
    # original pixels need no image
    assert reward_cls(box_frame="original_pixels")([answer([(A, "cat")])], [no_image]) == [pytest.approx(1.0)]


def test_map_metric_names_and_validation():
    assert DetectionMAP().name == "map"
    assert DetectionMAP(metric="map_75").name == "map_75"
    assert DetectionMAP(metric="map_50", name="ovd_map").name == "ovd_map"
    with pytest.raises(ValueError, match="map_50"):
        DetectionMAP(metric="map50")
    with pytest.raises(ValueError, match="map_75"):
        detection_map([P(A)], [P(A)], metric="ap")


def test_tasks_route_and_weight():
    sol = json.dumps([{"bbox_2d": list(A), "label": "cat"}])
    r = DetectionMAP(tasks=["ovd"], weight=2.0)
    out = r([answer([(A, "cat")])] * 2, [ctx(sol, task="ovd"), ctx(sol, task="rec")])
    assert out[0] == pytest.approx(1.0) and math.isnan(out[1])
    assert r.weight == 2.0


def test_identical_answers_share_one_evaluation(monkeypatch):
    import lit_vr1.rewards.detection as det

    calls = []
    real = det.detection_map
    monkeypatch.setattr(det, "detection_map", lambda *a, **k: calls.append(1) or real(*a, **k))
    sol = json.dumps([{"bbox_2d": list(A), "label": "cat"}, {"bbox_2d": list(B), "label": "cat"}])
    out = DetectionMAP(box_frame="original_pixels")([answer([(A, "cat")])] * 4 + [answer([(B, "cat")])], [ctx(sol)] * 5)
    assert out == pytest.approx([51 / 101] * 5, abs=1e-6)
    assert len(calls) == 2


def test_backend_validation():
    with pytest.raises(ValueError, match="pycocotools"):
        DetectionMAP(backend="coco")
