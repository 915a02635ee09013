"""Lists of classes given again (in a later ``--config`` file or as a flag) replace the earlier
list whole.

jsonargparse merges a list of ``class_path`` entries with the earlier list of the same length
entry by entry, and an entry whose class changes keeps the earlier entry's ``init_args`` that
its class also takes: a user's ``trainer.callbacks: [ColdStart, RolloutLog]`` laid over the REC
recipe's ``[ModelCheckpoint, RolloutTable(every_n_steps: 25)]`` gave ``RolloutLog`` the table's
``every_n_steps: 25`` (it logged steps 1, 5 and 9 of 10), and a reward list could take another
reward's ``weight`` the same way. :func:`replace_lists_whole` puts ``--<key>=null`` before each
later file or flag that gives such a list, so nothing of the earlier list is kept.
"""

from __future__ import annotations

from typing import Any

import yaml

CONFIG_FLAG = "--config"


def class_lists(value: Any, prefix: str = "") -> list[str]:
    """Dotted keys under ``value`` (a config file's mapping) that hold a list of ``class_path``
    entries (``trainer.callbacks``, ``model.init_args.rewards``), looking into nested mappings."""
    found: list[str] = []
    if not isinstance(value, dict):
        return found
    for key, item in value.items():
        path = f"{prefix}{key}"
        if isinstance(item, list) and any(isinstance(x, dict) and "class_path" in x for x in item):
            found.append(path)
        elif isinstance(item, dict):
            found += class_lists(item, path + ".")
    return found


def _config_keys(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            return class_lists(yaml.safe_load(f))
    except (OSError, yaml.YAMLError):  # the parser reports an unreadable file itself
        return []


def _flag(arg: str, following: str | None) -> tuple[str, str | None] | None:
    """(key, value) of a ``--key=value`` / ``--key value`` flag, None for anything else."""
    if not arg.startswith("--") or arg == CONFIG_FLAG:
        return None
    key, eq, value = arg[2:].partition("=")
    return key, value if eq else following


def _same(key: str) -> str:
    """``model.init_args.rewards`` and ``model.rewards`` name one setting."""
    return key.replace(".init_args.", ".")


def replace_lists_whole(argv: list[str]) -> list[str]:
    """``argv`` with ``--<key>=null`` before each ``--config`` file (after the first config) and
    each ``--<key>=[...]`` flag that gives a list of classes an earlier config or flag gave."""
    out: list[str] = []
    given: set[str] = set()  # list keys some earlier config file or flag set
    i = 0
    while i < len(argv):
        arg = argv[i]
        following = argv[i + 1] if i + 1 < len(argv) else None
        config = following if arg == CONFIG_FLAG else arg[len(CONFIG_FLAG) + 1:] if arg.startswith(CONFIG_FLAG + "=") else None
        if config is not None:
            keys = _config_keys(config)
            out += [f"--{key}=null" for key in keys if _same(key) in given]
            given.update(map(_same, keys))
        else:
            flag = _flag(arg, following)
            if flag and flag[1] is not None and flag[1].lstrip().startswith("[") and "class_path" in flag[1]:
                if _same(flag[0]) in given:
                    out.append(f"--{flag[0]}=null")
                given.add(_same(flag[0]))
        out.append(arg)
        i += 1
    return out
