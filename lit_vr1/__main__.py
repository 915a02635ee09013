"""``python -m lit_vr1 fit --config ...``: the ``lit-vr1`` command, for a venv without its
console script on PATH (a notebook's ``!python -m lit_vr1 ...``, a source checkout)."""

from lit_vr1.entry import main

main()
