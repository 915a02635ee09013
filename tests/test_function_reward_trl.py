"""Rewards written for TRL's GRPOTrainer run unchanged: FunctionReward calls them as TRL does
(keywords, completion_ids, trainer_state, the data's columns, chat-form completions), plain
functions in GRPOModule(rewards=[...]) are wrapped, and rewards that fail or score nothing
say so once instead of training silently."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from lit_vr1.rewards import FunctionReward, IoUReward, Reward, RewardError, score_all
from lit_vr1.rewards.base import BrokenReward, SampleContext
from lit_vr1.rewards.function import FIELDS, TrainerState, as_rewards, call_plan

MESSAGES = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "find the cat"}]}]


def ctx(i=0, task="default", step=3, ids=None, **metadata):
    return SampleContext(id=f"s{i}", prompt="find the cat", solution="cat", task=task, source=f"data.jsonl:{i + 1}",
                         global_step=step, metadata=metadata, messages=MESSAGES, completion_ids=ids)


# -- the calling convention -------------------------------------------------------------------------
def trl_completions(completions, **kwargs):
    return [float(len(c)) for c in completions]


def trl_prompts_first(prompts, completions, **kwargs):
    assert prompts == ["find the cat"] * len(completions)
    return [float(len(c)) for c in completions]


def trl_with_ids(prompts, completions, completion_ids, **kwargs):
    return [float(len(c)) for c in completion_ids]


def trl_column(completions, solution, **kwargs):
    return [float(s in c) for c, s in zip(completions, solution)]


def trl_keyword_only(*, completions, **kwargs):
    return [float(len(c)) for c in completions]


def trl_kwargs_only(**kwargs):
    return [float(len(c)) for c in kwargs["completions"]]


def lit_texts(texts):
    return [float(len(t)) for t in texts]


def lit_comps(comps, **kw):
    assert "completions" not in kw and kw["prompts"][0] == "find the cat"
    return [float(len(c)) for c in comps]


def lit_declared(comps, prompts):
    return [float(p.endswith("cat")) * len(c) for c, p in zip(comps, prompts)]


@pytest.mark.parametrize("fn, expected", [
    (trl_completions, [3.0, 7.0]), (trl_prompts_first, [3.0, 7.0]), (trl_with_ids, [2.0, 4.0]),
    (trl_column, [1.0, 0.0]), (trl_keyword_only, [3.0, 7.0]), (trl_kwargs_only, [3.0, 7.0]),
    (lit_texts, [3.0, 7.0]), (lit_comps, [3.0, 7.0]), (lit_declared, [3.0, 7.0]),
])
def test_trl_signatures_and_lit_vr1_signatures_both_work(fn, expected):
    """TRL calls every reward function by keyword (``prompts`` first, so completions cannot go
    by position); lit-vr1's older style, completions first whatever the name, still works."""
    contexts = [ctx(0, ids=[5, 6]), ctx(1, ids=[5, 6, 7, 8])]
    assert FunctionReward(fn=fn)(["cat", "no dog!"], contexts) == expected


def test_the_call_plan_names_how_completions_go():
    assert call_plan(trl_completions).by_keyword and call_plan(trl_prompts_first).by_keyword
    assert call_plan(trl_kwargs_only).by_keyword and call_plan(trl_keyword_only).by_keyword
    assert call_plan(lambda prompts, **kw: []).by_keyword  # TRL's f(prompts, **kwargs) reads kwargs["completions"]
    plan = call_plan(lit_comps)
    assert not plan.by_keyword and plan.positional == "comps" and plan.takes_all
    assert not call_plan(lambda *texts: []).by_keyword
    assert not call_plan(len).by_keyword  # a builtin: by position


def test_completion_ids_and_trainer_state():
    seen = {}

    def fn(completions, completion_ids, trainer_state, **kwargs):
        seen.update(ids=completion_ids, state=trainer_state, step=kwargs["step"])
        return [trainer_state.global_step / 10] * len(completions)

    assert FunctionReward(fn=fn)(["a", "b"], [ctx(0, step=7, ids=[1, 2]), ctx(1, step=7, ids=[3])]) == [0.7, 0.7]
    assert seen == {"ids": [[1, 2], [3]], "state": TrainerState(global_step=7), "step": 7}
    # contexts without token ids: no completion_ids keyword; a function that needs them is told why
    with pytest.raises(BrokenReward, match=r"reward 'fn': .*missing a required argument: "
                                           r"'completion_ids'.*completion_ids are not recorded by this rollout"):
        FunctionReward(fn=fn, on_error="nan")(["a"], [ctx(0)])  # a broken reward: masked by nothing
    got = []
    FunctionReward(fn=lambda completions, **kw: got.append(sorted(kw)) or [1.0])(["a"], [ctx(0)])
    assert got == [sorted(FIELDS)]


def test_each_data_column_is_its_own_keyword_list_unless_its_name_is_taken():
    """TRL passes every dataset column as a keyword list; lit-vr1's are the data line's other
    fields (``metadata``), each passed on its own too, None where a sample lacks it. A column
    named like a keyword already passed (``sources``, ``prompts``, ...) stays in metadata only."""
    seen = {}

    def fn(completions, answer, **kwargs):
        seen.update(answer=answer, **{k: kwargs[k] for k in ("difficulty", "sources", "metadata")})
        return [float(c == a) for c, a in zip(completions, answer)]

    contexts = [ctx(0, answer="4", difficulty=1, sources="column"), ctx(1, answer="5", sources="column")]
    assert FunctionReward(fn=fn)(["4", "6"], contexts) == [1.0, 0.0]
    assert seen["answer"] == ["4", "5"] and seen["difficulty"] == [1, None]
    assert seen["sources"] == ["data.jsonl:1", "data.jsonl:2"]  # lit-vr1's keyword, not the column
    assert seen["metadata"][0] == {"answer": "4", "difficulty": 1, "sources": "column"}
    # the name of the parameter completions go to by position is not taken by a column either
    assert FunctionReward(fn=lit_comps)(["ab"], [ctx(0, comps="x")]) == [2.0]
    # a function without **kwargs gets only the columns it declares
    assert FunctionReward(fn=lambda completions, difficulty: difficulty)(["a"], [ctx(0, difficulty=0.5)]) == [0.5]


# -- completions as chat messages -------------------------------------------------------------------
def trl_vlm_reward(completions, prompts, **kwargs):
    """TRL VLM reward code: completions and prompts of a conversational dataset are messages."""
    assert prompts[0][-1]["content"][-1]["text"] == "find the cat"
    return [float("cat" in completion[0]["content"]) for completion in completions]


def test_chat_completions_give_trls_conversational_form():
    reward = FunctionReward(fn=trl_vlm_reward, completions="chat")
    assert reward(["a cat", "a dog"], [ctx(0), ctx(1)]) == [1.0, 0.0]
    seen = {}

    def fn(completions, prompts, **kw):
        seen.update(completions=completions, prompts=prompts)
        return [1.0] * len(completions)

    FunctionReward(fn=fn, completions="chat")(["a cat"], [ctx(0)])
    assert seen["completions"] == [[{"role": "assistant", "content": "a cat"}]] and seen["prompts"] == [MESSAGES]
    seen["prompts"][0][0]["content"].clear()  # the function's copy: the sample's messages are untouched
    assert MESSAGES[0]["content"]
    # a context without messages: one user turn holding the prompt text
    FunctionReward(fn=fn, completions="chat")(["x"], [SampleContext(id="bare", prompt="hi", solution="")])
    assert seen["prompts"] == [[{"role": "user", "content": [{"type": "text", "text": "hi"}]}]]
    with pytest.raises(ValueError, match="completions='messages' is not valid; choose one of text, chat"):
        FunctionReward(fn=fn, completions="messages")


def test_chat_style_code_given_text_says_to_set_the_option():
    with pytest.raises(RewardError, match=r"reward 'trl_vlm_reward' raised on sample 's0' \(data.jsonl:1\): TypeError: "
                                          r"string indices must be integers.*set completions: chat"):
        FunctionReward(fn=trl_vlm_reward)(["a cat"], [ctx(0)])

    def text_code(completions, **kw):
        return [c["content"] for c in completions]  # the same TypeError with chat on: no hint then

    with pytest.raises(RewardError) as info:
        FunctionReward(fn=text_code, completions="chat")(["a"], [ctx(0)])
    assert "set completions: chat" not in str(info.value)


def test_numpy_and_tensor_results_are_taken_as_trl_takes_them():
    import numpy as np

    assert FunctionReward(fn=lambda completions, **kw: np.ones(len(completions)))(["a"], [ctx()]) == [1.0]
    assert FunctionReward(fn=lambda completions, **kw: torch.zeros(len(completions)))(["a"], [ctx()]) == [0.0]

    async def remote(completions, **kw):
        return [1.0] * len(completions)

    with pytest.raises(TypeError, match="is async; FunctionReward calls plain functions"):
        FunctionReward(fn=remote)  # refused when built, as the README says

    class AsyncCall:
        async def __call__(self, completions, **kw):
            return [1.0] * len(completions)

    with pytest.raises(TypeError, match="is async"):
        FunctionReward(fn=AsyncCall())


def returns(value):
    def fn(completions, **kwargs):
        return value(len(completions)) if callable(value) else value
    return fn


@pytest.mark.parametrize("value, message", [
    (0.5, r"returned float; return a list"),
    ("0.5", r"returned str; return a list"),
    (None, r"returned NoneType; return a list"),
    (lambda n: (x for x in [1.0] * n), r"returned generator; return a list"),
    (lambda n: __import__("numpy").ones((n, 1)), r"returned an array of shape \(2, 1\); return one number per completion"),
    (lambda n: torch.ones(1, n), r"returned an array of shape \(1, 2\)"),
    (lambda n: [1.0] * (n + 1), r"returned 3 values for 2 completions"),
])
def test_a_broken_function_stops_the_run_under_on_error_nan_too(value, message):
    """What no sample can cause (a return that is not one number per completion, a call the
    function cannot take, async) is a broken reward: masking it with on_error='nan' would train the
    whole run without it, under a warning that blamed a data row."""
    reward = FunctionReward(fn=returns(value), name="broken", on_error="nan")
    with pytest.raises(BrokenReward, match=message) as info:
        reward(["a", "b"], [ctx(0), ctx(1)])
    assert "not a bad sample" in str(info.value) and "sample 's0'" not in str(info.value)
    assert reward.errors == 0


def test_a_reward_weight_must_be_a_finite_number():
    for weight in (float("nan"), float("inf"), -float("inf"), "0.5", True):
        with pytest.raises(ValueError, match=r"reward 'lenr': weight=.* is not a finite number"):
            FunctionReward(fn=lambda completions, **kw: [0.0] * len(completions), name="lenr", weight=weight)
    assert FunctionReward(fn=returns([1.0]), weight=0).weight == 0.0


def test_a_callable_object_or_partial_is_named_after_what_it_calls():
    import functools

    class LengthScore:
        def __call__(self, completions, **kwargs):
            return [len(c) / 10 for c in completions]

    def scaled(completions, factor, **kwargs):
        return [factor] * len(completions)

    assert FunctionReward(fn=LengthScore()).name == "LengthScore"
    assert FunctionReward(fn=functools.partial(scaled, factor=2.0)).name == "scaled"
    assert FunctionReward(fn=LengthScore())(["ab"], [ctx()]) == [0.2]


# -- plain functions in rewards=[...] ---------------------------------------------------------------
def test_plain_functions_are_wrapped_and_anything_else_is_named_by_position():
    iou = IoUReward()
    rewards = as_rewards([iou, trl_completions])
    assert rewards[0] is iou and isinstance(rewards[1], FunctionReward) and rewards[1].name == "trl_completions"
    assert [r.name for r in as_rewards(trl_column)] == ["trl_column"]  # one function alone, as TRL takes it
    for bad, msg in [
        ([iou, 3], r"model.rewards\[1\]: 3 \(int\) is not a reward: give a lit_vr1.rewards.Reward or a function"),
        ([IoUReward], r"model.rewards\[0\]: the class IoUReward, not an instance: write IoUReward\(\)"),
        (["my_rewards.py:f"], r"is not a reward.*FunctionReward\(fn='my_rewards.py:f'\)"),
        ([torch.nn.Linear(1, 1)], r"model.rewards\[0\]: a Linear model is not a reward"),
        ("IoUReward", "is not a list of rewards"),
    ]:
        with pytest.raises(TypeError, match=msg):
            as_rewards(bad)


def test_grpo_module_takes_a_plain_function_refuses_junk_and_saves_and_resumes(samples, tmp_path):
    from lightning.pytorch import Trainer
    from lightning.pytorch.callbacks import ModelCheckpoint
    from torch.utils.data import DataLoader

    from lit_vr1.config import GRPOConfig
    from lit_vr1.data.datamodule import collate
    from lit_vr1.grpo import GRPOModule

    with pytest.raises(TypeError, match=r"model.rewards\[1\]: None \(NoneType\) is not a reward"):
        GRPOModule(model="tiny:qwen2_5_vl", rewards=[trl_completions, None])
    steps = []

    def my_reward(completions, trainer_state, **kwargs):  # TRL's reward_funcs habit
        steps.append(trainer_state.global_step)
        return [len(c) / 10 for c in completions]

    def module():
        return GRPOModule(model="tiny:qwen2_5_vl", rewards=[my_reward], seed=0,
                          grpo=GRPOConfig(num_generations=2, max_completion_length=4, beta=0.0))

    first = module()
    assert isinstance(first.rewards[0], FunctionReward) and "rewards" not in first.hparams

    def fit(m, max_steps, ckpt_path=None):
        trainer = Trainer(accelerator="cpu", devices=1, max_steps=max_steps, logger=False, enable_progress_bar=False,
                          enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path,
                          callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=1)])
        trainer.fit(m, DataLoader(samples[:4], batch_size=2, collate_fn=collate), ckpt_path=ckpt_path)
        return m

    fit(first, 1)
    assert (tmp_path / "ckpt" / "last.ckpt").is_file()
    hparams = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["hyper_parameters"]
    assert "rewards" not in hparams
    assert fit(module(), 2, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt")).global_step == 2
    assert steps == [0, 1]


# -- rewards that fail or score nothing say so, once --------------------------------------------------
class Flaky(Reward):
    default_name = "flaky"

    def score(self, completions, contexts):
        if any(c == "boom" for c in completions):
            raise ValueError("cannot parse")
        return [1.0] * len(completions)


def test_masked_failures_warn_once_with_the_reward_the_sample_and_the_metric():
    reward = Flaky(on_error="nan")
    with pytest.warns(UserWarning, match=r"reward 'flaky' raised on sample 's1' \(data.jsonl:2\): ValueError: cannot "
                                         r"parse\. With on_error='nan' its failures are masked.*train/reward/flaky/errors"):
        scores = score_all([reward], ["ok", "boom"], [ctx(0), ctx(1)])
    assert scores.errors == [1]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        score_all([reward], ["boom", "boom"], [ctx(0), ctx(1)])  # counted, not warned again
    assert reward.errors == 3


def test_a_batch_reward_masked_whole_warns_once_with_its_first_sample():
    class Judge(Flaky):
        default_name = "judge"
        rescore_singly = False

    with pytest.warns(UserWarning, match=r"reward 'judge' raised on a batch of 2 completions \(first sample 's0' "
                                         r"\(data.jsonl:1\)\): ValueError: cannot parse"):
        score_all([Judge(on_error="nan")], ["boom", "ok"], [ctx(0), ctx(1)])


class Never(Reward):
    """Returns nan for every completion: it applies to nothing it is given."""

    default_name = "never"

    def score(self, completions, contexts):
        return [math.nan] * len(completions)


class Const(Reward):
    default_name = "const"

    def score(self, completions, contexts):
        return [1.0] * len(completions)


def test_a_reward_that_returns_nan_for_all_it_is_routed_to_warns_once_after_three_rollouts_and_64_completions():
    import warnings

    never, few, const = Never(), Never(name="few"), Const()
    completions, contexts = ["a"] * 32, [ctx(i) for i in range(32)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(5):  # 5 rollouts in a row, but 10 completions: a few prompts it does not apply to
            score_all([few, const], ["a", "b"], [ctx(0), ctx(1)])
        for _ in range(2):
            score_all([never, const], completions, contexts)
        assert not caught  # two rollouts: not yet
        score_all([never, const], completions, contexts)
        for _ in range(3):
            score_all([never, const], completions, contexts)
    texts = [str(w.message) for w in caught]
    assert len(texts) == 1 and texts[0].startswith("reward 'never' returned nan (not applicable) for every completion "
                                                   "routed to it in 3 rollouts in a row (96 completions; e.g. "
                                                   "sample 's0' (data.jsonl:1))"), texts
    assert "route it with tasks" in texts[0] and "shown once" in texts[0]


def test_task_routing_that_leaves_a_reward_nothing_never_warns_and_a_score_resets_the_count():
    import warnings

    class Sometimes(Reward):  # nan for two rollouts, then a score, then nan for two again
        default_name = "sometimes"
        calls = 0

        def score(self, completions, contexts):
            self.calls += 1
            return [1.0 if self.calls == 3 else math.nan] * len(completions)

    routed = Never(tasks=["math"])  # the rollouts hold no math sample: legitimately nothing to score
    sometimes, const = Sometimes(), Const()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(5):
            scores = score_all([routed, sometimes, const], ["a", "b"], [ctx(0, task="rec"), ctx(1, task="rec")])
    assert scores.total.tolist() == [1.0, 1.0]


def test_infinite_values_warn_once_and_rewards_without_a_value_log_no_std():
    class Inf(Reward):
        default_name = "inf"

        def score(self, completions, contexts):
            return [math.inf, 1.0][: len(completions)]

    with pytest.warns(UserWarning, match=r"reward 'inf' returned inf on sample 's0' \(data.jsonl:1\): infinite values "
                                         r"are masked.*train/reward/inf/nonfinite"):
        scores = score_all([Inf(), Never()], ["a", "b"], [ctx(0), ctx(1)])
    stats = scores.stats()
    assert scores.nonfinite == [1, 0] and stats["reward/inf/std"] == 0.0  # one value: a std of 0
    assert math.isnan(stats["reward/never/mean"]) and math.isnan(stats["reward/never/std"])  # none: nothing logged
    nothing = score_all([Never(name="n2")], ["a"], [ctx(0)]).stats()
    assert math.isnan(nothing["reward/total/std"]) and nothing["reward/unscored"] == 1.0


def test_the_skip_message_covers_infinite_rewards():
    from lit_vr1.grpo import GRPOModule

    learner = SimpleNamespace(reduce_sum=lambda t: t, device="cpu")
    assert GRPOModule._skip_flags(learner, 0.0, 0.0, False) == (False, False, False)  # finite; no scored token
    reason = GRPOModule._reason(learner, 0.0, 0.0, False, False)
    assert "no reward gave a finite value: each was nan, not applicable or failed, or infinite" in reason
    assert "truncated" not in reason
    # with truncated completions left out of the loss, that is named too
    learner.config = SimpleNamespace(mask_truncated_completions=True)
    reason = GRPOModule._reason(learner, 0.0, 0.0, False, False)
    assert ("each completion was unscored (no reward gave a finite value" in reason
            and "model.grpo.mask_truncated_completions=true leaves truncated ones out of the loss" in reason)


def test_a_rollout_records_each_completions_token_ids_up_to_its_end(tiny_qwen25, samples):
    """What a TRL function's ``completion_ids`` holds in training: each completion's tokens,
    its end of turn included, no padding; they decode to the completion's text."""
    from lit_vr1.config import SamplingConfig
    from lit_vr1.generation import generate
    from lit_vr1.models.families import vision_token_ids

    model, processor = tiny_qwen25
    torch.manual_seed(0)
    cfg = SamplingConfig(max_completion_length=12, suppress_ids=vision_token_ids(processor))
    rollout = generate(model, processor, samples[:2], 3, cfg)
    for row, ctx in enumerate(rollout.contexts):
        n = int(rollout.completion_mask[row].sum())
        assert ctx.completion_ids == rollout.completion_ids[row, :n].tolist() and len(ctx.completion_ids) == n
        assert processor.decode(ctx.completion_ids, skip_special_tokens=True) == rollout.completions[row]


def test_a_wrapper_taking_args_gets_the_completions_first_and_a_default_is_kept():
    """A decorator's ``wrapper(*args, **kwargs)`` around an older-style reward passes the
    completions on by position, as before; a data column named like a parameter with a default
    does not replace the default."""
    def texts_reward(texts):
        return [float(len(t)) for t in texts]

    def wrapper(*args, **kwargs):  # no functools.wraps
        return texts_reward(*args)

    contexts = [SampleContext(id="a", prompt="p", solution="", image_sizes=[], input_sizes=[], metadata={"weight": 3})]
    assert FunctionReward(fn=wrapper, name="wrapped")(["abcd"], contexts) == [4.0]

    def weighted(completions, weight=1.0, **kwargs):
        return [weight * len(c) for c in completions]

    assert FunctionReward(fn=weighted)(["ab"], contexts) == [2.0]  # the row's "weight" stays in metadata
    assert call_plan(lambda **kw: []).by_keyword and not call_plan(lambda *a, **kw: []).by_keyword
