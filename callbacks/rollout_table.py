"""RolloutTable: every ``every_n_steps`` training batches, show a few rollouts (prompt,
completion, each reward, advantage) on the rich console and in the logger."""

from __future__ import annotations

import math
import unicodedata

from lightning.pytorch import Callback
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from rich.console import Console
from rich.table import Table

from callbacks.rollout_log import fit_batch_index


def printable(text: str) -> str:
    """``text`` with control characters other than newline and tab written as escapes (``\\x1b``):
    a sampled completion can hold an escape sequence (the tiny tokenizer decodes one token to
    ESC), which the console ran and a redirected log kept as raw bytes (a new user's trial)."""
    return "".join(c if c in "\n\t" or unicodedata.category(c) != "Cc" else repr(c)[1:-1] for c in text)


def rollout_rows(module, num_samples: int) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the module's last rollout (first ``num_samples`` completions). In a
    run of several tasks (rewards routed by ``tasks``) a ``task`` column is shown, and a reward
    that scores none of the rows shown is left out: a mixed-task trial's six reward columns, most
    of them ``n/a``, squeezed the completion to a few characters a line."""
    rollout, scores = module.loop.last_rollout, module.loop.last_scores
    shown = range(min(num_samples, len(rollout)))
    values = [[scores.per_reward[r, i].item() for r in range(len(scores.names))] for i in shown]
    routed = any(ctx.task != "default" for ctx in rollout.contexts)
    rewards = [r for r in range(len(scores.names))
               if not routed or not values or any(not math.isnan(v[r]) for v in values)]
    header = ["id", *(["task"] if routed else []), "completion", *(scores.names[r] for r in rewards), "total",
              "advantage"]
    rows = []
    for i in shown:
        rows.append([
            rollout.contexts[i].id,
            *([rollout.contexts[i].task] if routed else []),
            printable(rollout.completions[i]),
            *("n/a" if math.isnan(values[i][r]) else f"{values[i][r]:.3f}" for r in rewards),
            f"{scores.total[i].item():.3f}",
            f"{rollout.advantages[i].item():+.3f}",
        ])
    return header, rows


class RolloutTable(Callback):
    """Print and log a table of rollouts.

    Args:
        every_n_steps: training batches (rollouts) between two tables, counted over the whole fit.
        num_samples: completions per table.
        max_chars: completions are cut to this many characters on the console.
    """

    def __init__(self, every_n_steps: int = 10, num_samples: int = 4, max_chars: int = 160) -> None:
        self.every_n_steps = every_n_steps
        self.num_samples = num_samples
        self.max_chars = max_chars
        self.console = Console()

    @rank_zero_only
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loop = getattr(pl_module, "loop", None)
        if fit_batch_index(trainer) % self.every_n_steps or loop is None or loop.last_rollout is None:
            return
        header, rows = rollout_rows(pl_module, self.num_samples)
        table = Table(title=f"rollouts at step {trainer.global_step}", show_lines=True)
        for name in header:
            table.add_column(name, overflow="fold")
        text = header.index("completion")
        for row in rows:
            table.add_row(*[*row[:text], row[text][: self.max_chars], *row[text + 1:]])
        self.console.print(table)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_table(key="rollouts", columns=header, data=rows, step=trainer.global_step)
            elif isinstance(logger, TensorBoardLogger):
                md = "| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n"
                md += "\n".join("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in r) + " |" for r in rows)
                logger.experiment.add_text("rollouts", md, trainer.global_step)
