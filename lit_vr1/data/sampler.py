"""The training order: a seeded shuffle per epoch that a resumed fit continues mid-epoch.

Lightning restarts a plain DataLoader from the start of the epoch when a fit resumes from
a mid-epoch checkpoint (it only warns), so the first batches of the epoch would be seen
twice and the rest of the run would differ. :class:`ResumableSampler` draws epoch ``e``'s
order from ``seed + e`` alone and, told where the checkpoint was taken
(:func:`train_position`, saved by the data module), skips the batches already trained on.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch.utils.data import Dataset, DistributedSampler


class ResumableSampler(DistributedSampler):
    """Shuffled indices for this process: epoch ``e`` is a permutation drawn from ``seed + e``
    (each process takes every ``num_replicas``-th index, as ``DistributedSampler``), so the
    order never depends on the global RNG or on how many epochs ran in this process.

    It is a ``DistributedSampler``, so Lightning keeps it under DDP (it would otherwise
    swap in its own sampler, seeded from ``seed_everything``) and calls :meth:`set_epoch`
    each epoch. Outside Lightning every new iteration moves on to the next epoch.

    Args:
        dataset: the training set.
        batch_size: samples per batch on each process (to skip whole batches on resume).
        seed: the shuffle seed.
        num_replicas, rank: processes and this process's rank (1 and 0 alone).
    """

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.batch_size = batch_size
        self._skip: tuple[int, int] | None = None  # (epoch, batches already trained) of a resume

    def resume_at(self, epoch: int, batches_done: int) -> None:
        """Continue epoch ``epoch`` after its first ``batches_done`` batches (once); an epoch
        already done in full continues with the next one."""
        if batches_done >= self.num_samples // self.batch_size:
            epoch, batches_done = epoch + 1, 0
        self.set_epoch(epoch)
        self._skip = (epoch, batches_done)

    def __iter__(self):
        indices = list(super().__iter__())
        if self._skip is not None and self._skip[0] == self.epoch:
            indices = indices[self._skip[1] * self.batch_size:]
        self._skip = None
        self.epoch += 1  # the next iteration is the next epoch unless set_epoch says otherwise
        return iter(indices)


def train_position(trainer) -> dict[str, int] | None:
    """Where a fit stands in its training data: the epoch and the batches of it whose
    training step has finished (None outside a fit)."""
    if trainer is None or trainer.state.fn != "fit":
        return None
    progress = trainer.fit_loop.epoch_loop.batch_progress.current
    return {"epoch": int(trainer.current_epoch), "batches_done": int(progress.processed)}


def place_sampler(sampler: ResumableSampler, position: dict[str, Any] | None) -> None:
    """Move a fresh sampler to a saved :func:`train_position` (no-op for None)."""
    if position:
        sampler.resume_at(int(position["epoch"]), int(position["batches_done"]))


class EvalSampler(DistributedSampler):
    """The held-out rows of this process, in order, for an evaluation over several processes.

    ``DistributedSampler`` pads the rows to a multiple of the processes by repeating the first
    ones, and an evaluation scored those twice (7 rows on 2 processes: figures over 8). Here the
    repeats are given as indices past the end (``n + j`` for row ``j``), which
    :class:`WithRepeats` serves marked (``Sample.repeat``): every process still runs as many
    batches (their collective calls line up) and the metrics leave the marked rows out.
    It is a ``DistributedSampler``, so Lightning keeps it."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)

    def __iter__(self):
        n = len(self.dataset)
        indices = list(range(n)) + [n + j for j in range(self.total_size - n)]
        return iter(indices[self.rank:self.total_size:self.num_replicas])


class WithRepeats(Dataset):
    """``dataset`` whose indices past its end (:class:`EvalSampler`'s repeats) serve its rows
    again, marked ``repeat``, as are stand-ins for rows that failed to load (a row that failed
    and was not replaced is served as it is)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        """Row ``index``; a repeat past the end, or a row standing in for one that failed to load
        (``data.bad_rows=skip``: the next row that loads, scored at its own index), marked."""
        n = len(self.dataset)
        row = self.dataset[index if index < n else (index - n) % n]
        if hasattr(row, "repeat") and (index >= n or getattr(row, "skipped", None)):
            row = dataclasses.replace(row, repeat=True)
        return row
