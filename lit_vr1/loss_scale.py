"""The float16 loss scaler under ``trainer.precision: 16-mixed`` (GPUs without bf16: T4, V100).

Lightning's ``MixedPrecision`` plugin multiplies each loss by a scale ``S`` before backward
(``torch.amp.GradScaler``, 65536 to start) so that small float16 gradients do not flush to
zero, and divides the gradients by ``S`` inside the optimiser step. Under manual optimisation
the module clips and checks the gradients itself, before that step, so it meets them still
multiplied by ``S``: a gradient norm read there is ``S`` times the true one, and clipping it to
``max_norm`` clips the true gradients to ``max_norm / S`` (before 2026-12-06 every ``16-mixed``
step was clipped so, and logged a norm of about 2e5 for a true 3). GRPOModule divides the norm
by ``S`` and clips at ``max_norm * S``: the clip coefficient ``max_norm / norm`` is the one of
clipping the true gradients (PyTorch's AMP recipe unscales first, to the same effect).

A gradient that overflows float16 is the scaler's to handle: it skips that step and halves
``S`` (:func:`skip_overflow`), as ``GradScaler.step`` and ``update`` do when they find an inf or
a nan. Before, the module skipped such a step without telling the scaler, so ``S`` never fell,
every later step overflowed too, and the fit stopped after ten as "diverged".
"""

from __future__ import annotations

from typing import Any

import torch


def loss_scaler(trainer: Any) -> torch.amp.GradScaler | None:
    """The enabled gradient scaler of ``trainer``'s precision plugin (``16-mixed`` on CUDA, or a
    ``MixedPrecision`` plugin given one), else None (float32, bf16: nothing is scaled)."""
    scaler = getattr(getattr(trainer, "precision_plugin", None), "scaler", None)
    return scaler if scaler is not None and scaler.is_enabled() else None


def gradients_not_finite(params) -> bool:
    """Whether some gradient holds an inf or a nan: what the scaler checks while unscaling (a norm
    can be inf over finite gradients, its sum of squares past float32's range; the scaler would
    then step)."""
    return any(not bool(torch.isfinite(p.grad).all()) for p in params if p.grad is not None)


def skip_overflow(scaler: torch.amp.GradScaler, optimizer: torch.optim.Optimizer) -> float:
    """Let ``scaler`` skip a step whose gradients are not finite: ``step`` finds the inf or nan
    while unscaling and does not step ``optimizer``, ``update`` multiplies the scale by the
    backoff factor (0.5) and restarts its growth count. Returns the new scale. ``optimizer`` is
    the raw torch optimiser, so Lightning counts no optimiser step (``global_step`` counts
    applied steps only)."""
    scaler.step(optimizer)
    scaler.update()
    return scaler.get_scale()
