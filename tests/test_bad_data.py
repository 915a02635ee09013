"""Bad input data: every kind gives a message naming the file, the line and the field, or,
with ``bad_rows="skip"``, is left out, counted and reported at the end of the epoch."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from PIL import Image

from lit_vr1.data.datamodule import GroundingDataModule, SkippedRowsReport
from lit_vr1.data.jsonl import DataError, JsonlDataset, prompt_length, upscaled_size


def images(folder):
    """a.png 40x30 (good), small.png 10x14, garbage.png (not an image), truncated.png (a
    valid header, half the pixel data), wide.png 300x1 (aspect ratio 300)."""
    folder.mkdir(exist_ok=True)
    Image.new("RGB", (40, 30), (255, 0, 0)).save(folder / "a.png")
    Image.new("RGB", (10, 14), (0, 255, 0)).save(folder / "small.png")
    (folder / "garbage.png").write_bytes(b"this is not an image at all")
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "full.png")
    data = (folder / "full.png").read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    Image.new("RGB", (300, 1)).save(folder / "wide.png")
    return folder


def write(tmp_path, lines, name="data"):
    folder = images(tmp_path / "img")
    path = tmp_path / f"{name}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return str(path), str(folder)


def rec(i, image="a.png", human="<image>Where is the red square?", gpt="[1, 2, 30, 20]"):
    return json.dumps({"id": i, "image": image, "conversations": [{"from": "human", "value": human},
                                                                   {"from": "gpt", "value": gpt}]})


def vr1(i, solution, image="a.png", problem="<image>Find every cat."):
    return json.dumps({"id": i, "image": image, "problem": problem, "solution": solution})


BAD_AT_BUILD = [
    ("{not json", r"data\.jsonl:2: not valid JSON \(Expecting property name enclosed in double quotes at column 2\)"),
    (json.dumps({"id": 9, "image": "a.png"}), r"data\.jsonl:2: a line needs 'conversations', or a string 'problem'"),
    (rec(9, image="gone.png"), r"data\.jsonl:2: field 'image': image file .*gone\.png does not exist; fix the path"),
    (rec(9, image="garbage.png"), r"data\.jsonl:2: field 'image': .*garbage\.png is not an image PIL can read"),
    (rec(9, image="wide.png", gpt=""), r"data\.jsonl:2: field 'image': .*wide\.png is 300x1, an aspect ratio above 200"),
    (rec(9, human="<image>   "), r"data\.jsonl:2: field 'conversations' \(human turn\) is empty"),
    (vr1(9, [], problem=" "), r"data\.jsonl:2: field 'problem' is empty"),
    (rec(9, gpt="[5, 5, 5, 20]"),
     r"data\.jsonl:2: field 'conversations' \(gpt turn\) box 1 \[5\.0, 5\.0, 5\.0, 20\.0\] has no area"),
    (rec(9, gpt='<answer>[{"bbox_2d": [1, 2, 300, 20], "label": "sq"}]</answer>'),
     r"data\.jsonl:2: field 'conversations' \(gpt turn\) box 1 .* lies outside the 40x30 image \(by more than 1 px\)"),
    (vr1(9, [["cat", [1, 2, 10, 12]], ["dog", [10, 10, 5, 20]]]),
     r"data\.jsonl:2: field 'solution' item 2 \[10, 10, 5, 20\] has no area: .*; if it is COCO's \[x, y, width, "
     r"height\], write \[10, 10, 15, 30\]"),
    (vr1(9, [["cat", [0, 0, 41.5, 30]]]), r"data\.jsonl:2: field 'solution' item 1 \[0, 0, 41\.5, 30\] lies outside the 40x30"),
    (vr1(9, [["cat", [-3, 0, 10, 10]]]), r"data\.jsonl:2: field 'solution' item 1 .* lies outside"),
    (rec(9, gpt="[0.44, 0.47, 0.86, 0.89]"),
     r"data\.jsonl:2: field 'conversations' \(gpt turn\) box 1 \[0\.44, 0\.47, 0\.86, 0\.89\] lies within the first "
     r"pixel of the 40x30 image: this looks like 0-1 units; boxes must be in pixels of the original image \(x times 40, "
     r"y times 30\)"),
    (vr1(9, [["cat", [0.1, 0.2, 0.5, 0.9]]]), r"data\.jsonl:2: field 'solution' item 1 .* looks like 0-1 units"),
    (rec(9).replace('"image":', '"images":'),
     r"data\.jsonl:2: field 'images' is not read; the image path goes in field 'image'"),
    (vr1(9, [["cat", [1, 2, 10, 12]]]).replace('"solution":', '"answer":'),
     r"data\.jsonl:2: field 'answer' is not read; the answer goes in field 'solution'"),
    (rec(9, human="Where is the red square <|image_pad|> here?"),
     r"data\.jsonl:2: field 'conversations' \(human turn\) holds <\|image_pad\|>, the model's own token\(s\), which "
     r"the chat template writes itself: write the question as plain text, with an <image> marker"),
    (vr1(9, [["cat", [1, 2, 10, 12]]], problem="<|vision_start|><|image_pad|><|vision_end|>Find every cat."),
     r"data\.jsonl:2: field 'problem' holds <\|vision_start\|>, <\|vision_end\|>, <\|image_pad\|>"),
    (vr1(9, [["cat", [1, 2, 10, 12]]], problem="<image>Find every cat.<|im_end|>\n<|im_start|>assistant\nsure"),
     r"data\.jsonl:2: field 'problem' holds <\|im_start\|>, <\|im_end\|>"),
    (vr1(9, [["cat", [1, 2, 10, 12]]], problem="<img><IMG_CONTEXT></img>Find every cat."),
     r"data\.jsonl:2: field 'problem' holds <IMG_CONTEXT>, the model's own"),
    # an answer holding the model's tokens: a 106-line traceback from the cold start, or an answer never written
    (json.dumps({"id": 9, "image": "a.png", "problem": "<image>Quoi ?", "solution": "<|image_pad|>"}),
     r"data\.jsonl:2: field 'solution' holds <\|image_pad\|>, the model's own token\(s\): no completion can write"),
    (json.dumps({"id": 9, "image": "a.png", "problem": "<image>Quoi ?", "solution": "rouge<|im_end|>bleu"}),
     r"data\.jsonl:2: field 'solution' holds <\|im_end\|>"),
    # Video-R1's rows: read as text-only questions, the video dropped with nothing said, until 2026-12-06
    (json.dumps({"id": 9, "video": "clip.mp4", "problem": "<video>What happens?", "solution": "3"}),
     r"data\.jsonl:2: field 'video' is not read: lit-vr1 trains on images, not videos"),
    (json.dumps({"id": 9, "image": "a.png", "videos": ["a.png", "a.png"], "problem": "<image>Count.", "solution": "3"}),
     r"data\.jsonl:2: field 'videos' is not read: .*give sampled frames as images instead"),
    # image markers spelled otherwise stayed text while the images went first, until 2026-12-06
    (json.dumps({"id": 9, "image": ["a.png", "a.png"], "problem": "<Image> first <IMAGE> second", "solution": "1"}),
     r"data\.jsonl:2: field 'problem' holds <IMAGE>, <Image>, which lit-vr1 does not read as an image marker"),
    (json.dumps({"id": 9, "image": ["a.png", "a.png"], "problem": "Compare <image 1> and <image2>.", "solution": "1"}),
     r"data\.jsonl:2: field 'problem' holds <image 1>, <image2>, .*write <image> \(lower case, no number\)"),
    (json.dumps({"id": 9, "image": "a.png", "problem": "Count.", "system": "Look at <image> first.", "solution": "1"}),
     r"data\.jsonl:2: the system prompt holds <image>; images go in the question only"),
]


@pytest.mark.parametrize("line, message", BAD_AT_BUILD, ids=[
    "malformed_json", "missing_field", "missing_image", "corrupt_image_header", "aspect_ratio", "empty_human_turn",
    "empty_problem", "rec_zero_area", "rec_out_of_image", "vr1_zero_area", "vr1_out_of_image", "vr1_negative",
    "rec_unit_box", "vr1_unit_box", "image_field_misspelled", "solution_field_misspelled", "image_pad_in_question",
    "templated_question", "chat_turns_in_question", "internvl_tokens_in_question", "image_pad_in_solution",
    "end_of_turn_in_solution", "video_row", "videos_beside_image",
    "marker_capitalised", "marker_numbered", "marker_in_system_prompt"])
def test_bad_rows_fail_when_the_data_is_read_naming_file_line_field(tmp_path, line, message):
    f, d = write(tmp_path, [rec(1), line, rec(3)])
    with pytest.raises(DataError, match=message):
        JsonlDataset(f, d)


def test_an_answer_or_svg_that_names_an_image_tag_is_text(tmp_path):
    f, d = write(tmp_path, [rec(1, gpt="<image>"), vr1(2, "[1, 2, 30, 20]", problem='<image>Draw <image href="a"/>?'),
                            vr1(3, "ok", problem="<image>What does <image/> do in SVG?")])
    assert [r.solution for r in JsonlDataset(f, d, check_boxes=False).records] == ["<image>", "[1, 2, 30, 20]", "ok"]


def test_boxes_at_the_edge_and_non_box_answers_are_accepted(tmp_path):
    edge = vr1(2, [["cat", [0, 0, 41, 31]]])  # within the 1 px slack of a 40x30 image
    count = rec(3, gpt="<answer> 3 </answer>")  # not a box: not checked
    f, d = write(tmp_path, [rec(1, gpt="[0, 0, 40, 30]"), edge, count])
    assert len(JsonlDataset(f, d)) == 3
    # an answer that is a list of four numbers but not a box passes with check_boxes=False
    f, d = write(tmp_path, [rec(1, gpt="[9, 3, 1, 2]")], "lists")
    assert len(JsonlDataset(f, d, check_boxes=False)) == 1


def test_corrupt_pixel_data_fails_at_load_time_naming_file_line_and_image(tmp_path):
    f, d = write(tmp_path, [rec(1), rec(2, image="truncated.png", gpt="")])
    ds = JsonlDataset(f, d)  # the header is fine: the row passes the build-time checks
    with pytest.raises(DataError, match=r"data\.jsonl:2: field 'image': .*truncated\.png cannot be decoded"):
        ds[1]


def test_small_images_are_upscaled_and_boxes_stay_in_original_pixels(tmp_path):
    from lit_vr1.generation import encode_prompts, image_layout
    from lit_vr1.models.tiny import build_tiny
    from lit_vr1.rewards.base import SampleContext
    from lit_vr1.rewards.rec import IoUReward

    assert upscaled_size((10, 14)) == (28, 39) and upscaled_size((14, 10)) == (39, 28) and upscaled_size((28, 5)) == (157, 28)
    f, d = write(tmp_path, [rec(1, image="small.png", gpt="[2, 3, 8, 12]")])
    sample = JsonlDataset(f, d, "qwen_rec")[0]
    assert sample.images[0].size == (28, 39)  # short side 28, aspect ratio kept
    assert sample.image_sizes == [(10, 14)]  # the frame of the solution's box
    _, processor = build_tiny("qwen2_5_vl", seed=0)
    enc, _ = encode_prompts(processor, [sample])
    _, input_sizes = image_layout(processor, enc, sample.image_sizes)
    (w_in, h_in) = input_sizes[0]
    assert w_in >= 28 and h_in >= 28
    # a model that answers the true box in its input frame earns IoU 1 against the original-pixel solution
    sx, sy = w_in / 10, h_in / 14
    answer = json.dumps([{"bbox_2d": [2 * sx, 3 * sy, 8 * sx, 12 * sy], "label": "x"}])
    ctx = SampleContext(id="1", prompt="", solution=sample.solution, images=sample.images,
                        image_sizes=sample.image_sizes, input_sizes=input_sizes)
    assert IoUReward(box_frame="input_pixels").score([answer], [ctx]) == pytest.approx([1.0])
    # and the original-pixel answer is right in the original_pixels frame
    assert IoUReward(box_frame="original_pixels").score(["[2, 3, 8, 12]"], [ctx]) == pytest.approx([1.0])


@pytest.mark.parametrize("family", ["qwen2_5_vl", "internvl"])
def test_prompt_length_counts_image_tokens_as_the_processor_does(tmp_path, family):
    from lit_vr1.generation import encode_prompts
    from lit_vr1.models.tiny import build_tiny

    f, d = write(tmp_path, [rec(1), rec(2, image="small.png", gpt="[1, 1, 5, 5]"),
                         rec(3, image=["a.png", "a.png"], human="<image><image>Which is red?"),
                         rec(4, image=["a.png", "small.png"], human="Is <image> redder than <image>?"),
                         rec(5, image=["a.png", "a.png"], human="Two images, no markers")])
    ds = JsonlDataset(f, d, "qwen_rec")
    _, processor = build_tiny(family, seed=0)
    for i, r in enumerate(ds.records):
        enc, _ = encode_prompts(processor, [ds[i]])
        assert prompt_length(processor, r, ds.template) == enc["input_ids"].shape[1]


def test_internvl_placeholder_counts_its_tiles_whatever_num_image_tokens_says():
    """<img>, image_seq_length context tokens per tile, </img>: from the tile count, since
    transformers 5.24's num_image_tokens counted <img>/</img> and 5.25's does not."""
    from types import SimpleNamespace

    from lit_vr1.models.families import INTERNVL, QWEN2_5_VL

    processor = SimpleNamespace(image_seq_length=16)
    for num_image_tokens in ([50, 18], [48, 16]):  # 5.24's count, 5.25's count
        counted = SimpleNamespace(num_image_tokens=num_image_tokens, num_image_patches=[3, 1])
        assert INTERNVL.images.placeholder_tokens(processor, counted) == [50, 18]
    assert QWEN2_5_VL.images.placeholder_tokens(processor, SimpleNamespace(num_image_tokens=[4, 9])) == [4, 9]


def test_prompts_over_max_prompt_length_are_refused_or_skipped_never_truncated(tmp_path):
    from lit_vr1.models.tiny import build_tiny

    _, processor = build_tiny("qwen2_5_vl", seed=0)
    f, d = write(tmp_path, [rec(1), rec(2, image=["a.png", "a.png"], human="<image><image>Compare them.", gpt="")])
    ds = JsonlDataset(f, d, "qwen_rec")
    one, two = (prompt_length(processor, r, "qwen_rec") for r in ds.records)
    assert two > one
    with pytest.raises(DataError, match=rf"data\.jsonl:2: the prompt \(field 'image' and the question\) is {two} tokens "
                                        rf"with its image tokens, over data\.max_prompt_length={one}; prompts are never"):
        ds.check_prompt_lengths(processor, one)
    dm = GroundingDataModule(train_files=f, train_images=d, bad_rows="skip", max_prompt_length=one, num_val_samples=0)
    dm.use_processor(processor)
    dm.setup("fit")
    assert [r.id for r in dm.train_set.records] == ["1"]
    assert [r.id for r in dm.skipped_at_build()] == ["2"]
    with pytest.raises(ValueError, match="data.max_prompt_length needs the model's processor"):
        GroundingDataModule(train_files=f, train_images=d, max_prompt_length=10).setup("fit")
    text = tmp_path / "text.jsonl"  # a text-only row: its message names no image (helper-81)
    text.write_text(json.dumps({"id": 7, "problem": "Combien font deux et deux ? " * 20, "solution": "4"}) + "\n")
    with pytest.raises(DataError, match=r"text\.jsonl:1: the prompt \(the question, no image\) is \d+ tokens, over "
                                        r"data\.max_prompt_length=10; prompts are never truncated: raise"):
        JsonlDataset(str(text), d, "qwen_rec").check_prompt_lengths(processor, 10)


def test_bad_rows_option_is_checked():
    with pytest.raises(ValueError, match=r"data\.bad_rows='drop' is not valid; choose raise .* or skip"):
        GroundingDataModule(synthetic=None, train_files="x", train_images="y", bad_rows="drop")
    with pytest.raises(ValueError, match=r"data\.max_prompt_length=0 must be >= 1"):
        GroundingDataModule(train_files="x", train_images="y", max_prompt_length=0)


def test_skip_mode_leaves_bad_rows_out_with_ids_and_reasons(tmp_path):
    lines = [rec(1), "{not json", rec(3, image="gone.png"), rec(4, gpt="[5, 5, 5, 20]"), rec(5, image="truncated.png"),
             rec(6)]
    f, d = write(tmp_path, lines)
    ds = JsonlDataset(f, d, bad_rows="skip")
    assert [r.id for r in ds.records] == ["1", "5", "6"]
    assert [r.id for r in ds.skipped] == [f"{f}:2", "3", "4"]
    assert "not valid JSON" in ds.skipped[0].reason and "gone.png does not exist" in ds.skipped[1].reason
    # row 5 fails when loaded: the next row that loads stands in for it, carrying the failure
    sample = ds[1]
    assert sample.id == "6" and [r.id for r in sample.skipped] == ["5"]
    assert "truncated.png cannot be decoded" in sample.skipped[0].reason
    assert ds[1].skipped[0].id == "5"  # reported again at the next access, without decoding again
    assert ds[0].skipped == [] and ds[2].skipped == []


class _NoOp(LightningModule):
    """A module that trains nothing: enough to run the data path through a Trainer."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[str] = []

    def training_step(self, batch, batch_idx):
        self.seen.extend(s.id for s in batch)
        return (self.w * 0).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_skip_mode_reports_count_ids_and_reasons_at_fit_start_and_each_epochs_end(tmp_path):
    from lit_vr1.models.tiny import build_tiny

    two = rec(7, image=["full.png", "full.png"], human="<image><image>Compare them.", gpt="")  # 70 tokens, the others <= 65
    lines = [rec(1), "{not json", rec(3, gpt="[5, 5, 5, 20]"), rec(4, image="truncated.png"), rec(5), rec(6), two]
    f, d = write(tmp_path, lines)
    dm = GroundingDataModule(train_files=f, train_images=d, batch_size=1, bad_rows="skip", shuffle_seed=0,
                             max_prompt_length=66)
    module = _NoOp()
    _, module.processor = build_tiny("qwen2_5_vl", seed=0)  # the data module counts tokens with the module's processor
    trainer = Trainer(accelerator="cpu", devices=1, max_epochs=2, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(module, dm)
    assert len(module.seen) == 2 * 4  # every batch kept its size: 4 rows loadable or substituted per epoch
    report = next(c for c in trainer.callbacks if isinstance(c, SkippedRowsReport))
    assert [[x.id for x in r["at_build"]] for r in report.reports] == [[f"{f}:2", "3", "7"]] * 2
    assert [[x.id for x in r["at_load"]] for r in report.reports] == [["4"], ["4"]]
    assert trainer.callback_metrics["data/skipped_rows"] == 4.0
    texts = [str(w.message) for w in caught if "data.bad_rows=skip" in str(w.message)]
    # the rows left out when the data was read, as the fit starts (a run stopped before the first
    # epoch's end said nothing of them); the one that failed to load, at epoch 0's end; the same rows
    # left out in epoch 1: warned of and written down once, not every epoch
    assert len(texts) == 2, texts
    assert texts[0].startswith(f"data.bad_rows=skip: the fit's start left out 3 row(s) (3 when the data was read): "
                               f"ids {f}:2, 3, 7")
    assert "epoch 0 left out 1 row(s) not reported before (0 when the data was read, 1 at load time, training " \
           "rows replaced in their batches by other rows)" in texts[1], texts
    assert "ids 4" in texts[1] and "truncated.png cannot be decoded" in texts[1]
    rows = [json.loads(x) for x in (tmp_path / "skipped_rows.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["id"]) for r in rows] == [("the fit's start", f"{f}:2"), ("the fit's start", "3"),
                                                     ("the fit's start", "7"), (0, "4")]


def test_held_out_rows_that_fail_to_load_are_left_out_not_replaced_and_reported(tmp_path):
    """A held-out row whose image failed to load was replaced by the next row that loads, so
    validate scored that row twice (n 14 of 13 loadable rows in a new user's run) and said
    nothing of the rows it left out."""
    from lit_vr1.sft import SFTModule

    lines = [rec(1), rec(2, image="truncated.png"), rec(3), rec(4, image="gone.png"), rec(5, image="truncated.png")]
    f, d = write(tmp_path, lines)
    dm = GroundingDataModule(train_files=f, train_images=d, val_files=f, val_images=d, bad_rows="skip",
                             val_batch_size=2)
    module = SFTModule(model="tiny:qwen2_5_vl", eval_max_new_tokens=2, results_path=str(tmp_path / "eval.json"))
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.validate(module, dm)
    assert json.loads((tmp_path / "eval.json").read_text())[-1]["n"] == 2  # rows 1 and 3, once each
    texts = [str(w.message) for w in caught if "data.bad_rows=skip" in str(w.message)]
    assert len(texts) == 1 and "validate left out 3 row(s) (1 when the data was read, 2 at load time, left out of " \
                               "their batches): ids 4, 2, 5" in texts[0], texts
    train = JsonlDataset(f, d, bad_rows="skip")  # training keeps its batch size: the next row stands in
    assert train[1].id == "3" and [r.id for r in train[1].skipped] == ["2"]


@pytest.mark.parametrize("processes", [1, 2])
def test_predict_leaves_out_rows_that_fail_to_load_and_draws_the_right_boxes(tmp_path, processes):
    """One process leaves a row that fails out of its batch. Under several a row that fails is
    replaced by the next row that loads (every process must run every batch), and that row was
    written twice, once as the stand-in (helper-79): a process told it runs among two replaces
    as they do, and writes each row once, with its own picture."""
    from callbacks import PredictionWriter
    from lit_vr1.sft import SFTModule

    lines = [rec(1), rec(2, image="truncated.png"), rec(3)]
    f, d = write(tmp_path, lines)
    dm = GroundingDataModule(train_files=f, train_images=d, predict_files=f, predict_images=d, bad_rows="skip",
                             val_batch_size=3)
    dm._processes = lambda: processes
    module = SFTModule(model="tiny:qwen2_5_vl", eval_max_new_tokens=2)
    out = tmp_path / "pred"
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=tmp_path,
                      callbacks=[PredictionWriter(output_dir=str(out))])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.predict(module, dm)
    assert dm.predict_set.replace_failed == (processes > 1)
    rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [1, 3]  # as the data wrote them
    assert [r["picture"] for r in rows] == ["images/1.png", "images/3.png"]
    assert sorted(p.name for p in (out / "images").iterdir()) == ["1.png", "3.png"]
    assert any("predict left out 1 row(s)" in str(w.message) and "ids 2" in str(w.message) for w in caught)


def setup_warnings(f, folder, processor, containing: str, **kwargs) -> list[str]:
    """The warnings a data module's fit setup over ``f`` gives that contain ``containing``."""
    dm = GroundingDataModule(train_files=str(f), train_images=str(folder), **kwargs)
    dm.use_processor(processor)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dm.setup("fit")
    return [str(w.message) for w in caught if containing in str(w.message)]


def test_rows_whose_images_dwarf_the_others_are_reported_without_a_prompt_limit(tmp_path):
    """Without data.max_prompt_length nothing was said of a 3000x2000 photo among small images:
    7,623 tokens where the others have 20, in every rollout of it, silently."""
    from PIL import Image

    from lit_vr1.models.loading import load_processor

    folder = tmp_path / "img"
    folder.mkdir()
    Image.new("RGB", (56, 56), (200, 30, 30)).save(folder / "small.png")
    Image.new("RGB", (3000, 2000), (30, 30, 200)).save(folder / "photo.png")
    f = tmp_path / "data.jsonl"
    f.write_text("\n".join([rec(i, image="small.png") for i in range(1, 6)] + [rec(6, image="photo.png")]) + "\n")
    processor = load_processor("tiny:qwen2_5_vl", max_pixels=6_000_000)

    def setup(**kwargs):
        return setup_warnings(f, folder, processor, "image tokens", **kwargs)

    texts = setup()
    assert len(texts) == 1 and "data.train_files: 1 row(s) with images of far more tokens than the median image row" in texts[0]
    assert f"at {f}:6 (3000x2000 px)" in texts[0] and "model.max_pixels caps" in texts[0]
    assert setup(max_prompt_length=100_000) == []  # a limit given: it is the check
    processor = load_processor("tiny:qwen2_5_vl")  # the tiny processor's own cap: no outlier
    assert setup() == []


def test_rows_whose_questions_dwarf_the_others_are_reported_without_a_prompt_limit(tmp_path):
    """A pasted document among one-line questions (1,364-5,222 tokens against about 50 in a new
    user's data) took a validation from 1.34 to 9.13 GB, with nothing said."""
    from PIL import Image

    from lit_vr1.models.loading import load_processor

    folder = tmp_path / "img"
    folder.mkdir()
    Image.new("RGB", (56, 56), (200, 30, 30)).save(folder / "a.png")
    long = "<image>" + "Read this report and say where the red square is. " * 120  # 6,007 characters with its marker
    f = tmp_path / "data.jsonl"
    f.write_text("\n".join([rec(i) for i in range(1, 8)] + [rec(8, human=long)]) + "\n")
    processor = load_processor("tiny:qwen2_5_vl")

    def setup(**kwargs):
        return setup_warnings(f, folder, processor, "questions far longer", **kwargs)

    [text] = setup()
    assert text.startswith("data.train_files: 1 row(s) with questions far longer than the median row's 31 characters: "
                           "the longest, 6007 characters (")
    assert f"text tokens), at {f}:8" in text and "data.max_prompt_length refuses" in text
    assert setup(max_prompt_length=100_000) == []  # a limit given: it is the check
    f.write_text("\n".join([rec(i) for i in range(1, 8)] + [rec(8, human=long[:3000])]) + "\n")
    assert setup() == []  # 3,000 characters: under the 4,000 a warning needs


def test_a_question_naming_html_tags_is_read(tmp_path):
    """InternVL's <img> / <video> are left out of the refused tokens: a question may name the tags."""
    f, d = write(tmp_path, [vr1(1, [["cat", [1, 2, 10, 12]]], problem="<image>What does an <img> or <video> tag show?")])
    assert "<img>" in JsonlDataset(f, d).records[0].question


def test_large_data_files_are_said_as_they_are_read(tmp_path, monkeypatch, caplog):
    """Reading 150,000 rows took 40-100 s before the first step with nothing on the screen."""
    import logging

    from lit_vr1.data import jsonl

    f, d = write(tmp_path, [rec(1), rec(2)])
    monkeypatch.setattr(jsonl, "SAY_READING_BYTES", 1)
    with caplog.at_level(logging.INFO):
        JsonlDataset(f, d)
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("data: ")]
    assert said[0] == f"data: reading {f} (0 MB; each row's image header is checked)"
    assert said[1].startswith("data: 2 rows read in ")
    caplog.clear()
    monkeypatch.setattr(jsonl, "SAY_READING_BYTES", 8 * 1024**2)
    with caplog.at_level(logging.INFO):
        JsonlDataset(f, d)
    assert not [r for r in caplog.records if r.getMessage().startswith("data: ")]  # a small file: nothing


def test_images_over_pils_bomb_limit_are_said_once_naming_the_file(tmp_path, monkeypatch):
    """PIL warns of an image over its decompression-bomb limit at every decode, naming no file, and
    refuses one over twice the limit with its own words: said once here, with the file and line
    (the limit lowered to 1000 pixels: a.png is 40x30, full.png 64x64)."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    f, d = write(tmp_path, [rec(1), rec(2)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = JsonlDataset(f, d)
        data[0], data[1]
    texts = [str(w.message) for w in caught]
    assert not [t for t in texts if "decompression bomb DOS attack" in t]  # PIL's own, at every decode
    (note,) = [t for t in texts if "decompression-bomb limit" in t]
    assert note.startswith("2 image(s) over 0 Mpx") and "a.png at " in note and "data.jsonl:1, 40x30" in note
    f, d = write(tmp_path, [rec(1, image="full.png", gpt="[1, 2, 30, 20]")], "big")
    with pytest.raises(DataError, match=r"big\.jsonl:1: field 'image': .*full\.png is too large for PIL to open \(0 Mpx, "
                                        r"over twice its decompression-bomb limit .*downscale the file"):
        JsonlDataset(f, d)
