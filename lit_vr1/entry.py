"""The ``lit-vr1`` command. Python spends its first seconds importing torch, transformers and
Lightning; a Ctrl-C then would print the import's traceback. Here it gets the same one line
as a Ctrl-C later (:func:`lit_vr1.interrupt.interrupted`), before :func:`lit_vr1.cli.main`
takes over."""

from __future__ import annotations

from lit_vr1.interrupt import interrupted


def main() -> None:
    try:
        from lit_vr1 import cli
    except KeyboardInterrupt:
        interrupted()
    cli.main()


if __name__ == "__main__":  # python -m lit_vr1.entry
    main()
