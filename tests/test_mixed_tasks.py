"""One policy trained on a mixed data set, each task scored by its own rewards (a new user's trial
from VLM-R1: grounding, counting, two-image and text-only rows, rewards routed by ``tasks``)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from lit_vr1.data.jsonl import DataError, JsonlDataset, Record
from lit_vr1.grpo import check_routing, check_solutions
from lit_vr1.rewards import Accuracy, IoUReward, ThinkAnswerFormat


def _records(tasks: dict[str, int], solution: str = "3") -> SimpleNamespace:
    rows = [Record(f"{t}{i}", [], "<image>How many?", solution, f"d.jsonl:{i}", task=t)
            for t, n in tasks.items() for i in range(n)]
    return SimpleNamespace(records=rows)


def _warnings(fn) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn()
    return [str(w.message) for w in caught]


def test_a_task_that_differs_from_a_rewards_task_by_case_or_spaces_is_said_with_the_one_meant():
    """'Count' and 'vqa ' rows were scored by the format reward alone, with nothing said: only a
    task that no reward at all scores was warned of."""
    rewards = [Accuracy(mode="numeric", tasks=["count"]), Accuracy(mode="exact", tasks=["vqa"], name="vqa_acc"),
               ThinkAnswerFormat()]
    said = _warnings(lambda: check_routing(rewards, _records({"count": 8, "Count": 1, "vqa ": 1, "vqa": 3})))
    assert any("1 training row(s) have task 'Count'" in m and "did you mean 'count'?" in m and "'format'" in m
               for m in said), said
    assert any("task 'vqa '" in m and "did you mean 'vqa'?" in m for m in said), said
    assert not _warnings(lambda: check_routing(rewards, _records({"count": 8, "vqa": 3})))
    # a task named by no reward's tasks and not close to any is a choice (the rewards of every task score it)
    assert not _warnings(lambda: check_routing(rewards, _records({"count": 8, "vqa": 3, "default": 3})))
    # close names that are other data sets (rows of both): RefCOCO+ and RefCOCOg routed apart from RefCOCO
    refs = [IoUReward(tasks=["refcoco"]), ThinkAnswerFormat()]
    assert not _warnings(lambda: check_routing(refs, _records({"refcoco": 4, "refcocog": 4, "refcoco+": 2})))
    said = _warnings(lambda: check_routing(refs, _records({"refcocoo": 4, "vqa": 2})))  # no refcoco row: a typo
    assert any("task 'refcocoo'" in m and "did you mean 'refcoco'?" in m for m in said), said
    # without a reward of every task, the rows are scored by none, and the misspelling is named there
    said = _warnings(lambda: check_routing(rewards[:2], _records({"vqa": 8, "cuont": 2})))
    assert any("2 training rows are scored by no reward" in m and "(a misspelt task? 'cuont' for 'count')" in m
               for m in said), said


@pytest.mark.parametrize("solution, listed", [("[12, 24, 37, 49]", 4), ("12 24", 2), ("(3, 4)", 2), ("1.5; 2.5", 2)])
def test_a_numeric_solution_that_lists_numbers_is_refused(solution, listed):
    """A box's solution given to Accuracy(mode=numeric) was scored by its last number: an answer
    [0, 0, 1, 49] matched [12, 24, 37, 49]."""
    from lit_vr1.rewards.accuracy import answer_problem, is_correct

    assert f"is a list of {listed} numbers" in answer_problem(solution, "numeric")
    with pytest.raises(ValueError, match="score boxes with a box reward"):
        is_correct("[0, 0, 1, 49]", solution, "numeric")


@pytest.mark.parametrize("solution", ["1,000", "3", "3/4", "75%", "$1{,}000$", "There are 3 apples", "-2"])
def test_one_number_stays_a_numeric_solution(solution):
    from lit_vr1.rewards.accuracy import answer_problem

    assert answer_problem(solution, "numeric") is None


def _write(tmp_path: Path, name: str, rows: list[dict], sizes: dict[str, tuple[int, int]]) -> tuple[str, str]:
    images = tmp_path / "img"
    images.mkdir(exist_ok=True)
    for file, size in sizes.items():
        Image.new("RGB", size, (200, 200, 200)).save(images / file)
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path), str(images)


def test_skip_refuses_a_file_that_a_reward_without_tasks_would_mostly_leave_out(tmp_path):
    """IoUReward without tasks over a mixed file: under bad_rows=skip two thirds of the rows (the
    counting ones) were left out with a warning, and the fit trained on the box rows alone."""
    rows = [{"id": f"rec{i}", "image": "a.png", "problem": "<image>Locate the box.", "solution": [1, 1, 20, 20],
             "reward_method": "rec"} for i in range(5)]
    rows += [{"id": f"cnt{i}", "image": "a.png", "problem": "<image>How many?", "solution": "2",
              "reward_method": "count"} for i in range(10)]
    f, d = _write(tmp_path, "mixed", rows, {"a.png": (56, 56)})
    with pytest.raises(DataError, match=r"10 of its 15 rows are bad \(67%.*does each reward score only its own rows' "
                                        r"task \(a reward's tasks: \[\.\.\.\]\)\?"):
        check_solutions([IoUReward()], JsonlDataset(f, d, bad_rows="skip"))
    with pytest.raises(DataError, match=r"give each reward the tasks of its rows"):  # raise mode: the hint names tasks
        check_solutions([IoUReward()], JsonlDataset(f, d))
    few = JsonlDataset(f, d, bad_rows="skip")
    few.records = few.records[:9]  # 4 counting rows of 9, under half: left out, as before
    assert [r.id for r in check_solutions([IoUReward()], few)] == ["cnt0", "cnt1", "cnt2", "cnt3"]


def test_vlm_r1s_per_row_accu_reward_method_is_refused_naming_the_field(tmp_path):
    """VLM-R1's rows carry 'accu_reward_method'; it was ignored, and every row trained as task 'default'."""
    row = {"image": "a.png", "problem": "<image>How many?", "solution": "2", "accu_reward_method": "default"}
    f, d = _write(tmp_path, "vlmr1", [{**row, "accu_reward_method": "mcq"}], {"a.png": (56, 56)})
    with pytest.raises(DataError, match=r"vlmr1\.jsonl:1: field 'accu_reward_method' \(VLM-R1's\) is not read: a row's "
                                        r"task goes in field 'reward_method'"):
        JsonlDataset(f, d)
    f, d = _write(tmp_path, "both", [{**row, "accu_reward_method": "mcq", "reward_method": "count"}], {})
    assert JsonlDataset(f, d).records[0].task == "count"  # written beside reward_method: the latter routes
    f, d = _write(tmp_path, "dflt", [row], {})  # 'default', lit-vr1's default task too: read as before
    assert JsonlDataset(f, d).records[0].task == "default"


def test_a_two_image_rows_box_outside_its_first_image_says_boxes_are_read_there(tmp_path):
    row = {"image": ["a.png", "b.png"], "problem": "<image> <image> Locate the box in the second image.",
           "solution": [60, 40, 100, 80]}
    f, d = _write(tmp_path, "two", [row], {"a.png": (56, 56), "b.png": (112, 84)})
    with pytest.raises(DataError, match=r"lies outside the 56x56 image .*a row's boxes are read in its first image's "
                                        r"pixels; this row has 2 images"):
        JsonlDataset(f, d)


def test_cold_start_says_when_a_format_reward_scores_every_taught_answer_0():
    """ColdStart teaches solutions as written: bare '8' under ThinkAnswerFormat scored 0 for a whole
    run, with nothing said."""
    from callbacks.cold_start import untaught_format_note

    bare = _records({"count": 3}, solution="8").records
    note = untaught_format_note([Accuracy(mode="numeric"), ThinkAnswerFormat()], bare)
    assert "reward 'format' (ThinkAnswerFormat) scores 0 on every one of them (3 checked)" in note
    tagged = _records({"count": 3}, solution="<think>three</think><answer>8</answer>").records
    assert untaught_format_note([ThinkAnswerFormat()], tagged) is None
    assert untaught_format_note([ThinkAnswerFormat(tasks=["rec"])], bare) is None  # routed elsewhere
    assert untaught_format_note([Accuracy(mode="numeric")], bare) is None


def test_a_file_listed_twice_is_a_weight_not_a_repeated_id(tmp_path):
    """Listing a file twice (an upweighting) warned 'remove the copies' at 'multi.jsonl:1, multi.jsonl:1'."""
    from lit_vr1.data.jsonl import duplicate_ids_note, listed_twice_note

    rows = [{"id": f"m{i}", "image": "a.png", "problem": "<image>What colour?", "solution": "red"} for i in range(3)]
    f, d = _write(tmp_path, "multi", rows, {"a.png": (56, 56)})
    ds = JsonlDataset(f"{f}:{f}", f"{d}:{d}")
    assert len(ds) == 6 and duplicate_ids_note(ds.records) is None
    assert "multi.jsonl (2 times) listed more than once: each of its rows is read, and trains" in listed_twice_note(
        f"{f}:{f}")
    copied, _ = _write(tmp_path, "copied", rows + rows[:1], {})  # a line written twice is still said
    assert "1 id(s) are written on several lines" in duplicate_ids_note(JsonlDataset(copied, d).records)


def test_cold_start_says_which_tasks_a_format_reward_without_tasks_fails():
    """A think/answer format reward without tasks over REC and counting rows scored 0 on every REC
    answer and 1 on the counting ones: before, only a reward failing every row was said."""
    from callbacks.cold_start import untaught_format_note

    rows = (_records({"rec": 3}, solution='[{"bbox_2d": [1, 2, 30, 40]}]').records
            + _records({"count": 3}, solution="<think>three</think><answer>3</answer>").records)
    note = untaught_format_note([ThinkAnswerFormat()], rows)
    assert "scores 0 on every one of task rec (of tasks rec, count) (3 checked)" in note
    assert "Give it the tasks it is meant for (tasks: [count])" in note
    assert untaught_format_note([ThinkAnswerFormat(tasks=["count"])], rows) is None


@pytest.mark.parametrize("solution", [
    [["blue square", [8, 26, 23, 41]], ["blue circle", [26, 20, 40, 34]]],  # Vision-R1's [label, box] pairs
    '[{"bbox_2d": [1, 2, 30, 40], "label": "cat"}]', [{"bbox_2d": [1, 2, 30, 40], "label": "cat"}],
    '<answer>[{"bbox": [1, 2, 30, 40]}]</answer>'])
@pytest.mark.parametrize("mode", ["numeric", "exact", "choice"])
def test_a_detection_solution_is_refused_by_every_answer_mode(solution, mode):
    """A mixed-task trial: HFRRF(mode=numeric) over a detection row scored <answer> 34 </answer> 1.0
    (34, the last coordinate of its last box); the number mode refused only a bare REC quadruple."""
    from lit_vr1.rewards import HFRRF
    from lit_vr1.rewards.accuracy import answer_problem
    from lit_vr1.rewards.base import SampleContext

    assert "is written as boxes, not an answer mode" in answer_problem(solution, mode)
    assert "is written as boxes" in HFRRF(mode=mode).solution_problem(SampleContext(id="d", prompt="", solution=solution))
    # reasoning that quotes a box key, an answer that is not boxes: read as before (the review's case)
    assert answer_problem('<think>the json has "bbox": [1, 2, 3, 4]</think><answer>3</answer>', "numeric") is None


def test_held_out_rows_without_a_task_under_routed_answer_rewards_are_said_to_need_one():
    from lit_vr1.grpo import GRPOModule
    from lit_vr1.rewards import HFRRF

    module = GRPOModule(model="tiny:qwen2_5_vl", rewards=[Accuracy(mode="numeric", tasks=["count"]),
                                                          HFRRF(mode="choice", tasks=["mcq"])])
    note = module.unrouted_answer_note("default")
    assert "these rows have no task ('default'), which no answer reward scores (theirs: count, mcq)" in note
    assert "data.val_reward_methods" in note
    assert module.unrouted_answer_note("count") is None and module.unrouted_answer_note("rec") is None
    assert GRPOModule(model="tiny:qwen2_5_vl", rewards=[Accuracy(mode="numeric")]).unrouted_answer_note("default") is None


def test_a_task_field_of_another_name_is_named_when_no_reward_scores_the_rows():
    """Rows with "task": "rec" instead of "reward_method": refused as task 'default' without a word of the field."""
    rows = [Record(f"r{i}", [], "q", "3", f"d.jsonl:{i}", metadata={"task": t}) for i, t in enumerate(["rec", "count"] * 3)]
    with pytest.raises(ValueError, match=r"the rows' field 'task' holds the rewards' tasks in 6 row\(s\), but is not "
                                         r"read: a row's task goes in field 'reward_method'"):
        check_routing([IoUReward(tasks=["rec"]), Accuracy(mode="numeric", tasks=["count"])], SimpleNamespace(records=rows))
    said = _warnings(lambda: check_routing([IoUReward(tasks=["rec"]), ThinkAnswerFormat()], SimpleNamespace(records=rows)))
    assert any("scores none of the training rows" in m and "field 'task' holds the rewards' tasks in 3 row(s)" in m
               for m in said), said


def test_one_image_folder_serves_every_data_file(tmp_path):
    """Five task files under one image root were refused ('lists 5 file(s) but 1 folder(s)') where
    data.reward_methods takes one task for every file (a mixed-task trial)."""
    rec = [{"id": "r", "image": "a.png", "problem": "<image>Locate the box.", "solution": [1, 1, 20, 20]}]
    cnt = [{"id": "c", "image": "a.png", "problem": "<image>How many?", "solution": "2"}]
    f1, d = _write(tmp_path, "rec", rec, {"a.png": (56, 56)})
    f2, _ = _write(tmp_path, "cnt", cnt, {})
    ds = JsonlDataset(f"{f1}:{f2}", d, reward_methods="rec:count")
    assert [(r.id, r.task) for r in ds.records] == [("r", "rec"), ("c", "count")]
    f3, _ = _write(tmp_path, "null", [{**cnt[0], "reward_method": None}], {})  # null: the file's task, not refused
    assert JsonlDataset(f3, d, reward_methods="count").records[0].task == "count"
    with pytest.raises(DataError, match=r"lists 3 file\(s\) but .* 2 folder\(s\); give one image folder per data file, "
                                        r"':'-separated, or one folder for them all"):
        JsonlDataset(f"{f1}:{f2}:{f1}", f"{d}:{d}")
