"""Checkpoints a TRL user relies on after a kill: saved every N steps also when a rollout takes
several optimiser steps (else refused), written under their own names on a resume (never a stale
``last.ckpt`` beside ``last-v1.ckpt``), and a resume that switches the reference model on or off
(``beta`` to or from 0) refused in one line naming the flag."""

from __future__ import annotations

import re

import pytest
import torch

from tests.test_new_user import lit_vr1, small

TWO_STEPS_A_ROLLOUT = ["--model.init_args.grpo.mini_batch_size=2"]  # 2 prompts x G=2: 4 completions, 2 per step


def _checkpoint(every: int, last: bool = True) -> str:
    return ("--trainer.callbacks=[{class_path: lightning.pytorch.callbacks.ModelCheckpoint, init_args: "
            f"{{save_last: {str(last).lower()}, every_n_train_steps: {every}, save_top_k: -1}}}}]")


def _saved_steps(root) -> list[int]:
    return sorted(int(re.search(r"step=(\d+)", p.name).group(1)) for p in (root / "checkpoints").glob("*step=*.ckpt"))


def test_every_n_train_steps_saves_at_the_first_rollout_end_past_each_multiple(tmp_path):
    # global_step goes 2 at a time here: Lightning alone saved every 3 steps at 6, 12, ... (and every 5 at 10, 20, ...:
    # a kill at step 9 left nothing to resume from); now at 4 (past 3) and 6
    proc = lit_vr1(tmp_path, "fit", *small(tmp_path / "run", tmp_path / "data"), *TWO_STEPS_A_ROLLOUT, _checkpoint(3),
                   "--trainer.max_steps=6")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _saved_steps(tmp_path / "run") == [4, 6] and (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    # a resume goes on from the checkpoint's step: the next multiple (9) is met at step 10
    proc = lit_vr1(tmp_path, "fit", *small(tmp_path / "run", tmp_path / "data"), *TWO_STEPS_A_ROLLOUT, _checkpoint(3),
                   "--trainer.max_steps=10", "--ckpt_path", "last")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _saved_steps(tmp_path / "run") == [4, 6, 10]


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
           "(epoch=0-step=3.ckpt, last.ckpt)" in back.stderr, back.stderr[-2000:]
    assert not list((root / "checkpoints").glob("*-v1.ckpt"))
    # a copy of step 2's checkpoint under a name without its step: read from the file (helper-85: not told)
    import shutil

    shutil.copy(root / "checkpoints" / "epoch=0-step=2.ckpt", tmp_path / "mine.ckpt")
    back = lit_vr1(tmp_path, "fit", *small(root, data), _checkpoint(1), "--trainer.max_steps=3",
                   "--ckpt_path", str(tmp_path / "mine.ckpt"))
    assert back.returncode == 0, back.stderr[-2000:]
    assert "resuming from step 2 while the checkpoint folder holds later checkpoints of the run that went on " \
           "(epoch=0-step=3.ckpt, last.ckpt)" in back.stderr, back.stderr[-2000:]  # step 2's own file is not later


def test_a_resume_that_turns_the_reference_on_or_off_is_refused_naming_beta(tmp_path):
    root, data = tmp_path / "run", tmp_path / "data"
    first = lit_vr1(tmp_path, "fit", *small(root, data), "--model.init_args.grpo.beta=0.04")
    assert first.returncode == 0, first.stderr[-2000:]
    # the checkpoint keeps what the run was made with (run.json's record), loadable weights-only
    kept = torch.load(root / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["lit_vr1_run"]
    assert kept["command"] == "fit" and kept["versions"]["torch"] == str(torch.__version__)
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
    # its figures logged at the checkpoint's step (2), as results.json says, not at Lightning's 0 (helper-85)
    import csv
    import json

    newest = max((root / "logs").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    rows = list(csv.DictReader(open(newest / "metrics.csv")))
    assert [r["step"] for r in rows] == ["2"] and rows[0]["val/acc50"] != "", rows
    assert json.loads(results.read_text())[-1]["step"] == 2
    # and printed: Lightning's table shows only what reaches its own logger, so nothing was (two trials)
    said = f"lit-vr1: validate of {root / 'checkpoints' / 'last.ckpt'} (step 2): val/acc50 {float(rows[0]['val/acc50']):.4g}"
    assert said in read.stdout + read.stderr, (read.stdout + read.stderr)[-2000:]
    # another model than the checkpoint's (a config's model over its settings): one line, not a 42-line traceback
    other = lit_vr1(tmp_path, "validate", *small(root, data), "--model.init_args.model=tiny:qwen2_vl",
                    "--ckpt_path", "last")
    assert other.returncode == 2 and "Traceback" not in other.stderr, other.stderr[-2000:]
    assert "holds the weights of another model than this validate builds: model.model: 'tiny:qwen2_5_vl' in the " \
           "checkpoint, 'tiny:qwen2_vl' now" in other.stderr, other.stderr[-2000:]


def test_a_max_steps_inside_a_rollout_is_warned_of():
    from lit_vr1.grpo import max_steps_note

    assert max_steps_note(5, [2]).startswith("trainer.max_steps=5 ends inside a rollout (each takes 2 optimiser steps): "
                                             "the remaining 1 step(s) of that rollout are not trained")
    assert max_steps_note(5, [2]).endswith("give a multiple of 2 (4 or 6)")
    assert max_steps_note(3, [4]).endswith("give a multiple of 4 (4)")  # one choice named once
    assert [max_steps_note(4, [2]), max_steps_note(5, [1]), max_steps_note(-1, [2]), max_steps_note(5, [2, 3])] == [None] * 4
    # a fit resumed at step 6 with 4 steps a rollout: steps 7-10 are one whole rollout, 7-8 half of one
    # (counted from 0, 10 was warned of and 8 was not; a new user's trial)
    assert max_steps_note(10, [4], start=6) is None
    assert max_steps_note(8, [4], start=6).endswith("give 6 + a multiple of 4 (10)")
    assert "from step 6 where this fit starts" in max_steps_note(8, [4], start=6)


def test_the_reference_check_reads_the_runs_beta_where_the_strategy_loads_the_weights_itself():
    from types import SimpleNamespace as NS

    import pytest

    from lit_vr1.checkpoint import CheckpointError
    from lit_vr1.grpo import GRPOModule

    def module(beta):  # what _match_reference reads of a GRPOModule in a fit
        return NS(ref_model=object() if beta else None, lora=None, _trainer=NS(state=NS(fn="fit")), config=NS(beta=beta))

    # FSDP2 and DeepSpeed hand on_load_checkpoint no state_dict: the same beta resumes (it was refused, every time)
    sharded = {"hyper_parameters": {"grpo": {"beta": 0.04}}}
    GRPOModule._match_reference(module(0.04), sharded)
    with pytest.raises(CheckpointError, match=r"model\.grpo\.beta: the checkpoint's run trained with a reference model "
                                              r"\(beta 0\.04\) and this run has none \(beta 0\.0\)"):
        GRPOModule._match_reference(module(0.0), sharded)
    # a single-file checkpoint of a beta-0 run, resumed with a reference: the other direction
    single = {"hyper_parameters": {"grpo": {"beta": 0.0}}, "state_dict": {"policy.w": 1}}
    with pytest.raises(CheckpointError, match=r"trained without a reference model \(beta 0\.0\) and this run has one "
                                              r"\(beta 0\.04\)"):
        GRPOModule._match_reference(module(0.04), single)
    GRPOModule._match_reference(module(0.0), single)  # the same beta: nothing to say
    # LoRA keeps no reference copy: the run's beta tells. A beta-0 LoRA run kept no warm-up adapters
    # (callbacks.ColdStart), so a resume with beta > 0 anchored its KL to the untrained base, silently
    lora = module(0.04)
    lora.lora, lora.ref_model = object(), None
    with pytest.raises(CheckpointError, match=r"trained without a reference model \(beta 0\.0\) and this run has one"):
        GRPOModule._match_reference(lora, single)
    lora.config.beta = 0.0
    with pytest.raises(CheckpointError, match=r"trained with a reference model \(beta 0\.04\) and this run has none"):
        GRPOModule._match_reference(lora, sharded)
    GRPOModule._match_reference(lora, single)  # the same beta
    GRPOModule._match_reference(lora, {"state_dict": {}})  # a checkpoint without the run's settings: not judged
    # a LoRA run's checkpoint resumed without LoRA holds no reference weights: that was blamed on beta
    # ("trained without a reference model (beta 0.04) and this run has one (beta 0.04)", helper-85); the
    # model check names model.lora instead
    adapters = {"hyper_parameters": {"lora": {"r": 8}, "grpo": {"beta": 0.04}}, "state_dict": {"policy.lora_A": 1}}
    GRPOModule._match_reference(module(0.04), adapters)


def test_rollout_logs_every_n_steps_count_over_the_whole_fit_not_each_epoch(tmp_path):
    import json

    log = tmp_path / "rollouts.jsonl"
    callbacks = ("--trainer.callbacks=[{class_path: callbacks.RolloutLog, init_args: "
                 f"{{path: {log}, every_n_steps: 3}}}}]")
    proc = lit_vr1(tmp_path, "fit", *small(tmp_path / "run", tmp_path / "data"), callbacks, "--trainer.max_steps=10")
    assert proc.returncode == 0, proc.stderr[-2000:]
    steps = sorted({json.loads(line)["step"] for line in log.read_text().splitlines()})
    assert steps == [1, 4, 7, 10], steps  # 8 batches an epoch: the count per epoch logged 1, 4, 7, 9


def _sft_fit(tmp_path, callbacks, **trainer_kwargs):
    from lightning.pytorch import Trainer

    from lit_vr1.data.datamodule import GroundingDataModule
    from lit_vr1.data.synthetic import SyntheticSpec
    from lit_vr1.sft import SFTModule

    data = GroundingDataModule(synthetic=SyntheticSpec(num_samples=4, canvas=56), synthetic_dir=str(tmp_path / "d"),
                               num_val_samples=2, batch_size=2, val_batch_size=2)
    module = SFTModule(model="tiny:qwen2_5_vl", min_pixels=3136, max_pixels=3136, eval_max_new_tokens=4)
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                      default_root_dir=tmp_path, callbacks=callbacks, num_sanity_val_steps=0, **trainer_kwargs)
    trainer.fit(module, data)
    return trainer


@pytest.mark.parametrize("monitor", [None, "val/acc50"])
def test_the_last_steps_own_saves_still_run_beside_last_ckpt(tmp_path, monitor):
    """The save of last.ckpt at the fit's last batch marked the step saved, so Lightning's own
    saves at that step (the last epoch's file, a monitored validation's top-k) were skipped."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    ckpt = ModelCheckpoint(dirpath=tmp_path / "c", save_top_k=-1, save_last=True, monitor=monitor,
                           mode="max")
    _sft_fit(tmp_path, [ckpt], max_epochs=2)
    names = sorted(p.name for p in (tmp_path / "c").iterdir())
    assert names == ["epoch=0-step=2.ckpt", "epoch=1-step=4.ckpt", "last.ckpt"], names
    assert torch.load(tmp_path / "c" / "last.ckpt", weights_only=False)["global_step"] == 4


def test_a_stop_asked_before_min_steps_saves_last_ckpt_once(tmp_path, monkeypatch):
    """A stop asked for (EarlyStopping, a timer) before min_steps is met: training goes on to
    min_steps, and last.ckpt was saved after every one of those steps."""
    from lightning.pytorch import Callback
    from lightning.pytorch.callbacks import ModelCheckpoint

    class StopAtOnce(Callback):
        def on_train_batch_end(self, trainer, *args):
            trainer.should_stop = True

    saved = []
    ckpt = ModelCheckpoint(dirpath=tmp_path / "c", every_n_train_steps=100, save_last=True)
    real = ckpt._save_checkpoint
    monkeypatch.setattr(ckpt, "_save_checkpoint", lambda trainer, path: saved.append(trainer.global_step) or
                        real(trainer, path))
    trainer = _sft_fit(tmp_path, [StopAtOnce(), ckpt], max_steps=8, min_steps=3, limit_val_batches=0)
    assert trainer.global_step == 3 and saved == [3]


def test_a_stop_asked_during_validation_saves_last_ckpt_at_that_step(tmp_path):
    """EarlyStopping decides in the validation that follows a batch, after the batch end's save:
    last.ckpt stayed at the previous periodic save (step 2 of 3), so a resume redid step 3 (helper-65)."""
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    ckpt = ModelCheckpoint(dirpath=tmp_path / "c", every_n_train_steps=2, save_last=True)
    stop = EarlyStopping(monitor="val/miou", mode="max", patience=2, min_delta=1e9)  # no validation improves by 1e9
    trainer = _sft_fit(tmp_path, [stop, ckpt], max_steps=8, val_check_interval=1, check_val_every_n_epoch=None)
    assert trainer.global_step == 3 and stop.stopped_epoch is not None
    assert torch.load(tmp_path / "c" / "last.ckpt", weights_only=False)["global_step"] == 3


def test_fast_dev_run_writes_no_checkpoint(tmp_path):
    """Lightning's end-of-fit save of last.ckpt ignores fast_dev_run: the smoke test left a last.ckpt,
    and the real fit into the same folder was refused as an earlier run's (helper-65)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    ckpt = ModelCheckpoint(dirpath=tmp_path / "c", every_n_train_steps=2, save_last=True)
    _sft_fit(tmp_path, [ckpt], fast_dev_run=True)
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())


def test_a_stop_asked_at_an_epochs_end_saves_last_ckpt_at_that_step(tmp_path):
    """EarlyStopping without validation decides at the training epoch's end, after the batch end's save
    (helper-70): last.ckpt stayed at the previous periodic save."""
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    ckpt = ModelCheckpoint(dirpath=tmp_path / "c", every_n_train_steps=3, save_last=True)
    stop = EarlyStopping(monitor="train/loss", mode="min", patience=1, min_delta=1e9, check_on_train_epoch_end=True)
    trainer = _sft_fit(tmp_path, [stop, ckpt], max_steps=8, limit_val_batches=0)
    assert trainer.global_step == 4  # 2 steps an epoch: the second epoch's end stops the fit
    assert torch.load(tmp_path / "c" / "last.ckpt", weights_only=False)["global_step"] == 4


def test_a_folder_models_tiny_spec_does_not_make_a_resume_another_model():
    """The warning for a tiny_spec beside a folder model says --model.tiny_spec=null leaves it out;
    a resume with that flag (or without it, after a run with it) was refused as another model
    (helper-79). For a tiny model the spec is the model, and a change is still refused."""
    from lit_vr1.checkpoint import setting_differences
    from lit_vr1.module import model_identity

    saved = {"model": "/runs/sft_model", "tiny_spec": {"num_layers": 2}, "lora": None}
    now = {"model": "/runs/sft_model", "tiny_spec": None, "lora": None}
    assert setting_differences(saved, now, model_identity("/runs/sft_model"), "model") == []
    tiny = setting_differences({**saved, "model": "tiny:qwen2_5_vl"}, {**now, "model": "tiny:qwen2_5_vl"},
                               model_identity("tiny:qwen2_5_vl"), "model")
    assert tiny == ["model.tiny_spec: {'num_layers': 2} in the checkpoint, None now"]


def test_a_sharded_checkpoint_resumed_without_fsdp2_is_one_refusal_naming_the_export():
    """Its optimiser states are keyed by parameter name (optimizer_0): Lightning's restore under DDP
    or one process stopped with a KeyError and a traceback. Under FSDP2 it resumes."""
    from lit_vr1.checkpoint import SettingsRefused
    from lit_vr1.module import refuse_sharded_elsewhere

    sharded = {"state_dict": {}, "optimizer_0": {"state": {}}}
    with pytest.raises(SettingsRefused, match=r"checkpoint runs/c/last.ckpt is a sharded one .*python -m lit_vr1.export "
                                              r"runs/c/last.ckpt <folder>"):
        refuse_sharded_elsewhere(sharded, "runs/c/last.ckpt", sharded_now=False)
    refuse_sharded_elsewhere(sharded, "runs/c/last.ckpt", sharded_now=True)
    refuse_sharded_elsewhere({"state_dict": {}, "optimizer_states": [{}]}, "last.ckpt", sharded_now=False)


def test_an_incomplete_sharded_checkpoint_is_named_with_the_newest_intact_one_beside_it(tmp_path):
    """FSDP2's loader stopped at a missing shard or metadata file with a 109-185 line traceback
    (helper-79); the fit's setup now checks the folder first."""
    import os
    import time

    import torch
    import torch.distributed.checkpoint as dcp

    from lit_vr1.checkpoint import CheckpointError, check_sharded_folder

    older, last = tmp_path / "epoch=0-step=8.ckpt", tmp_path / "last.ckpt"
    for folder in (older, last):
        dcp.save({"state_dict": {"w": torch.ones(3)}}, checkpoint_id=str(folder), no_dist=True)
        torch.save({"global_step": 8, "hyper_parameters": {"model": "tiny:qwen2_5_vl"}}, folder / "meta.pt")
        time.sleep(0.01)
    os.utime(older, (time.time() - 60, time.time() - 60))
    assert check_sharded_folder(str(last))["global_step"] == 8
    (shard,) = last.glob("*.distcp")
    whole = shard.read_bytes()
    shard.write_bytes(whole[: len(whole) // 2])  # a kill while a save wrote over the folder
    with pytest.raises(CheckpointError, match=rf"is incomplete: {shard.name} \(cut off: {len(whole) // 2} of "):
        check_sharded_folder(str(last))
    shard.unlink()
    with pytest.raises(CheckpointError, match=rf"sharded checkpoint {last} is incomplete: {shard.name} missing; the "
                                              rf"newest intact checkpoint beside it is {older}"):
        check_sharded_folder(str(last))
    (older / "meta.pt").unlink()
    with pytest.raises(CheckpointError, match=r"is incomplete: meta.pt missing; no intact checkpoint lies beside it"):
        check_sharded_folder(str(older))


def test_a_complete_sharded_folder_with_loops_is_a_resumable_candidate(tmp_path):
    """--ckpt_path last's newer-step check and fallback read each candidate's step: a sharded
    folder was never one (torch.load of a folder fails), so under FSDP2 they said the run saved
    none (helper-80)."""
    import torch
    import torch.distributed.checkpoint as dcp

    from lit_vr1.checkpoint import newest_resumable, saved_step

    folder = tmp_path / "epoch=0-step=8.ckpt"
    dcp.save({"state_dict": {"w": torch.ones(3)}}, checkpoint_id=str(folder), no_dist=True)
    torch.save({"global_step": 8, "loops": {}}, folder / "meta.pt")
    assert saved_step(str(folder)) == 8 and newest_resumable([str(tmp_path)]) == str(folder)
    torch.save({"global_step": 8}, folder / "meta.pt")  # weights only: not resumable
    assert saved_step(str(folder)) == -1
    torch.save({"global_step": 8, "loops": {}}, folder / "meta.pt")
    (shard,) = folder.glob("*.distcp")
    shard.write_bytes(shard.read_bytes()[:10])
    assert saved_step(str(folder)) == -1


def test_cold_start_allows_a_resume_on_several_processes():
    """ColdStart's one-process check ran at every setup: trainer.ckpt_path is set only at the
    restore, after it, so a resume was refused too (helper-80). It goes by the selected checkpoint."""
    from types import SimpleNamespace

    from callbacks import ColdStart
    from lit_vr1.checkpoint import SELECTED
    from lit_vr1.rules import ConfigError

    fresh = SimpleNamespace(world_size=2, _checkpoint_connector=SimpleNamespace(_user_managed=False), **{SELECTED: None})
    with pytest.raises(ConfigError, match="callbacks.ColdStart runs in one process"):
        ColdStart().setup(fresh, None, "fit")
    resumed = SimpleNamespace(world_size=2, _checkpoint_connector=SimpleNamespace(_user_managed=False),
                              **{SELECTED: "runs/x/checkpoints/last.ckpt"})
    ColdStart().setup(resumed, None, "fit")


def test_a_checkpoint_of_an_older_lit_vr1_says_what_it_cannot_check(tmp_path):
    """An upgrading user's trial: a checkpoint written before the optimiser settings, the training
    order and the rewards were saved was resumed with a new lr and batch size, without a word."""
    root, data = tmp_path / "run", tmp_path / "data"
    first = lit_vr1(tmp_path, "fit", *small(root, data))
    assert first.returncode == 0, first.stderr[-2000:]
    path = root / "checkpoints" / "last.ckpt"
    old = torch.load(path, map_location="cpu", weights_only=True)
    old.pop("lit_vr1_optimisers"), old.pop("lit_vr1_rewards")
    old["GroundingDataModule"].pop("order")
    assert old["GroundingDataModule"]["train_position"]["batches_done"] > 0  # mid-epoch: the order matters
    torch.save(old, path)
    back = lit_vr1(tmp_path, "fit", *small(root, data), "--trainer.max_steps=3", "--ckpt_path", "last")
    assert back.returncode == 0, back.stderr[-2000:]
    assert "was written by an older lit-vr1 and records no optimiser settings (model.optimizer, model.lr_scheduler); " \
           "no training order (data.batch_size, data.shuffle_seed, seed_everything); no rewards (model.rewards): this " \
           "resume cannot check them" in back.stderr, back.stderr[-2000:]
    again = lit_vr1(tmp_path, "fit", *small(root, data), "--trainer.max_steps=4", "--ckpt_path", "last")
    assert again.returncode == 0 and "older lit-vr1" not in again.stderr, again.stderr[-2000:]  # its own: all recorded


def test_a_versioned_last_checkpoint_resumed_by_last_is_said(tmp_path):
    """An older lit-vr1 (or another ModelCheckpoint) left last-v1.ckpt (step 3) beside last.ckpt (step 2):
    --ckpt_path last resumed it with only Lightning's 'Restoring states' line (an upgrading user's trial)."""
    import os
    import shutil

    root, data = tmp_path / "run", tmp_path / "data"
    assert lit_vr1(tmp_path, "fit", *small(root, data)).returncode == 0
    ckpts = root / "checkpoints"
    shutil.copy(ckpts / "last.ckpt", tmp_path / "step2.ckpt")
    assert lit_vr1(tmp_path, "fit", *small(root, data), "--trainer.max_steps=3", "--ckpt_path", "last").returncode == 0
    for extra in ckpts.glob("*step=*.ckpt"):
        extra.unlink()
    (ckpts / "last.ckpt").rename(ckpts / "last-v1.ckpt")
    shutil.copy(tmp_path / "step2.ckpt", ckpts / "last.ckpt")
    os.utime(ckpts / "last.ckpt", (1e9, 1e9))  # older than last-v1.ckpt: Lightning takes the newest last*
    back = lit_vr1(tmp_path, "fit", *small(root, data), "--trainer.max_steps=4", "--ckpt_path", "last")
    assert back.returncode == 0, back.stderr[-2000:]
    assert "--ckpt_path last: resuming from last-v1.ckpt (step 3), the newest of the last*.ckpt files, not last.ckpt " \
           "(step 2) beside it" in back.stderr, back.stderr[-2000:]


def test_steps_logged_but_not_saved_are_said_to_be_trained_again(tmp_path):
    """A stale last.ckpt (step 2) under a run logged to step 3: the resume dropped step 3's rollout
    lines and trained it again, saying only 'resuming after optimiser step 2' (an upgrading user's trial)."""
    import json
    import shutil

    root, data = tmp_path / "run", tmp_path / "data"
    log = ("--trainer.callbacks=[{class_path: lightning.pytorch.callbacks.ModelCheckpoint, init_args: {save_last: true, "
           "every_n_train_steps: 1, save_top_k: -1}}, {class_path: callbacks.RolloutLog}]")
    first = lit_vr1(tmp_path, "fit", *small(root, data)[:-1], log, "--trainer.max_steps=3")
    assert first.returncode == 0, first.stderr[-2000:]
    ckpts = root / "checkpoints"
    shutil.copy(next(ckpts.glob("*step=2.ckpt")), ckpts / "last.ckpt")
    next(ckpts.glob("*step=3.ckpt")).unlink()
    back = lit_vr1(tmp_path, "fit", *small(root, data)[:-1], log, "--trainer.max_steps=3", "--ckpt_path", "last")
    assert back.returncode == 0, back.stderr[-2000:]
    out = back.stdout + back.stderr
    assert "RolloutLog: the stopped run logged step 3 after the checkpoint's step 2 but saved no checkpoint of it" \
           in out.replace("of them", "of it"), out[-2000:]
    steps = [json.loads(line)["step"] for p in root.glob("logs/version_*/rollouts.jsonl") for line in open(p)]
    assert sorted(set(steps)) == [1, 2, 3] and steps.count(3) == steps.count(1)  # step 3 once, not twice


def test_validate_with_ckpt_path_last_takes_the_checkpoints_model_settings(tmp_path):
    """A --help-only user: 'validate --ckpt_path last' without the training config was refused for
    another model than the checkpoint's (a file's path took its settings, 'last' did not)."""
    root, data = tmp_path / "run", tmp_path / "data"
    assert lit_vr1(tmp_path, "fit", *small(root, data)).returncode == 0
    read = lit_vr1(tmp_path, "validate", "--ckpt_path", "last", f"--trainer.default_root_dir={root}",
                   "--trainer.accelerator=cpu", "--data=lit_vr1.data.datamodule.GroundingDataModule",
                   f"--data.synthetic_dir={data}", "--data.synthetic.num_samples=16", "--data.num_val_samples=4",
                   "--data.synthetic.canvas=56")
    assert read.returncode == 0, read.stderr[-2000:]
    assert f"lit-vr1: validate of {root / 'checkpoints' / 'last.ckpt'} (step 2)" in read.stdout + read.stderr
