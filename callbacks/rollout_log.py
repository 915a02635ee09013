"""RolloutLog: every rollout as JSONL lines with its rewards (what the seed repos call
DEBUG_MODE / LOG_PATH), one line per completion, appended as training goes."""

from __future__ import annotations

import glob
import json
import math
import os
import re

from lightning.pytorch import Callback
from lightning.pytorch.utilities import rank_zero_info

from lit_vr1.checkpoint import ROLLBACK


def fit_batch_index(trainer) -> int:
    """The training batch's index over the whole fit (not the epoch's: a count per epoch started
    again at every epoch, so every 3rd batch logged batches 1, 4, 5, 8, 9 of 4-batch epochs;
    restored on a resume with the loop's progress)."""
    return trainer.fit_loop.epoch_loop.total_batch_idx


def rollout_records(module, step: int, rank: int) -> list[dict]:
    """One dict per completion of the module's last rollout: ids (as the data wrote them), texts, every reward
    (None where not applicable), the total, the advantage, length and truncation."""
    rollout, scores = module.loop.last_rollout, module.loop.last_scores
    out = []
    for i, (ctx, completion) in enumerate(zip(rollout.contexts, rollout.completions)):
        rewards = {}
        for r, name in enumerate(scores.names):
            v = scores.per_reward[r, i].item()
            rewards[name] = None if math.isnan(v) else v
        out.append({
            "step": step, "rank": rank, "id": ctx.id if ctx.written_id is None else ctx.written_id, "task": ctx.task,
            "source": ctx.source,
            "prompt": ctx.prompt, "completion": completion,
            "solution": ctx.solution if isinstance(ctx.solution, str) else json.dumps(ctx.solution),
            "rewards": rewards, "total": scores.total[i].item(), "advantage": rollout.advantages[i].item(),
            "completion_length": ctx.completion_length, "truncated": ctx.truncated,
        })
    return out


class RolloutLog(Callback):
    """Append every ``every_n_steps``-th rollout to ``path`` as JSONL.

    Args:
        path: the JSONL file. A relative path lies in the run's log folder (the logger's
            ``log_dir``, else the Trainer's ``default_root_dir``), next to metrics.csv; an
            absolute path is used as is. With several processes each writes its own file,
            the rank inserted before the suffix (``rollouts.rank1.jsonl``). Lines are
            appended; a run resumed from a checkpoint first drops the lines of steps after
            that checkpoint (work the killed run did not save) from its own file and from
            the file the checkpointed run wrote (recorded in the checkpoint), so no step
            appears twice.
        every_n_steps: training batches (rollouts) between two logged rollouts, counted over the whole
            fit (1: all of them).
    """

    def __init__(self, path: str = "rollouts.jsonl", every_n_steps: int = 1) -> None:
        if every_n_steps < 1:
            raise ValueError(f"RolloutLog: every_n_steps={every_n_steps} must be >= 1")
        self.path = path
        self.every_n_steps = every_n_steps

    def resolved_path(self, trainer) -> str:
        """Where this process writes: ``path`` under the run's log folder, rank-suffixed."""
        path = self.path
        if not os.path.isabs(path):
            root = trainer.log_dir if trainer.logger is not None and trainer.log_dir else trainer.default_root_dir
            path = os.path.join(root, path)
        if trainer.world_size > 1:
            stem, ext = os.path.splitext(path)
            path = f"{stem}.rank{trainer.global_rank}{ext}"
        return path

    def state_dict(self) -> dict:
        """Saved in checkpoints: the file this run wrote, so that a resume can tidy it."""
        return {"written": self._written} if getattr(self, "_written", None) else {}

    def load_state_dict(self, state_dict: dict) -> None:
        self._resumed_from_file = state_dict.get("written")

    def on_train_start(self, trainer, pl_module) -> None:
        self._written = self.resolved_path(trainer)
        if trainer.ckpt_path is None:
            return
        # the killed run's file (another log folder when the logger started a new version) and
        # this run's own: lines of steps after the checkpoint are work that was not saved; and the
        # file of a resume of the same checkpoint that was killed before saving one (no checkpoint
        # records it: its steps were logged twice after a second kill)
        others = abandoned_resumes(self._written, trainer.global_step) if not os.path.isabs(self.path) else []
        resumed = getattr(self, "_resumed_from_file", None)
        if trainer.world_size > 1:
            resumed = rank_file(resumed, trainer.global_rank)
        # a rollback (an earlier checkpoint than the folder's newest) abandons a run that went on and saved:
        # its later lines are not replayed work, so they are kept beside the file, not dropped
        rollback = getattr(trainer, ROLLBACK, None) is not None
        latest = trainer.global_step
        for path in {self._written, resumed, *others} - {None}:
            latest = max(latest, drop_steps_after(path, trainer.global_step, keep=rollback)[1])
        if latest > trainer.global_step and not rollback:
            # an upgrading user's trial: a stale last.ckpt (step 3) under a run logged to step 5 retrained steps
            # 4-5, and the resume said only "resuming after optimiser step 3"
            first = trainer.global_step + 1
            steps = f"step {first}" if first == latest else f"steps {first}-{latest}"
            rank_zero_info(f"RolloutLog: the stopped run logged {steps} after the checkpoint's step "
                           f"{trainer.global_step} but saved no checkpoint of them: their lines are dropped, and "
                           f"{'that step is' if first == latest else 'those steps are'} trained again")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loop = getattr(pl_module, "loop", None)
        if fit_batch_index(trainer) % self.every_n_steps or loop is None or loop.last_rollout is None:
            return
        path = self._written if getattr(self, "_written", None) else self.resolved_path(trainer)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            for rec in rollout_records(pl_module, trainer.global_step, trainer.global_rank):
                f.write(json.dumps(rec) + "\n")


def rank_file(path: str | None, rank: int) -> str | None:
    """``path``, a file of the checkpointed run, as process ``rank`` wrote it: the checkpoint
    records rank 0's (``rollouts.rank0.jsonl``), so each process tidies its own file of that
    run (before, rank 1's kept the steps the resume trains again)."""
    if path is None:
        return None
    return re.sub(r"\.rank\d+(?=(\.[^./]*)?$)", f".rank{rank}", path)


def first_step(path: str) -> int | None:
    """The step of a JSONL file's first line (None: empty or unreadable)."""
    try:
        with open(path, encoding="utf-8") as f:
            rec = json.loads(f.readline())
    except (OSError, ValueError):
        return None
    return rec.get("step") if isinstance(rec, dict) and isinstance(rec.get("step"), int) else None


def abandoned_resumes(path: str, step: int) -> list[str]:
    """Files of the same name in the logger's other version folders whose first line is a step
    after ``step``: a resume from this checkpoint (or an earlier one) that was killed before it
    saved one, whose steps this resume trains again. A file that starts at or before ``step``
    (an earlier run's, or this lineage's first) is not one."""
    here = os.path.dirname(os.path.abspath(path))
    pattern = os.path.join(glob.escape(os.path.dirname(here)), "*", glob.escape(os.path.basename(path)))
    return [other for other in glob.glob(pattern)
            if os.path.dirname(os.path.abspath(other)) != here and (first_step(other) or -1) > step]


def abandoned_file(path: str, step: int) -> str:
    """Where a rollback to ``step`` keeps the later lines of ``path``:
    ``rollouts.abandoned-after-step10.jsonl`` beside ``rollouts.jsonl``."""
    stem, ext = os.path.splitext(path)
    return f"{stem}.abandoned-after-step{step}{ext}"


def drop_steps_after(path: str, step: int, keep: bool = False) -> tuple[int, int]:
    """Rewrite the JSONL file ``path`` without the lines whose ``step`` is above ``step``
    (and without a last line cut off by a kill); returns how many lines were dropped and the
    latest step among them (``step`` when none). ``keep``: the lines taken out are appended to
    :func:`abandoned_file` (a rollback's abandoned run)."""
    if not os.path.isfile(path):
        return 0, step
    kept, later, dropped, latest = [], [], 0, step
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                dropped += 1
                continue
            line = line if line.endswith("\n") else line + "\n"
            if isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] > step:
                dropped += 1
                later.append(line)
                latest = max(latest, rec["step"])
            else:
                kept.append(line)
    if keep and later:
        with open(abandoned_file(path, step), "a", encoding="utf-8") as f:
            f.writelines(later)
    if dropped:
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(kept)
        os.replace(tmp, path)
    return dropped, latest
