"""What a run logs beside its training figures, and where its logs go (a new user who lives in
experiment trackers)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest


def test_memory_figures_are_the_processes_own_now_and_at_its_peak():
    from lit_vr1.oom import GIB, memory_figures

    got = memory_figures("cpu")
    assert set(got) == {"memory/allocated_gib", "memory/peak_gib"}
    assert got["memory/peak_gib"] >= got["memory/allocated_gib"] > 10 * 1024**2 / GIB  # torch alone holds more


def test_a_fresh_fit_into_a_wandb_first_folder_with_an_earlier_run_is_warned_of(tmp_path):
    """WandbLogger first: config.yaml and rollouts.jsonl go to its save_dir itself, so two fits shared
    one rollouts.jsonl (steps 1, 2, 1, 2) and the second overwrote the first's config.yaml."""
    pytest.importorskip("wandb")
    from lightning.pytorch.loggers import CSVLogger, WandbLogger

    from lit_vr1.cli import shared_log_dir_note

    wandb = WandbLogger(save_dir=str(tmp_path), offline=True)
    trainer = SimpleNamespace(loggers=[wandb], log_dir=str(tmp_path))
    assert shared_log_dir_note(trainer, None) is None  # the first run there
    (tmp_path / "config.yaml").write_text("seed_everything: 0\n")
    note = shared_log_dir_note(trainer, None)
    assert "the first logger (WandbLogger) keeps no version_N folder per run" in note and str(tmp_path) in note
    assert shared_log_dir_note(trainer, "last") is None  # a resume goes on in its own folder
    csv_first = SimpleNamespace(loggers=[CSVLogger(str(tmp_path)), wandb], log_dir=str(tmp_path))
    assert shared_log_dir_note(csv_first, None) is None
