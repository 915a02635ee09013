"""Your own reward as a plain function, written as for TRL's GRPOTrainer.

A TRL reward is ``def my_reward(completions, **kwargs) -> list[float]``: it gets the
completions of a batch and, as keyword lists, the prompts and the data's columns.
:class:`FunctionReward` calls such a function with the fields below and treats what it
returns like any built-in reward: ``None`` or ``nan`` means "not applicable here", routing
by ``tasks``, ``weight``, ``name`` and ``on_error`` behave the same.

In YAML::

    model:
      rewards:
        - class_path: lit_vr1.rewards.FunctionReward
          init_args:
            fn: my_rewards.py:short_answer   # or my_package.rewards.short_answer
            weight: 0.5
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import sys
from pathlib import Path
from typing import Any, Callable

from lit_vr1.rewards.base import Reward, SampleContext

# the keyword lists a function receives, one entry per completion (``step`` is one int)
FIELDS = ("prompts", "solution", "image_sizes", "input_sizes", "task", "ids", "sources", "completion_lengths",
          "truncated", "metadata", "step")


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
        raise ValueError(f"FunctionReward: fn={spec!r}: module {module_part!r} has no function {name!r}")
    return fn


def function_kwargs(contexts: list[SampleContext]) -> dict[str, Any]:
    """The keyword arguments a TRL-style reward function gets for a batch: per completion
    lists of the prompt, solution, image sizes, task, sample id, "file:line", token count,
    truncation flag and metadata dict; ``step`` is the optimiser step (one int)."""
    return {
        "prompts": [c.prompt for c in contexts],
        "solution": [c.solution for c in contexts],
        "image_sizes": [list(c.image_sizes) for c in contexts],
        "input_sizes": [list(c.input_sizes) for c in contexts],
        "task": [c.task for c in contexts],
        "ids": [c.id for c in contexts],
        "sources": [c.source for c in contexts],
        "completion_lengths": [c.completion_length for c in contexts],
        "truncated": [c.truncated for c in contexts],
        "metadata": [dict(c.metadata) for c in contexts],
        "step": contexts[0].global_step if contexts else 0,
    }


class FunctionReward(Reward):
    """A reward computed by your function ``fn(completions, **kwargs) -> list[float]``.

    ``kwargs`` holds the lists of :func:`function_kwargs` (``prompts``, ``solution``,
    ``image_sizes``, ``input_sizes``, ``task``, ``ids``, ``sources``,
    ``completion_lengths``, ``truncated``, ``metadata``) and ``step``; a function that
    does not take ``**kwargs`` gets only the names it declares. It must return one number
    (or None, meaning not applicable) per completion; a wrong length, a non-number, or an
    exception is an error under the ``on_error`` rule, named with the reward and sample.

    Args:
        fn: the function, or where it lives: "my_rewards.py:my_reward" (a file),
            "my_package.rewards.my_reward" or "my_package.rewards:my_reward" (a module).
        **kwargs: ``weight``, ``name`` (default: the function's name), ``tasks``,
            ``on_error`` of :class:`Reward`.
    """

    default_name = "function"

    def __init__(self, fn: str | Callable[..., Any], **kwargs: Any) -> None:
        func = load_function(fn) if isinstance(fn, str) else fn
        if not callable(func):
            raise ValueError(f"FunctionReward: fn={fn!r} is not callable")
        if kwargs.get("name") is None:  # the CLI passes name=None explicitly
            kwargs["name"] = getattr(func, "__name__", None)
        super().__init__(**kwargs)
        self.fn = func
        self.spec = fn if isinstance(fn, str) else f"{getattr(func, '__module__', '?')}.{getattr(func, '__name__', '?')}"
        params = inspect.signature(func).parameters.values()
        self._takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
        self._names = {p.name for p in params}

    def score(self, completions: list[str], contexts: list[SampleContext]) -> list[float]:
        kwargs = function_kwargs(contexts)
        if not self._takes_all:
            kwargs = {k: v for k, v in kwargs.items() if k in self._names}
        values = self.fn(list(completions), **kwargs)
        if not isinstance(values, (list, tuple)):
            raise TypeError(f"{self.spec} returned {type(values).__name__}; return a list with one float per completion")
        out = []
        for v in values:
            if v is None:
                out.append(math.nan)
            elif isinstance(v, (str, bytes)) or not hasattr(v, "__float__"):
                raise TypeError(f"{self.spec} returned {v!r} ({type(v).__name__}); return floats (None: not applicable)")
            else:
                out.append(float(v))  # bools and numpy / torch scalars too
        return out
