"""ColdStart: a short supervised warm-up of the policy on the training data's answers, at the
start of a GRPO fit, so that GRPO starts from a model that already writes answers.

A random tiny model never writes a box, so every group's rewards tie and GRPO has nothing
to learn from (the quickstart showed reward 0.000 at all of its steps). The seed recipes
start from instruct checkpoints or a separate cold-start SFT run (``configs/sft_synthetic.yaml``,
``make demo``); this callback is that cold start folded into one GRPO command, for the
quickstart and for experiments: ``steps`` optimiser steps of answer-token NLL (the same
loss as :class:`lit_vr1.sft.SFTModule`) with its own AdamW and cosine decay, on batches
drawn from the training set with its own seeded generator (the GRPO data order and the
global RNG are untouched). The reference model is then reset to the warmed-up policy, so
the KL term anchors GRPO to it (with LoRA: the reference runs with the warm-up's adapters,
not the base's). A resumed fit (``global_step > 0``) skips it: the
checkpoint holds the trained weights. Rows without an answer are refused at fit start
(before the sanity check and the first step), every one listed, as
:class:`lit_vr1.sft.SFTModule` does.

YAML: ``trainer.callbacks: [{class_path: callbacks.ColdStart, init_args: {steps: 150}}]``.
"""

from __future__ import annotations

import math
import time

import torch
from lightning.pytorch import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lit_vr1.checkpoint import selected_checkpoint
from lit_vr1.data.jsonl import DataError
from lit_vr1.rules import ConfigError
from lit_vr1.sft import answer_nll, check_answers, labelled_rows, skips_bad_rows, training_records


class ColdStart(Callback):
    """Args:
        steps: supervised optimiser steps before GRPO's first step.
        lr: AdamW peak learning rate, decayed to 0 by the last step (cosine).
        batch_size: training samples per step.
        seed: seed of the batches' order.
    """

    def __init__(self, steps: int = 150, lr: float = 2e-3, batch_size: int = 32, seed: int = 0) -> None:
        if steps < 1 or lr <= 0 or batch_size < 1:
            raise ValueError(f"callbacks.ColdStart: need steps >= 1, lr > 0 and batch_size >= 1, got steps={steps}, "
                             f"lr={lr}, batch_size={batch_size}")
        self.steps, self.lr, self.batch_size, self.seed = steps, lr, batch_size, seed
        self.losses: list[float] = []

    def setup(self, trainer, pl_module, stage: str) -> None:
        """At fit start, before the model is built: refuse several processes (one line, not a
        traceback from each after the models were built) and the training set's rows without an
        answer, all of them listed, rather than at the warm-up batch that draws one; a resumed
        fit skips the warm-up, and this."""
        if stage == "fit" and selected_checkpoint(trainer) is None:  # trainer.ckpt_path is set only at the restore
            self.check_one_process(trainer)  # here, before the model is built: one line, not a traceback per process
            if not skips_bad_rows(trainer):
                check_answers(training_records(trainer))

    @staticmethod
    def check_one_process(trainer) -> None:
        if trainer.world_size > 1:
            raise ConfigError("trainer.callbacks: callbacks.ColdStart runs in one process; for several, run a cold-start "
                              "SFT first (lit-vr1 fit --config configs/sft_synthetic.yaml) and start GRPO from its "
                              "export_dir (model.model=<that folder>), without ColdStart")

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.global_step > 0:
            return  # resumed: the checkpoint holds the warmed-up weights
        self.check_one_process(trainer)
        data = trainer.datamodule.train_set
        rows = labelled_rows(data)  # all of them, unless data.bad_rows=skip let rows without an answer in
        if not rows:
            raise DataError("callbacks.ColdStart: no training row has an answer to teach (field 'solution'); "
                            "unlabelled questions suit label-free GRPO without a cold start")
        if len(rows) < len(data):
            rank_zero_info(f"ColdStart: {len(data) - len(rows)} training rows without an answer left out of its "
                           "supervised steps (data.bad_rows=skip); GRPO trains on every row")
        records = getattr(data, "records", None)
        note = untaught_format_note(getattr(pl_module, "rewards", []), [records[i] for i in rows] if records else [])
        if note:
            rank_zero_warn(note)
        # said as it starts: a warm-up of minutes printed nothing until its end (a trial at scale)
        rank_zero_info(f"ColdStart: {self.steps} supervised steps (batches of {self.batch_size}) before GRPO's first")
        policy = pl_module.policy
        params = [p for p in policy.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=0.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * i / self.steps)))
        order = torch.Generator().manual_seed(self.seed)
        perm, start, t0 = torch.randperm(len(rows), generator=order), 0, time.perf_counter()
        was_training = policy.training
        policy.train()
        for _ in range(self.steps):
            if trainer.received_sigterm:  # stop now, as Lightning's loop does between steps (a resume starts over)
                raise SIGTERMException
            if start + self.batch_size > len(perm):
                perm, start = torch.randperm(len(rows), generator=order), 0
            batch = [data[rows[int(i)]] for i in perm[start:start + self.batch_size]]
            start += self.batch_size
            loss, _ = answer_nll(policy, pl_module.processor, batch, pl_module.device,
                                 getattr(pl_module, "box_frame", None))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            self.losses.append(float(loss.detach()))
        policy.train(was_training)
        if hasattr(pl_module, "reset_reference"):  # GRPOModule: with LoRA too (the reference's adapters)
            pl_module.reset_reference()
        elif getattr(pl_module, "ref_model", None) is not None:
            pl_module.ref_model.load_state_dict(policy.state_dict())
        rank_zero_info(f"ColdStart: {self.steps} supervised steps in {time.perf_counter() - t0:.0f} s, answer-token NLL "
                       f"{self.losses[0]:.3f} -> {self.losses[-1]:.3f}")
        note = little_learned_note(self.losses)
        if note:
            rank_zero_warn(note)


LITTLE_LEARNED_NLL = 2.0  # nats a token: an end above this and above half the start is warned of


def little_learned_note(losses: list[float], tail: int = 10) -> str | None:
    """A note when the warm-up's answer-token NLL (the mean of its last ``tail`` steps) is still
    above half of its first step's and above :data:`LITTLE_LEARNED_NLL`: such a model seldom writes
    the answer format, every reward is then 0 and GRPO's groups tie, so it learns nothing (LoRA r=8
    on the quickstart's random model: 6.336 -> 4.268, every group tied for the whole run; the whole
    model: 6.350 -> 0.573). A pretrained model that starts low (0.9 -> 0.6) is not warned of."""
    if len(losses) < 2 or losses[0] <= 0:
        return None
    end = sum(losses[-tail:]) / len(losses[-tail:])
    if end <= losses[0] / 2 or end <= LITTLE_LEARNED_NLL:
        return None
    return (f"ColdStart: the answer-token NLL only fell from {losses[0]:.3f} to {end:.3f} (the mean of its last "
            f"{len(losses[-tail:])} steps): the model may not write the answer format yet, and GRPO learns nothing "
            "while every group ties at reward 0 (train/groups_tied_frac 1). Give ColdStart more steps or a higher lr; "
            "a random model learns the format with its whole weights trained, little with LoRA adapters")


def untaught_format_note(rewards: list, records: list, sample: int = 64) -> str | None:
    """A note when a format reward (:class:`ThinkAnswerFormat`, :class:`RecJsonFormat`: they read
    the completion's text alone) scores 0 on every answer the warm-up teaches of a task, the rows'
    solutions as written (the first ``sample`` rows of each task it applies to): the warm-up then
    teaches completions that reward never credits (bare answers such as ``'8'`` under
    ``ThinkAnswerFormat``: 0 for a whole run in a new user's trial, with nothing said). In a mixed
    run, a format reward without ``tasks`` failing every REC and detection answer while crediting
    the counting ones was not said either (another trial): each task is judged on its own."""
    from lit_vr1.data.jsonl import solution_text
    from lit_vr1.grpo import record_context
    from lit_vr1.rewards.rec import RecJsonFormat, ThinkAnswerFormat

    for reward in rewards:
        if not isinstance(reward, (ThinkAnswerFormat, RecJsonFormat)):
            continue
        by_task: dict[str, list] = {}  # each task's first ``sample`` rows the reward applies to, in order met
        for record in records:
            rows = by_task.setdefault(getattr(record, "task", "default"), [])
            if len(rows) < sample and (reward.tasks is None or record.task in reward.tasks):
                rows.append(record)
        failing, checked, example = [], 0, None
        for task, rows in by_task.items():
            if not rows:
                continue
            contexts = [record_context(r) for r in rows]
            answers = [solution_text(c.solution) for c in contexts]
            try:
                scores = reward.score(answers, contexts)
            except Exception:  # noqa: BLE001 - a note, never a failure of its own
                continue
            if all(v == 0 for v in scores):
                failing.append(task)
                checked += len(answers)
                example = example or answers[0]
        if not failing:
            continue
        scored = [t for t, rows in by_task.items() if rows]
        which = ("every one of them" if len(failing) == len(scored) else
                 f"every one of task{'s' if len(failing) > 1 else ''} {', '.join(failing)} (of tasks {', '.join(scored)})")
        fix = ("Write the solutions in its format (for ThinkAnswerFormat: '<think>...</think><answer>...</answer>'), "
               "or leave the reward out") if len(failing) == len(scored) else (
               f"Give it the tasks it is meant for (tasks: [{', '.join(t for t in scored if t not in failing)}]), or "
               "write those tasks' solutions in its format")
        return (f"ColdStart teaches each row's solution as written ({example!r}, ...), and reward {reward.name!r} "
                f"({type(reward).__name__}) scores 0 on {which} ({checked} checked): the warm-up teaches completions "
                f"that reward never credits. {fix}")
    return None
