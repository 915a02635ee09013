"""The ``lit-vr1`` command. Python spends its first seconds importing torch, transformers and
Lightning; a Ctrl-C then would print the import's traceback. Here it gets the same one line
as a Ctrl-C later (:func:`interrupted`), before :func:`lit_vr1.cli.main` takes over."""

from __future__ import annotations

import sys

INTERRUPTED = ("lit-vr1: interrupted (Ctrl-C, exit 130); a fit resumes from its last checkpoint with --ckpt_path last "
               "(the steps after it run again), or --ckpt_path last_or_new if none may have been saved yet")


def interrupted() -> None:
    """Ctrl-C: one message and exit 130 (128 + SIGINT), as a shell reports an interrupted command."""
    print("\n" + INTERRUPTED, file=sys.stderr)
    sys.exit(130)


def main() -> None:
    try:
        from lit_vr1 import cli
    except KeyboardInterrupt:
        interrupted()
    cli.main()
