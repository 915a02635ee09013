"""A synthetic folder shared by runs (``data.synthetic_dir``) is not drawn over while another
run reads it: two runs of other seeds started at once both trained on one seed's data, and a
run whose folder was redrawn mid-fit read the new images with its old rows (a new user's trial)."""

import json
import subprocess
import sys
import textwrap
import threading

import pytest
from lightning.pytorch import Callback, Trainer

from lit_vr1.config import GRPOConfig
from lit_vr1.data.datamodule import GroundingDataModule
from lit_vr1.data.folder_lock import DRAW_LOCK, SyntheticFolderInUse
from lit_vr1.data.synthetic import SyntheticSpec
from lit_vr1.grpo import GRPOModule
from lit_vr1.rewards import IoUReward


def data(folder, seed: int = 0) -> GroundingDataModule:
    return GroundingDataModule(synthetic=SyntheticSpec(num_samples=4, canvas=56, max_shapes=1, seed=seed),
                               synthetic_dir=str(folder), template="plain", batch_size=2, num_val_samples=2)


class StageOf:
    """What a Trainer's stage gives a data module: a trainer whose state names the stage."""

    class state:
        fn = "fit"

    world_size = 1
    lightning_module = None
    callbacks: list = []


def in_a_stage(dm: GroundingDataModule) -> GroundingDataModule:
    dm.trainer = StageOf()
    return dm


def stamp_seed(folder) -> int:
    return json.loads((folder / "train.spec.json").read_text())["seed"]


def test_a_redraw_while_another_module_reads_the_folder_is_refused_then_allowed_after_its_teardown(tmp_path):
    folder = tmp_path / "shared"
    reader = in_a_stage(data(folder, seed=1))
    reader.setup("fit")  # draws, holds the folder, reads its rows
    other = in_a_stage(data(folder, seed=2))
    with pytest.raises(SyntheticFolderInUse, match=r"shared: another run or data module is reading it.*draw its train "
                                                    r"split again under it \(seed 1 -> 2\).*a folder of its own"):
        other.prepare_data()
    assert stamp_seed(folder) == 1  # nothing drawn over the reader's images
    reader.teardown("fit")
    other.prepare_data()
    assert stamp_seed(folder) == 2
    with pytest.raises(ValueError, match="drawn again"):  # the first module's rows, used again, are refused as before
        reader.train_dataloader()


def test_modules_of_one_spec_read_one_folder_together(tmp_path):
    folder = tmp_path / "shared"
    first, second = in_a_stage(data(folder, seed=1)), in_a_stage(data(folder, seed=1))
    first.prepare_data()
    second.prepare_data()  # the same spec: nothing to draw, both hold it
    first.setup("fit"), second.setup("fit")
    assert len(first.train_set) == len(second.train_set) == 4


def test_a_module_outside_a_trainer_holds_nothing(tmp_path):
    """Direct use in a notebook (no Trainer): no hold, the stamp check after a redraw says it."""
    folder = tmp_path / "shared"
    data(folder, seed=1).setup("fit")
    in_a_stage(data(folder, seed=2)).prepare_data()
    assert stamp_seed(folder) == 2


def test_a_fit_holds_its_folder_until_it_ends(tmp_path):
    """In a real fit: a module of another seed is refused mid-fit, and draws once the fit is over."""
    folder = tmp_path / "shared"
    refused = []

    class Meanwhile(Callback):
        def on_train_start(self, trainer, pl_module):
            with pytest.raises(SyntheticFolderInUse) as info:
                in_a_stage(data(folder, seed=2)).prepare_data()
            refused.append(str(info.value))

    module = GRPOModule(model="tiny:qwen2_5_vl", rewards=[IoUReward()], min_pixels=3136, max_pixels=3136,
                        grpo=GRPOConfig(num_generations=2, max_completion_length=4, beta=0.0))
    Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, limit_val_batches=0, default_root_dir=tmp_path,
            callbacks=[Meanwhile()]).fit(module, datamodule=data(folder, seed=1))
    assert len(refused) == 1 and "seed 1 -> 2" in refused[0]
    in_a_stage(data(folder, seed=2)).prepare_data()  # the fit's teardown let the folder go
    assert stamp_seed(folder) == 2


HOLDER = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[2])
    from test_folder_lock import data, in_a_stage
    from pathlib import Path
    held = in_a_stage(data(Path(sys.argv[1]), seed=1))  # kept: a data module collected lets its folder go
    held.prepare_data()
    print("holding", flush=True)
    sys.stdin.readline()
""")


def test_another_process_reading_the_folder_refuses_a_redraw_and_a_killed_one_holds_nothing(tmp_path):
    folder, here = tmp_path / "shared", str(__import__("pathlib").Path(__file__).parent)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), here], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(SyntheticFolderInUse, match="seed 1 -> 2"):
            in_a_stage(data(folder, seed=2)).prepare_data()
    finally:
        holder.kill()
        holder.wait()
    in_a_stage(data(folder, seed=2)).prepare_data()  # killed: its lock went with it
    assert stamp_seed(folder) == 2


def test_a_module_waits_for_a_draw_in_progress(tmp_path):
    """Two runs started at once: the second checks the stamps only once the first has drawn."""
    import fcntl
    import os

    folder = tmp_path / "shared"
    folder.mkdir()
    fd = os.open(folder / DRAW_LOCK, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another run drawing
    done = []
    waiting = threading.Thread(target=lambda: (in_a_stage(data(folder, seed=1)).prepare_data(), done.append(1)))
    waiting.start()
    waiting.join(timeout=1.0)
    assert waiting.is_alive() and not done and not (folder / "train.jsonl").exists()
    os.close(fd)
    waiting.join(timeout=120)
    assert done and stamp_seed(folder) == 1


def test_a_folder_in_use_exits_75_and_a_setting_to_mend_2():
    """An unattended job told 'try again later' from 'mend the config' only by the message."""
    from lit_vr1.checkpoint import FolderInUse, FolderRefused
    from lit_vr1.cli import exit_status
    from lit_vr1.rules import ConfigError

    assert exit_status(SyntheticFolderInUse("x")) == exit_status(FolderInUse("x")) == 75
    assert exit_status(FolderRefused("cannot write")) == exit_status(ConfigError("x")) == 2


def test_a_data_module_collected_lets_its_folder_go(tmp_path):
    import gc

    folder = tmp_path / "shared"
    reader = in_a_stage(data(folder, seed=1))
    reader.prepare_data()
    with pytest.raises(SyntheticFolderInUse):
        in_a_stage(data(folder, seed=2)).prepare_data()
    del reader
    gc.collect()
    in_a_stage(data(folder, seed=2)).prepare_data()
    assert stamp_seed(folder) == 2


def test_a_predict_neither_draws_nor_holds_the_synthetic_folder(tmp_path):
    """predict reads data.predict_files: its data module drew the folder and held it (the review's finding)."""
    folder = tmp_path / "shared"
    reader = in_a_stage(data(folder, seed=1))
    reader.prepare_data()
    predict = data(folder, seed=2)
    predict.trainer = type("Predicting", (StageOf,), {"state": type("state", (), {"fn": "predict"})})()
    predict.prepare_data()  # not refused, and nothing drawn
    assert stamp_seed(folder) == 1 and predict._reading.fd is None


def test_a_two_process_fit_refused_a_folder_in_use_says_it_once_and_exits_75(tmp_path):
    """Only the first process draws (Lightning's prepare_data): its refusal left the other waiting
    in a collective, or dying with 'Connection closed by peer' (the review's finding). It is told to
    every process at setup, and said once."""
    from tests.test_resume import _env, fit_command

    folder, here = tmp_path / "shared", str(__import__("pathlib").Path(__file__).parent)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), here], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        out = tmp_path / "run"
        cmd = fit_command(out, out / "ckpt", folder, "--trainer.devices=2", "--trainer.strategy=ddp",
                          "--trainer.accelerator=cpu")
        proc = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode == 75, proc.stderr[-3000:]
    assert proc.stderr.count("another run or data module is reading it") == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and stamp_seed(folder) == 1
