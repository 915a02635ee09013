"""Data of verl, EasyR1, R1-V, TRL and LLaMA-Factory -> lit-vr1 JSON lines, images written as files.

    python -m lit_vr1.data.convert train.parquet train.jsonl --images images/ [--bad-rows skip]
    python -m lit_vr1.data.convert chats.jsonl train.jsonl --images images/

Then train with ``--data.train_files train.jsonl --data.train_images images/``.

The input is a Parquet file (verl's, EasyR1's, a Hugging Face dataset's ``to_parquet``), told
by its first bytes, or JSON lines in a layout lit-vr1 does not read itself (LLaMA-Factory's and
TRL's ``messages`` / ``prompt`` chats with an ``images`` list). Each row becomes one JSON line
``{"id", "image", "problem", "solution", "system", ...}``, in the file's row order, read the way
these systems' loaders read it:

* the question: column ``problem`` (EasyR1, R1-V) or ``question``, as text with an ``<image>``
  marker where each image goes (none: the images go first); or ``prompt`` / ``messages``, a
  chat (verl, TRL, LLaMA-Factory): ``[{"role": "system" | "user" | "assistant", "content":
  ...}]``, whose content is text with ``<image>`` markers or a list of parts (``{"type":
  "text", "text": ...}``, ``{"type": "image"}``, each image part a marker). A chat holds one
  user turn; its system turn becomes the row's ``system`` prompt and an assistant turn after
  the question its answer. A ShareGPT ``conversations`` column is kept as it is (lit-vr1 reads
  that layout itself).
* the answer: column ``solution`` (R1-V), ``answer`` (EasyR1), verl's
  ``reward_model.ground_truth`` or ``ground_truth``, else the chat's assistant turn or TRL's
  ``completion``; a list of one string or number is that value, a list of numbers a box only
  in ``solution`` (or a column named with ``--answer-key``). None of them: the row is
  unlabelled (R1V-Free).
* the images: column ``images`` (a list) or ``image`` (one). An entry is a Hugging Face image
  (``{"bytes": ..., "path": ...}``), raw bytes, or a path. Bytes are written to the image folder
  as ``<sha256 prefix>.<format>`` (an image used by several rows is written once, and a second
  run writes nothing new); a path without bytes is kept, relative to the image folder (EasyR1's
  ``image_dir``, LLaMA-Factory's dataset folder: give that folder as ``--images``).
* the id: column ``id``, else ``<file stem>-<row>`` (Parquet rows counted from 0, as pandas
  numbers them; JSON lines by their line number).
* every other column whose values are JSON (verl's ``data_source``, ``ability``, ``extra_info``)
  is kept: a :class:`~lit_vr1.rewards.function.FunctionReward` reads such columns by name.
  Columns of bytes are left out and named in the summary.

Every line written is checked as training will read it (:func:`lit_vr1.data.jsonl.parse_line`:
markers against images, images readable, boxes inside their image); a bad row stops the
conversion naming the input's row (or line) and the field, or with ``--bad-rows skip`` is left
out and counted (the images it wrote stay in the folder, unnamed by any line). Columns
``videos`` / ``video`` that hold anything are refused (lit-vr1 trains on images).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from lit_vr1.data.images import open_quietly
from lit_vr1.data.jsonl import BAD_ROWS, VIDEO_FIELDS, DataError, decode_line, forget_file_reads, parse_line

QUESTION_COLUMNS = ("problem", "question", "prompt", "messages")
ANSWER_COLUMNS = ("solution", "answer", "reward_model.ground_truth", "ground_truth")
IMAGE_COLUMNS = ("images", "image")
# columns read for a row's question, answer or system prompt: one of them that is null is not kept as metadata
KNOWN_COLUMNS = frozenset({*QUESTION_COLUMNS, *(c.split(".")[0] for c in ANSWER_COLUMNS), "system", "conversations"})
FORMAT_SUFFIX = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif",
                 "MPO": ".jpg"}
READ_ROWS = 16  # rows handed on at a time (a row of a vision data set holds its images' bytes)
LISTED = 5


class ConvertError(ValueError):
    """A row (or file) lit-vr1 cannot convert; the message names the file, the row and the column."""


@dataclass
class Converted:
    """What a conversion wrote: lines, images written and found already there, rows left out."""

    lines: int = 0
    images_written: int = 0
    images_present: int = 0
    skipped: list[str] = field(default_factory=list)  # "row N: reason" of rows left out under --bad-rows skip
    dropped_columns: set[str] = field(default_factory=set)  # columns of bytes, not JSON

    def summary(self) -> str:
        out = (f"{_count(self.lines, 'row')}, {_count(self.images_written, 'image')} written to the image folder "
               f"({self.images_present} already there)")
        if self.skipped:
            more = f"; and {len(self.skipped) - LISTED} more" if len(self.skipped) > LISTED else ""
            out += f"; left out {_count(len(self.skipped), 'bad row')}: {'; '.join(self.skipped[:LISTED])}{more}"
        if self.dropped_columns:
            out += f"; columns not kept (bytes, not JSON): {', '.join(sorted(self.dropped_columns))}"
        return out


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def column(row: dict, name: str) -> Any:
    """The value of ``name`` in ``row``; a dotted name reads a struct column's field (None: absent)."""
    value: Any = row
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _first(row: dict, names: tuple[str, ...]) -> tuple[str | None, Any]:
    """(name, value) of the first of ``names`` that ``row`` holds with a value (None, None: none)."""
    for name in names:
        value = column(row, name)
        if value is not None:
            return name, value
    return None, None


def content_text(content: Any, where: str) -> str:
    """A chat turn's content as text: a string as it is; a list of parts joined, each image
    part an ``<image>`` marker (TRL's and OpenAI's multimodal content)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ConvertError(f"{where}: a chat turn's content must be text or a list of parts, got "
                           f"{type(content).__name__}")
    out = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            out.append(part.get("text") or "")
        elif kind in ("image", "image_url"):
            out.append("<image>")
        else:
            raise ConvertError(f"{where}: a content part of type {kind!r}; lit-vr1 reads 'text' and 'image' parts")
    return "".join(out)


def chat(messages: Any, where: str) -> tuple[str, str | None, str | None]:
    """(question, system prompt or None, answer or None) of a chat: optional system turns, one
    user turn, then at most one assistant turn."""
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise ConvertError(f"{where}: a chat must be a list of {{'role', 'content'}} turns")
    roles = [m.get("role") for m in messages]
    shape = "optional system turns, one user turn (the question), then at most one assistant turn (its answer)"
    if roles.count("user") != 1 or any(r not in ("system", "user", "assistant") for r in roles):
        raise ConvertError(f"{where}: the chat's turns are {', '.join(map(str, roles))}; a row is {shape}: a "
                           "multi-turn dialogue is not read (one row per question)")
    at = roles.index("user")
    if any(r != "system" for r in roles[:at]) or roles[at + 1:] not in ([], ["assistant"]):
        raise ConvertError(f"{where}: the chat's turns are {', '.join(roles)}; a row is {shape}")
    system = "\n".join(content_text(m.get("content"), where) for m in messages[:at]) or None
    answer = content_text(messages[at + 1].get("content"), where) if at + 1 < len(messages) else None
    return content_text(messages[at].get("content"), where), system, answer


def completion_answer(done: Any, where: str) -> str:
    """TRL's ``completion``: text, or one assistant turn."""
    if isinstance(done, str):
        return done
    if isinstance(done, list) and len(done) == 1 and isinstance(done[0], dict) and done[0].get("role") == "assistant":
        return content_text(done[0].get("content"), where)
    raise ConvertError(f"{where}: a completion must be text or one assistant turn")


def image_name(data: bytes, where: str) -> str:
    """``<sha256 prefix>.<format>`` of an image's bytes (a :class:`ConvertError` when PIL cannot read them)."""
    try:
        with open_quietly(io.BytesIO(data)) as im:  # training says large images once, naming them
            kind = im.format or ""
            im.load()  # a truncated image fails here, not when training first loads it
    except UnidentifiedImageError:
        raise ConvertError(f"{where}: its {len(data)} bytes are not an image PIL can read (no known image format)") \
            from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ConvertError(f"{where}: its bytes are not an image PIL can read ({e})") from None
    return hashlib.sha256(data).hexdigest()[:24] + FORMAT_SUFFIX.get(kind, "." + kind.lower())


def image_entries(value: Any) -> list[Any]:
    """The image entries of an image column's value (one entry, or a list of them)."""
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def save_images(value: Any, folder: str, where: str, converted: Converted) -> list[str]:
    """Names (relative to ``folder``) of a row's images, bytes written to files on the way."""
    names = []
    for k, entry in enumerate(image_entries(value), start=1):
        at = f"{where}, image {k}"
        data, path = (entry.get("bytes"), entry.get("path")) if isinstance(entry, dict) else (entry, None)
        if isinstance(data, str):
            data, path = None, data
        if data is None:
            if not isinstance(path, str) or not path:
                raise ConvertError(f"{at}: neither bytes nor a path")
            names.append(path)
            continue
        if not isinstance(data, (bytes, bytearray)):
            raise ConvertError(f"{at}: an image must be bytes, a path or {{'bytes', 'path'}}, got "
                               f"{type(data).__name__}")
        name = image_name(bytes(data), at)
        os.makedirs(folder, exist_ok=True)
        target = os.path.join(folder, name)
        if os.path.isfile(target) and os.path.getsize(target) == len(data):
            converted.images_present += 1
        else:
            with open(target + ".part", "wb") as f:
                f.write(data)
            os.replace(target + ".part", target)  # a run stopped mid-write leaves no half image under the name
            converted.images_written += 1
        names.append(name)
    return names


def answer_of(row: dict, answer_key: str | None, where: str) -> tuple[str | None, Any]:
    """(column, answer) of a row; None: unlabelled. A list of one string or number is that
    value; a list of numbers is a box (``[x1, y1, x2, y2]``) only in a ``solution`` column (VLM-R1's
    and lit-vr1's own name): under ``answer`` or ``ground_truth`` (EasyR1's, verl's) it would
    train as a box without a word where it meant several answers."""
    name, value = _first(row, (answer_key,) if answer_key else ANSWER_COLUMNS)
    if not isinstance(value, (list, tuple)) or not value:
        return name, value
    value = list(value)
    scalar = all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in value)
    if scalar and len(value) == 1:
        return name, value[0]
    if scalar and all(isinstance(v, str) for v in value):
        raise ConvertError(f"{where}: column {name!r} holds {len(value)} answers ({json.dumps(value)[:120]}); "
                           "a row has one answer: keep the one the reward should check")
    if scalar and name != "solution" and answer_key is None:
        raise ConvertError(f"{where}: column {name!r} holds a list of {len(value)} numbers ({json.dumps(value)[:120]}): "
                           "a row has one answer; a box [x1, y1, x2, y2] is read from a 'solution' column, or from "
                           f"this one when it is named with --answer-key {name}")
    return name, value


def jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def convert_row(row: dict, row_id: str, folder: str, where: str, converted: Converted,
                keys: dict[str, str | None]) -> dict:
    """One row as a lit-vr1 JSON line (its images written to ``folder``)."""
    video = next((k for k in row if k.lower() in VIDEO_FIELDS and row[k] not in (None, "", [])), None)
    if video is not None:
        raise ConvertError(f"{where}: column {video!r} holds a video; lit-vr1 trains on images (give sampled frames "
                           "as images, or leave the row out)")
    line: dict[str, Any] = {"id": row["id"] if row.get("id") is not None else row_id}
    used = {"id"}
    q_name, question = _first(row, (keys["question"],) if keys["question"] else QUESTION_COLUMNS)
    system, answer = None, None
    if isinstance(row.get("conversations"), list) and q_name is None:
        line["conversations"] = row["conversations"]
        used.add("conversations")
    elif q_name is None:
        raise ConvertError(f"{where}: no question: the row has none of the columns {', '.join(QUESTION_COLUMNS)} "
                           f"(its columns: {', '.join(row)}); name it with --question-key")
    elif isinstance(question, str):
        line["problem"] = question
    else:
        line["problem"], system, answer = chat(question, f"{where}, column {q_name!r}")
    if q_name is not None:
        used.add(q_name.split(".")[0])
    if row.get("system") is not None:
        if system is not None:
            raise ConvertError(f"{where}: a system prompt in column 'system' and in the chat's system turn: give it once")
        system = row["system"]
        used.add("system")
    if system is not None:
        line["system"] = system
    a_name, solution = answer_of(row, keys["answer"], where)
    if a_name is not None:
        used.add(a_name.split(".")[0])
        line["solution"] = solution
    elif answer is not None:
        line["solution"] = answer
    elif row.get("completion") is not None:  # TRL's prompt-completion layout: the completion is the answer
        line["solution"] = completion_answer(row["completion"], f"{where}, column 'completion'")
        used.add("completion")
    i_name, images = _first(row, (keys["image"],) if keys["image"] else IMAGE_COLUMNS)
    if i_name is not None:
        used.add(i_name)
        names = save_images(images, folder, f"{where}, column {i_name!r}", converted)
        if names:
            line["image"] = names if len(names) > 1 else names[0]
    for name, value in row.items():
        if name in used or name in line or name in IMAGE_COLUMNS or (name in KNOWN_COLUMNS and value is None):
            continue
        if jsonable(value):
            line[name] = value
        else:
            converted.dropped_columns.add(name)
    return line


PARQUET_MAGIC = b"PAR1"


def rows(path: str) -> Iterator[tuple[str, int, dict]]:
    """(where, number, row) of each row of a Parquet file (rows counted from 0) or of a JSON
    lines file (counted from line 1) or JSON array (items counted from 0).

    Parquet is read through a small buffer, not a row group's bytes at once (pyarrow's
    ``pre_buffer``), and 16 rows at a time: a file written as one row group, as pandas and
    ``datasets`` write one, need not fit in memory several times over (a 262 MB file of 700
    JPEGs: peak RSS 1.45 GB, of which 0.86 GB is the import, against 2.14 GB with pyarrow's
    defaults and 256 rows)."""
    with open(path, "rb") as f:
        parquet = f.read(4) == PARQUET_MAGIC
    if not parquet:
        yield from _json_rows(path)
        return
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ConvertError("reading Parquet needs pyarrow: pip install pyarrow (or pip install 'lit-vr1[parquet]')") \
            from None
    try:
        reader = pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 16)  # read a column chunk as it is decoded
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise ConvertError(f"{path}: not a Parquet file pyarrow can read ({e})") from None
    i = 0
    for batch in reader.iter_batches(batch_size=READ_ROWS):
        for row in batch.to_pylist():
            yield f"{path} row {i}", i, row
            i += 1


def _json_rows(path: str) -> Iterator[tuple[str, int, dict]]:
    """Rows of JSON lines, or of one JSON array of objects (LLaMA-Factory's ``.json`` files);
    text is decoded as training decodes it (UTF-8, a BOM allowed; other bytes refused, not
    replaced)."""
    with open(path, "rb") as f:
        head = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith(b"["):
        yield from _json_array_rows(path)
        return
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            try:
                line = decode_line(raw, f"{path}:{n}", first=n == 1)
            except DataError as e:
                raise ConvertError(str(e).replace(", or skip the line with data.bad_rows=skip", "")) from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise ConvertError(f"{path}:{n}: not a Parquet file, nor a line of JSON ({e})") from None
            if not isinstance(row, dict):
                raise ConvertError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
            yield f"{path}:{n}", n, row


def _json_array_rows(path: str) -> Iterator[tuple[str, int, dict]]:
    with open(path, "rb") as f:
        raw = f.read()
    try:
        rows = json.loads(decode_line(raw, path, first=True))
    except DataError as e:
        raise ConvertError(str(e).replace(", or skip the line with data.bad_rows=skip", "")) from None
    except ValueError as e:
        raise ConvertError(f"{path}: starts as a JSON array but is not one ({e})") from None
    if not isinstance(rows, list):
        raise ConvertError(f"{path}: expected a JSON array of objects")
    for n, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ConvertError(f"{path} item {n}: expected a JSON object, got {type(row).__name__}")
        yield f"{path} item {n}", n, row


def convert(path: str, out: str, folder: str, bad_rows: str = "raise", question_key: str | None = None,
            answer_key: str | None = None, image_key: str | None = None, check_boxes: bool = True,
            images_outside_folder: bool = False) -> Converted:
    """Write ``out`` (JSON lines) and the images of ``path`` into ``folder``; see the module's doc."""
    if bad_rows not in BAD_ROWS:
        raise ConvertError(f"--bad-rows {bad_rows!r}: one of {', '.join(BAD_ROWS)}")
    if os.path.isdir(path):
        raise ConvertError(f"{path} is a folder (a datasets.save_to_disk one?): write the dataset as Parquet first, "
                           "datasets.load_from_disk(path).to_parquet('train.parquet'), and convert that file")
    if os.path.exists(out) and os.path.samefile(path, out):
        raise ConvertError(f"{out} is the file to convert: write the JSON lines to another file")
    if not os.path.isdir(os.path.dirname(os.path.abspath(out))):
        raise ConvertError(f"{out}: its folder {os.path.dirname(os.path.abspath(out))} does not exist")
    forget_file_reads()  # this conversion writes images: a header read before under their names is not theirs
    converted = Converted()
    keys = {"question": question_key, "answer": answer_key, "image": image_key}
    try:
        with open(out + ".part", "w", encoding="utf-8") as f:
            for where, i, row in rows(path):
                text = _checked_line(row, where, f"{Path(path).stem}-{i}", out, folder, converted, keys, check_boxes,
                                     bad_rows, images_outside_folder)
                if text is not None:
                    f.write(text + "\n")
                    converted.lines += 1
        if not converted.lines and converted.skipped:  # an empty file that "succeeded" trains nothing
            raise ConvertError(f"every row of {path} was left out ({_count(len(converted.skipped), 'bad row')}; the "
                               f"first: {converted.skipped[0]})")
    except BaseException:
        Path(out + ".part").unlink(missing_ok=True)  # no half-written file beside the data
        raise
    os.replace(out + ".part", out)
    return converted


def _checked_line(row: dict, where: str, row_id: str, out: str, folder: str, converted: Converted,
                  keys: dict[str, str | None], check_boxes: bool, bad_rows: str, outside: bool) -> str | None:
    """The row at ``where`` as a JSON line checked as training reads it; None when it is left out
    (--bad-rows skip)."""
    lineno = converted.lines + 1
    try:
        text = json.dumps(convert_row(row, row_id, folder, where, converted, keys), ensure_ascii=False)
        try:
            parse_line(text, out, lineno, folder, check_boxes=check_boxes, images_outside_folder=outside)
        except DataError as e:  # parse_line names out:line; the input's row is what to fix
            said = str(e).removeprefix(f"{out}:{lineno}: ").replace(
                "data.images_outside_folder=true", "--images-outside-folder (and data.images_outside_folder=true in training)")
            raise ConvertError(f"{where}: {said}") from None
    except ConvertError as e:
        if bad_rows == "raise":
            raise ConvertError(f"{e} (or leave such rows out with --bad-rows skip)") from None
        converted.skipped.append(str(e))
        return None
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lit_vr1.data.convert", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="the Parquet file (verl, EasyR1, R1-V, a Hugging Face dataset) or JSON lines "
                                  "(LLaMA-Factory / TRL chats)")
    p.add_argument("out", help="the JSON lines file to write")
    p.add_argument("--images", required=True, help="the image folder: embedded images are written there, and image "
                                                   "paths are read relative to it (give it as data.train_images)")
    p.add_argument("--bad-rows", default="raise", choices=BAD_ROWS, help="raise: stop at the first bad row (default); "
                                                                         "skip: leave bad rows out and count them")
    p.add_argument("--question-key", help="the question's column, when it is not one of " + ", ".join(QUESTION_COLUMNS))
    p.add_argument("--answer-key", help="the answer's column (a.b reads field b of struct column a), when it is not "
                                        "one of " + ", ".join(ANSWER_COLUMNS))
    p.add_argument("--image-key", help="the images' column, when it is not one of " + ", ".join(IMAGE_COLUMNS))
    p.add_argument("--no-check-boxes", action="store_true", help="bracketed number lists in answers are not boxes "
                                                                 "(data.check_boxes=false)")
    p.add_argument("--images-outside-folder", action="store_true", help="accept image paths that resolve outside the "
                                                                        "image folder (absolute paths; "
                                                                        "data.images_outside_folder=true in training)")
    a = p.parse_args(argv)
    try:
        if not os.path.exists(a.source):
            raise ConvertError(f"{a.source}: no such file")
        converted = convert(a.source, a.out, a.images, a.bad_rows, a.question_key, a.answer_key, a.image_key,
                            not a.no_check_boxes, a.images_outside_folder)
    except ConvertError as e:
        print(f"lit_vr1.data.convert: error: {e}", file=sys.stderr)
        return 2
    outside = " --data.images_outside_folder=true" if a.images_outside_folder else ""
    print(f"{a.out}: {converted.summary()}\ntrain with --data.train_files {a.out} --data.train_images {a.images}{outside} "
          "(a held-out file: --data.val_files, --data.val_images)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
