"""Exactness where we claim it and the seeds' released behaviour where users expect it:
COCO's own thresholds (mAP equals COCOeval), float64 IoU, boxes without an area as false
positives, Vision-R1's released localisation rewards, VLM-R1's OVD cosine mode."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
from test_rewards_detection import A, B, P, answer, coco_dataset_stats, coco_stats, ctx, random_case
from torchvision.ops import box_iou, generalized_box_iou

from lit_vr1.metrics import DetectionMetrics
from lit_vr1.rewards.base import SampleContext
from lit_vr1.rewards.boxes import first_box, flatten_box, predicted_boxes
from lit_vr1.rewards.detection import (
    COCO_REC_THRESHOLDS,
    DetectionMAP,
    DetectionWeightedSum,
    ODLength,
    detection_map,
    map_evaluator,
)
from lit_vr1.rewards.length import CosineLength
from lit_vr1.rewards.rec import IoUReward, rec_ious
from lit_vr1.rewards.vision_r1 import (
    LocalizationPrecision,
    LocalizationRecall,
    ThresholdSchedule,
    ThresholdStage,
    released_matched_gious,
    released_precision,
    released_recall,
)

BACKENDS = ["faster_coco_eval", "pycocotools"]
METRICS = ("map", "map_50", "map_75")


# --------------------------------------------------------------- 1. mAP equals COCOeval


def row(n: int) -> list:
    """n disjoint 40x40 cats in a row."""
    return [P((10 + 50 * i, 10, 50 + 50 * i, 50)) for i in range(n)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("found, total", [(4, 5), (3, 5), (8, 10), (1, 5)])
def test_recall_on_a_grid_point_keeps_its_point(found, total, backend):
    # recall found/total lands exactly on one of COCO's 101 recall points; torchmetrics'
    # float32 default thresholds (0.6000000238 for 0.6) dropped that point: 0.792079 for 4 of 5
    gts = row(total)
    want = (round(100 * found / total) + 1) / 101  # precision 1 up to the recall, 0 after
    assert coco_stats(gts[:found], gts)[0] == pytest.approx(want, abs=1e-6)
    for metric in METRICS:
        assert detection_map(gts[:found], gts, metric, map_evaluator(metric, backend)) == pytest.approx(want, abs=1e-6)
    assert COCO_REC_THRESHOLDS[60] == 0.6  # COCO's float64 grid, not float32's 0.6000000238


@pytest.mark.parametrize("backend", BACKENDS)
def test_map_reward_equals_cocoeval_on_300_random_images(backend):
    rng = random.Random(2026)
    evaluators = {m: map_evaluator(m, backend) for m in METRICS}
    worst = 0.0
    for _ in range(300):
        preds, gts = random_case(rng)
        if rng.random() < 0.3:  # exact hits of a subset: recalls on COCO's grid
            preds = [P(g.box, g.label) for g in gts[: rng.randint(0, len(gts))]] + preds[: rng.randint(0, 2)]
            preds = preds or [P(gts[0].box, gts[0].label)]
        stats = coco_stats(preds, gts)
        for i, metric in enumerate(METRICS):
            worst = max(worst, abs(detection_map(preds, gts, metric, evaluators[metric]) - stats[i]))
    assert worst < 1e-6


@pytest.mark.parametrize("backend", BACKENDS)
def test_detection_evaluation_equals_cocoeval_on_the_seed_103_dataset(backend):
    # the dataset the README once left out: AP50 0.3480 against COCOeval's 0.3497 before
    rng = random.Random(103)
    images = [random_case(rng) for _ in range(6)]
    m = DetectionMetrics(backend=backend)
    m.update([p for p, _ in images], [g for _, g in images])
    out = m.compute()
    stats = coco_dataset_stats(images)
    for i, metric in enumerate(METRICS):
        assert float(out[metric]) == pytest.approx(stats[i], abs=1e-6)


# --------------------------------------------------------------- 2. IoU in float64


def test_rec_iou_is_float64_exact():
    rng = random.Random(5)
    preds, gts, comps, ctxs = [], [], [], []
    for i in range(200):
        x, y = rng.uniform(0, 500), rng.uniform(0, 400)
        g = (x, y, x + rng.uniform(1, 300), y + rng.uniform(1, 300))
        p = tuple(v + rng.uniform(-20, 20) for v in g)
        if p[2] <= p[0] or p[3] <= p[1]:
            continue
        preds.append(p)
        gts.append(g)
        comps.append(json.dumps([{"bbox_2d": list(p), "label": "x"}]))
        ctxs.append(SampleContext(id=str(i), prompt="", solution=list(g), image_sizes=[(1000, 1000)]))
    got = torch.tensor(rec_ious(comps, ctxs, "original_pixels"), dtype=torch.float64)
    want = box_iou(torch.tensor(preds, dtype=torch.float64), torch.tensor(gts, dtype=torch.float64)).diagonal()
    assert (got - want).abs().max() < 1e-12  # float32 was off by up to 1.3e-5


# --------------------------------------------------------------- 3. boxes without an area are false positives


DEGENERATE = [(50, 50, 50, 90), (80, 80, 10, 10), (5, 5, 5, 5)]  # zero width, inverted, a point


def test_flatten_box():
    assert flatten_box((1, 2, 3, 4)) == (1, 2, 3, 4)
    assert flatten_box((80, 80, 10, 10)) == (80, 80, 80, 80)
    assert flatten_box((0, 0, math.inf, 5)) == (0.0, 0.0, 0.0, 0.0)
    boxes = predicted_boxes(json.dumps([[10, 10, 5, 20], [1, 1, 4, 4]]), (100, 100), (50, 50), "input_pixels",
                            keep_degenerate=True)
    assert [b.box for b in boxes] == [(20, 20, 20, 40), (2, 2, 8, 8)]


@pytest.mark.parametrize("reward", [DetectionMAP(box_frame="original_pixels"),
                                    DetectionMAP(metric="map_50", box_frame="original_pixels"),
                                    ODLength(box_frame="original_pixels"),
                                    DetectionWeightedSum(box_frame="original_pixels"),
                                    LocalizationPrecision(box_frame="original_pixels")],
                         ids=lambda r: r.name)
def test_degenerate_boxes_cost_like_false_positives(reward):
    gt = json.dumps([{"bbox_2d": list(A), "label": "cat"}, {"bbox_2d": list(B), "label": "cat"}])
    right = answer([(A, "cat"), (B, "cat")])
    # the degenerate boxes written first rank above the true ones (mAP), or count as
    # predictions (length, completeness, precision): each variant must score below the answer alone
    padded = answer([(d, "cat") for d in DEGENERATE] + [(A, "cat"), (B, "cat")])
    c = ctx(gt)
    full, worse = reward([right, padded], [c, c])
    assert full == pytest.approx(1.0)
    assert worse < full - 0.05


def test_degenerate_first_box_is_a_wrong_rec_answer():
    c = SampleContext(id="r", prompt="", solution=[10, 10, 50, 50], image_sizes=[(100, 100)])
    text = json.dumps([{"bbox_2d": [30, 30, 30, 60], "label": "x"}, {"bbox_2d": [10, 10, 50, 50], "label": "x"}])
    assert first_box(text) == (30, 30, 30, 60)
    assert IoUReward(box_frame="original_pixels")([text], [c]) == [0.0]  # the later box does not stand in


# --------------------------------------------------------------- 4. Vision-R1's released localisation rewards

GT2 = json.dumps([["cat", [0, 0, 100, 100]], ["dog", [200, 0, 300, 100]]])


def vctx(step=0):
    return SampleContext(id="v", prompt="", solution=GT2, image_sizes=[(400, 200)], global_step=step)


def boxes_answer(*items):
    return json.dumps([{"bbox_2d": list(b), "label": lab} for b, lab in items])


def test_released_matching_uses_l1_label_and_giou():
    # P0 sits 10 px right of the cat; P1 lies between the two objects, nearer the dog.
    # L1 cost P0-cat = 20, P0-dog = 380; P1=[150,0,250,100]: L1 to cat 300, to dog 100.
    preds = [P((10, 0, 110, 100), "cat"), P((150, 0, 250, 100), "dog")]
    gts = [P((0, 0, 100, 100), "cat"), P((200, 0, 300, 100), "dog")]
    got = released_matched_gious(preds, gts)
    want = generalized_box_iou(torch.tensor([p.box for p in preds], dtype=torch.float64),
                               torch.tensor([g.box for g in gts], dtype=torch.float64)).diagonal().tolist()
    assert got == pytest.approx(want)
    # P0-cat: IoU 90*100 / (110*100) = 0.8182 (the hull is the union): GIoU equals IoU
    assert got[0] == pytest.approx(9000 / 11000)
    # P1-dog: IoU 50/150 = 1/3, hull [150, 300] = union: GIoU 1/3
    assert got[1] == pytest.approx(1 / 3)
    # a far box pairs anyway (min(P, G) pairs) and gives a negative GIoU:
    # [0,0,10,10] vs [200,0,300,100]: union 10100, hull 300*100 = 30000 -> 0 - (30000-10100)/30000
    far = released_matched_gious([P((0, 0, 10, 10), "dog")], [gts[1]])
    assert far == pytest.approx([-(30000 - 10100) / 30000])


def test_released_precision_and_recall_by_hand():
    st1 = ThresholdStage(0, 0.5, 0.5, 0.75)
    st2 = ThresholdStage(1500, 0.75, 0.75, 0.9)
    # precision: mean over matched pairs of GIoU squashed at xi1/xi2, xi2 strict
    assert released_precision([0.8, 0.6], 5, 2, st1) == pytest.approx((1.0 + 0.6) / 2)  # extra boxes free
    assert released_precision([0.75], 1, 1, st1) == pytest.approx(0.75)  # = xi2 keeps its value (paper: 1)
    assert released_precision([0.8], 1, 1, st2) == pytest.approx(0.8)
    assert released_precision([0.4, -0.2], 2, 2, st1) == 0.0
    assert released_precision([], 0, 2, st1) == 0.0 and released_precision([], 0, 0, st1) == 1.0
    # recall: a pair above xi0 counts 1, equal keeps its value; recall squashed at 0.5/0.75 always
    assert released_recall([0.9, 0.6], 2, 2, st1, st1) == 1.0
    assert released_recall([0.9, 0.6, 0.1], 3, 4, st1, st1) == pytest.approx(0.5)  # 2/4, kept
    assert released_recall([0.9, 0.5], 2, 2, st1, st1) == pytest.approx(0.75)  # (1 + 0.5)/2 = 0.75 = xi2: kept
    assert released_recall([0.9, 0.6], 2, 2, st2, st1) == pytest.approx(0.5)  # stage 2: 0.6 < 0.75 -> 1/2
    assert released_recall([0.9], 1, 3, st1, st1) == 0.0  # 1/3 < 0.5


def test_released_variant_of_the_rewards_against_the_paper():
    schedule = ThresholdSchedule.vision_r1(advanced_from=1500)
    # the cat exactly, the dog exactly, and three far boxes
    text = boxes_answer(((0, 0, 100, 100), "cat"), ((200, 0, 300, 100), "dog"), ((350, 150, 360, 160), "cat"),
                        ((350, 150, 370, 170), "cat"), ((0, 150, 10, 160), "dog"))
    for step in (0, 2000):
        c = vctx(step)
        paper = LocalizationPrecision(schedule=schedule, box_frame="original_pixels")([text], [c])[0]
        released = LocalizationPrecision(schedule=schedule, box_frame="original_pixels", variant="released")([text], [c])[0]
        assert paper == pytest.approx(2 / 5)  # the paper's sum over all P predictions: padding costs
        assert released == pytest.approx(1.0)  # the released mean over min(P, G) pairs: padding is free
    recall = LocalizationRecall(schedule=schedule, box_frame="original_pixels", variant="released")
    assert recall([text], [vctx(0)]) == [1.0]
    # coordinates truncate to integers in the model's frame (the released int() cast)
    shifted = boxes_answer(((0.9, 0.9, 100.9, 100.9), "cat"), ((200, 0, 300, 100), "dog"))
    assert LocalizationPrecision(box_frame="original_pixels", variant="released")([shifted], [vctx()]) == [1.0]
    with pytest.raises(ValueError, match="variant"):
        LocalizationPrecision(variant="official")
    with pytest.raises(ValueError, match="match_labels"):
        LocalizationRecall(variant="released", match_labels=True)


# --------------------------------------------------------------- 5. VLM-R1's OVD cosine mode


def test_cosine_length_decides_correctness_by_a_detection_score():
    gt = json.dumps([{"bbox_2d": list(A), "label": "cat"}, {"bbox_2d": list(B), "label": "cat"}])
    reward = CosineLength(max_len=100, correct_by=DetectionMAP(metric="map_50", box_frame="original_pixels"),
                          correct_at=0.7)
    c = ctx(gt)
    c.completion_length = 0
    both = answer([(A, "cat"), (B, "cat")])  # AP50 1.0 >= 0.7: correct branch, 1.0 at length 0
    one = answer([(A, "cat")])  # AP50 0.505 < 0.7: wrong branch, -0.5 at length 0
    assert reward([both, one], [c, c]) == pytest.approx([1.0, -0.5])
    c50 = ctx(gt)
    c50.completion_length = 50
    assert reward([both, one], [c50, c50]) == pytest.approx([0.75, -0.25])
    # where the score reward does not apply, neither does the cosine reward
    routed = CosineLength(max_len=100, correct_by=DetectionMAP(box_frame="original_pixels", tasks=["od"]))
    assert math.isnan(routed([both], [c])[0])
    with pytest.raises(ValueError, match="correct_by"):
        CosineLength(correct_by="map")


def test_rec_iou_warns_once_about_multi_box_solutions():
    reward = IoUReward(box_frame="original_pixels")
    multi = SampleContext(id="m", prompt="", solution=json.dumps([{"bbox_2d": [0, 0, 5, 5]}, {"bbox_2d": [6, 6, 9, 9]}]),
                          image_sizes=[(10, 10)], source="d.jsonl:3")
    with pytest.warns(UserWarning, match=r"'m' \(d.jsonl:3\) has 2 solution boxes"):
        reward(["[0, 0, 5, 5]"], [multi])
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert reward(["[0, 0, 5, 5]"], [multi]) == [1.0]  # once per reward
