"""Log folders: a run that fails before it logs a metric leaves none behind, and a resumed
run's metrics.csv holds the whole run.

Lightning's file loggers pick their folder (``<save_dir>/<name>/version_N``) when a run
starts, and the CLI writes ``config.yaml`` into it at setup, so a run refused by a check
(a bad flag value, a missing data file, a checkpoint folder that holds an earlier run)
used to leave an empty ``version_N`` (or one holding only ``config.yaml``), and the next
run's logs went to ``version_N+1``. :func:`new_log_dirs` notes the folders a run is about
to create (each on the way: ``logs/`` too when the run creates it); :func:`remove_unused_log_dirs`
removes the outermost of those that hold no metrics when it fails.
A run that logged anything keeps its folder: its metrics are what a resume continues
(:func:`carry_over_metrics` copies them, up to the checkpoint, into the resumed run's file).
"""

from __future__ import annotations

import os
import shutil

# what a run writes into its log folder before its first metric
SETUP_FILES = frozenset({"config.yaml", "hparams.yaml", "run.json"})


def new_log_dirs(trainer) -> list[str]:
    """The log folders of ``trainer``'s CSV and TensorBoard loggers that do not exist yet
    (the ones this run will create). Other loggers (wandb, ...) keep their own records."""
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    if trainer is None or trainer.global_rank != 0:
        return []
    return [new for logger in trainer.loggers if isinstance(logger, (CSVLogger, TensorBoardLogger))
            for new in new_on_the_way(logger.log_dir)]


def new_on_the_way(folder: str) -> list[str]:
    """The folders on the way to ``folder`` that do not exist yet, outermost first (``runs/p``,
    ``runs/p/logs`` and ``runs/p/logs/version_0`` when none does): the outermost one may come to
    hold more than logs (a prediction's files under ``default_root_dir``), the inner ones not."""
    folder = os.path.abspath(folder)
    chain = []
    while not os.path.exists(folder):
        chain.append(folder)
        folder = os.path.dirname(folder)
    return chain[::-1]


def _setup_files_only(folder: str) -> bool:
    return all(set(files) <= SETUP_FILES for _, _, files in os.walk(folder))


def remove_unused_log_dirs(folders: list[str]) -> list[str]:
    """Remove each folder in ``folders`` that holds nothing but :data:`SETUP_FILES` (in it or
    in its subfolders), in their order (an outer folder first: a removed folder's subfolders are
    gone with it); returns the folders removed."""
    removed = []
    for folder in folders:
        if os.path.isdir(folder) and _setup_files_only(folder):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


# -- a resumed run's metrics.csv starts with the checkpointed run's rows ------------------------------
def metrics_file(trainer) -> str | None:
    """The metrics.csv of ``trainer``'s CSV logger (None without one, or off rank 0)."""
    from lightning.pytorch.loggers import CSVLogger

    if trainer is None or trainer.global_rank != 0:
        return None
    for logger in trainer.loggers:
        if isinstance(logger, CSVLogger):
            return os.path.abspath(os.path.join(logger.log_dir, "metrics.csv"))
    return None


def metrics_under_root(trainer) -> str | None:
    """The metrics.csv of ``trainer``'s CSV logger relative to its ``default_root_dir`` (None when
    it lies elsewhere): a checkpoint keeps it beside the absolute path, so that a run folder moved
    (a job restored under another scratch path) still finds its curve."""
    path = metrics_file(trainer)
    root = os.path.abspath(getattr(trainer, "default_root_dir", None) or os.getcwd())
    if path is None or os.path.commonpath([path, root]) != root:
        return None
    return os.path.relpath(path, root)


def resumed_metrics(saved: str | None, relative: str | None, root: str | None,
                    pinned: str | None = None) -> tuple[str | None, str | None]:
    """The metrics.csv of the run a checkpoint was saved in: ``saved`` (its absolute path then),
    else ``relative`` under this run's ``root`` (the run folder moved since), and a note when
    neither is there: without it the resumed metrics.csv silently began after the checkpoint's
    step (a new user's trial: steps 1-4 lost from the whole curve after a move). ``pinned``: the
    file this run logs into when it exists already (a CSV logger's pinned ``version``, which
    Lightning's writer empties as it starts: its rows were kept aside, see :func:`keep_metrics`),
    taken when it is either of those."""
    moved = os.path.join(os.path.abspath(root or os.getcwd()), relative) if relative else None
    if saved is None or os.path.isfile(saved) or (pinned is not None and pinned == saved):
        return saved, None
    if moved is not None and (os.path.isfile(moved) or pinned == moved):
        return moved, None
    return None, (f"the metrics.csv of the run this fit resumes is not at {saved}"
                  + (f" nor at {moved}" if moved else "") + " (the run folder moved, or its logs were removed): this "
                  "run's metrics.csv holds the steps after the checkpoint only")


def keep_metrics(path: str) -> str | None:
    """Before a fit's CSV writer starts (it empties the ``metrics.csv`` at ``path`` that a pinned
    ``version`` points it to): a copy beside it, ``metrics.csv.kept``, which the fit removes once it
    has carried the rows over (:func:`carry_over_metrics`) or started afresh; a fit that fails before
    then leaves it for the next attempt, whose own file is empty by then. Returns the copy's path,
    or None when there is nothing to keep."""
    kept = path + ".kept"
    if os.path.isfile(kept):  # an attempt that failed before its first step: the killed run's rows
        return kept
    if os.path.isfile(path):
        shutil.copyfile(path, kept)
        return kept
    return None


def read_rows(path: str) -> list[dict[str, str]]:
    """The rows of a metrics.csv, as read now (a resumed run logging into the same file, its
    CSV logger's ``version`` pinned, empties the file when it starts writing)."""
    import csv

    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def carry_over_metrics(trainer, previous: str | None, step: int, batches: int | None,
                       rows: list[dict[str, str]] | None = None) -> int:
    """Log into this run's CSV logger the rows of ``previous`` (the metrics.csv of the run whose
    checkpoint this run resumed) that describe work the checkpoint holds; returns the rows logged.

    The checkpoint was saved at optimiser step ``step`` in ``on_train_batch_end`` of the batch
    Lightning counts as ``batches`` (its ``_batches_that_stepped``, saved before that batch's
    increment). Rows Lightning logs (they carry ``epoch``) have that count as their step: a
    batch's training row and the validation after it both at the batch's own count (logged
    after the save; the checkpoint holds the batch, and the resumed run goes on with the next
    one without validating again). lit-vr1's own training rows (GRPO's, without ``epoch``) carry
    the optimiser step after their update. So: Lightning's rows up to ``batches``, lit-vr1's up
    to ``step`` (``step - 1`` for Lightning's when the checkpoint does not say ``batches``).
    ``LearningRateMonitor`` logs as a batch starts, at the count of the batches before it, so its
    row at the checkpoint's own count is the next batch's, which the resumed run logs again: left
    out (it stood twice).

    Lightning's CSV logger starts each run in a new ``version_N`` folder, so a resumed run's
    metrics.csv began at its first resumed step: the whole curve was split over two files.
    The killed run's file is left as it is. With the logger's ``version`` pinned the resumed run
    writes into the killed run's own file, which Lightning's writer empties when it starts: its
    ``rows``, read before (:func:`read_rows`), are logged again up to the checkpoint (before, the
    resumed file began at the checkpoint, and steps 1-6 of a new user's run were lost)."""
    from lightning.pytorch.loggers import CSVLogger

    current = metrics_file(trainer)
    if rows is None:
        if current is None or previous is None or os.path.abspath(previous) == current or not os.path.isfile(previous):
            return 0
        rows = read_rows(previous)
    if current is None:
        return 0
    logger = next(lg for lg in trainer.loggers if isinstance(lg, CSVLogger))
    carried = 0
    for row in rows:
        try:
            at = int(float(row.pop("step")))
            values = {k: _number(v) for k, v in row.items() if k and v not in ("", None)}
        except (KeyError, TypeError, ValueError):
            continue  # a line cut by the kill
        held = step if "epoch" not in values else (step - 1 if batches is None else batches)
        if values and all(k.startswith("lr-") for k in values):  # LearningRateMonitor's, logged as a batch
            keep = at < held  # starts at the count of batches before it: the one at the checkpoint's is the next
        else:  # lit-vr1's own rows (no ``epoch``) by optimiser step, Lightning's by batch count
            keep = at <= held
        if keep:
            logger.log_metrics(values, step=at)
            carried += 1
    if carried:
        logger.save()
    return carried


def _number(text: str) -> int | float:
    """A CSV cell as the number it was written from (``0`` stays an int, not ``0.0``)."""
    try:
        return int(text)
    except ValueError:
        return float(text)
