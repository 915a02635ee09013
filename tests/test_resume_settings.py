"""A resume that changes what the checkpoint's state would silently override is refused, each
difference named as its flag: the optimiser and LR scheduler settings (Lightning restores the
checkpoint's param groups over the configured ones, the learning rate included), and, mid-epoch,
what decides the training order (the resume skips the batches trained, counted in the
checkpoint's batches). The data module takes paths and lists of paths from Python. A Trainer
built in Python resumes as the CLI does with ``lit_vr1.checkpoint.resumable``."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

from lit_vr1.checkpoint import CheckpointError, resumable
from lit_vr1.data.datamodule import GroundingDataModule, collate
from lit_vr1.data.synthetic import SyntheticSpec
from lit_vr1.resume_optimisers import KEY, configured, differences
from tests.test_new_user import lit_vr1, small, train_small


# -- the optimiser's settings, as compared --------------------------------------------------------
def _built(optimizer, scheduler=None):
    opt = optimizer([torch.nn.Parameter(torch.ones(3))])
    return opt, scheduler(opt) if scheduler else None


def _saved(optimizer, scheduler=None, steps: int = 7) -> dict:
    """What a run saves in its checkpoints (its settings as built), then ``steps`` steps that
    move its learning rate, momentum and scheduler state: none of that is compared."""
    opt, sched = _built(optimizer, scheduler)
    saved = configured([opt], [sched] if sched else [])
    for _ in range(steps):
        opt.param_groups[0]["params"][0].grad = torch.ones(3)
        opt.step()
        if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
            sched.step(1.0)  # no improvement: the rate is cut
        elif sched is not None:
            sched.step()
    return saved


def _differences(saved: dict, optimizer, scheduler=None) -> list[str]:
    opt, sched = _built(optimizer, scheduler)
    return differences(saved, configured([opt], [sched] if sched else []))


def adamw(lr=3e-4, **kw):
    return lambda p: torch.optim.AdamW(p, lr=lr, **kw)


def cosine(t_max=10):
    return lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=t_max)


def test_the_configured_learning_rate_is_compared_not_the_one_the_scheduler_decayed():
    saved = _saved(adamw(), cosine())
    assert _differences(saved, adamw(), cosine()) == []
    warmup = lambda o: torch.optim.lr_scheduler.LinearLR(o, start_factor=0.1, total_iters=5)  # noqa: E731
    assert _differences(_saved(adamw(), warmup), adamw(), warmup) == []  # built at 0.1 x lr
    assert _differences(_saved(adamw()), adamw()) == []  # no scheduler
    assert _differences(saved, adamw(lr=0.1), cosine()) == [
        "model.optimizer.init_args.lr: 0.0003 in the checkpoint, 0.1 now"]
    assert _differences(_saved(adamw(), warmup), adamw(lr=0.1), warmup) == [
        "model.optimizer.init_args.lr: 0.0003 in the checkpoint, 0.1 now"]  # as configured, not x 0.1


@pytest.mark.parametrize("scheduler", [
    lambda o: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(o, T_0=3, T_mult=2),  # its period grows
    lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(o, patience=0),  # it cuts the rate
    lambda o: torch.optim.lr_scheduler.SequentialLR(o, [torch.optim.lr_scheduler.LinearLR(o, 0.1, total_iters=2),
                                                        torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=5)], [2]),
    lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda step: 0.9 ** step),
    lambda o: torch.optim.lr_scheduler.CyclicLR(o, 1e-4, 1e-3, step_size_up=2),
])
def test_what_training_moves_is_never_a_change(scheduler):
    optimizer = lambda p: torch.optim.SGD(p, lr=3e-4, momentum=0.9)  # noqa: E731
    assert _differences(_saved(optimizer, scheduler), optimizer, scheduler) == []


def test_every_changed_optimiser_and_scheduler_setting_is_named_as_its_flag():
    saved = _saved(adamw(), cosine())
    assert _differences(saved, adamw(lr=0.1, weight_decay=0.0, betas=(0.9, 0.95), eps=1e-6), cosine(20)) == [
        "model.optimizer.init_args.lr: 0.0003 in the checkpoint, 0.1 now",
        "model.optimizer.init_args.betas: [0.9, 0.999] in the checkpoint, [0.9, 0.95] now",
        "model.optimizer.init_args.eps: 1e-08 in the checkpoint, 1e-06 now",
        "model.optimizer.init_args.weight_decay: 0.01 in the checkpoint, 0.0 now",
        "model.lr_scheduler.init_args.T_max: 10 in the checkpoint, 20 now"]
    sgd = lambda p: torch.optim.SGD(p, lr=3e-4, momentum=0.9)  # noqa: E731
    assert _differences(saved, sgd, cosine()) == [
        "model.optimizer.class_path: torch.optim.adamw.AdamW in the checkpoint, torch.optim.sgd.SGD now"]
    assert _differences(saved, adamw()) == [
        "model.lr_scheduler: torch.optim.lr_scheduler.CosineAnnealingLR in the checkpoint, None now"]
    assert _differences(_saved(sgd), lambda p: torch.optim.SGD(p, lr=3e-4, momentum=0.5)) == [
        "model.optimizer.init_args.momentum: 0.9 in the checkpoint, 0.5 now"]
    cycle = lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.01, total_steps=10)  # noqa: E731
    other = lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.02, total_steps=10)  # noqa: E731
    assert "model.lr_scheduler.init_args.max_lr: 0.01 in the checkpoint, 0.02 now" in _differences(
        _saved(adamw(), cycle), adamw(), other)


def test_a_checkpoint_that_saved_no_settings_is_not_judged():
    now = configured(*map(lambda x: [x], _built(adamw(), cosine())))
    assert differences(None, now) == []  # weights only, or written before the settings were saved
    assert differences({"optimizer": ["torch.optim.adamw.AdamW"], "lr_scheduler": []}, now) == []  # classes only


# -- resumes with a Trainer: GRPO (manual optimisation) and SFT (automatic) ---------------------------
def _module(kind: str, lr: float = 3e-4, t_max: int | None = None):
    from lit_vr1.config import GRPOConfig
    from lit_vr1.grpo import GRPOModule
    from lit_vr1.sft import SFTModule
    from tests.helpers import LengthReward

    settings = dict(model="tiny:qwen2_5_vl", optimizer=adamw(lr), lr_scheduler=cosine(t_max) if t_max else None)
    if kind == "sft":
        return SFTModule(**settings)
    return GRPOModule(rewards=[LengthReward()], grpo=GRPOConfig(num_generations=2, max_completion_length=4),
                      **settings)


def _fit(module, data, root: Path, max_steps: int, ckpt_path=None, **trainer) -> Trainer:
    torch.manual_seed(0)
    ckpt = ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=1, save_last=True)
    fit = Trainer(accelerator="cpu", devices=1, max_steps=max_steps, logger=False, enable_progress_bar=False,
                  enable_model_summary=False, num_sanity_val_steps=0, callbacks=[ckpt, *trainer.pop("callbacks", [])],
                  **trainer)
    fit.fit(module, data, ckpt_path=ckpt_path)
    return fit


@pytest.mark.parametrize("kind", ["grpo", "sft"])
def test_a_resume_with_a_new_learning_rate_or_schedule_is_refused_and_one_without_goes_on(samples, tmp_path, kind):
    loader = DataLoader(samples[:8], batch_size=2, collate_fn=collate)
    _fit(_module(kind, t_max=10), loader, tmp_path, 2)
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert saved[KEY]["optimizer"] == ["torch.optim.adamw.AdamW"]
    assert saved[KEY]["lr_scheduler"] == ["torch.optim.lr_scheduler.CosineAnnealingLR"]
    with pytest.raises(CheckpointError) as refused:
        _fit(_module(kind, lr=0.1, t_max=20), loader, tmp_path, 3, ckpt_path="last")
    message = str(refused.value)
    assert ("model.optimizer.init_args.lr: 0.0003 in the checkpoint, 0.1 now; "
            "model.lr_scheduler.init_args.T_max: 10 in the checkpoint, 20 now. Resume without the change") in message
    assert f"python -m lit_vr1.export {tmp_path / 'ckpt' / 'last.ckpt'} <dir>" in message
    assert "--model.init_args.model=<dir>" in message
    assert torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["global_step"] == 2  # nothing trained
    trainer = _fit(_module(kind, t_max=10), loader, tmp_path, 3, ckpt_path="last")  # unchanged: goes on
    assert trainer.global_step == 3
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 3


def test_a_resume_with_other_grpo_settings_names_each_change(samples, tmp_path):
    """A config file's value over a flag the run was started with (num_iterations 2 -> 1) went on
    without a word: metrics.csv then held one curve of two objectives (helper-69)."""
    from lit_vr1.config import GRPOConfig
    from lit_vr1.grpo import GRPOModule
    from tests.helpers import LengthReward

    def module(**grpo):
        return GRPOModule(model="tiny:qwen2_5_vl", rewards=[LengthReward()], optimizer=adamw(),
                          grpo=GRPOConfig(num_generations=2, max_completion_length=4, **grpo))

    loader = DataLoader(samples[:8], batch_size=2, collate_fn=collate)
    _fit(module(num_iterations=2, mini_batch_size=2, micro_batch_size=2), loader, tmp_path, 2)
    with pytest.warns(UserWarning, match=r"this resume trains with other model.grpo settings than the checkpoint's "
                                         r"run: temperature 1.0 -> 0.5, num_iterations 2 -> 1, mini_batch_size 2 -> "
                                         r"None; give the run's own"):
        _fit(module(temperature=0.5), loader, tmp_path, 3, ckpt_path="last")
    with warnings.catch_warnings():  # the last run's settings, micro-batches aside (they change the speed only)
        warnings.filterwarnings("error", message="this resume trains with other")
        _fit(module(temperature=0.5, micro_batch_size=2), loader, tmp_path, 4, ckpt_path="last")


def test_a_ptst_run_resumes_without_a_settings_note(samples, tmp_path):
    """PTST sets the stage's G and length on the module's config, which the hyper_parameters hold too:
    every PTST resume warned of a change (helper-70). The checkpoint keeps the configured ones."""
    from callbacks import PTST
    from lit_vr1.config import GRPOConfig
    from lit_vr1.grpo import GRPOModule
    from tests.helpers import LengthReward

    def module():
        return GRPOModule(model="tiny:qwen2_5_vl", rewards=[LengthReward()], optimizer=adamw(),
                          grpo=GRPOConfig(num_generations=2, max_completion_length=4))

    stages = [{"max_completion_length": 3, "num_generations": 3, "steps": 10}]
    loader = DataLoader(samples[:8], batch_size=2, collate_fn=collate)
    _fit(module(), loader, tmp_path, 1, callbacks=[PTST(stages)])
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["hyper_parameters"]["grpo"]
    assert (saved["num_generations"], saved["max_completion_length"]) == (2, 4)  # configured, not stage 0's 3 and 3
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="this resume trains with other")
        trainer = _fit(module(), loader, tmp_path, 2, ckpt_path="last", callbacks=[PTST(stages)])
    assert trainer.lightning_module.config.num_generations == 3  # the stage in force


# -- the training order of a mid-epoch resume ---------------------------------------------------
class BatchIds(Callback):
    """The ids of every training batch, in order."""

    def __init__(self) -> None:
        self.ids: list[list[str]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.ids.append([s.id for s in batch])


def _data(root: Path, **kw) -> GroundingDataModule:
    settings = dict(synthetic=SyntheticSpec(num_samples=8, canvas=56, max_shapes=1), synthetic_dir=str(root / "data"),
                    template="plain", batch_size=2, num_val_samples=0, shuffle_seed=0)
    return GroundingDataModule(**{**settings, **kw})


def test_a_mid_epoch_resume_with_another_batch_size_or_shuffle_seed_is_refused(tmp_path):
    _fit(_module("sft"), _data(tmp_path), tmp_path, 3)  # 3 of the epoch's 4 batches
    with pytest.raises(CheckpointError) as refused:
        _fit(_module("sft"), _data(tmp_path, batch_size=1, shuffle_seed=5), tmp_path, 4, ckpt_path="last")
    message = str(refused.value)
    assert message.startswith("the checkpoint to resume was written by a run with another training order: "
                              "data.batch_size: 2 in the checkpoint, 1 now (the checkpoint is 3 batches into epoch 0); "
                              "data.shuffle_seed: 0 in the checkpoint, 5 now (the checkpoint is 3 batches into epoch 0; "
                              "data.shuffle_seed=0 goes on in its order)."), message
    assert torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["global_step"] == 3
    ids = BatchIds()
    _fit(_module("sft"), _data(tmp_path), tmp_path, 4, ckpt_path="last", callbacks=[ids])  # unchanged: goes on
    assert len(ids.ids) == 1


def test_a_resume_at_the_end_of_an_epoch_may_change_the_batch_size(tmp_path):
    whole = BatchIds()
    _fit(_module("sft"), _data(tmp_path / "whole"), tmp_path / "whole", 8, callbacks=[whole])  # two epochs of 4
    _fit(_module("sft"), _data(tmp_path), tmp_path, 4)  # the first epoch, to its end
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["GroundingDataModule"]
    assert saved["train_position"] == {"epoch": 1, "batches_done": 0}
    resumed = BatchIds()
    _fit(_module("sft"), _data(tmp_path, batch_size=4), tmp_path, 6, ckpt_path="last", callbacks=[resumed])
    second_epoch = [i for batch in whole.ids[4:] for i in batch]
    assert [i for batch in resumed.ids for i in batch] == second_epoch  # the same samples, in batches of 4
    assert [len(b) for b in resumed.ids] == [4, 4]


def test_the_training_order_does_not_depend_on_num_workers(tmp_path):
    def order(workers: int) -> list[str]:
        data = _data(tmp_path, num_workers=workers)
        data.setup("fit")
        loader = data.train_dataloader()
        return [s.id for epoch in range(2) for batch in loader for s in batch]

    assert order(0) == order(2)


# -- paths from Python -------------------------------------------------------------------------
def test_paths_and_lists_of_paths_are_kept_as_colon_separated_strings(tmp_path):
    from tests.test_data import _write, rec

    f1, d1 = _write(tmp_path, "one", [rec(1, "a.png")])
    f2, d2 = _write(tmp_path, "two", [rec(2, "b.png"), rec(3, "a.png")])
    dm = GroundingDataModule(train_files=[Path(f1), f2], train_images=(d1, Path(d2)), val_files=Path(f2),
                             val_images=d2, reward_methods=["rec", "rec"], predict_files=[f1], predict_images=Path(d1))
    assert (dm.train_files, dm.train_images) == (f"{f1}:{f2}", f"{d1}:{d2}")
    assert (dm.val_files, dm.val_images, dm.reward_methods) == (f2, d2, "rec:rec")
    assert (dm.predict_files, dm.predict_images) == (f1, d1)
    dm.setup("fit")
    assert len(dm.train_set) == 3 and len(dm.val_set) == 2
    assert GroundingDataModule(train_files="a.jsonl:b.jsonl", train_images="x:y").train_files == "a.jsonl:b.jsonl"


@pytest.mark.parametrize("kwargs, message", [
    ({"train_files": 3, "train_images": "img"},
     "data.train_files: got int; give a path, a ':'-separated string of paths, or a list of paths"),
    ({"train_files": ["a.jsonl", 3], "train_images": "img"}, "data.train_files: got a list holding int; give a path"),
    ({"train_files": "a.jsonl", "train_images": {"img"}}, "data.train_images: got set; give a path"),
    ({"train_files": [], "train_images": "img"}, "data.train_files: got an empty list; give a path"),
    ({"train_files": ["a:b.jsonl"], "train_images": "img"}, "data.train_files: 'a:b.jsonl' holds ':'"),
    ({"val_files": b"v.jsonl"}, "data.val_files: got bytes"),
    ({"reward_methods": Path("rec")}, "data.reward_methods: got PosixPath; give a task name, a ':'-separated string"),
])
def test_anything_else_is_refused_at_construction_naming_the_argument(kwargs, message):
    with pytest.raises(TypeError) as refused:
        GroundingDataModule(**{"synthetic": SyntheticSpec(num_samples=8), **kwargs})
    assert str(refused.value).startswith(message), refused.value


def test_the_cli_help_still_reads_the_data_modules_arguments(tmp_path):
    proc = lit_vr1(tmp_path, "fit", "--help")
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = lit_vr1(tmp_path, "fit", "--data.help")
    assert proc.returncode == 0 and "--train_files" in proc.stdout, proc.stderr[-3000:]


# -- a Trainer built in Python resumes as the CLI does --------------------------------------------
def test_a_resumable_trainer_resumes_from_python_and_its_metrics_go_on(tmp_path):
    from lit_vr1.config import GRPOConfig
    from lit_vr1.grpo import GRPOModule
    from tests.helpers import LengthReward

    def trainer(max_steps: int) -> Trainer:
        return resumable(Trainer(accelerator="cpu", max_steps=max_steps, default_root_dir=tmp_path / "run",
                                 logger=CSVLogger(tmp_path / "run", name="logs"), enable_progress_bar=False,
                                 enable_model_summary=False, log_every_n_steps=1,
                                 callbacks=[ModelCheckpoint(every_n_train_steps=2, save_last=True)]))

    def module() -> GRPOModule:
        return GRPOModule(rewards=[LengthReward()], grpo=GRPOConfig(num_generations=2, max_completion_length=4))

    with pytest.raises(CheckpointError, match="--ckpt_path last: there is no checkpoint to resume from in "):
        trainer(4).fit(module(), _data(tmp_path), ckpt_path="last")
    first = trainer(4)
    first.fit(module(), _data(tmp_path), ckpt_path="last_or_new")  # nothing yet: starts fresh
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    second = trainer(6)
    with warnings.catch_warnings(record=True) as seen:  # the folder holds checkpoints: it is resumed, as meant
        warnings.simplefilter("always")
        second.fit(module(), _data(tmp_path), ckpt_path="last")
    assert not [w for w in seen if "exists and is not empty" in str(w.message)]
    assert second.ckpt_path == str((tmp_path / "run" / "checkpoints" / "last.ckpt").resolve())
    assert second.global_step == 6
    rows = list(csv.DictReader(open(Path(second.logger.log_dir) / "metrics.csv")))
    assert Path(second.logger.log_dir).name == "version_1"
    assert [int(r["step"]) for r in rows if r.get("train/loss")] == [1, 2, 3, 4, 5, 6]  # the whole run, each step once


# -- the CLI -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two steps of the quickstart (8 batches of 2 per epoch: its checkpoints are mid-epoch)."""
    return train_small(tmp_path_factory, "run")


def test_the_cli_refuses_a_resume_with_a_new_learning_rate_and_keeps_no_log_folder(trained):
    logs = trained / "run" / "logs"
    before = sorted(p.name for p in logs.iterdir())
    proc = lit_vr1(trained, "fit", *small(trained / "run", trained / "data"), "--trainer.max_steps=3",
                   "--ckpt_path", "last", "--model.init_args.optimizer.init_args.lr=0.1")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "model.optimizer.init_args.lr: 0.0003 in the checkpoint, 0.1 now" in proc.stderr, proc.stderr[-3000:]
    assert "Resume without the change" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(p.name for p in logs.iterdir()) == before  # no version_N whose config.yaml says lr 0.1


def test_the_cli_refuses_a_mid_epoch_resume_with_another_batch_size(trained):
    proc = lit_vr1(trained, "fit", *small(trained / "run", trained / "data"), "--trainer.max_steps=3",
                   "--ckpt_path", "last", "--data.init_args.batch_size=1")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "another training order: data.batch_size: 2 in the checkpoint, 1 now" in proc.stderr, proc.stderr[-3000:]


def test_the_cli_takes_colon_separated_strings_as_before(trained):
    data = trained / "data"
    proc = lit_vr1(trained, "fit", *small(trained / "files", data), "--trainer.max_steps=1",
                   f"--data.init_args.train_files={data / 'train.jsonl'}:{data / 'train.jsonl'}",
                   f"--data.init_args.train_images={data / 'images'}:{data / 'images'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = next((trained / "files" / "logs").glob("version_*/config.yaml")).read_text()
    assert f"train_files: {data / 'train.jsonl'}:{data / 'train.jsonl'}" in config
