"""The ``lit-vr1`` command. Python spends its first seconds importing torch, transformers and
Lightning; a Ctrl-C then would print the import's traceback. Here it gets the same one line
as a Ctrl-C later (:func:`lit_vr1.interrupt.interrupted`), before :func:`lit_vr1.cli.main`
takes over. Under a locale whose encoding is not UTF-8 the command starts again in Python's
UTF-8 mode (:func:`in_utf8_mode`)."""

from __future__ import annotations

import locale
import os
import sys

from lit_vr1.interrupt import interrupted


def in_utf8_mode() -> None:
    """Start the command again in Python's UTF-8 mode (``PYTHONUTF8=1``) when the locale's
    encoding is not UTF-8 and the mode is off: config files, data and logs are UTF-8, and under
    such a locale jsonargparse read a config holding ``données`` as ASCII and stopped with a
    ``UnicodeDecodeError`` traceback (a new user's trial). ``PYTHONUTF8=0`` set by hand is kept;
    processes started by the command (DDP's) inherit the mode from the environment."""
    if sys.flags.utf8_mode or "PYTHONUTF8" in os.environ:
        return
    if locale.getpreferredencoding(False).lower().replace("-", "").replace("_", "") == "utf8":
        return
    os.environ["PYTHONUTF8"] = "1"
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


def main() -> None:
    in_utf8_mode()
    try:
        from lit_vr1 import cli
    except KeyboardInterrupt:  # every process of a torchrun job is stopped: rank 0 says it
        interrupted(say=os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) == "0")
    cli.main()


if __name__ == "__main__":  # python -m lit_vr1.entry
    main()
