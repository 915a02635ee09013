"""Property-based tests (hypothesis) of the answer and box parsers.

For arbitrary text, and for generated near-valid JSON and box strings (truncated, single
quotes, trailing commas, wrapped in tags or fences), the parsers never raise and every
box they return is valid: four finite floats with x1 < x2 and y1 < y2.
"""

from __future__ import annotations

import json
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lit_vr1.rewards import accuracy
from lit_vr1.rewards.boxes import (
    BOX_FRAMES,
    ParsedBox,
    answer_text,
    parse_boxes,
    predicted_boxes,
    repair_json,
    solution_boxes,
)

FAST = settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

# text with the characters the parsers look for, so the generator reaches their branches
SYNTAX = st.sampled_from(list('[]{},:"\'`.-+eE0123456789 \n') + [
    "<answer>", "</answer>", "<think>", "</think>", "```json", "```", '"bbox_2d"', '"bbox"', '"label"', "nan",
    "Infinity", "1e999", "\\boxed{", "}", "%", "/", "(", ")", "A", "B", "yes", "no", "answer is",
])
TEXT = st.one_of(st.text(max_size=200), st.lists(SYNTAX, max_size=60).map("".join))
NUMBER = st.one_of(
    st.integers(-10**6, 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(10**300, 10**400),  # beyond float range: json.loads gives a Python int
)
SIZE = st.tuples(st.integers(1, 4000), st.integers(1, 4000))


def assert_valid(boxes: list[ParsedBox]) -> None:
    """Every box: a ParsedBox of four finite floats with a positive width and height."""
    assert isinstance(boxes, list)
    for b in boxes:
        assert isinstance(b, ParsedBox) and isinstance(b.label, str)
        assert len(b.box) == 4 and all(isinstance(v, float) and math.isfinite(v) for v in b.box), b
        x1, y1, x2, y2 = b.box
        assert x1 < x2 and y1 < y2, b


@st.composite
def box_items(draw) -> list:
    """A list of box items in one of the layouts a model or the data writes."""
    n = draw(st.integers(0, 4))
    layout = draw(st.sampled_from(["qwen", "bbox", "pair", "quad"]))
    items = []
    for _ in range(n):
        box = [draw(NUMBER) for _ in range(4)]
        label = draw(st.text(max_size=8))
        items.append({"qwen": {"bbox_2d": box, "label": label}, "bbox": {"bbox": box},
                      "pair": [label, box], "quad": box}[layout])
    return items


@st.composite
def near_valid(draw) -> str:
    """A JSON box answer, then damaged the ways small models damage it, then wrapped."""
    text = json.dumps(draw(box_items()))
    if draw(st.booleans()):
        text = text[: draw(st.integers(0, len(text)))]  # truncated
    if draw(st.booleans()):
        text = text.replace('"', "'")
    if draw(st.booleans()):
        text = text.replace("]", ",]").replace("}", ",}")
    wrap = draw(st.sampled_from(["{}", "<answer>{}</answer>", "<think>[1, 2, 3, 4]</think><answer>{}",
                                 "```json\n{}\n```", "The box is {} ok", "<answer>{}"]))
    return wrap.replace("{}", text)


@FAST
@given(TEXT)
def test_repair_json_and_answer_text_never_raise(text):
    assert isinstance(repair_json(text), str)
    ans = answer_text(text)
    assert isinstance(ans, str) and ans in text


@FAST
@given(st.one_of(TEXT, near_valid()))
def test_parse_boxes_never_raises_and_gives_valid_boxes(text):
    assert_valid(parse_boxes(text))
    kept = parse_boxes(text, keep_degenerate=True)
    assert all(len(b.box) == 4 and all(isinstance(v, float) for v in b.box) for b in kept)


@FAST
@given(st.one_of(TEXT, near_valid()), st.sampled_from(BOX_FRAMES), SIZE, st.one_of(st.none(), SIZE))
def test_predicted_boxes_are_valid_in_every_frame(text, frame, image_size, input_size):
    assert_valid(predicted_boxes(text, image_size, input_size, frame))


@FAST
@given(box_items())
def test_well_formed_json_round_trips(items):
    """Undamaged JSON gives back exactly its finite, non-degenerate boxes, in order."""
    def expected(item):
        box = item["bbox_2d"] if isinstance(item, dict) and "bbox_2d" in item else (
            item["bbox"] if isinstance(item, dict) else item[1] if isinstance(item[0], str) else item)
        try:
            box = tuple(float(v) for v in box)
        except OverflowError:
            return None
        ok = all(math.isfinite(v) for v in box) and box[0] < box[2] and box[1] < box[3]
        return box if ok else None

    text = json.dumps(items)
    want = [b for b in map(expected, items) if b is not None]
    if len(items) == 1 and not isinstance(items[0], dict) and not isinstance(items[0][0], str):
        return  # a list holding one quadruple reads as that quadruple either way; covered above
    assert [b.box for b in parse_boxes(text)] == want


JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), NUMBER, st.text(max_size=6)),
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(st.sampled_from(["bbox_2d", "bbox", "label", "x"]),
                                                                         inner, max_size=3)),
    max_leaves=20,
)


@FAST
@given(st.one_of(JSON_VALUES, TEXT, near_valid()))
def test_solution_boxes_never_raise(solution):
    """Solutions keep degenerate boxes on purpose (the data checks report them), so only
    the shape is promised here: four floats per box."""
    for b in solution_boxes(solution):
        assert len(b.box) == 4 and all(isinstance(v, float) for v in b.box)


@FAST
@given(TEXT)
def test_answer_extractors_never_raise(text):
    assert isinstance(accuracy.unbox(text), str)
    assert isinstance(accuracy.normalize_text(text), str)
    assert all(math.isfinite(v) for v in accuracy.parse_numbers(text))
    letter = accuracy.extract_choice(text)
    assert letter is None or (len(letter) == 1 and letter.isupper())
    assert accuracy.extract_yes_no(text) in (None, "yes", "no")
    assert isinstance(accuracy.solution_text(text), str)


@FAST
@given(TEXT, st.sampled_from(["<answer> 42 </answer>", "B", "yes", "the cat", "3/4", "75%"]),
       st.sampled_from(["exact", "numeric", "choice", "yes_no"]))
def test_matchers_never_raise_on_any_prediction(pred, gold, mode):
    """A readable solution and any prediction: a bool, never an exception (an unreadable
    *solution* raises ValueError by design: that is a data error)."""
    try:
        result = accuracy.is_correct(pred, gold, mode)
    except ValueError as e:
        assert "solution" in str(e)  # the gold does not fit the mode (e.g. "the cat" as a number)
        return
    assert isinstance(result, bool)
