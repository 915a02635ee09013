"""Checkpoints that survive a kill, and the state an exact resume needs beyond Lightning's.

* :class:`AtomicCheckpointIO` writes a checkpoint to a temporary file in the target's own
  directory, flushes it to disk and renames it over the target (``os.replace``): a process
  killed during a save leaves the previous file (``last.ckpt`` included) whole. Lightning's
  own writer stages the file in the system temp directory, and ``shutil.move`` turns into a
  copy straight onto the target when that directory is on another file system.
* :func:`rng_states` / :func:`set_rng_states`: the global generators (torch CPU and CUDA,
  Python ``random``, numpy) as plain values a ``weights_only`` load accepts. Lightning does
  not put them in checkpoints; rollouts sample from the global torch generator.
* :func:`use_atomic_checkpoints`: what the ``lit-vr1`` CLI calls on every Trainer it builds.
"""

from __future__ import annotations

import contextlib
import glob
import os
import random
from typing import Any

import numpy as np
import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

TEMP_MARK = ".tmp-"


def _is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def _fsync_dir(directory: str) -> None:
    """Make a rename in ``directory`` durable (a no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def temp_path_for(path: str) -> str:
    """The hidden temporary name a save of ``path`` is written under (same directory, so the
    final rename is atomic; never matches ``*.ckpt``, so ``--ckpt_path last`` ignores it)."""
    head, tail = os.path.split(path)
    return os.path.join(head, f".{tail}{TEMP_MARK}{os.getpid()}")


def remove_stale_temps(path: str) -> list[str]:
    """Delete temporary files left by earlier saves of ``path`` that were killed mid-write."""
    head, tail = os.path.split(path)
    stale = glob.glob(os.path.join(glob.escape(head), f".{glob.escape(tail)}{TEMP_MARK}*"))
    for name in stale:
        with contextlib.suppress(OSError):
            os.remove(name)
    return stale


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save(obj, path)`` that never leaves ``path`` half written: temp file, fsync,
    ``os.replace``. On any error the temp file is removed and ``path`` is untouched."""
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    remove_stale_temps(path)
    tmp = temp_path_for(path)
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    _fsync_dir(os.path.dirname(path))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` with atomic local writes (see the module docstring).
    Remote paths (``s3://`` and the like) go through Lightning's own writer.

    In Python: ``Trainer(plugins=[AtomicCheckpointIO()])``; the ``lit-vr1`` CLI installs it."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO.save_checkpoint takes no storage_options "
                            f"(got {storage_options!r}); use a CheckpointIO plugin that does")
        if not _is_local(str(path)):
            super().save_checkpoint(checkpoint, path)
            return
        atomic_torch_save(checkpoint, str(path).removeprefix("file://"))


def use_atomic_checkpoints(trainer) -> bool:
    """Give ``trainer``'s strategy an :class:`AtomicCheckpointIO` when it writes single files
    with Lightning's default writer. Strategies that save directories their own way
    (DeepSpeed, distributed FSDP2 checkpoints) and user-chosen plugins are left alone.
    Returns True when it was installed."""
    strategy = trainer.strategy
    try:
        io = strategy.checkpoint_io
    except (AttributeError, NotImplementedError):
        return False
    if type(io) is not TorchCheckpointIO:
        return False
    strategy.checkpoint_io = AtomicCheckpointIO()
    return True


# -- random generators -------------------------------------------------------------------------
def rng_states() -> dict[str, Any]:
    """The global generators' states, as tensors, ints and lists (``weights_only``-loadable)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["torch.cuda"] = torch.cuda.get_rng_state_all()
    return states


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`rng_states` returned (CUDA states only where CUDA is in use)."""
    torch.set_rng_state(states["torch"].cpu())
    random.setstate(_as_tuple(states["python"]))
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    cuda = states.get("torch.cuda")
    if cuda is not None and torch.cuda.is_available():
        devices = torch.cuda.device_count()
        if len(cuda) == devices:
            torch.cuda.set_rng_state_all(cuda)


def gather_rng_states(world_size: int) -> list[dict[str, Any]]:
    """Every process's :func:`rng_states`, in rank order (a collective: call on all ranks)."""
    mine = rng_states()
    if world_size == 1 or not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return [mine]
    out: list[Any] = [None] * world_size
    torch.distributed.all_gather_object(out, mine)
    return out
