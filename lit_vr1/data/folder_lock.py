"""Locks of a synthetic data folder shared by runs (``data.synthetic_dir`` given to several).

Two runs of other specs started at once into one folder both trained on one seed's data, and a
run whose folder another redrew mid-fit read the new images with its old rows to its end,
without a word (a new user's trial). Two ``flock`` locks in the folder stop both:

- ``.lit-vr1-draw.lock``, exclusive, held while a data module checks the folder's spec stamps
  and draws what differs: one draw at a time, and no one reads a half-drawn folder;
- ``.lit-vr1-readers.lock``, shared, held by every data module of a Trainer's stage (fit,
  validate, test) from its first look at the folder until its teardown. A redraw needs it
  exclusively, without waiting: while any other run reads the folder, a data module whose spec
  differs is refused (:class:`SyntheticFolderInUse`) instead of drawing over it.

Every shared lock is taken while the draw lock is held, so no redraw slips in between a
module's check of the stamps and its read lock. Locks are dropped when their file closes, so a
killed run holds nothing. Where the file system has no locks (or the folder is read-only and
nothing needs drawing) nothing is locked, as before.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import weakref
from collections.abc import Iterator

DRAW_LOCK, READERS_LOCK = ".lit-vr1-draw.lock", ".lit-vr1-readers.lock"
_BUSY = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES)


class SyntheticFolderInUse(ValueError):
    """A redraw of a synthetic folder refused: another run reads it under another spec."""


def _open(folder: str, name: str) -> int | None:
    """The lock file ``name`` in ``folder``, open; None where it cannot be made (read-only)."""
    try:
        return os.open(os.path.join(folder, name), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        return None


def _flock(fd: int, how: int) -> bool:
    """``flock(fd, how)``: True when held, or when this file system has no locks (nothing to
    guard then); False only when another holder is in the way of a non-blocking request."""
    try:
        fcntl.flock(fd, how)
    except OSError as exc:
        if exc.errno in _BUSY:
            return False
    return True


@contextlib.contextmanager
def drawing(folder: str) -> Iterator[None]:
    """Hold ``folder``'s draw lock (waiting for another module's draw to end)."""
    os.makedirs(folder, exist_ok=True)
    fd = _open(folder, DRAW_LOCK)
    if fd is None:
        yield
        return
    try:
        _flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        _let_go(fd)


def _let_go(fd: int) -> None:
    """Unlock, then close: a data-loader worker forked with the file open shares its lock, which
    closing this process's copy alone would leave held."""
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_UN)
    with contextlib.suppress(OSError):
        os.close(fd)


class ReadLock:
    """One data module's hold on its synthetic folder (see the module docstring), let go at
    :meth:`release` or when the lock object is collected. Not copied with the module: a copy (a
    pickled data module) holds nothing."""

    def __init__(self) -> None:
        self.fd: int | None = None
        self.folder: str | None = None
        self._finalizer: weakref.finalize | None = None

    def __deepcopy__(self, memo: dict) -> ReadLock:
        return ReadLock()

    def __getstate__(self) -> dict:
        return {"fd": None, "folder": None, "_finalizer": None}

    def hold(self, folder: str) -> None:
        """Read ``folder`` (under its draw lock): a shared lock until :meth:`release`."""
        if self.folder == folder:
            return
        self.release()
        fd = _open(folder, READERS_LOCK)
        if fd is not None:
            _flock(fd, fcntl.LOCK_SH)  # no one holds it exclusively outside a draw, and this module holds the draw lock
            self._finalizer = weakref.finalize(self, _let_go, fd)
        self.fd, self.folder = fd, folder

    def may_redraw(self, folder: str) -> bool:
        """Whether ``folder`` may be drawn again (asked under its draw lock): no other reader
        holds it. This module's own hold, if any, stays. The draw itself needs no more: every
        shared lock is taken under the draw lock, which the drawer holds."""
        own = self.fd if self.folder == folder else None
        fd = own if own is not None else _open(folder, READERS_LOCK)
        if fd is None:
            return True
        free = _flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if own is None:
            os.close(fd)
        else:  # Linux drops a lock it converts before it asks for the new one: share it again, win or lose
            _flock(fd, fcntl.LOCK_SH)
        return free

    def release(self) -> None:
        """Let other runs redraw the folder."""
        if self._finalizer is not None:
            self._finalizer()  # once: unlock and close
        self.fd = self.folder = self._finalizer = None


def in_use_message(folder: str, split: str, stamp: str | None, wanted: str) -> str:
    """The refusal of a redraw of ``folder``'s ``split`` from ``stamp`` (its spec now) to ``wanted``."""
    try:
        now, new = json.loads(stamp or "{}"), json.loads(wanted)
        changed = [f"{key} {now.get(key)!r} -> {new.get(key)!r}" for key in sorted(new) if now.get(key) != new.get(key)]
    except ValueError:
        changed = []
    what = f" ({', '.join(changed)})" if changed else ""
    return (f"data.synthetic_dir={folder}: another run or data module is reading it, drawn with another spec, and this "
            f"one would draw its {split} split again under it{what}. Give this run a folder of its own "
            "(data.synthetic_dir), or leave it unset: a folder per spec")
