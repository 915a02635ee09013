"""Keep freed host memory for the next step instead of handing it back to the kernel.

A training step on the CPU allocates and frees the same activations every step. glibc's
malloc serves a block above its mmap threshold (128 KiB at start, raised by itself up to
32 MiB) with a fresh ``mmap`` and unmaps it on ``free``, and trims freed memory at the top of
its heap above 128 KiB; either way the next step's tensors land on pages the kernel must
fault in and zero again, one fault per 4 KiB page. On this project's tiny models that was
about a quarter of the wall time of an SFT step (system time 0.05-0.10 s of 0.22-0.27 s).

:func:`keep_freed_memory` raises both thresholds (``mallopt(M_MMAP_THRESHOLD)`` and
``mallopt(M_TRIM_THRESHOLD)``, glibc's ``mallopt(3)``; the same as the environment variables
``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` set before the process starts), so
blocks up to ``threshold`` come from the heap and freed ones stay mapped for reuse. Nothing
numeric changes: the same arithmetic on the same values, only where the memory comes from.
The price: memory a run freed stays counted in its resident size (at most ``threshold`` of it
at the heap's top) until the process ends; its peak does not rise (measured, see the README).

lit-vr1 calls it when a module builds its model (:meth:`lit_vr1.module.VLMModule.configure_model`),
in ``lit-vr1`` commands and in the demo. ``LIT_VR1_KEEP_FREED_MEMORY=0`` turns it off; outside
Linux with glibc (macOS, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1  # malloc.h
M_MMAP_THRESHOLD = -3
THRESHOLD = 1 << 30  # 1 GiB
ENV = "LIT_VR1_KEEP_FREED_MEMORY"

_applied: bool | None = None


def _mallopt():
    """glibc's ``mallopt``, or None where there is none (or it is musl's, which ignores it)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        if not hasattr(libc, "gnu_get_libc_version"):  # musl: its mallopt does nothing
            return None
        return libc.mallopt
    except (OSError, AttributeError):
        return None


def applied() -> bool:
    """Whether :func:`keep_freed_memory` has set the thresholds in this process."""
    return bool(_applied)


def keep_freed_memory(threshold: int = THRESHOLD) -> bool:
    """Set glibc's mmap and trim thresholds to ``threshold`` bytes for the rest of the process
    (once; later calls return the first call's answer). True when both were set; False when
    turned off by ``LIT_VR1_KEEP_FREED_MEMORY=0``, outside glibc, or refused by it."""
    global _applied
    if _applied is not None:
        return _applied
    mallopt = None if os.environ.get(ENV, "1").strip() == "0" else _mallopt()
    if mallopt is None:
        _applied = False
    else:
        mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        value = min(threshold, 2**31 - 1)
        _applied = bool(mallopt(M_MMAP_THRESHOLD, value)) and bool(mallopt(M_TRIM_THRESHOLD, value))
    return _applied
