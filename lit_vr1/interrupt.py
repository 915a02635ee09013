"""What a Ctrl-C prints: one line on how to resume, and exit status 130 (128 + SIGINT), as a
shell reports an interrupted command. Light on purpose: ``lit_vr1.entry`` uses it before
torch and Lightning are imported."""

from __future__ import annotations

import sys

RESUME_LAST = "--ckpt_path last (the steps after it run again)"
RESUME_HINT = f"{RESUME_LAST}, or --ckpt_path last_or_new if none may have been saved yet"
INTERRUPTED = f"lit-vr1: interrupted (Ctrl-C, exit 130); a fit resumes from its last checkpoint with {RESUME_HINT}"


def interrupted(notes: list[str] | None = None, say: bool = True) -> None:
    """Print the line (and ``notes``: where the fit stopped and what it resumes from) and exit 130;
    ``say`` False: exit 130 without a word (a process other than rank 0: a Ctrl-C reaches every
    process of a run, and each printed the same lines)."""
    if say:
        print("\n" + INTERRUPTED + "".join(f"\n{note}" for note in notes or []), file=sys.stderr)
    sys.exit(130)
