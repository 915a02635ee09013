"""Data of verl, EasyR1, R1-V, TRL and LLaMA-Factory converted to lit-vr1 JSON lines
(``python -m lit_vr1.data.convert``): each layout's question, answer, system prompt and images
land where lit-vr1 reads them, the images in their order and written once, and a bad row is
named by its Parquet row or JSON line (or left out and counted)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from lit_vr1.data.convert import ConvertError, convert, main
from lit_vr1.data.jsonl import JsonlDataset

RED, BLUE, GREEN = (255, 0, 0), (0, 0, 255), (0, 200, 0)


def encoded(colour, fmt: str = "PNG", size=(64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, fmt)
    return buf.getvalue()


def hf_image(colour, fmt: str = "PNG") -> dict:
    """An image as a Hugging Face ``datasets`` Image column stores it in Parquet."""
    return {"bytes": encoded(colour, fmt), "path": None}


def write(tmp_path: Path, rows: list[dict], name: str = "train") -> str:
    path = tmp_path / f"{name}.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def verl_row(i: int, colour=RED) -> dict:
    """A row of verl's geometry3k preprocessing: a chat prompt, images, a rule reward's ground truth."""
    return {"data_source": "hiyouga/geometry3k",
            "prompt": [{"role": "user", "content": "<image>Find x. Put the answer in \\boxed{}."}],
            "images": [hf_image(colour)], "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": str(i + 2)},
            "extra_info": {"split": "train", "index": i}}


def test_verl_rows_become_problem_solution_and_image_lines_with_their_columns_kept(tmp_path):
    src = write(tmp_path, [verl_row(0), verl_row(1), verl_row(2, BLUE)])
    out, folder = tmp_path / "train.jsonl", tmp_path / "img"
    done = convert(src, str(out), str(folder))
    got = lines(out)
    assert [g["id"] for g in got] == ["train-0", "train-1", "train-2"]
    assert [g["solution"] for g in got] == ["2", "3", "4"]
    assert got[0]["problem"] == "<image>Find x. Put the answer in \\boxed{}."
    assert got[0]["extra_info"] == {"split": "train", "index": 0} and got[0]["data_source"] == "hiyouga/geometry3k"
    assert "prompt" not in got[0] and "reward_model" not in got[0] and "images" not in got[0]
    # one file per distinct image: the red image of rows 0 and 1 is written once
    assert got[0]["image"] == got[1]["image"] != got[2]["image"]
    assert sorted(p.name for p in folder.iterdir()) == sorted({g["image"] for g in got})
    assert (done.lines, done.images_written, done.images_present) == (3, 2, 1)
    data = JsonlDataset(str(out), str(folder))
    assert [s.solution for s in data] == ["2", "3", "4"]
    assert data[2].images[0].getpixel((0, 0)) == BLUE
    again = convert(src, str(out), str(folder))  # a second run writes no image again
    assert (again.images_written, again.images_present) == (0, 3) and lines(out) == got


def test_easyr1_rows_keep_their_images_in_order_and_their_formats(tmp_path):
    row = {"problem": "Which is red, the first <image> or the second <image>?", "answer": "first",
           "images": [hf_image(RED, "PNG"), hf_image(BLUE, "JPEG")]}
    out, folder = tmp_path / "e.jsonl", tmp_path / "img"
    convert(write(tmp_path, [row]), str(out), str(folder))
    (line,) = lines(out)
    assert line["solution"] == "first" and line["problem"] == row["problem"]
    assert [Path(n).suffix for n in line["image"]] == [".png", ".jpg"]
    sample = JsonlDataset(str(out), str(folder))[0]
    assert sample.images[0].getpixel((5, 5)) == RED
    r, g, b = sample.images[1].getpixel((5, 5))
    assert b > 200 and r < 30  # the JPEG's blue, in the second place


def test_r1v_rows_with_one_image_and_unlabelled_rows(tmp_path):
    rows = [{"image": hf_image(GREEN), "problem": "How many objects?", "solution": "<answer> 3 </answer>"},
            {"image": hf_image(GREEN), "problem": "What is unusual here?", "solution": None}]
    out, folder = tmp_path / "r.jsonl", tmp_path / "img"
    convert(write(tmp_path, rows), str(out), str(folder))
    got = lines(out)
    assert got[0]["solution"] == "<answer> 3 </answer>" and isinstance(got[0]["image"], str)
    assert "solution" not in got[1]  # unlabelled (R1V-Free), not the empty answer ""
    assert [s.solution for s in JsonlDataset(str(out), str(folder))] == ["<answer> 3 </answer>", ""]


def test_trl_chats_give_markers_for_image_parts_a_system_prompt_and_the_assistant_answer(tmp_path):
    row = {"prompt": [{"role": "system", "content": [{"type": "text", "text": "Think, then answer."}]},
                      {"role": "user", "content": [{"type": "text", "text": "Left: "}, {"type": "image"},
                                                   {"type": "text", "text": " right: "}, {"type": "image"},
                                                   {"type": "text", "text": " Which is blue?"}]},
                      {"role": "assistant", "content": [{"type": "text", "text": "right"}]}],
           "images": [hf_image(RED), hf_image(BLUE)]}
    out, folder = tmp_path / "t.jsonl", tmp_path / "img"
    convert(write(tmp_path, [row]), str(out), str(folder))
    (line,) = lines(out)
    assert line["problem"] == "Left: <image> right: <image> Which is blue?"
    assert line["system"] == "Think, then answer." and line["solution"] == "right"
    sample = JsonlDataset(str(out), str(folder))[0]
    assert sample.messages[0] == {"role": "system", "content": "Think, then answer."}
    assert [im.getpixel((0, 0)) for im in sample.images] == [RED, BLUE]


def test_image_paths_without_bytes_are_read_relative_to_the_image_folder(tmp_path):
    folder = tmp_path / "img"
    folder.mkdir()
    Image.new("RGB", (40, 40), RED).save(folder / "a.png")
    for name, image in (("plain", "a.png"), ("hf", {"bytes": None, "path": "a.png"})):  # EasyR1's, datasets'
        src = write(tmp_path, [{"problem": "<image>Colour?", "answer": "red", "images": [image]}], name)
        done = convert(src, str(tmp_path / f"{name}.jsonl"), str(folder))
        assert lines(tmp_path / f"{name}.jsonl")[0]["image"] == "a.png" and done.images_written == 0
    missing = write(tmp_path, [{"problem": "<image>Colour?", "answer": "red", "images": ["gone.png"]}], "m")
    with pytest.raises(ConvertError, match=r"m\.parquet row 0: field 'image': image file .*gone\.png does not exist"):
        convert(missing, str(tmp_path / "m.jsonl"), str(folder))


def test_a_bad_row_is_named_by_its_parquet_row_and_no_file_is_left_half_written(tmp_path):
    rows = [{"problem": "<image>Colour?", "answer": "red", "images": [hf_image(RED)]},
            {"problem": "<image><image>Two markers, one image", "answer": "x", "images": [hf_image(RED)]},
            {"problem": "<image>Broken", "answer": "x", "images": [{"bytes": b"not an image", "path": None}]}]
    src, out = write(tmp_path, rows), tmp_path / "b.jsonl"
    with pytest.raises(ConvertError, match=r"train\.parquet row 1: field 'problem' has 2 <image> marker\(s\) but field "
                                           r"'image' lists 1 image\(s\).*--bad-rows skip"):
        convert(src, str(out), str(tmp_path / "img"))
    assert not out.exists() and not Path(str(out) + ".part").exists()
    done = convert(src, str(out), str(tmp_path / "img"), bad_rows="skip")
    assert done.lines == 1 and [line["id"] for line in lines(out)] == ["train-0"]
    assert [s.split(": ")[0].rsplit("train.parquet ")[-1] for s in done.skipped] == [
        "row 1", "row 2, column 'images', image 1"]
    assert "not an image PIL can read" in done.skipped[1] and "left out 2 bad rows" in done.summary()


@pytest.mark.parametrize("row, message", [
    ({"prompt": [{"role": "user", "content": "Hi <image>"}, {"role": "assistant", "content": "a"},
                 {"role": "user", "content": "And?"}], "images": [hf_image(RED)]}, r"multi-turn dialogue is not read"),
    ({"problem": "<image>Count", "reward_model": {"ground_truth": ["3", "4"]}, "images": [hf_image(RED)]},
     r"column 'reward_model.ground_truth' holds 2 answers"),
    ({"problem": "What happens?", "answer": "x", "videos": ["clip.mp4"]}, r"column 'videos' holds a video"),
    ({"text": "no question column"}, r"no question: the row has none of the columns problem, question, prompt, messages"),
    ({"prompt": [{"role": "user", "content": [{"type": "audio"}]}]}, r"a content part of type 'audio'"),
])
def test_rows_lit_vr1_cannot_read_are_refused_naming_what(tmp_path, row, message):
    with pytest.raises(ConvertError, match=r"train\.parquet row 0.*" + message):
        convert(write(tmp_path, [row]), str(tmp_path / "x.jsonl"), str(tmp_path / "img"))


def test_columns_named_otherwise_are_read_with_the_key_options(tmp_path):
    row = {"query": "<image>Colour?", "meta": {"label": "red"}, "pic": hf_image(RED)}
    src, out = write(tmp_path, [row]), tmp_path / "k.jsonl"
    with pytest.raises(ConvertError, match="name it with --question-key"):
        convert(src, str(out), str(tmp_path / "img"))
    convert(src, str(out), str(tmp_path / "img"), question_key="query", answer_key="meta.label", image_key="pic")
    (line,) = lines(out)
    assert (line["problem"], line["solution"]) == ("<image>Colour?", "red") and line["image"].endswith(".png")


def test_the_command_prints_one_line_errors_and_how_to_train(tmp_path, capsys):
    src = write(tmp_path, [verl_row(0)])
    assert main([src, str(tmp_path / "c.jsonl"), "--images", str(tmp_path / "img")]) == 0
    printed = capsys.readouterr().out
    assert "1 row, 1 image written" in printed and f"--data.train_images {tmp_path / 'img'}" in printed
    assert main([str(tmp_path / "nope.parquet"), str(tmp_path / "c.jsonl"), "--images", "img"]) == 2
    (tmp_path / "fake.parquet").write_text("not parquet")
    assert main([str(tmp_path / "fake.parquet"), str(tmp_path / "c.jsonl"), "--images", "img"]) == 2
    (tmp_path / "torn.parquet").write_bytes(b"PAR1" + b"\x00" * 32)
    assert main([str(tmp_path / "torn.parquet"), str(tmp_path / "c.jsonl"), "--images", "img"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "no such file" in err[0] and "fake.parquet:1: not a Parquet file, nor a line of JSON" in err[1]
    assert "torn.parquet: not a Parquet file pyarrow can read" in err[2]


def test_llama_factory_and_trl_chats_in_json_lines_are_converted(tmp_path):
    """LLaMA-Factory's multimodal layout: a 'messages' chat and an 'images' list of paths."""
    folder = tmp_path / "img"
    folder.mkdir()
    Image.new("RGB", (40, 40), RED).save(folder / "r.png")
    Image.new("RGB", (40, 40), BLUE).save(folder / "b.png")
    rows = [{"messages": [{"role": "system", "content": "Be brief."},
                          {"role": "user", "content": "<image><image>Which one is red?"},
                          {"role": "assistant", "content": "the first"}], "images": ["r.png", "b.png"]},
            {"messages": [{"role": "user", "content": "<image>Colour?"}], "images": ["b.png"]}]
    src = tmp_path / "chats.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.jsonl"
    done = convert(str(src), str(out), str(folder))
    got = lines(out)
    assert done.images_written == 0 and [g["id"] for g in got] == ["chats-1", "chats-2"]
    assert got[0] == {"id": "chats-1", "problem": "<image><image>Which one is red?", "system": "Be brief.",
                      "solution": "the first", "image": ["r.png", "b.png"]}
    assert "solution" not in got[1]
    data = JsonlDataset(str(out), str(folder))
    assert [im.getpixel((0, 0)) for im in data[0].images] == [RED, BLUE] and data[1].solution == ""
    src.write_text(json.dumps(rows[0]) + "\n" + json.dumps({"messages": [{"role": "assistant", "content": "x"}]}) + "\n")
    with pytest.raises(ConvertError, match=r"chats\.jsonl:2, column 'messages': the chat's turns are assistant"):
        convert(str(src), str(out), str(folder))


def test_inputs_and_answers_new_users_bring(tmp_path):
    """A JSON array (LLaMA-Factory's .json), TRL's prompt-completion rows, answers as lists of one
    value, absolute image paths with --images-outside-folder; what is refused and why."""
    folder = tmp_path / "img"
    folder.mkdir()
    Image.new("RGB", (40, 40), RED).save(folder / "r.png")
    rows = [{"messages": [{"role": "user", "content": "<image>Colour?"}, {"role": "assistant", "content": "red"}],
             "images": ["r.png"]}]
    src = tmp_path / "array.json"
    src.write_text(json.dumps(rows, indent=2))
    convert(str(src), str(tmp_path / "a.jsonl"), str(folder))
    assert lines(tmp_path / "a.jsonl")[0]["solution"] == "red"
    trl = write(tmp_path, [{"prompt": [{"role": "user", "content": "<image>Colour?"}],
                            "completion": [{"role": "assistant", "content": "red"}], "image": hf_image(RED)}], "trl")
    convert(trl, str(tmp_path / "t.jsonl"), str(folder))
    assert lines(tmp_path / "t.jsonl")[0]["solution"] == "red"  # it was kept as a column, the row unlabelled
    one = write(tmp_path, [{"problem": "<image>How many?", "answer": [3], "images": [hf_image(RED)]}], "one")
    convert(one, str(tmp_path / "o.jsonl"), str(folder))
    assert lines(tmp_path / "o.jsonl")[0]["solution"] == 3
    four = write(tmp_path, [{"problem": "<image>How many?", "answer": [4, 5, 6, 7], "images": [hf_image(RED)]}], "four")
    with pytest.raises(ConvertError, match=r"column 'answer' holds a list of 4 numbers .*--answer-key answer"):
        convert(four, str(tmp_path / "f.jsonl"), str(folder))  # it trained as a box without a word
    absolute = tmp_path / "abs.jsonl"
    absolute.write_text(json.dumps({"problem": "<image>Colour?", "answer": "red", "images": [str(folder / "r.png")]}))
    with pytest.raises(ConvertError, match=r"outside the image folder .*--images-outside-folder \(and "
                                           r"data.images_outside_folder=true in training\)"):
        convert(str(absolute), str(tmp_path / "x.jsonl"), str(tmp_path / "other"))
    convert(str(absolute), str(tmp_path / "x.jsonl"), str(tmp_path / "other"), images_outside_folder=True)
    assert not (tmp_path / "other").exists()  # nothing to write: no folder made


@pytest.mark.parametrize("case, message", [
    ("same", r"is the file to convert: write the JSON lines to another file"),
    ("folder", r"is a folder \(a datasets.save_to_disk one\?\)"),
    ("latin1", r"latin1\.jsonl:1: not valid UTF-8 \(byte 0xe9 at column 53\); save the file as UTF-8$"),
    ("truncated", r"row 0, column 'images', image 1: its bytes are not an image PIL can read"),
    ("all_bad", r"every row of .* was left out \(1 bad row; the first: "),
])
def test_what_the_converter_refuses(tmp_path, case, message):
    out, src = tmp_path / "out.jsonl", tmp_path / "src.parquet"
    if case == "same":
        src, out = write(tmp_path, [verl_row(0)]), write(tmp_path, [verl_row(0)])
    elif case == "folder":
        src = tmp_path / "saved"
        src.mkdir()
    elif case == "latin1":
        src = tmp_path / "latin1.jsonl"
        src.write_bytes(b'{"messages": [{"role": "user", "content": "<image>Qu\xe9 color?"}], "images": ["a.png"]}\n')
    elif case == "truncated":
        src = write(tmp_path, [{"problem": "<image>?", "answer": "x",
                                "images": [{"bytes": encoded(RED)[:60], "path": None}]}])
    else:
        src = write(tmp_path, [{"problem": "<image><image>?", "answer": "x", "images": [hf_image(RED)]}])
    with pytest.raises(ConvertError, match=message):
        convert(str(src), str(out), str(tmp_path / "img"), bad_rows="skip" if case == "all_bad" else "raise")
    if case == "same":
        assert Path(src).read_bytes()[:4] == b"PAR1"  # the input is left as it was


READ_PEAK = """
import os, sys
from lit_vr1.data.convert import rows
def kib(key):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key))
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # the peak RSS (VmHWM) starts again from the RSS after the import
before = kib("VmRSS:")
n = sum(1 for _ in rows(sys.argv[1]))
print(n, (kib("VmHWM:") - before) * 1024)
"""


def test_a_parquet_file_written_as_one_row_group_is_not_held_in_memory_several_times_over(tmp_path):
    """pandas and datasets write one row group; with pyarrow's defaults (the group's bytes
    buffered, 256 rows decoded at a time) reading it raised the peak RSS by 6.1-7.1x this
    file's size (60 MB of incompressible image bytes; 5.1x for 262 MB of JPEGs), read as it is
    now by 3.1x (2.4x)."""
    import subprocess
    import sys

    import numpy as np

    rng = np.random.default_rng(0)
    blobs = [rng.bytes(300_000) for _ in range(200)]
    path = tmp_path / "one_group.parquet"
    pq.write_table(pa.table({"images": [[{"bytes": b, "path": None}] for b in blobs],
                             "problem": ["<image>How many?"] * len(blobs), "answer": ["3"] * len(blobs)}), path)
    assert pq.ParquetFile(path).metadata.num_row_groups == 1
    out = subprocess.run([sys.executable, "-c", READ_PEAK, str(path)], capture_output=True, text=True, check=True)
    n, grown = map(int, out.stdout.split())
    assert n == len(blobs)
    assert grown < 4.5 * path.stat().st_size, f"reading grew the peak RSS by {grown / path.stat().st_size:.1f}x the file"
