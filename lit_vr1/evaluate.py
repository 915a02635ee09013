"""Evaluation by greedy decoding: REC (Acc@0.5, mean IoU, JSON-format rate), detection
(the boxes for COCO mAP, prompting with all categories at once or once per category) and
answers (Vision-R1's HFRRF: the think/answer layout and the right answer).

Used by the modules' validation and by ``lit_vr1.demo`` to score a saved model on a
held-out split, so "before" and "after" are measured by one and the same code.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from transformers import PreTrainedModel, ProcessorMixin

from lit_vr1.data.jsonl import Sample, loaded
from lit_vr1.data.prompts import build_messages, system_text
from lit_vr1.predict import frame_of, greedy_rollout, predict_records
from lit_vr1.rewards.accuracy import answer_text, is_correct
from lit_vr1.rewards.boxes import (
    BOX_FRAMES,
    Box,
    ParsedBox,
    box_solution_problem,
    first_box,
    is_degenerate,
    solution_boxes,
    to_original,
)
from lit_vr1.rewards.detection import normalize_label
from lit_vr1.rewards.rec import RecJsonFormat, rec_ious, think_answer_ok


@dataclass
class Prediction:
    """One greedy answer: the text, its box in original pixels (None if unparsable) and its IoU;
    ``frame_ious``: its IoU were its box read in each frame of ``BOX_FRAMES`` (empty without
    image sizes), which :func:`better_frame_note` compares."""

    sample: Sample
    completion: str
    box: Box | None
    iou: float
    format_ok: bool
    truncated: bool = False  # cut short at max_new_tokens
    frame_ious: dict[str, float] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """This answer as plain values (JSON, a DataFrame row): the row's id as written, its
        source, the completion, the box (original pixels; None unparsable), IoU, format,
        truncation and the solution."""
        return {"id": self.sample.written_id if self.sample.written_id is not None else self.sample.id,
                "source": self.sample.source, "completion": self.completion,
                "box": list(self.box) if self.box is not None else None, "iou": float(self.iou),
                "format_ok": bool(self.format_ok), "truncated": bool(self.truncated), "solution": self.sample.solution}


def outside_image(box: Box | None, size: tuple[int, int], slack: float = 0.05) -> bool:
    """Whether ``box`` (original pixels) reaches past its image (``size`` = (width, height)) by
    more than ``slack`` of a side: the mark of an answer read in another frame than written."""
    if box is None:
        return False
    w, h = size
    return box[0] < -slack * w or box[1] < -slack * h or box[2] > (1 + slack) * w or box[3] > (1 + slack) * h


def frame_note(outside: int, boxes: int, frame: str, split: str | None, sums: dict[str, float] | None = None,
               n: int = 0) -> str | None:
    """A note when a quarter or more of the held-out answers' boxes reach past their images once
    read in ``frame`` (a wrong ``box_frame`` scores every answer 0, silently); None otherwise.
    ``split``: the validation or test whose acc50 they spoil; None: a call of :func:`evaluate`.
    ``sums`` / ``n`` (per frame, the IoUs summed over ``n`` answers, as :func:`better_frame_note`
    reads them): when no other frame reads the boxes better, the note says the boxes are bad
    whatever the frame (a model early in its training), not that the frame is wrong (a new
    user's weak cold start was told to change ``box_frame``)."""
    if boxes == 0 or outside < 0.25 * boxes:
        return None
    head, what, told, setting = (("", "held-out boxes", f"{split}/acc50 counts them wrong", "model.box_frame")
                                 if split is not None else
                                 ("evaluate(): ", "boxes", "each scores IoU 0", "box_frame (e.g. box_frame=module.box_frame)"))
    said = f"{head}{outside} of {boxes} {what} reach past their image once read in box_frame {frame} ({told})"
    if sums and n >= 10 and frame in sums and max(sums.values()) / n < sums[frame] / n + 0.05:
        means = ", ".join(f"{f} {v / n:.3f}" for f, v in sums.items())
        return (f"{said}, and no other box frame reads them better (mean IoU: {means}): the model does not write "
                "boxes that fit its images yet (a short or weak training), rather than in another frame")
    return (f"{said}: a model that answers in another frame (Qwen2-VL, Qwen3-VL: norm1000; Qwen2.5-VL: input_pixels, "
            f"the pixels of the image it was fed) needs {setting} set to it")


def better_frame_note(sums: dict[str, float], n: int, frame: str, split: str | None) -> str | None:
    """A note when the held-out boxes, read in another frame than ``frame``, would score a mean
    IoU at least 0.1 higher and twice as high (``sums``: per frame, the IoUs summed over ``n``
    answers): boxes written in pixels and read as 0-1000 shrink inside the image and miss, which
    :func:`frame_note` (boxes past the image) cannot see; a new user's trial scored acc50 0 so,
    without a word. None with fewer than 10 answers or no such frame."""
    if n < 10 or frame not in sums:
        return None
    own = sums[frame] / n
    best = max((f for f in sums if f != frame), key=sums.get, default=None)
    if best is None or sums[best] / n < max(own + 0.1, 2 * own):
        return None
    head, setting = (f"{split}/miou is {own:.3f}", "model.box_frame") if split is not None else \
        (f"evaluate(): mean IoU {own:.3f}", "box_frame")
    return (f"{head} with the boxes read in box_frame {frame}, and {sums[best] / n:.3f} read in {best}: the model "
            f"likely writes {best}; set {setting}={best} (the rewards read the model's frame too, unless they name their "
            "own box_frame)")


@dataclass
class EvalResult:
    """acc50: fraction with IoU > 0.5; miou: mean IoU; format: fraction in REC JSON format."""

    acc50: float
    miou: float
    format: float
    predictions: list[Prediction] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.predictions)

    def records(self) -> list[dict[str, Any]]:
        """One plain dict per answer (:meth:`Prediction.record`): ``pandas.DataFrame(result.records())``,
        or ``json.dump``."""
        return [p.record() for p in self.predictions]


@torch.no_grad()
def predict_rec(model: PreTrainedModel, processor: ProcessorMixin, samples: list[Sample], max_new_tokens: int = 64,
                box_frame: str | None = None) -> list[Prediction]:
    """Greedy answers to ``samples`` with their boxes mapped to original pixels and their IoU
    (``box_frame``: the frame the model writes boxes in; None: its family's, :func:`frame_of`)."""
    box_frame = frame_of(model, box_frame)
    rollout = greedy_rollout(model, processor, samples, max_new_tokens)
    frames = BOX_FRAMES if all(ctx.image_size for ctx in rollout.contexts) else (box_frame,)
    by_frame = {f: rec_ious(rollout.completions, rollout.contexts, f) for f in frames}
    ious = by_frame[box_frame]
    fmt = RecJsonFormat()(rollout.completions, rollout.contexts)
    out = []
    for i, (sample, text, ctx, iou, ok, cut) in enumerate(zip(samples, rollout.completions, rollout.contexts, ious, fmt,
                                                              rollout.truncated.tolist())):
        box = first_box(text)
        if box is not None and not is_degenerate(box):
            box = to_original(box, box_frame, ctx.input_sizes[0], ctx.image_sizes[0])
        else:
            box = None
        out.append(Prediction(sample, text, box, iou, ok == 1.0, bool(cut),
                              {f: v[i] for f, v in by_frame.items()} if len(by_frame) > 1 else {}))
    return out


def truncation_note(cut: int, answers: int, max_new_tokens: int, split: str) -> str | None:
    """A note when held-out answers were cut short at ``max_new_tokens`` (their format and
    answers read as broken, silently); None when none was."""
    if cut == 0:
        return None
    return (f"{cut} of {answers} {split} answers were cut short at model.eval_max_new_tokens={max_new_tokens} "
            f"(their format and answers count as written, unfinished): raise it if the model's answers are longer")


@dataclass
class AnswerPrediction:
    """One greedy answer to a question: the text, whether its answer is right (whatever its
    layout), whether the layout is ``<think>...</think> <answer>...</answer>``, and its length
    in tokens (up to and including the end of turn; ``truncated``: no end within the limit)."""

    sample: Sample
    completion: str
    answer_ok: bool
    format_ok: bool
    tokens: int
    truncated: bool

    @property
    def correct(self) -> bool:
        """Vision-R1's HFRRF criterion: the think/answer layout holds and the answer is right."""
        return self.answer_ok and self.format_ok

    @property
    def answer(self) -> str:
        return answer_text(self.completion)


def mode_of(mode: str | Callable[[str], str], task: str) -> str:
    """The answer mode of a row of ``task``: ``mode`` itself, or what it says for the task."""
    return mode(task) if callable(mode) else mode


@torch.no_grad()
def predict_answer(model: PreTrainedModel, processor: ProcessorMixin, samples: list[Sample], max_new_tokens: int = 64,
                   mode: str | Callable[[str], str] = "numeric") -> list[AnswerPrediction]:
    """Greedy answers to ``samples`` (questions with a ``solution`` answer), each matched to
    its solution with :func:`lit_vr1.rewards.accuracy.is_correct` under ``mode`` (a mode, or a
    function of the sample's task giving one)."""
    rollout = greedy_rollout(model, processor, samples, max_new_tokens)
    lengths = rollout.completion_mask.sum(dim=1).tolist()
    truncated = rollout.truncated.tolist()
    return [AnswerPrediction(sample, text, is_correct(text, sample.solution, mode_of(mode, sample.task)),
                             think_answer_ok(text), int(n), bool(t))
            for sample, text, n, t in zip(samples, rollout.completions, lengths, truncated)]


def in_batches(predict, samples: list[Sample], batch_size: int) -> list:
    """``predict(batch)`` over all ``samples``, ``batch_size`` at a time, the results joined
    (rows that failed to load under ``data.bad_rows=skip`` left out)."""
    samples = loaded(samples)
    out: list = []
    for i in range(0, len(samples), batch_size):
        out.extend(predict(samples[i : i + batch_size]))
    return out


def predict_answers(model: PreTrainedModel, processor: ProcessorMixin, samples: list[Sample], batch_size: int = 32,
                    max_new_tokens: int = 64, mode: str = "numeric") -> list[AnswerPrediction]:
    """:func:`predict_answer` over all ``samples``, ``batch_size`` at a time."""
    return in_batches(lambda batch: predict_answer(model, processor, batch, max_new_tokens, mode), samples, batch_size)


def summarise(predictions: list[Prediction]) -> EvalResult:
    n = max(len(predictions), 1)
    return EvalResult(
        acc50=sum(p.iou > 0.5 for p in predictions) / n,
        miou=sum(p.iou for p in predictions) / n,
        format=sum(p.format_ok for p in predictions) / n,
        predictions=predictions,
    )


def evaluate(model: PreTrainedModel, processor: ProcessorMixin, samples: list[Sample], batch_size: int = 32,
             max_new_tokens: int = 64, box_frame: str | None = None) -> EvalResult:
    """Greedy REC evaluation of ``model`` over all ``samples`` (a ValueError for none: a score of
    no sample is no score). ``box_frame``: the frame the model writes boxes in; None: its
    family's (a module's ``box_frame``, when it was set otherwise, is passed as it is). When a
    quarter of the boxes or more reach past their images, a warning says the frame is likely
    wrong (every such answer scores 0)."""
    samples = list(samples)
    if not samples:
        raise ValueError("evaluate(): no samples to score (an empty list); give held-out samples, e.g. "
                         "list(datamodule.held_out())")
    box_frame = frame_of(model, box_frame)
    result = summarise(in_batches(lambda batch: predict_rec(model, processor, batch, max_new_tokens, box_frame),
                                  samples, batch_size))
    boxes = [p for p in result.predictions if p.box is not None and p.sample.image_sizes]
    scored = [p for p in result.predictions if p.frame_ious]
    sums = {f: sum(p.frame_ious[f] for p in scored) for f in BOX_FRAMES}
    note = frame_note(sum(outside_image(p.box, p.sample.image_sizes[0]) for p in boxes), len(boxes), box_frame, None,
                      sums, len(scored))
    note = note or better_frame_note(sums, len(scored), box_frame, None)
    if note:
        warnings.warn(note, stacklevel=2)
    return result


def best_constant_box(train_boxes: list[Box], eval_boxes: list[Box], size: int, step: int = 4) -> tuple[Box, float]:
    """The floor: the single box, fitted on ``train_boxes`` over a grid of ``step`` pixels on a
    ``size`` canvas, that maximises mean IoU; returns it and its mean IoU on ``eval_boxes``."""
    from torchvision.ops import box_iou

    coords = torch.arange(0, size + 1, step, dtype=torch.float32)
    x1, y1, x2, y2 = torch.meshgrid(coords, coords, coords, coords, indexing="ij")
    cands = torch.stack([x1, y1, x2, y2], dim=-1).reshape(-1, 4)
    cands = cands[(cands[:, 2] > cands[:, 0]) & (cands[:, 3] > cands[:, 1])]
    train = torch.tensor(train_boxes, dtype=torch.float32)
    best = torch.zeros(cands.shape[0])
    for i in range(0, cands.shape[0], 20000):
        best[i : i + 20000] = box_iou(cands[i : i + 20000], train).mean(dim=1)
    box = tuple(cands[best.argmax()].tolist())
    return box, constant_box_miou(box, eval_boxes)


def constant_box_miou(box: Box, boxes: list[Box]) -> float:
    """Mean IoU of one fixed ``box`` against each of ``boxes`` (the floor's score on a split)."""
    from torchvision.ops import box_iou

    return float(box_iou(torch.tensor([box], dtype=torch.float32), torch.tensor(boxes, dtype=torch.float32)).mean())


PROMPTINGS = ("all", "per_category")
PER_CATEGORY_TEMPLATE = "<image>Locate every {category} in the image and output the bbox coordinates in JSON format."


def detection_prompts(samples: list[Sample], prompting: str = "all",
                      template: str = PER_CATEGORY_TEMPLATE) -> list[tuple[int, Sample, str | None]]:
    """(image index, prompt sample, category or None) to decode for detection evaluation.

    "all" (COCO style): each sample's own prompt, naming all its categories at once.
    "per_category" (ODINW style): one prompt per category present in the sample's ground
    truth, from ``template``; the category then labels every box of that answer. A row of
    several images gets them all before the template's text (its markers dropped), in order.
    """
    if prompting not in PROMPTINGS:
        raise ValueError(f"detection prompting={prompting!r} is not valid; choose one of {', '.join(PROMPTINGS)}")
    if prompting == "all":
        return [(i, s, None) for i, s in enumerate(samples)]
    out = []
    for i, s in enumerate(samples):
        # one prompt per category as the scoring tells them apart ("Red Box " is "red box"), named as its first box names it
        categories: dict[str, str] = {}
        for b in solution_boxes(s.solution):
            categories.setdefault(normalize_label(b.label), b.label.strip())
        for c in categories.values():
            question = template.format(category=c)
            if question.count("<image>") not in (0, len(s.images)):  # the template's one marker, a row of several
                question = question.replace("<image>", "")  # images: all of them go first, in the row's order
            messages = build_messages(question, len(s.images), system=system_text(s.messages))
            out.append((i, replace(s, question=question, messages=messages), c))
    return out


def predict_detection(model: PreTrainedModel, processor: ProcessorMixin, samples: list[Sample], max_new_tokens: int = 256,
                      box_frame: str | None = None, prompting: str = "all",
                      template: str = PER_CATEGORY_TEMPLATE) -> tuple[list[list[ParsedBox]], list[list[ParsedBox]]]:
    """Greedy detection answers: per sample, the predicted boxes (original pixels, merged over
    its prompts) and the true boxes."""
    prompts = detection_prompts(samples, prompting, template)
    preds: list[list[ParsedBox]] = [[] for _ in samples]
    if prompts:
        records = predict_records(model, processor, [p for _, p, _ in prompts], max_new_tokens, box_frame)
        for (i, _, category), rec in zip(prompts, records):
            preds[i].extend(ParsedBox(tuple(b["bbox_2d"]), category if category is not None else b["label"])
                            for b in rec["boxes"])
    return preds, [solution_boxes(s.solution) for s in samples]


def eval_solution_problem(eval_task: str, record, answer_mode: str = "numeric") -> str | None:
    """Why the held-out row ``record`` cannot be scored by validation's ``eval_task``, or None:
    "rec" needs a box, "detection" boxes or [] (an image without objects), "answer" an answer
    that ``answer_mode`` reads (:func:`lit_vr1.rewards.accuracy.answer_problem`: a numeric
    solution that is an expression, a choice solution without a letter, ...)."""
    if eval_task == "answer":
        from lit_vr1.rewards.accuracy import answer_problem

        answer = record.solution
        if answer is None or (isinstance(answer, str) and not answer.strip()):
            return "has no answer to compare with: field 'solution' is empty or missing"
        return answer_problem(answer, answer_mode)
    return box_solution_problem(record, empty_ok=eval_task == "detection")


def several_boxes_note(eval_task: str, val_set) -> str | None:
    """A note when REC validation (``eval_task="rec"``: the first box of each answer, against
    the first of the solution) meets held-out rows whose solution holds several boxes, which
    it would score as if each held one object; None otherwise."""
    if eval_task != "rec":
        return None
    rows = [r for r in getattr(val_set, "records", None) or [] if len(solution_boxes(r.solution)) > 1]
    if not rows:
        return None
    return (f"{len(rows)} held-out row(s) hold several boxes (the first: {rows[0].source}), and model.eval_task=rec "
            "scores the first box of each answer against the first of the solution (Acc@0.5, mean IoU); for "
            "detection data set model.eval_task=detection (COCO mAP / AP50 over every box)")


def check_eval_solutions(eval_task: str, val_set, answer_mode: str | Callable[[str], str] = "numeric",
                         unrouted: Callable[[str], str | None] | None = None) -> list:
    """Every held-out row validation cannot score (:func:`eval_solution_problem`), refused all
    at once, or left out under ``data.bad_rows=skip``, at the start of a fit, validate or test:
    before, the first validation to reach one stopped with "sample ...: holds no box" and no
    file or line. A held-out set that is not a JSONL dataset is not read. ``unrouted(task)``
    says why a task's rows may be matched in the wrong mode. Returns the rows left out."""
    if not hasattr(val_set, "check_rows"):
        return []

    def problem(record) -> str | None:
        mode = mode_of(answer_mode, record.task)
        found = eval_solution_problem(eval_task, record, mode)
        if not found:
            return None
        how = f"model.eval_task={eval_task}" + (f", answers matched as {mode}: model.eval_answer_mode sets how"
                                                 if eval_task == "answer" else "")
        note = unrouted(record.task) if unrouted is not None and eval_task == "answer" else None
        return f"{record.source}: {found} (held-out rows are scored as {how})" + (f"; {note}" if note else "")

    return val_set.check_rows(problem, "held-out rows validation cannot score",
                              "fix or remove them, or set data.bad_rows=skip to leave them out",
                              "no held-out row can be scored",
                              "is model.eval_task (and eval_answer_mode) the task of these rows?")

