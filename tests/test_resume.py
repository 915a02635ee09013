"""Exact resume: a ``lit-vr1 fit`` killed with SIGKILL and resumed with ``--ckpt_path last``
logs the very losses, rewards and completions of an uninterrupted run; a save that dies
half-way leaves the previous checkpoint usable."""

from __future__ import annotations

import csv
import glob
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lit_vr1.checkpoint import AtomicCheckpointIO, atomic_torch_save, temp_path_for
from tests.test_cli import ROOT

MAX_STEPS = 8
# Killed once step=6.ckpt exists: last.ckpt then holds step 5 or 6, both in the middle of the
# second epoch (4 batches of 2 prompts per epoch), where a plain DataLoader would start over.
KILL_AFTER = 6


def fit_command(out: Path, ckpt_dir: Path, data_dir: Path, *extra: str, every: int = 1,
                more_callbacks: tuple[dict, ...] = ()) -> list[str]:
    """The quickstart config shrunk to a few fast steps, a checkpoint after every step (or
    ``every`` steps) and last.ckpt, and every rollout written to ``out/rollouts.jsonl``."""
    callbacks = [*more_callbacks,
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"dirpath": str(ckpt_dir), "filename": "{step}", "every_n_train_steps": every, "save_top_k": -1,
                       "save_last": True}},
        {"class_path": "callbacks.RolloutLog", "init_args": {"path": str(out / "rollouts.jsonl"), "every_n_steps": 1}},
    ]
    return [
        sys.executable, "-m", "lit_vr1.cli", "fit", "--config", str(ROOT / "configs/quickstart.yaml"),
        f"--trainer.max_steps={MAX_STEPS}", "--trainer.limit_val_batches=0", "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={out}", f"--trainer.logger.init_args.save_dir={out}",
        f"--trainer.callbacks={json.dumps(callbacks)}",
        f"--data.init_args.synthetic_dir={data_dir}", "--data.init_args.synthetic.num_samples=8",
        "--data.init_args.num_val_samples=0", "--data.init_args.batch_size=2",
        "--model.init_args.grpo.max_completion_length=8",
        "--model.init_args.grpo.num_generations=2",
        "--model.init_args.rewards=[{class_path: tests.helpers.LengthReward}]",  # varies between completions
        *extra,
    ]


def run(cmd: list[str], cwd: Path) -> None:
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")


def per_step(out: Path) -> dict[int, dict]:
    """Step -> loss, mean reward (metrics.csv) and the rollout's completions and totals."""
    steps: dict[int, dict] = {}
    for path in glob.glob(str(out / "logs" / "version_*" / "metrics.csv")):
        for row in csv.DictReader(open(path)):
            if row.get("train/loss"):
                steps.setdefault(int(row["step"]), {}).update(
                    loss=float(row["train/loss"]), reward=float(row["train/reward/total/mean"]))
    for line in open(out / "rollouts.jsonl"):
        rec = json.loads(line)
        entry = steps.setdefault(rec["step"], {})
        entry.setdefault("completions", []).append(rec["completion"])
        entry.setdefault("totals", []).append(rec["total"])
        entry.setdefault("ids", []).append(rec["id"])
    return steps


def kill_after_checkpoint(cmd: list[str], cwd: Path, ckpt: Path, timeout: float = 240.0,
                          sig: signal.Signals = signal.SIGKILL) -> str:
    """Start ``cmd`` and send it ``sig`` as soon as ``ckpt`` exists; returns its stderr."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    try:
        while not ckpt.exists():
            if proc.poll() is not None:
                pytest.fail(f"the run ended before {ckpt.name} was written: {proc.stderr.read()[-3000:]}")
            assert time.monotonic() < deadline, f"{ckpt.name} never appeared"
            time.sleep(0.05)
        os.kill(proc.pid, sig)
        err = proc.communicate(timeout=timeout)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == (-signal.SIGKILL if sig == signal.SIGKILL else 130), err[-3000:]
    return err


def test_sigkill_then_ckpt_path_last_continues_exactly(tmp_path):
    data = tmp_path / "data"
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    run(fit_command(whole, tmp_path / "ckpt_whole", data), tmp_path)
    reference = per_step(whole)
    assert sorted(reference) == list(range(1, MAX_STEPS + 1))

    ckpt = tmp_path / "ckpt"
    cmd = fit_command(killed, ckpt, data)
    kill_after_checkpoint(cmd, tmp_path, ckpt / f"step={KILL_AFTER}.ckpt")
    saved = torch.load(ckpt / "last.ckpt", weights_only=False)["global_step"]
    assert saved in (KILL_AFTER - 1, KILL_AFTER)  # killed before or after last.ckpt was replaced
    resumed_from = KILL_AFTER  # either way: step=K.ckpt, written whole before last.ckpt, is the newest complete one
    # the killed run's metrics.csv holds every step it completed (CSV rows are written each step)
    killed_steps = {int(r["step"]) for p in glob.glob(str(killed / "logs" / "version_*" / "metrics.csv"))
                    for r in csv.DictReader(open(p)) if r.get("train/loss")}
    assert set(range(1, resumed_from + 1)) <= killed_steps
    resumed = tmp_path / "resumed"  # its own logs and rollouts, the killed run's checkpoints
    run(fit_command(resumed, ckpt, data, "--ckpt_path", "last"), tmp_path)
    after = per_step(resumed)
    rows = [int(r["step"]) for p in glob.glob(str(resumed / "logs" / "version_*" / "metrics.csv"))
            for r in csv.DictReader(open(p)) if r.get("train/loss")]
    assert sorted(rows) == list(range(1, MAX_STEPS + 1))  # every step once, in one file

    # its metrics.csv starts with the killed run's rows up to the checkpoint; its rollouts are its own
    assert sorted(after) == list(range(1, MAX_STEPS + 1))
    assert {s for s in after if "completions" in after[s]} == set(range(resumed_from + 1, MAX_STEPS + 1))
    assert len({v["reward"] for v in reference.values()}) > 1  # rewards that vary: a real comparison
    for step, got in after.items():
        want = reference[step]
        assert got["reward"] == want["reward"] and got["loss"] == want["loss"], step  # bit for bit
        if step > resumed_from:
            assert got["ids"] == want["ids"], step  # same prompts: the data order went on mid-epoch
            assert got["completions"] == want["completions"], step  # same samples: the RNG states came back
            assert got["totals"] == want["totals"], step
    diffs = [abs(after[s]["loss"] - reference[s]["loss"]) for s in after]
    print(f"resumed from step {resumed_from}; steps {sorted(after)} compared; "
          f"losses {[after[s]['loss'] for s in after]} rewards {[after[s]['reward'] for s in after]}; "
          f"max |loss diff| {max(diffs)}")


def test_last_ckpt_holds_the_final_step_and_resumes_in_its_epoch(tmp_path):
    """Checkpoints every 4 steps. A fit to step 6 left last.ckpt at step 4 (Lightning saves last at
    the end only when the process saved none); a resumed fit to step 7 saved it at the end, but after
    Lightning had counted the epoch as done, so the next resume started another epoch: other prompts."""
    data = tmp_path / "data"
    whole = tmp_path / "whole"
    run(fit_command(whole, tmp_path / "ckpt_whole", data, "--trainer.max_steps=10"), tmp_path)
    reference = per_step(whole)
    ckpt = tmp_path / "ckpt"
    run(fit_command(tmp_path / "a", ckpt, data, "--trainer.max_steps=6", every=4), tmp_path)
    assert torch.load(ckpt / "last.ckpt", weights_only=False)["global_step"] == 6
    run(fit_command(tmp_path / "b", ckpt, data, "--trainer.max_steps=7", "--ckpt_path", "last", every=4), tmp_path)
    saved = torch.load(ckpt / "last.ckpt", weights_only=False)
    assert saved["global_step"] == 7 and saved["epoch"] == 1  # 4 batches an epoch: step 7 is the second epoch's third
    run(fit_command(tmp_path / "c", ckpt, data, "--trainer.max_steps=10", "--ckpt_path", "last", every=4), tmp_path)
    after = per_step(tmp_path / "c")
    assert {s for s in after if "completions" in after[s]} == {8, 9, 10}
    for step in (8, 9, 10):
        assert after[step]["ids"] == reference[step]["ids"], step  # the data order went on in its epoch
        assert after[step]["completions"] == reference[step]["completions"], step
        assert after[step]["loss"] == reference[step]["loss"], step


def test_ctrl_c_during_fit_exits_130_with_one_message_and_the_run_resumes(tmp_path):
    ckpt = tmp_path / "ckpt"
    err = kill_after_checkpoint(fit_command(tmp_path / "run", ckpt, tmp_path / "data"), tmp_path,
                                ckpt / "step=2.ckpt", sig=signal.SIGINT)
    assert "lit-vr1: interrupted (Ctrl-C, exit 130)" in err and "Traceback" not in err, err[-3000:]
    # where it stopped and the file it resumes from, as a failed fit says
    assert re.search(r"the fit stopped after optimiser step \d; it resumes from .*last\.ckpt \(optimiser step \d\) "
                     r"with --ckpt_path last", err), err[-3000:]
    run(fit_command(tmp_path / "run", ckpt, tmp_path / "data", "--ckpt_path", "last"), tmp_path)
    assert torch.load(ckpt / "last.ckpt", weights_only=False)["global_step"] == MAX_STEPS


def test_a_sigterm_saves_last_ckpt_at_the_step_it_stops_after(tmp_path):
    """A scheduler's SIGTERM (a preemption) stopped the fit at the end of the step in progress
    and saved nothing: the steps since the last periodic checkpoint were lost."""
    ckpt, out = tmp_path / "ckpt", tmp_path / "run"
    term = {"class_path": "tests.helpers.SigtermDuring", "init_args": {"step": 6}}
    proc = subprocess.run(fit_command(out, ckpt, tmp_path / "data", every=4, more_callbacks=(term,)), cwd=tmp_path,
                          env=_env(), capture_output=True, text=True, timeout=300)
    err = proc.stderr
    assert proc.returncode == 143 and "stopped by SIGTERM (exit 143)" in err, err[-3000:]
    assert "the fit stopped after optimiser step 6;" in err, err[-3000:]
    assert torch.load(ckpt / "last.ckpt", weights_only=False)["global_step"] == 6  # the periodic save was at 4
    assert "last.ckpt (optimiser step 6) with --ckpt_path last" in err, err[-3000:]


def _rollouts_by_rank(out: Path) -> dict[tuple[int, int], list]:
    """(rank, step) -> that process's rollout rows (id, completion, total), from RolloutLog's
    per-rank files."""
    rows: dict[tuple[int, int], list] = {}
    for rank in (0, 1):
        for line in open(out / f"rollouts.rank{rank}.jsonl"):
            rec = json.loads(line)
            rows.setdefault((rank, rec["step"]), []).append((rec["id"], rec["completion"], rec["total"]))
    return rows


def test_a_sigterm_under_two_processes_stops_both_after_one_step_saves_and_resumes_exactly(tmp_path):
    """Under DDP, Lightning's SIGTERM handler broadcast inside the handler once per signal, and
    rank 0 passed its signal on to rank 1, so the broadcasts no longer paired: the fit hung until
    the scheduler's SIGKILL with nothing saved since the last periodic checkpoint (2 processes, a
    SIGTERM to each at step 6: no exit within 240 s). A process signalled a step before the other
    stopped alone. Here rank 1 is signalled at step 5, rank 0 at step 6: both stop after step 5,
    last.ckpt holds it, one message, and the resume's steps are the uninterrupted run's on both
    processes."""
    ddp = ("--trainer.devices=2", "--trainer.strategy=ddp", "--trainer.accelerator=cpu")
    data = tmp_path / "data"
    run(fit_command(tmp_path / "whole", tmp_path / "whole_ckpt", data, *ddp, every=4), tmp_path)
    ckpt, terms = tmp_path / "ckpt", ({"class_path": "tests.helpers.SigtermDuring", "init_args": {"step": 5, "rank": 1}},
                                      {"class_path": "tests.helpers.SigtermDuring", "init_args": {"step": 6, "rank": 0}})
    proc = subprocess.run(fit_command(tmp_path / "stopped", ckpt, data, *ddp, every=4, more_callbacks=terms),
                          cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    err = proc.stderr
    assert proc.returncode == 143, err[-3000:]
    assert err.count("stopped by SIGTERM (exit 143)") == 1 and "Traceback" not in err, err[-3000:]
    assert "every process stops after optimiser step 5" in err, err[-3000:]
    assert "last.ckpt (optimiser step 5) with --ckpt_path last" in err, err[-3000:]
    assert torch.load(ckpt / "last.ckpt", weights_only=False)["global_step"] == 5  # the periodic save was at 4
    run(fit_command(tmp_path / "resumed", ckpt, data, *ddp, "--ckpt_path", "last", every=4), tmp_path)
    whole, resumed = _rollouts_by_rank(tmp_path / "whole"), _rollouts_by_rank(tmp_path / "resumed")
    assert sorted(resumed) == [(rank, step) for rank in (0, 1) for step in (6, 7, 8)]
    for key, rows in resumed.items():
        assert rows == whole[key], key  # the same prompts, completions and rewards on both processes


def test_a_fresh_fit_into_an_earlier_runs_checkpoints_is_refused_and_keeps_them(tmp_path):
    """Without the refusal the second run would save last-v1.ckpt beside the first run's
    last.ckpt, and every later use of last.ckpt would read the earlier run."""
    data, ckpt = tmp_path / "data", tmp_path / "ckpt"
    run(fit_command(tmp_path / "first", ckpt, data, "--trainer.max_steps=2"), tmp_path)
    before = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    assert "last.ckpt" in before
    proc = subprocess.run(fit_command(tmp_path / "second", ckpt, data, "--trainer.max_steps=2"), cwd=tmp_path,
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"{ckpt} already holds an earlier run's checkpoints (last.ckpt, step=1.ckpt, step=2.ckpt)" in proc.stderr
    assert "--ckpt_path last" in proc.stderr and "Traceback" not in proc.stderr
    assert {p.name: p.read_bytes() for p in ckpt.iterdir()} == before  # nothing written, nothing deleted


def test_checkpoints_without_last_ckpt_are_named_by_every_refusal(tmp_path):
    """A ModelCheckpoint without save_last: the advice names the newest checkpoint's file (the
    "--ckpt_path last" it used to give found nothing), and last_or_new resumes from it instead of
    starting a second run beside the first one's checkpoints."""
    data, ckpt = tmp_path / "data", tmp_path / "ckpt"
    no_last = [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                "init_args": {"dirpath": str(ckpt), "filename": "{step}", "every_n_train_steps": 1, "save_top_k": -1}}]
    flag = f"--trainer.callbacks={json.dumps(no_last)}"
    run(fit_command(tmp_path / "first", ckpt, data, "--trainer.max_steps=2", flag), tmp_path)
    before = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    assert sorted(before) == ["step=1.ckpt", "step=2.ckpt"]

    def refused(*extra: str) -> str:
        proc = subprocess.run(fit_command(tmp_path / "again", ckpt, data, "--trainer.max_steps=3", flag, *extra),
                              cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        return proc.stderr

    assert f"resume that run with --ckpt_path {ckpt / 'step=2.ckpt'} (there is no last.ckpt)" in refused()
    assert f"save_last); resume its newest checkpoint with --ckpt_path {ckpt / 'step=2.ckpt'}" in refused("--ckpt_path=last")
    assert {p.name: p.read_bytes() for p in ckpt.iterdir()} == before  # nothing written, nothing deleted
    # a job that restarts itself: last_or_new resumes from the newest checkpoint, with a warning
    proc = subprocess.run(fit_command(tmp_path / "again", ckpt, data, "--trainer.max_steps=3", flag,
                                      "--ckpt_path=last_or_new"),
                          cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"there is no last.ckpt in {ckpt}; resuming from the newest checkpoint, {ckpt / 'step=2.ckpt'}" in proc.stderr
    assert sorted(p.name for p in ckpt.iterdir()) == ["step=1.ckpt", "step=2.ckpt", "step=3.ckpt"]
    assert torch.load(ckpt / "step=3.ckpt", weights_only=False)["global_step"] == 3  # one step more, not three


def test_the_newest_checkpoint_is_the_last_written_then_the_highest_number(tmp_path):
    from lit_vr1.checkpoint import newest_checkpoint

    assert newest_checkpoint([str(tmp_path / "none")]) is None
    for name in ("step=9.ckpt", "step=10.ckpt", "step=2.ckpt"):
        (tmp_path / name).write_bytes(b"")
        os.utime(tmp_path / name, (1000, 1000))  # equal times (a coarse clock): the numbers decide
    assert newest_checkpoint([str(tmp_path)]) == str(tmp_path / "step=10.ckpt")
    os.utime(tmp_path / "step=2.ckpt", (2000, 2000))
    assert newest_checkpoint([str(tmp_path)]) == str(tmp_path / "step=2.ckpt")


# -- atomic writes ------------------------------------------------------------------------------
class Boom(RuntimeError):
    pass


def test_a_save_that_fails_half_way_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    target = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 1, "w": torch.ones(3)}, target)

    def half_then_fail(obj, f, *args, **kwargs):
        f.write(b"\x00" * 100)  # part of a checkpoint reaches the disk, then the writer dies
        raise Boom("disk gone")

    monkeypatch.setattr(torch, "save", half_then_fail)
    with pytest.raises(Boom):
        io.save_checkpoint({"global_step": 2, "w": torch.zeros(3)}, target)
    monkeypatch.undo()
    assert io.load_checkpoint(target)["global_step"] == 1
    assert os.listdir(tmp_path) == ["last.ckpt"]  # the temporary file went with the failure


KILLED_WRITER = """
import sys, time, torch
from lit_vr1.checkpoint import atomic_torch_save
real_save = torch.save
def slow_save(obj, f, *a, **k):
    f.write(b"partial checkpoint bytes"); f.flush()
    print("writing", flush=True)
    time.sleep(60)
torch.save = slow_save
atomic_torch_save({"global_step": 2}, sys.argv[1])
"""


def test_sigkill_during_a_save_keeps_last_ckpt_loadable_and_ignores_the_torn_file(tmp_path):
    """The writer is killed mid-file: last.ckpt is still the previous one, the torn temp
    file is not a ``*.ckpt`` (so ``--ckpt_path last`` never picks it) and the next save
    clears it."""
    target = tmp_path / "last.ckpt"
    atomic_torch_save({"global_step": 1}, str(target))
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(target)], env=_env(), cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.kill()
    proc.wait()
    torn = [p for p in os.listdir(tmp_path) if p != "last.ckpt"]
    assert len(torn) == 1 and not torn[0].endswith(".ckpt") and torn[0].startswith(".last.ckpt.tmp-")
    assert torch.load(target, weights_only=True)["global_step"] == 1
    atomic_torch_save({"global_step": 3}, str(target))
    assert os.listdir(tmp_path) == ["last.ckpt"] and torch.load(target)["global_step"] == 3
    assert temp_path_for(str(target)).endswith(f".last.ckpt.tmp-{os.getpid()}")


class FailsAtStep(AtomicCheckpointIO):
    """Dies half-way through writing the checkpoints of one step."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.step = step

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        if checkpoint["global_step"] != self.step:
            return super().save_checkpoint(checkpoint, path, storage_options)
        real_save = torch.save

        def half_then_fail(obj, f, *args, **kwargs):
            f.write(b"\x00" * 100)
            raise Boom(f"killed while writing {path}")

        torch.save = half_then_fail
        try:
            super().save_checkpoint(checkpoint, path, storage_options)
        finally:
            torch.save = real_save


def test_a_fit_that_dies_while_saving_resumes_from_the_previous_last_ckpt(samples, tmp_path):
    from lightning.pytorch import Callback, Trainer, seed_everything
    from lightning.pytorch.callbacks import ModelCheckpoint
    from torch.utils.data import DataLoader

    from lit_vr1.config import GRPOConfig
    from lit_vr1.data.datamodule import collate
    from lit_vr1.grpo import GRPOModule
    from tests.helpers import LengthReward

    class FirstStep(Callback):
        seen: list[int] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.seen.append(trainer.global_step)

    def fit(max_steps: int, io: AtomicCheckpointIO, ckpt_path=None) -> list[int]:
        seed_everything(0)
        module = GRPOModule(rewards=[LengthReward()], grpo=GRPOConfig(num_generations=2, max_completion_length=4,
                                                                       beta=0.0))
        ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_last=True)
        probe = FirstStep()
        probe.seen = []
        trainer = Trainer(accelerator="cpu", max_steps=max_steps, logger=False, callbacks=[ckpt, probe], plugins=[io],
                          enable_progress_bar=False, enable_model_summary=False)
        trainer.fit(module, DataLoader(samples[:8], batch_size=2, collate_fn=collate), ckpt_path=ckpt_path)
        return probe.seen

    with pytest.raises(Boom):
        fit(4, FailsAtStep(3))
    assert torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["global_step"] == 2
    assert not [p for p in os.listdir(tmp_path / "ckpt") if p.startswith(".")]
    assert fit(4, AtomicCheckpointIO(), ckpt_path="last") == [2, 3]  # resumed after step 2, on to 4


def test_the_optimiser_state_is_in_last_ckpt_and_released_before_lightnings_teardown(samples, tmp_path):
    """Lightning's teardown copies the optimisers' state to host memory (30 GiB for a 3B model's
    AdamW moments); lit-vr1 empties it in on_train_end, after ModelCheckpoint wrote last.ckpt."""
    import lightning as L
    from helpers import LengthReward, collate
    from torch.utils.data import DataLoader

    from lit_vr1.config import GRPOConfig
    from lit_vr1.grpo import GRPOModule

    torch.manual_seed(0)
    module = GRPOModule(model="tiny:qwen2_5_vl", rewards=[LengthReward()],
                        grpo=GRPOConfig(num_generations=2, max_completion_length=4))
    at_teardown = []

    class StateAtTeardown(L.Callback):  # Lightning calls teardown hooks after its strategy's teardown
        def on_fit_end(self, trainer, pl_module):
            at_teardown.append(sum(len(o.state) for o in trainer.optimizers))

    class StateBeforeRelease(L.Callback):  # callbacks' on_train_end runs before the module's
        def on_train_end(self, trainer, pl_module):
            at_teardown.append(sum(len(o.state) for o in trainer.optimizers))

    ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=1)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=2, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[ckpt, StateBeforeRelease(), StateAtTeardown()])
    trainer.fit(module, DataLoader(samples[:4], batch_size=2, collate_fn=collate))
    trained = sum(p.requires_grad for p in module.policy.parameters())
    assert at_teardown == [trained, 0]
    saved = torch.load(tmp_path / "last.ckpt", weights_only=False)["optimizer_states"][0]["state"]
    assert len(saved) == trained and all("exp_avg" in s for s in saved.values())


def test_the_progress_bar_counts_steps_out_of_max_steps_after_a_resume_mid_epoch(samples, tmp_path):
    """Lightning's bar showed ``60/49`` after a resume (its count went on, its total was the batches
    left in the epoch); lit-vr1's StepProgressBar shows optimiser steps out of max_steps."""
    import lightning as L
    from helpers import LengthReward, collate
    from torch.utils.data import DataLoader

    from lit_vr1.config import GRPOConfig
    from lit_vr1.grpo import GRPOModule
    from lit_vr1.quiet import StepProgressBar

    seen = []

    class Look(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            bar = next(c for c in trainer.callbacks if isinstance(c, StepProgressBar))
            task = bar.progress.tasks[bar.train_progress_bar_id]
            seen.append((trainer.global_step, task.completed, task.total))
            assert "v_num" not in bar.get_metrics(trainer, pl_module)

    def run(max_steps, ckpt_path=None):
        torch.manual_seed(0)
        module = GRPOModule(model="tiny:qwen2_5_vl", rewards=[LengthReward()],
                            grpo=GRPOConfig(num_generations=2, max_completion_length=4))
        ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=1)
        trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=max_steps, enable_model_summary=False,
                            logger=L.pytorch.loggers.CSVLogger(tmp_path / "logs"),  # the bar's v_num comes from it
                            callbacks=[ckpt, StepProgressBar(), Look()])
        trainer.fit(module, DataLoader(samples[:8], batch_size=2, collate_fn=collate), ckpt_path=ckpt_path)

    run(2)
    seen.clear()
    run(5, ckpt_path=str(tmp_path / "last.ckpt"))  # resumed at step 2 of an epoch of 4 batches
    assert seen == [(3, 3, 5), (4, 4, 5), (5, 5, 5)]


def _metric_rows(path) -> list[tuple[int, str, float]]:
    """(step, column, value) of every filled cell of a metrics.csv but the step's, in file order."""
    out = []
    for row in csv.DictReader(open(path)):
        step = int(row.pop("step"))
        out += [(step, k, float(v)) for k, v in row.items() if v != "" and "time/" not in k and "memory/" not in k]
    return out


@pytest.mark.parametrize("kind", ["sft", "grpo", "grpo_pinned"])
def test_a_resumed_runs_metrics_csv_holds_the_whole_run(samples, tmp_path, kind):
    """Lightning starts a resumed run's CSV log in a new version folder; lit-vr1 first copies the
    checkpointed run's rows up to the checkpoint into it, so its metrics.csv holds every step
    once, as an uninterrupted run's does (the same values: the resume is exact), validation after
    every batch included. SFT's rows (Lightning's) carry the batch count before the update (0, 1,
    ...), GRPO's training rows the optimiser step after it (1, 2, ...), and each validation row
    the training row's step; the validation after the checkpointed batch is not run again by the
    resumed run, and is copied. With the logger's version pinned (``grpo_pinned``) both runs write
    one file, which Lightning empties when the resumed run starts (steps 1-6 of a new user's run
    were lost)."""
    import lightning as L
    from helpers import LengthReward, collate
    from torch.utils.data import DataLoader

    from lit_vr1.config import GRPOConfig
    from lit_vr1.grpo import GRPOModule
    from lit_vr1.sft import SFTModule

    def run(root, max_steps, ckpt_dir, ckpt_path=None):
        torch.manual_seed(0)
        module = (SFTModule(model="tiny:qwen2_5_vl", eval_max_new_tokens=8) if kind == "sft" else
                  GRPOModule(model="tiny:qwen2_5_vl", rewards=[LengthReward()], eval_max_new_tokens=8,
                             grpo=GRPOConfig(num_generations=2, max_completion_length=4)))
        ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=ckpt_dir, filename="{step}", save_top_k=-1,
                                                   every_n_train_steps=1)
        logger = L.pytorch.loggers.CSVLogger(root, name="logs", version="run1" if kind == "grpo_pinned" else None)
        trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=max_steps, enable_model_summary=False,
                            enable_progress_bar=False, log_every_n_steps=1, logger=logger,
                            callbacks=[ckpt, L.pytorch.callbacks.LearningRateMonitor(logging_interval="step")],
                            val_check_interval=1, limit_val_batches=1, num_sanity_val_steps=0)
        # every batch the same two samples: a plain DataLoader restarts its epoch on a resume
        loader = DataLoader(samples[:2] * 4, batch_size=2, collate_fn=collate)
        trainer.fit(module, loader, DataLoader(samples[2:4], batch_size=2, collate_fn=collate), ckpt_path=ckpt_path)
        return Path(logger.log_dir) / "metrics.csv"

    whole = _metric_rows(run(tmp_path / "whole", 4, tmp_path / "c0"))
    killed = run(tmp_path / "run", 3, tmp_path / "c1")  # "killed" after step 3; step=2.ckpt resumed below
    killed_rows = _metric_rows(killed)
    resumed = run(tmp_path / "run", 4, tmp_path / "c2", ckpt_path=str(tmp_path / "c1" / "step=2.ckpt"))
    if kind == "grpo_pinned":
        assert killed == resumed and resumed.parent.name == "run1"
    else:
        assert killed.parent.name == "version_0" and resumed.parent.name == "version_1"
    got = _metric_rows(resumed)
    steps = sorted({s for s, k, _ in got if k == "train/loss"})
    assert steps == ([0, 1, 2, 3] if kind == "sft" else [1, 2, 3, 4])
    # validated after each batch, on the row of the training step it follows (SFT's batch count, GRPO's
    # optimiser step), with the format rate beside the IoU figures
    for key in ("val/acc50", "val/miou", "val/format"):
        assert sorted({s for s, k, _ in whole if k == key}) == steps
    assert sorted(got) == sorted(whole)  # each step once, with the uninterrupted run's values
    assert sorted(s for s, k, _ in got if k.startswith("lr-")) == sorted(s for s, k, _ in whole if k.startswith("lr-"))
    assert {s for s, k, _ in killed_rows if k == "train/loss"} == set(steps[:3])
    if kind != "grpo_pinned":
        assert _metric_rows(killed) == killed_rows  # left as it was


def test_a_refused_resume_into_a_pinned_csv_version_leaves_the_rows_for_the_next(samples, tmp_path):
    """Lightning empties a pinned version's metrics.csv as its logger starts; a resume refused after
    that (another beta here) lost the killed run's rows, and the corrected resume began at the
    checkpoint (helper-62's review)."""
    import lightning as L
    from helpers import LengthReward, collate
    from torch.utils.data import DataLoader

    from lit_vr1.checkpoint import SettingsRefused
    from lit_vr1.config import GRPOConfig
    from lit_vr1.grpo import GRPOModule

    def run(max_steps, beta=0.04, ckpt_path=None):
        torch.manual_seed(0)
        module = GRPOModule(model="tiny:qwen2_5_vl", rewards=[LengthReward()],
                            grpo=GRPOConfig(num_generations=2, max_completion_length=4, beta=beta))
        ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{step}", save_top_k=-1,
                                                   every_n_train_steps=1)
        logger = L.pytorch.loggers.CSVLogger(tmp_path, name="logs", version="run1")
        trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=max_steps, enable_model_summary=False,
                            enable_progress_bar=False, logger=logger, callbacks=[ckpt], num_sanity_val_steps=0)
        trainer.fit(module, DataLoader(samples[:2] * 4, batch_size=2, collate_fn=collate), ckpt_path=ckpt_path)
        return Path(logger.log_dir) / "metrics.csv"

    path = run(3)
    with pytest.raises(SettingsRefused):
        run(4, beta=0.0, ckpt_path=str(tmp_path / "ckpt" / "step=2.ckpt"))
    assert not path.exists() and (path.parent / "metrics.csv.kept").exists()  # emptied; the copy waits
    run(4, ckpt_path=str(tmp_path / "ckpt" / "step=2.ckpt"))
    assert sorted({s for s, k, _ in _metric_rows(path) if k == "train/loss"}) == [1, 2, 3, 4]
    assert not (path.parent / "metrics.csv.kept").exists()  # done with once carried over


class _InterruptsWhilePickled:
    """Sends this process a SIGINT when torch.save pickles it (a Ctrl-C in the middle of a save)."""

    def __reduce__(self):
        os.kill(os.getpid(), signal.SIGINT)
        return (dict, ())


def test_ctrl_c_during_a_checkpoint_save_stops_after_the_file_is_whole(tmp_path):
    """A KeyboardInterrupt inside torch.save broke its zip writer into a RuntimeError ("unexpected
    pos"), a traceback and exit 1; the save now finishes, then the interrupt is raised."""
    path = tmp_path / "last.ckpt"
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({"weights": torch.arange(100_000), "late": _InterruptsWhilePickled()}, str(path))
    saved = torch.load(path, weights_only=False)
    assert torch.equal(saved["weights"], torch.arange(100_000)) and saved["late"] == {}


def test_the_sigterm_agreement_is_reset_at_each_fits_setup_and_gives_lightning_its_handler_back():
    """A signal noted during the sanity validation was reset by on_train_start, after it, and lost;
    after the fit the replaced handler stayed, so a later validate under several processes
    ignored SIGTERM (helper-53's review)."""
    from types import SimpleNamespace

    from lightning.pytorch.trainer.connectors.signal_connector import _SignalConnector

    from lit_vr1 import preemption

    connector = _SignalConnector(SimpleNamespace())
    trainer = SimpleNamespace(world_size=2, callbacks=[], _signal_connector=connector,
                              strategy=SimpleNamespace(launcher=None))
    preemption.install(trainer)
    stop = trainer.callbacks[0]
    assert isinstance(stop, preemption.StopTogether) and connector._sigterm_notifier_fn == stop.notice
    stop.notice(signal.SIGTERM, None)  # during the sanity validation: noted, not lost
    assert stop.pending
    preemption.install(trainer)  # a second fit of this Trainer: its own signals only, one callback
    assert not stop.pending and trainer.callbacks == [stop]
    stop.teardown(trainer, None, "fit")
    assert connector._sigterm_notifier_fn.__func__ is _SignalConnector._sigterm_notifier_fn
    preemption.install(SimpleNamespace(world_size=1, callbacks=(), _signal_connector=connector))  # one process: nothing
