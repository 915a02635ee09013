import json
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image

from lit_vr1.data.datamodule import GroundingDataModule
from lit_vr1.data.jsonl import DataError, JsonlDataset
from lit_vr1.data.prompts import TEMPLATES, build_messages
from lit_vr1.data.synthetic import RGB, SyntheticSpec, write_synthetic
from lit_vr1.rewards.boxes import first_box


def _write(tmp_path, name, lines, images=("a.png", "b.png")):
    folder = tmp_path / f"img_{name}"
    folder.mkdir(exist_ok=True)
    for im in images:
        Image.new("RGB", (40, 30), (255, 0, 0)).save(folder / im)
    path = tmp_path / f"{name}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return str(path), str(folder)


def rec(i, image, human="<image>Where is it?", gpt="[1, 2, 3, 4]"):
    return json.dumps({"id": i, "image": image, "conversations": [{"from": "human", "value": human},
                                                                   {"from": "gpt", "value": gpt}]})


def test_several_files_multi_image_and_relative_paths(tmp_path):
    f1, d1 = _write(tmp_path, "one", [rec(1, "a.png"), rec(2, ["a.png", "b.png"], "<image><image>Compare.")])
    f2, d2 = _write(tmp_path, "two", [rec(3, "b.png")])
    ds = JsonlDataset(f"{f1}:{f2}", f"{d1}:{d2}", "r1")
    assert len(ds) == 3
    s = ds[1]
    assert len(s.images) == 2 and s.image_sizes == [(40, 30), (40, 30)]
    content = s.messages[0]["content"]
    assert [c["type"] for c in content] == ["image", "image", "text"]
    assert content[-1]["text"].startswith("Compare.") and "<think>" in content[-1]["text"]
    assert ds[2].source.endswith("two.jsonl:1") and ds[2].id == "3"


def test_malformed_line_names_file_and_line(tmp_path):
    f, d = _write(tmp_path, "bad", [rec(1, "a.png"), "{not json", rec(3, "a.png")])
    with pytest.raises(DataError, match=r"bad\.jsonl:2: not valid JSON"):
        JsonlDataset(f, d)


def test_missing_field_names_file_and_line(tmp_path):
    f, d = _write(tmp_path, "nofield", [json.dumps({"id": 1, "image": "a.png"})])
    with pytest.raises(DataError, match=r"nofield\.jsonl:1: a line needs 'conversations', or a string 'problem'"):
        JsonlDataset(f, d)


def test_missing_image_names_path_and_line(tmp_path):
    f, d = _write(tmp_path, "noimg", [rec(1, "a.png"), rec(2, "gone.png")])
    with pytest.raises(DataError, match=r"noimg\.jsonl:2: field 'image': image file .*gone\.png does not exist"):
        JsonlDataset(f, d)


@pytest.mark.parametrize("image, said", [
    ("https://example.com/cat.png", r"field 'image' is a URL \(https://example.com/cat.png\); lit-vr1 reads image "
                                    r"files and downloads nothing"),
    ("", r"field 'image' holds an empty path"),
    ("sub", r"field 'image': .*sub is a folder, not an image file"),
])
def test_urls_empty_paths_and_folders_are_named_as_such(tmp_path, image, said):
    """All three read "image file ... does not exist", which sent a converter's user looking for a file."""
    f, d = _write(tmp_path, "odd", [rec(1, "a.png"), rec(2, image)])
    (tmp_path / "img_odd" / "sub").mkdir()
    with pytest.raises(DataError, match=r"odd\.jsonl:2: " + said):
        JsonlDataset(f, d)


def test_null_image_and_null_solution_read_as_absent(tmp_path):
    """Converters write null for "no image" and "no label": a text-only row and an unlabelled one
    (refused before as not a path, not a string)."""
    rows = [json.dumps({"id": 1, "image": None, "problem": "What is 2 + 2?", "solution": "4"}),
            json.dumps({"id": 2, "image": "a.png", "problem": "<image>What colour?", "solution": None})]
    f, d = _write(tmp_path, "nulls", rows)
    ds = JsonlDataset(f, d)
    assert ds[0].images == [] and ds[0].solution == "4"
    assert len(ds[1].images) == 1 and not ds[1].solution
    f, d = _write(tmp_path, "marked", [json.dumps({"id": 1, "image": None, "problem": "<image>What colour?"})])
    with pytest.raises(DataError, match=r"has 1 <image> marker\(s\) but field 'image' lists 0 image\(s\)"):
        JsonlDataset(f, d)


def test_unequal_lists_name_both_counts(tmp_path):
    f, d = _write(tmp_path, "x", [rec(1, "a.png")])
    with pytest.raises(DataError, match="data_files lists 1 file.* but image_folders lists 2 folder"):
        JsonlDataset(f, f"{d}:{d}")
    assert len(JsonlDataset(f"{f}:{f}", d)) == 2  # one folder: every file's


def test_the_data_module_names_its_flags_in_count_errors(tmp_path):
    f, d = _write(tmp_path, "x", [rec(1, "a.png")])
    dm = GroundingDataModule(train_files=f, train_images=d, val_files=f"{f}:{f}:{f}", val_images=f"{d}:{d}")
    with pytest.raises(DataError, match="data.val_files lists 3 file.* but data.val_images lists 2 folder"):
        dm.setup("fit")
    dm = GroundingDataModule(train_files=f"{f}:{f}", train_images=f"{d}:{d}", reward_methods="rec:od:math")
    with pytest.raises(DataError, match="data.reward_methods lists 3 method.* but data.train_files lists 2 file"):
        dm.setup("fit")
    dm = GroundingDataModule(train_files=f, train_images=d, val_files=str(tmp_path / "nothere.jsonl"), val_images=d)
    with pytest.raises(DataError, match=r"nothere\.jsonl does not exist; check data\.val_files: "):
        dm.setup("fit")
    dm = GroundingDataModule(train_files=f, train_images=str(tmp_path / "img"), val_files=f, val_images=d)
    with pytest.raises(DataError, match=r"image folder .*img does not exist; check data\.train_images: "):
        dm.setup("fit")


def test_too_many_image_markers(tmp_path):
    f, d = _write(tmp_path, "markers", [rec(1, "a.png", "<image><image>Two?")])
    message = r"markers\.jsonl:1: field 'conversations' \(human turn\) has 2 <image> marker\(s\) but field 'image' lists 1"
    with pytest.raises(DataError, match=message):
        JsonlDataset(f, d)


def test_templates_and_unknown_template():
    assert set(TEMPLATES) >= {"plain", "r1", "qwen_rec", "r1_rec"}
    msgs = build_messages("<image>Find the dog.", 1, "qwen_rec")
    assert "bbox_2d" in msgs[0]["content"][-1]["text"]
    with pytest.raises(ValueError, match="plain, r1, qwen_rec, r1_rec"):
        build_messages("x", 0, "fancy")


def test_synthetic_boxes_match_drawn_pixels(tmp_path):
    path = write_synthetic(tmp_path, SyntheticSpec(num_samples=12, canvas=112, seed=3), "train")
    ds = JsonlDataset(str(path), str(tmp_path / "images"), "qwen_rec")
    for i in range(len(ds)):
        s = ds[i]
        x1, y1, x2, y2 = (int(v) for v in first_box(s.solution))
        colour = json.loads(s.solution)[0]["label"].split()[0]
        arr = np.asarray(s.images[0]).astype(int)
        hit = (np.abs(arr - np.array(RGB[colour])).sum(-1) < 10)
        ys, xs = np.nonzero(hit[y1:y2, x1:x2])
        assert ys.size > 0
        # the target's pixels reach the edges of its box (a tight box)
        assert xs.min() <= 1 and ys.min() <= 1 and xs.max() >= x2 - x1 - 2 and ys.max() >= y2 - y1 - 2
        assert s.question.count("<image>") == 1 and "JSON" in s.question


def test_datamodule_writes_and_reads_synthetic(tmp_path):
    dm = GroundingDataModule(synthetic=SyntheticSpec(num_samples=6), synthetic_dir=str(tmp_path / "syn"),
                             num_val_samples=3, batch_size=2, val_batch_size=3)
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.train_set) == 6 and len(dm.val_set) == 3
    batch = next(iter(dm.train_dataloader()))
    assert len(batch) == 2 and batch[0].images[0].size == (112, 112)
    assert len(next(iter(dm.val_dataloader()))) == 3  # greedy validation takes its own batch size
    with pytest.raises(ValueError, match="data.train_images"):
        GroundingDataModule(train_files="a.jsonl")


def test_training_order_ignores_validation_and_global_rng(tmp_path):
    """Validating more or less often must not change what the training sees next."""
    dm = GroundingDataModule(synthetic=SyntheticSpec(num_samples=12, canvas=56, min_size=14, max_size=28),
                             synthetic_dir=str(tmp_path / "syn"), num_val_samples=2, batch_size=3, shuffle_seed=7)
    dm.setup("fit")

    def order(loader) -> list[str]:
        return [s.id for epoch in range(2) for batch in loader for s in batch]

    first = order(dm.train_dataloader())
    torch.manual_seed(123)
    torch.rand(5)
    next(iter(dm.val_dataloader()))  # an iterator draws a seed: from its own generator, not the global one
    state = torch.get_rng_state()
    second = order(dm.train_dataloader())
    assert first == second and torch.equal(state, torch.get_rng_state())
    assert first[:12] != first[12:]  # each epoch is shuffled anew
    dm.shuffle_seed = 8
    assert order(dm.train_dataloader()) != first


def vr1(i, image="a.png", solution=(("cat", [1, 2, 10, 12]),), **extra):
    return json.dumps({"id": i, "image": image, "problem": "<image>Find every cat.", "solution": [list(p) for p in solution],
                       "width": 40, "height": 30, "num_instances": len(solution), **extra})


def test_vision_r1_detection_and_label_free_layouts(tmp_path):
    from lit_vr1.data.jsonl import solution_text

    f, d = _write(tmp_path, "vr1", [vr1(1), json.dumps({"id": 2, "image": "b.png", "problem": "<image>What is this?"})])
    ds = JsonlDataset(f, d, "plain")
    det, free = ds[0], ds[1]
    assert det.solution == [["cat", [1, 2, 10, 12]]] and det.metadata == {"width": 40, "height": 30, "num_instances": 1}
    assert json.loads(solution_text(det.solution)) == [{"bbox_2d": [1, 2, 10, 12], "label": "cat"}]
    assert free.solution == "" and free.messages[0]["content"][-1]["text"] == "What is this?"


@pytest.mark.parametrize(
    "line, message",
    [
        (vr1(1, solution=(("cat", [1, 2, 3]),)),
         r"vr1\.jsonl:1: field 'solution' item 1 must be \[category, \[x1, y1, x2, y2\]\]"),
        (json.dumps({"image": "a.png", "problem": "q", "solution": [["cat", [1, 2, 3, 4]]], "num_instances": 2}),
         r"vr1\.jsonl:1: field 'num_instances' is 2 but 'solution' lists 1"),
        (json.dumps({"image": "a.png", "problem": "q", "reward_method": ""}), r"vr1\.jsonl:1: field 'reward_method'"),
    ],
)
def test_vision_r1_bad_lines_name_file_line_and_field(tmp_path, line, message):
    f, d = _write(tmp_path, "vr1", [line])
    with pytest.raises(DataError, match=message):
        JsonlDataset(f, d)


def test_declared_size_must_match_the_image(tmp_path):
    line = json.dumps({"image": "a.png", "problem": "q", "solution": [], "width": 640, "height": 480})
    f, d = _write(tmp_path, "size", [line])
    with pytest.raises(DataError, match=r"size\.jsonl:1: fields 'width', 'height' say 640x480 but image .*a\.png is 40x30"):
        JsonlDataset(f, d)[0]


def test_reward_methods_route_per_file_and_a_line_overrides(tmp_path):
    f1, d1 = _write(tmp_path, "rec", [rec(1, "a.png"), json.dumps({**json.loads(rec(2, "a.png")), "reward_method": "math"})])
    f2, d2 = _write(tmp_path, "det", [vr1(3)])
    ds = JsonlDataset(f"{f1}:{f2}", f"{d1}:{d2}", reward_methods="rec:od")
    assert [r.task for r in ds.records] == ["rec", "math", "od"]
    assert ds[1].task == "math"
    assert [r.task for r in JsonlDataset(f"{f1}:{f2}", f"{d1}:{d2}", reward_methods="rec").records] == ["rec", "math", "rec"]
    assert [r.task for r in JsonlDataset(f1, d1).records] == ["default", "math"]
    with pytest.raises(DataError, match="reward_methods lists 3 method.* but data_files lists 2 file"):
        JsonlDataset(f"{f1}:{f2}", f"{d1}:{d2}", reward_methods="a:b:c")


def test_held_out_files_replace_the_synthetic_split_when_training_on_synthetic_data(tmp_path):
    """A new user's validate --data.val_files=mine.jsonl over the quickstart config scored the 200
    synthetic held-out images and said nothing: val_files were read only beside train_files."""
    from lit_vr1.data.datamodule import GroundingDataModule
    from lit_vr1.data.synthetic import SyntheticSpec, write_synthetic

    mine = tmp_path / "mine"
    write_synthetic(str(mine), SyntheticSpec(num_samples=3, canvas=56, max_shapes=1, seed=5), "val")
    data = GroundingDataModule(synthetic=SyntheticSpec(num_samples=4, canvas=56, max_shapes=1),
                               synthetic_dir=str(tmp_path / "synthetic"), num_val_samples=200,
                               val_files=str(mine / "val.jsonl"), val_images=str(mine / "images"))
    data.setup("validate")
    assert len(data.val_set) == 3 and data.val_set.records[0].source.startswith(str(mine / "val.jsonl"))
    assert not (tmp_path / "synthetic" / "val.jsonl").exists()  # the unused split is not drawn


def test_held_out_files_alone_make_a_data_module_for_evaluation(tmp_path):
    """Evaluation-only data needed training data too (set data.train_files ... or data.synthetic),
    and validate refused its held-out files for a bad training row it never reads."""
    from lit_vr1.rules import ConfigError

    f, d = _write(tmp_path, "val", [rec(1, "a.png"), rec(2, "b.png")])
    dm = GroundingDataModule(val_files=f, val_images=d)
    with pytest.raises(ValueError, match=r"call data\.setup\('validate'\) first"):
        dm.held_out()
    dm.setup("validate")
    assert len(dm.val_set) == 2 and dm.train_set is None
    with pytest.raises(ConfigError, match="lit-vr1 fit needs training data: set data.train_files"):
        GroundingDataModule(val_files=f, val_images=d).setup("fit")
    bad, bad_images = _write(tmp_path, "train", [rec(1, "a.png"), rec(2, "gone.png")])
    dm = GroundingDataModule(train_files=bad, train_images=bad_images, val_files=f, val_images=d)
    dm.setup("test")  # the training file is not read
    assert len(dm.val_set) == 2 and dm.train_set is None
    with pytest.raises(DataError, match="gone.png does not exist"):
        dm.setup("fit")


def test_validate_of_held_out_files_draws_no_synthetic_training_data(tmp_path):
    """A config that trains on synthetic data, validated on the user's files, drew the 2000
    training images that validate never reads."""
    from lightning.pytorch import Trainer

    from lit_vr1.sft import SFTModule

    f, d = _write(tmp_path, "val", [rec(1, "a.png"), rec(2, "b.png")])
    dm = GroundingDataModule(synthetic=SyntheticSpec(num_samples=8, canvas=56), synthetic_dir=str(tmp_path / "syn"),
                             val_files=f, val_images=d, val_batch_size=2)
    module = SFTModule(model="tiny:qwen2_5_vl", min_pixels=3136, max_pixels=3136, eval_max_new_tokens=4)
    Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False).validate(module, dm)
    assert not (tmp_path / "syn").exists() and len(dm.val_set) == 2


def test_a_system_prompt_reaches_the_chat_and_multi_turn_rows_are_refused(tmp_path):
    """TRL recipes give a system prompt: a {'from': 'system'} turn first, or the 'problem' layout's
    'system' field, is the prompt's system turn (before, it was dropped without a word, and so was
    every turn after the first answer of a dialogue, which is now refused)."""
    from lit_vr1.models.loading import load_processor

    system = "A conversation between User and Assistant. Think first."
    rows = [json.dumps({"id": 1, "image": "a.png", "conversations": [
                {"from": "system", "value": system}, {"from": "human", "value": "<image>Where?"},
                {"from": "gpt", "value": "[1, 2, 3, 4]"}]}),
            json.dumps({"id": 2, "image": "a.png", "problem": "<image>What colour?", "solution": "red",
                        "system": system}),
            rec(3, "a.png")]
    f, d = _write(tmp_path, "sys", rows)
    ds = JsonlDataset(f, d)
    processor = load_processor("tiny:qwen2_5_vl")
    for i in (0, 1):
        assert ds[i].messages[0] == {"role": "system", "content": system} and ds[i].messages[-1]["role"] == "user"
        text = processor.apply_chat_template(ds[i].messages, add_generation_prompt=True, tokenize=False)
        assert text.startswith(f"<|im_start|>system\n{system}<|im_end|>") and "helpful assistant" not in text
        assert "system" not in ds[i].metadata
    assert [m["role"] for m in ds[2].messages] == ["user"]  # no system turn: the chat template's own default
    turns = [("human", "q1"), ("gpt", "a1"), ("human", "q2"), ("gpt", "a2")]
    bad = [
        ([{"from": f, "value": v} for f, v in turns], r"holds the turns human, gpt, human, gpt; .*multi-turn dialogue"),
        ([{"from": "gpt", "value": "a"}, {"from": "human", "value": "<image>q"}], r"holds the turns gpt, human"),
        ([{"from": "user", "value": "<image>q"}], r"holds a turn from 'user'"),
        ([{"from": "system", "value": " "}, {"from": "human", "value": "<image>q"}], r"holds an empty \{'from': 'system'\} turn"),
    ]
    for conv, said in bad:
        f, d = _write(tmp_path, "multi", [json.dumps({"id": 1, "image": "a.png", "conversations": conv})])
        with pytest.raises(DataError, match=r"multi\.jsonl:1: .conversations. " + said):
            JsonlDataset(f, d)
    # LLaMA-Factory's ShareGPT layout gives it beside 'conversations'; "" or null is no system prompt
    rows = [json.dumps({"id": 1, "image": "a.png", "system": system, "conversations": [
                {"from": "human", "value": "<image>q"}]}),
            json.dumps({"id": 2, "image": "a.png", "system": "", "problem": "<image>q", "solution": "red"}),
            json.dumps({"id": 3, "image": "a.png", "system": None, "conversations": [{"from": "human", "value": "q"}]})]
    f, d = _write(tmp_path, "sharegpt", rows)
    ds = JsonlDataset(f, d)
    assert ds[0].messages[0] == {"role": "system", "content": system}
    assert [m["role"] for m in ds[1].messages] == ["user"] == [m["role"] for m in ds[2].messages]
    f, d = _write(tmp_path, "both", [json.dumps({"id": 1, "image": "a.png", "system": system, "conversations": [
        {"from": "system", "value": system}, {"from": "human", "value": "<image>q"}]})])
    with pytest.raises(DataError, match=r"a system prompt in field 'system' and in a \{'from': 'system'\} turn"):
        JsonlDataset(f, d)


def test_a_box_template_on_questions_answered_without_boxes_is_warned_of(tmp_path):
    # qwen_rec, the default, appended "Answer with a JSON list such as [{"bbox_2d": ...}]" to a colour
    # question without a word
    rows = [json.dumps({"id": i, "image": "a.png", "problem": "<image>What colour?", "solution": "red"})
            for i in range(3)] + [rec(9, "a.png")]
    f, d = _write(tmp_path, "vqa", rows)
    data = GroundingDataModule(train_files=f, train_images=d, batch_size=2)  # template: qwen_rec
    with pytest.warns(UserWarning, match=r"data.template='qwen_rec' appends the box instruction .* 3 of the 4 "
                                         r"labelled rows of data.train_files are answered without boxes"):
        data.setup("fit")
    import warnings

    for template, lines in (("plain", rows), ("qwen_rec", [rec(i, "a.png") for i in range(3)])):
        f, d = _write(tmp_path, f"ok_{template}", lines)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            GroundingDataModule(train_files=f, train_images=d, batch_size=2, template=template).setup("fit")


def test_detection_rows_a_coco_user_writes(tmp_path):
    """helper-49's COCO conversion: an annotation pasted as it is, a zero-area box whose COCO
    reading leaves the image (the hint offered it anyway), and a repeated id. (An empty category
    stays a class-agnostic box: tests/test_converted_data.py.)"""
    cases = [
        ([{"bbox": [5, 6, 10, 10], "category_id": 1}], r"a COCO annotation: its bbox is \[x, y, width, height\]; "
                                                       r"write \[<category name>, \[5, 6, x \+ width, y \+ height\]\]"),
        ([["cat", [30, 10, 30, 20]]], r"has no area: .* pixels of the original image$"),  # 30+30 > 40: no hint
        ([["cat", [10, 5, 10, 20]]], r"has no area: .*write \[10, 5, 20, 25\]"),  # a box of the 40x30 image
    ]
    for solution, said in cases:
        f, d = _write(tmp_path, "coco", [json.dumps({"id": 1, "image": "a.png", "problem": "<image>Find cats.",
                                                     "solution": solution})])
        with pytest.raises(DataError, match=said):
            JsonlDataset(f, d)
    rows = [json.dumps({"id": i, "image": "a.png", "problem": "<image>Find cats.", "solution": [["cat", [1, 2, 9, 9]]]})
            for i in (1, 2, 1)]
    f, d = _write(tmp_path, "dup", rows)
    with pytest.warns(UserWarning, match=r"1 id\(s\) are written on several lines \(id 1 at .*dup\.jsonl:1, "
                                         r".*dup\.jsonl:3\).*; 1 of them repeat the whole row \(image, question and "
                                         r"answer\), which then trains as many times as it is written"):
        JsonlDataset(f, d)
    rows[2] = rows[2].replace("[1, 2, 9, 9]", "[3, 4, 9, 9]")  # the same id, another answer: no copy
    f, d = _write(tmp_path, "dup2", rows)
    with pytest.warns(UserWarning) as caught:
        JsonlDataset(f, d)
    assert [str(w.message) for w in caught if "several lines" in str(w.message) and "whole row" not in str(w.message)]


def test_a_gpt_turn_whose_value_is_a_number_says_so(tmp_path):
    """A count written as a number ({"from": "gpt", "value": 3}) got the generic 'string values' message."""
    line = json.dumps({"image": "a.png", "conversations": [{"from": "human", "value": "<image>How many?"},
                                                           {"from": "gpt", "value": 3}]})
    f, d = _write(tmp_path, "num", [line])
    with pytest.raises(DataError, match=r"num\.jsonl:1: the \{'from': 'gpt'\} turn's value is int 3 \(a number: write "
                                        r"it as the string \"3\""):
        JsonlDataset(f, d)


def test_paths_as_users_write_them_home_folder_unicode_forms_and_relative_ones(tmp_path, monkeypatch):
    """An image named with a decomposed accent (NFD, as macOS tools write it) in the data and a
    composed one on disk was "missing" under a name that looked like the file's; ``~`` was a folder
    named ``~``; a relative path's message did not say where it was read from (helper-81)."""
    import unicodedata

    composed = unicodedata.normalize("NFC", "café 图.png")
    f, d = _write(tmp_path, "x", [rec(1, unicodedata.normalize("NFD", "café 图.png"))], images=(composed,))
    ds = JsonlDataset(f, d, "r1")
    assert ds[0].image_paths[0].endswith(composed) and ds[0].images[0].size == (40, 30)
    outside = tmp_path / "outside.png"  # the other form of a name is checked as the name is: inside the folder
    Image.new("RGB", (40, 30)).save(outside)
    os.symlink(outside, os.path.join(d, unicodedata.normalize("NFC", "é.png")))
    g, _ = _write(tmp_path, "y", [rec(1, unicodedata.normalize("NFD", "é.png"))], images=())
    with pytest.raises(DataError, match="outside the image folder"):
        JsonlDataset(g, d, "r1")
    monkeypatch.setenv("HOME", str(tmp_path))
    ds = JsonlDataset("~/x.jsonl", "~/img_x", "r1")
    assert len(ds) == 1
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"data file gone\.jsonl does not exist \(a relative path is read from the "
                                        rf"folder you run in: {re.escape(str(tmp_path))}\)"):
        JsonlDataset("gone.jsonl", d, "r1")
