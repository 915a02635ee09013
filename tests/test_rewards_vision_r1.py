"""Vision-R1's localisation rewards (lit_vr1.rewards.vision_r1) against hand-computed cases."""

import json

import pytest

from lit_vr1.rewards.base import RewardError, SampleContext
from lit_vr1.rewards.boxes import ParsedBox
from lit_vr1.rewards.vision_r1 import (
    DualFormat,
    LocalizationPrecision,
    LocalizationRecall,
    ThresholdSchedule,
    ThresholdStage,
    hungarian_match,
    localization_precision,
    localization_recall,
)

# ground truth used throughout: two 100x100 objects, in original pixels
GT = [{"bbox_2d": [0, 0, 100, 100], "label": "cat"}, {"bbox_2d": [200, 0, 300, 100], "label": "dog"}]
GT_JSON = json.dumps(GT)
TWO_STAGES = ThresholdSchedule.vision_r1(advanced_from=100)  # 0.5/0.5/0.75, then 0.75/0.75/0.9 from step 100


def ctx(solution=GT_JSON, step=0, size=(400, 200), input_size=None, **metadata):
    return SampleContext(id="s1", prompt="p", solution=solution, image_sizes=[size],
                         input_sizes=[input_size] if input_size else [], global_step=step, metadata=metadata)


def answer(*boxes, label="cat"):
    return json.dumps([{"bbox_2d": list(b), "label": label} for b in boxes])


# --------------------------------------------------------------------------- matching


def test_hungarian_beats_greedy():
    # one row of height 10, so IoU = (overlap width * 10) / union area.
    # A=[0,10], B=[10,20] (areas 100); P1=[3,15] (area 120), P2=[0,0,10,4] (area 40).
    # P1-A: inter 7*10=70, union 120+100-70=150 -> 7/15 = 0.467 (the largest entry)
    # P1-B: inter 5*10=50, union 120+100-50=170 -> 5/17 = 0.294
    # P2-A: inter 40, union 100 -> 0.4;  P2-B: 0
    # greedy takes P1-A first, leaving P2-B (0): total 0.467;
    # Hungarian takes P1-B + P2-A: 0.294 + 0.4 = 0.694.
    a, b = (0, 0, 10, 10), (10, 0, 20, 10)
    p1, p2 = (3, 0, 15, 10), (0, 0, 10, 4)
    matches = hungarian_match([p1, p2], [a, b])
    assert [(p, g) for p, g, _ in matches] == [(0, 1), (1, 0)]
    assert [iou for _, _, iou in matches] == pytest.approx([5 / 17, 0.4])


def test_hungarian_edges_and_labels():
    assert hungarian_match([], [(0, 0, 1, 1)]) == []
    assert hungarian_match([(0, 0, 1, 1)], []) == []
    # no overlap: no pair at all
    assert hungarian_match([(0, 0, 1, 1)], [(5, 5, 6, 6)]) == []
    # three predictions, one object: only the best one is matched
    assert hungarian_match([(0, 0, 5, 10), (0, 0, 10, 10), (0, 0, 10, 5)], [(0, 0, 10, 10)]) == [(1, 0, 1.0)]
    # labels: the perfect box says "dog" for a cat; with match_labels it may only pair with the dog
    preds = [ParsedBox((0, 0, 10, 10), "Dog"), ParsedBox((0, 0, 10, 5), "cat")]
    gts = [ParsedBox((0, 0, 10, 10), "cat"), ParsedBox((20, 0, 30, 10), "dog")]
    assert hungarian_match(preds, gts) == [(0, 0, 1.0)]
    assert hungarian_match(preds, gts, match_labels=True) == [(1, 0, 0.5)]  # 50 / 100


# --------------------------------------------------------------------------- schedule


def test_schedule_at_and_differentiation():
    s = TWO_STAGES
    assert s.at(0) == ThresholdStage(0, 0.5, 0.5, 0.75)
    assert s.at(99).from_step == 0 and s.at(100).from_step == 100 and s.at(10**9).from_step == 100
    stage = s.at(0)
    assert [stage.differentiate(v) for v in (0.49, 0.5, 0.6, 0.75, 0.9)] == [0.0, 0.5, 0.6, 1.0, 1.0]
    assert ThresholdSchedule().stages == [ThresholdStage(0, 0.5, 0.5, 0.75)]
    # stages given as plain dicts (as from Python code)
    assert ThresholdSchedule([{"from_step": 0}, {"from_step": 5, "match_iou": 0.9, "zero_below": 0.1,
                                                  "one_above": 0.95}]).at(7).match_iou == 0.9


@pytest.mark.parametrize("stages, message", [
    ([], "at least one stage"),
    ([{"from_step": 3}], r"stage 0 \(from_step=3\): the first stage must start at step 0"),
    ([{"from_step": 0}, {"from_step": 10}, {"from_step": 10}], r"stage 2 \(from_step=10\): from_step must be greater"),
    ([{"from_step": 0}, {"from_step": 5, "zero_below": 0.9, "one_above": 0.8}],
     r"stage 1 \(from_step=5\): zero_below=0.9 must not exceed one_above=0.8"),
    ([{"from_step": 0, "match_iou": 1.5}], r"stage 0 \(from_step=0\): match_iou=1.5 must be a number in \[0, 1\]"),
    ([{"from_step": 0, "one_above": -0.1}], r"stage 0.*one_above=-0.1"),
    ([{"from_step": -1}], "non-negative integer"),
    ([{"from_step": 0, "xi": 0.3}], r"stage 0: unknown key\(s\) xi"),
    ([0.5], "stage 0: expected a mapping"),
])
def test_schedule_validation_names_the_stage(stages, message):
    with pytest.raises(ValueError, match=message):
        ThresholdSchedule(stages)


def test_schedule_from_yaml_with_jsonargparse():
    from jsonargparse import ArgumentParser

    from lit_vr1.rewards.base import Reward

    parser = ArgumentParser()
    parser.add_argument("--rewards", type=list[Reward])
    cfg = parser.parse_string("""
rewards:
  - class_path: lit_vr1.rewards.vision_r1.LocalizationPrecision
    init_args:
      box_frame: original_pixels
      schedule:
        stages:
          - {from_step: 0, match_iou: 0.5, zero_below: 0.5, one_above: 0.75}
          - {from_step: 1500, match_iou: 0.75, zero_below: 0.75, one_above: 0.9}
  - class_path: lit_vr1.rewards.vision_r1.DualFormat
    init_args: {weight: 0.5}
""")
    precision, fmt = parser.instantiate_classes(cfg).rewards
    assert precision.schedule.at(1499).one_above == 0.75 and precision.schedule.at(1500).one_above == 0.9
    assert precision.box_frame == "original_pixels" and fmt.weight == 0.5


def test_schedule_from_python_as_a_list_of_stages_or_a_dict():
    """From Python the YAML's form was refused: "schedule must be a ThresholdSchedule, got list"."""
    stages = [{"from_step": 0, "match_iou": 0.5, "zero_below": 0.5, "one_above": 0.75},
              {"from_step": 10, "match_iou": 0.75, "zero_below": 0.75, "one_above": 0.9}]
    assert LocalizationPrecision(schedule=stages).schedule.at(10).one_above == 0.9
    assert LocalizationRecall(schedule={"stages": stages}).schedule.at(9).one_above == 0.75
    with pytest.raises(ValueError, match=r"must be a lit_vr1\.rewards\.vision_r1\.ThresholdSchedule, a dict"):
        LocalizationPrecision(schedule=0.5)


# --------------------------------------------------------------------------- precision and recall


def test_pure_precision_and_recall():
    st = ThresholdStage(0, 0.5, 0.5, 0.75)
    # IoUs 1.0 and 0.6 over 3 predictions: (1 + 0.6 + 0) / 3
    assert localization_precision([1.0, 0.6], 3, 2, st) == pytest.approx(1.6 / 3)
    # 0.4 is under xi0: (1 + 0) / 2
    assert localization_precision([1.0, 0.4], 2, 2, st) == pytest.approx(0.5)
    assert localization_precision([], 0, 2, st) == 0.0
    assert localization_precision([], 0, 0, st) == 1.0 and localization_precision([], 2, 0, st) == 0.0
    # recall: 1 of 2 valid = 0.5 -> in [0.5, 0.75): kept; 1 of 3 = 0.333 -> 0; plain fraction when asked
    assert localization_recall([1.0, 0.4], 2, 2, st) == 0.5
    assert localization_recall([1.0], 1, 3, st) == 0.0
    assert localization_recall([1.0], 1, 3, st, differentiate=False) == pytest.approx(1 / 3)
    assert localization_recall([], 0, 0, st) == 1.0 and localization_recall([], 1, 0, st) == 0.0


def test_precision_and_recall_hand_computed():
    prec, rec = LocalizationPrecision(box_frame="original_pixels"), LocalizationRecall(box_frame="original_pixels")
    completions = [
        # both objects exactly: IoUs 1, 1 -> precision (1+1)/2 = 1, recall 2/2 = 1
        answer((0, 0, 100, 100), (200, 0, 300, 100)),
        # cat exact (1) + dog [200,0,300,60]: 6000/10000 = 0.6 (kept, in [0.5, 0.75)) + a duplicate cat (unmatched, 0)
        # precision (1 + 0.6 + 0) / 3 = 0.5333; recall 2/2 = 1
        answer((0, 0, 100, 100), (200, 0, 300, 60), (0, 0, 100, 100)),
        # only the cat, IoU 0.8 -> 1 (>= 0.75): precision 1/1 = 1; recall 1/2 = 0.5 (kept)
        answer((0, 0, 100, 80)),
        # a box at 0.4 (4000/10000) is no detection: precision 0/1, recall 0/2
        answer((0, 0, 100, 40)),
        # no box at all
        "I cannot see anything.",
    ]
    contexts = [ctx()] * len(completions)
    assert prec(completions, contexts) == pytest.approx([1.0, 1.6 / 3, 1.0, 0.0, 0.0])
    assert rec(completions, contexts) == pytest.approx([1.0, 1.0, 0.5, 0.0, 0.0])


def test_progressive_thresholds_switch_at_step_s():
    prec = LocalizationPrecision(schedule=TWO_STAGES, box_frame="original_pixels")
    rec = LocalizationRecall(schedule=TWO_STAGES, box_frame="original_pixels")
    # cat at IoU 0.8 ([0,0,100,80]), dog at IoU 0.6 ([200,0,300,60])
    c = answer((0, 0, 100, 80), (200, 0, 300, 60))
    # step 99 (0.5/0.5/0.75): cat 0.8 -> 1, dog 0.6 -> 0.6; precision (1 + 0.6) / 2 = 0.8
    #                          both valid (>= 0.5): recall 2/2 = 1 -> 1
    # step 100 (0.75/0.75/0.9): cat 0.8 kept as 0.8, dog 0.6 < 0.75 invalid; precision (0.8 + 0) / 2 = 0.4
    #                          one valid: recall 1/2 = 0.5 < 0.75 -> 0
    assert prec([c, c], [ctx(step=99), ctx(step=100)]) == pytest.approx([0.8, 0.4])
    assert rec([c, c], [ctx(step=99), ctx(step=100)]) == pytest.approx([1.0, 0.0])


def test_box_frames_are_mapped_to_original_pixels():
    # the model saw the 400x200 image at 200x100: [0,0,50,50] input pixels -> [0,0,100,100] original
    prec = LocalizationPrecision()
    assert prec([answer((0, 0, 50, 50))], [ctx(input_size=(200, 100))]) == [1.0]
    # norm1000 on 400x200: [0,0,250,500] -> [0,0,100,100]
    assert LocalizationRecall(box_frame="norm1000")([answer((0, 0, 250, 500))], [ctx()]) == [0.5]
    with pytest.raises(ValueError, match="box frame 'pixels' is not valid"):
        LocalizationPrecision(box_frame="pixels")


def test_vision_r1_pair_solutions_and_empty_images():
    pairs = [["cat", [0, 0, 100, 100]], ["dog", [200, 0, 300, 100]]]
    prec = LocalizationPrecision(box_frame="original_pixels")
    assert prec([answer((0, 0, 100, 100))], [ctx(solution=pairs)]) == [1.0]
    rec = LocalizationRecall(box_frame="original_pixels")
    assert rec([answer((0, 0, 100, 100))], [ctx(solution=json.dumps(pairs))]) == [0.5]
    # image without objects: nothing predicted is right, any box is wrong
    for r in (prec, rec):
        assert r(["[]", answer((0, 0, 10, 10))], [ctx(solution="[]")] * 2) == [1.0, 0.0]
        assert r(["none here", answer((0, 0, 10, 10))], [ctx(num_instances=0)] * 2) == [1.0, 0.0]
    with pytest.raises(RewardError, match="holds no box"):
        prec(["[]"], [ctx(solution="a cat")])


# --------------------------------------------------------------------------- dual format


def test_dual_format_template_and_content():
    fmt = DualFormat()
    good = answer((0, 0, 100, 100), (200, 0, 300, 100))
    cases = {
        good: 1.0,
        f"```json\n{good}\n```": 1.0,
        f"<think>two animals</think><answer>{good}</answer>": 1.0,
        '[{"bbox_2d": [0, 0, 10, 10]}]': 0.0,                            # template: no label
        '[{"box": [0, 0, 10, 10], "label": "cat"}]': 0.0,                 # template: wrong key
        '{"bbox_2d": [0, 0, 10, 10], "label": "cat"}': 0.0,               # template: not a list
        "[]": 0.0,                                                        # template: no box on an image with objects
        '[{"bbox_2d": [0, 0, 10, 10], "label": "cat"},]': 0.0,            # not strict JSON (trailing comma)
        'Here: [{"bbox_2d": [0, 0, 10, 10], "label": "cat"}]': 0.0,       # text around the list
        '[{"bbox_2d": [0, 0, 10], "label": "cat"}]': 0.0,                 # content: three numbers
        '[{"bbox_2d": [10, 0, 10, 10], "label": "cat"}]': 0.0,            # content: x1 == x2
        '[{"bbox_2d": [0, 20, 10, 10], "label": "cat"}]': 0.0,            # content: y1 > y2
        '[{"bbox_2d": [-5, 0, 10, 10], "label": "cat"}]': 0.0,            # content: negative
        '[{"bbox_2d": ["0", 0, 10, 10], "label": "cat"}]': 0.0,           # content: a string coordinate
        '[{"bbox_2d": [0, 0, 10, 10], "label": 3}]': 0.0,                 # content: label not a string
        '[{"bbox_2d": [0, 0, 10, 10], "label": ""}]': 0.0,                # content: empty label
        '[{"bbox_2d": [0, 0, 10, 10], "label": "a"}, {"bbox_2d": [1, 1], "label": "b"}]': 0.0,  # one bad box
    }
    assert fmt(list(cases), [ctx()] * len(cases)) == list(cases.values())


def test_dual_format_inverted_for_empty_images():
    fmt = DualFormat()
    no_objects = ["[]", "<answer>[]</answer>", "There are no objects in this image.", "```json\n[]\n```"]
    with_box = [answer((0, 0, 10, 10)), "<answer>the cat is at [1, 2, 30, 40]</answer>"]
    for empty in (ctx(solution="[]"), ctx(solution=[]), ctx(num_instances=0)):
        assert fmt(no_objects + with_box, [empty] * 6) == [1.0] * 4 + [0.0] * 2
    # the same answers on an image with objects: only the well-formed box list passes
    assert fmt(no_objects + with_box, [ctx()] * 6) == [0.0] * 4 + [1.0, 0.0]


def test_dual_format_options():
    pairs = DualFormat(template="label_box_pairs")
    assert pairs(['[["cat", [0, 0, 10, 10]]]', answer((0, 0, 10, 10)), '[["cat", [0, 0, 10]]]'], [ctx()] * 3) == [
        1.0, 0.0, 0.0]
    # bounds in the frame: input 200x100, so x2=250 is outside
    bounded = DualFormat(check_bounds=True)
    c = ctx(input_size=(200, 100))
    assert bounded([answer((0, 0, 200, 100)), answer((0, 0, 250, 50))], [c, c]) == [1.0, 0.0]
    assert DualFormat(check_bounds=True, box_frame="norm1000")([answer((0, 0, 1000, 999)), answer((0, 0, 1001, 9))],
                                                               [ctx()] * 2) == [1.0, 0.0]
    think = DualFormat(require_think=True)
    good = answer((0, 0, 10, 10))
    assert think([good, f"<think>x</think><answer>{good}</answer>"], [ctx()] * 2) == [0.0, 1.0]
    with pytest.raises(ValueError, match="template='xml' is not valid"):
        DualFormat(template="xml")


def test_the_3b_localisation_recipe_rewards_labels():
    """configs/grpo_vision_r1_loc_qwen25vl_3b.yaml validates on per-category mAP: its precision and
    recall pair boxes of the same label, so right boxes labelled "object" no longer score as the right
    labels do (3.0 of 3 with dual format, under the paper's pairing on boxes alone)."""
    from pathlib import Path

    import yaml

    recipe = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs/grpo_vision_r1_loc_qwen25vl_3b.yaml").read_text())
    args = {r["class_path"].rsplit(".", 1)[-1]: r.get("init_args", {}) for r in recipe["model"]["init_args"]["rewards"]}
    rewards = [LocalizationPrecision(match_labels=args["LocalizationPrecision"]["match_labels"]),
               LocalizationRecall(match_labels=args["LocalizationRecall"]["match_labels"])]
    right = "<answer>" + GT_JSON + "</answer>"
    unlabelled = "<answer>" + json.dumps([{**b, "label": "object"} for b in GT]) + "</answer>"
    assert [r([right], [ctx()])[0] for r in rewards] == [1.0, 1.0]
    assert [r([unlabelled], [ctx()])[0] for r in rewards] == [0.0, 0.0]
    paper = [LocalizationPrecision(), LocalizationRecall()]  # match_labels=False: labels unread
    assert [r([unlabelled], [ctx()])[0] for r in paper] == [1.0, 1.0]
