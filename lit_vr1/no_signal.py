"""Why a GRPO fit learns nothing, read from the figures each rollout already logs.

GRPO learns from the differences between the G rewards of a prompt (the group-normalised
advantage, DeepSeekMath eq. 3): a reward that never varies inside a group carries nothing.
Two patterns say so before hours go by, each warned once:

- every group tied (``train/groups_tied_frac`` 1) for many rollouts in a row: every advantage
  is 0. :func:`tied_cause` names the likely cause from the same rollout's figures (every
  completion cut at the length limit; rewards tied above 0: alike samples or all-or-nothing
  rewards; rewards all 0: no answer format yet), where one sentence blamed the format always
  (a new user's trial, 2026-12-07: a run whose completions were all truncated was told to
  cold-start);
- one reward exactly 0 on every completion for many rollouts while the others vary
  (:class:`SilentRewards`): the others keep the groups untied, so no tie is seen, and the
  reward's share of the signal is gone. A box reward reading a model's boxes in another frame
  than it writes (pixels read as 0-1000 shrink into a corner and miss) scored IoU 0 on every
  step of a trial without a word.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any


def tied_cause(stats: Mapping[str, float], temperature: float, max_completion_length: int) -> str:
    """The likely reason a rollout's groups all tied, from its own figures (``stats``: the
    ``train/`` statistics the loop returns, keys without the prefix)."""
    reward = stats.get("reward/total/mean", math.nan)
    if stats.get("completion/truncated_frac", 0.0) >= 1.0:
        return (f"Every completion was cut at model.grpo.max_completion_length={max_completion_length} tokens "
                "(train/completion/truncated_frac 1), so no answer is ever finished: raise it above the length of the "
                "answers the model writes")
    if math.isfinite(reward) and reward != 0.0:
        return (f"The rewards are not 0 but the same within each group (mean {reward:.3f}): the G samples of a prompt "
                f"are alike (train/entropy near 0; model.grpo.temperature={temperature:g}: raise it) or the rewards are "
                "all-or-nothing on prompts every sample gets right or wrong (give partial credit, or other prompts)")
    return ("A model that does not write the answer format scores 0 on every reward: start from a cold start that "
            "writes it (callbacks.ColdStart, or an SFT'd model; LoRA on a random model does not learn it), or give the "
            "rewards partial credit, or raise model.grpo.temperature / num_generations")


class SilentRewards:
    """Counts, per reward, the rollouts in a row in which it scored exactly 0 on every
    completion routed to it (mean and spread 0); :meth:`update` returns the warning for a
    reward at ``rollouts`` in a row or more, once per reward, in a rollout whose groups are not
    all tied (those are the tied-groups warning's). A rollout the reward does not apply to
    (no value: nan) neither counts nor breaks the run. Rewards at weight 0 (logged only) and
    penalties whose best score is 0 (``zero_is_best``: :class:`~lit_vr1.rewards.RepetitionPenalty`)
    are left out. A module keeps one for its life (its fits after the first are not told again)."""

    def __init__(self, rollouts: int) -> None:
        self.rollouts = rollouts
        self.in_a_row: dict[str, int] = {}
        self.told: set[str] = set()

    def update(self, stats: Mapping[str, float], rewards: Sequence[Any], box_frame: str | None = None) -> list[str]:
        notes = []
        tied = stats.get("groups_tied_frac", 0.0) >= 1.0  # every group tied: the tied-groups warning speaks for all
        for r in rewards:
            if r.weight == 0 or getattr(r, "zero_is_best", False):  # logged beside the others; a penalty at its best
                continue
            mean, spread = stats.get(f"reward/{r.name}/mean", math.nan), stats.get(f"reward/{r.name}/std", math.nan)
            if not math.isfinite(mean):
                continue
            silent = mean == 0.0 and (spread == 0.0 or not math.isfinite(spread))
            self.in_a_row[r.name] = self.in_a_row.get(r.name, 0) + 1 if silent else 0
            if self.in_a_row[r.name] >= self.rollouts and r.name not in self.told and not tied:
                self.told.add(r.name)
                notes.append(silent_reward_note(r, self.in_a_row[r.name], len(rewards), box_frame))
        return notes


def silent_reward_note(reward: Any, rollouts: int, count: int, box_frame: str | None) -> str:
    """The warning for ``reward`` at 0 on every completion of ``rollouts`` rollouts in a row."""
    head = (f"reward {reward.name} scored 0 on every completion of the last {rollouts} rollouts "
            f"(train/reward/{reward.name}/mean 0): it gives GRPO no signal")
    if count > 1:
        head += ", and the other rewards alone keep the groups apart"
    if hasattr(reward, "box_frame"):  # a box reward: every box missing is the mark of another frame
        frame = reward.box_frame or box_frame
        return (f"{head}. Every box missing is the mark of boxes read in another frame than the model writes them: "
                f"they are read in {frame or 'the model family’s frame'} (model.box_frame, or the reward's own "
                "box_frame); Qwen2.5-VL writes input_pixels, Qwen2-VL and Qwen3-VL norm1000. The RolloutTable and "
                "RolloutLog callbacks show the completions, and validation names a frame whose boxes score better")
    return (f"{head}. Read the completions (callbacks.RolloutTable, callbacks.RolloutLog) against what the reward "
            "expects (its answer format, the solutions of the data); a penalty of your own whose best score is 0 sets "
            "zero_is_best = True on its class")


def strong_kl_note(beta: float) -> str | None:
    """A note when the KL penalty's weight is 1 or more: the loss is then mostly
    ``beta * KL`` (DeepSeekMath eq. 3's penalty, against the reference), which holds the policy
    at its start whatever the rewards say (a trial's beta 100: ``train/kl`` pinned near 0.003,
    the loss 100x the run's with beta 0.04, not a word). The seeds use 0.04, TRL 1.x 0."""
    if beta < 1.0:
        return None
    return (f"model.grpo.beta={beta:g} weighs the KL penalty {beta / 0.04:.0f}x the seeds' 0.04 (TRL's default: 0): "
            "the loss is then mostly beta x KL (train/loss against train/kl), which holds the policy at its start "
            "whatever the rewards say; the usual range is 0 to 0.1")


COLD_TEMPERATURE = 0.3  # below it a policy's G samples of a prompt are mostly the same text


def cold_sampling_note(temperature: float) -> str | None:
    """A note when completions are sampled at a temperature below :data:`COLD_TEMPERATURE`:
    the G samples of a prompt are then nearly the greedy completion each, so most groups tie
    and teach nothing (a trial at 0.01 tied 60-90% of its groups for rollouts on end, while the
    tied-groups warning waits for all of them). The seeds sample at 1.0, the demos at 0.7-1.0."""
    if temperature >= COLD_TEMPERATURE:
        return None
    return (f"model.grpo.temperature={temperature:g} samples each prompt's G completions near its greedy one: most "
            "groups will be alike, with the same rewards and no advantage (train/groups_tied_frac); GRPO learns from "
            "the differences between them, so sample at 0.7-1.0 as the seeds do")

