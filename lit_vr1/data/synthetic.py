"""Synthetic grounding data: coloured shapes on a canvas, a referring prompt and the box.

It writes the very JSONL format of VLM-R1 (plus the PNG files), so synthetic and real
data travel the same loading path.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from lit_vr1.data.prompts import DEFAULT_JUDGE_PROMPT
from lit_vr1.rules import named_fields_only, one_of, problems_of, refuse, rule

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange"]
RGB = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 210, 40),
    "purple": (150, 60, 190),
    "orange": (240, 140, 30),
}
SHAPES = ["circle", "square", "triangle"]
TASKS = ("rec", "detection", "vision_r1", "count", "reason", "label_free", "judge")
BOX_TASKS = ("rec", "detection", "vision_r1")  # the tasks whose answers are boxes
DISTRACTORS = ("random", "confusable")
BOX_ORDERS = ("drawn", "reading")
BACKGROUNDS = ("gradient", "plain")
Placed = list[tuple[tuple[int, int, int, int], str, str]]


@named_fields_only
@dataclass
class SyntheticSpec:
    """What the generator draws.

    num_samples: images to write. canvas: image side in pixels. min_shapes / max_shapes:
    shapes per image (the target is unique in colour+shape). min_size / max_size:
    shape side in pixels. distractors (task "rec"): "random" (the other shapes are any
    other colour+shape) or "confusable" (each other shape shares the target's colour or its
    shape, never both, so the expression must be read whole to tell the target apart, as
    in RefCOCO's same-category distractors). background: "gradient" (a pale horizontal and vertical colour
    ramp, which gives a tiny vision tower an absolute-position cue: it sees positions
    only relatively otherwise) or "plain" (uniform grey). task: what is asked and in which
    layout (see ``TASKS``): "rec" (one shape, VLM-R1 JSONL), "detection" (every shape, VLM-R1
    OVD JSONL), "vision_r1" (every shape, Vision-R1 detection layout), "count" (how many
    shapes, answer in <answer> tags), "reason" (the counting question answered after a
    <think> that numbers the shapes in reading order: Vision-R1's cold-start reasoning in
    miniature), "label_free" (the counting question; no solution in the train split, the
    true count in held-out splits, for measuring only) or "judge" (two yes/no pairs per
    image for training a judge of the counting question, see :func:`judge_records`).
    box_order (detection, vision_r1): the order the answer lists the shapes in: "drawn"
    (random) or "reading" (top to bottom, then left to right, by the box's top-left corner;
    a fixed order is a target a small model can learn, where a random one asks it to pick an
    arbitrary first object and remember which it has written). teacher_blind_size /
    teacher_miss (task "reason", the train split only): the cold-start traces come from a
    simulated imperfect teacher that leaves each shape smaller than ``teacher_blind_size``
    pixels out of its numbered list, and out of its count, with probability
    ``teacher_miss`` (never the only shape); held-out splits always hold the true counts.
    Cold-start reasoning is written by models, not read off the truth (Vision-R1 builds its
    cold-start set with a model pipeline), and this is the blind spot of such a teacher.
    teacher_margin (tasks "rec", "detection" and "vision_r1", the train split only): the
    training boxes come from a simulated loose annotator whose box is the shape's widened by
    this fraction of its side on every side (clipped to the canvas; 0.2: 1.4x the side, 1.96x
    the area, IoU 0.51 with the truth), the systematic error of boxes drawn quickly or read
    off a coarse detector; held-out splits always hold the true boxes.
    """

    def __post_init__(self) -> None:
        refuse(problems_of(self), "data.synthetic")

    num_samples: int = 256
    canvas: int = 112
    min_shapes: int = 1
    max_shapes: int = 3
    min_size: int = 20
    max_size: int = 56
    background: str = "gradient"
    seed: int = 0
    task: str = "rec"
    distractors: str = "random"
    box_order: str = "drawn"
    teacher_blind_size: int = 0
    teacher_miss: float = 0.0
    teacher_margin: float = 0.0


@rule("data.synthetic.task", "config", on="SyntheticSpec")
def synthetic_task_known(spec: SyntheticSpec) -> str | None:
    return one_of("data.synthetic.task", spec.task, TASKS)


@rule("data.synthetic.distractors", "config", on="SyntheticSpec")
def synthetic_distractors_known(spec: SyntheticSpec) -> str | None:
    return one_of("data.synthetic.distractors", spec.distractors, DISTRACTORS)


@rule("data.synthetic.box_order", "config", on="SyntheticSpec")
def synthetic_box_order_known(spec: SyntheticSpec) -> str | None:
    return one_of("data.synthetic.box_order", spec.box_order, BOX_ORDERS)


@rule("data.synthetic.teacher_miss", "config", on="SyntheticSpec")
def synthetic_teacher_valid(spec: SyntheticSpec) -> str | None:
    if not 0.0 <= spec.teacher_miss <= 1.0:
        return f"data.synthetic.teacher_miss={spec.teacher_miss} must be a probability in [0, 1]"
    if spec.teacher_miss and spec.task != "reason":
        return f"data.synthetic.teacher_miss is for task 'reason' (the cold-start traces); task is {spec.task!r}"
    return None


@rule("data.synthetic.teacher_margin", "config", on="SyntheticSpec")
def synthetic_teacher_margin_valid(spec: SyntheticSpec) -> str | None:
    if not 0.0 <= spec.teacher_margin <= 1.0:
        return f"data.synthetic.teacher_margin={spec.teacher_margin} must be a fraction of the side in [0, 1]"
    if spec.teacher_margin and spec.task not in BOX_TASKS:
        return (f"data.synthetic.teacher_margin is for the box tasks {', '.join(map(repr, BOX_TASKS))} "
                f"(the training boxes); task is {spec.task!r}")
    return None


@rule("data.synthetic.background", "config", on="SyntheticSpec")
def synthetic_background_known(spec: SyntheticSpec) -> str | None:
    return one_of("data.synthetic.background", spec.background, BACKGROUNDS)


def _draw(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], rgb: tuple[int, int, int]) -> None:
    x1, y1, x2, y2 = box
    if shape == "circle":
        draw.ellipse((x1, y1, x2 - 1, y2 - 1), fill=rgb)
    elif shape == "square":
        draw.rectangle((x1, y1, x2 - 1, y2 - 1), fill=rgb)
    else:
        draw.polygon([((x1 + x2) / 2, y1), (x1, y2 - 1), (x2 - 1, y2 - 1)], fill=rgb)


def canvas(spec: SyntheticSpec) -> Image.Image:
    """An empty canvas: uniform grey, or red rising left to right and green top to bottom."""
    n = spec.canvas
    if spec.background == "plain":
        return Image.new("RGB", (n, n), (235, 235, 235))
    ramp = np.linspace(150, 230, n, dtype=np.float32)
    pixels = np.empty((n, n, 3), dtype=np.uint8)
    pixels[..., 0] = ramp[None, :]
    pixels[..., 1] = ramp[:, None]
    pixels[..., 2] = 190
    return Image.fromarray(pixels)


def _overlaps(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    return not (a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1])


def _kind(rng: random.Random, spec: SyntheticSpec, placed: Placed) -> tuple[str, str]:
    """Colour and shape of the next shape: any, or (confusable, after the first) sharing the
    first shape's colour or its shape but not both."""
    colour, shape = rng.choice(COLOURS), rng.choice(SHAPES)
    if spec.distractors == "confusable" and placed:
        _, target_colour, target_shape = placed[0]
        if rng.random() < 0.5:
            colour = target_colour
        else:
            shape = target_shape
    return colour, shape


def draw_shapes(rng: random.Random, spec: SyntheticSpec) -> tuple[Image.Image, Placed]:
    """One image with min_shapes..max_shapes non-overlapping shapes, each unique in colour
    and shape; returns the image and the (box, colour, shape) of each (with confusable
    distractors the first is the one the others resemble)."""
    img = canvas(spec)
    draw = ImageDraw.Draw(img)
    placed: Placed = []
    wanted = rng.randint(spec.min_shapes, spec.max_shapes)
    for _ in range(200):
        if len(placed) == wanted:
            break
        size = rng.randint(spec.min_size, spec.max_size)
        x1 = rng.randint(0, spec.canvas - size)
        y1 = rng.randint(0, spec.canvas - size)
        box = (x1, y1, x1 + size, y1 + size)
        colour, shape = _kind(rng, spec, placed)
        if any(_overlaps(box, p[0]) or (p[1], p[2]) == (colour, shape) for p in placed):
            continue
        placed.append((box, colour, shape))
    for box, colour, shape in placed:
        _draw(draw, shape, box, RGB[colour])
    return img, placed


def make_sample(rng: random.Random, spec: SyntheticSpec) -> tuple[Image.Image, str, tuple[int, int, int, int], str]:
    """One REC image; returns (image, target name, box, question)."""
    img, placed = draw_shapes(rng, spec)
    box, colour, shape = placed[0] if spec.distractors == "confusable" else rng.choice(placed)
    name = f"{colour} {shape}"
    question = f"<image>Locate the {name} in the image and output its bbox coordinates in JSON format."
    return img, name, box, question


def write_synthetic(out_dir: str | Path, spec: SyntheticSpec, split: str = "train") -> Path:
    """Write ``{out_dir}/{split}.jsonl`` and ``{out_dir}/images/{split}_*.png``; return the JSONL path.

    For "rec" the answer (the "gpt" turn) is the box in original-image pixels as
    Qwen2.5-VL JSON; the other tasks are described at :class:`SyntheticSpec`.
    """
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"{spec.seed}-{split}")
    teacher = random.Random(f"{spec.seed}-{split}-teacher")  # its own stream: the images do not change with it
    wrong = random.Random(f"{spec.seed}-{split}-judge")  # the judge task's wrong answers, likewise
    path = out / f"{split}.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for i in range(spec.num_samples):
            file = f"{split}_{i:05d}.png"
            if spec.task == "rec":
                img, name, box, question = make_sample(rng, spec)
                if split == "train" and spec.teacher_margin:
                    box = loose_box(box, spec.teacher_margin, spec.canvas)
                records = [("", _conversation(file, question, json.dumps([{"bbox_2d": list(box), "label": name}])))]
            else:
                img, placed = draw_shapes(rng, spec)
                if split == "train" and spec.teacher_miss:
                    placed = teacher_view(placed, spec, teacher)
                if split == "train" and spec.teacher_margin:
                    placed = [(loose_box(box, spec.teacher_margin, spec.canvas), colour, shape) for box, colour, shape in placed]
                records = (judge_records(spec, file, placed, wrong) if spec.task == "judge"
                           else [("", task_record(spec, file, placed, labelled=split != "train"))])
            img.save(out / "images" / file)
            for tag, record in records:  # one per image; the judge task's two pairs carry a tag
                f.write(json.dumps({"id": f"{split}-{i}" + (f"-{tag}" if tag else ""), **record}) + "\n")
    return path


def teacher_view(placed: Placed, spec: SyntheticSpec, rng: random.Random) -> Placed:
    """The shapes the simulated cold-start teacher lists: each one smaller than
    ``spec.teacher_blind_size`` is missed with probability ``spec.teacher_miss``, but the list
    never ends empty (the first shape drawn stays when all would be missed)."""
    seen = [p for p in placed if p[0][2] - p[0][0] >= spec.teacher_blind_size or rng.random() >= spec.teacher_miss]
    return seen or placed[:1]


def loose_box(box: tuple[int, int, int, int], margin: float, side: int) -> tuple[int, int, int, int]:
    """The loose annotator's box: ``box`` widened by ``margin`` times its width (height) on
    the left and right (top and bottom), rounded to pixels and clipped to the ``side`` x
    ``side`` canvas."""
    x1, y1, x2, y2 = box
    dx, dy = round(margin * (x2 - x1)), round(margin * (y2 - y1))
    return max(0, x1 - dx), max(0, y1 - dy), min(side, x2 + dx), min(side, y2 + dy)


def _conversation(file: str, question: str, answer: str) -> dict:
    return {"image": file, "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]}


COUNT_QUESTION = "<image>How many shapes are in the image?"


def reading_order(placed: Placed) -> Placed:
    """The shapes top to bottom, then left to right (by the box's top-left corner)."""
    return sorted(placed, key=lambda p: (p[0][1], p[0][0]))


def numbered_shapes(placed: Placed) -> str:
    """The counting reasoning: ``<think> 1: red circle. 2: blue square. </think>``, in reading order."""
    return "<think> " + " ".join(f"{i}: {c} {s}." for i, (_, c, s) in enumerate(reading_order(placed), 1)) + " </think>"


def wrong_count(truth: int, spec: SyntheticSpec, rng: random.Random) -> int:
    """A wrong count for a judge's "no" example: one off the truth two times in three (the
    mistakes a counting policy makes), else any other count from 0 to ``max_shapes + 1``."""
    near = [c for c in (truth - 1, truth + 1) if c >= 1]
    if rng.random() < 2 / 3:
        return rng.choice(near)
    return rng.choice([c for c in range(spec.max_shapes + 2) if c != truth])


def judge_records(spec: SyntheticSpec, file: str, placed: Placed, rng: random.Random) -> list[tuple[str, dict]]:
    """The judge task's two pairs for one image: the counting question (as the "plain"
    template asks it) with the true count, answered "yes", and with a :func:`wrong_count`,
    answered "no", each in the judge prompt's exact wording (``DEFAULT_JUDGE_PROMPT``: what
    :class:`~lit_vr1.rewards.reward_model.JudgeScorer` asks), so a model SFT'd on them is a
    judge of a counting policy's answers. The judge reasons first: its answer numbers the
    shapes (as task "reason" does) and gives the verdict straight after ``</think>``
    (``<think> 1: red circle. </think>yes``; serve it with ``--think-tokens``). Labels come
    from the drawing: the truth."""
    question = COUNT_QUESTION.removeprefix("<image>")
    ask = lambda answer: "<image>" + DEFAULT_JUDGE_PROMPT.format(question=question, answer=str(answer))
    think = numbered_shapes(placed)
    truth = len(placed)
    return [("yes", _conversation(file, ask(truth), think + "yes")),
            ("no", _conversation(file, ask(wrong_count(truth, spec, rng)), think + "no"))]


def task_record(spec: SyntheticSpec, file: str, placed: Placed, labelled: bool = False) -> dict:
    """The JSONL fields (without id) of a detection, vision_r1, count, reason or label_free
    sample; ``labelled``: a label_free sample keeps its true count (held-out splits)."""
    if spec.box_order == "reading" or spec.task == "reason":
        placed = reading_order(placed)
    objects = [(f"{colour} {shape}", list(box)) for box, colour, shape in placed]
    if spec.task == "detection":
        names = ", ".join(sorted({name for name, _ in objects}))
        question = f"<image>Locate every object of these categories: {names}. Output their bbox coordinates in JSON format."
        return _conversation(file, question, json.dumps([{"bbox_2d": b, "label": n} for n, b in objects]))
    if spec.task == "vision_r1":
        return {"image": file, "problem": "<image>Locate every shape in the image (colour and shape) in JSON format.",
                "solution": [[n, b] for n, b in objects], "width": spec.canvas, "height": spec.canvas,
                "num_instances": len(objects)}
    question = COUNT_QUESTION
    if spec.task == "count" or (spec.task == "label_free" and labelled):
        return _conversation(file, question, f"<answer> {len(objects)} </answer>")
    if spec.task == "reason":
        return _conversation(file, question, f"{numbered_shapes(placed)} <answer> {len(objects)} </answer>")
    return {"image": file, "problem": question}
