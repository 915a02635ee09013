"""PTST: Vision-R1's progressive thinking suppression training (Huang et al., 2025), as
stages of (max_completion_length, num_generations, steps) applied in order during one fit.

Vision-R1 starts GRPO with short completions and many samples per prompt, so the model
learns to reason correctly in few tokens, then lengthens the completions (and lowers G to
keep the cost flat) stage by stage. The stage in force is a pure function of the
optimiser step, so a resumed run (``--ckpt_path``) is in the right stage at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from lightning.pytorch import Callback
from lightning.pytorch.utilities import rank_zero_warn

from lit_vr1.rules import enforce, named_fields_only, rule


@named_fields_only
@dataclass
class PTSTStage:
    """One stage: completions up to ``max_completion_length`` tokens, ``num_generations``
    per prompt, for ``steps`` optimiser steps (the last stage lasts until the end of fit)."""

    max_completion_length: int
    num_generations: int
    steps: int


@rule("trainer.callbacks (callbacks.PTST stages)", "config")
def ptst_stages_valid(stages: list[PTSTStage]) -> str | None:
    if not stages:
        return "PTST needs at least one stage"
    for i, s in enumerate(stages):
        if s.max_completion_length < 1 or s.num_generations < 2 or s.steps < 1:
            return f"PTST stage {i}: need max_completion_length >= 1, num_generations >= 2 and steps >= 1, got {s}"
    return None


def stage_at(stages: list[PTSTStage], step: int) -> int:
    """Index of the stage in force at optimiser step ``step`` (0-based count of steps done)."""
    end = 0
    for i, stage in enumerate(stages):
        end += stage.steps
        if step < end:
            return i
    return len(stages) - 1


def applied_starts(stages: list[PTSTStage], steps_per_rollout: list[int]) -> list[int]:
    """The optimiser step each stage is first in force at, when stage ``i``'s rollouts take
    ``steps_per_rollout[i]`` steps: a stage is chosen at a rollout's start and kept to its end, so
    a boundary inside a rollout moves to that rollout's end (a stage passed over entirely starts
    where the next does)."""
    starts: list[int] = []
    last = sum(s.steps for s in stages[:-1])
    step = 0
    while len(starts) < len(stages):
        index = stage_at(stages, step)
        starts.extend([step] * (index + 1 - len(starts)))
        if step >= last:
            break
        step += max(1, steps_per_rollout[index])
    return starts


class PTST(Callback):
    """Set the GRPO completion length and group size by stage (YAML: ``class_path: callbacks.PTST``
    with ``init_args: {stages: [{max_completion_length: 4096, num_generations: 16, steps: 100}, ...]}``;
    Vision-R1 used 4K/16, then 8K/8, then 16K/4 tokens/samples).

    Each stage's ``num_generations`` must be >= 2 (GRPO compares within a group), and a
    mini-batch size, if set, must fit the rollout (checked at fit start).
    """

    def __init__(self, stages: list[PTSTStage]) -> None:
        stages = [s if isinstance(s, PTSTStage) else PTSTStage(**s) for s in stages]
        enforce(ptst_stages_valid(stages))
        self.stages = stages
        self.current: int | None = None

    def apply(self, pl_module, index: int) -> None:
        """Set the stage's rollout size; ``ptst/stage`` goes into the row of each update's
        ``train/...`` figures, at their step (logged at the batch's start, it was one step behind
        them, in a row of its own)."""
        stage = self.stages[index]
        pl_module.set_rollout_size(stage.max_completion_length, stage.num_generations)
        self.current = index
        pl_module.step_figures = {**getattr(pl_module, "step_figures", {}), "ptst/stage": float(index)}

    def on_fit_start(self, trainer, pl_module) -> None:
        """A fit starts in no stage: its first batch applies one (to this module) and logs it (a
        fit that raised skipped teardown, and a later fit starting in the stage it ended in never
        applied it)."""
        self.current = None
        getattr(pl_module, "step_figures", {}).pop("ptst/stage", None)

    def on_train_start(self, trainer, pl_module) -> None:
        """Warn of stages ``trainer.max_steps`` ends before (a shortened run dropped them silently)."""
        starts = [sum(s.steps for s in self.stages[:i]) for i in range(len(self.stages))]
        unreached = [i for i, start in enumerate(starts) if 0 <= trainer.max_steps <= start]
        if unreached:
            rank_zero_warn(f"callbacks.PTST: trainer.max_steps={trainer.max_steps} ends before stage(s) "
                           f"{', '.join(map(str, unreached))} start (at optimiser step(s) "
                           f"{', '.join(str(starts[i]) for i in unreached)}): they never run; raise max_steps to "
                           f"at least {starts[unreached[-1]] + 1} or shorten the stages before them")

        batch_size = getattr(getattr(trainer, "datamodule", None), "batch_size", None)
        grpo = getattr(pl_module, "config", None)
        if isinstance(batch_size, int) and batch_size > 0 and grpo is not None:
            from lit_vr1.loop import rollout_steps

            per = [rollout_steps(batch_size * s.num_generations, grpo.mini_batch_size, grpo.num_iterations)[1]
                   for s in self.stages]
            moved = [(i, a, n) for i, (a, n) in enumerate(zip(applied_starts(self.stages, per), starts)) if a != n]
            if moved:
                rank_zero_warn("callbacks.PTST: a stage takes over at a rollout's end (its rollouts take "
                               f"{', '.join(map(str, per))} optimiser steps by stage), so "
                               + ", ".join(f"stage {i} starts at step {a}, not {n}" for i, a, n in moved)
                               + "; stage lengths that are multiples of their rollouts' steps keep the boundaries")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        index = stage_at(self.stages, trainer.global_step)
        if index != self.current:
            self.apply(pl_module, index)


    def teardown(self, trainer, pl_module, stage: str) -> None:
        getattr(pl_module, "step_figures", {}).pop("ptst/stage", None)  # a later fit without PTST logs none

    def state_dict(self) -> dict:
        return {"current": self.current}

    def load_state_dict(self, state_dict: dict) -> None:
        # the stage follows from the restored global step; the saved index is kept for inspection
        self.current = None
