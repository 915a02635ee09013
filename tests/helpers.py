"""Small helpers for tests that run a real Trainer on the tiny models."""

from __future__ import annotations

import os
import signal

import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.loggers import Logger
from torch.utils.data import DataLoader

from lit_vr1.data.datamodule import collate
from lit_vr1.rewards.base import Reward


class MemoryLogger(Logger):
    """Keeps every logged metrics dict with its step."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int, dict]] = []

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        self.rows.append((step, dict(metrics)))


class HparamsFile(MemoryLogger):
    """Writes every ``log_hyperparams`` call to ``path`` as JSON lines (for CLI runs)."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        import json

        with open(self.path, "a") as f:
            f.write(json.dumps(params if isinstance(params, dict) else vars(params), default=str) + "\n")


class LengthReward(Reward):
    """Varies between completions of a random model (so advantages are not all zero)."""

    default_name = "length"

    def score(self, completions, contexts):
        return [len(c) / 100.0 for c in completions]


class SigtermDuring(Callback):
    """Sends this process a SIGTERM as optimiser step ``step`` starts (a scheduler's preemption at
    a known step, whatever the machine's speed); with ``rank``, only the process of that rank."""

    def __init__(self, step: int, rank: int | None = None) -> None:
        self.step, self.rank = step, rank

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step - 1 and self.rank in (None, trainer.global_rank):
            os.kill(os.getpid(), signal.SIGTERM)


def fit(module, samples, max_steps: int, batch_size: int = 2, **trainer_kwargs) -> MemoryLogger:
    logger = MemoryLogger()
    trainer = Trainer(
        **{"accelerator": "cpu", **trainer_kwargs}, devices=1, max_steps=max_steps, logger=logger,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )
    loader = DataLoader(samples, batch_size=batch_size, shuffle=False, collate_fn=collate)
    trainer.fit(module, loader)
    return logger


def saved_model(model, processor, path) -> str:
    """``model`` and ``processor`` saved with ``save_pretrained`` to ``path`` (a demo's model directory)."""
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return str(path)


TENSOR_READS = ("__float__", "__int__", "__bool__", "item", "tolist")  # each waits for the device on a GPU


def count_tensor_reads(monkeypatch, files: tuple[str, ...] | None = None) -> dict:
    """Counts reads of tensor values into Python (``float``, ``int``, ``bool``, ``item``,
    ``tolist``) from now on, while ``counter["active"]`` is true, made by code in ``files``
    (any code when None); returns the counter (``counter["n"]``)."""
    import sys

    import torch

    counter = {"n": 0, "active": True}

    def counted(original):
        def read(self, *args, **kwargs):
            if counter["active"] and (files is None or sys._getframe(1).f_code.co_filename in files):
                counter["n"] += 1
            return original(self, *args, **kwargs)

        return read

    for name in TENSOR_READS:
        monkeypatch.setattr(torch.Tensor, name, counted(getattr(torch.Tensor, name)))
    return counter


class OutOfMemoryDuring(Callback):
    """Makes the policy update of optimiser step ``step`` raise torch's ``OutOfMemoryError`` in
    this process (a GPU running out at a known step); with ``rank``, only in the process of that rank."""

    def __init__(self, step: int, rank: int | None = None) -> None:
        self.step, self.rank = step, rank

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step - 1 and self.rank in (None, trainer.global_rank):
            import lit_vr1.loop

            def out_of_memory(*args, **kwargs):
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.32 GiB.")

            lit_vr1.loop.logprobs_and_entropy = out_of_memory


class CudaMemoryCapDuring(Callback):
    """From optimiser step ``step`` on, the CUDA allocator may reserve no more than it holds
    (``torch.cuda.set_per_process_memory_fraction``): the next pass that needs a new block runs
    out of memory for real, as on a full card. The cap is lifted when the fit ends or raises."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step - 1:
            torch.cuda.empty_cache()
            total = torch.cuda.get_device_properties(pl_module.device).total_memory
            torch.cuda.set_per_process_memory_fraction(torch.cuda.memory_reserved(pl_module.device) / total)

    def teardown(self, trainer, pl_module, stage) -> None:
        torch.cuda.set_per_process_memory_fraction(1.0)

    def on_exception(self, trainer, pl_module, exception) -> None:
        torch.cuda.set_per_process_memory_fraction(1.0)
