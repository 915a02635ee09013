"""The reward interface, routing by task, failure handling and the weighted sum.

A reward sees every completion of a batch together with the sample it answered
(:class:`SampleContext`) and returns one float per completion; ``nan`` means "not
applicable here" and is left out of the sum and of the statistics.

Routing (as VLM-R1's ``reward_method``): every sample carries a ``task`` (from the data
file it came from, or its own ``reward_method`` field); a reward with ``tasks`` set
scores only those samples and gives ``nan`` to the rest, so one run mixes REC,
detection and math data, each scored by its own rewards.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from lightning.pytorch.utilities import rank_zero_warn
from PIL import Image
from torch import Tensor

from lit_vr1.data.prompts import IMAGE_MARKER
from lit_vr1.rules import enforce, rule

ON_ERROR = ("raise", "nan")


@dataclass
class SampleContext:
    """What a reward may look at for one completion.

    image_sizes: original (width, height) of each image, in prompt order.
    input_sizes: (width, height) of each image as the model saw it (after resizing).
    task: routing key of the sample (its data file's reward method, or its own
        ``reward_method`` field); "default" when none was given.
    source: "file:line" of the sample, for error messages.
    completion_length: tokens of this completion; truncated: True when it hit
    max_completion_length without EOS; global_step: the optimiser steps taken before this
    rollout (0 for the first, as TRL's ``trainer_state.global_step``; metrics.csv and RolloutLog
    label that rollout's update step 1, the step count after it).
    box_frame: the frame the policy writes boxes in (the module's ``box_frame``, by default
        its model family's: Qwen2.5-VL input_pixels; Qwen2-VL, Qwen3-VL, InternVL norm1000);
        box rewards without a ``box_frame`` of their own read it.
    messages: the prompt's chat turns as the processor templated them (``[{"role": "user",
        "content": [{"type": "image"}, {"type": "text", "text": ...}]}]``); [] when unknown.
    completion_ids: the completion's token ids up to and including its end of turn, without
        padding; None where the rollout did not record them.
    written_id: the data line's "id" as written (``1``, not ``"1"``); None when the line had none
        (``id`` is always text).
    """

    id: str
    prompt: str
    solution: Any
    images: list[Image.Image] = field(default_factory=list)
    image_sizes: list[tuple[int, int]] = field(default_factory=list)
    input_sizes: list[tuple[int, int]] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    completion_length: int = 0
    truncated: bool = False
    global_step: int = 0
    task: str = "default"
    source: str = ""
    box_frame: str | None = None
    messages: list[dict] = field(default_factory=list)
    completion_ids: list[int] | None = None
    written_id: Any = None

    @classmethod
    def of(cls, sample: Any, *, input_sizes: list[tuple[int, int]], completion_length: int = 0,
           truncated: bool = False, global_step: int = 0, box_frame: str | None = None,
           completion_ids: list[int] | None = None) -> SampleContext:
        """The context of one completion of ``sample`` (a :class:`lit_vr1.data.jsonl.Sample`):
        the text of its last message, its messages, solution, images, sizes, metadata, task
        and source, with what the rollout adds (``input_sizes`` of its images at the model
        input, the completion's length, truncation and token ids, the step, the policy's box frame)."""
        return cls(id=sample.id, prompt=prompt_text(sample.messages), solution=sample.solution, images=sample.images,
                   image_sizes=sample.image_sizes, input_sizes=input_sizes, metadata=sample.metadata,
                   completion_length=completion_length, truncated=truncated, global_step=global_step,
                   task=sample.task, source=sample.source, box_frame=box_frame, messages=sample.messages,
                   completion_ids=completion_ids, written_id=getattr(sample, "written_id", None))

    @property
    def image_size(self) -> tuple[int, int] | None:
        """Original (width, height) of the first image, None without images."""
        return self.image_sizes[0] if self.image_sizes else None

    @property
    def input_size(self) -> tuple[int, int] | None:
        """(width, height) the model saw the first image at (the original when unknown)."""
        return self.input_sizes[0] if self.input_sizes else self.image_size


def has_answer(solution: Any) -> bool:
    """Whether a sample has a solution (the data reader keeps an absent, null or empty one as
    ``""``, a row of label-free data): a string with text; a list of [category, box] pairs always
    does ("[]" for an image without objects). Supervised steps teach only these rows."""
    return not isinstance(solution, str) or bool(solution.strip())


def prompt_text(messages: list[dict]) -> str:
    """The question of a prompt's last turn as text: its text when the images all come first
    (the common layout: ``<image>`` markers at the start, or none), else every part in order
    with each image as an ``<image>`` marker ("<image> and <image>: which is larger?"), so that
    a question about several images reaches rewards and judges whole."""
    content = messages[-1]["content"] if messages else []
    if content and content[-1].get("type") == "text" and all(item.get("type") != "text" for item in content[:-1]):
        return content[-1]["text"]  # images (if any), then the one text
    return "".join(item.get("text", "") if item.get("type") == "text" else IMAGE_MARKER for item in content)


class RewardError(RuntimeError):
    """A reward raised; the message names the reward and the sample."""


class BrokenReward(RewardError):
    """A reward that cannot work on any sample (it returns the wrong number of values or not a
    list, cannot take the call, is async): it stops the run under ``on_error="nan"`` too, since
    masking it would train the whole run without it, and no sample is blamed."""

    SUFFIX = ". A broken reward, not a bad sample: it stops the run under on_error=nan too"


def where(ctx: SampleContext) -> str:
    """`` (file:line)`` of a sample for messages, "" when unknown."""
    return f" ({ctx.source})" if ctx.source else ""


def warn_once(reward: Reward, key: str, message: str) -> None:
    """Warn ``message`` (rank zero) the first time ``reward`` meets ``key``, never again."""
    warned = reward.__dict__.setdefault("_warned", set())  # also for subclasses that skip Reward.__init__
    if key not in warned:
        warned.add(key)
        rank_zero_warn(message + " (shown once for this reward)")


def forget_warnings(reward: Reward) -> None:
    """The reward's once-per-reward warnings and its count of unscored rollouts start afresh
    (each fit: a reward object reused from an earlier fit in a notebook warns again)."""
    reward.__dict__.pop("_warned", None)
    reward.__dict__.pop("_nan_rollouts", None)
    reward.__dict__.pop("_last_error", None)


def masked_error_message(reward: Reward, ctx: SampleContext, exc: Exception, count: int = 1) -> str:
    """The warning of a reward's first failure masked by ``on_error="nan"``."""
    what = f"on sample {ctx.id!r}{where(ctx)}" if count == 1 else (
        f"on a batch of {count} completions (first sample {ctx.id!r}{where(ctx)})")
    return (f"reward {reward.name!r} raised {what}: {type(exc).__name__}: {exc}{reward.error_hint(exc)}. "
            f"With on_error='nan' its failures are masked: the failing completions get nan (left out of the sum) "
            f"and are counted in train/reward/{reward.name}/errors; set on_error: raise to stop at the first one")


def finite_weight(weight: Any, name: str) -> float:
    """``weight`` as a float, refused unless it is a finite number: a nan weight zeroes every total
    (no advantage, no gradient) and an infinite one turns the totals into inf, both silently."""
    try:
        value = float(weight)
    except (TypeError, ValueError):
        value = math.nan
    if isinstance(weight, (bool, str, bytes)) or not math.isfinite(value):
        raise ValueError(f"reward {name!r}: weight={weight!r} is not a finite number; a reward's weight is its factor "
                         "in the total (0 turns it off and keeps it logged)")
    return value


@rule("model.rewards.init_args.on_error", "config")
def reward_on_error_known(on_error: str) -> str | None:
    return None if on_error in ON_ERROR else f"on_error={on_error!r} is not valid; choose one of {', '.join(ON_ERROR)}"


class Reward:
    """Base class of every reward: subclasses implement :meth:`score`.

    Args:
        weight: factor of this reward in the total.
        name: key under which it is logged (default: the class's ``default_name``; a
            FunctionReward's: its function's name).
        tasks: the sample tasks this reward scores (None: all); others get nan.
        on_error: "raise" (default): a reward that raises stops the run with an error
            naming the reward and the sample; "nan": the failing completions get nan,
            are left out of the sum, and are counted (``reward/<name>/errors``).
    """

    default_name = "reward"
    # When a batch call raises, score the completions one by one to find the failing
    # samples. Rewards whose calls are costly (a judge model, a remote server) set False:
    # the whole batch then fails (named by its first sample) or is masked.
    rescore_singly = True
    # 0 is this reward's best score (a penalty): scoring 0 everywhere is no fault
    # (lit_vr1.no_signal.SilentRewards leaves it out)
    zero_is_best = False

    def __init__(self, weight: float = 1.0, name: str | None = None, tasks: list[str] | None = None,
                 on_error: Literal["raise", "nan"] = "raise") -> None:
        enforce(reward_on_error_known(on_error))
        self.name = name or self.default_name
        self.weight = finite_weight(weight, self.name)
        self.tasks = [tasks] if isinstance(tasks, str) else list(tasks) if tasks is not None else None
        self.on_error = on_error
        self.errors = 0  # completions whose scoring raised, over the whole run

    def __repr__(self) -> str:
        """``IoUReward(name='iou', weight=1.0)``, with ``tasks`` and ``on_error`` when set
        otherwise than by default, and a FunctionReward's function."""
        # getattr: a subclass that skips Reward.__init__ prints too
        parts = [f"name={getattr(self, 'name', getattr(self, 'default_name', None))!r}",
                 f"weight={getattr(self, 'weight', 1.0)}"]
        if getattr(self, "spec", None):
            parts.insert(0, f"fn={self.spec!r}")
        if getattr(self, "tasks", None) is not None:
            parts.append(f"tasks={self.tasks!r}")
        if getattr(self, "on_error", "raise") != "raise":
            parts.append(f"on_error={self.on_error!r}")
        return f"{type(self).__name__}({', '.join(parts)})"

    def score(self, completions: list[str], contexts: list[SampleContext]) -> list[float]:
        raise NotImplementedError

    def check_ready(self) -> None:
        """Called at fit start: raise :class:`RewardError` when the reward cannot work (a
        server that does not answer). Rule-based rewards are always ready."""

    def error_hint(self, exc: Exception) -> str:
        """Text added to the message of ``exc`` raised by :meth:`score` (what to change); "" by default."""
        return ""

    def applies(self, ctx: SampleContext) -> bool:
        return self.tasks is None or ctx.task in self.tasks

    def solution_problem(self, ctx: SampleContext) -> str | None:
        """Why this reward could not score any completion of the sample ``ctx`` (its solution
        holds nothing the reward compares with: no box for a box reward), or None. Asked of
        every training row the reward applies to at fit start (``GRPOModule.setup``), so a
        bad row is refused (or skipped) before training, not when a rollout reaches it."""
        return None

    def _checked(self, completions: list[str], contexts: list[SampleContext]) -> list[float]:
        values = self.score(completions, contexts)
        if len(values) != len(completions):  # a broken reward, not a bad sample: no sample is blamed
            spec = getattr(self, "spec", None)  # a FunctionReward: where its function lives
            raise BrokenReward(f"reward {self.name!r}{f' ({spec})' if spec else ''} returned {len(values)} values for "
                               f"{len(completions)} completions; a reward returns one value per completion, in order "
                               f"(None or nan where it does not apply){BrokenReward.SUFFIX}")
        return [float(v) for v in values]

    def _fail(self, ctx: SampleContext, exc: Exception) -> float:
        if self.on_error == "raise":
            raise RewardError(f"reward {self.name!r} raised on sample {ctx.id!r}{where(ctx)}: {type(exc).__name__}: "
                              f"{exc}{self.error_hint(exc)}") from exc
        self._mask(ctx, exc)
        return math.nan

    def _mask(self, ctx: SampleContext, exc: Exception, count: int = 1) -> None:
        """Count ``count`` failures masked by ``on_error="nan"`` (``ctx``: the first one's sample),
        keep the cause (named if its failures stop the fit) and warn of the first."""
        self.errors += count
        self.__dict__["_last_error"] = f"{type(exc).__name__}: {exc}"
        warn_once(self, "errors", masked_error_message(self, ctx, exc, count))

    def __call__(self, completions: list[str], contexts: list[SampleContext]) -> list[float]:
        """Scores where the reward applies, nan elsewhere. When the batch call raises, the
        completions are scored one by one to find the failing samples."""
        if len(completions) != len(contexts):
            raise ValueError(f"{len(completions)} completions but {len(contexts)} contexts")
        idx = [i for i, c in enumerate(contexts) if self.applies(c)]
        out = [math.nan] * len(completions)
        if not idx:
            return out
        comps, ctxs = [completions[i] for i in idx], [contexts[i] for i in idx]
        try:
            values = self._checked(comps, ctxs)
        except RewardError:
            raise
        except Exception as exc:  # noqa: BLE001 - locate the sample, then report or mask it
            if not self.rescore_singly:
                if self.on_error == "raise":
                    first = ctxs[0]
                    raise RewardError(f"reward {self.name!r} raised on a batch of {len(comps)} completions (first sample "
                                      f"{first.id!r}{where(first)}): {type(exc).__name__}: {exc}"
                                      f"{self.error_hint(exc)}") from exc
                self._mask(ctxs[0], exc, len(comps))
                return out
            values = []
            for comp, ctx in zip(comps, ctxs):
                try:
                    values.extend(self._checked([comp], [ctx]))
                except RewardError:
                    raise
                except Exception as exc:  # noqa: BLE001
                    values.append(self._fail(ctx, exc))
        for i, v in zip(idx, values):
            out[i] = v
        return out


@dataclass
class RewardScores:
    """Rewards of one batch. per_reward: (R, N), nan where not applicable or failed;
    total: (N,), the weighted sum over the rewards that gave a number; errors: (R,)
    completions of this batch whose scoring raised (masked with on_error="nan");
    nonfinite: (R,) inf values a reward returned (masked too);
    unscored: (N,) bool, completions no reward scored: every reward nan (not applicable,
    failed under ``on_error="nan"``, or inf). Their total (0) is not a score: the loop
    leaves them out of the advantages and the loss. A completion that some rewards scored
    keeps the weighted sum of those."""

    names: list[str]
    per_reward: Tensor
    total: Tensor
    errors: list[int] = field(default_factory=list)
    nonfinite: list[int] = field(default_factory=list)
    unscored: Tensor | None = None
    recovered: list[int | None] = field(default_factory=list)  # (R,) requests a retry saved; None: not remote

    def __post_init__(self) -> None:
        if self.unscored is None:
            self.unscored = torch.isnan(self.per_reward).all(dim=0)

    def select(self, rows: Tensor) -> RewardScores:
        """The scores of completions ``rows`` alone; the failure counts (``errors``,
        ``nonfinite``, ``recovered``) stay the batch's, where they happened."""
        rows = rows.to(self.total.device)
        return RewardScores(self.names, self.per_reward[:, rows], self.total[rows], self.errors, self.nonfinite,
                            self.unscored[rows], self.recovered)

    def stats(self) -> dict[str, float]:
        """Mean and std of each reward over the completions where it applied, and of the total;
        nan (which the loggers leave out) where there is no value: the std of one value is 0.
        Beside them, under ``n/``, how many values each is over (not logged: :mod:`lit_vr1.step_stats`).
        Each reward's masked failures (``errors``) and inf values (``nonfinite``) of the batch,
        0 included, and a remote reward's requests that failed at first and were answered on a
        retry (``recovered``)."""
        out: dict[str, float] = {}
        for i, (name, row) in enumerate(zip(self.names, self.per_reward)):
            valid = row[~torch.isnan(row)]
            out[f"reward/{name}/mean"] = float(valid.mean()) if valid.numel() else math.nan
            out[f"reward/{name}/std"] = spread(valid)
            out[f"n/reward/{name}"] = float(valid.numel())  # what the mean is over (lit_vr1.step_stats)
            if self.errors:  # 0 on a step without failures: a column with no blanks, a curve with no gaps
                out[f"reward/{name}/errors"] = float(self.errors[i])
            if self.nonfinite:
                out[f"reward/{name}/nonfinite"] = float(self.nonfinite[i])
            if self.recovered and self.recovered[i] is not None:  # a remote judge's requests that a retry saved
                out[f"reward/{name}/recovered"] = float(self.recovered[i])
        scored = self.total[~self.unscored]
        out["reward/total/mean"] = float(scored.mean()) if scored.numel() else math.nan
        out["reward/total/std"] = spread(scored)
        out["n/reward/total"] = float(scored.numel())
        out["reward/unscored"] = float(self.unscored.sum())
        return out


def spread(values: Tensor) -> float:
    """The std of ``values``: nan for none (nothing to log), 0 for one."""
    return float(values.std()) if values.numel() > 1 else 0.0 if values.numel() else math.nan


@rule("model.rewards", "first_step")
def rewards_not_empty(rewards: list[Reward]) -> str | None:
    return None if rewards else "no reward functions configured: set `model.rewards` in the config"


@rule("model.rewards.init_args.name", "first_step")
def reward_names_distinct(rewards: list[Reward]) -> str | None:
    names = [r.name for r in rewards]
    dup = sorted({n for n in names if names.count(n) > 1})
    return f"two rewards share the name(s) {', '.join(dup)}: give each a distinct `name`" if dup else None


@rule("model.rewards.init_args.weight", "config")
def some_reward_weighs(rewards: list[Reward]) -> str | None:
    """Every reward at weight 0 makes every total 0: every group ties and GRPO learns nothing
    (a new user's trial: told only ten rollouts in, with the format blamed)."""
    if not rewards or any(r.weight != 0 for r in rewards):
        return None
    return (f"every reward has weight 0 ({', '.join(r.name for r in rewards)}): each completion's total is 0, so every "
            "group ties and GRPO learns nothing; give the reward(s) to train on a weight (1 by default), and keep weight "
            "0 only for rewards logged beside them")


# a reward that returns nan for every completion routed to it over this many rollouts in a row, and
# this many completions, is warned about (a few prompts in a row it does not apply to are no sign)
UNSCORED_ROLLOUTS_WARNING, UNSCORED_COMPLETIONS_WARNING = 3, 64
# a judge (a reward scoring a batch at once, rescore_singly False: RewardModelReward,
# RemoteRewardModel) masked by on_error="nan" that failed on every completion routed to it in this many
# rollouts in a row, for at least this many seconds, stops the fit: a judge down for good (training went on,
# for ever, on the other rewards alone). Both bounds: a restart ridden through with retries costs a rollout
# or two, and RemoteRewardModel's down window fails every call at once for down_for_s (10 rollouts of a tiny
# model fit in it). Rewards scored completion by completion are left alone: a FunctionReward whose column
# few rows have, or one that raises on an answer format the policy does not write yet, fails whole batches
# by design.
FAILED_ROLLOUTS_STOP, FAILED_SECONDS_STOP = 10, 300.0


def failed_rollout_flags(rewards: list[Reward], errors: list[int], contexts: list[SampleContext],
                         streaks: dict[str, tuple[int, float]]) -> Tensor:
    """(R, 3) per reward: [failed on every completion routed to it, scored some, its streak of
    failed rollouts began :data:`FAILED_SECONDS_STOP` or more ago], for this rollout; zeros for a
    reward routed to no completion, or one scored completion by completion."""
    now, rows = time.monotonic(), []
    for reward, failed in zip(rewards, errors):
        routed = sum(bool(reward.applies(c)) for c in contexts) if not reward.rescore_singly else 0
        began = streaks.get(reward.name, (0, now))[1]
        rows.append([float(routed > 0 and failed >= routed), float(routed > 0 and failed < routed),
                     float(now - began >= FAILED_SECONDS_STOP)])
    return torch.tensor(rows, dtype=torch.float32).reshape(len(rewards), 3)


def stop_on_failing_rewards(rewards: list[Reward], flags: Tensor, streaks: dict[str, tuple[int, float]],
                            processes: int = 1) -> None:
    """Count, per judge, rollouts in a row whose every routed completion failed (``flags``:
    :func:`failed_rollout_flags`, summed over the ``processes``, so every process counts alike:
    one that scored resets it); a :class:`RewardError` once the streak is
    :data:`FAILED_ROLLOUTS_STOP` rollouts long and, on every process, :data:`FAILED_SECONDS_STOP`
    seconds old. ``streaks``: reward name -> (rollouts, when the first failed)."""
    now = time.monotonic()
    for reward, (failed, scored, old) in zip(rewards, flags.tolist()):
        count, began = streaks.get(reward.name, (0, now))
        if scored:
            streaks.pop(reward.name, None)
            continue
        if not failed:
            continue
        count += 1
        streaks[reward.name] = (count, began)
        if count >= FAILED_ROLLOUTS_STOP and old >= processes:
            cause = " ".join(str(reward.__dict__.get("_last_error") or "").split())  # one line
            raise RewardError(
                f"reward {reward.name!r} failed on every completion of the last {count} rollouts, "
                f"{now - began:.0f} s (on_error='nan' masks each failure, so training went on without it; "
                f"train/reward/{reward.name}/errors counts them)" + (f"; the last: {cause}" if cause else "")
                + ". A judge server that is down for good? Mend it, then resume from the last checkpoint")


def watch_rollout(reward: Reward, values: Tensor, contexts: list[SampleContext], new_errors: int) -> None:
    """Warn (once per reward) about what a rollout's scores hide: an infinite value (masked and
    counted as ``nonfinite``), and a reward that returned nan for every completion routed to it
    (by ``tasks``) in :data:`UNSCORED_ROLLOUTS_WARNING` rollouts in a row holding at least
    :data:`UNSCORED_COMPLETIONS_WARNING` such completions, so scores nothing. A
    rollout holding no sample of the reward's tasks, or one whose nans are failures (counted as
    ``errors``, warned at the first), neither counts nor resets the run of rollouts."""
    routed = torch.tensor([reward.applies(c) for c in contexts], dtype=torch.bool)
    inf = torch.isinf(values) & routed
    if inf.any():
        i = int(inf.nonzero()[0])
        warn_once(reward, "nonfinite", f"reward {reward.name!r} returned {float(values[i])} on sample "
                  f"{contexts[i].id!r}{where(contexts[i])}: infinite values are masked like nan (left out of the sum) "
                  f"and counted in train/reward/{reward.name}/nonfinite; return finite numbers (nan or None: not "
                  "applicable; a number beyond float32's +-3.4e38 reads as inf too)")
    if torch.isfinite(values[routed]).any():
        reward.__dict__["_nan_rollouts"] = (0, 0)
        return
    if not routed.any() or new_errors or inf.any():
        return
    in_a_row, completions = reward.__dict__.get("_nan_rollouts", (0, 0))
    in_a_row, completions = in_a_row + 1, completions + int(routed.sum())
    reward.__dict__["_nan_rollouts"] = (in_a_row, completions)
    if in_a_row >= UNSCORED_ROLLOUTS_WARNING and completions >= UNSCORED_COMPLETIONS_WARNING:
        first = contexts[int(routed.nonzero()[0])]
        warn_once(reward, "unscored", f"reward {reward.name!r} returned nan (not applicable) for every completion routed "
                  f"to it in {in_a_row} rollouts in a row ({completions} completions; e.g. sample "
                  f"{first.id!r}{where(first)}): it scores nothing, adds nothing to the training signal and logs no "
                  f"train/reward/{reward.name}/mean. If it applies to some tasks only, route it with tasks: [...] "
                  "(the samples' reward_method) instead of returning nan; otherwise check what it reads (a field the "
                  "data lacks, an answer format the model does not write)")


def score_all(rewards: list[Reward], completions: list[str], contexts: list[SampleContext]) -> RewardScores:
    """Run every reward and form the weighted sum, skipping nan entries (a completion no
    reward applies to gets 0, and is marked unscored). Infinite values are masked like nan
    and counted. What the scores hide is warned once per reward (see :func:`watch_rollout`)."""
    enforce(rewards_not_empty(rewards))
    enforce(reward_names_distinct(rewards))
    names = [r.name for r in rewards]
    before = [r.errors for r in rewards]
    retried = [r.recovered if type(getattr(r, "recovered", None)) is int else None  # RemoteRewardModel's counter
               for r in rewards]
    per_reward = torch.stack([torch.tensor(r(completions, contexts), dtype=torch.float32) for r in rewards])
    for r, row, b in zip(rewards, per_reward, before):
        watch_rollout(r, row, contexts, r.errors - b)
    inf = torch.isinf(per_reward)
    per_reward = per_reward.masked_fill(inf, math.nan)
    weights = torch.tensor([r.weight for r in rewards], dtype=torch.float32).unsqueeze(1)
    total = torch.nansum(per_reward * weights, dim=0)
    return RewardScores(names=names, per_reward=per_reward, total=total,
                        errors=[r.errors - b for r, b in zip(rewards, before)], nonfinite=inf.sum(dim=1).tolist(),
                        recovered=[None if b is None else r.recovered - b for r, b in zip(rewards, retried)])
