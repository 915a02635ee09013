"""SFTModule: cold-start supervised fine-tuning on the same JSONL conversations.

The answer (the data's "gpt" turn, then the end-of-turn token) is scored after the
very prompt the GRPO rollout uses, so SFT teaches exactly the format GRPO samples in.
The loss is the mean negative log-likelihood over assistant tokens only. Rows without an
answer (label-free data) are refused at fit start, every one listed (:func:`check_answers`
over the training set's records), and again in any batch that holds one.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import ProcessorMixin

from lit_vr1 import parallel
from lit_vr1.checks import check_sft_fit
from lit_vr1.config import SamplingConfig
from lit_vr1.data.jsonl import DataError, Sample, is_box_answer, rows_message, solution_text
from lit_vr1.generation import encode_prompts, end_of_turn_id, image_layout
from lit_vr1.models.families import family_of
from lit_vr1.module import VLMModule, refuse_unknown_module_keywords
from lit_vr1.rewards.base import has_answer
from lit_vr1.rewards.boxes import answer_in_frame
from lit_vr1.rollout import Rollout
from lit_vr1.scoring import logprobs


def teacher_forced(processor: ProcessorMixin, samples: list[Sample], answers: list[str],
                   device: torch.device | str = "cpu", box_frame: str | None = None) -> Rollout:
    """A rollout whose completions are given texts (each followed by the end-of-turn token),
    scored at temperature 1: the prompts are encoded exactly as for generation, the answers
    tokenised on their own, as generation produces them. Box answers (written in original
    pixels, as solutions are) are taught in ``box_frame`` (None: the model family's), the
    frame the rewards and evaluation read the model's boxes in (:func:`answers_in_frame`)."""
    prompt, per_row = encode_prompts(processor, samples)
    image_rows, input_sizes = image_layout(processor, prompt, [size for s in samples for size in s.image_sizes])
    answers = answers_in_frame(answers, samples, per_row, input_sizes, box_frame or family_of(processor).box_frame)
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


def answers_in_frame(answers: list[str], samples: list[Sample], per_row: list[int],
                     input_sizes: list[tuple[int, int]], frame: str) -> list[str]:
    """Each answer written as boxes (:func:`~lit_vr1.data.jsonl.is_box_answer`; not where the
    data say such answers are not boxes, ``data.check_boxes: false``) with its boxes
    mapped from the first image's original pixels to ``frame`` at the size the model sees that
    image (:func:`~lit_vr1.rewards.boxes.answer_in_frame`); other answers as they are."""
    firsts = [sum(per_row[:i]) for i in range(len(per_row))]
    out = []
    for answer, sample, first, n in zip(answers, samples, firsts, per_row):
        if n and input_sizes and getattr(sample, "box_answers", True) and is_box_answer(answer):
            answer = answer_in_frame(answer, frame, input_sizes[first], sample.image_sizes[0])
        out.append(answer)
    return out


def no_answer_message(source: str, sample_id: str) -> str:
    """Why a row without an answer is refused by supervised steps, naming its "file:line"."""
    return (f"{source}: sample '{sample_id}' has no answer (field 'solution' is empty or missing): supervised "
            "steps (SFT, callbacks.ColdStart) teach the answer, so give them labelled rows; unlabelled questions "
            "suit label-free GRPO (a judge's reward)")


def check_answers(rows: list[Any] | None) -> None:
    """Refuse rows (records or samples: ``solution``, ``source``, ``id``) without an answer
    (label-free rows: SFT would teach the end-of-turn token alone) with one
    :class:`DataError` listing them all (:func:`~lit_vr1.data.jsonl.rows_message`); None
    (no JSONL records to check) passes."""
    bad = [r for r in rows or [] if not has_answer(r.solution)]
    if bad:
        raise DataError(rows_message([no_answer_message(r.source, r.id) for r in bad], [r.source for r in bad],
                                     "rows without an answer", "give each an answer in field 'solution', or remove "
                                     "them; unlabelled questions suit label-free GRPO"))


def skips_bad_rows(trainer: Any) -> bool:
    """Whether the fit's training set leaves bad rows out (``data.bad_rows=skip``)."""
    return getattr(getattr(getattr(trainer, "datamodule", None), "train_set", None), "bad_rows", "raise") == "skip"


def refuse_or_leave_out_unlabelled(trainer: Any) -> None:
    """At an SFT fit's start: rows without an answer refused, all listed (:func:`check_answers`),
    or under ``data.bad_rows=skip`` left out of the training set and reported with the other
    skipped rows."""
    train_set = getattr(getattr(trainer, "datamodule", None), "train_set", None)
    if skips_bad_rows(trainer) and hasattr(train_set, "check_rows"):
        train_set.check_rows(lambda r: None if has_answer(r.solution) else no_answer_message(r.source, r.id),
                             "rows without an answer", "give each an answer in field 'solution'",
                             "no training row has an answer to teach")
        return
    check_answers(training_records(trainer))


def labelled_rows(train_set: Any) -> list[int]:
    """Indices of the rows with an answer (all rows of a dataset without records)."""
    records = getattr(train_set, "records", None)
    if records is None:
        return list(range(len(train_set)))
    return [i for i, r in enumerate(records) if has_answer(r.solution)]


def training_records(trainer: Any) -> list[Any] | None:
    """The records of the fit's training set when it is a JSONL dataset (the data module's
    ``train_set``, e.g. :class:`~lit_vr1.data.jsonl.JsonlDataset`, synthetic data included);
    None when there is none to read (a plain DataLoader, another kind of dataset)."""
    train_set = getattr(getattr(trainer, "datamodule", None), "train_set", None)
    return getattr(train_set, "records", None)


def answer_nll(policy, processor, batch: list[Sample], device: torch.device | str,
               box_frame: str | None = None) -> tuple[torch.Tensor, int]:
    """Mean negative log-likelihood of the answer tokens (each sample's solution, then the
    end-of-turn token) after the prompt exactly as the rollout encodes it, and their count.
    A batch holding rows without an answer is refused (:func:`check_answers`; the fit-start
    check lists them all before, this is the backstop for data read otherwise)."""
    check_answers(batch)
    answers = [solution_text(s.solution) for s in batch]
    r = teacher_forced(processor, batch, answers, device=device, box_frame=box_frame)
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

    recipe = "SFT"

    def __init__(self, **kwargs) -> None:
        refuse_unknown_module_keywords(type(self).__name__, kwargs)
        super().__init__(**kwargs)
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])

    def setup(self, stage: str) -> None:
        """At fit start, before the model is built: refuse the training set's rows without an
        answer, all of them listed (not when a batch holding one is reached, deep into the run),
        or under ``data.bad_rows=skip`` leave them out."""
        super().setup(stage)
        if stage == "fit":
            check_sft_fit(self)  # FSDP2's tensor parallelism and an export of sharded weights, refused
            refuse_or_leave_out_unlabelled(self.trainer)

    def configure_model(self) -> None:
        """Build the policy, then shard it with FSDP2 under ``ModelParallelStrategy`` (whose
        processes otherwise each train their own copy: the strategy syncs no gradient of a model
        it was not given sharded)."""
        super().configure_model()
        parallel.shard(self)

    def sft_loss(self, batch: list[Sample]) -> tuple[torch.Tensor, int]:
        """Mean NLL of the answer tokens and their count."""
        return answer_nll(self.policy, self.processor, batch, self.device, self.box_frame)

    def training_step(self, batch: list[Sample], batch_idx: int) -> torch.Tensor:
        loss, n = self.sft_loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch))
        self.log("train/answer_tokens", float(n), batch_size=len(batch))
        return loss
