"""Your own reward as a plain TRL-style function: FunctionReward, in-process and through the CLI."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lit_vr1.rewards import FunctionReward, RewardError, score_all
from lit_vr1.rewards.base import SampleContext
from lit_vr1.rewards.function import FIELDS, load_function

ROOT = Path(__file__).resolve().parents[1]

USER_MODULE = textwrap.dedent('''
    import json, os

    def short_answer(completions, **kwargs):
        """A TRL-style reward: 1 for answers under 20 characters, None for the 'skip' task."""
        path = os.environ.get("SEEN_KWARGS")
        if path:
            with open(path, "a") as f:
                f.write(json.dumps({"keys": sorted(kwargs), "step": kwargs["step"], "n": len(completions),
                                    "solution": str(kwargs["solution"][0])[:40]}) + "\\n")
        return [None if t == "skip" else float(len(c) < 20) for c, t in zip(completions, kwargs["task"])]

    def only_prompts(completions, prompts):
        return [float(p in c) for c, p in zip(completions, prompts)]

    def wrong_length(completions, **kwargs):
        return [1.0] * (len(completions) + 1)

    def text_values(completions, **kwargs):
        return ["high" for _ in completions]

    def fails_at_step_2(completions, **kwargs):
        if kwargs["step"] >= 2:
            raise KeyError("solution has no 'bbox'")
        return [0.5] * len(completions)
''')


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(USER_MODULE)
    monkeypatch.chdir(tmp_path)
    return tmp_path / "my_rewards.py"


def ctx(i=0, task="default", step=3):
    return SampleContext(id=f"s{i}", prompt="find the cat", solution=[1, 2, 3, 4], image_sizes=[(64, 48)],
                         input_sizes=[(56, 42)], task=task, source=f"data.jsonl:{i + 1}", global_step=step,
                         metadata={"difficulty": i})


def test_a_function_from_a_file_gets_trl_style_fields(user_module, tmp_path, monkeypatch):
    seen = tmp_path / "seen.jsonl"
    monkeypatch.setenv("SEEN_KWARGS", str(seen))
    reward = FunctionReward(fn="my_rewards.py:short_answer", weight=2.0)
    assert reward.name == "short_answer"
    scores = score_all([reward], ["ok", "a much longer answer than that", "x"], [ctx(0), ctx(1), ctx(2, task="skip")])
    assert scores.per_reward[0, :2].tolist() == [1.0, 0.0] and math.isnan(float(scores.per_reward[0, 2]))
    assert scores.total.tolist() == [2.0, 0.0, 0.0] and scores.unscored.tolist() == [False, False, True]
    got = json.loads(seen.read_text().splitlines()[0])
    # lit-vr1's fields, and each metadata key (the data line's other fields) as its own keyword list
    assert got["keys"] == sorted({*FIELDS, "difficulty"}) and got["step"] == 3 and got["n"] == 3


def test_module_paths_declared_names_routing_and_errors(user_module):
    # "module.function" and "module:function" from the working directory
    assert load_function("my_rewards.only_prompts").__name__ == "only_prompts"
    only = FunctionReward(fn="my_rewards:only_prompts", tasks=["rec"])
    out = only(["find the cat: here", "no"], [ctx(0, task="rec"), ctx(1, task="math")])
    assert out[0] == 1.0 and math.isnan(out[1])  # the function declares prompts only; routing by task
    # a wrong count is the function's fault: reported with the batch's counts, no sample blamed
    for on_error in ("raise", "nan"):
        with pytest.raises(RewardError, match=r"'wrong_length' \(my_rewards\.py:wrong_length\) returned 3 values for 2 "
                                             r"completions; a reward returns one"):
            FunctionReward(fn="my_rewards.py:wrong_length", on_error=on_error)(["a", "b"], [ctx(0), ctx(1)])
    with pytest.raises(RewardError, match="return floats"):
        FunctionReward(fn="my_rewards.py:text_values")(["a"], [ctx(0)])
    masked = FunctionReward(fn="my_rewards.py:text_values", on_error="nan")
    assert math.isnan(masked(["a"], [ctx(0)])[0]) and masked.errors == 1
    # a plain callable works too (notebooks)
    assert FunctionReward(fn=lambda completions, **kw: [0.5] * len(completions), name="half")(["a"], [ctx()]) == [0.5]
    for spec, msg in [("nowhere.py:f", "does not exist"), ("no_such_module.f", "cannot import"),
                      ("my_rewards.py:missing", "no function 'missing'"), ("", "must name a function"),
                      ("my_rewards.py:short_answr", r"no function 'short_answr'; did you mean short_answer\?"),
                      ("my_rewards.py", r"names a file but no function in it: add :<function>, e\.g\. my_rewards\.py:")]:
        with pytest.raises(ValueError, match=msg):
            FunctionReward(fn=spec)


def tiny_fit(tmp_path, out, rewards: str, max_steps: int, length: int, generations: int, callbacks: str) -> list[str]:
    """``lit-vr1 fit`` of the quickstart over 8 synthetic images in ``tmp_path``, logs in ``out``."""
    return [
        sys.executable, "-m", "lit_vr1.cli", "fit", "--config", str(ROOT / "configs/quickstart.yaml"),
        f"--trainer.max_steps={max_steps}", "--trainer.limit_val_batches=0", f"--trainer.default_root_dir={out}",
        f"--trainer.logger.init_args.save_dir={out}", f"--data.init_args.synthetic_dir={tmp_path / 'data'}",
        "--data.init_args.synthetic.num_samples=8", "--data.init_args.num_val_samples=4",
        "--data.init_args.batch_size=2", f"--model.init_args.grpo.max_completion_length={length}",
        f"--model.init_args.grpo.num_generations={generations}", f"--trainer.callbacks={callbacks}",
        "--trainer.enable_progress_bar=false", f"--model.init_args.rewards={rewards}",
    ]


def test_function_reward_through_the_cli(tmp_path):
    (tmp_path / "my_rewards.py").write_text(USER_MODULE)
    seen = tmp_path / "seen.jsonl"
    out = tmp_path / "run"
    rewards = ("[{class_path: lit_vr1.rewards.FunctionReward, init_args: {fn: my_rewards.py:short_answer, "
               "weight: 1.0}}, {class_path: lit_vr1.rewards.IoUReward}]")
    cmd = tiny_fit(tmp_path, out, rewards, max_steps=2, length=8, generations=4, callbacks="[]")
    env = dict(os.environ, PYTHONPATH=str(ROOT), SEEN_KWARGS=str(seen))
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    calls = [json.loads(line) for line in seen.read_text().splitlines()]
    assert len(calls) == 2 and [c["step"] for c in calls] == [0, 1]  # one call per rollout batch, with the step
    # 2 prompts x 4 completions; lit-vr1's fields and the rollout's token ids (the synthetic rows' metadata
    # columns come as keywords too)
    assert all(c["n"] == 8 and {*FIELDS, "completion_ids"} <= set(c["keys"]) for c in calls), calls[0]["keys"]
    metrics = next(out.glob("logs/version_*/metrics.csv")).read_text()
    assert "train/reward/short_answer/mean" in metrics


@pytest.mark.parametrize("every", [1, 0, "no_last"], ids=["checkpointed", "no_checkpoint_yet", "no_last_ckpt"])
def test_a_reward_failing_mid_fit_says_how_to_resume(tmp_path, every):
    """A reward that fails after optimiser steps were applied (a judge gone, a solution it cannot
    read): one message naming the reward, and after it the step reached and how to resume."""
    (tmp_path / "my_rewards.py").write_text(USER_MODULE)
    out = tmp_path / "run"
    rewards = "[{class_path: lit_vr1.rewards.FunctionReward, init_args: {fn: my_rewards.py:fails_at_step_2}}]"
    checkpoints = "[]" if not every else ("[{class_path: lightning.pytorch.callbacks.ModelCheckpoint, init_args: "
                                          f"{{every_n_train_steps: 1, save_last: {str(every == 1).lower()}}}}}]")
    cmd = tiny_fit(tmp_path, out, rewards, max_steps=4, length=4, generations=2, callbacks=checkpoints)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    err = proc.stderr
    assert "Traceback" not in err, err[-3000:]
    assert "lit-vr1: error: reward 'fails_at_step_2' raised" in err and "KeyError" in err, err[-3000:]
    if every == 1:
        assert (f"the fit stopped after optimiser step 2; once the cause is mended, it resumes from "
                f"{out / 'checkpoints' / 'last.ckpt'} (optimiser step 2) with --ckpt_path last (the steps") in err, \
            err[-3000:]
    elif every:  # no last.ckpt: --ckpt_path last would be refused, so the file is named
        assert (f"the fit stopped after optimiser step 2; once the cause is mended, it resumes from its newest "
                f"checkpoint with --ckpt_path {out / 'checkpoints' / 'epoch=0-step=2.ckpt'} (the steps") in err, err[-3000:]
    else:  # Lightning's own ModelCheckpoint saves at the epoch's end
        assert "the fit stopped after optimiser step 2 before its first checkpoint: a new fit starts over" in err


def test_a_per_sample_score_function_as_verl_writes_it_is_refused_when_built_with_the_wrapper():
    """verl's compute_score(data_source, solution_str, ground_truth, extra_info) failed at the first
    rollout, after the model was built, with "... and the keywords none"."""
    def compute_score(data_source, solution_str, ground_truth, extra_info=None):
        return float(solution_str == ground_truth)

    with pytest.raises(TypeError) as info:
        FunctionReward(fn=compute_score)
    msg = str(info.value)
    assert "takes (data_source, solution_str, ground_truth), a per-sample score function as verl and EasyR1" in msg
    # the wrapper the message writes runs as written, with verl's arguments in their places (the first
    # version wrote EasyR1's two-argument call for verl's function too)
    namespace = {"compute_score": lambda data_source, solution_str, ground_truth, extra_info=None:
                 float(solution_str == ground_truth) + (data_source == "geo") + 10 * (extra_info == {"k": 1})}
    exec(re.search(r"Wrap it: (def my_reward.*\]) \(", msg).group(1), namespace)
    got = namespace["my_reward"](["2", "3"], ["2", "2"], data_source=["geo", "x"], metadata=[{"k": 1}, {}])
    assert got == [12.0, 0.0]

    def easy_r1(predict_str, ground_truth):
        return float(predict_str == ground_truth)

    with pytest.raises(TypeError, match=r"takes \(predict_str, ground_truth\)") as info:
        FunctionReward(fn=easy_r1)
    namespace = {"easy_r1": easy_r1}
    exec(re.search(r"Wrap it: (def my_reward.*\]) \(", str(info.value)).group(1), namespace)
    assert namespace["my_reward"](["2", "3"], ["2", "2"]) == [1.0, 0.0]
    # a TRL-style function with a data column named ground_truth is fine
    assert FunctionReward(fn=lambda completions, ground_truth, **kw: [0.0] * len(completions), name="gt")


def test_a_function_that_cannot_take_the_call_says_what_it_gets_in_english():
    def needs_more(completions, answer_key):
        return [0.0] * len(completions)

    reward = FunctionReward(fn=needs_more)
    with pytest.raises(RewardError, match=r"it gets the completions by keyword \(completions=\.\.\.\) and no other keyword"):
        reward(["a"], [SampleContext(id="s", prompt="q", solution="x")])


def test_a_row_without_a_solution_reaches_a_function_as_none_not_as_empty_text():
    # an unlabelled row (no field, null, empty) is kept as "" by the reader; a function comparing
    # with it would score every completion against the empty text without a word
    seen = []

    def exact(completions, solution, **kwargs):
        seen.extend(solution)
        return [float(s is not None and c == s) for c, s in zip(completions, solution)]

    rows = [SampleContext(id=f"s{i}", prompt="q", solution=sol, task="default", source=f"d.jsonl:{i + 1}")
            for i, sol in enumerate(["", "  ", "4", [1, 2, 3, 4]])]
    out = FunctionReward(fn=exact)(["", "", "4", "x"], rows)
    assert seen == [None, None, "4", [1, 2, 3, 4]] and out == [0.0, 0.0, 1.0, 0.0]
