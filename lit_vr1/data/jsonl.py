"""VLM-R1's JSONL data: one sample a line, images relative to their folder.

    {"id": 1, "image": "a.jpg" | ["a.jpg", "b.jpg"],
     "conversations": [{"from": "human", "value": "<image>..."}, {"from": "gpt", "value": "..."}]}

Several files and image folders are given ':'-separated, one folder per file.
Every line is checked when the dataset is built (valid JSON, the fields, the image
files exist), so a bad line fails at once with its file and line, not hours later.
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
    solution: str
    source: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class Sample:
    """What a training step gets for one prompt.

    images: the decoded RGB images, in prompt order. messages: the chat turns of the
    prompt (user turn with image items and the templated text). solution: the "gpt"
    turn of the data (for REC, the box in original-image pixels).
    """

    id: str
    images: list[Image.Image]
    messages: list[dict]
    question: str
    solution: str
    source: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def image_sizes(self) -> list[tuple[int, int]]:
        return [im.size for im in self.images]


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


def parse_line(line: str, path: str, lineno: int, folder: str) -> Record:
    """Validate one JSONL line; raise :class:`DataError` naming ``path:lineno``."""
    where = f"{path}:{lineno}"
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    conv = obj.get("conversations")
    if not isinstance(conv, list) or len(conv) < 2:
        raise DataError(f"{where}: field 'conversations' must be a list of a human and a gpt turn")
    human = next((t.get("value") for t in conv if isinstance(t, dict) and t.get("from") == "human"), None)
    gpt = next((t.get("value") for t in conv if isinstance(t, dict) and t.get("from") == "gpt"), None)
    if not isinstance(human, str) or not isinstance(gpt, str):
        raise DataError(f"{where}: 'conversations' needs a {{'from': 'human'}} and a {{'from': 'gpt'}} turn with string values")
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
    meta = {k: v for k, v in obj.items() if k not in ("id", "image", "conversations")}
    return Record(str(obj.get("id", f"{Path(path).stem}-{lineno}")), paths, human, gpt, where, meta)


def read_records(data_files: str, image_folders: str) -> list[Record]:
    """Every record of every ':'-separated file, validated."""
    records = []
    for path, folder in pair_files(data_files, image_folders):
        if not os.path.isfile(path):
            raise DataError(f"data file {path} does not exist")
        with open(path) as f:
            for lineno, line in enumerate(f, start=1):
                if line.strip():
                    records.append(parse_line(line, path, lineno, folder))
    if not records:
        raise DataError(f"no samples found in {data_files}")
    return records


class JsonlDataset(Dataset):
    """Map-style dataset over VLM-R1 JSONL files; images are decoded on access.

    Args:
        data_files: ':'-separated JSONL paths.
        image_folders: ':'-separated folders, one per data file.
        template: prompt template name (see ``lit_vr1.data.prompts.TEMPLATES``).
    """

    def __init__(self, data_files: str, image_folders: str, template: str = "plain") -> None:
        self.template = check_template(template)
        self.records = read_records(data_files, image_folders)

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
        messages = build_messages(r.question, len(images), self.template)
        return Sample(r.id, images, messages, r.question, r.solution, r.source, dict(r.metadata))
