"""``trainer.val_check_interval`` N counted in optimiser steps, as TRL's ``eval_steps`` is.

With ``check_val_every_n_epoch: null`` Lightning validates after every N-th training batch, and a
GRPO batch (one rollout) takes several optimiser steps when ``mini_batch_size`` is under the
rollout or ``num_iterations`` > 1: with 2 steps a rollout and N=3 validation ran at step 6 only
(of 6), with 4 a rollout and ``max_steps`` 6 never (a new user's trial). Here a GRPO fit validates
at the end of the first rollout at or after each multiple of N steps (as its checkpoints are
saved, :func:`lit_vr1.checkpoint.save_at_rollout_ends`); with one step a rollout that is
Lightning's own rule. A time interval, an epoch-based one and the check a resumed fit makes
before its first batch are left to Lightning.
"""

from __future__ import annotations

from typing import Any

STEP_VALIDATION = "_lit_vr1_step_validation"  # set on an epoch loop whose rule this module replaced


def counts_steps(trainer: Any) -> bool:
    """Whether the fit validates every N batches across epochs (the setting N steps replaces)."""
    n = getattr(trainer, "val_check_batch", None)
    return (trainer.check_val_every_n_epoch is None and isinstance(n, int) and n >= 1
            and getattr(trainer, "_val_check_time_interval", None) is None)


def crossed_multiple(before: int, after: int, every: int) -> bool:
    """Whether the steps ``before`` < s <= ``after`` hold a multiple of ``every``."""
    return after // every > before // every


def validate_at_step_multiples(trainer: Any) -> None:
    """Replace the fit's validation rule (once per Trainer); the fitted module's
    ``step_before_batch`` is the optimiser step at the start of the batch just trained (None before
    the first batch of a fit, and for a module without one: Lightning's own rule then)."""
    loop = trainer.fit_loop.epoch_loop
    if getattr(loop, STEP_VALIDATION, False) or not all(
            hasattr(loop, name) for name in ("_should_check_val_fx", "_should_check_val_epoch")):
        return  # done, or another Lightning: its own rule
    lightning_rule = loop._should_check_val_fx

    def should_check(data_fetcher) -> bool:
        before = getattr(trainer.lightning_module, "step_before_batch", None)
        if before is None or not counts_steps(trainer):
            return lightning_rule(data_fetcher)
        if not loop._should_check_val_epoch():
            return False
        if trainer.should_stop and trainer.fit_loop._can_stop_early:
            return True
        return crossed_multiple(before, trainer.global_step, trainer.val_check_batch)

    loop._should_check_val_fx = should_check
    setattr(loop, STEP_VALIDATION, True)
