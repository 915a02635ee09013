"""The reasoning demo's report (``make demo TASK=reasoning``): Vision-R1's cold start + PTST in
miniature, on held-out counting questions.

Each model answers every held-out image greedily. Its accuracy is the HFRRF criterion the
GRPO stage trains on (the ``<think>...</think> <answer>...</answer>`` layout holds and the
count is right); the answer alone (any layout), the layout rate, the mean answer length in
tokens and the share cut off at the token limit are reported beside it. The trivial policy
answers the count most frequent in the training data for every image (the majority
answer, on the true counts). Gains are paired (the same images): the mean per-image
difference and its standard error.
"""

from __future__ import annotations

import re
from collections import Counter

from lit_vr1.data.jsonl import Sample
from lit_vr1.demo_detection import paired_mean
from lit_vr1.evaluate import AnswerPrediction, predict_answers
from lit_vr1.models.loading import load_model, load_processor
from lit_vr1.rewards.accuracy import answer_text, parse_numbers, solution_text
from lit_vr1.viz import draw_boxes, grid

LABELS = {"sft": "after SFT", "control": "SFT control", "no_ptst": "GRPO, no PTST", "grpo": "after GRPO"}


def answer_dir(model_dir: str, samples: list[Sample], max_new_tokens: int) -> list[AnswerPrediction]:
    processor = load_processor(model_dir)
    model = load_model(model_dir, processor).eval()
    return predict_answers(model, processor, samples, batch_size=50, max_new_tokens=max_new_tokens)


def majority_answer(train_solutions: list) -> str:
    """The answer most frequent among the training solutions (ties: the first met)."""
    counts = Counter(solution_text(s).strip() for s in train_solutions)
    return counts.most_common(1)[0][0]


def teacher_accuracy(traces: list, truth: list) -> dict[str, float]:
    """How often the cold-start traces' counts (``traces``: the SFT data's records) are the
    true counts (``truth``: the GRPO data's records of the same images, in the same order)."""
    if [r.id for r in traces] != [r.id for r in truth]:
        raise ValueError("teacher_accuracy: the SFT and GRPO data hold different images")
    right = [solution_text(a.solution).strip() == solution_text(b.solution).strip() for a, b in zip(traces, truth)]
    return {"accuracy": sum(right) / max(len(right), 1), "images": len(right)}


_ITEM_RE = re.compile(r"\b\d+:")  # "1: red circle." - one numbered item of a trace


def _number(text: str) -> float | None:
    """The last number of ``text`` as the numeric matcher reads it (None: no number)."""
    values = parse_numbers(text)
    return values[0] if values else None


def listed(completion: str) -> int | None:
    """How many numbered items the ``<think>`` block lists (None: no complete think block)."""
    if "<think>" not in completion or "</think>" not in completion:
        return None
    return len(_ITEM_RE.findall(completion.split("<think>", 1)[1].split("</think>", 1)[0]))


def figures(preds: list[AnswerPrediction]) -> dict[str, float]:
    """accuracy (HFRRF), answer (right whatever the layout), format, tokens and truncated
    (means over the images); over / under: the share of answers above / below the true
    count; count_ratio: the mean count answered over the mean true count (answers with a
    number; above 1: a policy that learnt to say more, as a loose box is for REC); consistent: the
    share of answers in the layout whose count is the number of items their trace lists (an
    answer that does not count what it lists is right by luck, not by its reasoning)."""
    n = max(len(preds), 1)
    said = [(_number(p.answer), _number(solution_text(p.sample.solution))) for p in preds]
    answered = [(a, t) for a, t in said if a is not None]
    return {"accuracy": sum(p.correct for p in preds) / n, "answer": sum(p.answer_ok for p in preds) / n,
            "format": sum(p.format_ok for p in preds) / n, "tokens": sum(p.tokens for p in preds) / n,
            "truncated": sum(p.truncated for p in preds) / n,
            "over": sum(a > t for a, t in answered) / n,
            "under": sum(a < t for a, t in answered) / n,
            "count_ratio": (sum(a for a, _ in answered) / max(sum(t for _, t in answered), 1e-9)
                            if answered else float("nan")),
            "consistent": sum(p.format_ok and (a is not None and a == listed(p.completion))
                              for p, (a, _) in zip(preds, said)) / n}


def per_count(preds: list[AnswerPrediction]) -> dict[str, float]:
    """Accuracy by the true count (the strings of the solutions' answers)."""
    by: dict[str, list[bool]] = {}
    for p in preds:
        by.setdefault(solution_text(p.sample.solution).strip(), []).append(p.correct)
    return {k: sum(v) / len(v) for k, v in sorted(by.items())}


def gain(before: list[AnswerPrediction], after: list[AnswerPrediction]) -> dict[str, float]:
    """Paired accuracy gain of ``after`` over ``before`` (the same images, in order)."""
    if [p.sample.id for p in before] != [p.sample.id for p in after]:
        raise ValueError("gain: the two models answered different images")
    return paired_mean([float(p.correct) for p in before], [float(p.correct) for p in after])


def score_reasoning(models: dict[str, str], samples: list[Sample], majority: str,
                    max_new_tokens: int) -> tuple[dict, dict[str, list[AnswerPrediction]]]:
    """Figures of each saved model and of the majority answer on ``samples``; GRPO's paired
    gains over its SFT start, the control and GRPO without PTST, and the no-PTST run's over
    the SFT start."""
    preds = {name: answer_dir(path, samples, max_new_tokens) for name, path in models.items()}
    truth = [solution_text(s.solution).strip() for s in samples]
    split = {"held_out_images": len(samples),
             **{name: {**figures(p), "by_count": per_count(p)} for name, p in preds.items()},
             "majority": {"answer": majority, "accuracy": sum(t == majority for t in truth) / max(len(truth), 1)}}
    pairs = [("grpo", base) for base in ("sft", "control", "no_ptst")] + [("no_ptst", "sft")]
    split["gains"] = {f"{a}_vs_{b}": gain(preds[b], preds[a]) for a, b in pairs if a in preds and b in preds}
    return split, preds


def print_reasoning_table(title: str, split: dict) -> None:
    print(f"{title}: {split['held_out_images']} images (greedy decoding)")
    print(f"{'':15}{'accuracy':>9}{'answer':>8}{'format':>8}{'tokens':>8}{'cut off':>9}{'over':>7}{'under':>7}"
          f"{'counts its list':>17}")
    for name, label in LABELS.items():
        if name in split:
            f = split[name]
            print(f"{label:15}{f['accuracy']:9.3f}{f['answer']:8.3f}{f['format']:8.3f}{f['tokens']:8.1f}"
                  f"{f['truncated']:9.3f}{f['over']:7.3f}{f['under']:7.3f}{f['consistent']:17.3f}")
    print(f"{'majority':15}{split['majority']['accuracy']:9.3f}   (always '{split['majority']['answer']}')")
    if "teacher" in split:
        t = split["teacher"]
        print(f"cold-start teacher: its traces' counts are right on {t['accuracy']:.3f} of the {t['images']} training images")
    for key, g in split["gains"].items():
        a, b = key.split("_vs_")
        print(f"accuracy gain of {LABELS[a]} over {LABELS[b]}: {g['mean']:+.3f} (paired standard error {g['se']:.3f})")


def draw_answers(samples: list[Sample], sft: list[AnswerPrediction], grpo: list[AnswerPrediction], path: str,
                 n: int = 12) -> None:
    """Held-out images, each with its true count and the SFT and GRPO answers."""
    def line(name: str, p: AnswerPrediction) -> str:
        return f"{name} {answer_text(p.completion).strip()[:6]} {'ok' if p.correct else 'wrong'}"

    tiles = [draw_boxes(s.images[0], scale=max(2, 224 // s.images[0].width),
                        labels=[f"true {solution_text(s.solution).strip()}", line("sft", ps), line("grpo", pg)])
             for s, ps, pg in list(zip(samples, sft, grpo))[:n]]
    grid(tiles, columns=4).save(path)
