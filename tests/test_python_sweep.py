"""Several fits in one Python process, as a sweep runs them (a new user's trial, 2026-12-07): a
Trainer or a ModelCheckpoint of an earlier fit given to the next is refused in one line (the
new module trained no step, or nothing was saved for it, without a word), and the Trainer's
settings lit-vr1 cannot take are refused in its own words before Lightning's check."""

from __future__ import annotations

import pytest
import torch
from helpers import LengthReward, collate
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from lit_vr1.config import GRPOConfig
from lit_vr1.grpo import GRPOModule
from lit_vr1.rules import ConfigError


def module() -> GRPOModule:
    cfg = GRPOConfig(num_generations=2, max_completion_length=6, beta=0.0)
    return GRPOModule(model="tiny:qwen2_5_vl", rewards=[LengthReward()], grpo=cfg, seed=0,
                      optimizer=lambda p: torch.optim.SGD(p, lr=1e-3))


def trainer(root, **kwargs) -> Trainer:
    return Trainer(accelerator="cpu", devices=1, max_steps=1, logger=False, default_root_dir=str(root),
                   enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, **kwargs)


def test_a_trainer_or_checkpoint_callback_of_an_earlier_fit_is_refused_for_the_next(samples, tmp_path):
    loader = DataLoader(samples[:2], batch_size=1, collate_fn=collate)
    seed_everything(0)
    saver = ModelCheckpoint(dirpath=str(tmp_path / "a" / "ckpt"), save_last=True)
    first = trainer(tmp_path / "a", callbacks=[saver])
    first.fit(module(), loader)
    assert (tmp_path / "a" / "ckpt" / "last.ckpt").is_file()
    # the same Trainer for another module: it stopped at once ("max_steps=1 reached"), nothing trained
    with pytest.raises(ConfigError, match=r"this Trainer already ran a fit of another module \(global_step 1, "
                                          r"max_steps 1\): .* build a new Trainer for each fit"):
        first.fit(module(), loader)
    # the ModelCheckpoint of that fit in a new Trainer: it kept the first fit's folder and step, saving nothing
    with pytest.raises(ConfigError, match=r"the ModelCheckpoint given to this fit saved .*last.ckpt in an earlier "
                                          r"fit: .* give each fit its own ModelCheckpoint"):
        trainer(tmp_path / "b", callbacks=[saver]).fit(module(), loader)
    # a new Trainer and a new ModelCheckpoint: fine
    trainer(tmp_path / "c", callbacks=[ModelCheckpoint(dirpath=str(tmp_path / "c" / "ckpt"), save_last=True)]).fit(
        module(), loader)
    assert (tmp_path / "c" / "ckpt" / "last.ckpt").is_file()


def test_trainer_clipping_from_python_is_refused_in_lit_vr1s_words(samples, tmp_path):
    """Lightning's own check ran first: "Automatic gradient clipping is not supported for manual optimization"."""
    loader = DataLoader(samples[:1], batch_size=1, collate_fn=collate)
    with pytest.raises(ConfigError, match=r"trainer.gradient_clip_val=1.0: GRPO steps its optimiser itself .* set "
                                          r"model.grpo.gradient_clip_val=1.0"):
        trainer(tmp_path, gradient_clip_val=1.0).fit(module(), loader)
