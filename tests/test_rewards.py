import math

import pytest
import torch

from lit_vr1.rewards import IoUReward, RecJsonFormat, Reward, SampleContext, ThinkAnswerFormat, score_all
from lit_vr1.rewards.boxes import first_box, parse_boxes, rescale_box, to_original


def ctx(solution="[10, 10, 50, 50]", size=(100, 100), input_size=(100, 100)):
    return SampleContext(id="s1", prompt="p", solution=solution, image_sizes=[size], input_sizes=[input_size])


def test_parse_boxes_json_fence_answer_and_fallback():
    assert first_box('<answer>[{"bbox_2d": [1, 2, 3, 4], "label": "a"}]</answer>') == (1, 2, 3, 4)
    assert first_box('```json\n[{"bbox_2d": [5, 6, 7, 8], "label": "a"}]\n```') == (5, 6, 7, 8)
    assert first_box("<think>maybe [0, 0, 1, 1]</think><answer>the box is [9, 8, 20, 30]</answer>") == (9, 8, 20, 30)
    assert first_box("the box is (1, 2)") is None
    boxes = parse_boxes('[{"bbox_2d": [1, 2, 3, 4], "label": "a"}, {"bbox_2d": [5, 6, 7, 8], "label": "b"}]')
    assert [b.label for b in boxes] == ["a", "b"]


def test_rescale_and_frames():
    assert rescale_box((10, 20, 30, 40), (100, 200), (200, 100)) == (20, 10, 60, 20)
    assert to_original((100, 100, 500, 500), "norm1000", (28, 28), (200, 400)) == (20, 40, 100, 200)
    assert to_original((0.5, 0.5, 1, 1), "norm1", (28, 28), (200, 400)) == (100, 200, 200, 400)
    with pytest.raises(ValueError, match="input_pixels, original_pixels, norm1000, norm1"):
        to_original((0, 0, 1, 1), "pixels", (1, 1), (1, 1))


def test_iou_reward_hand_computed_and_rescaled():
    r = IoUReward()
    # same box: 1; half overlap: [10,10,50,50] vs [30,10,70,50]: inter 20*40, union 2*1600-800
    out = r(["[10, 10, 50, 50]", "[30, 10, 70, 50]", "no box", "[50, 50, 10, 10]"], [ctx()] * 4)
    assert out == pytest.approx([1.0, 800 / 2400, 0.0, 0.0])
    # model saw a 50x50 input of a 100x100 original: [5,5,25,25] in input pixels is [10,10,50,50]
    assert r(["[5, 5, 25, 25]"], [ctx(input_size=(50, 50))]) == pytest.approx([1.0])
    thresholded = IoUReward(threshold=0.5)
    assert thresholded(["[10, 10, 50, 50]", "[30, 10, 70, 50]"], [ctx()] * 2) == [1.0, 0.0]
    with pytest.raises(ValueError, match="holds no box"):
        r(["[1, 1, 2, 2]"], [ctx(solution="nothing")])


def test_format_rewards_dotall_and_json():
    fmt = ThinkAnswerFormat()
    assert fmt(["<think>line 1\nline 2</think>\n<answer>A</answer>", "<answer>A</answer>", "<think>x</think><answer>A"],
               [ctx()] * 3) == [1.0, 0.0, 0.0]
    rec = RecJsonFormat()
    good = '```json\n[{"bbox_2d": [1, 2, 3, 4], "label": "x"}]\n```'
    assert rec([good, '[{"bbox_2d": [1, 2, 3, 4]}]', "[1, 2, 3, 4]", '[{"bbox_2d": [1, 2]}]'], [ctx()] * 4) == [
        1.0, 1.0, 0.0, 0.0]
    rec_think = RecJsonFormat(require_think=True)
    assert rec_think([good, f"<think>ok</think><answer>{good}</answer>"], [ctx()] * 2) == [0.0, 1.0]


class NaNForOdd(Reward):
    default_name = "odd"

    def score(self, completions, contexts):
        return [math.nan if i % 2 else 1.0 for i in range(len(completions))]


def test_weighted_sum_skips_nan():
    scores = score_all([NaNForOdd(weight=2.0), IoUReward(weight=1.0)], ["[10, 10, 50, 50]", "x"], [ctx()] * 2)
    assert scores.total.tolist() == [3.0, 0.0]
    stats = scores.stats()
    assert stats["reward/odd/mean"] == 1.0 and stats["reward/iou/mean"] == 0.5
    with pytest.raises(ValueError, match="model.rewards"):
        score_all([], ["x"], [ctx()])
    assert torch.isnan(scores.per_reward[0, 1])


def test_differentiated_iou_zeroes_loose_boxes_and_fills_tight_ones():
    from lit_vr1.rewards.rec import differentiate

    assert differentiate(0.2, 0.3, 0.75) == 0.0
    assert differentiate(0.5, 0.3, 0.75) == 0.5
    assert differentiate(0.8, 0.3, 0.75) == 1.0
    assert differentiate(0.2, None, None) == 0.2
    reward = IoUReward(zero_below=0.3, one_above=0.75)
    # IoU with [10, 10, 50, 50]: exact 1.0 -> 1; [10, 10, 50, 30] -> 0.5 kept; [40, 40, 90, 90] -> 0.04 -> 0
    out = reward(['[10, 10, 50, 50]', '[10, 10, 50, 30]', '[40, 40, 90, 90]'], [ctx()] * 3)
    assert out == pytest.approx([1.0, 0.5, 0.0], abs=1e-6)
    with pytest.raises(ValueError, match="either threshold or zero_below/one_above"):
        IoUReward(threshold=0.5, zero_below=0.3)
    with pytest.raises(ValueError, match="must not exceed"):
        IoUReward(zero_below=0.8, one_above=0.5)
