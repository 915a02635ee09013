"""Pure tensor functions of GRPO: token log-probs, group advantages, the k3 KL and
the clipped surrogate loss with its four aggregations.

Nothing here touches a model, a Trainer or a process group: every function takes
tensors and returns tensors (and, for the loss, detached statistics), so each
formula is tested against hand-computed cases in ``tests/test_loss.py``.

Shapes: ``N`` completions, ``T`` completion tokens (right-padded), ``V`` vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
SCALE_REWARDS = ("group", "batch", "none")


def _one_of(name: str, value: str, valid: tuple[str, ...]) -> None:
    """The functions' own precondition (the configuration is checked by ``GRPOConfig``'s rules)."""
    if value not in valid:
        raise ValueError(f"{name}={value!r} is not valid; choose one of {', '.join(valid)}")


def sampling_logits(
    logits: Tensor,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    suppress_ids: tuple[int, ...] | Tensor = (),
) -> Tensor:
    """Logits of the distribution that sampling draws from: ``suppress_ids`` set to -inf
    (tokens that may never be generated, such as image placeholders), divided by ``temperature``,
    then all but the ``top_k`` largest set to -inf (0 = off), then the tail outside the
    smallest set whose probability reaches ``top_p`` set to -inf (1.0 = off).

    The order and the tie rules follow transformers' temperature, top-k and top-p
    logits warpers (top-k keeps every token tied with the k-th; top-p always keeps
    the most likely token). The rollout samples from this distribution; the loss scores
    the same logits with ``top_k=0, top_p=1`` (temperature only, see
    ``lit_vr1.config.SamplingConfig.scoring``). ``logits``: (..., V).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    out = logits
    if len(suppress_ids):  # a tensor of them made once per rollout spares a copy to the device per step
        ids = suppress_ids if isinstance(suppress_ids, Tensor) else torch.tensor(suppress_ids, device=out.device)
        out = out.index_fill(-1, ids, float("-inf"))
    out = out / temperature if temperature != 1.0 else out
    vocab = out.shape[-1]
    if 0 < top_k < vocab:
        kth = torch.topk(out, top_k, dim=-1).values[..., -1:]
        out = out.masked_fill(out < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(out, dim=-1, descending=False)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = cum <= (1.0 - top_p)
        drop_sorted[..., -1] = False  # the most likely token always stays
        drop = drop_sorted.scatter(-1, sorted_idx, drop_sorted)
        out = out.masked_fill(drop, float("-inf"))
    return out


def token_logprobs(logits: Tensor, tokens: Tensor) -> Tensor:
    """log p(token) under softmax(logits), in float32 whatever the logits' dtype:
    ``logits`` (N, T, V), ``tokens`` (N, T) -> (N, T) float32.

    Computed as the gathered logit minus the row's logsumexp (never a (N, T, V) log-softmax
    tensor beside the logits). Both in float32: in bfloat16 a log-prob near -5 is only
    resolved to 0.03 nats, so ratios would move in steps of several percent and a small KL
    would round to exactly 0.
    """
    picked = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1).float()
    return picked - torch.logsumexp(logits.float(), dim=-1)


@torch.no_grad()
def token_entropy(logits: Tensor, rows_per_chunk: int = 2) -> Tensor:
    """Entropy of softmax(logits) per position: (N, T, V) -> (N, T). -inf logits count as p=0.

    Computed ``rows_per_chunk`` sequences at a time, so that its temporaries (log-softmax,
    probabilities) never span the whole (N, T, V) batch: with Qwen's 151,936-token
    vocabulary each full-batch copy would be as large as the logits themselves."""
    out = []
    for part in logits.split(rows_per_chunk, dim=0):
        logp = part.float().log_softmax(dim=-1)
        out.append(-(logp.exp() * logp.nan_to_num(neginf=0.0)).sum(dim=-1))
    return torch.cat(out) if out else logits.new_zeros(logits.shape[:-1])


@dataclass
class Advantages:
    """Per-completion advantages and the group statistics they came from.

    values: (N,) advantage of each completion; N = num_prompts * group_size, the
        G completions of one prompt stored next to each other.
    group_mean, group_std: (N,) the mean and (unbiased) std of its group's rewards.
    tied: (N // G,) bool, True where the group has no signal: every reward of its valid
        (scored) completions is equal, or fewer than two are valid.
    """

    values: Tensor
    group_mean: Tensor
    group_std: Tensor
    tied: Tensor

    def select_groups(self, groups: Tensor) -> Advantages:
        """The advantages of groups ``groups`` (prompt rows) alone, in that order."""
        rows = group_rows(groups, self.values.numel() // max(self.tied.numel(), 1))
        return Advantages(self.values[rows], self.group_mean[rows], self.group_std[rows], self.tied[groups])


def group_rows(groups: Tensor, group_size: int) -> Tensor:
    """The completion rows of prompt rows ``groups``, in that order: each group's G rows side by side."""
    return (groups.unsqueeze(1) * group_size + torch.arange(group_size, device=groups.device)).reshape(-1)


def group_advantages(rewards: Tensor, group_size: int, scale: str = "group", eps: float = 1e-4,
                     valid: Tensor | None = None, batch_std: Tensor | float | None = None) -> Advantages:
    """GRPO advantages: each reward minus its group's mean, divided by a spread.

    ``scale``: "group" divides by the group's std (DeepSeekMath, Shao et al. 2024,
    eq. for outcome supervision); "batch" divides by the std of all rewards in the
    batch, the mean still the group's (Lite PPO: Liu et al. 2025, "Part I: Tricks or Traps?
    A Deep Dive into RL for LLM Reasoning", arXiv 2508.08221; TRL's ``scale_rewards="batch"``);
    "none" does not divide (Dr. GRPO, Liu et al. 2025,
    which argues the std division biases towards easy and hard prompts).
    ``rewards``: (N,), N a multiple of ``group_size``; computed in float32.

    ``valid`` (N,) bool: False marks a completion no reward could score (every reward nan,
    or one failed): it is left out of its group's mean and std and of the batch std, and
    gets advantage 0, so a failed judge never passes for a wrong answer. A group with fewer
    than two valid completions has no signal (all its advantages are 0, ``tied``).
    ``batch_std``: the std that "batch" divides by, when it comes from elsewhere (the std
    of the whole batch across processes, see :func:`batch_std_from_sums`); default: the
    std of this call's valid rewards.
    """
    _one_of("scale_rewards", scale, SCALE_REWARDS)
    if rewards.ndim != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards of shape {tuple(rewards.shape)} do not split into groups of {group_size}")
    valid = torch.ones_like(rewards, dtype=torch.bool) if valid is None else valid.to(torch.bool)
    r = torch.where(valid, rewards.float(), 0.0)
    grouped, keep = r.view(-1, group_size), valid.view(-1, group_size)
    count = keep.sum(dim=1)
    mean = grouped.sum(dim=1) / count.clamp(min=1)
    sq = torch.where(keep, (grouped - mean[:, None]) ** 2, 0.0).sum(dim=1)
    std = torch.where(count > 1, (sq / (count - 1).clamp(min=1)).sqrt(), 0.0)  # unbiased, as Tensor.std
    high = torch.where(keep, grouped, float("-inf")).amax(dim=1)
    low = torch.where(keep, grouped, float("inf")).amin(dim=1)
    tied = (count < 2) | (high == low)
    mean_n = mean.repeat_interleave(group_size)
    std_n = std.repeat_interleave(group_size)
    centred = torch.where(valid & ~tied.repeat_interleave(group_size), r - mean_n, 0.0)
    if scale == "group":
        spread = std_n
    elif scale == "batch":
        if batch_std is None:
            batch_std = r[valid].std() if int(valid.sum()) > 1 else r.new_zeros(())
        spread = torch.as_tensor(batch_std, dtype=torch.float32, device=r.device).expand_as(r)
    else:
        spread = None
    # A zero spread means every centred reward is 0: the advantage is 0 (never 0/0).
    values = centred if spread is None else torch.where(spread > 0, centred / (spread + eps), torch.zeros_like(centred))
    return Advantages(values=values, group_mean=mean_n, group_std=std_n, tied=tied)


def batch_std_from_sums(total: Tensor) -> Tensor:
    """Unbiased std of a batch from ``total`` = (sum, sum of squares, count), e.g. summed
    over processes with one all-reduce (float64, so the difference of squares keeps its digits)."""
    s, sq, n = total.double().unbind()
    if n < 2:
        return total.new_zeros((), dtype=torch.float32)
    return ((sq - s * s / n).clamp(min=0.0) / (n - 1)).sqrt().float()


def batch_sums(rewards: Tensor, valid: Tensor) -> Tensor:
    """(sum, sum of squares, count) of the valid rewards, float64, for :func:`batch_std_from_sums`."""
    r = rewards.double()[valid.to(torch.bool)]
    return torch.stack([r.sum(), (r * r).sum(), r.new_tensor(float(r.numel()))])


def k3_kl(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token KL(policy || reference) estimate k3 = exp(r) - r - 1 with r = ref_logp - logp.

    Schulman's unbiased, always non-negative estimator ("Approximating KL divergence",
    2020), the one GRPO uses (DeepSeekMath, Shao et al. 2024, eq. 4). In float32,
    written as exp(r) - r - 1 it cancels to exactly 0 for |r| below ~3e-4 (k3 ~ r^2 / 2 is
    then under float32's epsilon), which is where a policy near its reference lives; so
    it is computed as expm1(r) - r, and for |r| < 1e-2 as its Taylor series
    r^2/2 + r^3/6 + r^4/24 (relative error under 1e-7 there). ``r`` is clamped to [-20, 20]
    so that an extreme log-prob gap gives a large, finite penalty instead of inf or NaN; past
    the clamp the penalty is constant, so such a token's KL gradient is 0 (the clipped surrogate
    still acts on it). verl's ``low_var_kl`` clamps the penalty itself to [-10, 10], which zeroes
    the gradient from r = 2.6 on one side; TRL does not clamp. In the quickstart's 60 GRPO steps
    (153,600 tokens) |r| stayed under 6.5.
    """
    r = (ref_logp.float() - logp.float()).clamp(-20.0, 20.0)
    series = r * r * (0.5 + r * (1.0 / 6.0 + r / 24.0))
    return torch.where(r.abs() < 1e-2, series, torch.expm1(r) - r)


@dataclass
class LossStats:
    """Detached 0-dim float32 tensors of one loss evaluation (means over completion tokens),
    on the loss's device: reading them is left to the caller, once per optimiser step (each
    read of a GPU value waits for the GPU)."""

    kl: Tensor
    clip_low: Tensor
    clip_high: Tensor
    ratio_mean: Tensor


def grpo_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    ref_logp: Tensor | None = None,
    beta: float = 0.0,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    loss_type: str = "grpo",
    max_completion_length: int | None = None,
    num_sequences: float | None = None,
    num_tokens: float | Tensor | None = None,
) -> tuple[Tensor, LossStats]:
    """Clipped surrogate with a k3 KL penalty, aggregated as ``loss_type`` says.

    Per token (PPO's clipped objective, Schulman et al. 2017, as used by GRPO):
        ratio = exp(logp - old_logp)
        l = -min(ratio * A, clip(ratio, 1 - epsilon, 1 + epsilon_high) * A) + beta * k3
    ``epsilon_high`` defaults to ``epsilon``; a larger one is DAPO's clip-higher.

    Aggregation of ``l`` over the completion tokens (mask = 1):
        grpo     mean over each sequence's tokens, then mean over sequences
                 (DeepSeekMath, Shao et al. 2024)
        bnpo     sum over tokens / number of tokens
        dr_grpo  sum over tokens / (sequences * max_completion_length)
                 (Dr. GRPO, Liu et al. 2025: no length normalisation)
        dapo     sum over tokens / number of tokens of the whole global batch
                 (DAPO, Yu et al. 2025, token-level loss)
    ``num_sequences`` and ``num_tokens`` are the denominators when this call sees only
    a micro-batch: pass the totals of the mini-batch (for dapo, across all ranks) so
    that the micro-batch losses add up to the mini-batch loss. They default to this
    call's own counts.

    Shapes: ``logp``, ``old_logp``, ``ref_logp``, ``mask``: (N, T); ``advantages``: (N,).
    Everything is computed in float32. Returns the scalar loss and detached statistics.
    """
    _one_of("loss_type", loss_type, LOSS_TYPES)
    # float32 whatever the model's dtype: ratios, KL and the loss (callers pass float32 already)
    logp, old_logp, advantages = logp.float(), old_logp.float(), advantages.float()
    ref_logp = ref_logp.float() if ref_logp is not None else None
    eps_low = epsilon
    eps_high = epsilon if epsilon_high is None else epsilon_high
    mask = mask.to(logp.dtype)
    adv = advantages.unsqueeze(1)
    ratio = torch.exp(logp - old_logp)
    unclipped = ratio * adv
    clipped = ratio.clamp(1.0 - eps_low, 1.0 + eps_high) * adv
    per_token = -torch.minimum(unclipped, clipped)
    kl = None
    if beta != 0.0:
        if ref_logp is None:
            raise ValueError("beta != 0 needs ref_logp")
        kl = k3_kl(logp, ref_logp)
        per_token = per_token + beta * kl

    n_seq = float(logp.shape[0]) if num_sequences is None else float(num_sequences)
    if num_tokens is None:
        n_tok = mask.sum().clamp(min=1.0)
    else:  # a tensor stays where it is (no host sync); a number becomes a float32 scalar
        n_tok = num_tokens.float() if isinstance(num_tokens, Tensor) else torch.as_tensor(float(num_tokens))
    if loss_type == "grpo":
        seq_mean = (per_token * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        loss = seq_mean.sum() / n_seq
    elif loss_type in ("bnpo", "dapo"):
        loss = (per_token * mask).sum() / n_tok
    else:
        if max_completion_length is None:
            raise ValueError("loss_type='dr_grpo' needs max_completion_length")
        loss = (per_token * mask).sum() / (n_seq * max_completion_length)

    with torch.no_grad():
        denom = mask.sum().clamp(min=1.0)
        low = ((ratio < 1.0 - eps_low) & (adv < 0)).to(mask.dtype)
        high = ((ratio > 1.0 + eps_high) & (adv > 0)).to(mask.dtype)
        stats = LossStats(
            kl=(kl * mask).sum() / denom if kl is not None else denom.new_zeros(()),
            clip_low=(low * mask).sum() / denom,
            clip_high=(high * mask).sum() / denom,
            ratio_mean=(ratio * mask).sum() / denom,
        )
    return loss, stats
