"""A run that fails before it logs a metric leaves no log folder behind.

Lightning's file loggers pick their folder (``<save_dir>/<name>/version_N``) when a run
starts, and the CLI writes ``config.yaml`` into it at setup, so a run refused by a check
(a bad flag value, a missing data file, a checkpoint folder that holds an earlier run)
used to leave an empty ``version_N`` (or one holding only ``config.yaml``), and the next
run's logs went to ``version_N+1``. :func:`new_log_dirs` notes the folders a run is about
to create; :func:`remove_unused_log_dirs` removes those that hold no metrics when it fails.
A run that logged anything keeps its folder: its metrics are what a resume continues.
"""

from __future__ import annotations

import os
import shutil

# what a run writes into its log folder before its first metric
SETUP_FILES = frozenset({"config.yaml", "hparams.yaml"})


def new_log_dirs(trainer) -> list[str]:
    """The log folders of ``trainer``'s CSV and TensorBoard loggers that do not exist yet
    (the ones this run will create). Other loggers (wandb, ...) keep their own records."""
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    if trainer is None or trainer.global_rank != 0:
        return []
    return [logger.log_dir for logger in trainer.loggers
            if isinstance(logger, (CSVLogger, TensorBoardLogger)) and not os.path.exists(logger.log_dir)]


def remove_unused_log_dirs(folders: list[str]) -> list[str]:
    """Remove each folder in ``folders`` that holds nothing but :data:`SETUP_FILES`; returns
    the folders removed."""
    removed = []
    for folder in folders:
        if os.path.isdir(folder) and set(os.listdir(folder)) <= SETUP_FILES:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed
