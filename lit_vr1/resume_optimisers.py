"""A resume may not change the optimiser or the LR scheduler.

Lightning restores a checkpoint's optimiser and scheduler states over the ones a resumed run
builds, param groups included, so a new learning rate (or weight decay, or ``T_max``) was
silently ignored while the new run's ``config.yaml`` recorded it. Each run therefore saves, in
its checkpoints, its optimisers and schedulers as they were configured, taken the moment they are
built (:func:`configured`: classes, param groups without the parameters, the schedulers'
``state_dict``), and a resume compares what it builds with that, configured against configured
(:func:`differences`): what training moves (a decayed learning rate, a warm restart's period,
ReduceLROnPlateau's cuts, an adaptive optimiser's estimates) is never compared. A checkpoint
written before these were saved is not judged.
"""

from __future__ import annotations

from typing import Any

import torch

from lit_vr1.checkpoint import SettingsRefused

KEY = "lit_vr1_optimisers"  # checkpoint key of :func:`configured`
OPTIMISER_FLAG, SCHEDULER_FLAG = "model.optimizer", "model.lr_scheduler"
NOT_SETTINGS = frozenset({"params", "param_names"})  # param group entries that are not hyperparameters
# a scheduler's state entries copied from the optimiser's learning rates (compared there, as its lr)
FROM_THE_LR = frozenset({"base_lrs", "_last_lr"})


def class_name(obj: Any) -> str:
    """``module.Class`` of ``obj`` (what a ``class_path`` may say)."""
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def plain(value: Any) -> Any:
    """``value`` as data a checkpoint loads with ``weights_only`` and compares run to run:
    tensors as numbers, tuples as lists, anything else (a function a scheduler holds) as its
    type's name."""
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return f"<{type(value).__name__}>"


def group_settings(group: dict) -> dict:
    """One param group's hyperparameters: every entry but the parameters, the learning rate as
    configured (``initial_lr``, which a scheduler sets when it is built and a warm-up one moves
    ``lr`` away from at once)."""
    out = {k: plain(v) for k, v in group.items() if k not in NOT_SETTINGS | {"initial_lr"}}
    if "initial_lr" in group:
        out["lr"] = plain(group["initial_lr"])
    return out


def configured(optimizers: list, schedulers: list) -> dict:
    """What a run's optimisers and schedulers are configured with, taken as they are built."""
    return {"optimizer": [class_name(o) for o in optimizers], "lr_scheduler": [class_name(s) for s in schedulers],
            "own": [sorted(o.defaults) for o in optimizers],
            "param_groups": [[group_settings(g) for g in o.param_groups] for o in optimizers],
            "schedulers": [{k: plain(v) for k, v in s.state_dict().items() if k not in FROM_THE_LR} for s in schedulers]}


def _nth(flag: str, i: int, count: int) -> str:
    return flag if count == 1 else f"{flag}[{i}]"


def _changed(old: Any, new: Any, name: str) -> list[str]:
    """``name: <old> in the checkpoint, <new> now`` for each setting that differs; dicts key by
    key over the keys both hold (a key one torch version adds is not a change), lists of dicts
    item by item."""
    if old == new:
        return []
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for key in old if key in new for d in _changed(old[key], new[key], f"{name}.{key.lstrip('_')}")]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new) and \
            all(isinstance(v, dict) for v in old + new):
        return [d for i, (a, b) in enumerate(zip(old, new)) for d in _changed(a, b, f"{name}[{i}]")]
    return [f"{name}: {old!r} in the checkpoint, {new!r} now"]


def _classes(saved: list[str], now: list[str], flag: str) -> list[str]:
    if saved == now:
        return []
    if len(saved) != len(now):
        return [f"{flag}: {', '.join(saved) or None} in the checkpoint, {', '.join(now) or None} now"]
    return [f"{_nth(flag, i, len(now))}.class_path: {a} in the checkpoint, {b} now"
            for i, (a, b) in enumerate(zip(saved, now)) if a != b]


def _optimiser(i: int, saved: dict, now: dict) -> list[str]:
    """The param group settings of optimiser ``i`` that differ; an entry that is not one of the
    optimiser's own hyperparameters was put there by a scheduler (OneCycleLR's ``max_lr``)."""
    flag = _nth(OPTIMISER_FLAG, i, len(now["param_groups"]))
    old, new = saved["param_groups"][i], now["param_groups"][i]
    if len(old) != len(new):
        return [f"{flag}: {len(old)} param group(s) in the checkpoint, {len(new)} now"]
    own, out = set(now["own"][i]), []
    for g, (a, b) in enumerate(zip(old, new)):
        where = "" if len(new) == 1 else f" (param group {g})"
        for key in (k for k in a if k in b and a[k] != b[k]):
            owner = f"{flag}.init_args" if key in own else f"{SCHEDULER_FLAG}.init_args"
            out += [d + where for d in _changed(a[key], b[key], f"{owner}.{key}")]
    return out


def differences(saved: dict | None, now: dict) -> list[str]:
    """Each setting of :func:`configured` that differs between a checkpoint's run (``saved``;
    None: a checkpoint that did not save them, not judged) and the resumed run, named as its
    flag: ``model.optimizer.init_args.lr: 0.0003 in the checkpoint, 0.1 now``,
    ``model.lr_scheduler.init_args.T_max: ...``, ``model.optimizer.class_path: ...``. The
    settings of an optimiser or scheduler whose class changed are not compared."""
    if not isinstance(saved, dict) or "param_groups" not in saved:
        return []
    out = _classes(saved["optimizer"], now["optimizer"], OPTIMISER_FLAG)
    out += _classes(saved["lr_scheduler"], now["lr_scheduler"], SCHEDULER_FLAG)
    if out:
        return out
    for i in range(len(now["optimizer"])):
        out += _optimiser(i, saved, now)
    for i, (a, b) in enumerate(zip(saved["schedulers"], now["schedulers"])):
        out += _changed(a, b, f"{_nth(SCHEDULER_FLAG, i, len(now['schedulers']))}.init_args")
    return out


def refuse_change(found: list[str], ckpt_path: str | None) -> None:
    """Raise :class:`~lit_vr1.checkpoint.SettingsRefused` naming every difference
    (:func:`differences`) and the ways on."""
    if not found:
        return
    ckpt = ckpt_path or "<checkpoint>"
    raise SettingsRefused(
        "the checkpoint to resume was written with other optimiser settings, which a resume cannot change (the "
        "checkpoint's optimiser and scheduler states would replace them, learning rate included): "
        + "; ".join(found) + ". Resume without the change; or, to go on with new optimiser settings, start a "
        f"new run from the checkpoint's weights: python -m lit_vr1.export {ckpt} <dir>, then fit with "
        "--model.init_args.model=<dir> and without --ckpt_path, under another trainer.default_root_dir (its step "
        "count, optimiser state and schedule start afresh)")
