"""Answer-correctness rewards for text answers: exact text, numbers, multiple choice,
yes/no and symbolic math.

The matchers are pure functions ``match(pred, gold) -> bool`` over answer strings; the
rewards apply them to the text inside the completion's last ``<answer>...</answer>``
(:func:`lit_vr1.rewards.boxes.answer_text`) and to the solution passed through the same
function, since R1-style data stores solutions as ``"<answer> 3 </answer>"``.

A prediction the matcher cannot read is simply wrong (``False``); a *solution* it cannot
read (no number in a numeric solution, no letter in a multiple-choice one, ...) raises
``ValueError``: that is a data problem, reported like any reward error (see
``Reward.on_error``).
"""

from __future__ import annotations

import functools
import math
import re
import threading
import unicodedata
from typing import Any

from lit_vr1.rewards.base import Reward, SampleContext
from lit_vr1.rewards.boxes import answer_text
from lit_vr1.rewards.rec import think_answer_ok

MODES = ("exact", "numeric", "choice", "yes_no", "math")

# --------------------------------------------------------------------------- text


def unbox(text: str) -> str:
    """The content of the last ``\\boxed{...}`` (braces balanced) of ``text``, else ``text``.

    ``\\boxed{}`` is how math models (and the MATH data set's solutions) mark the final
    answer; an unclosed box yields everything after its opening brace."""
    start = text.rfind("\\boxed")
    if start < 0:
        return text
    brace = text.find("{", start)
    if brace < 0 or text[start + len("\\boxed"):brace].strip():
        return text
    depth = 0
    for i in range(brace, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[brace + 1:i]
    return text[brace + 1:]


def normalize_text(text: str) -> str:
    """Canonical form for exact comparison: Unicode NFKC, case-folded, whitespace runs
    collapsed to one space, surrounding whitespace and quotes and trailing sentence
    punctuation (``. ! ? 。``) removed. ``"  The Cat. "`` and ``"the   cat"`` agree."""
    s = unicodedata.normalize("NFKC", str(text)).casefold()
    s = " ".join(s.split())
    s = s.strip("\"'` ")
    s = s.rstrip(".!?。 ")
    return s.strip("\"'` ")


def exact_match(pred: str, gold: str) -> bool:
    """True when ``normalize_text`` of both answers (each first unwrapped from a
    ``\\boxed{}``, see :func:`unbox`) are equal: case, spacing and a final period do not count."""
    return normalize_text(unbox(pred)) == normalize_text(unbox(gold))


# --------------------------------------------------------------------------- numbers

_NUM = r"[-+]?(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?"
# a number (not the tail of a longer one), an optional "/denominator", an optional percent sign
_NUMBER_RE = re.compile(rf"(?<![\d.])({_NUM})(?:\s*/\s*({_NUM}))?(\s*(?:%|percent\b))?")
# a number with a decimal comma, not one of a list ("1,2,3") or a thousands group ("1,000")
_DECIMAL_COMMA_RE = re.compile(r"(?<![\d.,])([-+]?\d+),(\d{1,2})(?![\d.,])")
# the power of a unit written after letters (cm^2, m/s^{2}, s^-1): not a number of the answer
_UNIT_POWER_RE = re.compile(r"(?<=[^\W\d_])\s*\^\s*\{?\s*-?\d+\s*\}?")
_FRAC_RE = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
_TEXT_RE = re.compile(r"\\(?:text|mathrm|mbox|textrm|textbf|mathbf|boldsymbol|mathit|textit|bm)\s*\{([^{}]*)\}")
_LAYOUT_RE = re.compile(r"\\(?:displaystyle|textstyle|left|right|bigl|bigr|Bigl|Bigr|big|Big|approx|quad|qquad|;|:| )")


def _clean_math_text(text: str) -> str:
    s = unbox(str(text))
    s = s.replace("\u2212", "-").replace("\\%", "%").replace("{,}", ",")
    s = s.replace("\\!", "").replace("\\,", "").replace("$", "")
    s = s.replace("^{\\circ}", "\u00b0").replace("^\\circ", "\u00b0").replace("\\degree", "\u00b0")  # 30^\circ: 30°
    s = _TEXT_RE.sub(r" \1 ", s)  # units in \text{cm}, \mathrm{cm}: words; \textbf{12}, \mathbf{7}: their content
    s = _LAYOUT_RE.sub(" ", s)  # \displaystyle, \left( ... \right), \approx, spaces: no value of their own
    return _FRAC_RE.sub(r"(\1)/(\2)", s).replace("(", " ").replace(")", " ")


def parse_numbers(text: str) -> list[float]:
    """The values the last number written in ``text`` may stand for; [] when none.

    Read after unwrapping ``\\boxed{}`` and the LaTeX of plain numbers (``$``, ``\\frac{a}{b}``,
    ``\\dfrac``, ``1{,}000``, ``\\%``, the Unicode minus). A number may carry thousands
    commas (``1,000`` is 1000: groups of exactly three digits), a fraction ``a/b`` (its
    quotient; a zero denominator gives nothing) and a percent sign: ``p%`` stands for both
    p and p/100, because data sets write percentages either way (ChartQA's "75" against a
    model's "75%", or "0.75"). The *last* number is taken, as a final answer ends the text; a
    unit's power (``cm^2``, ``m/s^{2}``) is no number (``12.5 cm^2`` read as 2 before). A
    number with a decimal comma, two numbers joined by one comma whose second has one or two
    digits (``3,5``, ``-0,25``, not ``1,2,3``), is that decimal (3.5: French, German and most
    of Europe write it so; it read as 5 before 2026-12-07), and only that: read as both, ``a,b``
    would be paid as ``b`` and as ``a.b``, a hedge.
    """
    cleaned = _UNIT_POWER_RE.sub(" ", _clean_math_text(text))
    found = list(_NUMBER_RE.finditer(cleaned))
    if not found:
        return []
    last = found[-1]
    comma = decimal_comma_at(cleaned, last.end(1)) if last.group(2) is None else None
    if comma is None:
        return _values(last)
    decimal = float(f"{comma.group(1)}.{comma.group(2)}")
    return [decimal, decimal / 100.0] if last.group(3) else [decimal]


def decimal_comma_at(text: str, end: int) -> re.Match | None:
    """The number with a decimal comma (:data:`_DECIMAL_COMMA_RE`) of ``text`` that ends at
    ``end``, or None."""
    for m in _DECIMAL_COMMA_RE.finditer(text, max(0, end - 80), end + 1):
        if m.end(2) == end:
            return m
    return None


def _values(found: re.Match) -> list[float]:
    """The values one :data:`_NUMBER_RE` match stands for (see :func:`parse_numbers`)."""
    num, den, percent = found.groups()
    try:
        value = float(num.replace(",", ""))
        if den is not None:
            value = value / float(den.replace(",", ""))
    except (ValueError, ZeroDivisionError, OverflowError):
        return []
    if not math.isfinite(value):
        return []
    return [value, value / 100.0] if percent else [value]


# what makes a solution an expression rather than a number: a LaTeX command left after the plain
# numbers' LaTeX is read (\sqrt, \pi, \cdot, ...), a root or pi sign, a power
_EXPRESSION_RE = re.compile(r"\\[A-Za-z]+|[\u221a\u03c0^]|\bsqrt\b|\bpi\b")


_LIST_GLUE_RE = re.compile(r"[\s,;\[\]]*")


def number_list(text: str) -> int:
    """How many numbers ``text`` lists when it is nothing but numbers, commas, semicolons,
    brackets and spaces (``"[12, 24, 37, 49]"``: 4; ``"1,000"``, one number with a thousands
    comma: 1); 0 when it holds anything else."""
    cleaned = _clean_math_text(text)
    found = list(_NUMBER_RE.finditer(cleaned))
    glue = _NUMBER_RE.sub(" ", cleaned)
    return len(found) if found and _LIST_GLUE_RE.fullmatch(glue) else 0


def numeric_match(pred: str, gold: str, rel_tol: float = 1e-6) -> bool:
    """True when the last number of ``pred`` equals the solution's within ``rel_tol``:
    ``|p - g| <= max(rel_tol * max(|p|, |g|), 1e-12)`` (``math.isclose``), for any pair of
    the values each may stand for (see :func:`parse_numbers`). ``"1,000"`` matches
    ``"1000"``, ``"3/4"`` ``"0.75"``, ``"\\boxed{42}"`` ``"42"``, ``"75%"`` both ``"75"`` and ``"0.75"``.

    Raises:
        ValueError: the solution holds no number, is an expression (``\\sqrt{2}``,
            ``2\\pi``, ``x^2``) or a list of numbers (``[12, 24, 37, 49]``, a box): read as
            its last number, a wrong answer of that number would score 1 (mode "math"
            compares expressions).
    """
    golds = parse_numbers(gold)
    if _EXPRESSION_RE.search(_clean_math_text(gold)):
        read = (f" ({_clean_math_text(gold).strip()!r} would read as {golds[0]:g}, and so would a wrong answer of "
                "that number)") if golds else ""
        raise ValueError(f"solution {gold!r} is an expression, not a number: numeric mode reads the last number of "
                         f"each text{read}; use mode math (math-verify, pip install math-verify)")
    if not golds:
        raise ValueError(f"solution {gold!r} holds no number")
    listed = number_list(gold)
    if listed > 1:
        comma = listed == 2 and _DECIMAL_COMMA_RE.search(_clean_math_text(gold)) is not None
        hint = " (a box?)" if listed == 4 else " (a decimal comma? write it with a point)" if comma else ""
        raise ValueError(f"solution {gold!r} is a list of {listed} numbers{hint}, not "
                         "one: numeric mode reads the "
                         f"last number of each text, so an answer ending in {golds[0]:g} would score 1; score boxes "
                         "with a box reward, and give each reward the tasks of its rows (tasks: [...])")
    preds = parse_numbers(pred)
    return any(math.isclose(p, g, rel_tol=rel_tol, abs_tol=1e-12) for p in preds for g in golds)


# --------------------------------------------------------------------------- multiple choice

_WHOLE_LETTER_RE = re.compile(r"\s*[(\[]?\s*([A-Za-z])\s*[)\]]?\s*[.:,;!。、]?\s*")
_PHRASE_LETTER_RE = re.compile(
    r"(?i:\b(?:answer|option|choice|r[ée]ponse|respuesta|antwort|risposta|resposta|ответ|вариант)\b"
    r"(?:\s+(?:correct[ao]?|corretta|correta))?"  # la respuesta correcta es B, a resposta correta é B
    r"(?:\s+(?:is|would\s+be|should\s+be|will\s+be|est|es|ist|è|é))?\s*:?\s*"
    r"(?:(?:option|choice)\s+)?)[(\[]?([A-Z])(?![A-Za-z])"
    # Chinese, Japanese, Korean: no spaces between words (答案是B, 选B, 答えはB, 정답은 B, 답은 B); not 不选B ("not B")
    r"|(?<![不没沒])(?:答案|答|选项|选择|选|答え|正解|정답|답)\s*(?:是|为|為|は|은|는)?\s*:?\s*[(\[「]?([A-Z])(?![A-Za-z])"
)
# a second letter offered beside the one read: "A or B", "A ou B", "A或B" (a hedge reads no letter)
_OR_LETTER_RE = re.compile(r"\s*[)\]」]?\s*(?i:or|ou|o|oder|или|或|或者|还是|または|또는)\s*[(\[「]?[A-Z](?![A-Za-z])")
_LEADING_LETTER_RE = re.compile(r"\s*(?:[(\[]([A-Z])[)\]]|([A-Z])(?:\)|[.:](?=\s|$)))")
_BRACKETED_LETTER_RE = re.compile(r"[(\[]([A-Z])[)\]]")


def extract_choice(text: str) -> str | None:
    """The option letter an answer names, upper-case, or None. Rules, first hit wins:

    1. the whole answer is one letter, maybe bracketed or followed by ``.``/``:``
       (``"B"``, ``"b"``, ``"(B)"``, ``"[B]."``);
    2. the last "answer/option/choice [is] [:] X" phrase (``"The answer is B"``,
       ``"Answer: (C)"``, ``"the correct option is D."``), also in French, Spanish, German,
       Italian, Portuguese, Russian, Chinese, Japanese and Korean (``"La réponse est B"``,
       ``"Ответ: B"``, ``"答案是B"``, ``"选B"``, ``"答えはB"``, ``"정답은 B"``; each read nothing
       before 2026-12-07);
    3. a leading option label: ``"(B) cat"``, ``"B) cat"``, ``"B. cat"``, ``"B: cat"``;
    4. the last bracketed capital letter: ``"I pick (D) here"``.

    Rules 2-4 accept capital letters only, so the article "a" and the pronoun "I" in
    free text are not read as options. A phrase whose letter is followed by another offered
    beside it (``"The answer is A or B"``, ``"答案是A或B"``) reads no letter: a hedge (it read A
    before 2026-12-07), as does ``"不选B"`` ("not B"). ``\\boxed{}`` and ``$`` are removed first, and
    full-width forms read as ASCII (NFKC: ``"（Ｂ）"`` is ``"(B)"``); a letter alone may end with
    ``,`` ``;`` ``!`` ``。`` ``、`` as with ``.`` and ``:`` (``"B。"`` read nothing before 2026-12-07).
    """
    s = unicodedata.normalize("NFKC", unbox(str(text))).replace("$", "").strip()
    m = _WHOLE_LETTER_RE.fullmatch(s)
    if m:
        return m.group(1).upper()
    phrases = list(_PHRASE_LETTER_RE.finditer(s))
    if phrases:
        last = phrases[-1]
        return None if _OR_LETTER_RE.match(s, last.end()) else "".join(g for g in last.groups() if g)
    m = _LEADING_LETTER_RE.match(s)
    if m:
        return m.group(1) or m.group(2)
    bracketed = _BRACKETED_LETTER_RE.findall(s)
    return bracketed[-1] if bracketed else None


def choice_match(pred: str, gold: str) -> bool:
    """True when both answers name the same option letter (:func:`extract_choice`): a
    prediction ``"B"``, ``"(B)"``, ``"B. cat"`` or ``"The answer is B"`` matches a solution
    ``"B"`` or ``"(B) cat"``.

    Raises:
        ValueError: the solution names no option letter.
    """
    g = extract_choice(gold)
    if g is None:
        raise ValueError(f"solution {gold!r} names no option letter")
    return extract_choice(pred) == g


# --------------------------------------------------------------------------- yes / no


def extract_yes_no(text: str) -> str | None:
    """"yes", "no" or None: the answer's first word when it is yes or no (``"Yes, there
    are two."``), unless the other word comes straight after it (``"yes or no"``,
    ``"No/yes"``, ``"yes and no"``: a hedge, None); else the only one of the two words the
    answer holds; None when it holds both (after a first word that is neither) or
    neither. Case and punctuation do not count."""
    words = re.findall(r"[a-z]+", normalize_text(unbox(str(text))))
    if not words:
        return None
    if words[0] in ("yes", "no"):
        other = "no" if words[0] == "yes" else "yes"
        nxt = words[1:2] if words[1:2] != ["or"] and words[1:2] != ["and"] else words[2:3]
        return None if nxt == [other] else words[0]
    seen = {w for w in words if w in ("yes", "no")}
    return seen.pop() if len(seen) == 1 else None


def yes_no_match(pred: str, gold: str) -> bool:
    """True when both answers say the same of yes/no (:func:`extract_yes_no`).

    Raises:
        ValueError: the solution is neither yes nor no.
    """
    g = extract_yes_no(gold)
    if g is None:
        raise ValueError(f"solution {gold!r} is neither yes nor no")
    return extract_yes_no(pred) == g


# --------------------------------------------------------------------------- math

MATH_VERIFY_HINT = "mode='math' needs the math-verify package: pip install math-verify"


def _math_verify():
    try:
        import math_verify
    except ImportError as exc:
        raise ImportError(MATH_VERIFY_HINT) from exc
    return math_verify


_WORDS_RE = re.compile(r"[^\W\d_]+(?:[\s'-]+[^\W\d_]+)*")  # letters only, words joined by spaces, ' or -
# two-letter answers that are words, not products of two variables (``xy``, ``ab``, a segment ``AB``)
SHORT_WORDS = frozenset("no on up in it is at to of or an as be by do go he if me my we us so ok".split())


def is_words(text: str) -> bool:
    """Whether ``text`` (unboxed, normalised) is words and no math: letters only, with a word of
    three letters or more (``red``, ``top left``) or only common two-letter words (``no``, ``up``);
    ``xy``, ``ab`` and single letters (``x``, ``A``) stay math."""
    s = normalize_text(unbox(str(text)))
    if not _WORDS_RE.fullmatch(s):
        return False
    words = re.split(r"[\s'-]+", s)
    return any(len(w) > 2 for w in words) or all(w in SHORT_WORDS for w in words)


# words that deny or hedge a number: negation ("not 3", "4 is wrong"), comparison ("at least 3",
# "3 or more"), estimate ("almost 3"); none of them is math that math-verify would read, nor a word
# of place ("3 birds above the tree") or an answer's "No, it is 3."
_DENIES_OR_HEDGES = frozenset("""
    not never neither nor wrong incorrect false none
    less more fewer greater than least most exceeds exceed
    almost nearly approximately approx roughly circa several many few
    """.split())
# words that make a number among them another answer: those, sign, bounds, scale ("3 hundred",
# "half of 8"), operation ("3 squared", "square root of 16", "2 pi"): a number among them is not
# read as the answer
_CHANGES_THE_NUMBER = _DENIES_OR_HEDGES | frozenset("""
    no except without under above below within between beyond around
    minus negative plus positive over up max maximum min minimum
    hundred hundreds thousand thousands million millions billion billions dozen dozens
    half halves third thirds quarter quarters fourth fourths fifth fifths sixth sixths tenth tenths
    hundredth hundredths double twice triple thrice percent percentage
    squared cubed cube root roots power powers sqrt pi tau log ln sin cos tan factorial
    divided multiplied ratio fraction
    """.split())
_ENGLISH_LETTERS = frozenset(("I", "a", "A"))  # one-letter words; any other letter may be a variable
_WORD_OR_UNIT_RE = re.compile(r"[^\W\d_]+(?:[/'-][^\W\d_]+)*")  # circles, isn't, top-left, m/s


def number_among_words(text: str) -> list[float]:
    """The values of an answer that is one number among words and no math: ``3 circles``,
    ``I think 4``, ``There are 2 red circles.``, ``12.5 cm^2``, ``The number of circles is 3``;
    [] for anything else (two numbers, an operator or LaTeX command, a one-letter variable, a
    word that changes the number: ``not 3``, ``at least 3``, ``3 hundred``, ``half of 8``)."""
    s = _UNIT_POWER_RE.sub(" ", _clean_math_text(text))
    found = list(_NUMBER_RE.finditer(s))
    if len(found) != 1:
        return []
    rest = (s[:found[0].start()] + " " + s[found[0].end():]).split()
    for token in rest:
        word = token.rstrip(".,!?;:")
        if not word:
            continue
        if not _WORD_OR_UNIT_RE.fullmatch(word) or (len(word) == 1 and word not in _ENGLISH_LETTERS):
            return []
        if any(part in _CHANGES_THE_NUMBER for part in re.split(r"[/'-]", word.lower())) or word.lower().endswith("n't"):
            return []
    return _values(found[0])


# an option letter, alone or before the option's text: "B", "(B)", "B. 12", "C) 45°"
_CHOICE_SOLUTION_RE = re.compile(r"\s*[(\[]?\s*([A-Z])\s*[)\]]?\s*(?:[.:)]\s*(.*))?", re.S)


def math_route(gold: str) -> str:
    """How mode math reads an answer against ``gold``: "yes_no", "words" (as exact), "choice" (an
    option letter that :func:`extract_choice` reads), else "math" (math-verify). One decision,
    taken alike when a run starts (:func:`answer_problem`) and for each answer."""
    if normalize_text(unbox(gold)) in ("yes", "no"):
        return "yes_no"
    if is_words(gold):
        return "words"
    if _CHOICE_SOLUTION_RE.fullmatch(unbox(str(gold))) and extract_choice(gold) is not None:
        return "choice"
    return "math"


def math_match(pred: str, gold: str) -> bool:
    """Symbolic equivalence by Hugging Face's ``math-verify``: both strings are parsed
    (LaTeX or plain expressions, boxed answers preferred; an answer without math
    delimiters is read as one formula, see :func:`_math_parse`) into sympy objects and
    ``verify(gold, pred)`` decides (numeric equality after rounding, symbolic
    simplification, sets, intervals, equations). ``"\\frac{1}{2}"`` matches ``"0.5"``.

    Answers math-verify misreads are read first by what the solution is:

    - a solution of words (:func:`is_words`: ``red``, ``top left``; not ``xy``) is compared as
      text, as ``exact`` does: math-verify reads a word as a product of symbols, so ``on``
      matched ``no`` and ``felt`` matched ``left``;
    - ``yes`` / ``no`` as ``yes_no`` does (``Yes, there is`` scored 0);
    - an option letter (``B``, ``(B)``, ``B. 12``; a capital letter alone, not ``x``) as
      ``choice`` does (``B. 12``, ``Option B``, ``The answer is (B).`` scored 0), or, for a
      solution that gives the option's text (``B. 12``), an answer matching that text (``12``);
    - a number: an answer of one number among words (:func:`number_among_words`: ``3 circles``,
      ``12.5 cm^2``) is that number, where math-verify's verdict is no match (``3 circles``
      read as a product with the letters and scored 0, ``3 triangles`` 1).

    math-verify bounds parsing and verification with SIGALRM timeouts, which Python only
    allows in the main thread; elsewhere (a data-loader or callback thread) the matcher
    runs without a timeout instead of failing.

    There is deliberately no fallback without math-verify: a lighter matcher would score
    the same run differently depending on what is installed.

    Raises:
        ImportError: math-verify is not installed (``pip install math-verify``).
        ValueError: math-verify reads no expression in the solution.
    """
    mv = _math_verify()
    route = math_route(gold)
    if route == "yes_no":
        return yes_no_match(pred, gold)
    if route == "words":
        return exact_match(pred, gold)
    if route == "choice":
        if choice_match(pred, gold):
            return True
        text = (_CHOICE_SOLUTION_RE.fullmatch(unbox(str(gold))).group(2) or "").strip()
        if not text or extract_choice(pred) is not None:  # another letter ("C. 12" for "B. 12") is wrong
            return False
        how = math_route(text)  # the option's text answered for its letter ("12", "cat")
        if how == "words":
            return exact_match(pred, text)
        if how != "math":
            return False
        try:
            return _verified(mv, pred, text)
        except ValueError:  # math-verify reads nothing in the text ("B. $"): no match, not a stopped run
            return False
    return _verified(mv, pred, gold)


_MATH_SPAN_RE = re.compile(r"\$\$.*?\$\$|\$.*?\$|\\\(.*?\\\)|\\\[.*?\\\]", re.S)
_PROSE_WORD_RE = re.compile(r"(?<![\\\w])[^\W\d_]+(?:'[^\W\d_]+)?")  # a word, not a LaTeX command's name


def denies_or_hedges(pred: str) -> bool:
    """Whether the prose of an answer (its text outside ``$...$``, ``\\(...\\)``, ``\\[...\\]``)
    denies or hedges: ``It is not 3.``, ``The answer is not $3$``, ``3 or more``, ``isn't 3``.
    An answer with ``\\boxed`` is read by its box alone."""
    if "\\boxed" in pred:
        return False
    words = _PROSE_WORD_RE.findall(_MATH_SPAN_RE.sub(" ", pred))
    return any(w.lower() in _DENIES_OR_HEDGES or w.lower().endswith("n't") for w in words)


def _verified(mv, pred: str, gold: str) -> bool:
    """math-verify's verdict on ``pred`` against ``gold``, else :func:`number_among_words`'.
    Against a solution that is a number, an answer whose prose denies or hedges
    (:func:`denies_or_hedges`) does not match: math-verify reads ``It is not 3.`` and
    ``3 or more`` as 3."""
    if number_among_words(gold) and denies_or_hedges(pred):
        return False
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    gold_parsed = _math_parse(mv, str(gold), timeout)
    if not gold_parsed:
        raise ValueError(f"math-verify reads no expression in solution {gold!r}")
    pred_parsed = _math_parse(mv, str(pred), timeout)
    if pred_parsed and mv.verify(gold_parsed, pred_parsed, timeout_seconds=timeout):
        return True
    golds, preds = number_among_words(gold), number_among_words(pred)
    return any(math.isclose(p, g, rel_tol=1e-9, abs_tol=1e-12) for p in preds for g in golds)


def _math_parse(mv, text: str, timeout: int | None) -> list:
    """math-verify's parse; an answer written with no math delimiter (``$``, ``\\(``,
    ``\\[``, ``\\boxed``) is read as one inline formula first, because without an
    anchor math-verify only looks for bare numbers and reads ``1+x`` as 1."""
    if not any(d in text for d in ("$", "\\(", "\\[", "\\boxed")):
        parsed = mv.parse(f"${text}$", parsing_timeout=timeout)
        if parsed:
            return parsed
    return mv.parse(text, parsing_timeout=timeout)


# --------------------------------------------------------------------------- dispatch


def check_mode(mode: str) -> str:
    """``mode`` when it is one of :data:`MODES`; ValueError naming them otherwise.
    For "math", ImportError when math-verify is missing (found at construction, not
    in the middle of a run)."""
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not valid; choose one of {', '.join(MODES)}")
    if mode == "math":
        _math_verify()
    return mode


def match_answer(pred: str, gold: str, mode: str = "exact", tolerance: float = 1e-6) -> bool:
    """Apply the matcher of ``mode`` (see :data:`MODES`) to two answer strings;
    ``tolerance`` is the relative tolerance of "numeric" and ignored by the others."""
    if mode == "exact":
        return exact_match(pred, gold)
    if mode == "numeric":
        return numeric_match(pred, gold, rel_tol=tolerance)
    if mode == "choice":
        return choice_match(pred, gold)
    if mode == "yes_no":
        return yes_no_match(pred, gold)
    if mode == "math":
        return math_match(pred, gold)
    raise ValueError(f"mode={mode!r} is not valid; choose one of {', '.join(MODES)}")


def solution_text(solution: Any) -> str:
    """The answer of a sample's solution: the text inside its last ``<answer>`` tags when
    it has them, else the solution itself (numbers are turned into text)."""
    if solution is None:
        raise ValueError("the sample has no solution")
    return answer_text(solution if isinstance(solution, str) else str(solution))


def is_correct(completion: str, solution: Any, mode: str = "exact", tolerance: float = 1e-6) -> bool:
    """Whether a completion's answer (:func:`answer_text`) matches the solution's
    (:func:`solution_text`) under ``mode``."""
    return match_answer(answer_text(completion), solution_text(solution), mode, tolerance)


_BOX_KEY_RE = re.compile(r"""["']bbox(?:_2d)?["']\s*:""")


def _is_box(value: Any) -> bool:
    return (isinstance(value, (list, tuple)) and len(value) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value))


def written_as_boxes(solution: Any) -> bool:
    """Whether a solution is a detection or grounding answer, not one an answer matcher reads:
    Vision-R1's ``[[label, [x1, y1, x2, y2]], ...]`` list, ``bbox_2d`` / ``bbox`` items (a
    list of them, or JSON in a string). Read as text, a number matcher took its last coordinate
    for the answer (a mixed-task trial: ``<answer> 34 </answer>`` scored 1 on a detection row)."""
    if isinstance(solution, str):  # its answer only: reasoning may quote a box key
        return _BOX_KEY_RE.search(answer_text(solution)) is not None
    if isinstance(solution, dict):
        return "bbox_2d" in solution or "bbox" in solution
    if isinstance(solution, (list, tuple)) and solution:
        return all(written_as_boxes(item) if isinstance(item, dict) else
                   isinstance(item, (list, tuple)) and len(item) == 2 and _is_box(item[1]) for item in solution)
    return False


def answer_problem(solution: Any, mode: str) -> str | None:
    """Why no answer can be matched with ``solution`` under ``mode`` (none given, empty, boxes,
    no number in a numeric one, an expression in a numeric one, no option letter, nothing
    math-verify reads), or None: asked of every training row at fit start
    (:meth:`Reward.solution_problem`)."""
    if written_as_boxes(solution):
        shown = solution if isinstance(solution, str) else str(solution)
        return (f"solution {shown[:80] + ('...' if len(shown) > 80 else '')!r} is written as boxes, not an answer mode "
                f"{mode} reads (as text, its last coordinate would be the answer): score boxes with a box reward, and "
                "give each reward the tasks of its rows (tasks: [...])")
    try:
        gold = solution_text(solution)
    except ValueError as e:
        return f"{e} (mode {mode})"
    return _gold_problem(gold, mode)


@functools.lru_cache(maxsize=65536)
def _gold_problem(gold: str, mode: str) -> str | None:
    """:func:`answer_problem` of one solution text, remembered: a data set repeats its answers,
    and math-verify takes about a millisecond a parse."""
    if not normalize_text(unbox(gold)):
        return "the solution is empty: there is no answer to compare with"
    try:
        if mode == "math":  # the solution alone: math-verify's parse is the cost
            timeout = 5 if threading.current_thread() is threading.main_thread() else None
            if math_route(gold) == "math" and not _math_parse(_math_verify(), gold, timeout):
                raise ValueError(f"math-verify reads no expression in solution {gold!r}")
        else:
            match_answer("", gold, mode)
    except ValueError as e:
        return f"{e} (mode {mode})"
    return None


def _check_tolerance(tolerance: float) -> float:
    if not tolerance >= 0:
        raise ValueError(f"tolerance={tolerance} must be a relative tolerance >= 0")
    return float(tolerance)


# --------------------------------------------------------------------------- rewards


class Accuracy(Reward):
    """1.0 when the completion's answer matches the solution, else 0.0 (the R1 accuracy
    reward; DeepSeek-R1, and VLM-R1/R1-V's ``accuracy_reward`` for text answers).

    The answer is the text inside the completion's last ``<answer>...</answer>`` (the
    whole completion without one); the solution is read the same way.

    Args:
        mode: the matcher: "exact" (:func:`exact_match`, case/space-insensitive text),
            "numeric" (:func:`numeric_match`), "choice" (:func:`choice_match`, option
            letters), "yes_no" (:func:`yes_no_match`) or "math" (:func:`math_match`,
            needs ``pip install math-verify``; ImportError here when missing).
        tolerance: relative tolerance of "numeric".
    """

    default_name = "accuracy"

    def __init__(self, mode: str = "exact", tolerance: float = 1e-6, **kwargs) -> None:
        super().__init__(**kwargs)
        self.mode = check_mode(mode)
        self.tolerance = _check_tolerance(tolerance)

    def solution_problem(self, ctx: SampleContext) -> str | None:
        return answer_problem(ctx.solution, self.mode)

    def score(self, completions: list[str], contexts: list[SampleContext]) -> list[float]:
        return [1.0 if is_correct(c, ctx.solution, self.mode, self.tolerance) else 0.0
                for c, ctx in zip(completions, contexts)]


class HFRRF(Reward):
    """Vision-R1's Hard Formatting Result Reward Function (Huang et al., 2025, "Vision-R1:
    Incentivizing Reasoning Capability in Multimodal Large Language Models"): a single
    all-or-nothing reward, 1.0 only when the completion is in the think/answer format
    (the whole completion is ``<think>...</think>`` then ``<answer>...</answer>``, as
    :class:`lit_vr1.rewards.ThinkAnswerFormat`) *and* its answer is correct (as
    :class:`Accuracy` with the same ``mode``); 0.0 otherwise. No partial credit for the
    format alone, so a model cannot earn reward by formatting a wrong answer well.

    Args:
        mode: the answer matcher, as in :class:`Accuracy`.
        tolerance: relative tolerance of the numeric matcher, as in :class:`Accuracy`.
    """

    default_name = "hfrrf"

    def __init__(self, mode: str = "exact", tolerance: float = 1e-6, **kwargs) -> None:
        super().__init__(**kwargs)
        self.mode = check_mode(mode)
        self.tolerance = _check_tolerance(tolerance)

    def solution_problem(self, ctx: SampleContext) -> str | None:
        return answer_problem(ctx.solution, self.mode)

    def score(self, completions: list[str], contexts: list[SampleContext]) -> list[float]:
        return [1.0 if think_answer_ok(c) and is_correct(c, ctx.solution, self.mode, self.tolerance) else 0.0
                for c, ctx in zip(completions, contexts)]
