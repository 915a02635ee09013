"""One optimiser step's logged statistics combined over processes (DDP, FSDP2).

Each process computes its figures over its own rollout: a mean over its completions, its
tokens or its groups, a standard deviation, a largest value, a count. The mean of the
processes' figures is right only where every process counts the same and none has nothing
to count: a reward routed to one task had no value on a process that drew none of its rows,
and its nan made the step's logged figure nan; a process with twice the tokens weighed the
same in ``train/kl``; ``completion/length_max`` was the mean of the largest. Here each kind of
figure combines as it was computed, from the counts each process logs beside it (keys under
``n/``, never sent to a logger):

- means over the completions a reward scored (``reward/<name>/mean``), over completions,
  groups or tokens: weighted by the count (processes without any left out; nan where no
  process had one, and a nan or inf over a positive count, a diverged process, stays);
- standard deviations: pooled, ``sqrt((sum (n_i - 1) s_i^2 + sum n_i (m_i - m)^2) / (N - 1))``
  (the unbiased std of the union, from each part's count, mean and unbiased std);
- counts (a reward's errors, non-finite values, recovered requests; ``reward/unscored``): summed;
- largest values (``..._max``, ``advantage/abs_max``), wall times (``time/...``, the step
  waits for the slowest process) and memory (``memory/...``, the fullest process runs out
  first): the largest;
- the rest (the loss, whose gradient DDP averages over processes; the gradient norm and
  learning rate, equal on every process): the mean (a nan on any process stays nan).
"""

from __future__ import annotations

import math

COUNT = "n/"  # the prefix of the counts each process logs beside its figures

TOKEN_MEANS = ("entropy", "kl", "clip_low", "clip_high", "ratio_mean")  # means over the update's loss tokens
COMPLETION_MEANS = ("completion/length_mean", "completion/truncated_frac", "advantage/mean")
SUMS = ("/errors", "/nonfinite", "/recovered")


def weight_key(key: str) -> str | None:
    """The count ``key``'s mean (or std) is taken over on each process, or None for a plain figure."""
    if key.startswith("reward/") and key.endswith(("/mean", "/std")):
        return COUNT + key.rsplit("/", 1)[0]  # n/reward/<name>, n/reward/total
    if key in TOKEN_MEANS:
        return COUNT + "tokens"
    if key in COMPLETION_MEANS or key == "advantage/std":
        return COUNT + "completions"
    if key == "groups_tied_frac":
        return COUNT + "groups"
    return None


def _weighted_mean(values: list[float], weights: list[float]) -> float:
    # a process with nothing to count is left out; a nan or inf over something (a diverged rank) stays in sight
    pairs = [(v, w) for v, w in zip(values, weights) if w > 0]
    total = sum(w for _, w in pairs)
    return sum(v * w for v, w in pairs) / total if total > 0 else math.nan


def _pooled_std(stds: list[float], means: list[float], weights: list[float]) -> float:
    parts = [(s, m, w) for s, m, w in zip(stds, means, weights) if w > 0]
    n = sum(w for *_, w in parts)
    if n <= 1:
        return 0.0 if n == 1 else math.nan
    mean = sum(m * w for _, m, w in parts) / n
    within = sum((w - 1) * s**2 for s, _, w in parts)
    between = sum(w * (m - mean) ** 2 for _, m, w in parts)
    total = within + between
    return math.sqrt(max(total, 0.0) / (n - 1)) if math.isfinite(total) else math.nan


def combine(per_process: list[dict[str, float]]) -> dict[str, float]:
    """The step's figures from every process's (each with its ``n/`` counts), without the counts.
    A figure some process did not log (a reward's ``recovered`` on one) counts as absent there."""
    keys = sorted({k for d in per_process for k in d if not k.startswith(COUNT)})
    out: dict[str, float] = {}
    for key in keys:
        have = [d for d in per_process if key in d]
        values = [d[key] for d in have]
        weight = weight_key(key)
        if weight is not None:
            weights = [float(d.get(weight, 0.0)) for d in have]
            if key.endswith("/std"):  # a reward's, the total's and advantage/std
                mean_key = key[: -len("std")] + "mean"
                out[key] = _pooled_std(values, [d.get(mean_key, math.nan) for d in have], weights)
            else:
                out[key] = _weighted_mean(values, weights)
        elif key.endswith(SUMS) or key == "reward/unscored":
            out[key] = float(sum(values))
        elif key.endswith("_max") or key.startswith(("time/", "memory/")):
            out[key] = math.nan if any(math.isnan(v) for v in values) else max(values)
        else:  # a non-finite loss on one process stays in sight
            out[key] = sum(values) / len(values)
    return out


def local(metrics: dict[str, float]) -> dict[str, float]:
    """One process's figures as logged alone: its counts left out, and a mean or std over nothing
    (a step with no loss token: its entropy, KL, ratio and clip fractions) nan, as :func:`combine`
    gives it (they were logged as 0: a ratio of 0 beside the applied steps' 0.86)."""
    return {k: math.nan if (w := weight_key(k)) is not None and metrics.get(w) == 0 else v
            for k, v in metrics.items() if not k.startswith(COUNT)}
