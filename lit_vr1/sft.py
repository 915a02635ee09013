"""SFTModule: cold-start supervised fine-tuning on the same JSONL conversations.

The answer (the data's "gpt" turn, then the end-of-turn token) is scored after the
very prompt the GRPO rollout uses, so SFT teaches exactly the format GRPO samples in.
The loss is the mean negative log-likelihood over assistant tokens only.
"""

from __future__ import annotations

import torch

from lit_vr1.data.jsonl import Sample, solution_text
from lit_vr1.loss import token_logprobs
from lit_vr1.module import VLMModule
from lit_vr1.rollout import Rollout, completion_logits, teacher_forced


def answer_nll(policy, processor, batch: list[Sample], device: torch.device | str) -> tuple[torch.Tensor, int]:
    """Mean negative log-likelihood of the answer tokens (each sample's solution, then the
    end-of-turn token) after the prompt exactly as the rollout encodes it, and their count."""
    r: Rollout = teacher_forced(processor, batch, [solution_text(s.solution) for s in batch], device=device)
    logits = completion_logits(policy, r.model_inputs(), r.completion_ids.shape[1])
    logp = token_logprobs(logits, r.completion_ids)
    mask = r.completion_mask.to(logp.dtype)
    n = int(mask.sum())
    return -(logp * mask).sum() / max(n, 1), n


class SFTModule(VLMModule):
    """Supervised fine-tuning of a VLM on its data's answers (automatic optimisation:
    the Trainer's ``gradient_clip_val`` and ``accumulate_grad_batches`` apply).

    Args: see :class:`~lit_vr1.module.VLMModule` (model, optimizer, lr_scheduler,
    min_pixels, max_pixels, dtype, attn_implementation, seed, box_frame,
    eval_max_new_tokens, export_dir).
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])

    def sft_loss(self, batch: list[Sample]) -> tuple[torch.Tensor, int]:
        """Mean NLL of the answer tokens and their count."""
        return answer_nll(self.policy, self.processor, batch, self.device)

    def training_step(self, batch: list[Sample], batch_idx: int) -> torch.Tensor:
        loss, n = self.sft_loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch))
        self.log("train/answer_tokens", float(n), batch_size=len(batch))
        return loss
