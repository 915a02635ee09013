"""The rollout batch: G sampled (or given) completions per prompt, kept as one typed batch.

Shapes: ``N`` completions (prompts x G, a prompt's G completions next to each other),
``P`` prompt tokens (left-padded), ``T`` completion tokens (right-padded),
``I`` images in the batch, ``X`` rows of ``pixel_values`` of all images together (Qwen-VL:
flattened patches; InternVL: tiles). :mod:`lit_vr1.generation` samples one,
:func:`lit_vr1.sft.teacher_forced` builds one from given answers, and
:func:`lit_vr1.scoring.logprobs` scores its tokens.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate

import torch
from torch import Tensor
from transformers.modeling_outputs import BaseModelOutputWithPooling

from lit_vr1.config import SamplingConfig
from lit_vr1.loss import group_rows
from lit_vr1.models.families import select_rows
from lit_vr1.rewards.base import SampleContext


@dataclass
class ImageFeatures:
    """The vision tower's output for a prompt batch, kept for the training passes when the
    tower is frozen: ``per_image`` (I tensors of (tokens_i, hidden)), ``images_per_prompt`` (P,)."""

    per_image: tuple[Tensor, ...]
    images_per_prompt: list[int]

    def select(self, prompts: list[int]) -> BaseModelOutputWithPooling | None:
        """The features of the images of ``prompts``, in that order, as the model takes them."""
        picked = self.subset(prompts).per_image
        return BaseModelOutputWithPooling(pooler_output=picked) if picked else None

    def subset(self, prompts: Sequence[int]) -> ImageFeatures:
        """The features of ``prompts`` alone, in that order."""
        ids = image_ids(self.images_per_prompt, prompts)
        return ImageFeatures(tuple(self.per_image[i] for i in ids), [self.images_per_prompt[p] for p in prompts])


def image_ids(images_per_prompt: list[int], prompts: Sequence[int]) -> list[int]:
    """The images of ``prompts``, in that order, numbered over the whole batch."""
    first = [0, *accumulate(images_per_prompt)]
    return [i for p in prompts for i in range(first[p], first[p + 1])]


@dataclass
class Rollout:
    """One batch of completions and everything the update needs.

    prompt: processor outputs, one row per PROMPT (each prompt is encoded once, not G
        times): input_ids, attention_mask and (Qwen-VL) mm_token_type_ids (P, Lp);
        pixel_values (X, ...); (Qwen-VL) image_grid_thw (I, 3).
    images_per_row: (P,) number of images of each prompt row (to slice pixel_values).
    completion_ids: (N, T) tokens, pad after EOS.
    completion_mask: (N, T) 1 on tokens up to and including EOS.
    truncated: (N,) True where no EOS came within max_completion_length.
    completions: N decoded completion texts (special tokens stripped).
    contexts: N reward contexts, one per completion ([] for teacher-forced answers).
    scoring: the distribution its tokens are scored under (decided once, where the rollout
        is made: the sampling temperature and suppressed tokens, without top-k / top-p).
    group_size: G; completion row r belongs to prompt row r // G.
    image_rows: (I,) rows of pixel_values each image owns (None: a batch without images).
    shared_prompt: score it with the shared-prompt passes (each prompt once for its G
        completions, :mod:`lit_vr1.shared_prompt`) rather than with repeated prompt rows.
    image_features: the rollout's image features (shared prompts on Qwen2-VL / Qwen2.5-VL),
        which the training passes reuse when the vision tower is frozen.
    sampling_logprobs: (N, T) log-prob of each sampled token under the distribution
        generation sampled from (only when asked for; a correctness check).
    old_logprobs, ref_logprobs: (N, T), filled by the loop when needed.
    advantages: (N,), filled by the loop.
    """

    prompt: dict[str, Tensor]
    images_per_row: list[int]
    completion_ids: Tensor
    completion_mask: Tensor
    truncated: Tensor
    completions: list[str]
    contexts: list[SampleContext]
    scoring: SamplingConfig
    group_size: int = 1
    image_rows: list[int] | None = None
    shared_prompt: bool = False
    image_features: ImageFeatures | None = None
    sampling_logprobs: Tensor | None = None
    old_logprobs: Tensor | None = None
    ref_logprobs: Tensor | None = None
    advantages: Tensor | None = None

    def __len__(self) -> int:
        return self.completion_ids.shape[0]

    def prompt_index(self, rows: Tensor) -> Tensor:
        """Prompt row of each completion row in ``rows``."""
        return torch.div(rows, self.group_size, rounding_mode="floor")

    def prompt_rows(self, index: Tensor | list[int]) -> dict[str, Tensor]:
        """Prompt rows ``index`` (repeats allowed) with exactly their images' vision tensors."""
        return select_rows(self.prompt, self.images_per_row, index, self.image_rows or [])

    def model_inputs(self, rows: Tensor | None = None) -> dict[str, Tensor]:
        """Forward inputs (prompt + completion) for the completion ``rows``, all rows by default."""
        rows = torch.arange(len(self)) if rows is None else rows
        prompt = self.prompt_rows(self.prompt_index(rows))
        comp = self.completion_ids[rows]
        out = dict(prompt)
        out["input_ids"] = torch.cat([prompt["input_ids"], comp], dim=1)
        comp_mask = self.completion_mask[rows].to(prompt["attention_mask"].dtype)
        out["attention_mask"] = torch.cat([prompt["attention_mask"], comp_mask], dim=1)
        if "mm_token_type_ids" in prompt:
            out["mm_token_type_ids"] = torch.cat([prompt["mm_token_type_ids"], torch.zeros_like(comp)], dim=1)
        return out

    def select_groups(self, groups: Sequence[int]) -> Rollout:
        """The rollout of prompt rows ``groups`` alone, in that order, each with its G completions
        (N' = len(groups) x G) and exactly its images' vision tensors; every per-completion field
        that is set (log-probs, advantages) is cut alike. The seam for training on some groups of
        a rollout, e.g. DAPO's dynamic sampling (:meth:`lit_vr1.loop.RolloutUpdateLoop.groups_to_train`)."""
        groups = [int(p) for p in groups]
        index = group_rows(torch.tensor(groups, dtype=torch.long), self.group_size).to(self.completion_ids.device)
        rows = index.tolist()

        def cut(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[index.to(t.device)]

        return dataclasses.replace(
            self, prompt=self.prompt_rows(groups), images_per_row=[self.images_per_row[p] for p in groups],
            completion_ids=cut(self.completion_ids), completion_mask=cut(self.completion_mask),
            truncated=cut(self.truncated), completions=[self.completions[r] for r in rows],
            contexts=[self.contexts[r] for r in rows] if self.contexts else [],
            image_rows=None if self.image_rows is None else
            [self.image_rows[i] for i in image_ids(self.images_per_row, groups)],
            image_features=None if self.image_features is None else self.image_features.subset(groups),
            sampling_logprobs=cut(self.sampling_logprobs), old_logprobs=cut(self.old_logprobs),
            ref_logprobs=cut(self.ref_logprobs), advantages=cut(self.advantages))
