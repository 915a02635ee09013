"""Every misspelled key of the config files at once.

jsonargparse stops at the first key it does not know, so a config file with three typos
takes three runs to mend. :func:`unknown_keys` walks the YAML files the way the parser will
read them (``trainer.*`` against the Trainer's options, ``model`` / ``data`` against the
``__init__`` of their ``class_path``, a dataclass-typed argument such as ``model.grpo`` or
``data.synthetic`` against its fields, every ``class_path`` entry inside them, such as
``model.rewards[0]``, ``model.optimizer`` or ``trainer.callbacks[1]``, against its class, and a
key beside ``init_args`` as an indentation slip) and lists each unknown key with its file and
the nearest known names. Another package's class that takes ``**kwargs`` and a ``class_path``
naming a function are not judged. The CLI prints the list when jsonargparse's own error is one of them
(:class:`lit_vr1.cli_errors.LitVR1ArgumentParser`), so a key this walk cannot judge never
produces a message of its own.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing
from collections.abc import Iterable

from lit_vr1.cli_errors import HELP_FOR, _did_you_mean, yaml_value
from lit_vr1.trl_names import trl_hint, verl_hint


@dataclasses.dataclass(frozen=True)
class UnknownKey:
    """A key of ``file`` that its section does not accept (``key``: dotted, without ``init_args``)."""

    key: str
    owner: str  # "lit-vr1 fit", "SFTModule", "GRPOConfig", ...
    file: str
    hint: str  # "; did you mean max_steps?" or ""
    help: str  # " (--model.help lists them)" or ""
    problem: str = ""  # instead of "not an option of <owner>"

    def message(self) -> str:
        problem = self.problem or f"not an option of {self.owner}"
        return f"{self.key}: {problem} (in config file {self.file}){self.hint}{self.help}"

    @property
    def path(self) -> str:
        """The key without list positions (``model.rewards.treshold``), as jsonargparse names it."""
        return re.sub(r"\[\d+\]", "", self.key)


def _unknown(key: str, owner: str, file: str, hint: str, help_: str, value=None) -> UnknownKey:
    """An unknown key; one that is a TRL setting's name (``max_grad_norm``) says where that
    setting lives in lit-vr1 instead of offering the nearest names."""
    shown = None if isinstance(value, (dict, list)) or value is None else str(value)
    trl = trl_hint(key, shown)
    if trl:
        return UnknownKey(key, owner, file, f"; {trl}", "",
                          problem=f"TRL's {key.rsplit('.', 1)[-1]} is not a lit-vr1 option there")
    verl = verl_hint(key, shown)
    if verl:
        return UnknownKey(key, owner, file, f"; {verl}", "",
                          problem=f"verl / EasyR1's {key.rsplit('.', 1)[-1]} is not a lit-vr1 option")
    return UnknownKey(key, owner, file, hint, help_)


def _resolve(class_path: str):
    module, _, name = class_path.rpartition(".")
    try:
        found = getattr(__import__(module, fromlist=[name]), name)
    except Exception:  # not importable here (or it raises on import): jsonargparse reports it
        return None
    return found if inspect.isclass(found) else None  # a function returning the class: not judged


def _dataclass_of(annotation) -> type | None:
    """The dataclass an argument is typed with (``GRPOConfig``, ``GRPOConfig | None``)."""
    if dataclasses.is_dataclass(annotation) and isinstance(annotation, type):
        return annotation
    found = [a for a in typing.get_args(annotation) if dataclasses.is_dataclass(a) and isinstance(a, type)]
    return found[0] if len(found) == 1 else None


# packages whose classes pass ``**kwargs`` only up to their parents' ``__init__``
OWN = ("lit_vr1.", "callbacks.")


def _annotations(cls: type) -> dict[str, object] | None:
    """The ``__init__`` parameters' types along the MRO (one of lit-vr1's classes passing
    ``**kwargs`` up accepts its parents'); None for another package's class that takes
    ``**kwargs`` (a strategy handing them to DDP, a logger to its client: keys this walk cannot
    see) or whose chain never closes: its keys are not judged."""
    out: dict[str, object] = {}
    for klass in inspect.getmro(cls):
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            params = inspect.signature(init).parameters.values()
        except (TypeError, ValueError):
            return None
        try:
            hints = typing.get_type_hints(init)
        except Exception:  # an annotation that does not evaluate here: judged by name only
            hints = {}
        for p in params:
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name != "self":
                out.setdefault(p.name, hints.get(p.name))
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            return out
        if not klass.__module__.startswith(OWN):
            return None
    return None


def _walk_class(prefix: str, cls: type, owner: str, values: dict, file: str, help_: str) -> Iterable[UnknownKey]:
    if dataclasses.is_dataclass(cls):
        known = {f.name: f.type for f in dataclasses.fields(cls)}
        try:
            known.update(typing.get_type_hints(cls))
        except Exception:
            pass
    else:
        known = _annotations(cls)
        if known is None:
            return
    for key, value in values.items():
        if key not in known:
            yield _unknown(f"{prefix}.{key}", owner, file, _did_you_mean(key, list(known)), help_, value)
            continue
        yield from _walk_value(f"{prefix}.{key}", value, file)
        inner = _dataclass_of(known[key])
        if inner is not None and isinstance(value, dict) and "class_path" not in value:
            name = f"{inner.__module__}.{inner.__qualname__}"
            hint = HELP_FOR.get(name)
            yield from _walk_class(f"{prefix}.{key}", inner, inner.__name__, value, file,
                                   f" ({hint} lists them)" if hint else "")


def _walk_value(prefix: str, value, file: str) -> Iterable[UnknownKey]:
    """A ``class_path`` dict (an optimizer, a reward, a callback, a logger), or a list of them."""
    if isinstance(value, list):
        for i, item in enumerate(value):
            if isinstance(item, dict) and "class_path" in item:
                yield from _walk_section(f"{prefix}[{i}]", item, file, None)
    elif isinstance(value, dict) and "class_path" in value:
        yield from _walk_section(prefix, value, file, None)


# jsonargparse's own keys beside a class's arguments
RESERVED = frozenset({"class_path", "init_args", "dict_kwargs", "__path__", "$schema"})


def _walk_section(section: str, node: dict, file: str, class_path: str | None) -> Iterable[UnknownKey]:
    """``model`` / ``data``: ``init_args`` (or the arguments beside ``class_path``) against the
    class in effect when the file is read (a file that only overrides arguments inherits it)."""
    class_path = node.get("class_path", class_path)
    cls = _resolve(class_path) if isinstance(class_path, str) and "." in class_path else None
    if cls is None:
        return
    beside = [k for k in node if k not in RESERVED]
    if "init_args" in node:  # an argument beside init_args is not read: an indentation slip
        for key in beside:
            yield UnknownKey(f"{section}.{key}", cls.__name__, file, f"; indent it under {section}.init_args", "",
                             problem="beside init_args, where it is not read")
    args = node["init_args"] if "init_args" in node else {k: node[k] for k in beside}
    if not isinstance(args, dict):
        return
    hint = HELP_FOR.get(class_path) if isinstance(class_path, str) else None
    yield from _walk_class(section, cls, cls.__name__, args, file, f" ({hint} lists them)" if hint else "")


def _classes_in_effect(configs: list, section: str, flag_sets_class: bool) -> list[str | None]:
    """For each parsed config file, the ``class_path`` of ``section`` in effect when it is read;
    None where a later file (or a command-line flag) names another class, since jsonargparse then
    drops the arguments given for the earlier one: those are not judged."""
    named = [c[section].get("class_path") if isinstance(c, dict) and isinstance(c.get(section), dict) else None
             for c in configs]
    out: list[str | None] = []
    current = None
    for i, name in enumerate(named):
        current = name if isinstance(name, str) else current
        later = [n for n in named[i + 1:] if isinstance(n, str)]
        out.append(None if flag_sets_class or any(n != current for n in later) else current)
    return out


def unknown_keys(files: list[str], dests: list[str], subcommand: str,
                 class_flags: Iterable[str] = ()) -> list[UnknownKey]:
    """The keys of the YAML ``files`` (the subcommand's ``--config`` files, in order) that the
    parser of ``subcommand`` will not accept, judged against its option names ``dests``
    (``trainer.max_steps``, ``model``, ...) and, under ``model`` and ``data``, their classes
    (``class_flags``: the sections whose class a command-line flag sets, not judged). A file
    that cannot be read is skipped (the parser reports it)."""
    top = {d.split(".", 1)[0] for d in dests}
    trainer = [d.split(".", 1)[1] for d in dests if d.startswith("trainer.")]
    found: list[UnknownKey] = []
    configs = [yaml_value(file, ()) for file in files]  # each file read once
    classes = {section: _classes_in_effect(configs, section, section in set(class_flags)) for section in ("model", "data")}
    for i, (file, config) in enumerate(zip(files, configs)):
        if not isinstance(config, dict):
            continue
        for key, value in config.items():
            if key not in top and key not in RESERVED:
                found.append(_unknown(key, f"lit-vr1 {subcommand}", file, _did_you_mean(key, sorted(top)), "", value))
            elif key == "trainer" and isinstance(value, dict):
                found += [_unknown(f"trainer.{k}", f"lit-vr1 {subcommand}", file,
                                   _did_you_mean(f"trainer.{k}", [f"trainer.{t}" for t in trainer]), "", v)
                          for k, v in value.items() if k not in trainer]
                for k, v in value.items():
                    if k in trainer:
                        found += list(_walk_value(f"trainer.{k}", v, file))
            elif key in ("model", "data") and isinstance(value, dict) and classes[key][i] is not None:
                found += list(_walk_section(key, value, file, classes[key][i]))
    return found
