"""SFTModule: cold-start supervised fine-tuning on the same JSONL conversations.

The answer (the data's "gpt" turn, then the end-of-turn token) is scored after the
very prompt the GRPO rollout uses, so SFT teaches exactly the format GRPO samples in.
The loss is the mean negative log-likelihood over assistant tokens only.
"""

from __future__ import annotations

import torch
from transformers import ProcessorMixin

from lit_vr1.config import SamplingConfig
from lit_vr1.data.jsonl import DataError, Sample, solution_text
from lit_vr1.generation import encode_prompts, end_of_turn_id, image_layout
from lit_vr1.module import VLMModule
from lit_vr1.rollout import Rollout
from lit_vr1.scoring import logprobs


def teacher_forced(processor: ProcessorMixin, samples: list[Sample], answers: list[str],
                   device: torch.device | str = "cpu") -> Rollout:
    """A rollout whose completions are given texts (each followed by the end-of-turn token),
    scored at temperature 1: the prompts are encoded exactly as for generation, the answers
    tokenised on their own, as generation produces them."""
    prompt, per_row = encode_prompts(processor, samples)
    image_rows, _ = image_layout(processor, prompt, [size for s in samples for size in s.image_sizes])
    tok = processor.tokenizer
    eos = end_of_turn_id(processor)
    ids = [tok(a, add_special_tokens=False).input_ids + [eos] for a in answers]
    width = max(len(x) for x in ids)
    comp = torch.full((len(ids), width), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, x in enumerate(ids):
        comp[i, : len(x)] = torch.tensor(x)
        mask[i, : len(x)] = 1
    prompt = {k: v.to(device) for k, v in prompt.items()}
    return Rollout(prompt=prompt, images_per_row=per_row, completion_ids=comp.to(device), completion_mask=mask.to(device),
                   truncated=torch.zeros(len(ids), dtype=torch.bool, device=device), completions=list(answers),
                   contexts=[], scoring=SamplingConfig(), image_rows=image_rows)


def answer_nll(policy, processor, batch: list[Sample], device: torch.device | str) -> tuple[torch.Tensor, int]:
    """Mean negative log-likelihood of the answer tokens (each sample's solution, then the
    end-of-turn token) after the prompt exactly as the rollout encodes it, and their count."""
    answers = [solution_text(s.solution) for s in batch]
    for s, answer in zip(batch, answers):
        if not answer.strip():  # label-free rows: SFT would teach the end-of-turn token alone
            raise DataError(f"{s.source}: sample '{s.id}' has no answer (field 'solution' is empty or missing): "
                            "supervised steps (SFT, callbacks.ColdStart) teach the answer, so give them labelled "
                            "rows; unlabelled questions suit label-free GRPO (a judge's reward)")
    r = teacher_forced(processor, batch, answers, device=device)
    logp = logprobs(policy, r, grad=torch.is_grad_enabled())
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
