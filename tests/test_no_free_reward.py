"""No free reward: for every rule-based reward, adversarial answers never score above the
correct answer, and never crash.

Attacks on box answers: duplicates of the true boxes, one box over the whole image,
hundreds of boxes, boxes outside the image, boxes without an area, an empty answer,
repeated text, the answer hidden in the think block. On text answers: every option at
once, repeated answers, the answer only in the think block, empty and runaway text.
Hypothesis draws the ground truth, the image and the attack. A few attacks must cost
strictly (``STRICT``): those the reward was built to stop.

Judge-model rewards (``RewardModelReward``, ``RemoteRewardModel``) are left out: their
score is a model's opinion, with no correct answer to compare with; ``FunctionReward``
is the user's own rule.
"""

from __future__ import annotations

import json
import math

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from lit_vr1.rewards import (
    HFRRF,
    Accuracy,
    CosineLength,
    DetectionMAP,
    DetectionWeightedSum,
    DualFormat,
    IoUReward,
    LocalizationPrecision,
    LocalizationRecall,
    ODLength,
    RecJsonFormat,
    RepetitionPenalty,
    ThinkAnswerFormat,
)
from lit_vr1.rewards.base import SampleContext

FRAME = {"box_frame": "original_pixels"}
BOX_REWARDS = {
    "iou": IoUReward(**FRAME),
    "iou_acc50": IoUReward(threshold=0.5, **FRAME),
    "iou_differentiated": IoUReward(zero_below=0.5, one_above=0.75, **FRAME),
    "map": DetectionMAP(**FRAME),
    "map_50": DetectionMAP(metric="map_50", **FRAME),
    "od_length": ODLength(**FRAME),
    "weighted_sum": DetectionWeightedSum(**FRAME),
    "loc_precision": LocalizationPrecision(**FRAME),
    "loc_recall": LocalizationRecall(**FRAME),
    "loc_precision_released": LocalizationPrecision(variant="released", **FRAME),
    "loc_recall_released": LocalizationRecall(variant="released", **FRAME),
    "dual_format": DualFormat(**FRAME),
    "rec_format": RecJsonFormat(),
    "think_format": ThinkAnswerFormat(),
    "repetition": RepetitionPenalty(),
}
# REC rewards read the first box only: they see one object per image
SINGLE_OBJECT = {"iou", "iou_acc50", "iou_differentiated"}
BOX_ATTACKS = ("duplicates", "whole_image", "hundreds", "outside", "degenerate", "empty", "repeated_text",
               "hidden_in_think", "correct_then_junk")
# (reward, attack) pairs that must cost strictly: what the reward exists to stop
STRICT = (
    {(r, a) for r in ("od_length", "weighted_sum", "loc_precision") for a in ("duplicates", "hundreds", "degenerate")}
    | {(r, a) for r in BOX_REWARDS if r not in {"rec_format", "think_format", "repetition", "dual_format"}
       for a in ("empty", "hidden_in_think", "outside")}
    | {("repetition", "duplicates"), ("repetition", "repeated_text")}
)


def completion(boxes: list[tuple[list[float], str]], think: str = "I look at the image.") -> str:
    items = [{"bbox_2d": [round(v, 1) for v in b], "label": label} for b, label in boxes]
    return f"<think>{think}</think><answer>{json.dumps(items)}</answer>"


@st.composite
def scene(draw):
    """(width, height, ground-truth boxes with labels): 1-3 objects of 8-60% of each side."""
    w, h = draw(st.integers(64, 640)), draw(st.integers(64, 480))
    n = draw(st.integers(1, 3))
    gts = []
    for _ in range(n):
        bw, bh = draw(st.integers(w * 8 // 100, w * 6 // 10)), draw(st.integers(h * 8 // 100, h * 6 // 10))
        x, y = draw(st.integers(0, w - bw)), draw(st.integers(0, h - bh))
        gts.append(([float(x), float(y), float(x + bw), float(y + bh)], draw(st.sampled_from(["cat", "dog"]))))
    # distinct objects: a truth that lists one box twice is itself a repeated answer (the
    # repetition penalty rightly charges it), and no dataset annotates an object twice
    assume(len({(tuple(b), lab) for b, lab in gts}) == len(gts))
    return w, h, gts


def attack(kind: str, w: int, h: int, gts: list, k: int) -> str:
    """An adversarial answer of type ``kind`` for an image of w x h with ground truth ``gts``."""
    right = gts
    if kind == "duplicates":
        return completion([g for g in right for _ in range(k + 2)])  # each true box 2-7 times
    if kind == "whole_image":
        return completion([([0.0, 0.0, float(w), float(h)], right[0][1])])
    if kind == "hundreds":
        step = max(w, h) / 12
        grid = [([i * step, j * step, (i + 1) * step, (j + 1) * step], lab)
                for i in range(12) for j in range(12) for lab in ("cat", "dog")]
        return completion(right + grid)  # the true boxes first, then 288 more
    if kind == "outside":
        return completion([([-w - 50.0, -h - 50.0, -w + 10.0, -h + 10.0], lab) for _, lab in right]
                          + [([w + 10.0, h + 10.0, 2.0 * w, 2.0 * h], right[0][1])])
    if kind == "degenerate":
        return completion([([b[0], b[1], b[0], b[3]], lab) for b, lab in right] + right)
    if kind == "empty":
        return ["", "<think></think><answer></answer>", "<answer>[]</answer>"][k % 3]
    if kind == "repeated_text":
        return completion(right, think=" ".join(["the cat is here"] * (20 + k)))
    if kind == "hidden_in_think":
        return f"<think>{json.dumps([{'bbox_2d': b, 'label': lab} for b, lab in right])}</think><answer>none</answer>"
    if kind == "correct_then_junk":  # the true answer, then more answers after it
        return completion(right) + " " + completion([([0.0, 0.0, float(w), float(h)], "cat")])
    raise AssertionError(kind)


def contexts(w: int, h: int, gts: list, single: bool, n: int) -> list[SampleContext]:
    if single:
        solution = gts[0][0]
    else:
        solution = json.dumps([{"bbox_2d": b, "label": lab} for b, lab in gts])
    return [SampleContext(id="adv", prompt="find them", solution=solution, image_sizes=[(w, h)], input_sizes=[(w, h)],
                          completion_length=10) for _ in range(n)]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scene(), st.integers(0, 5))
def test_no_box_attack_beats_the_correct_answer(world, k):
    w, h, gts = world
    for name, reward in BOX_REWARDS.items():
        single = name in SINGLE_OBJECT
        truth = gts[:1] if single else gts
        answers = [completion(truth)] + [attack(kind, w, h, truth, k) for kind in BOX_ATTACKS]
        scores = reward(answers, contexts(w, h, truth, single, len(answers)))
        assert all(not math.isnan(s) for s in scores), (name, scores)
        best = scores[0]
        for kind, s in zip(BOX_ATTACKS, scores[1:]):
            assert s <= best + 1e-9, f"{name}: the {kind!r} answer scored {s} > the correct answer's {best}"
            if (name, kind) in STRICT:
                assert s < best - 1e-6, f"{name}: the {kind!r} answer scored {s}, no less than the correct {best}"


TEXT_REWARDS = {
    "exact": Accuracy(mode="exact"),
    "numeric": Accuracy(mode="numeric"),
    "choice": Accuracy(mode="choice"),
    "yes_no": Accuracy(mode="yes_no"),
    "hfrrf": HFRRF(mode="numeric"),
    "cosine": CosineLength(max_len=200, mode="numeric"),
}
GOLD = {"exact": "a red circle", "numeric": "42", "choice": "B", "yes_no": "yes", "hfrrf": "42", "cosine": "42"}
HEDGES = {"exact": "a red circle or a blue square", "numeric": "41 42 43", "choice": "A B C D",
          "yes_no": "yes or no", "hfrrf": "41, 42 or 43", "cosine": "40 41 42 43 44"}


def text_attacks(name: str, n: int) -> list[str]:
    gold, hedge = GOLD[name], HEDGES[name]
    return [
        f"<think>think</think><answer>{hedge}</answer>",  # every option at once
        f"<think>think</think><answer>{hedge}</answer><answer>{gold}</answer>" if name != "choice" else
        f"<think>think</think><answer>{gold}</answer>" * (n + 2),  # several answers
        f"<think>the answer is {gold}</think><answer></answer>",  # hidden in the think block
        f"<think>think</think><answer>{(gold + ' ') * (n + 30)}</answer>",  # repeated
        "",
        "<answer>" * 200,
        f"<think>{'x ' * 5000}</think><answer>{gold}</answer>",  # runaway, truncated-length text
    ]


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 10))
def test_no_text_attack_beats_the_correct_answer(n):
    for name, reward in TEXT_REWARDS.items():
        right = f"<think>short</think><answer>{GOLD[name]}</answer>"
        answers = [right] + text_attacks(name, n)
        ctxs = [SampleContext(id="t", prompt="q", solution=f"<answer>{GOLD[name]}</answer>",
                              completion_length=len(a.split())) for a in answers]
        scores = reward(answers, ctxs)
        assert scores[0] > 0, (name, scores)
        for text, s in zip(answers[1:], scores[1:]):
            assert s <= scores[0] + 1e-9, f"{name}: {text[:80]!r} scored {s} > the correct answer's {scores[0]}"
        if name != "exact":  # the hedge lists the right option among wrong ones: not correct
            assert scores[1] < scores[0], f"{name}: hedging with {HEDGES[name]!r} scored {scores[1]}"
