"""Scoring: the float32 log-probs of a rollout's completion tokens, the one forward that the
old, reference and policy passes of GRPO and SFT's loss all run.

The distribution is decided once, by the rollout (``Rollout.scoring``: the sampling
temperature and suppressed tokens, without top-k / top-p, see
:class:`lit_vr1.config.GRPOConfig`), and so is the forward: with shared prompts each
distinct prompt of the rows runs once for all of its completions
(:func:`lit_vr1.shared_prompt.completion_logits`), otherwise prompt + completion run as one
sequence per row; both give the same logits. Image features the rollout kept (only when the
vision tower is frozen, so that they hold for every model that scores it) are handed to the
prompt pass instead of running the tower again.

Shapes: ``n`` rows scored, ``T`` completion tokens, ``V`` vocabulary.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lit_vr1 import shared_prompt
from lit_vr1.loss import sampling_logits, token_entropy, token_logprobs
from lit_vr1.rollout import Rollout


def distribution_logits(model: nn.Module, rollout: Rollout, rows: Tensor) -> Tensor:
    """(n, T, V) logits of the distribution ``rollout.scoring`` describes, predicting each
    completion token of ``rows``."""
    if rollout.shared_prompt and not shared_prompt.update_repeats_prompts(model):
        logits = shared_prompt.completion_logits(model, rollout, rows, rollout.image_features)
    else:
        width = rollout.completion_ids.shape[1]
        # only the last T+1 positions go through the LM head: the prompt's logits are never built
        logits = model(**rollout.model_inputs(rows), use_cache=False, logits_to_keep=width + 1).logits[:, :-1, :]
    cfg = rollout.scoring
    return sampling_logits(logits, cfg.temperature, cfg.top_k, cfg.top_p, cfg.suppress_ids)


def logprobs(model: nn.Module, rollout: Rollout, rows: Tensor | None = None, *, grad: bool) -> Tensor:
    """(n, T) float32 log-probs of the completion tokens of ``rows`` (all by default) under
    ``model``; ``grad``: keep the autograd graph (the policy's update, SFT) or not (old and
    reference passes)."""
    rows = torch.arange(len(rollout)) if rows is None else rows
    with torch.set_grad_enabled(grad):
        return token_logprobs(distribution_logits(model, rollout, rows), rollout.completion_ids[rows])


def logprobs_and_entropy(model: nn.Module, rollout: Rollout, rows: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`logprobs` with gradients, and beside it the (n, T) entropy of each position's
    distribution (no gradient; computed a few rows at a time, see ``loss.token_entropy``)."""
    logits = distribution_logits(model, rollout, rows)
    return token_logprobs(logits, rollout.completion_ids[rows]), token_entropy(logits.detach())


def logprobs_in_parts(model: nn.Module, rollout: Rollout, parts: list[Tensor]) -> Tensor:
    """(N, T) float32 log-probs without gradients, computed over the row sets ``parts`` (the
    update's micro-batches, so that each pass runs the same rows together)."""
    out = torch.zeros(rollout.completion_ids.shape, dtype=torch.float32, device=rollout.completion_ids.device)
    for rows in parts:
        out[rows.to(out.device)] = logprobs(model, rollout, rows, grad=False)
    return out
