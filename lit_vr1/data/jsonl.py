"""JSONL data: one sample a line, images relative to their folder. Three layouts:

VLM-R1 (REC, OVD, math; the "gpt" turn is the solution)::

    {"id": 1, "image": "a.jpg" | ["a.jpg", "b.jpg"],
     "conversations": [{"from": "human", "value": "<image>..."}, {"from": "gpt", "value": "..."}]}

Vision-R1 detection (solution: [category, [x1, y1, x2, y2]] pairs in original pixels)::

    {"id": 1, "image": "a.jpg", "problem": "...", "solution": [["cat", [10, 20, 50, 60]]],
     "width": 640, "height": 480, "num_instances": 1}

REC with a ``problem`` line: its one box may be given as a list of four numbers,
``"solution": [10, 20, 50, 60]``, read as the REC string form ``"[10, 20, 50, 60]"``.

label-free (R1V-Free: a question and an image, no solution)::

    {"id": 1, "image": "a.jpg", "problem": "..."}

Any line may carry ``"reward_method": "..."``: the task its rewards are routed by
(overriding its file's). Several files and image folders are given ':'-separated, one
folder per file.

Bad data, and where it is caught (every message names the file, the line and the field).
With ``bad_rows="raise"`` the checks at build time still check every row, then one
:class:`DataError` lists the bad rows (:func:`rows_message`: a single row's own message,
or a count and the first :data:`LISTED_ROWS`); a row that fails to load stops alone:

- when the dataset is built, for every line (cheap: no image is decoded): not valid JSON,
  missing or ill-typed fields, an empty question (nothing but ``<image>`` markers and
  spaces), image files that do not exist or whose header PIL cannot read (not an image,
  truncated header), an aspect ratio above 200 (the Qwen-VL processors refuse it),
  declared ``width``/``height`` that differ from the image, and ground-truth boxes with no
  area or outside the image (see :func:`check_solution_boxes`);
- when the dataset is built and a processor is given (:meth:`JsonlDataset.check_prompt_lengths`,
  run by the data module at fit start): prompts longer than ``max_prompt_length`` tokens,
  image tokens counted as the processor expands them. Prompts are never truncated (a cut
  inside an image's tokens would break the model input): a long row is an error or skipped;
- when a sample is loaded (``__getitem__``, in the DataLoader workers): images whose pixel
  data cannot be decoded (a corrupt or truncated body behind a valid header).

Images whose shorter side is under 28 px (:data:`MIN_SIDE`) are upscaled at load time to
28 px on that side, keeping the aspect ratio (as VLM-R1 does; the Qwen-VL processors need
28 px). The solution's boxes stay in the original image's pixels: :attr:`Sample.image_sizes`
gives the original sizes, and rewards map predictions to those (a prediction in the
model-input frame is rescaled from the processor's input size to the original size).

``bad_rows="skip"`` leaves bad rows out instead of failing: build-time failures are
dropped from the dataset and listed in :attr:`JsonlDataset.skipped`; a row that fails at
load time is replaced by the next row that loads (so a batch keeps its size and every
process takes the same number of steps), and the failure travels with the substitute in
:attr:`Sample.skipped` for the data module to count and report.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import time
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from PIL import Image
from torch.utils.data import Dataset

from lit_vr1.data import images
from lit_vr1.data.prompts import build_messages, check_template
from lit_vr1.data.solution_keys import solution_key_problem
from lit_vr1.rewards.boxes import QUAD_RE, answer_text, solution_boxes
from lit_vr1.rules import enforce, rule

# Images with a shorter side under this many pixels are upscaled to it (the Qwen-VL patch
# merge needs 28 x 28 pixels; VLM-R1 upscales the same way).
MIN_SIDE = 28
# The Qwen-VL processors refuse images whose long side is more than 200 x the short side.
MAX_ASPECT = 200
# A ground-truth box may reach this many pixels beyond the image (rounding in annotation
# tools); further out it is an error.
BOX_SLACK = 1.0
UNIT_BOX_MIN_SIDE = 4  # a box inside the first pixel of a larger image is taken for 0-1 units
BAD_ROWS = ("raise", "skip")


class DataError(ValueError):
    """Bad input data; the message names the file and line."""


@dataclass
class SkippedRow:
    """A row left out under ``bad_rows="skip"``: its id ("file:line" when it has none) and why."""

    id: str
    reason: str


@dataclass
class FailedRow:
    """What a held-out or prediction set returns for a row whose image fails to load under
    ``bad_rows="skip"``: evaluation and prediction leave it out, where
    a training set puts the next row that loads in its place; that row would be scored twice.
    It stays in its batch, carrying ``skipped`` to the report, and :func:`loaded` drops it."""

    skipped: list[SkippedRow]


def loaded(samples: list) -> list[Sample]:
    """The samples of a batch that loaded (:class:`FailedRow` entries left out)."""
    return [s for s in samples if not isinstance(s, FailedRow)]


def predicted(samples: list) -> list[Sample]:
    """The samples of a prediction batch that are predicted and written: those that loaded, less
    the rows standing in for failed ones (under several processes; each is predicted at its own
    place in the data, see :class:`JsonlDataset`)."""
    return [s for s in loaded(samples) if not getattr(s, "skipped", None)]


def scored(samples: list) -> list[bool]:
    """Per sample of an evaluation batch, whether its answer counts in the figures: not a row
    repeated to give every process as many rows (:class:`~lit_vr1.data.sampler.EvalSampler`)."""
    return [not getattr(s, "repeat", False) for s in samples]


@rule("data.bad_rows", "config")
def bad_rows_known(value: str) -> str | None:
    if value in BAD_ROWS:
        return None
    return (f"data.bad_rows={value!r} is not valid; choose raise (stop, listing every bad row) "
            "or skip (leave bad rows out, counted and reported each epoch)")


def check_bad_rows(value: str) -> str:
    """``value`` if it is a known ``data.bad_rows`` mode; a clear error otherwise."""
    enforce(bad_rows_known(value))
    return value


# a message about several bad rows lists at most this many of them
LISTED_ROWS = 10
SKIP_ADVICE = "fix them, or set data.bad_rows=skip to leave them out"


def file_of(source: str) -> str:
    """The file of a row's "file:line" source."""
    return source.rsplit(":", 1)[0]


def kind_of(reason: str, source: str) -> str:
    """What a bad row's message says without the row's own particulars: its "file:line", paths,
    numbers and quoted values, and what follows the first ';' (the advice): rows of one kind share it."""
    text = reason.removeprefix(f"{source}: ").split(";")[0]
    text = re.sub(r"\b(sample|id|row) '[^']*'", r"\1 <id>", text)
    # a solution's or answer's value, and any quoted text with spaces or tags (not an apostrophe between
    # letters): before paths, or a '</think>' in it read as one
    text = re.sub(r"""\b(solution|answer) (?:'[^'\n]*'|"[^"\n]*")(?!\w)""", r"\1 <value>", text)
    text = re.sub(r"(?<!\w)'[^'\n]*[\s<>/][^'\n]*'(?!\w)" + r'|(?<!\w)"[^"\n]*[\s<>/][^"\n]*"(?!\w)', "<value>", text)
    text = re.sub(r"\S*[/\\]\S*", "<path>", text)
    text = re.sub(r"\b\d+x\d+\b", "NxN", text)  # an image's size: one kind for every size
    text = re.sub(r"(?<!')\b-?\d+(\.\d+)?\b", "N", text)
    if len(text) > 120:  # cut at a word, before its advice: no dangling colon or half word
        text = text[:120].rsplit(" ", 1)[0]
    return text.rstrip(" :,(")


def kinds_line(reasons: list[str], sources: list[str], top: int = 5) -> str:
    """ "by kind: 2868 x <kind>, 512 x <kind>, ..." over every row, most common first."""
    counts = Counter(kind_of(r, s) for r, s in zip(reasons, sources))
    shown = [f"{n} x {kind}" for kind, n in counts.most_common(top)]
    more = f", and {len(counts) - top} other kind(s)" if len(counts) > top else ""
    return "by kind: " + "; ".join(shown) + more


def rows_message(reasons: list[str], sources: list[str], what: str = "bad rows", advice: str = SKIP_ADVICE) -> str:
    """One message for the bad rows of a check: ``reasons`` are the rows' own messages (each
    naming its "file:line"), ``sources`` their "file:line". A single row: its message as it
    is. Several: "N <what> in <files> (<advice>):", then, when more than :data:`LISTED_ROWS`,
    every row counted by kind (a new user's 3,741 bad rows of 13 kinds showed 10 rows of the
    first file alone), then the first :data:`LISTED_ROWS` messages and "... and M more", each on
    its own indented line."""
    if len(reasons) == 1:
        return reasons[0]
    files = ", ".join(dict.fromkeys(file_of(s) for s in sources))
    listed = reasons[:LISTED_ROWS]
    more = [f"... and {len(reasons) - len(listed)} more"] if len(reasons) > len(listed) else []
    kinds = [kinds_line(reasons, sources)] if more else []
    return "\n  ".join([f"{len(reasons)} {what} in {files} ({advice}):", *kinds, *listed, *more])


SAY_READING_BYTES = 8 * 1024**2  # data files this large are said as they are read (about 30,000 rows)
MOSTLY_BAD = 0.5  # under bad_rows=skip a file with more than this share of bad rows (and 10 or more) is refused


FOLDER_ORDER = ("is each image folder of data.train_images (or val_images) given in the order of its data "
                "file?")


def mostly_bad_files(skipped_sources: list[str], rows_per_file: dict[str, int], reasons: list[str],
                     question: str = FOLDER_ORDER) -> str | None:
    """The refusal for files that ``bad_rows="skip"`` would mostly leave out, with ``question``, the
    likelier cause (image folders given in another order than their files: 1,289 of 1,530 rows of a
    new user's data were left out, and the rest trained on the other folder's images of the same
    names; a box reward without ``tasks`` given a mixed file's counting rows), else None."""
    bad = Counter(file_of(s) for s in skipped_sources)
    worst = [(path, n) for path, n in bad.items() if n >= 10 and n > MOSTLY_BAD * rows_per_file.get(path, n)]
    if not worst:
        return None
    path, n = max(worst, key=lambda item: item[1] / rows_per_file.get(item[0], item[1]))
    mine = [(r, s) for r, s in zip(reasons, skipped_sources) if file_of(s) == path]
    top = Counter(kind_of(r, s) for r, s in mine).most_common(1)[0][0]
    return (f"{path}: {n} of its {rows_per_file[path]} rows are bad ({n / rows_per_file[path]:.0%}; most often: {top}). "
            f"data.bad_rows=skip leaves out a few bad rows, not most of a file: {question} The first: {mine[0][0]}")


@dataclass
class Record:
    """One validated JSONL line: image paths are absolute; ``source`` is "file:line"."""

    id: str
    image_paths: list[str]
    question: str
    solution: Any
    source: str
    metadata: dict[str, Any] = field(default_factory=dict)
    task: str = "default"
    image_sizes: list[tuple[int, int]] = field(default_factory=list)  # original (width, height), from the headers
    written_id: Any = None  # the line's "id" as written (1, not "1"); None when it has none
    system: str | None = None  # the line's system prompt (a system turn, or the 'system' field); None: none


@dataclass
class Sample:
    """What a training step gets for one prompt.

    images: the decoded RGB images, in prompt order (upscaled when a side was under
    :data:`MIN_SIDE` pixels). messages: the chat turns of the prompt (user turn with image
    items and the templated text). solution: the "gpt" turn of the data (for REC, the box
    in original-image pixels), Vision-R1's list of [category, box] pairs, or "" for
    label-free data. task: the reward routing key. original_sizes: the images' sizes in
    the files when they were upscaled (None: as decoded). skipped: rows that failed to load
    and that this sample stands in for (``bad_rows="skip"``). box_answers: whether an answer
    written as boxes holds boxes (``data.check_boxes``; False for answers that are lists of
    four numbers but not boxes): supervised steps map boxes to the model's box frame.
    """

    id: str
    images: list[Image.Image]
    messages: list[dict]
    question: str
    solution: Any
    source: str
    metadata: dict[str, Any] = field(default_factory=dict)
    task: str = "default"
    original_sizes: list[tuple[int, int]] | None = None
    skipped: list[SkippedRow] = field(default_factory=list)
    box_answers: bool = True
    written_id: Any = None  # the data line's "id" as written (predictions give it back so)
    image_paths: list[str] = field(default_factory=list)  # the files the images were read from, in order
    repeat: bool = False  # a held-out row served twice to even out processes: scored by none (data.sampler.EvalSampler)

    @property
    def image_sizes(self) -> list[tuple[int, int]]:
        """Original (width, height) of each image: the frame of the solution's boxes."""
        if self.original_sizes is not None:
            return list(self.original_sizes)
        return [im.size for im in self.images]


def solution_text(solution: Any) -> str:
    """A solution as the answer text a model is taught (SFT): strings as they are,
    Vision-R1's [category, box] pairs as Qwen2.5-VL JSON ``[{"bbox_2d": ..., "label": ...}]``."""
    if isinstance(solution, str):
        return solution
    return json.dumps([{"bbox_2d": box, "label": label} for label, box in solution])


def split_paths(value: str) -> list[str]:
    """Split a ':'-separated list, dropping empty parts; a leading ``~`` is the home folder (the
    shell leaves it as it is in ``--data.train_files=~/x``, and it read as a folder named ``~``)."""
    return [os.path.expanduser(p) for p in value.split(":") if p]


# how messages name (data files, image folders, reward methods): the arguments' names in Python;
# the data module passes its flags (e.g. data.val_files, data.val_images, data.val_reward_methods)
ARG_NAMES = ("data_files", "image_folders", "reward_methods")


@rule("data.train_images", "data")
def one_image_folder_per_file(files: list[str], folders: list[str], names: tuple[str, ...] = ARG_NAMES) -> str | None:
    if len(files) == len(folders) or len(folders) == 1:
        return None
    return (f"{names[0]} lists {len(files)} file(s) but {names[1]} lists {len(folders)} folder(s); "
            "give one image folder per data file, ':'-separated, or one folder for them all")


def pair_files(data_files: str, image_folders: str, names: tuple[str, ...] = ARG_NAMES) -> list[tuple[str, str]]:
    """Pair ':'-separated data files with ':'-separated image folders (equal counts), or every
    file with the one folder given (as one task in ``reward_methods`` is every file's: a
    mixed-task trial's five files under one image root were refused)."""
    files = split_paths(data_files)
    folders = split_paths(image_folders)
    enforce(one_image_folder_per_file(files, folders, names), DataError)
    return list(zip(files, folders * len(files) if len(folders) == 1 else folders))


TURN_ORDER = ("system", "human", "gpt")  # a row's turns: an optional system turn, the question, its answer


def _system(obj: dict, where: str) -> str | None:
    """The system prompt of a line's 'system' field (the 'problem' layout's, and LLaMA-Factory's
    ShareGPT layout's beside 'conversations'); None when there is none (no field, null, or
    empty: exported datasets write "" for rows without one)."""
    system = obj.get("system")
    if system is None or (isinstance(system, str) and not system.strip()):
        return None
    if not isinstance(system, str):
        raise DataError(f"{where}: field 'system' must be a string (the system prompt), or left out")
    return system


def _conversation(conv: Any, where: str) -> tuple[str, Any, str | None]:
    """(question, solution, system) of a 'conversations' list: an optional system turn, a human
    turn, then an optional gpt turn. A multi-turn dialogue or a turn of another kind is refused
    (before, every turn but the first human and gpt ones was dropped without a word)."""
    if not isinstance(conv, list) or not conv:
        raise DataError(f"{where}: field 'conversations' must be a list of a human and a gpt turn")
    froms = [t.get("from") if isinstance(t, dict) else None for t in conv]
    shape = ("an optional {'from': 'system'} turn, a {'from': 'human'} turn (the question), then a {'from': 'gpt'} "
             "turn (its answer; none for unlabelled data)")
    unknown = [f for f in froms if f not in TURN_ORDER]
    if unknown:
        raise DataError(f"{where}: 'conversations' holds a turn from {unknown[0]!r}; a row is {shape}")
    ranks = [TURN_ORDER.index(f) for f in froms]
    if ranks != sorted(set(ranks)) or "human" not in froms:
        raise DataError(f"{where}: 'conversations' holds the turns {', '.join(froms)}; a row is {shape}: a multi-turn "
                        "dialogue is not read (one row per question, its earlier turns written into the question)")
    values = {f: t.get("value") for f, t in zip(froms, conv)}
    bad = next(((f, v) for f, v in values.items() if not isinstance(v, str)), None)
    if bad is not None:
        f, v = bad
        number = (f" (a number: write it as the string {json.dumps(str(v))}, as the answer is read as text)"
                  if isinstance(v, (int, float)) and not isinstance(v, bool) else "")
        raise DataError(f"{where}: the {{'from': {f!r}}} turn's value is {type(v).__name__} {json.dumps(v)[:40]}"
                        f"{number}; 'conversations' needs a {{'from': 'human'}} turn (and a {{'from': 'gpt'}} one "
                        "for labelled data) with string values")
    if "system" in values and not values["system"].strip():
        raise DataError(f"{where}: 'conversations' holds an empty {{'from': 'system'}} turn; write the system prompt "
                        "or leave the turn out")
    return values["human"], values.get("gpt", ""), values.get("system")


def _turns(obj: dict, where: str) -> tuple[str, Any, str | None]:
    """(question, solution, system prompt or None) of a line in any of the three layouts."""
    conv = obj.get("conversations")
    if conv is not None:
        question, solution, turn = _conversation(conv, where)
        field = _system(obj, where)
        if turn is not None and field is not None:
            raise DataError(f"{where}: a system prompt in field 'system' and in a {{'from': 'system'}} turn of "
                            "'conversations': give it once")
        return question, solution, turn if turn is not None else field
    question = obj.get("problem", obj.get("question"))
    if not isinstance(question, str):
        chat = next((k for k in ("messages", "prompt") if k in obj), None)
        hint = (f" ({chat!r}, a chat of LLaMA-Factory's, TRL's or verl's layout, is not read: convert the file with "
                f"python -m lit_vr1.data.convert {where.rsplit(':', 1)[0]} <out>.jsonl --images <image folder>, or put "
                "the question's text in 'problem', with an <image> marker where each image goes)"
                if chat and "problem" not in obj and "question" not in obj else "")
        raise DataError(f"{where}: a line needs 'conversations', or a string 'problem' (or 'question') field{hint}")
    # a label under another name would train as unlabelled (R1V-Free's layout) without a word
    _refuse_misnamed(obj, "solution", SOLUTION_FIELD_LOOKALIKES, where, f"the answer goes in field 'solution' "
                     f"({SOLUTION_FORMS}): rename the field, or remove it for unlabelled data")
    verl = obj.get("reward_model")
    if "solution" not in obj and isinstance(verl, dict) and "ground_truth" in verl:
        raise DataError(f"{where}: field 'reward_model' (verl's, with a ground_truth) is not read; the answer goes in "
                        f"field 'solution' ({SOLUTION_FORMS}): write reward_model.ground_truth there")
    solution = obj.get("solution")
    if solution is None:  # no field, or null: an unlabelled row
        solution = ""
    if isinstance(solution, list) and solution and all(_is_number(v) for v in solution):
        solution = _box_solution(solution, obj.get("num_instances"), where)
    elif isinstance(solution, list):
        for k, pair in enumerate(solution):
            ok = (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str) and isinstance(pair[1], list)
                  and len(pair[1]) == 4 and all(_is_number(v) for v in pair[1]))
            if not ok:
                coco = ""
                if isinstance(pair, dict) and isinstance(pair.get("bbox"), list) and len(pair["bbox"]) == 4:
                    x, y = pair["bbox"][:2]  # an annotation of COCO's, pasted as it is
                    coco = (f" (a COCO annotation: its bbox is [x, y, width, height]; write [<category name>, "
                            f"[{x}, {y}, x + width, y + height]], the name from COCO's categories)")
                raise DataError(f"{where}: field 'solution' item {k + 1} must be [category, [x1, y1, x2, y2]], got "
                                f"{pair!r}; a 'solution' list is {SOLUTION_LISTS}{coco}")
        n = obj.get("num_instances")
        if n is not None and n != len(solution):
            raise DataError(f"{where}: field 'num_instances' is {n} but 'solution' lists {len(solution)} objects")
    elif _is_number(solution):  # a numeric answer written as a JSON number: its text, as the gpt turn holds it
        solution = json.dumps(solution)
    elif not isinstance(solution, str):
        raise DataError(f"{where}: field 'solution' must be {SOLUTION_FORMS}, got {type(solution).__name__}")
    return question, solution, _system(obj, where)


# the forms a 'problem' line's solution may take, for messages
SOLUTION_LISTS = "one box [x1, y1, x2, y2] of four numbers, or [category, [x1, y1, x2, y2]] pairs"
SOLUTION_FORMS = f"a string, a number, {SOLUTION_LISTS}"


def _is_number(value: Any) -> bool:
    """A JSON number (booleans are not numbers)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _box_solution(values: list, num_instances: Any, where: str) -> str:
    """A solution given as one box, a list of numbers ``[x1, y1, x2, y2]``, as the REC string
    form ``"[x1, y1, x2, y2]"``, which the REC rewards, SFT and the box checks read (so it is
    scored and checked against the image exactly as the string would be)."""
    if len(values) != 4:
        raise DataError(f"{where}: field 'solution' is a list of {len(values)} numbers; a box is [x1, y1, x2, y2] "
                        f"(four numbers); a 'solution' list is {SOLUTION_LISTS}")
    if not all(math.isfinite(v) for v in _floats(values)):
        raise DataError(f"{where}: field 'solution' box {values} has a coordinate that is not a finite number; "
                        "a box is [x1, y1, x2, y2] in pixels of the original image")
    if num_instances is not None and num_instances != 1:
        raise DataError(f"{where}: field 'num_instances' is {num_instances} but 'solution' is one box")
    return json.dumps(values)


def _field_of(obj: dict, turn: str) -> str:
    """How a message names the field holding the question (``turn="human"``) or the
    solution (``turn="gpt"``) of a line, in its layout."""
    if "conversations" in obj:
        return f"field 'conversations' ({turn} turn)"
    if turn == "gpt":
        return "field 'solution'"
    return "field 'problem'" if "problem" in obj else "field 'question'"


@functools.lru_cache(maxsize=64)
def _real_folder(folder: str) -> str:
    """``realpath`` of an image folder, once per read of a data set (:func:`forget_file_reads`):
    200,000 rows asked it 200,000 times (a trial at scale, a quarter of the read)."""
    return os.path.realpath(folder)


@functools.lru_cache(maxsize=1 << 16)
def _image_header(path: str) -> tuple[tuple[int, int] | None, str | None, BaseException | None]:
    """(displayed size, pixel-mode problem, the error PIL raised) of one image file's header,
    read once per read of a data set (:func:`forget_file_reads`): a data set's rows share images
    (a trial at scale: 200,000 rows over 2,700 files opened 200,000 headers)."""
    try:
        with images.open_quietly(path) as im:  # a large image said once for the data set (huge_images_note)
            return images.displayed_size(im), images.mode_problem(im), None
    except (Image.DecompressionBombError, OSError, ValueError, SyntaxError) as e:
        return None, None, e.with_traceback(None)  # no frames kept alive by the cache


def forget_file_reads() -> None:
    """Drop the folders' real paths and the image headers read so far: a read of a data set
    (:func:`read_records`, a conversion) starts afresh, as its files may have changed."""
    _real_folder.cache_clear()
    _image_header.cache_clear()


def check_inside(name: str, path: str, folder: str, where: str) -> None:
    """Refuse an image path that resolves (links followed) outside its image folder."""
    root = _real_folder(folder)
    real = os.path.realpath(path)
    if os.path.commonpath([root, real]) != root:
        raise DataError(f"{where}: field 'image': {name} resolves to {real}, outside the image folder {root}; "
                        "move the image into the folder, or allow it with data.images_outside_folder=true")


def read_image_size(path: str, where: str) -> tuple[int, int]:
    """(width, height) of the image as a viewer shows it (its EXIF orientation applied, see
    :mod:`lit_vr1.data.images`), from the file's header (no pixel is decoded); a
    :class:`DataError` naming ``where`` when PIL cannot identify the file or read its pixels."""
    size, problem, e = _image_header(path)
    if isinstance(e, Image.DecompressionBombError):
        found = re.search(r"\((\d+) pixels\)", str(e))
        mpx = f"{int(found.group(1)) / 1e6:.0f} Mpx, " if found else ""
        raise DataError(f"{where}: field 'image': {path} is too large for PIL to open ({mpx}over twice its "
                        f"decompression-bomb limit of {Image.MAX_IMAGE_PIXELS / 1e6:.0f} Mpx); downscale the file (the "
                        "model sees at most model.max_pixels of it), or remove the line") from None
    if e is not None:
        raise DataError(f"{where}: field 'image': {path} is not an image PIL can read ({e}); "
                        "replace the file or remove the line") from None
    if problem:
        raise DataError(f"{where}: field 'image': {path}: {problem}; or remove the line")
    w, h = size
    if min(w, h) < 1 or max(w, h) / min(w, h) > MAX_ASPECT:
        raise DataError(f"{where}: field 'image': {path} is {w}x{h}, an aspect ratio above {MAX_ASPECT}, which the "
                        "Qwen-VL processors refuse; crop or pad the image, or remove the line")
    return size


def upscaled_size(size: tuple[int, int]) -> tuple[int, int]:
    """``size`` (width, height) with the shorter side raised to :data:`MIN_SIDE` pixels, the
    aspect ratio kept (the longer side rounded); unchanged when both sides are large enough."""
    w, h = size
    short = min(w, h)
    if short >= MIN_SIDE:
        return size
    scale = MIN_SIDE / short
    return (MIN_SIDE if w == short else max(MIN_SIDE, round(w * scale)),
            MIN_SIDE if h == short else max(MIN_SIDE, round(h * scale)))


def is_box_answer(text: str) -> bool:
    """Whether a string solution is written as boxes: JSON ``bbox_2d``/``bbox`` items, or
    one bracketed quadruple of numbers (VLM-R1 REC)."""
    ans = answer_text(text).strip()
    return "bbox" in ans or QUAD_RE.fullmatch(ans) is not None


def _floats(box: Any) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in box)
    except (TypeError, ValueError, OverflowError):
        return (math.nan,) * 4


def check_solution_boxes(solution: Any, field: str, image_size: tuple[int, int] | None, where: str,
                         images: int = 1) -> None:
    """Refuse ground-truth boxes with no area (x2 <= x1 or y2 <= y1, or a non-finite
    coordinate), boxes outside the first image by more than :data:`BOX_SLACK` pixels
    (x1, y1 < -1 or x2 > width + 1, y2 > height + 1: 0-1000 units, mostly) and boxes inside
    its first pixel (x2, y2 <= 1) on an image over :data:`UNIT_BOX_MIN_SIDE` px (0-1 units). Boxes are (x1, y1, x2, y2) in the
    original image's pixels (the first image's, in a row of ``images`` > 1: said so); messages count items and
    boxes from 1, as lines are. Vision-R1's [category, box] lists are always checked; a string
    solution only when it is written as boxes (see :func:`is_box_answer`)."""
    if isinstance(solution, list):
        boxes = [(f"item {k}", pair[1]) for k, pair in enumerate(solution, start=1)]
    elif isinstance(solution, str) and is_box_answer(solution):
        boxes = [(f"box {k}", list(b.box)) for k, b in enumerate(solution_boxes(solution), start=1)]
    else:
        return
    for name, raw in boxes:
        x1, y1, x2, y2 = _floats(raw)
        if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
            raise DataError(f"{where}: {field} {name} {raw} has a coordinate that is not a finite number: a box is "
                            "[x1, y1, x2, y2] in pixels of the original image")
        if x2 <= x1 or y2 <= y1:
            # the corner form of a COCO [x, y, w, h] box, offered only where it is a box of the image
            fits = x2 > 0 and y2 > 0 and (image_size is None or (x1 + x2 <= image_size[0] + BOX_SLACK
                                                                  and y1 + y2 <= image_size[1] + BOX_SLACK))
            xywh = f"; if it is COCO's [x, y, width, height], write [{x1:g}, {y1:g}, {x1 + x2:g}, {y1 + y2:g}]" \
                if fits else ""
            raise DataError(f"{where}: {field} {name} {raw} has no area: a box is [x1, y1, x2, y2] with "
                            f"x1 < x2 and y1 < y2, in pixels of the original image{xywh}")
        if image_size is None:
            continue
        w, h = image_size
        first = (f" (a row's boxes are read in its first image's pixels; this row has {images} images: put the image "
                 "the boxes belong to first)") if images > 1 else ""
        if x1 < -BOX_SLACK or y1 < -BOX_SLACK or x2 > w + BOX_SLACK or y2 > h + BOX_SLACK:
            raise DataError(f"{where}: {field} {name} {raw} lies outside the {w}x{h} image (by more than "
                            f"{BOX_SLACK:g} px); boxes must be in pixels of the original image (not 0-1000 or 0-1 units){first}")
        if x2 <= 1 and y2 <= 1 and max(w, h) > UNIT_BOX_MIN_SIDE:  # inside the image, but within its first pixel
            raise DataError(f"{where}: {field} {name} {raw} lies within the first pixel of the {w}x{h} image: this "
                            f"looks like 0-1 units; boxes must be in pixels of the original image (x times {w}, "
                            f"y times {h})")


def _load_json(line: str, where: str) -> Any:
    """The JSON value of one line; a :class:`DataError` with the decoder's reason and column.
    The line's end is cut first, so a line cut off inside a string reports the unterminated
    string rather than the newline ("Invalid control character")."""
    try:
        return json.loads(line.rstrip("\r\n"))
    except json.JSONDecodeError as e:
        reason = e.msg[:-3] if e.msg.endswith(" at") else e.msg  # "Invalid control character at" + " at column"
        raise DataError(f"{where}: not valid JSON ({reason} at column {e.colno})") from None


def decode_line(raw: bytes, where: str, first: bool = False) -> str:
    """One line of a data file as text: UTF-8 (a byte-order mark allowed on the first
    line); a :class:`DataError` naming the line, the byte and its column otherwise."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{where}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
                        "save the file as UTF-8, or skip the line with data.bad_rows=skip") from None
    return text[1:] if first and text.startswith("\ufeff") else text


# names other datasets give the image field (LLaVA's and ours is 'image'): a line with one of
# them and no 'image' would otherwise be read as a text-only question
IMAGE_FIELD_LOOKALIKES = ("images", "image_path", "image_paths", "img", "imgs", "image_file", "file_name",
                          "filename", "image_name", "picture")


# video fields (Video-R1, LLaVA-Video): a line holding one was read as a text-only question
VIDEO_FIELDS = ("video", "videos", "video_path", "video_paths", "video_file")


# names other datasets give the answer of a 'problem' line (ours is 'solution'; a line without
# one is unlabelled, as in R1V-Free)
SOLUTION_FIELD_LOOKALIKES = ("answer", "answers", "solutions", "ground_truth", "groundtruth", "gt", "gt_answer",
                             "bbox", "bboxes", "boxes", "target")


# what chat templates write around a prompt: a question holding one was read as the model's own markup
CHAT_CONTROL_TOKENS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>")


def _template_tokens() -> tuple[str, ...]:
    """The chat-control tokens and the families' vision tokens that no plain text holds: the
    ``<|...|>`` ones and InternVL's ``<IMG_CONTEXT>``; InternVL's ``<img>``, ``</img>`` and
    ``<video>`` are left out (a question may name HTML tags)."""
    from lit_vr1.models.families import FAMILIES  # (not at import: the data module loads without the models)

    vision = (t for f in FAMILIES.values() for t in f.vision_tokens if t.startswith("<|") or t == "<IMG_CONTEXT>")
    return tuple(dict.fromkeys([*CHAT_CONTROL_TOKENS, *vision]))


def _refuse_template_tokens(obj: dict, human: str, system: str | None, where: str, solution: Any = None) -> None:
    """A question (or system prompt) holding a model's own tokens (``<|image_pad|>``, a
    ``<|vision_start|>...<|vision_end|>`` block of data already run through a chat template,
    ``<|im_end|>``): the image placeholder failed mid-fit in transformers ("Found total 8
    <|image_pad|> tokens and 4 images", for the batch, no line named), the others were read
    as markup, silently. So for the solution: as a supervised target ``<|image_pad|>`` failed the
    same way (a 106-line traceback from the cold start), and an answer holding ``<|im_end|>`` can
    never be written (decoding stops there) or is cut short in SFT."""
    answer = solution if isinstance(solution, str) or solution is None else json.dumps(solution, ensure_ascii=False)
    tokens = _template_tokens()
    for text, field_name in ((human, _field_of(obj, "human")), (system or "", "the system prompt")):
        found = [t for t in tokens if t in text]
        if found:
            raise DataError(f"{where}: {field_name} holds {', '.join(found)}, the model's own token(s), which the chat "
                            "template writes itself: write the question as plain text, with an <image> marker where "
                            "each image goes (for data already run through a chat template, take the question's text "
                            "out of it)")
    found = [t for t in tokens if t in (answer or "")]
    if found:
        raise DataError(f"{where}: {_field_of(obj, 'gpt')} holds {', '.join(found)}, the model's own token(s): no "
                        "completion can write the answer so (the end of turn stops decoding, an image token stands for an "
                        "image), and as a supervised target it breaks the model's input; write the answer as plain text")


# an image marker spelled otherwise (<Image>, <IMAGE>, <image1>, MMMU's <image 1>): read as text, its images moved first
MARKER_LOOKALIKE = re.compile(r"<\s*image[\s_-]*\d*\s*>", re.IGNORECASE)  # not SVG's <image/>


def _refuse_misplaced_markers(obj: dict, human: str, system: str | None, where: str) -> None:
    """An image marker lit-vr1 does not read, or one where no image can go: a question's
    ``<Image>`` / ``<image 1>`` stayed text while its images went before the question, and a
    system prompt's ``<image>`` was text (an answer may say ``<image>``: it is text there)."""
    odd = sorted({m for m in MARKER_LOOKALIKE.findall(human) if m != "<image>"})
    if odd:
        raise DataError(f"{where}: {_field_of(obj, 'human')} holds {', '.join(odd)}, which lit-vr1 does not read as an "
                        "image marker (it would stay in the text, and the images would go before the question): write "
                        "<image> (lower case, no number) where each image goes, one per image in field 'image' order")
    found = MARKER_LOOKALIKE.search(system or "")
    if found:
        raise DataError(f"{where}: the system prompt holds {found.group(0)}; images go in the question only (an "
                        "<image> marker there, where each image goes): take it out of the system prompt")


def _refuse_misnamed(obj: dict, field: str, lookalikes: tuple[str, ...], where: str, advice: str) -> None:
    """A :class:`DataError` when ``obj`` lacks ``field`` but holds one of its ``lookalikes``."""
    if field not in obj:
        near = [k for k in obj if k.lower() in lookalikes]
        if near:
            raise DataError(f"{where}: field {near[0]!r} is not read; {advice}")


def parse_line(line: str, path: str, lineno: int, folder: str, task: str = "default",
               check_boxes: bool = True, images_outside_folder: bool = False) -> Record:
    """Validate one JSONL line; raise :class:`DataError` naming ``path:lineno`` and the field.

    Reads each image's header (its size; nothing is decoded) to check the image and the
    ground-truth boxes against it; ``check_boxes=False`` skips the box checks (for data
    whose answers are bracketed number lists that are not boxes). An image path that
    resolves outside ``folder`` (``../x.png``, an absolute path, a link out) is refused
    unless ``images_outside_folder``."""
    where = f"{path}:{lineno}"
    obj = _load_json(line, where)
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    human, solution, system = _turns(obj, where)
    if not human.replace("<image>", "").strip():
        raise DataError(f"{where}: {_field_of(obj, 'human')} is empty: the question has no text besides "
                        "<image> markers; write the question or remove the line")
    _refuse_template_tokens(obj, human, system, where, solution)
    _refuse_misplaced_markers(obj, human, system, where)
    _refuse_misnamed(obj, "image", IMAGE_FIELD_LOOKALIKES, where, "the image path goes in field 'image' (a path or "
                     "a list of paths, relative to the image folder): rename the field")
    video = next((k for k in obj if k.lower() in VIDEO_FIELDS and obj[k] not in (None, "", [])), None)
    if video is not None:
        raise DataError(f"{where}: field {video!r} is not read: lit-vr1 trains on images, not videos (the row would "
                        "train as a question without its video); give sampled frames as images instead (field 'image', "
                        "a list of frame paths, with an <image> marker for each), or leave the row out")
    raw = obj.get("image")
    names = [] if raw is None else [raw] if isinstance(raw, str) else raw  # null, [] or no field: a text-only row
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise DataError(f"{where}: field 'image' must be a path or a list of paths (a text-only row: leave the field "
                        "out, or null, or [])")
    for n in names:
        if not n.strip():
            raise DataError(f"{where}: field 'image' holds an empty path; give the image's path (relative to the image "
                            f"folder {folder}), or no image for a text-only row (leave the field out)")
        if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", n):
            raise DataError(f"{where}: field 'image' is a URL ({n[:200]}); lit-vr1 reads image files and downloads "
                            f"nothing: download the image and give its path, relative to the image folder {folder}")
    paths = [os.path.join(folder, n) for n in names]
    if not images_outside_folder:
        for n, p in zip(names, paths):
            check_inside(n, p, folder, where)
    for i, p in enumerate(paths):
        if os.path.isdir(p):
            raise DataError(f"{where}: field 'image': {p} is a folder, not an image file; give the path of the image "
                            "in it")
        if not os.path.isfile(p):
            p = paths[i] = other_unicode_form(p)
            if not images_outside_folder and os.path.isfile(p):
                check_inside(names[i], p, folder, where)
        if not os.path.isfile(p):
            raise DataError(f"{where}: field 'image': image file {p} does not exist; fix the path (relative to "
                            f"the image folder {folder}) or remove the line")
    sizes = [read_image_size(p, where) for p in paths]
    markers = human.count("<image>")
    if markers and markers != len(paths):
        raise DataError(f"{where}: {_field_of(obj, 'human')} has {markers} <image> marker(s) but field 'image' lists "
                        f"{len(paths)} image(s); write one marker per image (each image goes where its marker "
                        "stands), or none (the images then go before the text)")
    declared = (obj.get("width"), obj.get("height"))
    typed = [f"'{k}' is {v!r}" for k, v in zip(("width", "height"), declared)
             if v is not None and (isinstance(v, bool) or not (isinstance(v, int) or isinstance(v, float) and v.is_integer()))]
    if typed:
        raise DataError(f"{where}: field {' and field '.join(typed)}; give the image's size in pixels as integers "
                        "(\"width\": 640), or leave the fields out")
    if sizes and declared != (None, None) and tuple(declared) != sizes[0]:
        turned = ""
        with Image.open(paths[0]) as im:
            if tuple(declared) == im.size:
                turned = (f" as a viewer shows it (its EXIF orientation {images.orientation(im)} turns the stored "
                          f"{im.size[0]}x{im.size[1]} pixels upright; lit-vr1 reads the upright image, where a "
                          "labelling tool draws the boxes: give its size and boxes, or save the pixels upright)")
        raise DataError(f"{where}: fields 'width', 'height' say {declared[0]}x{declared[1]} but image {paths[0]} "
                        f"is {sizes[0][0]}x{sizes[0][1]}{turned}; the solution's boxes would be in another frame")
    if check_boxes:
        key_problem = solution_key_problem(solution, _field_of(obj, "gpt"))
        if key_problem:
            raise DataError(f"{where}: {key_problem}")
        check_solution_boxes(solution, _field_of(obj, "gpt"), sizes[0] if sizes else None, where, len(sizes))
    # VLM-R1's per-row field: 'default' is lit-vr1's own default task too; another value was ignored without a word
    if obj.get("accu_reward_method", "default") != "default" and "reward_method" not in obj:
        raise DataError(f"{where}: field 'accu_reward_method' (VLM-R1's) is not read: a row's task goes in field "
                        "'reward_method', and the rewards whose tasks name it score the row: rename the field, its "
                        "value the row's task (VLM-R1's value names its accuracy method, such as 'default')")
    method = obj.get("reward_method")
    method = task if method is None else method  # null: no task of the row's own, as a null id is no id
    if not isinstance(method, str) or not method:
        raise DataError(f"{where}: field 'reward_method' must be a non-empty string (or null: the file's task)")
    skip = ("id", "image", "conversations", "problem", "question", "solution", "reward_method", "system")
    meta = {k: v for k, v in obj.items() if k not in skip}
    written = obj.get("id")  # null: no id, as for image and solution
    return Record(f"{Path(path).stem}-{lineno}" if written is None else str(written), paths, human, solution, where, meta,
                  method, sizes, written_id=written, system=system)


def file_tasks(data_files: str, reward_methods: str | None, names: tuple[str, ...] = ARG_NAMES) -> list[str]:
    """The task of each ':'-separated data file: ``reward_methods`` ':'-separated, one per
    file (VLM-R1's --reward_method), or a single one for all; "default" when unset."""
    n = len(split_paths(data_files))
    if reward_methods is None:
        return ["default"] * n
    methods = split_paths(reward_methods)
    enforce(one_reward_method_per_file(methods, n, names), DataError)
    return methods * n if len(methods) == 1 else methods


@rule("data.reward_methods", "data")
def one_reward_method_per_file(methods: list[str], n_files: int, names: tuple[str, ...] = ARG_NAMES) -> str | None:
    if len(methods) in (1, n_files):
        return None
    return (f"{names[2]} lists {len(methods)} method(s) but {names[0]} lists {n_files} file(s); "
            "give one per file, ':'-separated, or a single one for all")


@rule("data.train_files", "data")
def data_files_exist(path: str, names: tuple[str, ...] = ARG_NAMES) -> str | None:
    if os.path.isfile(path):
        return None
    flag = names[0] if names is not ARG_NAMES else "data.train_files (or val_files, predict_files)"
    relative = "" if os.path.isabs(path) else f" (a relative path is read from the folder you run in: {os.getcwd()})"
    return f"data file {path} does not exist{relative}; check {flag}: ':'-separated JSONL paths"


def other_unicode_form(path: str) -> str:
    """``path`` written in the other Unicode normal form when that file exists (macOS tools write
    ``é`` as ``e`` + a combining accent, NFD; most others as one character, NFC: the two names look
    alike and differ, and an image named one way in the data and the other on disk was "missing");
    else ``path`` as it is."""
    for form in ("NFC", "NFD"):
        other = unicodedata.normalize(form, path)
        if other != path and os.path.isfile(other):
            return other
    return path


def image_folder_exists(folder: str, names: tuple[str, ...] = ARG_NAMES) -> str | None:
    if not folder or os.path.isdir(folder):
        return None
    flag = names[1] if names is not ARG_NAMES else "data.train_images (or val_images, predict_images)"
    relative = "" if os.path.isabs(folder) else f" (a relative path is read from the folder you run in: {os.getcwd()})"
    return f"image folder {folder} does not exist{relative}; check {flag}: ':'-separated folders, one per data file"


def read_records(data_files: str, image_folders: str, reward_methods: str | None = None, bad_rows: str = "raise",
                 check_boxes: bool = True, images_outside_folder: bool = False,
                 names: tuple[str, ...] = ARG_NAMES) -> tuple[list[Record], list[SkippedRow]]:
    """Every record of every ':'-separated file, validated, with its task; and the rows
    left out (``bad_rows="skip"``). With "raise" every line is still read and checked, then
    one :class:`DataError` lists the bad rows (:func:`rows_message`). A missing data file or
    image folder (checked before any line), or no usable row at all, raises in both modes."""
    check_bad_rows(bad_rows)
    forget_file_reads()  # files may have changed since the last read
    records: list[Record] = []
    skipped: list[SkippedRow] = []
    sources: list[str] = []  # the "file:line" of each row in skipped
    tasks = file_tasks(data_files, reward_methods, names)
    pairs = pair_files(data_files, image_folders, names)
    for path, folder in pairs:
        enforce(data_files_exist(path, names), DataError)
        refuse_other_formats(path)
        if not images_outside_folder:  # every image lies in the folder: a missing one fails each line alike
            enforce(image_folder_exists(folder, names), DataError)
    size = sum(os.path.getsize(path) for path, _ in pairs)
    started = time.perf_counter()
    if size >= SAY_READING_BYTES:  # tens of seconds at 100,000 rows: not a silent pause before the first step
        rank_zero_info(f"data: reading {', '.join(p for p, _ in pairs)} ({size / 1024**2:.0f} MB; each row's "
                       "image header is checked)")
    for (path, folder), task in zip(pairs, tasks):
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, start=1):
                where = f"{path}:{lineno}"
                line = ""
                try:
                    line = decode_line(raw, where, first=lineno == 1)
                    if not line.strip():
                        continue
                    records.append(parse_line(line, path, lineno, folder, task, check_boxes, images_outside_folder))
                except DataError as e:
                    skipped.append(SkippedRow(_line_id(line, where), str(e)))
                    sources.append(where)
    if size >= SAY_READING_BYTES:
        rank_zero_info(f"data: {len(records) + len(skipped)} rows read in {time.perf_counter() - started:.0f} s")
    if skipped and bad_rows == "raise":
        raise DataError(rows_message([r.reason for r in skipped], sources))
    if skipped:
        rows_per_file = Counter(file_of(r.source) for r in records) + Counter(file_of(s) for s in sources)
        enforce(mostly_bad_files(sources, rows_per_file, [r.reason for r in skipped]), DataError)
    if not records:
        detail = f" ({len(skipped)} bad row(s) skipped; the first: {skipped[0].reason})" if skipped else ""
        raise DataError(f"no samples found in {data_files}{detail}")
    return records, skipped


# the first bytes of data files that are not JSON lines, and what to do about each
OTHER_FORMATS = {b"PAR1": ("a Parquet file (verl's and EasyR1's data format)",
                           "convert it, its images written to files: python -m lit_vr1.data.convert {path} "
                           "{stem}.jsonl --images {stem}_images (then train on {stem}.jsonl with the image folder "
                           "{stem}_images)"),
                 b"PK\x03\x04": ("a zip archive", "unzip it and give the JSONL file inside")}


def refuse_other_formats(path: str) -> None:
    """Refuse a data file that is not JSON lines by its first bytes (Parquet, zip), which would
    otherwise be read line by line as JSON and reported as every line broken."""
    with open(path, "rb") as f:
        head = f.read(4)
    for magic, (what, fix) in OTHER_FORMATS.items():
        if head.startswith(magic):
            stem = os.path.splitext(path)[0]
            fix = fix.format(path=path, stem=stem if stem + ".jsonl" != path else stem + "_converted")
            raise DataError(f"{path}: {what}, not JSON lines (one JSON object per line, as VLM-R1's data is): {fix}")


def _line_id(line: str, where: str) -> str:
    """The id of a (possibly bad) line when it has one, else its "file:line"."""
    try:
        obj = json.loads(line)
    except ValueError:
        return where
    return str(obj["id"]) if isinstance(obj, dict) and "id" in obj else where


OUTLIER_RATIO, OUTLIER_MIN_TOKENS = 4, 1024  # image tokens: a prompt this far over the median is reported


def image_tokens(processor: Any, records: list[Record]) -> list[int] | None:
    """Image tokens of each record's images at the processor's min / max pixels, from the sizes
    read at load (no image decoded, no text templated); None when the processor cannot count."""
    count = getattr(processor, "_get_num_multimodal_tokens", None)
    if count is None:
        return None
    from lit_vr1.models.families import find_family

    family = find_family(processor)
    by_size: dict[tuple[int, int], int] = {}  # data sets hold few distinct sizes: each counted once

    def tokens(size: tuple[int, int]) -> int:
        if size not in by_size:
            w, h = upscaled_size(size)
            counted = count(image_sizes=[(h, w)])
            by_size[size] = sum(family.images.placeholder_tokens(processor, counted) if family
                                else counted.num_image_tokens)
        return by_size[size]

    return [sum(tokens(size) for size in r.image_sizes) for r in records]


def image_token_outlier(processor: Any, records: list[Record], what: str) -> str | None:
    """A warning when one row's images cost far more tokens than the others' (a phone photo
    among thumbnails under Qwen's default max_pixels: about 15,000 tokens in every rollout of it),
    naming the row and its image size, or None."""
    tokens = image_tokens(processor, records)
    with_images = sorted(t for t in tokens or [] if t > 0)  # text-only rows do not make every image an outlier
    if not with_images:
        return None
    median = with_images[len(with_images) // 2]
    worst = max(range(len(tokens)), key=tokens.__getitem__)
    if tokens[worst] < OUTLIER_MIN_TOKENS or tokens[worst] < OUTLIER_RATIO * max(median, 1):
        return None
    r = records[worst]
    sizes = ", ".join(f"{w}x{h}" for w, h in r.image_sizes)
    over = sum(t >= OUTLIER_RATIO * max(median, 1) and t >= OUTLIER_MIN_TOKENS for t in tokens)
    return (f"{what}: {over} row(s) with images of far more tokens than the median image row's {median}: the most, "
            f"{tokens[worst]} image tokens, at {r.source} ({sizes} px). Each such prompt costs its memory and time in "
            "every rollout and pass (an out-of-memory error on a GPU); model.max_pixels caps an image's tokens, and "
            "data.max_prompt_length refuses long prompts (or leaves them out under data.bad_rows=skip)")


TEXT_OUTLIER_MIN_CHARS = 4000  # a question this long (about 1,000 tokens of English) and OUTLIER_RATIO x the median


def text_length_outlier(processor: Any, records: list[Record], what: str, template: str) -> str | None:
    """A warning when some rows' questions are far longer than the others' (a pasted document
    among one-line questions: 1,364-5,222 tokens against about 50 in a new user's data, which took
    a validation from 1.34 to 9.13 GB), naming the longest row, or None. Counted in characters
    (every row, cheaply); the longest row alone is tokenized, for its count."""
    chars = [len(r.question) + len(r.system or "") for r in records]
    if not chars:
        return None
    median = sorted(chars)[len(chars) // 2]
    bar = max(TEXT_OUTLIER_MIN_CHARS, OUTLIER_RATIO * max(median, 1))
    over = sum(c >= bar for c in chars)
    if not over:
        return None
    worst = max(range(len(chars)), key=chars.__getitem__)
    r = records[worst]
    tokens = len(text_ids(processor, r, template))
    return (f"{what}: {over} row(s) with questions far longer than the median row's {median} characters: the longest, "
            f"{chars[worst]} characters ({tokens} text tokens), at {r.source}. Each such prompt costs its memory and time "
            "in every rollout and pass (an out-of-memory error on a GPU); data.max_prompt_length refuses long prompts "
            "(or leaves them out under data.bad_rows=skip)")


def text_ids(processor: Any, record: Record, template: str) -> list[int]:
    """Token ids of a record's prompt as the chat template writes it for generation, each image
    placeholder one token (not yet expanded to the image's tokens)."""
    messages = build_messages(record.question, len(record.image_paths), template, record.system)
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return processor.tokenizer(text).input_ids


def prompt_length(processor: Any, record: Record, template: str) -> int:
    """Tokens of a record's prompt as the processor encodes it for generation: the chat
    template's text tokens, with each image placeholder counted as the number of tokens the
    processor expands it to for that image's (upscaled) size and its min/max pixels."""
    ids = text_ids(processor, record, template)
    if not record.image_sizes:
        return len(ids)
    count = getattr(processor, "_get_num_multimodal_tokens", None)
    if count is None:
        raise DataError(f"data.max_prompt_length: {type(processor).__name__} cannot count image tokens "
                        "(no _get_num_multimodal_tokens); leave data.max_prompt_length unset for this model")
    from lit_vr1.models.families import find_family

    placeholder = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    sizes = [upscaled_size(size) for size in record.image_sizes]
    counted = count(image_sizes=[(h, w) for w, h in sizes])
    family = find_family(processor)
    image_tokens = family.images.placeholder_tokens(processor, counted) if family else counted.num_image_tokens
    return len(ids) - ids.count(placeholder) + sum(image_tokens)


def huge_images_note(records: list[Record]) -> str | None:
    """A note when images are over PIL's decompression-bomb limit (89 Mpx), which PIL warns
    of at every decode without naming the file: each is decoded whole at every load before
    it is resized to the model's ``max_pixels``."""
    limit = Image.MAX_IMAGE_PIXELS
    huge = [(r, p, s) for r in records for p, s in zip(r.image_paths, r.image_sizes) if limit and s[0] * s[1] > limit]
    if not huge:
        return None
    r, p, (w, h) = huge[0]
    return (f"{len(huge)} image(s) over {limit / 1e6:.0f} Mpx, PIL's decompression-bomb limit (the first: {p} at "
            f"{r.source}, {w}x{h}); each is decoded whole at every load ({w * h * 3 / 2**20:.0f} MiB for that one) "
            "before it is resized to model.max_pixels: downscale the files once to save that time and memory")


def duplicate_ids_note(records: list[Record]) -> str | None:
    """A note when lines of these files write the same ``id`` (predictions, skipped-row reports
    and a join with ground truth name rows by it), with the first few and their lines; None
    when every written id is distinct (lines without an id are named by file and line)."""
    seen: dict[str, list[Record]] = {}
    for r in records:
        if r.written_id is not None:
            seen.setdefault(json.dumps(r.written_id), []).append(r)
    # the same line read again (its file listed twice: an upweighting, said by listed_twice_note) is no repeat
    repeated = {k: v for k, v in seen.items() if len({r.source for r in v}) > 1}
    if not repeated:
        return None
    shown = "; ".join(f"id {k} at {', '.join(r.source for r in v[:3])}" for k, v in list(repeated.items())[:3])
    more = f" and {len(repeated) - 3} more" if len(repeated) > 3 else ""
    same = sum(len({_content(r) for r in v}) == 1 for v in repeated.values())
    copies = (f"; {same} of them repeat the whole row (image, question and answer), which then trains as many times "
              "as it is written: remove the copies" if same else "")
    return (f"{len(repeated)} id(s) are written on several lines ({shown}{more}): predictions and skipped-row "
            f"reports name rows by id, so a join with the ground truth by id merges them; give each line its own id{copies}")


def listed_twice_note(data_files: str) -> str | None:
    """A note for each data file listed more than once in ``data_files`` (its rows are read, and
    trained, as many times: a file's weight in a mix), else None."""
    counts = Counter(split_paths(data_files))
    twice = [f"{path} ({n} times)" for path, n in counts.items() if n > 1]
    if not twice:
        return None
    return (f"data: {', '.join(twice)} listed more than once: each of its rows is read, and trains, as many times "
            "(a heavier weight in the mix)")


def _content(record: Record) -> str:
    """What a row says (its images, question, system prompt and answer): copies of a row are equal in it."""
    return json.dumps([record.image_paths, record.question, record.system, record.solution], sort_keys=True, default=str)


class JsonlDataset(Dataset):
    """Map-style dataset over VLM-R1 JSONL files; images are decoded on access.

    Args:
        data_files: ':'-separated JSONL paths.
        image_folders: ':'-separated folders, one per data file.
        template: prompt template name (see ``lit_vr1.data.prompts.TEMPLATES``).
        reward_methods: ':'-separated task of each file (see :func:`file_tasks`).
        bad_rows: "raise" (every row is checked, then one error lists the bad rows, each
            with its file, line and field) or "skip" (bad rows are left out and listed in
            :attr:`skipped`; one that fails at load time is replaced by the next row that
            loads, see the module docstring; with ``replace_failed`` False it is left out of
            its batch instead, as a :class:`FailedRow`).
        check_boxes: check the ground-truth boxes (area, inside the image).
        images_outside_folder: accept image paths that resolve outside their image folder.
        names: how messages name ``data_files``, ``image_folders`` and ``reward_methods``
            (the data module passes its flags, e.g. ``data.val_files``).

    Attributes:
        skipped: rows left out when the dataset was built (and by
            :meth:`check_prompt_lengths`), with the reason of each.
        replace_failed: under ``bad_rows="skip"``, put the next row that loads in the place of
            one that fails (True: training keeps its batch size) or leave it out (False: the data
            module's held-out and prediction sets, where a stand-in would be scored twice).
    """

    replace_failed = True

    def __init__(self, data_files: str, image_folders: str, template: str = "plain",
                 reward_methods: str | None = None, bad_rows: str = "raise", check_boxes: bool = True,
                 images_outside_folder: bool = False, names: tuple[str, ...] = ARG_NAMES) -> None:
        self.template = check_template(template)
        self.bad_rows = check_bad_rows(bad_rows)
        self.check_boxes = check_boxes
        self.records, self.skipped = read_records(data_files, image_folders, reward_methods, bad_rows, check_boxes,
                                                  images_outside_folder, names)
        self.failed: dict[int, SkippedRow] = {}  # rows that failed to load in this process (skip mode)
        for note in (duplicate_ids_note(self.records), huge_images_note(self.records)):
            if note:
                rank_zero_warn(note)
        note = listed_twice_note(data_files)
        if note:
            rank_zero_info(note)

    def __len__(self) -> int:
        return len(self.records)

    def check_prompt_lengths(self, processor: Any, max_prompt_length: int) -> list[SkippedRow]:
        """Refuse (or, in skip mode, drop) every row whose prompt is longer than
        ``max_prompt_length`` tokens, image tokens included (:func:`prompt_length`); never
        truncates (see :meth:`check_rows`). Returns the rows dropped by this call."""
        def too_long(r: Record) -> str | None:
            n = prompt_length(processor, r, self.template)
            if n <= max_prompt_length:
                return None
            if not r.image_paths:  # a text-only row: no image tokens, no pixels to lower
                return (f"{r.source}: the prompt (the question, no image) is {n} tokens, over "
                        f"data.max_prompt_length={max_prompt_length}; prompts are never truncated: raise "
                        "max_prompt_length, shorten the question, or remove the line")
            return (f"{r.source}: the prompt (field 'image' and the question) is {n} tokens with its image tokens, "
                    f"over data.max_prompt_length={max_prompt_length}; prompts are never truncated (a cut inside image "
                    "tokens breaks the input): raise max_prompt_length, lower model.max_pixels, or remove the line")

        return self.check_rows(too_long, f"rows over data.max_prompt_length={max_prompt_length}",
                               "shorten them, raise max_prompt_length, lower model.max_pixels, or set data.bad_rows=skip "
                               "to leave them out", f"every row is over data.max_prompt_length={max_prompt_length}")

    def check_rows(self, problem: Any, what: str, advice: str, all_bad: str,
                   most: str | None = None) -> list[SkippedRow]:
        """Refuse (or, in skip mode, drop) every row for which ``problem(record)`` returns a
        message (naming the row's "file:line"). Under "raise", every row is checked, then one
        :class:`DataError` lists the bad ones (:func:`rows_message`, with ``what`` and
        ``advice``); under "skip" they leave the dataset and join :attr:`skipped`, and a
        dataset left empty is an error (``all_bad``, then the first reason), and so, when ``most``
        is given (its likelier cause, asked), is a file that would lose most of its rows
        (:func:`mostly_bad_files`); without it, leaving rows out is what skip was chosen for.
        Returns the rows dropped by this call."""
        keep, dropped, sources = [], [], []
        for r in self.records:
            reason = problem(r)
            if reason is None:
                keep.append(r)
                continue
            dropped.append(SkippedRow(r.id, reason))
            sources.append(r.source)
        if dropped and self.bad_rows == "raise":
            raise DataError(rows_message([d.reason for d in dropped], sources, what, advice))
        if not keep:
            raise DataError(f"{all_bad}; the first: {dropped[0].reason}")
        if dropped and most is not None:
            rows_per_file = Counter(file_of(r.source) for r in self.records)
            enforce(mostly_bad_files(sources, rows_per_file, [d.reason for d in dropped], most), DataError)
        self.records = keep
        self.skipped.extend(dropped)
        return dropped

    def load(self, idx: int) -> Sample:
        """Decode row ``idx``; a :class:`DataError` naming the file, line and image when
        an image cannot be decoded."""
        r = self.records[idx]
        pixels: list[Image.Image] = []
        for p in r.image_paths:
            try:
                pixels.append(images.open_image(p))  # upright, transparency on white, 16-bit scaled
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
                raise DataError(f"{r.source}: field 'image': {p} cannot be decoded ({e}); "
                                "replace the file or remove the line") from None
        originals = [im.size for im in pixels]
        wanted = [upscaled_size(size) for size in originals]
        upscaled = wanted != originals
        if upscaled:
            pixels = [im if im.size == size else im.resize(size, Image.Resampling.BICUBIC) for im, size in zip(pixels, wanted)]
        messages = build_messages(r.question, len(pixels), self.template, r.system)
        return Sample(r.id, pixels, messages, r.question, r.solution, r.source, dict(r.metadata), r.task,
                      original_sizes=originals if upscaled else None, box_answers=self.check_boxes,
                      written_id=r.written_id, image_paths=list(r.image_paths))

    def __getitem__(self, idx: int) -> Sample | FailedRow:
        if self.bad_rows == "raise":
            return self.load(idx)
        if not self.replace_failed:
            if idx not in self.failed:
                try:
                    return self.load(idx)
                except DataError as e:
                    self.failed[idx] = SkippedRow(self.records[idx].id, str(e))
            return FailedRow([self.failed[idx]])
        skipped: list[SkippedRow] = []
        for k in range(len(self.records)):
            j = (idx + k) % len(self.records)
            if j in self.failed:  # failed before in this process: reported again, not decoded again
                skipped.append(self.failed[j])
                continue
            try:
                sample = self.load(j)
            except DataError as e:
                self.failed[j] = SkippedRow(self.records[j].id, str(e))
                skipped.append(self.failed[j])
                continue
            sample.skipped = skipped
            return sample
        raise DataError(f"no row of the dataset loads; the first failure: {next(iter(self.failed.values())).reason}")
