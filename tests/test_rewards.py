import math

import pytest
import torch

from lit_vr1.rewards import IoUReward, RecJsonFormat, Reward, SampleContext, ThinkAnswerFormat, score_all
from lit_vr1.rewards.base import RewardError
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


def test_qwen2_vls_own_grounding_syntax_is_read():
    """Stock Qwen2-VL answers <|box_start|>(x1,y1),(x2,y2)<|box_end|> in its 0-1000 frame: no box was read
    (IoU 0), with the box tokens kept or skipped in decoding."""
    native = "<|object_ref_start|>the cat<|object_ref_end|><|box_start|>(100,100),(500,500)<|box_end|>"
    assert [(b.box, b.label) for b in parse_boxes(native)] == [((100, 100, 500, 500), "the cat")]
    assert first_box("the cat(100,100),(500,500)") == (100, 100, 500, 500)  # the tokens skipped in decoding
    two = ("<|object_ref_start|>cat<|object_ref_end|> and <|object_ref_start|>dog<|object_ref_end|>"
           "<|box_start|>(1,2),(30,40)<|box_end|>")
    assert [b.label for b in parse_boxes(two)] == ["dog"]  # its own reference, not both glued together
    assert parse_boxes("<answer>it rises on (0, 1), (2, 5)</answer>") == []  # pairs in prose are no box
    assert parse_boxes("a path (1,2),(3,4),(5,6)") == []
    norm = IoUReward(box_frame="norm1000")
    sol = ctx(solution="[20, 40, 100, 200]", size=(200, 400))
    assert norm([native, "the cat(100,100),(500,500)"], [sol] * 2) == pytest.approx([1.0, 1.0])


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
    with pytest.raises(RewardError, match="reward 'iou' raised on sample 's1'.*holds no box"):
        r(["[1, 1, 2, 2]"], [ctx(solution="nothing")])


def test_format_rewards_dotall_and_json():
    fmt = ThinkAnswerFormat()
    assert fmt(["<think>line 1\nline 2</think>\n<answer>A</answer>", "<answer>A</answer>", "<think>x</think><answer>A"],
               [ctx()] * 3) == [1.0, 0.0, 0.0]
    rec = RecJsonFormat()
    good = '```json\n[{"bbox_2d": [1, 2, 3, 4], "label": "x"}]\n```'
    assert rec([good, '[{"bbox_2d": [1, 2, 3, 4]}]', "[1, 2, 3, 4]", '[{"bbox_2d": [1, 2]}]'], [ctx()] * 4) == [
        1.0, 1.0, 0.0, 0.0]
    # the first item's own box: an inverted one, or a nested list, no longer passes on a later item's box
    gt = '{"bbox_2d": [20, 10, 80, 60]}'
    assert rec([f'[{{"bbox_2d": [5, 5, 1, 1]}}, {gt}]', '[{"bbox_2d": [[20, 10, 80, 60], [0, 0, 5, 5]]}]',
                '[{"bbox_2d": [1, 2, 3, true]}]', f'[{gt}, {{"junk": 1}}]'], [ctx()] * 4) == [0.0, 0.0, 0.0, 1.0]
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


class Boom(Reward):
    """Raises on samples whose id starts with 'bad' (alone or in a batch)."""

    default_name = "boom"

    def score(self, completions, contexts):
        if any(c.id.startswith("bad") for c in contexts):
            raise KeyError("no field 'answer'")
        return [0.5] * len(completions)


def test_a_raising_reward_names_itself_and_the_sample_or_is_masked_and_counted():
    ctxs = [SampleContext(id="ok1", prompt="p", solution=""),
            SampleContext(id="bad7", prompt="p", solution="", source="f.jsonl:7")]
    with pytest.raises(RewardError, match=r"reward 'boom' raised on sample 'bad7' \(f\.jsonl:7\): KeyError"):
        score_all([Boom()], ["a", "b"], ctxs)
    masked = Boom(on_error="nan")
    scores = score_all([masked, NaNForOdd()], ["a", "b"], ctxs)
    assert scores.per_reward[0, 0] == 0.5 and torch.isnan(scores.per_reward[0, 1])  # the good sample keeps its score
    assert scores.errors == [1, 0] and scores.stats()["reward/boom/errors"] == 1.0
    assert masked.errors == 1
    with pytest.raises(ValueError, match="on_error='skip' is not valid; choose one of raise, nan"):
        Boom(on_error="skip")


def test_routing_by_task_gives_nan_elsewhere_and_infinite_values_are_masked():
    rec_ctx = SampleContext(id="r", prompt="p", solution="[10, 10, 50, 50]", image_sizes=[(100, 100)], task="rec")
    math_ctx = SampleContext(id="m", prompt="p", solution="3", task="math")
    iou = IoUReward(tasks=["rec"])  # would raise on the math sample's solution, which holds no box
    out = iou(["[10, 10, 50, 50]", "3"], [rec_ctx, math_ctx])
    assert out[0] == 1.0 and math.isnan(out[1])

    class Inf(Reward):
        default_name = "inf"

        def score(self, completions, contexts):
            return [math.inf, 1.0]

    scores = score_all([iou, Inf(weight=2.0)], ["[10, 10, 50, 50]", "3"], [rec_ctx, math_ctx])
    assert scores.total.tolist() == [1.0, 2.0] and scores.nonfinite == [0, 1]
    with pytest.raises(ValueError, match="share the name"):
        score_all([IoUReward(), IoUReward()], ["x"], [rec_ctx])


@pytest.mark.parametrize(
    "text, boxes",
    [
        ("[{'bbox_2d': [1, 2, 3, 4], 'label': 'cat'}]", [((1, 2, 3, 4), "cat")]),  # single quotes
        ('[{"bbox_2d": [1, 2, 3, 4], "label": "cat"},]', [((1, 2, 3, 4), "cat")]),  # trailing comma
        ('[{"bbox_2d": [1,2,3,4], "label": "a"}, {"bbox_2d": [5,6,7,8], "label": "b"}',
         [((1, 2, 3, 4), "a"), ((5, 6, 7, 8), "b")]),
        ('[{"bbox_2d": [1,2,3,4], "label": "a"}, {"bbox_2d": [5,6,7', [((1, 2, 3, 4), "a")]),  # truncated item dropped
        ('```json\n[{"bbox_2d": [1,2,3,4], "label": "a"}]', [((1, 2, 3, 4), "a")]),  # unclosed fence
        ('see {"bbox_2d": [1, 2, 3, 4], "label": "a"} and {"label": "b", "bbox_2d": [5, 6, 7, 8]} ]]',
         [((1, 2, 3, 4), "a"), ((5, 6, 7, 8), "b")]),  # broken JSON: the item regex
        ('<answer>[[1, 2, 3, 4], [5, 6, 5, 9]]</answer>', [((1, 2, 3, 4), "")]),  # the zero-width box is dropped
        ('[["cat", [1, 2, 3, 4]]]', [((1, 2, 3, 4), "cat")]),  # Vision-R1 pairs
        ('{"bbox_2d": [1, 2, 3, "x"]}', []),
        ("[[[[", []),
    ],
)
def test_parse_boxes_repairs_small_json_damage(text, boxes):
    assert [(b.box, b.label) for b in parse_boxes(text)] == [(tuple(map(float, b)), label) for b, label in boxes]


def test_predicted_and_solution_boxes_frames():
    from lit_vr1.rewards.boxes import predicted_boxes, solution_boxes

    # a 200x100 original seen as 100x50: input pixel [10, 10, 20, 20] is original [20, 20, 40, 40]
    got = predicted_boxes('[{"bbox_2d": [10, 10, 20, 20], "label": "a"}]', (200, 100), (100, 50), "input_pixels")
    assert got[0].box == (20, 20, 40, 40)
    assert predicted_boxes("[500, 500, 1000, 1000]", (200, 100), None, "norm1000")[0].box == (100, 50, 200, 100)
    with pytest.raises(ValueError, match="needs the image size"):
        predicted_boxes("[1, 1, 5, 5]", None, None, "input_pixels")
    assert predicted_boxes("[1, 1, 5, 5]", None, None, "original_pixels")[0].box == (1, 1, 5, 5)
    # a truncated answer is read after <answer>; without one, boxes named while thinking are not the answer
    assert first_box("<think>not [1, 1, 9, 9]</think><answer>[2, 2, 8, 8]") == (2, 2, 8, 8)
    assert first_box("<think>not [1, 1, 9, 9]</think> nothing") is None
    gt = solution_boxes([["cat", [1, 2, 3, 4]], ["dog", [5, 5, 5, 9]]])  # the data's degenerate box is kept
    assert [(b.box, b.label) for b in gt] == [((1, 2, 3, 4), "cat"), ((5, 5, 5, 9), "dog")]


def test_think_answer_format_is_one_block_each_non_empty_across_lines():
    fmt = ThinkAnswerFormat()
    texts = ["<think>a\nb</think>\n<answer>1</answer>", "<think>a</think><answer>1</answer><think>b</think><answer>2</answer>",
             "<think></think><answer>1</answer>", "<think>a</think><answer> </answer>",
             "<think>a <think>b</think><answer>1</answer>"]
    assert fmt(texts, [ctx()] * len(texts)) == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert IoUReward(tasks="rec").tasks == ["rec"]  # a YAML scalar is one task, not its letters


def test_a_costly_reward_fails_or_is_masked_as_a_whole_batch_without_rescoring():
    calls = []

    class Costly(Boom):
        rescore_singly = False

        def score(self, completions, contexts):
            calls.append(len(completions))
            return super().score(completions, contexts)

    ctxs = [SampleContext(id="ok1", prompt="p", solution="", source="f.jsonl:1"),
            SampleContext(id="bad7", prompt="p", solution="")]
    message = r"reward 'boom' raised on a batch of 2 completions \(first sample 'ok1' \(f\.jsonl:1\)\)"
    with pytest.raises(RewardError, match=message):
        Costly()(["a", "b"], ctxs)
    masked = Costly(on_error="nan")
    assert all(math.isnan(v) for v in masked(["a", "b"], ctxs)) and masked.errors == 2
    assert calls == [2, 2]  # one call each time: never re-sent one by one


def test_a_reward_prints_its_settings_even_when_its_init_skipped_rewards():
    from lit_vr1.rewards import IoUReward
    from lit_vr1.rewards.base import Reward

    assert repr(IoUReward(weight=0.5, tasks=["rec"])) == "IoUReward(name='iou', weight=0.5, tasks=['rec'])"

    class Mine(Reward):
        default_name = "mine"

        def __init__(self):  # no super().__init__()
            pass

    assert repr(Mine()) == "Mine(name='mine', weight=1.0)"
