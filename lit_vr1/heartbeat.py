"""Progress lines for a fit whose output goes to a file, and a last line when it ends.

Under a SLURM job, ``> run.log`` or CI, Rich's progress bar draws nothing until the fit ends
(it refreshes only on a terminal), so a redirected log said nothing between rollout tables for
hours, and ended in the wrapped bar with no line of lit-vr1's own (a new user's trial). The
``lit-vr1`` CLI gives every ``fit`` a :class:`Heartbeat` unless its config lists one::

    lit-vr1: step 120 of 1000 (12%), 3.1 s a step, about 45 min left; train/reward/total/mean 0.52, val/acc50 0.41

at most every ``every_s`` seconds while no progress bar shows on a terminal, and when the fit
ends (always)::

    lit-vr1: fit ended at step 1000 (max_steps 1000) after 52 min, 3.1 s a step; last checkpoint ...; metrics in ...

In a config: ``class_path: lit_vr1.heartbeat.Heartbeat`` with ``init_args: {every_s: 300}``;
``every_s: 0`` keeps the last line only.
"""

from __future__ import annotations

import os
import sys
import time

from lightning.pytorch import Callback
from lightning.pytorch.utilities import rank_zero_info

# what a line shows, when logged: the first training figure found, then the validation ones
TRAINING_FIGURES = ("train/reward/total/mean", "train/loss")
VALIDATION_FIGURES = ("val/acc50", "val/map_50", "val/acc")


def duration(seconds: float) -> str:
    """``seconds`` as a person reads it: ``42 s``, ``45 min``, ``3.2 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def figures(metrics: dict) -> str:
    """The figures a line shows, from ``metrics`` (:func:`logged`): ``name value, ...``."""
    shown = [next((k for k in TRAINING_FIGURES if k in metrics), None), *(k for k in VALIDATION_FIGURES if k in metrics)]
    return ", ".join(f"{k} {float(metrics[k]):.3g}" for k in shown if k is not None)


def logged(trainer, pl_module) -> dict:
    """The figures logged so far: the Trainer's (SFT's loss, validation's) and the last GRPO
    step's, combined over processes (``last_metrics``, sent to the loggers, not to the Trainer)."""
    last = getattr(pl_module, "last_metrics", None) or {}
    return {**trainer.callback_metrics, **{f"train/{k}": v for k, v in last.items()}}


def progress_line(step: int, max_steps: int, seconds_a_step: float | None, shown: str) -> str:
    """A heartbeat: the step, out of ``max_steps`` (-1: no limit), the pace and what is left."""
    text = f"lit-vr1: step {step}"
    if max_steps > 0:
        text += f" of {max_steps} ({step / max_steps:.0%})"
    if seconds_a_step is not None:
        text += f", {seconds_a_step:.3g} s a step"
        if max_steps > step:
            text += f", about {duration(seconds_a_step * (max_steps - step))} left"
    return text + (f"; {shown}" if shown else "")


def live_bar_shown(trainer) -> bool:
    """Whether a progress bar draws on a terminal: Rich's (lit-vr1's step bar is one) writes to
    stdout, tqdm's to stderr; ``lit-vr1 fit > run.log`` on a terminal's stderr draws nothing."""
    from lightning.pytorch.callbacks import RichProgressBar

    bar = trainer.progress_bar_callback
    if bar is None:
        return False
    return (sys.stdout if isinstance(bar, RichProgressBar) else sys.stderr).isatty()


def own_log_dir(trainer) -> str | None:
    """The first logger's folder, as ``Trainer.log_dir`` finds it but without its broadcast (a
    collective: every process would have to ask, here at a teardown); None without loggers."""
    if not trainer.loggers:
        return None
    logger = trainer.loggers[0]
    return getattr(logger, "log_dir", None) or getattr(logger, "save_dir", None)


class Heartbeat(Callback):
    """Say how a fit goes every ``every_s`` seconds while no progress bar shows, and say where
    its results are when it ends (see the module docstring)."""

    def __init__(self, every_s: float = 60.0) -> None:
        if every_s < 0:
            raise ValueError(f"Heartbeat(every_s={every_s}): give seconds >= 0 (0: only the line at the end)")
        self.every_s = float(every_s)
        self._start: float | None = None
        self._start_step = 0

    def on_fit_start(self, trainer, pl_module) -> None:
        self._began = time.monotonic()  # the last line's time: the fit's, its warm-up's included

    def on_train_start(self, trainer, pl_module) -> None:
        self._began = getattr(self, "_began", None) or time.monotonic()
        self._start = self._last = time.monotonic()
        self._start_step = trainer.global_step
        self._beating = self.every_s > 0 and not live_bar_shown(trainer)
        self._timed = False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if not getattr(self, "_timed", True):  # the pace from the first step on: a warm-up (ColdStart) is not a step
            self._start = self._last = time.monotonic()
            self._timed = True

    def _seconds_a_step(self, trainer, now: float) -> float | None:
        done = trainer.global_step - self._start_step
        return (now - self._start) / done if done > 0 and self._start is not None else None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not getattr(self, "_beating", False):
            return
        now = time.monotonic()
        if now - self._last < self.every_s:
            return
        self._last = now
        rank_zero_info(progress_line(trainer.global_step, trainer.max_steps, self._seconds_a_step(trainer, now),
                                     figures(logged(trainer, pl_module))))

    def teardown(self, trainer, pl_module, stage: str) -> None:
        """The fit ended without an error (a failed one gets no teardown: its error is the last word)."""
        if stage != "fit" or self._start is None:
            return
        now, start = time.monotonic(), self._began  # the whole fit's time, a warm-up's included
        step, pace = trainer.global_step, self._seconds_a_step(trainer, now)
        self._start = self._began = None
        log_dir = own_log_dir(trainer)
        limit = f"max_steps {trainer.max_steps}" if trainer.max_steps > 0 else "no max_steps"
        text = f"lit-vr1: fit ended at step {step} ({limit}) after {duration(now - start)}"
        if pace is not None:
            text += f", {pace:.3g} s a step"
        saved = trainer.checkpoint_callback
        last, best = getattr(saved, "last_model_path", ""), getattr(saved, "best_model_path", "")
        if last or best:
            text += f"; last checkpoint {last}" if last else f"; checkpoint {best}"
        if log_dir and os.path.isfile(os.path.join(log_dir, "metrics.csv")):
            text += f"; metrics in {os.path.join(log_dir, 'metrics.csv')}"
        shown = figures(logged(trainer, pl_module))
        rank_zero_info(text + (f"; {shown}" if shown else ""))


def add_heartbeat(trainer) -> None:
    """Give the CLI's fit a :class:`Heartbeat` when its config lists none."""
    if not any(isinstance(c, Heartbeat) for c in trainer.callbacks):
        trainer.callbacks.append(Heartbeat())
