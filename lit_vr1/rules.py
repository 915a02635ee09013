"""The registry of lit-vr1's configuration rules, generated from the code that enforces them.

A rule is a function decorated with :func:`rule`: it names the flag it is about and when
it runs, and returns the problem (a message naming the flag and what to set instead) or
None. Nothing lists the rules by hand: :func:`all_rules` imports every module of the
package that declares one and returns what the decorators registered, so the list cannot
go stale.

When a rule runs (``when``):

- ``"config"``: as the object holding the value is built (``GRPOConfig``, ``VLMModule``,
  ``SyntheticSpec``, a reward, a callback, the data module): one value or object at a time;
- ``"fit"``: at fit start, over a :class:`lit_vr1.checks.FitSetup` (the module, its
  Trainer, strategy and data module together), by :func:`lit_vr1.checks.check_fit`, the one
  entry point of every fit-time and strategy rule, which reports every problem at once;
- ``"optimizer"``: where the optimiser is built (the weights as the precision plugin left them);
- ``"data"``: as the data files are read;
- ``"first_step"``: at the first scoring of a rollout.
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WHEN = ("config", "fit", "optimizer", "data", "first_step")


class ConfigError(ValueError):
    """The configuration cannot train; the message lists every problem with its flag."""


class UnknownFieldError(TypeError):
    """A settings class built from Python with a keyword it does not have (a TypeError, as the
    dataclass's own refusal was); the message names the closest fields, or where a TRL setting
    of that name lives."""


def unknown_keyword_lines(owner: str, unknown: list[str], names: list[str], what: str = "field",
                          elsewhere: dict[str, str] | None = None) -> list[str]:
    """One line per keyword of ``unknown`` that ``owner`` does not take: where it belongs
    (``elsewhere``: keyword -> advice), TRL's Python form, or the closest of ``names``."""
    import difflib

    from lit_vr1.trl_names import PYTHON_HINTS, advice

    lines = []
    for key in unknown:
        if elsewhere and key in elsewhere:
            lines.append(f"{key}: not a {owner} {what}; {elsewhere[key]}")
        elif key in PYTHON_HINTS:
            lines.append(f"{key}: TRL's {key} is not a {owner} {what}; {advice(PYTHON_HINTS[key])}")
        else:
            close = difflib.get_close_matches(key, names, n=3, cutoff=0.6)
            lines.append(f"{key}: not a {owner} {what}" +
                         (f"; did you mean {' or '.join(close)}?" if close else f" (its {what}s: {', '.join(names)})"))
    return lines


def refuse_unknown_keywords(owner: str, given, names: list[str], what: str = "field",
                            elsewhere: dict[str, str] | None = None) -> None:
    """Raise :class:`UnknownFieldError` listing every keyword of ``given`` not in ``names``."""
    unknown = [k for k in given if k not in names]
    if not unknown:
        return
    lines = unknown_keyword_lines(owner, unknown, names, what, elsewhere)
    raise UnknownFieldError(lines[0] if len(lines) == 1 else
                            f"{len(lines)} unknown keywords for {owner}:\n" + "\n".join(f"  {x}" for x in lines))


def settings_object(value, cls, flag: str):
    """``value`` as a ``cls`` settings object: a dict is read as its keywords (checked as the class
    checks them); anything else but ``cls`` or None is refused naming ``flag``."""
    if isinstance(value, dict):
        return cls(**value)
    if value is not None and not isinstance(value, cls):
        raise TypeError(f"{flag}: expected a {cls.__name__} (or a dict of its fields), got {type(value).__name__}")
    return value


def named_fields_only(cls):
    """Class decorator for a settings dataclass: keywords it has no field for are refused, all
    at once, each with the closest field names (``num_generation`` -> ``num_generations``) or,
    for a TRL GRPOConfig name, where that setting lives here. The dataclass's own refusal was
    "__init__() got an unexpected keyword argument" for the first one only."""
    import dataclasses
    import functools

    init = cls.__init__
    names = [f.name for f in dataclasses.fields(cls) if f.init]

    @functools.wraps(init)
    def checked_init(self, *args, **kwargs):
        refuse_unknown_keywords(cls.__name__, kwargs, names)
        refuse(wrong_types(cls, {**dict(zip(names, args)), **kwargs}), cls.__name__)
        init(self, *args, **kwargs)

    cls.__init__ = checked_init
    return cls


def _fits(value: Any, hint: Any) -> bool | None:
    """Whether ``value`` is of the type ``hint`` names (bool, int, float, str, a union of
    them, None); None when the hint is another kind, which is left to the field's rules."""
    import numbers
    import types
    import typing

    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):  # a numpy or torch scalar: its Python value
        value = value.item()
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        verdicts = [_fits(value, a) for a in typing.get_args(hint)]
        return None if None in verdicts and not any(verdicts) else any(v for v in verdicts if v)
    return None


def _type_name(hint: Any) -> str:
    import types
    import typing

    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    return {type(None): "null", bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        hint, getattr(hint, "__name__", str(hint)))


def wrong_types(cls: type, values: dict[str, Any]) -> list[str]:
    """Fields of the settings class ``cls`` given a value of another type than the field's
    (``GRPOConfig(temperature="hot")``: before, a comparison inside a rule raised a TypeError
    naming no field); an int is a number, numpy's numbers are numbers, a bool is no number."""
    import typing

    hints = typing.get_type_hints(cls)
    def kind(value: Any) -> str:
        t = type(value)
        return t.__name__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__name__}"

    return [f"{cls.__name__}.{name}={value!r} must be {_type_name(hints[name])}, not {kind(value)}"
            for name, value in values.items() if name in hints and _fits(value, hints[name]) is False]


@dataclass(frozen=True)
class Rule:
    """One configuration rule: its name (the function's), the flag it is about, when it
    runs (see ``WHEN``), where it lives (``module.function``), the function itself, and
    ``on``: the class (by name) of the one argument it checks, when it checks one object."""

    name: str
    flag: str
    when: str
    where: str
    check: Callable[..., str | None]
    on: str | None = None


_REGISTRY: dict[str, Rule] = {}


def rule(flag: str, when: str, on: str | None = None) -> Callable[[Callable[..., str | None]], Callable[..., str | None]]:
    """Register the decorated function as the rule about ``flag`` that runs ``when``; ``on``:
    the name of the class whose instances it checks (see :func:`problems_of`)."""
    if when not in WHEN:
        raise ValueError(f"rule when={when!r}: choose one of {', '.join(WHEN)}")

    def register(fn: Callable[..., str | None]) -> Callable[..., str | None]:
        where = f"{fn.__module__}.{fn.__qualname__}"
        old = _REGISTRY.get(fn.__name__)
        if old is not None and old.where != where:
            raise ValueError(f"rule {fn.__name__} is declared twice: {old.where} and {where}")
        _REGISTRY[fn.__name__] = Rule(fn.__name__, flag, when, where, fn, on)
        return fn

    return register


def one_of(flag: str, value: Any, valid: tuple) -> str | None:
    """The problem of ``flag=value`` when ``value`` is not one of ``valid`` (None when it is),
    with the choice it names in other letter case (``DAPO`` -> dapo)."""
    if value in valid:
        return None
    same = other_case(value, valid)
    return (f"{flag}={value!r} is not valid; " + (f"did you mean {same}? " if same is not None else "")
            + f"choose one of {', '.join(map(str, valid))}")


def other_case(value: Any, valid: Iterable) -> Any | None:
    """The choice of ``valid`` that ``value`` names in other letter case (``DAPO`` -> dapo), or None."""
    return next((v for v in valid if isinstance(value, str) and str(v).lower() == value.lower() and v != value), None)


def problems_of(obj: Any, when: str | None = None) -> list[str]:
    """The problems every rule declared ``on`` the class of ``obj`` (and, when given, run
    ``when``) finds in it, in declaration order."""
    name = type(obj).__name__
    return [msg for r in list(_REGISTRY.values()) if r.on == name and (when is None or r.when == when)
            for msg in [r.check(obj)] if msg]


def enforce(problem: str | None, error: type[Exception] = ConfigError) -> None:
    """Raise ``error(problem)`` when a rule found a problem (nothing when it is None)."""
    if problem:
        raise error(problem)


def refuse(problems: list[str], what: str = "the configuration") -> None:
    """Raise one :class:`ConfigError` listing ``problems`` (nothing when there is none)."""
    if len(problems) == 1:
        raise ConfigError(problems[0])
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise ConfigError(f"{len(problems)} problem(s) in {what}; fix them and start again:\n{lines}")


def declaring_modules(package: Path | None = None) -> list[str]:
    """Dotted names of the modules under ``package`` (lit_vr1 and the callbacks package beside
    it by default) whose source applies the :func:`rule` decorator."""
    roots = [package] if package is not None else [Path(__file__).resolve().parent,
                                                    Path(__file__).resolve().parents[1] / "callbacks"]
    names = []
    for root in roots:
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            decorated = any(isinstance(d, ast.Call) and getattr(d.func, "id", getattr(d.func, "attr", None)) == "rule"
                            for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) for d in node.decorator_list)
            if decorated:
                parts = path.relative_to(root.parent).with_suffix("").parts
                names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def all_rules() -> list[Rule]:
    """Every rule of lit-vr1, in the order its modules are found (then declared)."""
    for name in declaring_modules():
        importlib.import_module(name)
    return list(_REGISTRY.values())
