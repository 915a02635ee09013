"""Text-answer rewards: the matchers, Accuracy, HFRRF, CosineLength and RepetitionPenalty."""

import math
import sys

import pytest

from lit_vr1.rewards.accuracy import (
    HFRRF,
    Accuracy,
    choice_match,
    exact_match,
    extract_choice,
    extract_yes_no,
    is_correct,
    math_match,
    normalize_text,
    numeric_match,
    parse_numbers,
    unbox,
    yes_no_match,
)
from lit_vr1.rewards.base import RewardError, SampleContext, score_all
from lit_vr1.rewards.length import (
    CosineLength,
    RepetitionPenalty,
    box_items,
    cosine_interpolate,
    repetition_penalty,
    repetition_ratio,
)

try:
    import math_verify  # noqa: F401

    HAS_MATH_VERIFY = True
except ImportError:
    HAS_MATH_VERIFY = False
needs_math_verify = pytest.mark.skipif(not HAS_MATH_VERIFY, reason="math-verify is not installed")


def ctx(solution, length=0, sid="s1"):
    return SampleContext(id=sid, prompt="p", solution=solution, completion_length=length)


def fmt(answer, think="let me see"):
    return f"<think>{think}</think><answer>{answer}</answer>"


# --------------------------------------------------------------------------- matchers


def test_normalize_and_exact_match():
    assert normalize_text("  The   Cat. ") == "the cat"
    assert normalize_text('"Paris"') == "paris"
    assert exact_match("  THE cat ", "the   cat")
    assert exact_match("Paris.", "paris")
    assert exact_match("\\boxed{Paris}", "paris")
    assert not exact_match("the cats", "the cat")
    assert not exact_match("a cat", "cat")


def test_unbox_balanced_braces():
    assert unbox("so \\boxed{\\frac{3}{4}} done") == "\\frac{3}{4}"
    assert unbox("\\boxed{1} then \\boxed{2}") == "2"
    assert unbox("no box") == "no box"
    assert unbox("\\boxed{7") == "7"


def test_parse_numbers():
    assert parse_numbers("1,000") == [1000.0]
    assert parse_numbers("3/4") == [0.75]
    assert parse_numbers("$\\frac{3}{4}$") == [0.75]
    assert parse_numbers("\\boxed{42}") == [42.0]
    assert parse_numbers("75%") == [75.0, 0.75]
    assert parse_numbers("The answer is 12.5.") == [12.5]
    assert parse_numbers("1{,}234,567.5") == [1234567.5]
    assert parse_numbers("\u22123") == [-3.0]
    assert parse_numbers("5/0") == []
    assert parse_numbers("no number here") == []


def test_numeric_match():
    assert numeric_match("1,000", "1000")
    assert numeric_match("3/4", "0.75")
    assert numeric_match("\\boxed{42}", "42")
    assert numeric_match("The total is 42 apples.", "42")
    assert numeric_match("75%", "0.75") and numeric_match("75%", "75")
    assert not numeric_match("41", "42")
    assert not numeric_match("no idea", "42")
    assert not numeric_match("1,000", "100")
    # relative tolerance: 100.5 vs 100 is 0.5 % off
    assert not numeric_match("100.5", "100", rel_tol=1e-3)
    assert numeric_match("100.5", "100", rel_tol=1e-2)
    with pytest.raises(ValueError, match="holds no number"):
        numeric_match("42", "forty-two")


@pytest.mark.parametrize("pred", ["B", "b", "(B)", "[B].", "B. cat", "(B) cat", "B) cat", "The answer is B",
                                  "Answer: (B)", "the correct option is B.", "I pick (B) here", "\\boxed{B}"])
def test_choice_letters(pred):
    assert extract_choice(pred) == "B"
    assert choice_match(pred, "B")
    assert choice_match(pred, "(B) cat")
    assert not choice_match(pred, "C")


@pytest.mark.parametrize("pred", ["B。", "B,", "B！", "（B）", "Ｂ", "答案是B", "答案：Ｂ", "La réponse est B.",
                                  "Die Antwort ist B", "Ответ: B", "选 B 。", "选B", "答えはB",
                                  "정답은 B", "답은 B", "la respuesta es B", "La respuesta correcta es B",
                                  "A resposta correta é B", "La risposta corretta è B", "答えは「B」", "我选B，不选C"])
def test_choice_letters_in_other_languages_and_full_width_forms(pred):
    """A right answer written with CJK punctuation or in another language scored 0 (helper-81)."""
    assert extract_choice(pred) == "B"
    assert choice_match(pred, "B") and not choice_match(pred, "C")


@pytest.mark.parametrize("pred", ["It is A or B", "A or B", "A cat sits on the mat", "Point A", "I think it is B",
                                  "The answer is A or B", "答案是A或B", "la réponse est A ou B", "Answer: (A) or (B)",
                                  "不选B"])
def test_choice_reads_no_letter_from_free_text(pred):
    assert extract_choice(pred) is None


def test_numbers_with_a_decimal_comma():
    """"3,5" is 3.5 in most of Europe: it read as 5 alone, so a right French answer scored 0 (helper-81);
    it reads as 3.5 only, not also as 5 (a hedge paid both ways; helper-83), and the last one counts."""
    assert numeric_match("3,5", "3.5") and numeric_match("La réponse est 3,5 cm.", "3.5")
    assert numeric_match("-0,25", "-0.25") and numeric_match("12,5 %", "0.125")
    assert not numeric_match("3,5", "5") and not numeric_match("0,5", "5") and numeric_match("entre 1,5 et 3,5", "3.5")
    assert not numeric_match("1,2,3", "1.2") and numeric_match("1,000", "1000") and not numeric_match("1,000", "1")
    assert not numeric_match("3, 5", "3.5")  # a comma and a space: a list
    with pytest.raises(ValueError, match="decimal comma"):
        numeric_match("3.5", "3,5")


def test_choice_rejects_free_text_and_bad_solution():
    assert extract_choice("A cat sits on the mat") is None
    assert extract_choice("I think so") is None
    assert extract_choice("B) is wrong, the answer is (C)") == "C"
    assert not choice_match("A cat", "A")
    with pytest.raises(ValueError, match="no option letter"):
        choice_match("B", "cat")


def test_yes_no():
    assert extract_yes_no("Yes, there is no doubt") == "yes"
    assert extract_yes_no("There is a cat, so yes.") == "yes"
    assert extract_yes_no(" NO ") == "no"
    assert extract_yes_no("maybe") is None
    assert extract_yes_no("not yes, not no") is None
    assert extract_yes_no("Yes or no") is None and extract_yes_no("no/yes") is None  # hedges
    assert yes_no_match("Yes.", "yes") and yes_no_match("no", "No")
    assert not yes_no_match("no", "yes")
    assert not yes_no_match("unsure", "yes")
    with pytest.raises(ValueError, match="neither yes nor no"):
        yes_no_match("yes", "maybe")


@needs_math_verify
def test_math_match():
    assert math_match("\\frac{1}{2}", "0.5")
    assert math_match("1+x", "x+1")
    assert math_match("The answer is \\boxed{\\frac{3}{4}}", "0.75")
    assert not math_match("2", "3")
    assert not math_match("", "3")


@needs_math_verify
def test_math_mode_compares_word_solutions_as_text():
    """math-verify reads a word as a product of symbols: "on" matched "no", "felt" "left"."""
    for pred, gold in [("on", "no"), ("felt", "left"), ("pot", "top"), ("tsrif", "first")]:
        assert not math_match(pred, gold), (pred, gold)
    assert math_match("No.", "no") and math_match(" Top  Left", "top left") and math_match("red", "\\boxed{red}")
    assert math_match("a", "A") and math_match("2x", "x*2")  # a single letter, or letters with numbers: math
    assert math_match("yx", "xy") and math_match("BA", "AB")  # products of variables, segments: math
    assert Accuracy(mode="math")([fmt("on"), fmt("no")], [ctx("no")] * 2) == [0.0, 1.0]


def test_math_mode_without_math_verify(monkeypatch):
    monkeypatch.setitem(sys.modules, "math_verify", None)  # makes `import math_verify` raise ImportError
    with pytest.raises(ImportError, match="pip install math-verify"):
        Accuracy(mode="math")
    with pytest.raises(ImportError, match="pip install math-verify"):
        math_match("1", "1")


# --------------------------------------------------------------------------- Accuracy and HFRRF


def test_accuracy_modes_read_answer_tags():
    sol = "<answer> 3 </answer>"
    out = Accuracy(mode="numeric")([fmt("3.0"), fmt("4"), "no tags, but the answer is 3", fmt("three")], [ctx(sol)] * 4)
    assert out == [1.0, 0.0, 1.0, 0.0]
    assert Accuracy(mode="exact")([fmt(" Paris "), fmt("London")], [ctx("<answer>paris</answer>")] * 2) == [1.0, 0.0]
    assert Accuracy(mode="choice")([fmt("(C) dog"), fmt("B")], [ctx("C")] * 2) == [1.0, 0.0]
    assert Accuracy(mode="yes_no")([fmt("Yes, two."), fmt("No")], [ctx("yes")] * 2) == [1.0, 0.0]
    assert Accuracy(mode="numeric")([fmt("7")], [ctx(7)]) == [1.0]  # a numeric solution


@needs_math_verify
def test_accuracy_math_mode():
    assert Accuracy(mode="math")([fmt("\\frac{1}{2}"), fmt("1/3")], [ctx("<answer>0.5</answer>")] * 2) == [1.0, 0.0]


def test_accuracy_mode_validated_and_bad_solution_reported():
    with pytest.raises(ValueError, match="exact, numeric, choice, yes_no, math"):
        Accuracy(mode="fuzzy")
    with pytest.raises(ValueError, match="tolerance"):
        Accuracy(mode="numeric", tolerance=-1)
    with pytest.raises(RewardError, match="holds no number"):
        Accuracy(mode="numeric")([fmt("1")], [ctx("n/a")])
    masked = Accuracy(mode="numeric", on_error="nan")([fmt("1"), fmt("2")], [ctx("n/a"), ctx("2")])
    assert math.isnan(masked[0]) and masked[1] == 1.0


def test_hfrrf_needs_format_and_answer():
    r = HFRRF(mode="numeric")
    completions = [
        fmt("42"),                                   # format and answer right
        fmt("41"),                                   # format right, answer wrong
        "<answer>42</answer>",                       # answer right, no think
        "I think it is 42",                          # answer right, no tags at all
        "<think>a</think><answer>42</answer> extra",  # text after the answer
    ]
    assert r(completions, [ctx("42")] * 5) == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert Accuracy(mode="numeric")(completions, [ctx("42")] * 5) == [1.0, 0.0, 1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="choose one of"):
        HFRRF(mode="nope")


# --------------------------------------------------------------------------- CosineLength

C_SQRT2 = math.cos(math.pi / 4)  # 0.70710678...


def test_cosine_interpolate_hand_values():
    assert cosine_interpolate(0, 1000, 1.0, 0.5) == pytest.approx(1.0)
    assert cosine_interpolate(500, 1000, 1.0, 0.5) == pytest.approx(0.75)
    assert cosine_interpolate(1000, 1000, 1.0, 0.5) == pytest.approx(0.5)
    assert cosine_interpolate(250, 1000, 1.0, 0.5) == pytest.approx(0.5 + 0.25 * (1 + C_SQRT2))  # 0.9267767
    assert cosine_interpolate(5000, 1000, 1.0, 0.5) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        cosine_interpolate(-1, 1000, 1.0, 0.5)


def test_cosine_length_both_branches():
    r = CosineLength(max_len=1000, mode="numeric")  # defaults: wrong -0.5 -> 0.0, correct 1.0 -> 0.5
    lengths = [0, 250, 500, 1000, 3000]
    right = r([fmt("42")] * 5, [ctx("42", n) for n in lengths])
    wrong = r([fmt("41")] * 5, [ctx("42", n) for n in lengths])
    assert right == pytest.approx([1.0, 0.5 + 0.25 * (1 + C_SQRT2), 0.75, 0.5, 0.5])
    assert wrong == pytest.approx([-0.5, -0.25 * (1 + C_SQRT2), -0.25, 0.0, 0.0])
    # short right answers earn more; long wrong answers are penalised less
    assert right[0] > right[2] > right[3]
    assert wrong[0] < wrong[2] < wrong[3]


def test_cosine_wrong_answer_takes_wrong_branch():
    r = CosineLength(min_value_wrong=-10, max_value_wrong=0, min_value_correct=1, max_value_correct=2, max_len=100)
    # a wrong answer at L=0 is the worst value, not the best (the seed repos' bug gave it 2.0)
    assert r([fmt("cat")], [ctx("dog", 0)]) == [-10.0]
    assert r([fmt("dog")], [ctx("dog", 0)]) == [2.0]
    assert r([fmt("cat"), fmt("dog")], [ctx("dog", 50), ctx("dog", 50)]) == pytest.approx([-5.0, 1.5])


def test_cosine_exceed_penalty_and_validation():
    r = CosineLength(max_len=100, exceed_penalty=-1.0)
    assert r([fmt("a"), fmt("a"), fmt("b")], [ctx("a", 99), ctx("a", 100), ctx("a", 250)]) == pytest.approx(
        [0.5 + 0.25 * (1 + math.cos(math.pi * 0.99)), -1.0, -1.0])
    with pytest.raises(ValueError, match="max_len"):
        CosineLength(max_len=0)
    with pytest.raises(ValueError, match="outscore"):
        CosineLength(max_value_wrong=0.8, min_value_correct=0.5)
    with pytest.raises(ValueError, match="min_value_correct"):
        CosineLength(min_value_correct=1.0, max_value_correct=0.5)
    with pytest.raises(ValueError, match="choose one of"):
        CosineLength(mode="exactly")


# --------------------------------------------------------------------------- RepetitionPenalty


def test_repetition_ratio_hand_values():
    assert repetition_ratio(list("abcabc"), 3) == pytest.approx(0.25)  # windows abc bca cab abc: 3 of 4
    assert repetition_ratio(list("aaaa"), 1) == pytest.approx(0.75)
    assert repetition_ratio(list("ab"), 3) == 0.0
    assert repetition_ratio([], 1) == 0.0


def test_repetition_penalty_over_words():
    r = RepetitionPenalty(ngram_size=3, max_penalty=-1.0)
    out = r(["the cat sat on the mat",            # 4 trigrams, all distinct
             "a b c a b c",                        # 4 trigrams, 3 distinct
             "Go go GO go",                        # lower-cased: 2 trigrams, 1 distinct
             "too short"],                         # fewer words than n
            [ctx("x")] * 4)
    assert out == pytest.approx([0.0, -0.25, -0.5, 0.0])
    assert RepetitionPenalty(ngram_size=1, max_penalty=-2.0)(["x x x x"], [ctx("x")]) == pytest.approx([-1.5])


def test_repetition_penalty_over_box_items():
    one = '{"bbox_2d": [10, 10, 50, 50], "label": "cat"}'
    near = '{"bbox_2d": [10.2, 9.8, 50.4, 50], "label": "Cat "}'  # same box once rounded, same label
    other = '{"bbox_2d": [60, 60, 90, 90], "label": "dog"}'
    ans = f"<think>t</think><answer>[{one}, {near}, {other}, {one}]</answer>"
    assert box_items(ans) == [(10, 10, 50, 50, "cat")] * 2 + [(60, 60, 90, 90, "dog"), (10, 10, 50, 50, "cat")]
    assert repetition_penalty(ans) == pytest.approx(-(1 - 2 / 4))
    # the same words over and over would be penalised as text; as items they are distinct
    distinct = "[" + ", ".join(f'{{"bbox_2d": [{i}, {i}, {i + 5}, {i + 5}], "label": "cat"}}' for i in range(6)) + "]"
    assert repetition_penalty(f"<answer>{distinct}</answer>") == 0.0
    assert repetition_penalty(distinct.replace("bbox_2d", "box"), ngram_size=3) < 0  # not JSON boxes: words
    assert box_items("<answer>a cat</answer>") is None
    # the words beside a box list count, inside the answer tags or without tags (until 2026-12-06 the whole
    # answer was taken out with the list: one box made 30 repeats of a sentence free)
    sentence = "the cat is here " * 30
    assert repetition_penalty(sentence + f"[{one}]") == pytest.approx(repetition_penalty(sentence))
    assert repetition_penalty(sentence) < -0.9
    assert repetition_penalty(f"<think>x</think><answer>[{one}]" + " cat" * 30 + "</answer>") < -0.8
    assert repetition_penalty(f"<think>look at the cat</think><answer>[{one}]</answer>") == 0.0
    nested = "[" + ", ".join(f'{{"bbox_2d": [{i}, {i}, {i + 5}, {i + 5}], "label": "person", "attributes": '
                             '{"pose": "standing"}}' for i in range(8)) + "]"
    assert repetition_penalty(f"<answer>{nested}</answer>") == 0.0  # items holding objects of their own
    with pytest.raises(ValueError, match="ngram_size"):
        RepetitionPenalty(ngram_size=0)
    with pytest.raises(ValueError, match="max_penalty"):
        RepetitionPenalty(max_penalty=0.5)


def test_text_rewards_in_score_all():
    rewards = [Accuracy(mode="numeric"), HFRRF(mode="numeric", weight=0.5), CosineLength(max_len=10, mode="numeric"),
               RepetitionPenalty()]
    scores = score_all(rewards, [fmt("42"), "42 42 42 42"], [ctx("42", 0), ctx("42", 10)])
    assert scores.names == ["accuracy", "hfrrf", "cosine_length", "repetition"]
    # second: accurate (1), bad format (0), correct at max_len (0.5), 2 trigrams 1 distinct (-0.5)
    assert scores.total.tolist() == pytest.approx([1 + 0.5 + 1.0 + 0.0, 1 + 0 + 0.5 - 0.5])


def test_is_correct_uses_solution_answer_tags():
    assert is_correct(fmt("B"), "<answer>(B) cat</answer>", mode="choice")
    with pytest.raises(ValueError, match="no solution"):
        is_correct(fmt("B"), None)
