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
import dataclasses
import errno
import glob
import os
import pickle
import random
import re
import shutil
import signal
import threading
import time
import warnings
import zipfile
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lit_vr1.log_dirs import new_on_the_way
from lit_vr1.preemption import agreed_to_stop
from lit_vr1.val_schedule import crossed_multiple

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


@contextlib.contextmanager
def ctrl_c_after() -> Iterator[None]:
    """Hold a Ctrl-C (SIGINT) that arrives inside the block until the block ends, then raise it.

    A KeyboardInterrupt inside ``torch.save`` breaks its zip writer, which then fails with a
    RuntimeError ("unexpected pos ...") that hides the interrupt: the run ended with a
    traceback and exit 1 instead of Lightning's shutdown. Finishing the save first costs at
    most one save's time and keeps the checkpoint. Outside the main thread (where signal
    handlers cannot be set) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if held:
        raise KeyboardInterrupt


REFUSED_WRITES = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}
OS_ERROR_IN_TEXT = re.compile(r"\(os error (\d+)\)")


def os_error_in(exc: BaseException) -> OSError | None:
    """The operating system's refusal (disk full, file too large, read-only, no permission) in
    ``exc``'s chain: torch's zip writer reports a failed write as a RuntimeError ("unexpected
    pos ...") whose context is the OSError, safetensors' as a SafetensorError naming the errno."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno is not None:
            return current
        rust = OS_ERROR_IN_TEXT.search(str(current))  # safetensors' writer: "... (os error 28)"
        if rust:
            return OSError(int(rust.group(1)), os.strerror(int(rust.group(1))))
        current = current.__cause__ or current.__context__
    return None


def write_refused(what: str, path: str, exc: BaseException,
                  elsewhere: str = "--trainer.default_root_dir=<dir>") -> CheckpointError | None:
    """One message for a write the system refused (None for any other failure)."""
    cause = os_error_in(exc)
    if cause is None or cause.errno not in REFUSED_WRITES:
        return None
    kept = f"; the {what} there before is kept as it was" if os.path.exists(path) else ""
    return CheckpointError(f"could not write the {what} {path}: {cause.strerror or cause}{kept}. Free space there "
                           f"(or raise the file-size limit), or write elsewhere ({elsewhere})")


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save(obj, path)`` that never leaves ``path`` half written: temp file, fsync,
    ``os.replace``. On any error the temp file is removed and ``path`` is untouched; a write
    the system refuses (a full disk) is one :class:`CheckpointError` naming the file. A Ctrl-C
    during the save stops the run once the file is written (:func:`ctrl_c_after`)."""
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    remove_stale_temps(path)
    tmp = temp_path_for(path)
    with ctrl_c_after():
        try:
            with open(tmp, "wb") as f:
                torch.save(obj, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            refused = write_refused("checkpoint", path, exc)
            if refused is not None:
                raise refused from exc
            raise
        _fsync_dir(os.path.dirname(path))


@contextlib.contextmanager
def files_written_whole(folder: str) -> Iterator[str]:
    """A folder whose files are each replaced whole: the caller writes into a temporary folder
    inside ``folder`` (yielded; on its file system, with its permissions), whose files then
    replace their namesakes in ``folder`` by ``os.replace``. A kill leaves each file the old
    one or the new one, never half written (an export killed mid-write left a cut
    ``model.safetensors`` that a resume kept). Weight files of an earlier write that this one
    did not write (``model-00002-of-00002.safetensors`` after a one-file export) are removed,
    as ``save_pretrained`` removes them; the folder's other files stay. The temporary folder
    goes on error, and a killed process's the next time."""
    folder = os.path.realpath(folder)
    os.makedirs(folder, exist_ok=True)
    for stale in glob.glob(os.path.join(glob.escape(folder), f"{TEMP_MARK}*")):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = os.path.join(folder, f"{TEMP_MARK}{os.getpid()}")
    os.makedirs(tmp)
    try:
        yield tmp
        written = {os.path.relpath(os.path.join(root, name), tmp) for root, _, files in os.walk(tmp) for name in files}
        for name in sorted(written):
            os.makedirs(os.path.dirname(os.path.join(folder, name)), exist_ok=True)
            os.replace(os.path.join(tmp, name), os.path.join(folder, name))
        for name in os.listdir(folder):  # once the new ones are in place
            if name not in written and WEIGHT_FILE.fullmatch(name) and os.path.isfile(os.path.join(folder, name)):
                os.remove(os.path.join(folder, name))
        _fsync_dir(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


WEIGHT_FILE = re.compile(r"(model|pytorch_model|adapter_model)(-\d+-of-\d+)?\.(safetensors|bin)(\.index\.json)?")


def _KEEP_STORAGE(storage, location):  # noqa: N802 - Lightning's default map_location: keep each storage where it is
    return storage


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read; the message names it and an intact one beside it."""


class SettingsRefused(CheckpointError):
    """A resume refused because a setting differs from the checkpoint's run: every process of a
    run judges it alike (the CLI prints it on rank 0 alone), where a missing or broken file may be
    one machine's own."""


class FolderRefused(CheckpointError):
    """A fit refused its checkpoint folder: another fit writes into it, or this user cannot write
    there. The first process finds it and tells the others (:func:`lock_folders_of_processes`),
    so every process raises it alike and the CLI prints it on rank 0 alone."""


class FolderInUse(FolderRefused):
    """A fit refused its checkpoint folder because another fit writes into it: the CLI exits 75
    (``EX_TEMPFAIL``: try again later), not 2 (a setting to mend)."""


IN_USE_EXIT = 75  # sysexits.h EX_TEMPFAIL: a folder another run holds; the same command may run once it ends


def is_intact(path: str) -> bool:
    """Whether ``path`` is a whole torch checkpoint: a zip archive (torch.save's format)
    whose members all pass their CRC check. Reads the file, unpickles nothing."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None and any(n.endswith("data.pkl") for n in archive.namelist())
    except (OSError, zipfile.BadZipFile, EOFError, ValueError):
        return False


def newest_intact_beside(path: str) -> str | None:
    """The most recently written intact ``*.ckpt`` in ``path``'s directory other than ``path``: a
    whole file, or a sharded checkpoint's folder with nothing missing (:func:`sharded_missing`)."""
    folder = os.path.dirname(os.path.abspath(path))
    others = [p for p in glob.glob(os.path.join(glob.escape(folder), "*.ckpt")) if os.path.abspath(p) != os.path.abspath(path)]
    for candidate in sorted(others, key=os.path.getmtime, reverse=True):
        if is_intact(candidate) or (os.path.isdir(candidate) and not sharded_missing(candidate)):
            return candidate
    return None


def beside_hint(path: str) -> str:
    """What a refusal of the broken checkpoint ``path`` adds: the newest intact one beside it."""
    other = newest_intact_beside(path)
    return f"; the newest intact checkpoint beside it is {other}: resume with --ckpt_path {other}" if other else \
        "; no intact checkpoint lies beside it: start without --ckpt_path"


def is_sharded(path: str) -> bool:
    """Whether ``path`` is a sharded checkpoint: a folder written by ``torch.distributed.checkpoint``
    (FSDP2's ``ModelParallelStrategy`` with ``save_distributed_checkpoint: true``, as
    ``configs/strategy/fsdp2.yaml`` sets), holding a ``.metadata`` file beside the shards."""
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, ".metadata"))


def load_sharded(path: str) -> dict[str, Any]:
    """A sharded checkpoint (:func:`is_sharded`) read whole into memory, in one process, as
    Lightning's ``consolidate_checkpoint`` reads it (weights as ``state_dict``, the optimiser
    states keyed by parameter name, the run's other entries); a :class:`CheckpointError` naming
    the folder when a shard is missing or cut off."""
    from pathlib import Path

    from lightning.fabric.utilities.load import _load_distributed_checkpoint
    from torch.distributed.checkpoint.api import CheckpointException  # a BaseException, holding each rank's failure

    allow_saved_settings()
    try:
        return _load_distributed_checkpoint(Path(path))
    except (Exception, CheckpointException) as exc:  # noqa: BLE001 - any failure of the shards is the folder's
        causes = getattr(exc, "failures", None) or {}  # {rank: (exception, traceback frames)}
        cause = next(iter(causes.values()), (exc,)) if isinstance(causes, dict) else (exc,)
        cause = cause[0] if isinstance(cause, tuple) and cause and isinstance(cause[0], BaseException) else exc
        first = (str(cause).strip().splitlines() or [type(cause).__name__])[-1][:300]
        raise CheckpointError(f"sharded checkpoint {path} cannot be read ({type(cause).__name__}: {first}); a shard "
                              "is missing or cut off: resume from an intact checkpoint beside it") from None


def sharded_missing(path: str) -> list[str]:
    """What a sharded checkpoint's folder lacks: ``.metadata``, ``meta.pt``, a shard the metadata
    names, or the end of one (shorter than the tensors the metadata places in it); nothing for a
    complete one."""
    from torch.distributed.checkpoint import FileSystemReader

    missing = [name for name in (".metadata", "meta.pt") if not os.path.isfile(os.path.join(path, name))]
    if missing:
        return missing
    try:
        storage = FileSystemReader(path).read_metadata().storage_data or {}
    except Exception as exc:  # noqa: BLE001 - an unreadable .metadata is a damaged folder
        return [f".metadata ({type(exc).__name__})"]
    needed: dict[str, int] = {}  # each shard's size as the metadata places its tensors
    for item in storage.values():
        name = getattr(item, "relative_path", "")
        if name:
            needed[name] = max(needed.get(name, 0), int(getattr(item, "offset", 0)) + int(getattr(item, "length", 0)))
    out = []
    for name, size in sorted(needed.items()):
        file = os.path.join(path, name)
        if not os.path.isfile(file):
            out.append(name)
        elif os.path.getsize(file) < size:  # a kill during a save over the same folder (last.ckpt)
            out.append(f"{name} (cut off: {os.path.getsize(file)} of {size} bytes)")
    return out


def check_sharded_folder(path: str) -> dict[str, Any]:
    """A sharded checkpoint's folder checked whole before FSDP2 reads it (its loader stopped with
    a 109-185 line traceback at a missing shard): a :class:`CheckpointError` naming what
    :func:`sharded_missing` finds and the newest intact checkpoint beside it. Returns ``meta.pt``
    (the run's settings, loops and callbacks' states)."""
    refuse_model_folder(path)
    missing = sharded_missing(path)
    if missing:
        raise CheckpointError(f"sharded checkpoint {path} is incomplete: {', '.join(missing)} missing{beside_hint(path)}")
    return sharded_meta(path)


def sharded_meta(path: str) -> dict[str, Any]:
    """A sharded checkpoint's ``meta.pt``: everything but the tensors (settings, loops, callbacks)."""
    allow_saved_settings()
    return torch.load(os.path.join(path, "meta.pt"), map_location="cpu", weights_only=True)


def refuse_model_folder(path: str) -> None:
    """A model folder (an export, save_pretrained's: config.json beside the weights) or a file of
    one given where a training checkpoint is read (``--ckpt_path``): said as such, with the flag
    that starts from it. It was told as a sharded checkpoint missing .metadata, or as a corrupt
    checkpoint of so many bytes (a new user's trial)."""
    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    model_file = os.path.isfile(path) and path.endswith((".safetensors", ".bin", ".json"))
    if (os.path.isdir(path) or model_file) and os.path.isfile(os.path.join(folder, "config.json")):
        raise CheckpointError(f"{path} is {'a file of ' if model_file else ''}a model folder (an export: config.json "
                              "and the weights), not a training checkpoint: start a new fit from it with "
                              f"--model.init_args.model={folder}, without --ckpt_path (a checkpoint is a .ckpt file, "
                              "or a sharded folder holding .metadata)")


def check_checkpoint_file(path: str) -> None:
    """Raise :class:`CheckpointError` when ``path`` is empty, cut off or not a checkpoint,
    naming the newest intact checkpoint beside it (never suggesting an unsafe load). A sharded
    checkpoint's folder (:func:`is_sharded`) passes; its shards are checked as they are read."""
    if is_sharded(path):
        return
    refuse_model_folder(path)
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path} is a folder but not a sharded checkpoint (no .metadata file in it)")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    if is_intact(path):
        return
    size = os.path.getsize(path)
    what = "is empty (0 bytes)" if size == 0 else f"is corrupt or incomplete ({size} bytes, not a whole torch checkpoint)"
    raise CheckpointError(f"checkpoint {path} {what}{beside_hint(path)}")


# What torch.load may raise for a missing, empty, cut-off or foreign file: any exception, since a
# file that is not a zip archive goes to torch's legacy unpickler, and arbitrary bytes there fail
# with whatever the opcode they happen to spell trips on (IndexError, KeyError, struct.error, ...).
# load_failure re-raises every failure of an intact file, so catching broadly hides nothing.
LOAD_ERRORS = (Exception,)


def allow_saved_settings() -> None:
    """Let a weights-only load read the settings objects lit-vr1's modules and data module keep
    among their hyperparameters when built from Python (``GRPOConfig``, ``LoraSpec``, ``TinySpec``,
    ``SyntheticSpec``, paths; the CLI saves plain values): without them the export and a resume
    refused the package's own Python checkpoints. Idempotent."""
    import pathlib

    import lit_vr1.config  # noqa: F401 - registers GRPOConfig
    import lit_vr1.models.lora  # noqa: F401 - registers LoraSpec
    import lit_vr1.models.tiny_parts  # noqa: F401 - registers TinySpec
    from lit_vr1.data.synthetic import SyntheticSpec

    torch.serialization.add_safe_globals([SyntheticSpec, pathlib.Path, pathlib.PosixPath, pathlib.WindowsPath,
                                          pathlib.PurePosixPath, pathlib.PureWindowsPath])


def refused_global(exc: BaseException) -> str | None:
    """The class a weights-only load refused (``Unsupported global: GLOBAL a.b.C ...``), if named."""
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
    return found.group(1) if found else None


def load_failure(path: str, exc: BaseException) -> CheckpointError | None:
    """The error to raise when loading ``path`` failed with ``exc``: the file diagnosed by
    :func:`check_checkpoint_file` (raised from here when it is broken); for an intact file
    whose objects a weights-only load refuses, a :class:`CheckpointError` (torch's own
    message advises ``weights_only=False``, which runs whatever code a tampered file holds);
    None when the file is intact and the failure is another one (re-raise ``exc``)."""
    check_checkpoint_file(path)
    if isinstance(exc, pickle.UnpicklingError):
        name = refused_global(exc)
        what = f"an object of {name}" if name else "objects"
        return CheckpointError(f"checkpoint {path} holds {what}, which a weights-only load refuses: lit-vr1 loads only "
                               "the types its own runs save, never unsafely (a load that takes any object runs "
                               "whatever code the file holds); a class of your own among the hyperparameters can be "
                               "allowed with torch.serialization.add_safe_globals([...]) before loading")
    return None


def load_checkpoint_file(path: str, map_location: Any = None, weights_only: bool | None = True) -> dict[str, Any]:
    """``torch.load`` of a checkpoint, a :class:`CheckpointError` naming the file when it
    cannot be loaded (:func:`load_failure`). The file is diagnosed only when the load fails,
    so an intact checkpoint is read once."""
    allow_saved_settings()
    if is_sharded(path):
        return load_sharded(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=weights_only)
    except LOAD_ERRORS as exc:
        error = load_failure(path, exc)
        if error is None:
            raise
        raise error from None


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

    def load_checkpoint(self, path: _PATH, map_location: Any = _KEEP_STORAGE, weights_only: bool | None = None) -> dict:
        """Lightning's load, with a broken local file reported as a :class:`CheckpointError`; a
        sharded checkpoint's folder (an FSDP2 run's) read whole (:func:`load_sharded`)."""
        allow_saved_settings()
        if not _is_local(str(path)):
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        if is_sharded(str(path).removeprefix("file://")):  # an FSDP2 run's, read here by one process (validate, ...)
            return load_sharded(str(path).removeprefix("file://"))
        try:
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        except LOAD_ERRORS as exc:
            error = load_failure(str(path).removeprefix("file://"), exc)
            if error is None:
                raise
            raise error from None


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


LAST_OR_NEW = "last_or_new"


def _plain(value: Any) -> Any:
    """A setting as plain data (dataclasses and namespaces as dicts), for comparing a
    checkpoint's saved settings with the current run's."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if hasattr(value, "as_dict") and callable(value.as_dict):  # jsonargparse's Namespace
        return _plain(value.as_dict())
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if k not in ("_instantiator", "_class_path")}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def setting_differences(saved: dict, current: dict, keys: tuple[str, ...], prefix: str) -> list[str]:
    """``prefix.key: <saved> in the checkpoint, <current> now`` for each of ``keys`` whose
    value differs between a checkpoint's saved settings and the current run's; settings that
    are dicts on both sides (``data.synthetic``) are compared key by key
    (``data.synthetic.seed: 0 in the checkpoint, 7 now``)."""
    out = []
    for key in keys:
        if key not in saved:
            continue
        old, new = _plain(saved[key]), _plain(current.get(key))
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            out += setting_differences(old, new, tuple(dict.fromkeys([*old, *new])), f"{prefix}.{key}")
        else:
            out.append(f"{prefix}.{key}: {old!r} in the checkpoint, {new!r} now")
    return out


def refuse_foreign_resume(what: str, differences: list[str]) -> None:
    """Raise :class:`CheckpointError` when a resumed checkpoint was written with other
    settings (another run's checkpoint in the same folder, or a changed config)."""
    if differences:
        raise SettingsRefused(f"the checkpoint to resume was written by a run with another {what}: "
                              + "; ".join(differences) + ". Resume with the run's own settings; or, to go on from "
                              "its weights with the new ones, export the checkpoint (python -m lit_vr1.export <ckpt> "
                              "<folder>) and start a new fit from it (--model.init_args.model=<folder>, without "
                              "--ckpt_path) under another trainer.default_root_dir")


def refuse_changed_resume(groups: dict[str, list[str]]) -> None:
    """:func:`refuse_foreign_resume` of every group of differences at once, the groups with
    differences named together: ``{"model": [...], "training data": [], "training order":
    [...]}`` -> "another model and training order: ..."."""
    named = [what for what, differences in groups.items() if differences]
    refuse_foreign_resume(" and ".join(named), [d for differences in groups.values() for d in differences])


def strict_last_checkpoint(trainer) -> None:
    """Make ``ckpt_path="last"`` an error when there is no checkpoint to resume (Lightning
    warns and trains from scratch), and accept ``ckpt_path="last_or_new"``: resume from the
    last checkpoint when there is one (in a folder without ``last.ckpt``, a ModelCheckpoint
    without ``save_last``, from the newest checkpoint, with a warning), else start fresh.
    Resolution is Lightning's own (the ModelCheckpoint folders, once the Trainer has set them
    up); without ``last.ckpt``, every refusal names the newest checkpoint."""
    connector = trainer._checkpoint_connector
    resolve = connector._parse_ckpt_path

    def parse(state_fn, ckpt_path, model_provided, model_connected):
        if ckpt_path is None and state_fn == "fit":
            refuse_earlier_checkpoints(trainer)
        if ckpt_path not in ("last", LAST_OR_NEW):
            return resolve(state_fn, ckpt_path, model_provided, model_connected)
        with warnings.catch_warnings():  # Lightning's warning: for "last" said below, in one message
            warnings.filterwarnings("ignore", message=".*there is no last checkpoint available.*")
            resolved = resolve(state_fn, "last", model_provided, model_connected)
        folders = _checkpoint_folders(trainer)
        newest = newest_checkpoint(folders)
        if resolved is not None:
            chosen = newer_than_last(str(resolved), newest_resumable(folders) if newest else None, ckpt_path)
            note = versioned_last_note(chosen, ckpt_path)
            if note:
                rank_zero_warn(note)
            return chosen
        where = f" in {', '.join(folders)}" if folders else " (no ModelCheckpoint saves any)"
        fit = str(getattr(state_fn, "value", state_fn)) == "fit"
        full = newest_resumable(folders) if newest is not None else None
        if ckpt_path == "last" and full is not None and any(cb.save_last for cb in trainer.checkpoint_callbacks):
            # its ModelCheckpoint saves last.ckpt: the run stopped while its first one was being written
            rank_zero_warn(f"--ckpt_path last: there is no last.ckpt{where} (the run stopped before its first was "
                           f"written whole); resuming from the newest checkpoint, {full}")
            return full
        if ckpt_path == LAST_OR_NEW and fit and newest is not None:
            # checkpoints but no last.ckpt (a ModelCheckpoint without save_last): a job that restarts
            # itself resumes from the newest one (refuse_foreign_resume still guards another run's)
            rank_zero_warn(f"--ckpt_path {LAST_OR_NEW}: there is no last.ckpt{where}; resuming from the newest "
                           f"checkpoint, {newest}")
            return newest
        if ckpt_path == "last" and newest is not None:  # checkpoints, but none named last
            raise CheckpointError(f"--ckpt_path last: there is no last.ckpt{where} (its ModelCheckpoint does not "
                                  f"save_last); {'resume' if fit else 'read'} its newest checkpoint with "
                                  f"--ckpt_path {newest}")
        if ckpt_path == "last" and not fit:  # validate, test, predict: nothing trained to read
            raise CheckpointError(f"--ckpt_path last: there is no checkpoint{where}; train one first (lit-vr1 fit "
                                  "with the same --trainer.default_root_dir), or give a checkpoint file's path")
        if ckpt_path == "last":
            raise CheckpointError(f"--ckpt_path last: there is no checkpoint to resume from{where}; to start fresh "
                                  f"leave out --ckpt_path, or pass --ckpt_path {LAST_OR_NEW} to resume only when "
                                  "a checkpoint exists")
        if fit:
            rank_zero_info(f"--ckpt_path {LAST_OR_NEW}: no checkpoint{where} yet; the run starts from the beginning")
        return None

    def parse_and_overwrite(state_fn, ckpt_path, model_provided, model_connected):
        if str(getattr(state_fn, "value", state_fn)) == "fit":
            lock_checkpoint_folders(trainer)
        try:
            resolved = parse(state_fn, ckpt_path, model_provided, model_connected)
        except BaseException:
            release_checkpoint_folders()
            raise
        if resolved is not None and str(getattr(state_fn, "value", state_fn)) == "fit":
            overwrite_on_resume(trainer, str(resolved))
        setattr(trainer, SELECTED, resolved)
        return resolved

    connector._parse_ckpt_path = parse_and_overwrite


SELECTED = "_lit_vr1_selected_checkpoint"  # the checkpoint a run will load, known before its setup hooks


def selected_checkpoint(trainer) -> str | None:
    """The checkpoint ``trainer``'s run will load, as resolved (``last`` made a path) before the
    setup hooks run: Lightning sets ``trainer.ckpt_path`` only when it restores, after them (None
    for a Trainer without :func:`strict_last_checkpoint`)."""
    connector = getattr(trainer, "_checkpoint_connector", None)
    if connector is not None and getattr(connector, "_user_managed", False):  # trainer.ckpt_path = X, then fit()
        path = connector._ckpt_path
    else:
        path = getattr(trainer, SELECTED, None)
    return None if path is None else str(path)


def saved_step(path: str) -> int:
    """The optimiser step a checkpoint that a fit can resume was saved at: one holding the
    optimisers' and the loops' state, not a ``save_weights_only`` file (-1 for those and for a
    file that cannot be read); its tensors are mapped, not read."""
    allow_saved_settings()
    if os.path.isdir(path):  # a sharded folder (FSDP2): its loops in meta.pt, its optimiser states among the shards
        if not is_sharded(path) or sharded_missing(path):
            return -1
        try:
            saved = sharded_meta(path)
        except Exception:  # noqa: BLE001 - as for a file
            return -1
        return int(saved.get("global_step", -1)) if isinstance(saved, dict) and "loops" in saved else -1
    try:
        saved = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception:  # noqa: BLE001 - any unreadable file is no candidate (load_failure says why when it is resumed)
        return -1
    if not isinstance(saved, dict) or "optimizer_states" not in saved or "loops" not in saved:
        return -1
    return int(saved.get("global_step", -1))


def newest_resumable(folders: list[str]) -> str | None:
    """The most recently written checkpoint in ``folders`` that a fit can resume (:func:`saved_step`)."""
    return next((path for path in checkpoints_newest_first(folders) if saved_step(path) >= 0), None)


LOCK_NAME = ".lit-vr1-fit.lock"
_FOLDER_LOCKS: dict[str, int] = {}  # checkpoint folders this process fits into: their lock files, open
_MADE_FOR_LOCK: dict[str, str] = {}  # such a folder -> the outermost folder the lock made on its way (none existed)


def lock_checkpoint_folders(trainer) -> None:
    """One fit at a time into a checkpoint folder: a one-process fit holds an exclusive
    ``flock`` on ``<folder>/.lit-vr1-fit.lock`` until its teardown (or the process's end), and
    a second fit into that folder is refused, naming the process that holds it. Two fits
    started at once both ran: their checkpoints became ``last.ckpt`` and ``last-v1.ckpt`` and
    both wrote one export (a new user's trial). A fit in the same process (a notebook's next)
    goes on; a file system without locks locks nothing. Several processes lock at their setup
    (:func:`lock_folders_of_processes`), where they can agree."""
    if trainer.world_size > 1:
        return
    _lock_folders(trainer)


def export_of_another_run(trainer, export_dir: str | None) -> str | None:
    """The refusal of a fit that resumes a checkpoint from outside its own checkpoint folders (a
    branch of another run, into a new root) while ``export_dir`` already holds a model: the
    checkpoint's settings are the fit's defaults, so its run's ``export_dir`` came along, and the
    branch wrote its model over that run's export without a word (a new user's trial; a LoRA run
    built on that export then stood on another base). None when there is no such clash."""
    ckpt = selected_checkpoint(trainer)
    if not ckpt or not export_dir or not os.path.isfile(os.path.join(export_dir, "config.json")):
        return None
    home = os.path.dirname(os.path.realpath(ckpt.rstrip(os.sep)))
    if any(os.path.realpath(folder) == home for folder in _checkpoint_folders(trainer)):
        return None  # this run's own checkpoint: its export is this run's to write
    return (f"model.export_dir={export_dir} already holds a model, and this fit resumes {ckpt}, another run's "
            "checkpoint (whose settings, its export_dir among them, are this fit's defaults): its export would be "
            "written over. Give this run a folder of its own, --model.init_args.export_dir=<folder>, or null for none")


def lock_folders_of_processes(trainer) -> None:
    """:func:`lock_checkpoint_folders` for a fit of several processes, at its setup (the
    processes' group is up): the first process takes the locks and every process hears whether
    it could, so all refuse together. Two 2-process fits into one folder both ran, their files
    mixed (a new user's trial)."""
    if trainer.world_size <= 1:
        return
    refused = None
    if trainer.global_rank == 0:
        try:
            _lock_folders(trainer)
        except Exception as exc:  # anything: the others wait in the broadcast below, and must hear of it
            refused = (isinstance(exc, FolderInUse),
                       str(exc) if isinstance(exc, FolderRefused) else f"{type(exc).__name__}: {exc}")
    refused = trainer.strategy.broadcast(refused, src=0)
    if refused:
        raise (FolderInUse if refused[0] else FolderRefused)(refused[1])


def _lock_folders(trainer) -> None:
    import fcntl

    for folder in _checkpoint_folders(trainer):
        if folder in _FOLDER_LOCKS:
            continue
        made = new_on_the_way(folder)  # the folders makedirs makes, outermost first
        try:
            os.makedirs(folder, exist_ok=True)
            fd = os.open(os.path.join(folder, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:  # a read-only root or mount, a full disk: one line, not a 40-line traceback (a trial)
            raise FolderRefused(f"cannot write into the checkpoint folder {folder} ({exc.strerror}: {exc.filename}): "
                                  "give --trainer.default_root_dir (or the ModelCheckpoint's dirpath) a folder this "
                                  "user can write") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):  # no locks here (ENOLCK)
                continue
            raise FolderInUse(f"another fit (process {holder or 'unknown'}) is writing checkpoints into {folder}: "
                                  "wait for it to end, or give this one another --trainer.default_root_dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        _FOLDER_LOCKS[folder] = fd
        if made:  # recorded once the lock is held: a failure before leaves nothing to remove later
            _MADE_FOR_LOCK[folder] = made[0]


def release_checkpoint_folders() -> None:
    """Let other fits into this process's checkpoint folders: the lock file is removed (a folder
    holds the run's checkpoints alone), then closed, which drops its lock. Called at the fit's
    teardown and when it raises (Lightning runs no teardown then)."""
    for folder in list(_FOLDER_LOCKS):
        with contextlib.suppress(OSError):
            os.remove(os.path.join(folder, LOCK_NAME))
        with contextlib.suppress(OSError):
            os.close(_FOLDER_LOCKS.pop(folder))
        remove_empty_made(folder, _MADE_FOR_LOCK.pop(folder, None))


def remove_empty_made(folder: str, top: str | None) -> None:
    """Remove ``folder`` and its parents up to ``top`` (the folders the lock made) while they are
    empty: a fit refused after the lock (a logger folder that is a file, say) left
    ``<root>/checkpoints/`` behind, holding nothing (a new user's trial)."""
    if top is None:
        return
    path, top = os.path.abspath(folder), os.path.abspath(top)
    while path.startswith(top):
        try:
            os.rmdir(path)  # only an empty folder goes
        except OSError:
            return
        if path == top:
            return
        path = os.path.dirname(path)


def versioned_last_note(chosen: str, flag: str) -> str | None:
    """A note when ``--ckpt_path last`` resolves to a versioned ``last-vN.ckpt`` (Lightning takes
    the newest ``last*`` file): another ModelCheckpoint, or a lit-vr1 from before 2026-12-06,
    left it beside ``last.ckpt``, and the resume went on from it with only Lightning's "Restoring
    states" line (an upgrading user's trial); this run's saves replace ``last.ckpt``."""
    name = os.path.basename(chosen.rstrip(os.sep))
    plain = os.path.join(os.path.dirname(chosen), "last.ckpt")
    if not re.fullmatch(r"last-v\d+\.ckpt", name) or not os.path.exists(plain):  # a sharded one is a folder
        return None
    return (f"--ckpt_path {flag}: resuming from {name} (step {saved_step(chosen)}), the newest of the last*.ckpt files, "
            f"not last.ckpt (step {saved_step(plain)}) beside it: a run by another ModelCheckpoint or an older lit-vr1 "
            f"wrote it. This run saves into last.ckpt; {name} stays as it is (delete it once this run has saved)")


def newer_than_last(last: str, newest: str | None, flag: str) -> str:
    """``last`` unless an intact checkpoint was written after it (the run stopped between its
    step checkpoint's write and last.ckpt's: ``last`` would resume steps earlier, silently), said."""
    if newest is None or os.path.realpath(newest) == os.path.realpath(last):
        return last
    try:
        later = os.path.getmtime(newest) > os.path.getmtime(last)
    except OSError:
        return last
    if not later or not is_intact(newest) or not saved_step(newest) > saved_step(last):  # a best-model save of a step
        return last
    rank_zero_warn(f"--ckpt_path {flag}: {newest} was written after {last} (the run stopped between the two "
                   "saves); resuming from it, the newest checkpoint")
    return newest


STEP_IN_NAME = re.compile(r"step=(\d+)")
LAST_SAVED_AT_END = "_lit_vr1_last_saved_at_end"  # the step of the last.ckpt saved at the fit's last batch
ROLLOUT_END_SAVES = "_lit_vr1_rollout_end_saves"  # set on a ModelCheckpoint whose hook save_at_rollout_ends wrapped
LIGHTNING_SAVE_PARTS = ("_should_skip_saving_checkpoint", "_monitor_candidates", "_save_topk_checkpoint",
                        "_save_last_checkpoint")


def save_at_rollout_ends(trainer) -> None:
    """Make each ModelCheckpoint's ``every_n_train_steps`` N save at the first training-batch end
    at or after every multiple of N. Lightning saves only when ``global_step`` is a multiple of N
    at a batch end, and a GRPO batch (one rollout) may take several optimiser steps: with 2 a
    rollout, N=5 saved at steps 10, 20, ... (a run killed at step 9 had nothing to resume from), and
    after one skipped step (non-finite loss) N=4 would never save again. Where Lightning saves
    itself, it still does; once per Trainer (idempotent)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    for callback in trainer.checkpoint_callbacks:
        if not isinstance(callback, ModelCheckpoint) or getattr(callback, ROLLOUT_END_SAVES, False):
            continue
        if not all(hasattr(callback, part) for part in LIGHTNING_SAVE_PARTS):  # another Lightning: its own rule
            continue
        _wrap_batch_end(callback)


def _wrap_batch_end(callback) -> None:
    lightning_hook = callback.on_train_batch_end
    seen = {"step": None}

    def on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx):
        n, step = callback._every_n_train_steps, trainer.global_step
        last = seen["step"] if seen["step"] is not None else step - 1
        seen["step"] = step
        if n > 1 and step % n and crossed_multiple(last, step, n):  # a multiple of n was stepped over inside this batch
            save_stepped_over(trainer)
        else:
            lightning_hook(trainer, pl_module, outputs, batch, batch_idx)
        if fit_ends_after(trainer):
            save_last_at_end(trainer)

    def save_last_at_end(trainer) -> None:
        # (save_last "link" links the newest top-k file, which need not be this step's: left to Lightning)
        if callback.save_last is not True or callback._should_skip_saving_checkpoint(trainer):
            return
        before = callback._last_global_step_saved
        callback._save_last_checkpoint(trainer, callback._monitor_candidates(trainer))
        # as if not saved at this step: Lightning's own saves of it (an epoch's end, a monitored
        # validation's top-k) still run; its end-of-fit save of last.ckpt does not (it has one)
        callback._last_global_step_saved = before
        setattr(callback, LAST_SAVED_AT_END, trainer.global_step)  # for the stop message

    def save_last_after_a_stop(trainer) -> None:
        # a stop asked for after the batch end (EarlyStopping, in the validation that follows it or at the
        # epoch's end): last.ckpt stayed at the previous save, and a resume redid the steps since
        stopped = trainer.should_stop and getattr(trainer.fit_loop, "_can_stop_early", True)
        if stopped and not trainer.sanity_checking and getattr(callback, LAST_SAVED_AT_END, None) != trainer.global_step:
            save_last_at_end(trainer)

    def on_validation_end(trainer, pl_module):
        lightning_validation_end(trainer, pl_module)
        save_last_after_a_stop(trainer)

    def on_train_epoch_end(trainer, pl_module):
        lightning_epoch_end(trainer, pl_module)
        save_last_after_a_stop(trainer)

    def on_train_end(trainer, pl_module):
        if trainer.fast_dev_run:  # Lightning's end-of-fit save of last.ckpt ignores fast_dev_run (its others skip it)
            return
        lightning_train_end(trainer, pl_module)

    def save_stepped_over(trainer) -> None:
        if callback._should_skip_saving_checkpoint(trainer):
            return
        candidates = callback._monitor_candidates(trainer)
        if callback.monitor is not None and callback.monitor not in candidates:
            callback._defer_save_until_validation = True  # Lightning's own rule for a metric not logged yet
            return
        callback._save_topk_checkpoint(trainer, candidates)
        callback._save_last_checkpoint(trainer, candidates)
        callback._last_time_checked = time.monotonic()

    def on_train_start(trainer, pl_module):  # a resume starts from the checkpoint's step
        seen["step"] = trainer.global_step
        return lightning_start(trainer, pl_module)

    lightning_start = callback.on_train_start
    lightning_validation_end, lightning_train_end = callback.on_validation_end, callback.on_train_end
    lightning_epoch_end = callback.on_train_epoch_end
    callback.on_train_batch_end = on_train_batch_end
    callback.on_train_start = on_train_start
    callback.on_validation_end = on_validation_end
    callback.on_train_epoch_end = on_train_epoch_end
    callback.on_train_end = on_train_end
    setattr(callback, ROLLOUT_END_SAVES, True)


def fit_ends_after(trainer) -> bool:
    """Whether the fit stops after this training batch: ``max_steps`` reached, the last batch of
    the last epoch, a stop asked for (``max_time``'s timer, a callback), or a
    SIGTERM (the fit then stops at this step's end; under several processes once they have all
    agreed on this step, :mod:`lit_vr1.preemption`). There ``last.ckpt`` is saved, mid-epoch as
    every periodic save: Lightning's own end-of-fit save came after the epoch was counted as
    done (a resume then started the next epoch, another data order) and only when the process
    had saved no ``last`` before (with ``max_steps`` not a multiple of ``every_n_train_steps``
    the steps after the last multiple were in no checkpoint)."""
    if 0 <= trainer.max_steps <= trainer.global_step:
        return True
    if trainer.should_stop and getattr(trainer.fit_loop, "_can_stop_early", True):  # min_steps / min_epochs met
        return True
    if agreed_to_stop(trainer):
        return True
    epochs = trainer.max_epochs
    loop = trainer.fit_loop.epoch_loop.batch_progress
    return epochs is not None and epochs >= 0 and trainer.current_epoch + 1 >= epochs and bool(loop.is_last_batch)


def overwrite_on_resume(trainer, ckpt_path: str) -> None:
    """A resumed fit writes its checkpoints under their own names: ``last.ckpt`` and
    ``...step=N.ckpt`` are replaced, not kept beside ``last-v1.ckpt`` / ``...step=N-v1.ckpt``
    (a ModelCheckpoint whose file names hold no step, e.g. a monitored ``best``, keeps Lightning's
    versions, so an earlier run's best file is never overwritten).
    Lightning versions a name that exists unless its ModelCheckpoint's restored state says it
    wrote it, so a resume whose ModelCheckpoint was configured otherwise (a new
    ``every_n_train_steps``: another state key, nothing restored) left ``last.ckpt`` at the old
    step while the run went on in ``last-v1.ckpt``, and export / validate of ``last.ckpt`` read
    the old weights. A resume from an earlier checkpoint than the folder's newest (a rollback)
    says which later checkpoints of the abandoned run this one will replace as it reaches them."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    for callback in trainer.checkpoint_callbacks:
        if not isinstance(callback, ModelCheckpoint):
            continue
        if callback.filename is None or "step" in callback.filename:  # one name per step: the new run's replaces it
            callback._enable_version_counter = False
        last = callback.format_checkpoint_name({}, callback.CHECKPOINT_NAME_LAST) if callback.dirpath else None
        if last and not callback.last_model_path and os.path.isfile(last):  # the run's last.ckpt, whatever the state says
            callback.last_model_path = last
    step, later = later_checkpoints(trainer, ckpt_path)
    setattr(trainer, ROLLBACK, step if later else None)
    if later:
        listed = ", ".join(later[:3]) + (f" and {len(later) - 3} more" if len(later) > 3 else "")
        logged = any(type(cb).__name__ == "RolloutLog" for cb in getattr(trainer, "callbacks", []))
        rank_zero_warn(f"resuming from step {step} while the checkpoint folder holds later checkpoints of the "
                       f"run that went on ({listed}): this run replaces them as it reaches their steps (and "
                       "last.ckpt at its first save); move them first to keep them"
                       + (f". RolloutLog keeps the abandoned run's lines after step {step} beside its file, in "
                          f"<name>.abandoned-after-step{step}.jsonl" if logged else ""))


ROLLBACK = "_lit_vr1_rollback_step"  # set on a Trainer that resumes an earlier checkpoint than its folder's newest


def later_checkpoints(trainer, ckpt_path: str) -> tuple[int, list[str]]:
    """The step of ``ckpt_path`` and the checkpoints of the fit's folders saved at a later step
    (a rollback abandons them), by the step in a name (``step=25``) or, for a name without one
    (``last.ckpt``, a copy under a name of one's own), the step saved in the file (its tensors
    mapped, not read). By names alone, a resume of a copy of step 10's ``last.ckpt`` beside the
    step-25 run was not told of (a new user's trial)."""
    def step_of(path: str) -> int:
        found = STEP_IN_NAME.search(os.path.basename(path.rstrip(os.sep)))
        return int(found.group(1)) if found else saved_step(path)

    step = step_of(ckpt_path)
    if step < 0:
        return step, []
    later = []
    for folder in _checkpoint_folders(trainer):
        for name in os.listdir(folder) if os.path.isdir(folder) else []:
            path = os.path.join(folder, name)
            if name.endswith(".ckpt") and os.path.abspath(path) != os.path.abspath(ckpt_path) and step_of(path) > step:
                later.append(name)
    return step, sorted(later, key=_natural)


def _checkpoint_folders(trainer) -> list[str]:
    return sorted({str(cb.dirpath) for cb in trainer.checkpoint_callbacks if getattr(cb, "dirpath", None)})


def _natural(name: str) -> list:
    """``step=10.ckpt`` after ``step=9.ckpt``: digits compared as numbers."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name)]


def newest_checkpoint(folders: list[str]) -> str | None:
    """The most recently written ``.ckpt`` in ``folders`` (by modification time, then by the
    name with its numbers compared as numbers, for equal times); None when there is none. A
    file removed meanwhile (a top-k rotation) is passed over."""
    return next(iter(checkpoints_newest_first(folders)), None)


def checkpoints_newest_first(folders: list[str]) -> list[str]:
    """The ``.ckpt`` files in ``folders``, the most recently written first (equal times: the
    name with its numbers compared as numbers); a file removed meanwhile is passed over."""
    stamped = []
    for folder in folders:
        for name in os.listdir(folder) if os.path.isdir(folder) else []:
            if name.endswith(".ckpt"):
                try:
                    stamped.append((os.path.getmtime(os.path.join(folder, name)), _natural(name), folder, name))
                except OSError:
                    continue
    return [os.path.join(folder, name) for *_, folder, name in sorted(stamped, reverse=True)]


def refuse_earlier_checkpoints(trainer) -> None:
    """A fresh fit (no ``--ckpt_path``) whose checkpoint folder already holds an earlier run's
    checkpoints is an error: Lightning would save this run's as ``last-v1.ckpt`` beside the old
    ``last.ckpt``, and every later ``validate``/``predict``/export of ``last.ckpt`` would read the
    earlier run without a word. Nothing is deleted: the message says how to resume, move or clear."""
    for folder in _checkpoint_folders(trainer):
        found = sorted(f for f in os.listdir(folder) if f.endswith(".ckpt")) if os.path.isdir(folder) else []
        if found:
            listed = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
            if any(f.startswith("last") for f in found):
                resume = "--ckpt_path last"
            else:  # no last.ckpt (a ModelCheckpoint without save_last): "last" would find nothing
                resume = f"--ckpt_path {newest_checkpoint([folder])} (there is no last.ckpt)"
            raise CheckpointError(f"{folder} already holds an earlier run's checkpoints ({listed}): resume that run "
                                  f"with {resume}, start this one in another folder with "
                                  f"--trainer.default_root_dir=<dir>, or delete {folder}")


def checkpoints_under_root(trainer) -> None:
    """Give every ``ModelCheckpoint`` without a ``dirpath`` the folder
    ``<trainer.default_root_dir>/checkpoints``: one per run root, the same on every resume
    (Lightning's own default, the logger's ``version_N`` folder, changes with each run, so
    ``--ckpt_path last`` would find nothing), and never shared by runs with other roots."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.dirpath is None:
            callback.dirpath = os.path.realpath(os.path.join(trainer.default_root_dir, "checkpoints"))


def flush_csv_every_step(trainer) -> None:
    """CSV loggers write their rows at every logging step (Lightning's default is every 100),
    so a killed run keeps its metrics up to the last completed step."""
    from lightning.pytorch.loggers import CSVLogger

    for logger in trainer.loggers:
        if isinstance(logger, CSVLogger):
            logger._flush_logs_every_n_steps = 1  # the value of its flush_logs_every_n_steps argument


def quiet_moot_dir_notice(trainer) -> None:
    """Lightning's "Checkpoint directory ... exists and is not empty" is not said by the
    trainer's ModelCheckpoints: a fresh fit into a folder of earlier checkpoints is refused
    (:func:`refuse_earlier_checkpoints`), so a fit finds some there only when it resumes them,
    which is what the folder is for (the CLI silences it for its process; here the filter holds
    during the callbacks' ``setup`` only)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lit_vr1.quiet import CLI_NOTICES

    for callback in trainer.checkpoint_callbacks:
        if not isinstance(callback, ModelCheckpoint) or getattr(callback, "_lit_vr1_quiet_dir", False):
            continue
        own_setup = callback.setup

        def setup(*args, _own=own_setup, **kwargs):
            with warnings.catch_warnings():
                for pattern in CLI_NOTICES:
                    warnings.filterwarnings("ignore", message=pattern)
                return _own(*args, **kwargs)

        callback.setup = setup
        callback._lit_vr1_quiet_dir = True


def resumable(trainer):
    """``trainer`` (built in Python) with the checkpointing the ``lit-vr1`` CLI gives its own,
    returned: its ModelCheckpoints without a ``dirpath`` save under
    ``<default_root_dir>/checkpoints`` (:func:`checkpoints_under_root`; Lightning's default is the
    logger's ``version_N`` folder, new for every Trainer, so a second Trainer's ``ckpt_path="last"``
    found nothing and trained from scratch), ``ckpt_path="last"`` is an error when there is no
    checkpoint and ``"last_or_new"`` resumes only when there is one (:func:`strict_last_checkpoint`),
    saves are atomic (:func:`use_atomic_checkpoints`), CSV metrics are written every step
    (:func:`flush_csv_every_step`), a resume says nothing of the folder holding checkpoints
    (:func:`quiet_moot_dir_notice`) and the progress bar counts optimiser steps out of
    ``max_steps``, also after a resume (``lit_vr1.quiet.step_progress_bar``)::

        trainer = resumable(Trainer(default_root_dir="runs/nb", max_steps=6,
                                    callbacks=[ModelCheckpoint(every_n_train_steps=2, save_last=True)]))
        trainer.fit(module, data, ckpt_path="last")
    """
    from lit_vr1.quiet import step_progress_bar

    checkpoints_under_root(trainer)
    step_progress_bar(trainer)
    use_atomic_checkpoints(trainer)
    strict_last_checkpoint(trainer)
    flush_csv_every_step(trainer)
    quiet_moot_dir_notice(trainer)
    return trainer


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
