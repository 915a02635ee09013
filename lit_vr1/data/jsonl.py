"""JSONL data: one sample a line, images relative to their folder. Three layouts:

VLM-R1 (REC, OVD, math; the "gpt" turn is the solution)::

    {"id": 1, "image": "a.jpg" | ["a.jpg", "b.jpg"],
     "conversations": [{"from": "human", "value": "<image>..."}, {"from": "gpt", "value": "..."}]}

Vision-R1 detection (solution: [category, [x1, y1, x2, y2]] pairs in original pixels)::

    {"id": 1, "image": "a.jpg", "problem": "...", "solution": [["cat", [10, 20, 50, 60]]],
     "width": 640, "height": 480, "num_instances": 1}

label-free (R1V-Free: a question and an image, no solution)::

    {"id": 1, "image": "a.jpg", "problem": "..."}

Any line may carry ``"reward_method": "..."``: the task its rewards are routed by
(overriding its file's). Several files and image folders are given ':'-separated, one
folder per file. Every line is checked when the dataset is built (valid JSON, the
fields, the image files exist), so a bad line fails at once with its file and line,
not hours later.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import Dataset

from lit_vr1.data.prompts import build_messages, check_template


class DataError(ValueError):
    """Bad input data; the message names the file and line."""


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


@dataclass
class Sample:
    """What a training step gets for one prompt.

    images: the decoded RGB images, in prompt order. messages: the chat turns of the
    prompt (user turn with image items and the templated text). solution: the "gpt"
    turn of the data (for REC, the box in original-image pixels), Vision-R1's list of
    [category, box] pairs, or "" for label-free data. task: the reward routing key.
    """

    id: str
    images: list[Image.Image]
    messages: list[dict]
    question: str
    solution: Any
    source: str
    metadata: dict[str, Any] = field(default_factory=dict)
    task: str = "default"

    @property
    def image_sizes(self) -> list[tuple[int, int]]:
        return [im.size for im in self.images]


def solution_text(solution: Any) -> str:
    """A solution as the answer text a model is taught (SFT): strings as they are,
    Vision-R1's [category, box] pairs as Qwen2.5-VL JSON ``[{"bbox_2d": ..., "label": ...}]``."""
    if isinstance(solution, str):
        return solution
    return json.dumps([{"bbox_2d": box, "label": label} for label, box in solution])


def split_paths(value: str) -> list[str]:
    """Split a ':'-separated list, dropping empty parts."""
    return [p for p in value.split(":") if p]


def pair_files(data_files: str, image_folders: str) -> list[tuple[str, str]]:
    """Pair ':'-separated data files with ':'-separated image folders (equal counts)."""
    files = split_paths(data_files)
    folders = split_paths(image_folders)
    if len(files) != len(folders):
        raise DataError(
            f"data_files lists {len(files)} file(s) but image_folders lists {len(folders)} folder(s); "
            "give one image folder per data file, ':'-separated"
        )
    return list(zip(files, folders))


def _turns(obj: dict, where: str) -> tuple[str, Any]:
    """(question, solution) of a line in any of the three layouts."""
    conv = obj.get("conversations")
    if conv is not None:
        if not isinstance(conv, list) or not conv:
            raise DataError(f"{where}: field 'conversations' must be a list of a human and a gpt turn")
        human = next((t.get("value") for t in conv if isinstance(t, dict) and t.get("from") == "human"), None)
        gpt = next((t.get("value") for t in conv if isinstance(t, dict) and t.get("from") == "gpt"), "")
        if not isinstance(human, str) or not isinstance(gpt, str):
            raise DataError(f"{where}: 'conversations' needs a {{'from': 'human'}} turn (and a {{'from': 'gpt'}} one "
                            "for labelled data) with string values")
        return human, gpt
    question = obj.get("problem", obj.get("question"))
    if not isinstance(question, str):
        raise DataError(f"{where}: a line needs 'conversations', or a string 'problem' (or 'question') field")
    solution = obj.get("solution", "")
    if isinstance(solution, list):
        for k, pair in enumerate(solution):
            ok = (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str) and isinstance(pair[1], list)
                  and len(pair[1]) == 4 and all(isinstance(v, (int, float)) for v in pair[1]))
            if not ok:
                raise DataError(f"{where}: field 'solution' item {k} must be [category, [x1, y1, x2, y2]], got {pair!r}")
        n = obj.get("num_instances")
        if n is not None and n != len(solution):
            raise DataError(f"{where}: field 'num_instances' is {n} but 'solution' lists {len(solution)} objects")
    elif not isinstance(solution, str):
        raise DataError(f"{where}: field 'solution' must be a string or a list of [category, box] pairs")
    return question, solution


def parse_line(line: str, path: str, lineno: int, folder: str, task: str = "default") -> Record:
    """Validate one JSONL line; raise :class:`DataError` naming ``path:lineno``."""
    where = f"{path}:{lineno}"
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    human, solution = _turns(obj, where)
    raw = obj.get("image", [])
    names = [raw] if isinstance(raw, str) else raw
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise DataError(f"{where}: field 'image' must be a path or a list of paths")
    paths = [os.path.join(folder, n) for n in names]
    for p in paths:
        if not os.path.isfile(p):
            raise DataError(f"{where}: image file {p} does not exist")
    if human.count("<image>") > len(paths):
        raise DataError(f"{where}: the human turn has {human.count('<image>')} <image> markers but {len(paths)} image(s)")
    method = obj.get("reward_method", task)
    if not isinstance(method, str) or not method:
        raise DataError(f"{where}: field 'reward_method' must be a non-empty string")
    skip = ("id", "image", "conversations", "problem", "question", "solution", "reward_method")
    meta = {k: v for k, v in obj.items() if k not in skip}
    return Record(str(obj.get("id", f"{Path(path).stem}-{lineno}")), paths, human, solution, where, meta, method)


def file_tasks(data_files: str, reward_methods: str | None) -> list[str]:
    """The task of each ':'-separated data file: ``reward_methods`` ':'-separated, one per
    file (VLM-R1's --reward_method), or a single one for all; "default" when unset."""
    n = len(split_paths(data_files))
    if reward_methods is None:
        return ["default"] * n
    methods = split_paths(reward_methods)
    if len(methods) == 1:
        return methods * n
    if len(methods) != n:
        raise DataError(f"reward_methods lists {len(methods)} method(s) but data_files lists {n} file(s); "
                        "give one per file, ':'-separated, or a single one for all")
    return methods


def read_records(data_files: str, image_folders: str, reward_methods: str | None = None) -> list[Record]:
    """Every record of every ':'-separated file, validated, with its task."""
    records = []
    tasks = file_tasks(data_files, reward_methods)
    for (path, folder), task in zip(pair_files(data_files, image_folders), tasks):
        if not os.path.isfile(path):
            raise DataError(f"data file {path} does not exist")
        with open(path) as f:
            for lineno, line in enumerate(f, start=1):
                if line.strip():
                    records.append(parse_line(line, path, lineno, folder, task))
    if not records:
        raise DataError(f"no samples found in {data_files}")
    return records


class JsonlDataset(Dataset):
    """Map-style dataset over VLM-R1 JSONL files; images are decoded on access.

    Args:
        data_files: ':'-separated JSONL paths.
        image_folders: ':'-separated folders, one per data file.
        template: prompt template name (see ``lit_vr1.data.prompts.TEMPLATES``).
        reward_methods: ':'-separated task of each file (see :func:`file_tasks`).
    """

    def __init__(self, data_files: str, image_folders: str, template: str = "plain",
                 reward_methods: str | None = None) -> None:
        self.template = check_template(template)
        self.records = read_records(data_files, image_folders, reward_methods)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, idx: int) -> Sample:
        r = self.records[idx]
        images = []
        for p in r.image_paths:
            try:
                with Image.open(p) as im:
                    images.append(im.convert("RGB"))
            except OSError as e:
                raise DataError(f"{r.source}: image file {p} cannot be read ({e})") from None
        size = (r.metadata.get("width"), r.metadata.get("height"))
        if images and size != (None, None) and tuple(size) != images[0].size:
            raise DataError(f"{r.source}: fields 'width', 'height' say {size[0]}x{size[1]} but image {r.image_paths[0]} "
                            f"is {images[0].size[0]}x{images[0].size[1]}; the solution's boxes would be in another frame")
        messages = build_messages(r.question, len(images), self.template)
        return Sample(r.id, images, messages, r.question, r.solution, r.source, dict(r.metadata), r.task)
