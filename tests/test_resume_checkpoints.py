"""Checkpoints a TRL user relies on after a kill: saved every N steps also when a rollout takes
several optimiser steps (else refused), written under their own names on a resume (never a stale
``last.ckpt`` beside ``last-v1.ckpt``), and a resume that switches the reference model on or off
(``beta`` to or from 0) refused in one line naming the flag."""

from __future__ import annotations

import torch

from tests.test_new_user import lit_vr1, small

TWO_STEPS_A_ROLLOUT = ["--model.init_args.grpo.mini_batch_size=2"]  # 2 prompts x G=2: 4 completions, 2 per step


def _checkpoint(every: int, last: bool = True) -> str:
    return ("--trainer.callbacks=[{class_path: lightning.pytorch.callbacks.ModelCheckpoint, init_args: "
            f"{{save_last: {str(last).lower()}, every_n_train_steps: {every}, save_top_k: -1}}}}]")


def test_every_n_train_steps_that_rollouts_step_over_is_refused_before_training(tmp_path):
    # global_step goes 2 at a time here: every 3 steps would have saved at 6, 12, ... and a kill at step 5 lost all
    proc = lit_vr1(tmp_path, "fit", *small(tmp_path / "run", tmp_path / "data"), *TWO_STEPS_A_ROLLOUT, _checkpoint(3),
                   "--trainer.max_steps=4")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "trainer.callbacks: ModelCheckpoint(every_n_train_steps=3) is not a multiple of the 2 optimiser steps each " \
           "rollout takes" in proc.stderr and "give 2 or 4" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and not (tmp_path / "run" / "checkpoints").exists()
    # a multiple saves where asked; 1 (every rollout end) too
    proc = lit_vr1(tmp_path, "fit", *small(tmp_path / "ok", tmp_path / "data"), *TWO_STEPS_A_ROLLOUT, _checkpoint(2),
                   "--trainer.max_steps=4")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "ok" / "checkpoints").glob("*.ckpt")) == [
        "epoch=0-step=2.ckpt", "epoch=0-step=4.ckpt", "last.ckpt"]


def test_a_resume_with_another_checkpoint_setting_replaces_last_ckpt(tmp_path):
    root, data = tmp_path / "run", tmp_path / "data"
    first = lit_vr1(tmp_path, "fit", *small(root, data), _checkpoint(2), "--trainer.max_steps=2")
    assert first.returncode == 0, first.stderr[-2000:]
    # the config's ModelCheckpoint now saves every step: another state key, so Lightning restores none of its state
    again = lit_vr1(tmp_path, "fit", *small(root, data), _checkpoint(1), "--trainer.max_steps=3", "--ckpt_path", "last")
    assert again.returncode == 0, again.stderr[-2000:]
    names = sorted(p.name for p in (root / "checkpoints").glob("*.ckpt"))
    assert names == ["epoch=0-step=2.ckpt", "epoch=0-step=3.ckpt", "last.ckpt"], names  # no last-v1.ckpt
    saved = torch.load(root / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert saved["global_step"] == 3  # the newest weights, not step 2's
    # a rollback: the later checkpoints of the run that went on are named before they are replaced
    back = lit_vr1(tmp_path, "fit", *small(root, data), _checkpoint(1), "--trainer.max_steps=3",
                   "--ckpt_path", str(root / "checkpoints" / "epoch=0-step=2.ckpt"))
    assert back.returncode == 0, back.stderr[-2000:]
    assert "resuming from step 2 while the checkpoint folder holds later checkpoints of the run that went on " \
           "(epoch=0-step=3.ckpt)" in back.stderr, back.stderr[-2000:]
    assert not list((root / "checkpoints").glob("*-v1.ckpt"))


def test_a_resume_that_turns_the_reference_on_or_off_is_refused_naming_beta(tmp_path):
    root, data = tmp_path / "run", tmp_path / "data"
    first = lit_vr1(tmp_path, "fit", *small(root, data), "--model.init_args.grpo.beta=0.04")
    assert first.returncode == 0, first.stderr[-2000:]
    off = lit_vr1(tmp_path, "fit", *small(root, data), "--model.init_args.grpo.beta=0.0", "--trainer.max_steps=3",
                  "--ckpt_path", "last")
    assert off.returncode == 2 and "Traceback" not in off.stderr, off.stderr[-2000:]
    assert "model.grpo.beta: the checkpoint's run trained with a reference model (beta 0.04) and this run has none " \
           "(beta 0.0)" in off.stderr, off.stderr[-2000:]
    # reading the checkpoint without the reference (validate never runs it) loads the policy alone
    results = tmp_path / "eval.json"
    read = lit_vr1(tmp_path, "validate", *small(root, data), "--model.init_args.grpo.beta=0.0",
                   f"--model.init_args.results_path={results}", "--ckpt_path", "last")
    assert read.returncode == 0 and results.is_file(), read.stderr[-2000:]


def test_a_max_steps_inside_a_rollout_is_warned_of():
    from lit_vr1.grpo import max_steps_note

    assert max_steps_note(5, [2]).startswith("trainer.max_steps=5 ends inside a rollout (each takes 2 optimiser steps): "
                                             "the remaining 1 step(s) of that rollout are not trained")
    assert max_steps_note(5, [2]).endswith("give a multiple of 2 (4 or 6)")
    assert max_steps_note(3, [4]).endswith("give a multiple of 4 (4)")  # one choice named once
    assert [max_steps_note(4, [2]), max_steps_note(5, [1]), max_steps_note(-1, [2]), max_steps_note(5, [2, 3])] == [None] * 4
