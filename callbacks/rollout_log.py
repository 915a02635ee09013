"""RolloutLog: every rollout as JSONL lines with its rewards (what the seed repos call
DEBUG_MODE / LOG_PATH), one line per completion, appended as training goes."""

from __future__ import annotations

import json
import math
import os

from lightning.pytorch import Callback


def rollout_records(module, step: int, rank: int) -> list[dict]:
    """One dict per completion of the module's last rollout: ids, texts, every reward
    (None where not applicable), the total, the advantage, length and truncation."""
    rollout, scores = module.loop.last_rollout, module.loop.last_scores
    out = []
    for i, (ctx, completion) in enumerate(zip(rollout.contexts, rollout.completions)):
        rewards = {}
        for r, name in enumerate(scores.names):
            v = scores.per_reward[r, i].item()
            rewards[name] = None if math.isnan(v) else v
        out.append({
            "step": step, "rank": rank, "id": ctx.id, "task": ctx.task, "source": ctx.source,
            "prompt": ctx.prompt, "completion": completion,
            "solution": ctx.solution if isinstance(ctx.solution, str) else json.dumps(ctx.solution),
            "rewards": rewards, "total": scores.total[i].item(), "advantage": rollout.advantages[i].item(),
            "completion_length": ctx.completion_length, "truncated": ctx.truncated,
        })
    return out


class RolloutLog(Callback):
    """Append every ``every_n_steps``-th rollout to ``path`` as JSONL.

    Args:
        path: the JSONL file; with several processes each writes its own file, the rank
            inserted before the suffix (``rollouts.rank1.jsonl``). Lines are appended, so a
            resumed run continues the same file.
        every_n_steps: training batches between two logged rollouts (1: all of them).
    """

    def __init__(self, path: str = "rollouts.jsonl", every_n_steps: int = 1) -> None:
        if every_n_steps < 1:
            raise ValueError(f"RolloutLog: every_n_steps={every_n_steps} must be >= 1")
        self.path = path
        self.every_n_steps = every_n_steps

    def file_for(self, rank: int, world_size: int) -> str:
        if world_size == 1:
            return self.path
        stem, ext = os.path.splitext(self.path)
        return f"{stem}.rank{rank}{ext}"

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loop = getattr(pl_module, "loop", None)
        if batch_idx % self.every_n_steps or loop is None or loop.last_rollout is None:
            return
        path = self.file_for(trainer.global_rank, trainer.world_size)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "a") as f:
            for rec in rollout_records(pl_module, trainer.global_step, trainer.global_rank):
                f.write(json.dumps(rec) + "\n")
