"""Command-line parse errors as one short message.

jsonargparse answers a misspelled or ill-typed option with the whole usage (about 45 lines)
and, for an option inside a class (``--model.grpo.num_generation=8``), a nested dump of
every Union alternative it tried (``Does not validate against any of the Union subtypes``,
``NestedArg(...)``): the one useful line is buried. :func:`condense` keeps the problem and
the key it concerns, and offers the nearest known names:

    model.grpo.num_generation: not an option of GRPOConfig; did you mean num_generations? (--model.grpo.help lists them)

:class:`LitVR1ArgumentParser` prints that, a pointer to ``--help``, and exits 2; with
``exit_on_error`` off (programmatic parsing) or jsonargparse's debug mode it behaves as before.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import os
import re
import sys
from typing import NoReturn

from lightning.pytorch.cli import LightningArgumentParser

from lit_vr1.rules import other_case
from lit_vr1.trl_names import BOOLEAN_CHOICES, verl_hint

KEY_HEADER = re.compile(r'^Parser key "([^"]+)":\s*(.*)$')
CLASS_HEADER = re.compile(r"^(?:- )?Problem with given class_path '([^']+)':$")  # "- " but one level down
# jsonargparse's list of what a subclass value may be, beside a class whose own option was wrong: said
# only when nothing more precise is (a PTST stage's misspelt field came with six lines of it)
SUBCLASS_FORMS = re.compile(r"^(- Not a valid subclass of .*|Subclass types expect one of:|- a class path \(str\)"
                            r"|- a dict with class_path entry|- a dict without class_path but with init_args entry.*"
                            r"|- a dict with parameters accepted by the base class.*)$")
NOISE = re.compile(r"^((?:- )?Does not validate against any of the Union subtypes|Subtypes: .*|Errors:|Given value type: .*"
                   r"|- Expected a <class 'NoneType'>)$")
NOT_ACCEPTED = re.compile(r"^Option '([^']+)' is not accepted$")
WRONG_TYPE = re.compile(r"^Expected a (.+?)\. Got value: (.*)$")
ALTERNATIVE = re.compile(r"^- Expected a (.+)$")
UNRECOGNIZED = re.compile(r"^unrecognized arguments: (.+)$")
NOT_ACCEPTED_KEY = re.compile(r"^Subcommand '([^']+)' does not accept option '([^']+)'$")
KEY_HEAD = re.compile(r"^([A-Za-z_][\w.]*):")  # the key a condensed error line is about
GOT = re.compile(r"got '([^']*)'")  # the refused value in a condensed error line
# lit-vr1's classes with their own ``--<key>.help`` (lit_vr1.cli.HELP_KEYS)
HELP_FOR = {"lit_vr1.config.GRPOConfig": "--model.grpo.help", "lit_vr1.models.lora.LoraSpec": "--model.lora.help",
            "lit_vr1.models.tiny_parts.TinySpec": "--model.tiny_spec.help",
            "lit_vr1.data.synthetic.SyntheticSpec": "--data.synthetic.help",
            "lit_vr1.data.datamodule.GroundingDataModule": "--data.help", "lit_vr1.grpo.GRPOModule": "--model.help",
            "lit_vr1.sft.SFTModule": "--model.help SFTModule"}


@dataclasses.dataclass
class Leaf:
    """One problem in jsonargparse's nested message: the keys and class it sits under."""

    keys: tuple[str, ...]
    class_path: str | None
    text: str
    given: str | None = None


def _leaves(message: str) -> list[Leaf]:
    """The problems of a nested jsonargparse message, each with the ``Parser key`` headers and
    the innermost ``class_path`` above it (by indentation); the None alternatives and the
    Union bookkeeping are dropped."""
    stack: list[tuple[int, str, str]] = []  # (indent, "key" | "class", value)
    given: dict[tuple[str, ...], str] = {}
    out: list[Leaf] = []
    for raw in message.splitlines():
        line = raw.strip()
        if not line:
            continue
        indent = len(raw) - len(raw.lstrip())
        while stack and stack[-1][0] >= indent:
            stack.pop()
        keys = tuple(v for _, kind, v in stack if kind == "key")
        classes = [v for _, kind, v in stack if kind == "class"]
        header = KEY_HEADER.match(line)
        if header:
            stack.append((indent, "key", header.group(1)))
            if header.group(2):  # 'Parser key "trainer.max_steps": Expected a ...' on one line
                out.append(Leaf((*keys, header.group(1)), classes[-1] if classes else None, header.group(2)))
            continue
        cls = CLASS_HEADER.match(line)
        if cls:
            stack.append((indent, "class", cls.group(1)))
            continue
        if line.startswith("Given value: "):
            given[keys] = line[len("Given value: "):]
            continue
        if NOISE.match(line):
            continue
        out.append(Leaf(keys, classes[-1] if classes else None, line))
    for leaf in out:
        leaf.given = given.get(leaf.keys)
    return out


def _class_options(class_path: str) -> list[str]:
    """The option names a class accepts: a dataclass's fields, else its ``__init__``
    parameters along the MRO (a subclass passing ``**kwargs`` up accepts its parents')."""
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(__import__(module, fromlist=[name]), name)
    except (ImportError, AttributeError):
        return []
    if dataclasses.is_dataclass(cls):
        return [f.name for f in dataclasses.fields(cls)]
    names: list[str] = []
    for klass in inspect.getmro(cls):
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        names += [p.name for p in params if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return list(dict.fromkeys(names))


def _did_you_mean(word: str, known: list[str]) -> str:
    close = difflib.get_close_matches(word, known, n=2, cutoff=0.6)
    return f"; did you mean {' or '.join(close)}?" if close else ""


def _path(keys: tuple[str, ...]) -> str:
    return ".".join(k for part in keys for k in part.split(".") if k != "init_args")


def _type_name(text: str) -> str:
    """``<class 'int'>`` -> ``int``; other type texts unchanged."""
    return re.sub(r"<class '(?:[\w.]*\.)?(\w+)'>", r"\1", text)


LITERAL = re.compile(r"^typing\.Literal\[(.*)\]$")
NO_ATTRIBUTE = re.compile(r"^module '([\w.]+)' has no attribute '(\w+)'$")


def _expected(kinds: list[str]) -> str:
    """``["int", "typing.Literal['a', 'b']", "typing.Literal['c']"]`` -> ``int or one of 'a', 'b', 'c'``."""
    values = [v for k in kinds if (m := LITERAL.match(k)) for v in m.group(1).split(", ")]
    others = [k for k in kinds if not LITERAL.match(k)]
    return " or ".join(others + ([f"one of {', '.join(dict.fromkeys(values))}"] if values else []))


def _choice_hint(path: str, given: str, expected: str) -> str:
    """For a value refused by a choice (``typing.Literal[...]``): the choice it names in other
    letter case (``DAPO`` -> dapo), or the choice a TRL boolean stands for; "" otherwise."""
    literal = LITERAL.match(expected)
    if not literal:
        return ""
    choices = [c.strip("'\"") for c in literal.group(1).split(", ")]
    same = other_case(str(given), choices)
    if same is not None:
        return f" (did you mean {same}? the choices are lower case)"
    trl = BOOLEAN_CHOICES.get(path.rsplit(".", 1)[-1], {}).get(str(given).lower())
    return f" (TRL's {path.rsplit('.', 1)[-1]}={given} is {trl!r} here)" if trl in choices else ""


def _module_hint(text: str) -> str:
    """For ``module 'm' has no attribute 'X'`` (a misspelled class_path): the nearest names in m."""
    missing = NO_ATTRIBUTE.match(text)
    if not missing:
        return ""
    try:
        module = __import__(missing.group(1), fromlist=["_"])
    except ImportError:
        return ""
    return _did_you_mean(missing.group(2), [n for n in dir(module) if not n.startswith("_")])


def yaml_value(path: str, keys: tuple[str, ...]):
    """The value at the nested ``keys`` of the YAML file ``path``; None when it is not set or the
    file cannot be read or parsed."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            node = yaml.safe_load(f)
    except (OSError, yaml.YAMLError):
        return None
    for key in keys:
        node = node.get(key) if isinstance(node, dict) else None
    return node


def _value_in(node, keys: list[str]):
    """The value the parsed YAML ``node`` sets at the nested ``keys`` (None when it sets none), a
    class's arguments read under its ``init_args`` or beside its ``class_path`` alike."""
    for key in keys:
        if not isinstance(node, dict):
            return None
        if key in node:
            node = node[key]
        elif isinstance(node.get("init_args"), dict) and key in node["init_args"]:
            node = node["init_args"][key]
        else:
            return None
    return node


def _set_in(node, keys: list[str]) -> bool:
    """Whether the parsed YAML ``node`` sets the nested ``keys`` (:func:`_value_in`)."""
    return _value_in(node, keys) is not None


def _file_holding(dotted: str, files: list[str], given: str | None = None) -> str | None:
    """The last of the YAML ``files`` that sets the nested key ``dotted`` (``trainer.max_stepz``,
    ``model.grpo.num_generations`` for ``model: {init_args: {grpo: ...}}``), as the user named it;
    with ``given`` (the refused value as the error shows it), the last file that sets it to that
    value (jsonargparse checks each file as it reads it, so an earlier file's value may be the bad
    one, whatever a later file sets), or None when no file does. A relative path is read from the
    directory the command started in (jsonargparse moves into a config file's directory while it
    parses the file, and may raise from there)."""
    base = LitVR1ArgumentParser.start_dir or os.getcwd()
    keys = dotted.split(".")
    parsed = [(path, yaml_value(os.path.join(base, path), ())) for path in files]
    holding = [path for path, node in parsed if _set_in(node, keys)]
    if given is not None:
        holding = [path for path, node in parsed if path in holding and str(_value_in(node, keys)) == given]
    return holding[-1] if holding else None


def name_config_files(text: str, files: list[str], flag_keys: set[str]) -> str:
    """Each line of a condensed error ``text`` about a key (``data.batch_size: expected int, got
    'two'``) that a config file sets and no flag does, with that file: "(in config file F)"."""
    lines = text.split("\n  ")
    for i, line in enumerate(lines):
        head = KEY_HEAD.match(line)
        key = head.group(1) if head else ""
        if not head or "(in config file" in line:
            continue
        given = GOT.search(line)
        # the file holding the refused value, even where a later file or a flag sets another
        found = _file_holding(key, files, given.group(1)) if given else None
        if found is None and not any(key == k or key.startswith(f"{k}.") for k in flag_keys):
            found = _file_holding(key, files)  # else a flag sets it, or a section holding it: the flag's error
        if found:
            lines[i] = f"{line} (in config file {found})"
    return "\n  ".join(lines)


def _scalar(value) -> str | None:
    """A YAML value as a hint shows it: scalars as text, anything else as None."""
    return None if value is None or isinstance(value, (dict, list)) else str(value)


def condense(message: str, option_strings: list[str] = (), config_files: list[str] = ()) -> str:
    """One message for jsonargparse's parse error ``message``: each problem with the key it
    concerns, alternatives close to a misspelled name (the class's options, or
    ``option_strings`` for an unrecognized flag or config key, with the one of ``config_files``
    that holds the key); an unstructured message comes back as is."""
    key = NOT_ACCEPTED_KEY.match(message.strip())
    if key:  # a config file's key (a flag would be 'unrecognized'): name it as a key, with the file
        name = key.group(2)
        keys = [f[2:] for f in option_strings if f.startswith("--")]
        found = _file_holding(name, config_files)
        where = f" (in config file {found})" if found else ""
        peer = verl_hint(name, _scalar(yaml_value(os.path.join(LitVR1ArgumentParser.start_dir or os.getcwd(), found),
                                                  tuple(name.split("."))) if found else None))
        if peer:  # a verl / EasyR1 setting: where it lives here
            return f"{name}: verl / EasyR1's {name.rsplit('.', 1)[-1]} is not a lit-vr1 option{where}; {peer}"
        return f"{name}: not an option of lit-vr1 {key.group(1)}{where}" + _did_you_mean(name, keys)
    unknown = UNRECOGNIZED.match(message.strip())
    if unknown:
        flags = unknown.group(1).split()
        hints = [_did_you_mean(f.split("=", 1)[0], list(option_strings)) for f in flags if f.startswith("-")]
        return message.strip() + "".join(h for h in hints if h)
    leaves = _leaves(message)
    if not leaves:
        return message.strip()
    if any(NOT_ACCEPTED.match(leaf.text) or WRONG_TYPE.match(leaf.text) for leaf in leaves):
        # a class's own option named: the other forms the value might have taken are noise
        leaves = [leaf for leaf in leaves if not SUBCLASS_FORMS.match(leaf.text) and not ALTERNATIVE.match(leaf.text)]
    lines: list[str] = []
    alternatives: dict[str, list[str]] = {}
    for leaf in leaves:
        path = _path(leaf.keys)
        short = leaf.class_path.rsplit(".", 1)[-1] if leaf.class_path else None
        option = NOT_ACCEPTED.match(leaf.text)
        wrong = WRONG_TYPE.match(leaf.text)
        alternative = ALTERNATIVE.match(leaf.text)
        if option and leaf.class_path:
            name = option.group(1)
            hint = HELP_FOR.get(leaf.class_path)
            lines.append(f"{_path((*leaf.keys, name))}: not an option of {short}"
                         f"{_did_you_mean(name, _class_options(leaf.class_path))}"
                         + (f" ({hint} lists them)" if hint else ""))
        elif wrong:
            expected = _type_name(wrong.group(1))
            lines.append(f"{path}: expected {_expected([expected])}, got {wrong.group(2)!r}"
                         + _choice_hint(path, wrong.group(2), expected))
        elif alternative:
            if short and leaf.keys and leaf.keys[0] == "model" and "rewards" in leaf.keys:
                path = f"{path} ({short})"  # which reward of the list (a mixed-task trial could not tell)
            alternatives.setdefault(path, []).append(_type_name(alternative.group(1)))
            given = leaf.given
            alternatives.setdefault(f"given:{path}", [given or ""])
        else:
            where = f"{path}: " if path else ""
            lines.append(f"{where}{leaf.text}" + _module_hint(leaf.text)
                         + (f" (class_path {leaf.class_path})" if leaf.class_path and
                            leaf.class_path not in leaf.text else ""))
    for path, kinds in alternatives.items():
        if path.startswith("given:"):
            continue
        given = alternatives[f"given:{path}"][0]
        lines.append(f"{path}: got {given!r}; expected {_expected(kinds)}"
                     + "".join(dict.fromkeys(_choice_hint(path, given, k) for k in kinds)))
    return "\n  ".join(dict.fromkeys(lines))


class LitVR1ArgumentParser(LightningArgumentParser):
    """Lightning's parser whose parse errors print as :func:`condense`'s message and a
    pointer to ``--help`` (exit 2), without the usage."""

    config_files: list[str] = []  # the command line's --config files (set by LitVR1CLI before parsing)
    flag_keys: set[str] = set()  # the keys the command line's flags set (``model.grpo.beta``), which win over the files
    start_dir: str | None = None  # where the command started: config_files are relative to it
    # every unknown key of those files (lit_vr1.config_keys, set by LitVR1CLI before parsing): printed
    # together when jsonargparse's own error is about one of them
    unknown_keys: list = []

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        from jsonargparse._common import debug_mode_active

        if not self.exit_on_error or debug_mode_active():
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        flags = [s for action in parser._actions for s in action.option_strings if s.startswith("--")]
        prog = parser.prog.replace(" [options]", "")
        sub = next((a for a in sys.argv[1:] if a in ("fit", "validate", "test", "predict")), None)
        if " " not in prog and sub:  # the root parser (a config file's syntax): the subcommand's help all the same
            prog = f"{prog} {sub}"
        text = condense(message, flags, self.config_files)
        about = self._about_unknown_keys(text)
        if about != "key":  # a value of the wrong type in a config file: which file
            text = name_config_files(text, self.config_files, self.flag_keys)
        if about:  # the parser agrees about one: each with its file, all at once
            found = self.unknown_keys
            listed = found[0].message() if len(found) == 1 else (
                f"{len(found)} keys of the config files are not options:\n  " + "\n  ".join(u.message() for u in found))
            # the parser's own error concerns a section holding them, not one of them: it is kept too
            text = listed if about == "key" else f"{listed}\n  {text}"
        sys.stderr.write(f"lit-vr1: error: {text}\n({prog} --help lists every option)\n")
        self.exit(2)

    def _about_unknown_keys(self, text: str) -> str:
        """What the condensed parse error ``text`` concerns among the keys :mod:`lit_vr1.config_keys`
        found: "key" (one of them), "section" (a section holding one: ``model.optimizer: Type
        typing.Callable...``, which may also be about something else there) or ""."""
        head = KEY_HEAD.match(text)
        if not head:
            return ""
        key = head.group(1)
        paths = {u.path for u in self.unknown_keys}
        refused = re.search(r"Option '([\w$]+)' is not accepted", text)  # the section's message names the key
        if key in paths or (refused and f"{key}.{refused.group(1)}" in paths):
            return "key"
        return "section" if any(p.startswith(f"{key}.") for p in paths) else ""


def config_file_problem(path: str) -> str | None:
    """Why the config file ``path`` is not valid YAML, with its own name, line and column
    (jsonargparse reports a YAML syntax error as in ``"<unicode string>"``, without the file);
    None when it parses or cannot be read (jsonargparse reports a missing file itself)."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            yaml.safe_load(f)
    except OSError:
        return None
    except yaml.YAMLError as e:
        if not isinstance(e, (yaml.scanner.ScannerError, yaml.parser.ParserError, yaml.composer.ComposerError)):
            return None  # a tag or value safe_load cannot build: jsonargparse's own loader decides
        mark = getattr(e, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        context, context_mark = getattr(e, "context", None), getattr(e, "context_mark", None)
        start = (f" ({context} at line {context_mark.line + 1})" if context and context_mark is not None else "")
        return f"config file {path} is not valid YAML{where}: {problem}{start}"
    return None
