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
