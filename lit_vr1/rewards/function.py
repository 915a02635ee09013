"""Your own reward as a plain function, written as for TRL's GRPOTrainer.

A TRL reward is ``def my_reward(completions, **kwargs) -> list[float]``; TRL calls it with
keywords only: ``prompts``, ``completions``, ``completion_ids``, ``trainer_state`` and each
other column of the data as a list with one entry per completion.
:class:`FunctionReward` calls such a function the same way (see :func:`call_plan` for how
it tells a TRL signature from lit-vr1's older "completions first, by position") and treats
what it returns like any built-in reward: ``None`` or ``nan`` means "not applicable here",
routing by ``tasks``, ``weight``, ``name`` and ``on_error`` behave the same.

In YAML::

    model:
      rewards:
        - class_path: lit_vr1.rewards.FunctionReward
          init_args:
            fn: my_rewards.py:short_answer   # or my_package.rewards.short_answer
            weight: 0.5
            completions: chat                # TRL's conversational form (default: text)

In Python a plain function in ``GRPOModule(rewards=[...])`` is wrapped in a
:class:`FunctionReward` (see :func:`as_rewards`).
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
import math
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import torch

from lit_vr1.rewards.base import BrokenReward, Reward, SampleContext, has_answer, warn_once

# the keyword lists a function receives, one entry per completion (``step`` is one int,
# ``trainer_state`` one :class:`TrainerState`); ``completion_ids`` too when the rollout recorded them
FIELDS = ("prompts", "solution", "images", "image_sizes", "input_sizes", "task", "ids", "sources",
          "completion_lengths", "truncated", "metadata", "step", "trainer_state")
COMPLETION_IDS = "completion_ids"
COMPLETIONS_FORMS = ("text", "chat")
# names never taken by a data column (each column of ``metadata`` is passed as its own keyword list otherwise)
RESERVED = (*FIELDS, COMPLETION_IDS, "completions")
CHAT_HINT = "string indices must be integers"  # the TypeError of chat-style code given text
MISSING_ARGUMENT = re.compile(r"missing a required argument: '(\w+)'")  # inspect.Signature.bind's message


@dataclass(frozen=True)
class TrainerState:
    """What a reward function gets as ``trainer_state``: ``global_step``, the optimiser steps
    applied so far (0 during the first rollout). TRL passes its ``transformers.TrainerState``,
    whose ``global_step`` is what reward schedules read; its other fields (``epoch``,
    ``max_steps``, ``log_history``, ...) are not here."""

    global_step: int = 0


def load_function(spec: str) -> Callable[..., Any]:
    """The function named by ``spec``: "package.module.function", "package.module:function"
    or "path/to/file.py:function" (a path relative to the working directory).
    Errors say which part was not found."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"FunctionReward: fn={spec!r} must name a function, e.g. my_rewards.py:my_reward or "
                         "my_package.rewards.my_reward")
    if ":" in spec:
        module_part, _, name = spec.rpartition(":")
    else:
        module_part, _, name = spec.rpartition(".")
        if name == "py":  # "my_rewards.py": a file without the function's name
            raise ValueError(f"FunctionReward: fn={spec!r} names a file but no function in it: add :<function>, "
                             f"e.g. {spec}:my_reward")
    if not module_part or not name:
        raise ValueError(f"FunctionReward: fn={spec!r} must be module.function, module:function or file.py:function")
    if module_part.endswith(".py"):
        path = Path(module_part).expanduser().resolve()
        if not path.is_file():
            raise ValueError(f"FunctionReward: fn={spec!r}: the file {path} does not exist")
        mod_name = f"lit_vr1_user_rewards.{path.stem}"
        module_spec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(module_spec)  # type: ignore[arg-type]
        sys.modules[mod_name] = module
        module_spec.loader.exec_module(module)  # type: ignore[union-attr]
    else:
        if "" not in sys.path and str(Path.cwd()) not in sys.path:
            sys.path.insert(0, str(Path.cwd()))  # a console script does not see the working directory otherwise
        try:
            module = importlib.import_module(module_part)
        except ModuleNotFoundError as exc:
            raise ValueError(f"FunctionReward: fn={spec!r}: cannot import module {module_part!r} ({exc})") from exc
    fn = getattr(module, name, None)
    if not callable(fn):
        functions = [k for k, v in vars(module).items() if callable(v) and not k.startswith("_")
                     and getattr(v, "__module__", None) == module.__name__]
        close = difflib.get_close_matches(name, functions, n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(close)}?" if close else (
            f" (its functions: {', '.join(functions)})" if functions else "")
        raise ValueError(f"FunctionReward: fn={spec!r}: module {module_part!r} has no function {name!r}{hint}")
    return fn


def data_columns(contexts: list[SampleContext], taken: Iterable[str]) -> dict[str, list[Any]]:
    """Each key of the samples' ``metadata`` (the data line's other fields) as a list with one
    entry per completion (None where a sample lacks it), in order of first appearance; keys in
    ``taken`` (the names already passed) are left out: they stay in ``metadata``."""
    taken = set(taken)
    keys = dict.fromkeys(k for c in contexts for k in c.metadata if k not in taken)
    return {k: [c.metadata.get(k) for c in contexts] for k in keys}


def chat_prompt(ctx: SampleContext) -> list[dict]:
    """The prompt as TRL's conversational form: the sample's chat turns (image items without
    the image), or one user turn holding the prompt text when they are not known."""
    if ctx.messages:
        return [dict(m, content=[dict(item) for item in m["content"]] if isinstance(m["content"], list)
                     else m["content"]) for m in ctx.messages]
    return [{"role": "user", "content": [{"type": "text", "text": ctx.prompt}]}]


def function_kwargs(contexts: list[SampleContext], form: str = "text") -> dict[str, Any]:
    """The keyword arguments a TRL-style reward function gets for a batch: per completion
    lists of the prompt (its text; with ``form="chat"`` its chat turns), solution, images
    (PIL), image sizes, task, sample id, "file:line", token count, truncation flag and
    metadata dict; ``step`` is the optimiser step (one int) and ``trainer_state`` a
    :class:`TrainerState`; ``completion_ids`` when every context carries them. A row without a
    solution (unlabelled: no field, null or empty) gets None, as TRL passes a column's nulls; an
    empty string would read as an answer that is the empty text."""
    step = contexts[0].global_step if contexts else 0
    out = {
        "prompts": [chat_prompt(c) if form == "chat" else c.prompt for c in contexts],
        "solution": [c.solution if has_answer(c.solution) else None for c in contexts],
        "images": [list(c.images) for c in contexts],
        "image_sizes": [list(c.image_sizes) for c in contexts],
        "input_sizes": [list(c.input_sizes) for c in contexts],
        "task": [c.task for c in contexts],
        "ids": [c.id for c in contexts],
        "sources": [c.source for c in contexts],
        "completion_lengths": [c.completion_length for c in contexts],
        "truncated": [c.truncated for c in contexts],
        "metadata": [dict(c.metadata) for c in contexts],
        "step": step,
        "trainer_state": TrainerState(global_step=step),
    }
    if contexts and all(c.completion_ids is not None for c in contexts):
        out[COMPLETION_IDS] = [list(c.completion_ids) for c in contexts]
    return out


def completion_items(completions: list[str], form: str) -> list[Any]:
    """The completions as the function gets them: texts, or with ``form="chat"`` TRL's
    conversational form, one assistant turn each: ``[{"role": "assistant", "content": text}]``."""
    if form == "chat":
        return [[{"role": "assistant", "content": text}] for text in completions]
    return list(completions)


@dataclass(frozen=True)
class CallPlan:
    """How a function is called: ``by_keyword`` (``completions=`` as TRL does) or the
    completions as the first positional argument (``positional``: that parameter's name);
    ``takes_all``: it has ``**kwargs``; ``names``: the keywords it declares; ``defaulted``: those
    with a default value (a data column of the same name does not replace it); ``signature``:
    None when it cannot be read."""

    by_keyword: bool
    takes_all: bool
    names: frozenset[str]
    positional: str | None = None
    defaulted: frozenset[str] = frozenset()
    signature: inspect.Signature | None = None


def call_plan(fn: Callable[..., Any]) -> CallPlan:
    """How :class:`FunctionReward` calls ``fn``. The completions go by keyword
    (``completions=``, as TRL calls) when ``fn`` has a parameter named ``completions`` (not
    positional-only), when its first positional parameter is one of the names passed by
    keyword (``prompts``, ``completion_ids``, ``solution``, ...: TRL's ``f(prompts, **kw)``),
    or when it takes keywords only (``f(**kwargs)``). Otherwise they go first by position,
    whatever that parameter's name (``f(texts)``, ``f(comps, **kw)``, and ``f(*args, **kwargs)``
    such as a decorator's wrapper: lit-vr1's older style). A callable whose signature cannot be
    read gets the completions by position and nothing else."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return CallPlan(by_keyword=False, takes_all=False, names=frozenset())
    params = list(signature.parameters.values())
    kind = inspect.Parameter
    takes_all = any(p.kind is kind.VAR_KEYWORD for p in params)
    named = [p for p in params if p.kind in (kind.POSITIONAL_OR_KEYWORD, kind.KEYWORD_ONLY)]
    names = frozenset(p.name for p in named)
    plan = dict(takes_all=takes_all, signature=signature,
                defaulted=frozenset(p.name for p in named if p.default is not p.empty))
    first = next((p for p in params if p.kind in (kind.POSITIONAL_ONLY, kind.POSITIONAL_OR_KEYWORD)), None)
    if "completions" in names:
        return CallPlan(True, names=names, **plan)
    if first is None:
        var_positional = any(p.kind is kind.VAR_POSITIONAL for p in params)
        return CallPlan(takes_all and not var_positional, names=names, **plan)
    if first.kind is kind.POSITIONAL_OR_KEYWORD and first.name in RESERVED:
        return CallPlan(True, names=names, **plan)
    return CallPlan(False, names=names - {first.name}, positional=first.name, **plan)


# the completion's parameter in verl's compute_score(data_source, solution_str, ground_truth,
# extra_info) and EasyR1's per-sample compute_score(predict_str, ground_truth): one completion per call
PER_SAMPLE_NAMES = ("solution_str", "predict_str")


def per_sample_signature(plan: CallPlan) -> str | None:
    """The required parameters that mark a per-sample score function (verl's, EasyR1's), which
    FunctionReward cannot call with its batch lists, or None."""
    if plan.signature is None:
        return None
    required = [p.name for p in plan.signature.parameters.values()
                if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if any(name in PER_SAMPLE_NAMES for name in required):
        return f"({', '.join(required)})"
    return None


def per_sample_wrapper(plan: CallPlan, name: str) -> str:
    """The batch function that calls a per-sample score function with its own arguments: verl's
    ``(data_source, solution_str, ground_truth, extra_info)`` from the data's ``data_source``
    column and each row's metadata, EasyR1's ``(predict_str, ground_truth)``."""
    params = [p.name for p in plan.signature.parameters.values() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    given = {"solution_str": "c", "predict_str": "c", "ground_truth": "s", "data_source": "d", "extra_info": "m"}
    args = ", ".join(f"{p}={given[p]}" if p in given else f"{p}=..." for p in params if p in given or
                     plan.signature.parameters[p].default is inspect.Parameter.empty)
    lists = [("c", "completions"), ("s", "solution")]
    if "data_source" in params:
        lists.append(("d", "kwargs['data_source']"))
    if "extra_info" in params:
        lists.append(("m", "kwargs['metadata']"))
    names, sources = ", ".join(v for v, _ in lists), ", ".join(src for _, src in lists)
    return (f"def my_reward(completions, solution, **kwargs): return [{name}({args}) for {names} in zip({sources})] "
            "(a data_source column of the data reaches it as kwargs['data_source']; the line's other fields are "
            "kwargs['metadata'])")


def chat_hint(exc: Exception) -> str:
    """What to set when ``exc`` is the sign of code that reads chat messages but got text."""
    if isinstance(exc, TypeError) and CHAT_HINT in str(exc):
        return ("; the function seems to read chat messages (completion[0]['content'], as TRL gives a conversational "
                "dataset's completions, and every VLM dataset is one): set completions: chat in its init_args "
                "(FunctionReward(..., completions='chat'))")
    return ""


class FunctionReward(Reward):
    """A reward computed by your function, written as for TRL's GRPOTrainer:
    ``fn(completions, **kwargs) -> list[float]`` (or ``fn(prompts, completions,
    completion_ids, **kwargs)``, ``fn(completions, solution, **kwargs)``, ...).

    The function gets ``completions`` (by keyword, or by position for a function whose first
    parameter has another name, see :func:`call_plan`), the lists of :func:`function_kwargs`
    (``prompts``, ``solution``, ``images``, ``image_sizes``, ``input_sizes``, ``task``,
    ``ids``, ``sources``, ``completion_lengths``, ``truncated``, ``metadata``), ``step``,
    ``trainer_state`` (a :class:`TrainerState`: ``global_step``) and ``completion_ids`` when
    the rollout recorded them; and each key of the samples' ``metadata`` (the data line's
    other fields, TRL's dataset columns) as its own list, unless its name is one of those or a
    parameter the function declares with a default (it then stays in ``metadata`` only; see
    :func:`data_columns`). A function that does not
    take ``**kwargs`` gets only the names it declares. It must return one number (or None,
    meaning not applicable; a dict's ``"score"``, as verl's score functions return) per
    completion; a non-number or an exception is an error under the
    ``on_error`` rule, named with the reward and sample; a wrong length, a return that is not
    a list (or 1-D array), a call the function cannot take, or an ``async def`` is a broken
    reward (:class:`~lit_vr1.rewards.base.BrokenReward`), which stops the run under
    ``on_error="nan"`` too.

    Args:
        fn: the function, or where it lives: "my_rewards.py:my_reward" (a file),
            "my_package.rewards.my_reward" or "my_package.rewards:my_reward" (a module).
        completions: "text" (default): each completion is its text, each prompt its text;
            "chat": TRL's conversational form, each completion ``[{"role": "assistant",
            "content": text}]`` and each prompt its chat turns (code that reads
            ``completion[0]["content"]``).
        **kwargs: ``weight``, ``name`` (default: the function's name), ``tasks``,
            ``on_error`` of :class:`Reward`.
    """

    default_name = "function"

    def __init__(self, fn: str | Callable[..., Any], completions: Literal["text", "chat"] = "text",
                 **kwargs: Any) -> None:
        func = load_function(fn) if isinstance(fn, str) else fn
        if not callable(func) or isinstance(func, type):
            raise ValueError(f"FunctionReward: fn={fn!r} is not a function; give a function or where it lives, "
                             "e.g. my_rewards.py:my_reward")
        if completions not in COMPLETIONS_FORMS:
            raise ValueError(f"FunctionReward: completions={completions!r} is not valid; choose one of "
                             f"{', '.join(COMPLETIONS_FORMS)} (chat: TRL's conversational form)")
        if kwargs.get("name") is None:  # the CLI passes name=None explicitly
            kwargs["name"] = function_name(func)
        super().__init__(**kwargs)
        self.fn = func
        self.completions = completions
        self.spec = fn if isinstance(fn, str) else f"{getattr(func, '__module__', None) or type(func).__module__}." \
                                                   f"{function_name(func)}"
        if is_async(func):
            raise TypeError(f"FunctionReward: {self.spec} is async; FunctionReward calls plain functions (one call per "
                            "rollout batch): make it a plain def")
        self.plan = call_plan(func)
        per_sample = per_sample_signature(self.plan)
        if per_sample:
            raise TypeError(f"FunctionReward: {self.spec} takes {per_sample}, a per-sample score function as verl and "
                            "EasyR1 call it (one completion and its answer at a time); FunctionReward calls a TRL-style "
                            "function once per batch: fn(completions, **kwargs) -> list of floats, the answers in "
                            f"kwargs['solution']. Wrap it: {per_sample_wrapper(self.plan, function_name(func))}")

    def arguments(self, completions: list[str], contexts: list[SampleContext]) -> tuple[list[Any], dict[str, Any]]:
        """(positional, keyword) arguments of the call for one batch, see :func:`call_plan`."""
        plan = self.plan
        items = completion_items(completions, self.completions)
        kwargs = function_kwargs(contexts, self.completions)
        kwargs.update(data_columns(contexts, {*RESERVED, *plan.defaulted, *([plan.positional] if plan.positional else [])}))
        shadowed = sorted(plan.defaulted & {k for c in contexts for k in c.metadata} - set(RESERVED))
        if shadowed:
            warn_once(self, "shadowed", f"reward {self.name!r}: {self.spec} declares {', '.join(shadowed)} with a default, "
                      "and the data has a column of that name: the parameter keeps its default and the column stays "
                      "in metadata (TRL would pass the column); to get the column, drop the default or read "
                      f"kwargs['metadata'][i][{shadowed[0]!r}]")
        if plan.by_keyword:
            kwargs["completions"] = items
        if not plan.takes_all:
            kwargs = {k: v for k, v in kwargs.items() if k in plan.names}
        return ([] if plan.by_keyword else [items]), kwargs

    def check_call(self, args: list[Any], kwargs: dict[str, Any]) -> None:
        """Raise :class:`BrokenReward` saying what the function is given when its signature cannot take
        it; a plain TypeError (a sample's failure, which ``on_error="nan"`` masks) when all it misses
        is a data column no row of this batch has, which another batch may have."""
        if self.plan.signature is None:
            return
        try:
            self.plan.signature.bind(*args, **kwargs)
        except TypeError as exc:
            how = "by keyword (completions=...)" if self.plan.by_keyword else "as its first argument"
            given = ", ".join(sorted(set(kwargs) - {"completions"}))
            note = ""
            if COMPLETION_IDS in self.plan.names and COMPLETION_IDS not in kwargs:
                note = ("; completion_ids are not recorded by this rollout: give the parameter a default "
                        "(completion_ids=None) or read completion_lengths")
            keywords = f"the keywords {given}" if given else "no other keyword"
            missing = MISSING_ARGUMENT.search(str(exc))
            if missing and missing.group(1) not in RESERVED:
                raise TypeError(f"{self.spec} needs {missing.group(1)!r}, a data column no row of this batch has (it "
                                f"gets the completions {how} and {keywords}); give the parameter a default, or the rows "
                                "the column") from None
            raise BrokenReward(f"reward {self.name!r}: {self.spec} cannot be called as FunctionReward calls it ({exc}): "
                               f"it gets the completions {how} and {keywords}{note}{BrokenReward.SUFFIX}") from None

    def error_hint(self, exc: Exception) -> str:
        return chat_hint(exc) if self.completions == "text" else ""

    def score(self, completions: list[str], contexts: list[SampleContext]) -> list[float]:
        args, kwargs = self.arguments(completions, contexts)
        self.check_call(args, kwargs)
        values = self.fn(*args, **kwargs)
        if inspect.isawaitable(values):
            close = getattr(values, "close", None)
            if close is not None:
                close()  # never awaited: no "coroutine was never awaited" warning
            raise BrokenReward(f"reward {self.name!r}: {self.spec} returned an awaitable (it is async); FunctionReward "
                               f"calls plain functions: make it a plain def{BrokenReward.SUFFIX}")
        shape = getattr(values, "shape", None)
        if shape is not None and len(shape) != 1 and not isinstance(values, (list, tuple)):
            raise BrokenReward(f"reward {self.name!r}: {self.spec} returned an array of shape {tuple(shape)}; return one "
                               f"number per completion (a list or a 1-D array of {len(completions)}){BrokenReward.SUFFIX}")
        if hasattr(values, "tolist") and not isinstance(values, (list, tuple)):
            values = values.tolist()  # a numpy array or a tensor, as TRL takes
        if not isinstance(values, (list, tuple)):
            raise BrokenReward(f"reward {self.name!r}: {self.spec} returned {type(values).__name__}; return a list with "
                               f"one float per completion{BrokenReward.SUFFIX}")
        out = []
        for v in values:
            if isinstance(v, dict) and "score" in v:  # verl's per-sample {"score": ..., "acc": ..., ...}
                v = v["score"]
            if v is None:
                out.append(math.nan)
            elif isinstance(v, (str, bytes)) or not hasattr(v, "__float__"):
                raise TypeError(f"{self.spec} returned {v!r} ({type(v).__name__}); return floats (None: not applicable)")
            else:
                out.append(float(v))  # bools and numpy / torch scalars too
        return out


def function_name(func: Callable[..., Any]) -> str:
    """The name a function's reward is logged under: its ``__name__``; a ``functools.partial``'s
    function's; a callable object's class name."""
    while hasattr(func, "func") and callable(func.func) and not hasattr(func, "__name__"):
        func = func.func  # functools.partial
    return getattr(func, "__name__", None) or type(func).__name__


def is_async(func: Callable[..., Any]) -> bool:
    """Whether calling ``func`` gives a coroutine (an ``async def``, or an object whose ``__call__`` is one)."""
    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(type(func).__call__)


def as_rewards(items: Any, where: str = "model.rewards") -> list[Reward]:
    """The rewards of ``items`` (a list, or one reward or function): each
    :class:`~lit_vr1.rewards.base.Reward` as it is, each plain function (TRL's
    ``reward_funcs`` habit) wrapped in a :class:`FunctionReward` named after it. Anything else
    is refused with its position (``model.rewards[1]``)."""
    if isinstance(items, Reward) or (callable(items) and not isinstance(items, type)):
        items = [items]
    if isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
        raise TypeError(f"{where}: {items!r} is not a list of rewards: give a list of lit_vr1.rewards.Reward "
                        "or functions")
    return [as_reward(item, f"{where}[{i}]") for i, item in enumerate(items)]


def as_reward(item: Any, where: str) -> Reward:
    """One entry of :func:`as_rewards`: a Reward as it is, a function wrapped, else a TypeError."""
    if isinstance(item, Reward):
        return item
    if isinstance(item, type):
        what = f"the class {item.__name__}, not an instance: write {item.__name__}()" if issubclass(item, Reward) else \
            f"a class ({item.__name__})"
        raise TypeError(f"{where}: {what}; give a lit_vr1.rewards.Reward or a function")
    if isinstance(item, torch.nn.Module):
        raise TypeError(f"{where}: a {type(item).__name__} model is not a reward (TRL's reward models are not read "
                        "here): give a lit_vr1.rewards.Reward (a yes/no judge: RewardModelReward(model=...)) or a "
                        "function that calls your model")
    if callable(item):
        return FunctionReward(fn=item)
    extra = (f" (a function by name: FunctionReward(fn={item!r}))" if isinstance(item, str) else "")
    raise TypeError(f"{where}: {item!r} ({type(item).__name__}) is not a reward: give a lit_vr1.rewards.Reward or a "
                    f"function{extra}")
