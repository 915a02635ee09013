"""MergedExport: at the end of fit, write the policy with its LoRA adapters merged in (or the
plain policy, without LoRA) and its processor as a ``save_pretrained`` directory, which
loads by path like any checkpoint (``model: <dirpath>`` in a later run)."""

from __future__ import annotations

from lightning.pytorch import Callback
from lightning.pytorch.utilities import rank_zero_only

from lit_vr1.models.lora import save_merged


class MergedExport(Callback):
    """Save the merged policy and the processor to ``dirpath`` when fit ends.

    The adapters are folded into the base weights in a new state dict; the live policy
    keeps its adapters and its base weights untouched.

    Args:
        dirpath: directory to write (created if missing; files in it are overwritten).
        dtype: the saved weights' dtype (``float32``, ``bfloat16``, ...; default: the policy's
            own). Merging into bf16 weights rounds the adapters' update (a warning says how
            much when it matters); ``float32`` keeps it whole.
    """

    def __init__(self, dirpath: str, dtype: str | None = None) -> None:
        self.dirpath, self.dtype = dirpath, dtype

    @rank_zero_only
    def on_fit_end(self, trainer, pl_module) -> None:
        save_merged(pl_module.policy, self.dirpath, pl_module.processor, dtype=self.dtype)
