"""Every misspelled key of the config files at once.

jsonargparse stops at the first key it does not know, so a config file with three typos
takes three runs to mend. :func:`unknown_keys` walks the YAML files the way the parser will
read them (``trainer.*`` against the Trainer's options, ``model`` / ``data`` against the
``__init__`` of their ``class_path``, a dataclass-typed argument such as ``model.grpo`` or
``data.synthetic`` against its fields) and lists each unknown key with its file and the
nearest known names. The CLI prints the list when jsonargparse's own error is one of them
(:class:`lit_vr1.cli_errors.LitVR1ArgumentParser`), so a key this walk cannot judge never
produces a message of its own.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Iterable

from lit_vr1.cli_errors import HELP_FOR, _did_you_mean, yaml_value


@dataclasses.dataclass(frozen=True)
class UnknownKey:
    """A key of ``file`` that its section does not accept (``key``: dotted, without ``init_args``)."""

    key: str
    owner: str  # "lit-vr1 fit", "SFTModule", "GRPOConfig", ...
    file: str
    hint: str  # "; did you mean max_steps?" or ""
    help: str  # " (--model.help lists them)" or ""

    def message(self) -> str:
        return f"{self.key}: not an option of {self.owner} (in config file {self.file}){self.hint}{self.help}"


def _resolve(class_path: str):
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(__import__(module, fromlist=[name]), name)
    except (ImportError, AttributeError, ValueError):
        return None


def _dataclass_of(annotation) -> type | None:
    """The dataclass an argument is typed with (``GRPOConfig``, ``GRPOConfig | None``)."""
    if dataclasses.is_dataclass(annotation) and isinstance(annotation, type):
        return annotation
    found = [a for a in typing.get_args(annotation) if dataclasses.is_dataclass(a) and isinstance(a, type)]
    return found[0] if len(found) == 1 else None


def _annotations(cls: type) -> dict[str, object]:
    """The ``__init__`` parameters' types along the MRO (as :func:`_class_options` walks it)."""
    out: dict[str, object] = {}
    for klass in inspect.getmro(cls):
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            hints = typing.get_type_hints(init)
        except Exception:  # an annotation that does not evaluate here: judged by name only
            hints = {}
        params = inspect.signature(init).parameters.values()
        for p in params:
            out.setdefault(p.name, hints.get(p.name))
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return out


def _walk_class(prefix: str, cls: type, owner: str, values: dict, file: str, help_: str) -> Iterable[UnknownKey]:
    if dataclasses.is_dataclass(cls):
        known = {f.name: f.type for f in dataclasses.fields(cls)}
        try:
            known.update(typing.get_type_hints(cls))
        except Exception:
            pass
    else:
        known = _annotations(cls)
    for key, value in values.items():
        if key not in known:
            yield UnknownKey(f"{prefix}.{key}", owner, file, _did_you_mean(key, list(known)), help_)
            continue
        inner = _dataclass_of(known[key])
        if inner is not None and isinstance(value, dict):
            name = f"{inner.__module__}.{inner.__qualname__}"
            hint = HELP_FOR.get(name)
            yield from _walk_class(f"{prefix}.{key}", inner, inner.__name__, value, file,
                                   f" ({hint} lists them)" if hint else "")


def _walk_section(section: str, node: dict, file: str, class_path: str | None) -> Iterable[UnknownKey]:
    """``model`` / ``data``: ``init_args`` (or the arguments beside ``class_path``) against the
    class the files name last (a file that only overrides arguments inherits it)."""
    class_path = node.get("class_path", class_path)
    cls = _resolve(class_path) if isinstance(class_path, str) and "." in class_path else None
    if cls is None:
        return
    args = node.get("init_args", {k: v for k, v in node.items() if k != "class_path"})
    if not isinstance(args, dict):
        return
    hint = HELP_FOR.get(class_path)
    yield from _walk_class(section, cls, cls.__name__, args, file, f" ({hint} lists them)" if hint else "")


def unknown_keys(files: list[str], dests: list[str], subcommand: str) -> list[UnknownKey]:
    """The keys of the YAML ``files`` that the parser of ``subcommand`` will not accept, judged
    against its option names ``dests`` (``trainer.max_steps``, ``model``, ...) and, under
    ``model`` and ``data``, their classes. A file that cannot be read is skipped (the parser
    reports it)."""
    top = {d.split(".", 1)[0] for d in dests}
    trainer = [d.split(".", 1)[1] for d in dests if d.startswith("trainer.")]
    found: list[UnknownKey] = []
    class_paths = {}
    for file in files:
        for section in ("model", "data"):
            named = yaml_value(file, (section, "class_path"))
            class_paths[section] = named if isinstance(named, str) else class_paths.get(section)
    for file in files:
        config = yaml_value(file, ())
        if not isinstance(config, dict):
            continue
        for key, value in config.items():
            if key not in top:
                found.append(UnknownKey(key, f"lit-vr1 {subcommand}", file, _did_you_mean(key, sorted(top)), ""))
            elif key == "trainer" and isinstance(value, dict):
                found += [UnknownKey(f"trainer.{k}", f"lit-vr1 {subcommand}", file,
                                     _did_you_mean(f"trainer.{k}", [f"trainer.{t}" for t in trainer]), "")
                          for k in value if k not in trainer]
            elif key in ("model", "data") and isinstance(value, dict):
                found += list(_walk_section(key, value, file, class_paths[key]))
    return found
