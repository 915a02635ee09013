"""Length and repetition shaping (Yeo et al., 2025, "Demystifying Long Chain-of-Thought
Reasoning in LLMs").

With a plain 0/1 correctness reward, the length of the chain of thought can grow until
it hits the context window and collapse there. The paper shapes the reward by length so
that, among correct answers, shorter ones earn more and, among wrong ones, longer ones
are punished less (the model should keep thinking when it has not got there yet). Its
second finding is that the model then games the length term by repeating itself, which
an n-gram repetition penalty counters.
"""

from __future__ import annotations

import math
import re
from typing import Any

from lit_vr1.rewards.accuracy import _check_tolerance, check_mode, is_correct
from lit_vr1.rewards.base import Reward, SampleContext
from lit_vr1.rewards.boxes import answer_text, parse_boxes

# --------------------------------------------------------------------------- cosine length


def cosine_interpolate(length: float, max_len: float, value_at_zero: float, value_at_max: float) -> float:
    """Half a cosine period from ``value_at_zero`` (L = 0) to ``value_at_max`` (L = max_len):

        f(L) = value_at_max + (value_at_zero - value_at_max) * (1 + cos(pi * min(L, max_len) / max_len)) / 2

    f(0) = value_at_zero, f(max_len / 2) = their mean, f(max_len) = value_at_max, flat
    past max_len. This is the paper's CosFn(t, T, eta_min, eta_max) = eta_min +
    (eta_max - eta_min)(1 + cos(t pi / T)) / 2 with eta_max the value at t = 0 and
    eta_min the one at t = T (they need not be ordered: the wrong branch rises).
    """
    if length < 0:
        raise ValueError(f"length {length} is negative")
    t = min(float(length), float(max_len)) / float(max_len)
    return value_at_max + (value_at_zero - value_at_max) * 0.5 * (1.0 + math.cos(math.pi * t))


def cosine_length_value(length: float, correct: bool, max_len: float, min_value_wrong: float = -0.5,
                        max_value_wrong: float = 0.0, min_value_correct: float = 0.5, max_value_correct: float = 1.0,
                        exceed_penalty: float | None = None) -> float:
    """Yeo et al.'s cosine length-scaled reward for one completion of ``length`` tokens:

    - correct: from ``max_value_correct`` at L = 0 down to ``min_value_correct`` at
      L = max_len (short right answers earn most);
    - wrong: from ``min_value_wrong`` at L = 0 up to ``max_value_wrong`` at L = max_len
      (a short wrong answer is the worst: the model gave up thinking);
    - L > max_len counts as max_len; with ``exceed_penalty`` set, L >= max_len gets
      ``exceed_penalty`` instead, whatever the correctness (the paper's r_e).

    Both branches follow :func:`cosine_interpolate`.
    """
    if exceed_penalty is not None and length >= max_len:
        return float(exceed_penalty)
    if correct:
        return cosine_interpolate(length, max_len, max_value_correct, min_value_correct)
    return cosine_interpolate(length, max_len, min_value_wrong, max_value_wrong)


class CosineLength(Reward):
    """Cosine length-scaled correctness reward (Yeo et al., 2025, "Demystifying Long
    Chain-of-Thought Reasoning in LLMs", the "cosine reward").

    With L = ``ctx.completion_length`` (tokens) clamped at ``max_len`` and c = correctness
    of the answer (the :class:`lit_vr1.rewards.Accuracy` matcher of ``mode``):

        correct: r(L) = min_value_correct + (max_value_correct - min_value_correct) * (1 + cos(pi L / max_len)) / 2
        wrong:   r(L) = max_value_wrong   + (min_value_wrong   - max_value_wrong)   * (1 + cos(pi L / max_len)) / 2

    With the defaults (values -0.5, 0.0, 0.5, 1.0):

        ===========  ======  ===========  ==========  ===============
        branch       L = 0   L = max/2    L = max     L > max
        ===========  ======  ===========  ==========  ===============
        correct      1.0     0.75         0.5         0.5
        wrong        -0.5    -0.25        0.0         0.0
        ===========  ======  ===========  ==========  ===============

    Past ``max_len`` the value at ``max_len`` is kept (L is clamped). The paper also
    gives a flat exceed-length penalty r_e to completions that reach the generation
    limit (truncated ones, which never finish their answer); that is optional here
    (``exceed_penalty``, off by default), because ``max_len`` need not be the rollout's
    token budget; to reproduce the paper set ``max_len`` to ``max_new_tokens`` and
    ``exceed_penalty`` (it used -10 with values -10, 0, 1, 2).

    Correctness is decided per completion by the accuracy matcher, so wrong answers take
    the wrong branch (the bug in the seed implementations, which always took the
    correct one, is covered by a test).

    Args:
        min_value_wrong: reward of a wrong answer of length 0 (the lowest).
        max_value_wrong: reward of a wrong answer of length >= max_len.
        min_value_correct: reward of a correct answer of length >= max_len.
        max_value_correct: reward of a correct answer of length 0 (the highest).
        max_len: length in tokens at which the cosine ends.
        mode: the answer matcher, as in :class:`lit_vr1.rewards.Accuracy`.
        tolerance: relative tolerance of the numeric matcher.
        exceed_penalty: when set, the reward of every completion with L >= max_len.
        correct_by: decide correctness with this reward's score instead of the accuracy
            matcher: correct when ``score >= correct_at``. VLM-R1's open-vocabulary
            detection runs do this with their detection reward and 0.7, e.g.
            ``correct_by: {class_path: lit_vr1.rewards.DetectionMAP}``. Where that reward
            gives nan (not applicable, failed) the cosine reward gives nan too.
        correct_at: the score a ``correct_by`` answer needs to count as correct (0.7).
    """

    default_name = "cosine_length"

    def __init__(self, min_value_wrong: float = -0.5, max_value_wrong: float = 0.0, min_value_correct: float = 0.5,
                 max_value_correct: float = 1.0, max_len: int = 1024, mode: str = "exact", tolerance: float = 1e-6,
                 exceed_penalty: float | None = None, correct_by: Reward | None = None, correct_at: float = 0.7,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if correct_by is not None and not isinstance(correct_by, Reward):
            raise ValueError(f"CosineLength: correct_by must be a reward (class_path: lit_vr1.rewards...), "
                             f"got {type(correct_by).__name__}")
        if not math.isfinite(correct_at):
            raise ValueError(f"CosineLength: correct_at={correct_at} must be a finite number")
        if not max_len > 0:
            raise ValueError(f"CosineLength: max_len={max_len} must be positive")
        if min_value_wrong > max_value_wrong:
            raise ValueError(f"CosineLength: min_value_wrong={min_value_wrong} exceeds max_value_wrong={max_value_wrong}")
        if min_value_correct > max_value_correct:
            raise ValueError(
                f"CosineLength: min_value_correct={min_value_correct} exceeds max_value_correct={max_value_correct}")
        if max_value_wrong > min_value_correct:
            raise ValueError(f"CosineLength: max_value_wrong={max_value_wrong} exceeds min_value_correct={min_value_correct}: "
                             "a long wrong answer would outscore a long correct one")
        self.min_value_wrong, self.max_value_wrong = float(min_value_wrong), float(max_value_wrong)
        self.min_value_correct, self.max_value_correct = float(min_value_correct), float(max_value_correct)
        self.max_len = max_len
        self.mode = check_mode(mode)
        self.tolerance = _check_tolerance(tolerance)
        self.exceed_penalty = exceed_penalty
        self.correct_by = correct_by
        self.correct_at = float(correct_at)

    def _correctness(self, completions: list[str], contexts: list[SampleContext]) -> list[bool | None]:
        """Per completion: correct or not; None where ``correct_by`` gives no score."""
        if self.correct_by is None:
            return [is_correct(c, ctx.solution, self.mode, self.tolerance) for c, ctx in zip(completions, contexts)]
        return [None if math.isnan(v) else v >= self.correct_at for v in self.correct_by(completions, contexts)]

    def score(self, completions: list[str], contexts: list[SampleContext]) -> list[float]:
        out = []
        for correct, ctx in zip(self._correctness(completions, contexts), contexts):
            if correct is None:
                out.append(math.nan)
                continue
            out.append(cosine_length_value(
                ctx.completion_length, correct, self.max_len, self.min_value_wrong, self.max_value_wrong,
                self.min_value_correct, self.max_value_correct, self.exceed_penalty))
        return out


# --------------------------------------------------------------------------- repetition


def repetition_ratio(items: list, n: int = 1) -> float:
    """Share of repeated n-grams of a sequence: 1 - (distinct n-grams) / (all n-grams),
    the n-grams being the ``len(items) - n + 1`` overlapping windows; 0.0 when the
    sequence is shorter than n. [a b c a b c] with n = 3 has 4 windows, 3 distinct: 0.25."""
    total = len(items) - n + 1
    if total <= 0:
        return 0.0
    grams = {tuple(items[i:i + n]) for i in range(total)}
    return 1.0 - len(grams) / total


def box_items(completion: str) -> list[tuple] | None:
    """The answer's boxes as hashable items (box rounded to whole numbers, label
    case-folded and stripped) when the answer is JSON grounding output (it names
    ``bbox_2d`` and :func:`lit_vr1.rewards.boxes.parse_boxes` reads boxes from it,
    degenerate ones included); None otherwise."""
    if "bbox_2d" not in answer_text(completion):
        return None
    boxes = parse_boxes(completion, keep_degenerate=True)
    if not boxes:
        return None
    return [tuple(round(v) for v in b.box) + (b.label.strip().casefold(),) for b in boxes]


def _outside_items(completion: str) -> str:
    """The completion without its JSON items (``{...}``) and the brackets and commas around
    them: the words a box answer writes besides its boxes. (Until 2026-12-06 the whole answer
    was taken out, and a completion without answer tags is all answer: 30 repeats of a
    sentence beside one box cost nothing.)"""
    text, before = completion, None
    while text != before:  # innermost objects first, until none is left (items may hold objects of their own)
        text, before = re.sub(r"\{[^{}]*\}", " ", text), text
    return re.sub(r"[\[\],]", " ", text)


def repetition_penalty(completion: str, ngram_size: int = 3, max_penalty: float = -1.0) -> float:
    """``max_penalty * repetition`` (Yeo et al., 2025's n-gram repetition penalty, in its
    sequence-level form), with repetition in [0, 1]:

    - JSON box answers (:func:`box_items`): over the items, 1 - distinct / total, so a
      model listing the same box (same rounded coordinates and label) k times out of N
      pays for the copies; a single item costs nothing; the words outside the box items
      (the reasoning, and any text around the list) are checked as below, and the larger
      repetition counts;
    - otherwise over the lower-cased whitespace-separated words of the whole
      completion: :func:`repetition_ratio` with n = ``ngram_size`` (0 when fewer words than n).
    """
    items = box_items(completion)
    if items is not None:
        reasoning = _outside_items(completion)  # the words around the box items, inside the answer tags or not
        ratio = max(1.0 - len(set(items)) / len(items), repetition_ratio(reasoning.lower().split(), ngram_size))
    else:
        ratio = repetition_ratio(completion.lower().split(), ngram_size)
    return max_penalty * ratio


class RepetitionPenalty(Reward):
    """N-gram repetition penalty (Yeo et al., 2025, "Demystifying Long Chain-of-Thought
    Reasoning in LLMs"), in [max_penalty, 0]:

        penalty = max_penalty * (1 - distinct n-grams / total n-grams)

    over the words of the completion (0 with fewer than ``ngram_size`` words); for a JSON
    box answer over its items instead (an item = rounded box + label; penalty =
    max_penalty * (1 - distinct items / total items)), where repeating a detection is
    the way a detector games recall-like rewards. See :func:`repetition_penalty`.

    The paper applies the penalty densely, to the tokens of each repeated n-gram; a
    GRPO advantage is one number per completion, so this is the per-sequence version.

    Args:
        ngram_size: n of the word n-grams (the paper used long n-grams, 40 tokens, on
            long chains of thought; 3 suits short VLM answers).
        max_penalty: the penalty of a completion made only of repeats (<= 0).
    """

    default_name = "repetition"
    zero_is_best = True  # no repetition: 0, as it should be

    def __init__(self, ngram_size: int = 3, max_penalty: float = -1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if int(ngram_size) != ngram_size or ngram_size < 1:
            raise ValueError(f"RepetitionPenalty: ngram_size={ngram_size} must be a positive integer")
        if max_penalty > 0:
            raise ValueError(f"RepetitionPenalty: max_penalty={max_penalty} must not be positive (it is a penalty)")
        self.ngram_size = int(ngram_size)
        self.max_penalty = float(max_penalty)

    def score(self, completions: list[str], contexts: list[SampleContext]) -> list[float]:
        return [repetition_penalty(c, self.ngram_size, self.max_penalty) for c in completions]
