import glob

from helpers import LengthReward
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader

from callbacks import RolloutTable
from lit_vr1.data.datamodule import collate
from lit_vr1.grpo import GRPOModule
from lit_vr1.loop import GRPOConfig


def test_rollout_table_prints_and_logs_to_tensorboard(samples, tmp_path, capsys):
    seed_everything(0)
    module = GRPOModule(rewards=[LengthReward()], grpo=GRPOConfig(num_generations=2, max_completion_length=8, beta=0.0))
    table = RolloutTable(every_n_steps=1, num_samples=3)
    logger = TensorBoardLogger(tmp_path)
    trainer = Trainer(accelerator="cpu", max_steps=2, logger=logger, callbacks=[table], enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, DataLoader(samples[:4], batch_size=2, collate_fn=collate))
    out = capsys.readouterr().out
    assert "rollouts at step 1" in out and "rollouts at step 2" in out and "length" in out
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(glob.glob(str(tmp_path / "lightning_logs" / "version_0"))[0], size_guidance={"tensors": 0})
    acc.Reload()
    assert "rollouts/text_summary" in acc.Tags()["tensors"]
    texts = acc.Tensors("rollouts/text_summary")
    assert [t.step for t in texts] == [1, 2]
    first = texts[0].tensor_proto.string_val[0].decode()
    assert "| id | completion | length | total | advantage |" in first
    assert first.count("\n") == 1 + 3  # header, separator line, three rows


def test_rollout_log_writes_every_completion_with_its_rewards(samples, tmp_path):
    import json
    import math

    from callbacks import RolloutLog
    from lit_vr1.rewards import Reward

    class OnlyFirst(Reward):
        """Applies to the first completion of each rollout only (NaN elsewhere)."""

        default_name = "first"

        def score(self, completions, contexts):
            return [1.0] + [math.nan] * (len(completions) - 1)

    seed_everything(0)
    module = GRPOModule(rewards=[LengthReward(), OnlyFirst()],
                        grpo=GRPOConfig(num_generations=2, max_completion_length=8, beta=0.0))
    path = tmp_path / "debug" / "rollouts.jsonl"
    trainer = Trainer(accelerator="cpu", max_steps=2, logger=False, callbacks=[RolloutLog(str(path))],
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, DataLoader(samples[:4], batch_size=2, collate_fn=collate))
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == 2 * 2 * 2  # 2 steps x 2 prompts x G=2
    assert [r["step"] for r in lines] == [1] * 4 + [2] * 4
    last = lines[4:]
    rollout, scores = module.loop.last_rollout, module.loop.last_scores
    assert [r["completion"] for r in last] == rollout.completions
    assert [r["id"] for r in last] == [c.id for c in rollout.contexts]
    assert all(abs(r["rewards"]["length"] - len(c) / 100.0) < 1e-6 for r, c in zip(last, rollout.completions))
    assert [r["rewards"]["first"] for r in last] == [1.0, None, None, None]  # NaN is written as null
    assert [r["total"] for r in last] == scores.total.tolist()
    assert [r["advantage"] for r in last] == rollout.advantages.tolist()
    assert {"prompt", "solution", "task", "source", "completion_length", "truncated"} <= set(last[0])


def test_loggers_tensorboard_csv_and_wandb_offline_all_receive_the_metrics(samples, tmp_path, monkeypatch):
    from lightning.pytorch.loggers import CSVLogger, WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    seed_everything(0)
    module = GRPOModule(rewards=[LengthReward()], grpo=GRPOConfig(num_generations=2, max_completion_length=8, beta=0.0))
    loggers = [TensorBoardLogger(tmp_path / "tb"), CSVLogger(tmp_path / "csv"),
               WandbLogger(save_dir=str(tmp_path / "wb"), offline=True, project="lit-vr1-test")]
    trainer = Trainer(accelerator="cpu", max_steps=2, logger=loggers, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, DataLoader(samples[:4], batch_size=2, collate_fn=collate))
    import wandb

    wandb.finish()
    assert glob.glob(str(tmp_path / "tb" / "lightning_logs" / "version_0" / "events.out.tfevents.*"))
    csv_rows = open(glob.glob(str(tmp_path / "csv" / "lightning_logs" / "version_0" / "metrics.csv"))[0]).read()
    assert "train/reward/length/mean" in csv_rows and "train/loss" in csv_rows
    runs = glob.glob(str(tmp_path / "wb" / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert runs and b"train/reward/length/mean" in open(runs[0], "rb").read()
