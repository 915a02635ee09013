"""Bad rows are listed in one error, not found one run at a time: the data checks, the
prompt-length check and the supervised steps' answer check read every row, then one
DataError names them (a single row: its own message, unchanged; several: a count, the first
10 and "... and N more"). And a REC box given as a flat list of four numbers is read as the
string form "[x1, y1, x2, y2]"."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from helpers import LengthReward
from lightning.pytorch import Trainer
from test_bad_data import rec, vr1, write

from lit_vr1.data.datamodule import GroundingDataModule
from lit_vr1.data.jsonl import DataError, JsonlDataset, kind_of, prompt_length, solution_text
from lit_vr1.sft import SFTModule, check_answers, training_records

HEAD = "bad rows in {} (fix them, or set data.bad_rows=skip to leave them out):"
NOT_JSON = "{}:{}: not valid JSON (Expecting property name enclosed in double quotes at column 2)"


# -- data checks: every row read, one error ------------------------------------------------------
def test_three_bad_rows_are_listed_in_one_error_with_their_file_and_line(tmp_path):
    lines = [rec(1), "{not json", rec(3), rec(4, image="gone.png"), rec(5, gpt="[5, 5, 5, 20]"), rec(6)]
    f, d = write(tmp_path, lines)
    with pytest.raises(DataError) as info:
        JsonlDataset(f, d)
    rows = str(info.value).split("\n  ")
    assert rows[0] == "3 " + HEAD.format(f)
    assert rows[1] == NOT_JSON.format(f, 2)
    assert rows[2].startswith(f"{f}:4: field 'image': image file ") and "gone.png does not exist" in rows[2]
    assert rows[3].startswith(f"{f}:5: field 'conversations' (gpt turn) box 1 [5.0, 5.0, 5.0, 20.0] has no area")
    assert len(rows) == 4


def test_twelve_bad_rows_list_the_first_ten_and_count_the_rest(tmp_path):
    f, d = write(tmp_path, [rec(0)] + ["{not json"] * 12)
    with pytest.raises(DataError) as info:
        JsonlDataset(f, d)
    rows = str(info.value).split("\n  ")
    assert rows[0] == "12 " + HEAD.format(f)
    # every row counted by kind, then the first ten (3,741 rows of 13 kinds showed 10 rows of one kind alone)
    assert rows[1] == "by kind: 12 x not valid JSON (Expecting property name enclosed in double quotes at column N)"
    assert rows[2:12] == [NOT_JSON.format(f, n) for n in range(2, 12)]
    assert rows[12:] == ["... and 2 more"]


def test_rows_of_several_kinds_are_counted_by_kind(tmp_path):
    f, d = write(tmp_path, [rec(0)] + ["{not json"] * 8 + [rec(i, image=f"gone{i}.png") for i in range(20, 24)])
    with pytest.raises(DataError) as info:
        JsonlDataset(f, d)
    kinds = str(info.value).split("\n  ")[1]
    assert kinds == ("by kind: 8 x not valid JSON (Expecting property name enclosed in double quotes at column N); "
                     "4 x field 'image': image file <path> does not exist")


def test_a_kind_cut_before_its_advice_ends_in_no_colon():
    # a message whose advice follows a colon, as "...: ; see ..." would, counted as "x:" before
    assert kind_of("d.jsonl:4: field 'image' could not be read: ; check the file", "d.jsonl:4") == (
        "field 'image' could not be read")


def test_a_quoted_solution_is_one_value_not_a_path():
    """A think/answer solution's '</think>' read as a path: 'solution '<think> N plus N. <path> ...' (a trial)."""
    assert kind_of("d.jsonl:4: solution '<think> 3 plus 4. </think> <answer> 7 </answer>' holds no box",
                   "d.jsonl:4") == "solution <value> holds no box"
    assert kind_of("d.jsonl:5: field 'solution' missing or empty", "d.jsonl:5") == "field 'solution' missing or empty"


def test_a_file_mostly_left_out_under_skip_is_refused(tmp_path):
    """Image folders given in another order than their files: skip left out 1,289 of 1,530 rows of a
    new user's data and trained the rest on the other folder's images of the same names, silently."""
    from PIL import Image

    one, two = tmp_path / "img_one", tmp_path / "img_two"
    for folder, names in ((one, ["a.png", "b.png"]), (two, ["c.png"])):
        folder.mkdir()
        for name in names:
            Image.new("RGB", (64, 64)).save(folder / name)
    f1, f2 = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    f1.write_text("\n".join(rec(i, image="ab"[i % 2] + ".png") for i in range(12)) + "\n")
    f2.write_text("\n".join(rec(i, image="c.png") for i in range(12, 24)) + "\n")
    JsonlDataset(f"{f1}:{f2}", f"{one}:{two}", bad_rows="skip")  # in order: nothing to say
    with pytest.raises(DataError) as info:
        JsonlDataset(f"{f1}:{f2}", f"{two}:{one}", bad_rows="skip")
    text = str(info.value)
    assert text.startswith(f"{f1}: 12 of its 12 rows are bad (100%; most often: field 'image': image file <path> does "
                           "not exist). data.bad_rows=skip leaves out a few bad rows, not most of a file: is each image "
                           "folder of data.train_images (or val_images) given in the order of its data file?")
    # a few bad rows are what skip is for
    f1.write_text("\n".join([rec(i, image="a.png") for i in range(12)] + [rec(99, image="gone.png")]) + "\n")
    assert len(JsonlDataset(f"{f1}:{f2}", f"{one}:{two}", bad_rows="skip").skipped) == 1


def test_a_single_bad_row_keeps_its_own_message(tmp_path):
    f, d = write(tmp_path, [rec(1), "{not json", rec(3)])
    with pytest.raises(DataError) as info:
        JsonlDataset(f, d)
    assert str(info.value) == NOT_JSON.format(f, 2)


def test_bad_rows_of_several_files_name_every_file(tmp_path):
    f1, d = write(tmp_path, [rec(1), "{not json"], "one")
    f2, _ = write(tmp_path, ["{not json", rec(2, image="gone.png")], "two")
    with pytest.raises(DataError) as info:
        JsonlDataset(f"{f1}:{f2}", f"{d}:{d}")
    rows = str(info.value).split("\n  ")
    assert rows[0] == f"3 bad rows in {f1}, {f2} (fix them, or set data.bad_rows=skip to leave them out):"
    assert [r.split(": ", 1)[0] for r in rows[1:]] == [f"{f1}:2", f"{f2}:1", f"{f2}:2"]


def test_a_missing_file_or_folder_is_named_before_any_row_is_read(tmp_path):
    f, d = write(tmp_path, [rec(1), "{not json", "{not json"])
    with pytest.raises(DataError, match=r"^data file .*gone\.jsonl does not exist; check "):
        JsonlDataset(f"{f}:{tmp_path / 'gone.jsonl'}", f"{d}:{d}")
    with pytest.raises(DataError, match=r"^image folder .*nowhere does not exist; check "):
        JsonlDataset(f"{f}:{f}", f"{d}:{tmp_path / 'nowhere'}")
    g, _ = write(tmp_path, [], "empty")
    with pytest.raises(DataError, match=r"^no samples found in .*empty\.jsonl$"):
        JsonlDataset(g, d)


def test_skip_mode_still_leaves_every_bad_row_out(tmp_path):
    lines = [rec(1), "{not json", rec(3), rec(4, image="gone.png"), rec(5, gpt="[5, 5, 5, 20]"), rec(6)]
    f, d = write(tmp_path, lines)
    ds = JsonlDataset(f, d, bad_rows="skip")
    assert [r.id for r in ds.records] == ["1", "3", "6"]
    assert [r.id for r in ds.skipped] == [f"{f}:2", "4", "5"]
    assert ds.skipped[0].reason == NOT_JSON.format(f, 2) and "gone.png does not exist" in ds.skipped[1].reason


def test_the_command_line_prints_the_listed_rows_as_one_error(tmp_path, monkeypatch, capsys):
    import lit_vr1.cli as cli_module

    f, d = write(tmp_path, [rec(1), "{not json", rec(3, image="gone.png")])
    monkeypatch.setattr(cli_module, "LitVR1CLI", lambda *args, **kwargs: JsonlDataset(f, d))
    with pytest.raises(SystemExit) as done:
        cli_module.main(["fit", "--config", "configs/quickstart.yaml"])
    err = capsys.readouterr().err
    assert done.value.code == 2 and "Traceback" not in err
    assert err.startswith(f"lit-vr1: error: 2 {HEAD.format(f)}\n  {NOT_JSON.format(f, 2)}\n  {f}:3: field 'image'")


def test_prompts_over_max_prompt_length_are_listed_in_one_error(tmp_path, tiny_qwen25):
    _, processor = tiny_qwen25
    two = dict(image=["a.png", "a.png"], human="<image><image>Compare them.", gpt="")
    f, d = write(tmp_path, [rec(1), rec(2, **two), rec(3), rec(4, **two)])
    ds = JsonlDataset(f, d, "qwen_rec")
    one, long = (prompt_length(processor, r, "qwen_rec") for r in ds.records[:2])
    with pytest.raises(DataError) as info:
        ds.check_prompt_lengths(processor, one)
    rows = str(info.value).split("\n  ")
    assert rows[0] == (f"2 rows over data.max_prompt_length={one} in {f} (shorten them, raise max_prompt_length, "
                       "lower model.max_pixels, or set data.bad_rows=skip to leave them out):")
    assert [r.split(": ", 1)[0] for r in rows[1:]] == [f"{f}:2", f"{f}:4"]
    assert rows[1].startswith(f"{f}:2: the prompt (field 'image' and the question) is {long} tokens")
    dropped = JsonlDataset(f, d, "qwen_rec", bad_rows="skip").check_prompt_lengths(processor, one)
    assert [r.id for r in dropped] == ["2", "4"]


# -- a REC box as a flat list of four numbers ---------------------------------------------------
def _context(sample):
    from lit_vr1.rewards.base import SampleContext

    return SampleContext(id=sample.id, prompt="", solution=sample.solution, images=sample.images,
                         image_sizes=sample.image_sizes, input_sizes=sample.image_sizes)


def test_a_flat_box_solution_is_read_and_scored_as_the_string_form(tmp_path):
    from lit_vr1.rewards.rec import IoUReward

    f, d = write(tmp_path, [vr1(1, [10, 5, 30, 25]), vr1(2, "[10, 5, 30, 25]"), vr1(3, [1.5, 2.25, 30, 25.75])])
    ds = JsonlDataset(f, d, "qwen_rec")
    flat, string, floats = ds.records
    assert flat.solution == string.solution == "[10, 5, 30, 25]" and floats.solution == "[1.5, 2.25, 30, 25.75]"
    assert solution_text(flat.solution) == "[10, 5, 30, 25]"  # what SFT teaches
    reward = IoUReward(box_frame="original_pixels")
    completions = ["<answer>[10, 5, 30, 25]</answer>", "[12, 0, 40, 20]", "[0, 0, 1, 1]", "no box"]
    flat_scores = reward.score(completions, [_context(ds[0])] * 4)
    assert flat_scores == reward.score(completions, [_context(ds[1])] * 4)
    assert flat_scores[0] == pytest.approx(1.0) and 0 < flat_scores[1] < 1 and flat_scores[2:] == [0.0, 0.0]


@pytest.mark.parametrize("solution, message", [
    ([0, 0, 300, 20], r"data\.jsonl:2: field 'solution' box 1 \[0\.0, 0\.0, 300\.0, 20\.0\] lies outside the 40x30 image"),
    ([5, 5, 5, 20], r"data\.jsonl:2: field 'solution' box 1 \[5\.0, 5\.0, 5\.0, 20\.0\] has no area"),
    ([float("nan"), 1, 2, 3], r"data\.jsonl:2: field 'solution' box \[nan, 1, 2, 3\] has a coordinate that is not a "
                              r"finite number"),
    ([1, 2, 3], r"data\.jsonl:2: field 'solution' is a list of 3 numbers; a box is \[x1, y1, x2, y2\] \(four numbers\)"),
    (["cat", 1, 2, 3], r"data\.jsonl:2: field 'solution' item 1 must be \[category, \[x1, y1, x2, y2\]\], got 'cat'; "
                       r"a 'solution' list is one box \[x1, y1, x2, y2\] of four numbers, or \[category, "
                       r"\[x1, y1, x2, y2\]\] pairs$"),
    ([True, 0, 10, 10], r"data\.jsonl:2: field 'solution' item 1 must be \[category, \[x1, y1, x2, y2\]\], got True"),
    ([["cat", [False, 0, 10, 10]]], r"data\.jsonl:2: field 'solution' item 1 must be \[category, "),
    ({"value": 7}, r"data\.jsonl:2: field 'solution' must be a string, a number, one box \[x1, y1, x2, y2\] of four "
                   r"numbers, or \[category, \[x1, y1, x2, y2\]\] pairs, got dict"),
], ids=["outside_image", "no_area", "not_finite", "three_numbers", "category_first", "boolean", "boolean_in_pair",
        "an_object"])
def test_a_flat_box_is_checked_and_other_lists_say_the_accepted_forms(tmp_path, solution, message):
    f, d = write(tmp_path, [vr1(1, [1, 2, 30, 20]), vr1(2, solution)])
    with pytest.raises(DataError, match=message):
        JsonlDataset(f, d)


def test_a_numeric_answer_given_as_a_json_number_is_its_text(tmp_path):
    f, d = write(tmp_path, [vr1(1, 12), vr1(2, 0.75)])
    assert [r.solution for r in JsonlDataset(f, d).records] == ["12", "0.75"]


def test_a_flat_box_counts_one_instance_and_passes_unchecked_with_check_boxes_off(tmp_path):
    box = json.loads(vr1(1, [1, 2, 30, 20]))
    f, d = write(tmp_path, [json.dumps({**box, "num_instances": 1}), json.dumps({**box, "id": 2, "num_instances": 2})])
    with pytest.raises(DataError, match=r"data\.jsonl:2: field 'num_instances' is 2 but 'solution' is one box$"):
        JsonlDataset(f, d)
    f, d = write(tmp_path, [vr1(1, [9, 3, 1, 2])], "lists")  # four numbers that are not a box
    assert JsonlDataset(f, d, check_boxes=False).records[0].solution == "[9, 3, 1, 2]"


# -- supervised steps: rows without an answer refused at fit start -------------------------------
NO_ANSWER = ("{}:{}: sample '{}' has no answer (field 'solution' is empty or missing): supervised steps (SFT, "
             "callbacks.ColdStart) teach the answer, so give them labelled rows; unlabelled questions suit "
             "label-free GRPO (a judge's reward)")


class _CountingSFT(SFTModule):
    """Counts its training steps (none may run before the refusal)."""

    def training_step(self, batch, batch_idx):
        self.steps = getattr(self, "steps", 0) + 1
        return super().training_step(batch, batch_idx)


def _trainer(tmp_path, **kwargs):
    kwargs = {"max_steps": 8, **kwargs}
    return Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path, **kwargs)


@pytest.mark.parametrize("shuffle_seed", [0, 1])
def test_sft_refuses_a_late_row_without_an_answer_before_the_first_step(tmp_path, shuffle_seed):
    f, d = write(tmp_path, [rec(i) for i in range(1, 8)] + [rec(8, gpt="")])
    data = GroundingDataModule(train_files=f, train_images=d, batch_size=1, shuffle_seed=shuffle_seed)
    module = _CountingSFT(model="tiny:qwen2_5_vl")
    trainer = _trainer(tmp_path)
    with pytest.raises(DataError) as info:
        trainer.fit(module, data)
    assert str(info.value) == NO_ANSWER.format(f, 8, 8)  # one row: the message of the per-batch check
    assert getattr(module, "steps", 0) == 0 and trainer.global_step == 0


def test_sft_lists_every_row_without_an_answer_at_fit_start(tmp_path):
    lines = [rec(1), rec(2, gpt=""), vr1(3, ""), json.dumps({"id": 4, "image": "a.png", "problem": "<image>Where?"}),
             vr1(5, [["cat", [1, 2, 10, 12]]]), vr1(6, [])]  # a pairs list, even empty, is an answer ("[]")
    lines += [rec(i, gpt=" ") for i in range(7, 17)]
    f, d = write(tmp_path, lines)
    data = GroundingDataModule(train_files=f, train_images=d, batch_size=1)
    module = _CountingSFT(model="tiny:qwen2_5_vl")
    with pytest.raises(DataError) as info:
        _trainer(tmp_path).fit(module, data)
    rows = str(info.value).split("\n  ")
    assert rows[0] == (f"13 rows without an answer in {f} (give each an answer in field 'solution', or remove them; "
                       "unlabelled questions suit label-free GRPO):")
    assert rows[1].startswith("by kind: 13 x sample <id> has no answer (field 'solution' is empty or missing)")
    assert rows[2:12] == [NO_ANSWER.format(f, n, n) for n in (2, 3, 4, 7, 8, 9, 10, 11, 12, 13)]
    assert rows[12:] == ["... and 3 more"]
    assert getattr(module, "steps", 0) == 0


def test_cold_start_refuses_rows_without_an_answer_at_fit_start(tmp_path, monkeypatch):
    import callbacks.cold_start as cold_start_module
    from callbacks import ColdStart
    from lit_vr1.config import GRPOConfig
    from lit_vr1.grpo import GRPOModule

    calls = []
    monkeypatch.setattr(cold_start_module, "answer_nll", lambda *args, **kwargs: calls.append(1))
    f, d = write(tmp_path, [rec(1), rec(2, gpt=""), rec(3), rec(4, gpt="")])
    data = GroundingDataModule(train_files=f, train_images=d, batch_size=2)
    module = GRPOModule(model="tiny:qwen2_5_vl", rewards=[LengthReward()],
                        grpo=GRPOConfig(num_generations=2, max_completion_length=4))
    trainer = _trainer(tmp_path, callbacks=[ColdStart(steps=5, batch_size=2)])
    with pytest.raises(DataError) as info:
        trainer.fit(module, data)
    rows = str(info.value).split("\n  ")
    assert rows[0].startswith(f"2 rows without an answer in {f} (")
    assert rows[1:] == [NO_ANSWER.format(f, 2, 2), NO_ANSWER.format(f, 4, 4)]
    assert calls == [] and trainer.global_step == 0


def test_under_bad_rows_skip_rows_without_an_answer_leave_supervised_steps_only(tmp_path, monkeypatch):
    """data.bad_rows=skip still stopped a fit at a row without an answer: SFT now leaves it out
    (reported with the other skipped rows), ColdStart teaches the labelled rows and GRPO keeps all."""
    import callbacks.cold_start as cold_start_module
    from callbacks import ColdStart
    from lit_vr1.config import GRPOConfig
    from lit_vr1.grpo import GRPOModule

    f, d = write(tmp_path, [rec(1), rec(2, gpt=""), rec(3), rec(4, gpt="")])
    data = GroundingDataModule(train_files=f, train_images=d, batch_size=2, bad_rows="skip")
    module = _CountingSFT(model="tiny:qwen2_5_vl")
    _trainer(tmp_path, max_steps=2).fit(module, data)
    assert [r.id for r in data.train_set.records] == ["1", "3"] and module.steps == 2
    assert [s.id for s in data.train_set.skipped] == ["2", "4"]

    taught = []
    real = cold_start_module.answer_nll
    monkeypatch.setattr(cold_start_module, "answer_nll",
                        lambda policy, processor, batch, *a: taught.extend(s.id for s in batch) or real(policy, processor,
                                                                                                       batch, *a))
    data = GroundingDataModule(train_files=f, train_images=d, batch_size=2, bad_rows="skip")
    module = GRPOModule(model="tiny:qwen2_5_vl", rewards=[LengthReward()],
                        grpo=GRPOConfig(num_generations=2, max_completion_length=4))
    trainer = _trainer(tmp_path, max_steps=1, callbacks=[ColdStart(steps=3, batch_size=2)])
    trainer.fit(module, data)
    assert set(taught) == {"1", "3"} and len(data.train_set) == 4 and trainer.global_step == 1


def test_labelled_and_synthetic_training_sets_pass_the_answer_check(tmp_path):
    from lit_vr1.data.synthetic import SyntheticSpec

    data = GroundingDataModule(synthetic=SyntheticSpec(num_samples=8, canvas=56, max_shapes=1),
                               synthetic_dir=str(tmp_path / "synthetic"), num_val_samples=0)
    data.setup("fit")
    check_answers(training_records(SimpleNamespace(datamodule=data)))
    assert len(training_records(SimpleNamespace(datamodule=data))) == 8
    assert training_records(SimpleNamespace(datamodule=None)) is None  # a plain DataLoader: nothing to read
    check_answers(None)
    with pytest.raises(DataError) as info:  # the per-batch backstop still refuses a batch holding one
        check_answers([SimpleNamespace(solution="", source="x.jsonl:1", id="1")])
    assert str(info.value) == NO_ANSWER.format("x.jsonl", 1, 1)


# -- GRPO: a solution its rewards cannot score is found at fit start ---------------------------------
def test_grpo_lists_rec_rows_whose_answer_holds_no_box_before_the_model_is_built(tmp_path):
    """Before, the first rollout to reach such a row stopped the run ("holds no box"), deep into
    it, and data.bad_rows=skip did not skip it."""
    from lit_vr1.config import GRPOConfig
    from lit_vr1.grpo import GRPOModule

    lines = [rec(1), rec(2, gpt="The circle is at (4,5)-(9,10)."), rec(3), rec(4, gpt="top left"), rec(5)]
    f, d = write(tmp_path, lines)
    module = GRPOModule(model="tiny:qwen2_5_vl", grpo=GRPOConfig(num_generations=2, max_completion_length=4))
    with pytest.raises(DataError) as info:
        _trainer(tmp_path).fit(module, GroundingDataModule(train_files=f, train_images=d, batch_size=1))
    rows = str(info.value).split("\n  ")
    assert rows[0] == (f"2 rows whose solution a reward cannot score in {f} (fix or remove them, or set "
                       "data.bad_rows=skip to leave them out):")
    assert rows[1] == (f"{f}:2: solution 'The circle is at (4,5)-(9,10).' holds no box; a box is [x1, y1, x2, y2] in "
                       "pixels of the image (reward 'iou' scores this row)")
    assert rows[2].startswith(f"{f}:4: solution 'top left' holds no box")
    assert module.policy is None  # refused before the model was built


def test_with_bad_rows_skip_they_are_left_out_and_reported(tmp_path):
    from lit_vr1.data.jsonl import Record
    from lit_vr1.grpo import check_solutions
    from lit_vr1.rewards import DetectionMAP, IoUReward

    def detection(i, solution):
        return json.dumps({**json.loads(vr1(i, solution)), "reward_method": "detection"})

    lines = [rec(1), rec(2, gpt="top left"), detection(3, []), detection(4, "no objects here")]
    f, d = write(tmp_path, lines)
    ds = JsonlDataset(f, d, bad_rows="skip")
    dropped = check_solutions([IoUReward(tasks=["default"]), DetectionMAP(tasks=["detection"])], ds)
    assert [r.id for r in dropped] == ["2", "4"] and [r.id for r in ds.records] == ["1", "3"]
    assert ds.skipped[-2:] == dropped
    # a detection row without objects ([]) passes its box reward; routing decides which reward reads a row
    detection = Record("x", [], "q", [], "d.jsonl:1", task="detection")
    assert DetectionMAP().solution_problem(detection) is None and IoUReward().solution_problem(detection)
    assert check_solutions([IoUReward()], object()) == []  # not a JSONL dataset: not read


@pytest.mark.parametrize("eval_task, line, problem", [
    ("rec", rec(2, gpt="top left"), "solution 'top left' holds no box; a box is [x1, y1, x2, y2] in pixels of the image"),
    ("detection", vr1(2, "a cat on the left"), "solution 'a cat on the left' holds no box; for an image without "
                                               "objects give [] or metadata num_instances: 0"),
    ("answer", vr1(2, " "), "has no answer to compare with: field 'solution' is empty or missing"),
])
def test_held_out_rows_validation_cannot_score_are_named_at_the_start(tmp_path, eval_task, line, problem):
    """Before, the first validation to reach one stopped with "sample '2': solution ... holds no
    box", without file or line (under validate), or after the steps before it (under fit)."""
    from lit_vr1.sft import SFTModule

    train, d = write(tmp_path, [rec(1), rec(3)], "train")
    val, _ = write(tmp_path, [rec(1) if eval_task != "answer" else vr1(1, "3"), line], "val")
    data = GroundingDataModule(train_files=train, train_images=d, val_files=val, val_images=d, batch_size=1)
    module = SFTModule(model="tiny:qwen2_5_vl", eval_task=eval_task)
    with pytest.raises(DataError) as info:
        _trainer(tmp_path).validate(module, data)
    # SFT's mode: no reward to read it from
    mode = ", answers matched as numeric: model.eval_answer_mode sets how" if eval_task == "answer" else ""
    assert str(info.value) == f"{val}:2: {problem} (held-out rows are scored as model.eval_task={eval_task}{mode})"
    assert module.policy is None


def test_with_bad_rows_skip_such_held_out_rows_are_left_out(tmp_path):
    from lit_vr1.evaluate import check_eval_solutions

    f, d = write(tmp_path, [rec(1), rec(2, gpt="top left"), rec(3)])
    ds = JsonlDataset(f, d, bad_rows="skip")
    assert [r.id for r in check_eval_solutions("rec", ds)] == ["2"] and [r.id for r in ds.records] == ["1", "3"]
    assert check_eval_solutions("rec", None) == []


def test_ovd_negatives_and_masking_rewards_are_not_refused(tmp_path):
    """VLM-R1's OVD data answers an image without the object <answer>None</answer>: no objects,
    not a row without boxes. A reward with on_error="nan" masks and counts what it cannot score."""
    from lit_vr1.evaluate import check_eval_solutions
    from lit_vr1.grpo import check_solutions
    from lit_vr1.rewards import DetectionMAP, IoUReward, ODLength

    lines = [vr1(1, "<answer>None</answer>"), vr1(2, '<answer>[{"bbox_2d": [1, 2, 10, 12], "label": "cat"}]</answer>'),
             vr1(3, "none"), vr1(4, "NULL")]
    f, d = write(tmp_path, lines)
    ds = JsonlDataset(f, d)
    assert check_solutions([DetectionMAP(), ODLength()], ds) == [] and check_eval_solutions("detection", ds) == []
    assert len(ds.records) == 4
    assert check_solutions([IoUReward(on_error="nan")], ds) == []
    with pytest.raises(DataError, match="3 rows whose solution a reward cannot score"):
        check_solutions([IoUReward()], ds)


def test_a_trainer_clip_of_zero_asks_for_no_clipping_and_is_not_refused():
    from types import SimpleNamespace

    from lit_vr1.checks import check_trainer

    module = SimpleNamespace(config=object(), automatic_optimization=False)
    check_trainer(module, SimpleNamespace(gradient_clip_val=0, accumulate_grad_batches=1))
    with pytest.raises(Exception, match="trainer.gradient_clip_val=0.5"):
        check_trainer(module, SimpleNamespace(gradient_clip_val=0.5, accumulate_grad_batches=1))


def test_a_detection_row_without_a_solution_is_not_an_image_without_objects(tmp_path):
    """A detection row whose 'solution' field was missing read as "" and passed as an image
    without objects: every completion that wrote no box, gibberish included, scored full
    reward. Only an explicit [] / None / num_instances 0 says "no objects" now."""
    from lit_vr1.grpo import check_solutions
    from lit_vr1.rewards import DetectionMAP

    def detection(i, **fields):
        row = {"id": str(i), "image": "a.png", "problem": "<image>Find every cat.", "reward_method": "detection"}
        return json.dumps({**row, **fields})

    lines = [detection(1, solution=[["cat", [1, 2, 10, 12]]]), detection(2), detection(3, solution=[]),
             detection(4, solution="<answer>None</answer>"), detection(5, solution=""),
             detection(6, solution=[], num_instances=0)]
    f, d = write(tmp_path, lines)
    with pytest.raises(DataError) as info:
        check_solutions([DetectionMAP(tasks=["detection"])], JsonlDataset(f, d))
    rows = str(info.value).split("\n  ")[1:]
    assert [r.split(": ", 1)[0] for r in rows] == [f"{f}:2", f"{f}:5"]
    assert rows[0] == (f"{f}:2: no solution (field 'solution' missing or empty); for an image without objects give [] "
                       "or metadata num_instances: 0 (reward 'map' scores this row)")


def test_the_detection_rewards_never_score_a_row_without_a_solution():
    """check_solutions does not ask a reward with on_error=nan, nor a dataset that is not JSONL:
    scored, such a row gave mAP 1.0 to any completion without a box."""
    from lit_vr1.rewards import DetectionMAP, ODLength
    from lit_vr1.rewards.base import RewardError, SampleContext

    ctx = SampleContext(id="d7", prompt="Find every cat.", solution="", image_sizes=[(64, 64)], task="detection")
    for reward in (DetectionMAP(), ODLength()):
        with pytest.raises(RewardError, match="no solution \\(field 'solution' missing or empty\\)"):
            reward(["I see nothing", "gibberish"], [ctx, ctx])
        masked = type(reward)(on_error="nan")(["I see nothing", "gibberish"], [ctx, ctx])
        assert all(v != v for v in masked)  # nan: left out, counted, never 1.0
    empty = SampleContext(id="d8", prompt="Find every cat.", solution="[]", image_sizes=[(64, 64)], task="detection")
    assert DetectionMAP()(["[]"], [empty]) == [1.0]  # an image without objects, said so


def test_a_box_rows_missing_image_is_refused_at_fit_start(tmp_path):
    """"image": null reads as a text-only row; with a box solution, the first rollout to draw it
    stopped the fit ("box frame 'input_pixels' needs the image size, and the sample has no image")."""
    from lit_vr1.config import GRPOConfig
    from lit_vr1.grpo import GRPOModule
    from lit_vr1.rewards import IoUReward

    lines = [rec(1), json.dumps({"id": 2, "image": None, "problem": "Where is it?", "solution": "[1, 2, 30, 20]"})]
    f, d = write(tmp_path, lines)
    data = GroundingDataModule(train_files=f, train_images=d, batch_size=1)
    module = GRPOModule(model="tiny:qwen2_5_vl", rewards=[IoUReward()],
                        grpo=GRPOConfig(num_generations=2, max_completion_length=4))
    with pytest.raises(DataError) as info:
        _trainer(tmp_path).fit(module, data)
    assert str(info.value).startswith(f"{f}:2: the row has no image (field 'image' missing or null) but its solution "
                                      "holds boxes"), str(info.value)
