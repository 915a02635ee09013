"""Lightning and torch notices that do not apply to lit-vr1 runs, silenced where we know
better (each with the reason), so that what is left on the screen is worth reading.

* "Found N module(s) in eval mode at the start of training": the frozen reference model
  (and a frozen vision tower's dropout-free blocks) are in eval mode on purpose.
* "Using ModelCheckpoint with manual optimization and every_n_train_steps ...": GRPO's
  checkpoints are taken after the optimiser step on purpose; a resume from them continues
  exactly (``tests/test_resume.py``).
* "... your dataloader is not resumable": lit-vr1's data module saves and restores its
  position in the epoch itself (``lit_vr1/data/sampler.py``).
* "The number of training batches (N) is smaller than the logging interval": lit-vr1's
  configs log every step (``log_every_n_steps: 1``); with Lightning's 50 a short run logged
  nothing, hence the notice; the CSV logger writes every step anyway.
* "isinstance(treespec, LeafSpec) is deprecated": Lightning's own call into torch's pytree
  API, nothing a user can change.
* "`is_gradient_checkpointing` is deprecated": peft's call into transformers when it wraps
  a model for LoRA, nothing a user can change.
* "Precision bf16-mixed is not supported by the model summary. Estimated model size in MB
  will not be accurate. Using 32 bits instead": under ``bf16-mixed`` lit-vr1's weights are
  float32 (bf16 is the compute dtype), so 32 bits is the accurate size (seen on every GPU run).
* Lightning's "Tip: ... litlogger / litmodels" advertisements.
* "It is recommended to use `self.log('val/acc50', ..., sync_dist=True)`" (and lit-vr1's other
  ``val/`` and ``test/`` figures; a user's own keep it): under several processes a validation's figures come from
  torchmetrics metrics, which gather every process's rows before they compute, so each process
  logs the whole split's figure already (``validate`` of one checkpoint gave the same acc50 and
  miou on 1 process and on 2); the notice came once per figure at every DDP validation.

Under the ``lit-vr1`` command only (:func:`quiet_cli_notices`), where lit-vr1 knows more:

* "Checkpoint directory ... exists and is not empty": the CLI refuses a fresh fit into a
  folder holding an earlier run's checkpoints (``lit_vr1/checkpoint.py``), so a fit finds
  one there only when it resumes from it, which is what the folder is for.
* "Be aware that when using `ckpt_path`, callbacks used to create the checkpoint need to be
  provided": said by ``validate``, ``test`` and ``predict``, which restore no callback
  state; kept for ``fit``, whose resume does.
* "The dirpath has changed from ... therefore `best_model_score` ... won't be reloaded": said by
  ``validate``, ``test`` and ``predict`` of a checkpoint into another run root (a new user's
  trial), whose ModelCheckpoint saves nothing; kept for ``fit``, where it matters.
"""

from __future__ import annotations

import logging
import warnings

from lightning.pytorch.callbacks import Callback, RichProgressBar

NOTICES = (
    r"Found \d+ module\(s\) in eval mode at the start of training",
    r"Using ModelCheckpoint with manual optimization and every_n_train_steps",
    r".*your dataloader is not resumable",
    r"The number of training batches \(\d+\) is smaller than the logging interval",
    r".*isinstance\(treespec, LeafSpec\)` is deprecated",
    r"`is_gradient_checkpointing` is deprecated",
    r"Precision bf16-mixed is not supported by the model summary",
    r"It is recommended to use `self\.log\('(val|test)/(acc50|miou|format|map|map_50|map_75|acc|answer_acc|tokens|n)', "
    r"\.\.\., sync_dist=True\)`",
)
CLI_NOTICES = (r"Checkpoint directory .* exists and is not empty",)
EVALUATION_NOTICES = (r"Be aware that when using `ckpt_path`, callbacks used to create the checkpoint",
                      r"The dirpath has changed from .* therefore `best_model_score`")


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith("💡 Tip:")


def _silenced(pattern: str) -> bool:
    """Whether an "ignore" filter for ``pattern`` is in place now (a process-wide flag would not
    see filters restored by ``warnings.catch_warnings``, pytest's included)."""
    return any(f[0] == "ignore" and f[1] is not None and f[1].pattern == pattern for f in warnings.filters)


def add_notice_filters() -> list[tuple]:
    """Put in the filters not in place now; returned so that :func:`remove_notice_filters` takes
    them out again: a module run from Python silences the notices from its ``setup`` to its
    ``teardown`` only, so a notebook's other models keep them. Those already in place (the
    command's) are left as they are."""
    added = []
    for pattern in NOTICES:
        if not _silenced(pattern):
            warnings.filterwarnings("ignore", message=pattern)
            added.append(warnings.filters[0])
    _drop_tips()
    return added


def quiet_known_notices() -> None:
    """Install the filters for the rest of the process (the ``lit-vr1`` command)."""
    add_notice_filters()


def _drop_tips() -> None:
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropTips) for f in logger.filters):
            logger.addFilter(_DropTips())


def remove_notice_filters(added: list[tuple]) -> None:
    """Take out the filters :func:`add_notice_filters` put in (those still there)."""
    for entry in added:
        if entry in warnings.filters:
            warnings.filters.remove(entry)
    if added:
        getattr(warnings, "_filters_mutated", lambda: None)()  # warnings' caches see the change


class NoticesBackOnError(Callback):
    """Lightning skips the modules' ``teardown`` when a fit, validation or prediction raises or is
    interrupted (a notebook's stop button): this callback, which a module's ``setup`` adds, takes
    the module's notice filters out then, as ``teardown`` would have (before, they stayed in place
    for the rest of the kernel)."""

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        # the notice filters, and the checkpoint folders' lock (lit_vr1.checkpoint), as teardown would have
        for name in ("remove_notices", "release_checkpoint_folders"):
            undo = getattr(pl_module, name, None)
            if undo is not None:
                undo()


def notices_back_on_error(trainer) -> None:
    """Add :class:`NoticesBackOnError` to ``trainer``'s callbacks once."""
    if trainer is not None and not any(isinstance(c, NoticesBackOnError) for c in trainer.callbacks):
        trainer.callbacks.append(NoticesBackOnError())


def quiet_cli_notices(subcommand: str | None) -> None:
    """The notices the ``lit-vr1`` command makes moot (see the module docstring)."""
    for pattern in CLI_NOTICES + (EVALUATION_NOTICES if subcommand in ("validate", "test", "predict") else ()):
        warnings.filterwarnings("ignore", message=pattern)


class StepProgressBar(RichProgressBar):
    """Lightning's rich progress bar, described by optimiser steps (``Step 23/60``) when the
    run is bounded by ``max_steps`` (Lightning's shows ``Epoch 0/-2`` for ``max_epochs=-1``)."""

    def _get_train_description(self, current_epoch: int) -> str:
        max_steps = self.trainer.max_steps
        if max_steps is None or max_steps < 0:
            return super()._get_train_description(current_epoch)
        text = f"Step {self.trainer.global_step}/{max_steps}"
        width = len(self.validation_description)
        return f"{text:{width}}" if width > len(text) else text

    def get_metrics(self, trainer, pl_module) -> dict:
        """Lightning's, without ``v_num`` (the logger's version, which the rich bar printed as a
        metric, ``v_num: 0.000``; the log folder's name says it)."""
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        self._show_steps(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self._show_steps(trainer)

    def _show_steps(self, trainer) -> None:
        """The bar counts optimiser steps out of ``max_steps`` as its description does.
        Lightning's counts the epoch's batches: after a resume mid-epoch its total is the
        batches left while its count goes on from the checkpoint's (``60/49``)."""
        if self.progress is None or self.train_progress_bar_id is None:
            return
        fields: dict = {"description": self._get_train_description(trainer.current_epoch)}
        if trainer.max_steps is not None and trainer.max_steps >= 0:
            fields.update(total=trainer.max_steps, completed=trainer.global_step)
        self.progress.update(self.train_progress_bar_id, **fields)


def step_progress_bar(trainer) -> None:
    """Swap the Trainer's default :class:`RichProgressBar` for a :class:`StepProgressBar`
    with the same settings (a progress bar the user chose is left alone)."""
    for i, callback in enumerate(trainer.callbacks):
        if type(callback) is RichProgressBar:
            trainer.callbacks[i] = StepProgressBar(refresh_rate=callback.refresh_rate, leave=callback._leave,
                                                   theme=callback.theme, console_kwargs=callback._console_kwargs)
