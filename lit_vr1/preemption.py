"""A SIGTERM (a scheduler's preemption) under several processes: every process stops after the
same training batch, where ``last.ckpt`` is saved (a save is collective, so it needs them all).

Lightning 2.6's SIGTERM handler runs a broadcast inside the signal handler, once per signal a
process receives, and rank 0 passes the signal on to the processes it started: those receive it
twice, the broadcasts no longer pair up, and the fit hung until the scheduler's SIGKILL (2 CPU
processes, a SIGTERM to each at step 6: no exit within 240 s, nothing saved since the last
periodic checkpoint). A process whose signal came one step before the others' also stopped
alone, leaving them waiting in the next step's collectives.

Here the handler only notes the signal (and passes it on to the processes Lightning started,
as Lightning's does). At every training batch's end the processes agree, with one all-reduce
(max) of a flag, whether any of them has one; if so they all set Lightning's
``received_sigterm``, ``last.ckpt`` is saved at that step
(:func:`lit_vr1.checkpoint.fit_ends_after`), and Lightning stops every process after it. A
signal that comes during a validation is acted on at the next training batch's end. One process
runs Lightning's own handler unchanged.
"""

from __future__ import annotations

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

AGREED = "_lit_vr1_sigterm_agreed"  # set on a Trainer whose processes agreed to stop at this batch


class StopTogether(Callback):
    """Installed by :func:`install` as the first callback (before every ModelCheckpoint, whose
    save at the stop reads the agreement). Holds no state: a checkpoint records nothing of it."""

    def __init__(self, trainer) -> None:
        self.trainer = trainer
        self.pending = False  # this process received a SIGTERM not yet agreed on

    def notice(self, signum, frame) -> None:
        """The SIGTERM handler (in Lightning's place): note it, and pass it on once to the
        processes Lightning's launcher started, as Lightning's handler does."""
        if not self.pending:
            launcher = self.trainer.strategy.launcher
            if launcher is not None:
                launcher.kill(signum)
        self.pending = True

    def teardown(self, trainer, pl_module, stage: str) -> None:
        """Give Lightning its own SIGTERM handler back for what this Trainer runs next (a
        ``validate`` or ``test``, whose steps reach no training batch end: a noted signal would
        never be acted on)."""
        connector = getattr(trainer, "_signal_connector", None)
        if connector is not None and connector.__dict__.get("_sigterm_notifier_fn") == self.notice:
            del connector._sigterm_notifier_fn  # the class's own method again

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self.teardown(trainer, pl_module, "fit")  # a fit that raised (the SIGTERM stop too) skips teardown

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.world_size <= 1 or not torch.distributed.is_initialized():
            return
        flag = torch.tensor([1.0 if self.pending else 0.0], device=trainer.strategy.root_device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if flag.item() > 0:
            trainer._signal_connector.received_sigterm = True  # what Lightning's stop reads, on every process
            setattr(trainer, AGREED, True)
            rank_zero_info(f"lit-vr1: a SIGTERM reached the fit; every process stops after optimiser step "
                           f"{trainer.global_step}")


def install(trainer) -> None:
    """At a fit's setup, before Lightning registers its signal handlers: under several processes,
    replace the SIGTERM part of Lightning's handler by :meth:`StopTogether.notice` and put the
    agreement first among the callbacks (once per Trainer). With one process, or a Lightning
    without this handler, nothing changes."""
    connector = getattr(trainer, "_signal_connector", None)
    if trainer.world_size <= 1 or connector is None or not hasattr(connector, "_sigterm_notifier_fn"):
        return
    stop = next((cb for cb in trainer.callbacks if isinstance(cb, StopTogether)), None)
    if stop is None:
        stop = StopTogether(trainer)
        trainer.callbacks.insert(0, stop)
    # a signal noted in an earlier fit of this Trainer is not this one's (reset here, at setup: the
    # handler is live from before the sanity validation, which runs before on_train_start)
    stop.pending = False
    setattr(trainer, AGREED, False)
    # Lightning composes its handler from this attribute when it registers the handlers (after
    # setup); the other parts (SLURM's requeue, a handler set before the fit) are kept
    connector._sigterm_notifier_fn = stop.notice


def agreed_to_stop(trainer) -> bool:
    """Whether the fit stops after this batch for a SIGTERM: with one process, Lightning's flag;
    under several, only when they all agreed on this batch (else a save here would be one
    process's alone and wait for the others for ever)."""
    if not trainer.received_sigterm:
        return False
    return trainer.world_size == 1 or bool(getattr(trainer, AGREED, False))
