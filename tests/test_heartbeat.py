"""A fit whose output goes to a file says how it goes, and every CLI fit says where its results
are when it ends (a redirected log said nothing between rollout tables and ended in the wrapped
progress bar: a new user's trial)."""

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import LengthReward
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

from lit_vr1.config import GRPOConfig
from lit_vr1.data.datamodule import collate
from lit_vr1.grpo import GRPOModule
from lit_vr1.heartbeat import Heartbeat, duration, figures, progress_line

ROOT = Path(__file__).resolve().parents[1]


def test_a_progress_line_says_the_step_the_pace_and_what_is_left():
    assert progress_line(120, 1000, 3.1, "train/reward/total/mean 0.52") == \
        "lit-vr1: step 120 of 1000 (12%), 3.1 s a step, about 45 min left; train/reward/total/mean 0.52"
    assert progress_line(5, -1, None, "") == "lit-vr1: step 5"  # no max_steps, no step timed yet
    assert progress_line(10, 10, 2.0, "") == "lit-vr1: step 10 of 10 (100%), 2 s a step"
    assert [duration(s) for s in (42, 600, 3 * 3600 + 720)] == ["42 s", "10 min", "3.2 h"]
    assert figures({"val/acc50": 0.5, "train/loss": 1.25, "train/reward/total/mean": 0.75, "other": 1}) == \
        "train/reward/total/mean 0.75, val/acc50 0.5"
    with pytest.raises(ValueError, match=r"every_s=-1\): give seconds >= 0"):
        Heartbeat(every_s=-1)


def _fit(samples, tmp_path, every_s: float, caplog) -> list[str]:
    seed_everything(0)
    module = GRPOModule(rewards=[LengthReward()], grpo=GRPOConfig(num_generations=2, max_completion_length=4, beta=0.0))
    trainer = Trainer(accelerator="cpu", max_steps=3, logger=CSVLogger(tmp_path), enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=tmp_path,
                      callbacks=[Heartbeat(every_s=every_s), ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)])
    with caplog.at_level(logging.INFO):
        trainer.fit(module, DataLoader(samples[:6], batch_size=2, collate_fn=collate))
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("lit-vr1: ")]


def test_without_a_progress_bar_the_fit_beats_and_ends_with_where_its_results_are(samples, tmp_path, caplog):
    lines = _fit(samples, tmp_path, 1e-9, caplog)  # a line after every step
    steps = [line for line in lines if line.startswith("lit-vr1: step ")]
    assert [s.split(",")[0] for s in steps] == ["lit-vr1: step 1 of 3 (33%)", "lit-vr1: step 2 of 3 (67%)",
                                                "lit-vr1: step 3 of 3 (100%)"]
    assert "s a step, about" in steps[0] and "train/reward/total/mean" in steps[0]
    end = lines[-1]
    assert end.startswith("lit-vr1: fit ended at step 3 (max_steps 3) after ")
    assert f"last checkpoint {tmp_path / 'ckpt' / 'last.ckpt'}" in end
    assert f"metrics in {os.path.join(str(tmp_path), 'lightning_logs', 'version_0', 'metrics.csv')}" in end


def test_every_s_0_keeps_the_last_line_only(samples, tmp_path, caplog):
    lines = _fit(samples, tmp_path, 0, caplog)
    assert len(lines) == 1 and lines[0].startswith("lit-vr1: fit ended at step 3")


def test_a_cli_fit_ends_with_its_last_line(tmp_path):
    """The CLI gives a fit its Heartbeat without a word in the config; a redirected log beats."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "lit_vr1.cli", "fit", "--config", str(ROOT / "configs/quickstart.yaml"),
           "--trainer.max_steps=2", "--trainer.limit_val_batches=0", f"--trainer.default_root_dir={tmp_path / 'run'}",
           f"--data.init_args.synthetic_dir={tmp_path / 'data'}", "--data.init_args.synthetic.num_samples=8",
           "--data.init_args.num_val_samples=0", "--data.init_args.batch_size=2",
           "--model.init_args.grpo.max_completion_length=4", "--model.init_args.grpo.num_generations=2",
           "--trainer.callbacks=[]"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "lit-vr1: fit ended at step 2 (max_steps 2)" in out, out[-2000:]
    assert "metrics in " in out
