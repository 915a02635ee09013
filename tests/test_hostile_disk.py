"""What a hostile cluster does to a fit (a new user's trial, helper-76): a kill during the export
at a fit's end, a full disk, a kill between two checkpoint writes, another recipe's checkpoint."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from lit_vr1.checkpoint import CheckpointError, files_written_whole, newer_than_last
from tests.test_new_user import ROOT, lit_vr1, small


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def test_a_resume_with_no_step_left_makes_the_export_a_killed_run_left_undone(tmp_path):
    """Killed (or Ctrl-C'd) during its export, a run left last.ckpt at max_steps; the resume it was
    told to run trained nothing, exported nothing and exited 0."""
    root, data, out = tmp_path / "run", tmp_path / "data", tmp_path / "hf"
    args = [*small(root, data), f"--model.init_args.export_dir={out}"]
    first = lit_vr1(tmp_path, "fit", *args)
    assert first.returncode == 0, first.stderr[-2000:]
    exported = _tensors(out)
    assert exported
    for f in out.iterdir():  # what a kill before the export's files were written leaves
        f.unlink()
    again = lit_vr1(tmp_path, "fit", *args, "--ckpt_path", "last")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "the resumed fit had no step left: exporting its checkpoint's weights" in again.stderr, again.stderr[-2000:]
    redone = _tensors(out)
    assert redone.keys() == exported.keys() and all(torch.equal(redone[k], exported[k]) for k in exported)
    assert (out / "config.json").is_file() and not list(tmp_path.glob(".hf.tmp-*"))


def test_a_folder_written_whole_replaces_each_file_or_none(tmp_path):
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "model.safetensors").write_text("old")
    (folder / "README.md").write_text("the user's own")
    with pytest.raises(RuntimeError):  # a failure mid-write: the old file stays whole
        with files_written_whole(str(folder)) as tmp:
            Path(tmp, "model.safetensors").write_text("half")
            raise RuntimeError("killed")
    assert (folder / "model.safetensors").read_text() == "old"
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "model.safetensors"]  # no temporary folder left
    (folder / "model-00002-of-00002.safetensors").write_text("an earlier export's second shard")
    with files_written_whole(str(folder)) as tmp:
        assert Path(tmp).parent == folder  # written inside: the same file system and permissions
        Path(tmp, "model.safetensors").write_text("new")
        Path(tmp, "sub").mkdir()
        Path(tmp, "sub", "x.json").write_text("{}")
    assert (folder / "model.safetensors").read_text() == "new" and (folder / "sub" / "x.json").is_file()
    assert (folder / "README.md").read_text() == "the user's own"  # files the export does not write stay
    assert not (folder / "model-00002-of-00002.safetensors").exists()  # a stale shard goes, as save_pretrained's


FULL_DISK = """
import os, resource, sys, torch
from lit_vr1.checkpoint import CheckpointError, atomic_torch_save
from lit_vr1.sft import SFTModule
path = sys.argv[1]
atomic_torch_save({"w": torch.zeros(10)}, path)
module = SFTModule(model="tiny:qwen2_5_vl")
module.configure_model()
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))  # a file past 200 kB: EFBIG, as a full disk's ENOSPC
for write in (lambda: atomic_torch_save({"w": torch.zeros(1_000_000)}, path), lambda: module.export(sys.argv[2])):
    try:
        write()
        print("written")
    except CheckpointError as e:
        print(e)
"""


def test_a_write_the_disk_refuses_is_one_message_naming_the_file_and_the_old_checkpoint_stays(tmp_path):
    """A full disk ended a fit in a 68-line traceback (torch's 'unexpected pos'), naming no file."""
    ckpt, export = tmp_path / "last.ckpt", tmp_path / "hf"
    proc = subprocess.run([sys.executable, "-c", FULL_DISK, str(ckpt), str(export)], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1"), timeout=300)
    lines = proc.stdout.splitlines()
    assert lines[0] == (f"could not write the checkpoint {ckpt}: File too large; the checkpoint there before is kept "
                        "as it was. Free space there (or raise the file-size limit), or write elsewhere "
                        "(--trainer.default_root_dir=<dir>)"), proc.stdout + proc.stderr[-2000:]
    assert lines[1].startswith(f"could not write the export {export}: File too large"), lines
    assert torch.equal(torch.load(ckpt)["w"], torch.zeros(10))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "last.ckpt"] and not list(export.iterdir())


def test_last_resumes_from_a_checkpoint_written_after_it_and_not_from_a_best_models_save(tmp_path):
    """Killed between a step checkpoint's write and last.ckpt's, a run resumed steps earlier, silently."""
    last, later, best = tmp_path / "last.ckpt", tmp_path / "epoch=0-step=6.ckpt", tmp_path / "best.ckpt"
    state = {"optimizer_states": [], "loops": {}}
    torch.save({"global_step": 3, **state}, last)
    torch.save({"global_step": 6, **state}, later)
    os.utime(last, (1000, 1000))
    with pytest.warns(UserWarning, match=r"epoch=0-step=6.ckpt was written after .*last.ckpt .*resuming from it"):
        assert newer_than_last(str(last), str(later), "last") == str(later)
    torch.save({"global_step": 3, **state}, best)  # the same step saved again (a monitored best model): last.ckpt stays
    assert newer_than_last(str(last), str(best), "last") == str(last)
    weights = tmp_path / "weights-step=7.ckpt"  # a save_weights_only file: a fit cannot resume it
    torch.save({"global_step": 7, "state_dict": {}}, weights)
    assert newer_than_last(str(last), str(weights), "last") == str(last)
    later.write_bytes(later.read_bytes()[:50])  # cut: no candidate
    assert newer_than_last(str(last), str(later), "last") == str(last)


def test_last_resumes_from_the_newest_checkpoint_when_the_first_last_ckpt_was_never_written_whole(tmp_path):
    root, data = tmp_path / "run", tmp_path / "data"
    first = lit_vr1(tmp_path, "fit", *small(root, data))
    assert first.returncode == 0, first.stderr[-2000:]
    (root / "checkpoints" / "last.ckpt").unlink()  # the kill hit its first write
    again = lit_vr1(tmp_path, "fit", *small(root, data), "--trainer.max_steps=3", "--ckpt_path", "last")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "there is no last.ckpt" in again.stderr and "resuming from the newest checkpoint" in again.stderr
    assert "does not save_last" not in again.stderr
    assert torch.load(root / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 3


def test_a_checkpoint_of_the_other_recipe_is_refused_as_such():
    from lit_vr1.grpo import GRPOModule
    from lit_vr1.sft import SFTModule

    trainer = SimpleNamespace(state=SimpleNamespace(fn="fit"), ckpt_path="runs/sft/checkpoints/last.ckpt")
    grpo = GRPOModule(model="tiny:qwen2_5_vl")
    grpo._trainer = trainer
    with pytest.raises(CheckpointError, match=r"last.ckpt is a checkpoint of an SFT run \(lit_vr1.sft.SFTModule\), and "
                                              r"this fit is GRPO \(GRPOModule\).*python -m lit_vr1.export"):
        grpo.refuse_other_recipe({"lit_vr1_module_class": "lit_vr1.sft.SFTModule"})
    grpo.refuse_other_recipe({"lit_vr1_module_class": "lit_vr1.grpo.GRPOModule"})  # its own: no word
    sft = SFTModule(model="tiny:qwen2_5_vl")
    sft._trainer = trainer
    with pytest.raises(CheckpointError, match="is a checkpoint of a GRPO run"):
        sft.refuse_other_recipe({"hyper_parameters": {"_class_path": "lit_vr1.grpo.GRPOModule"}})


def test_a_second_fit_into_a_folder_another_process_fits_into_is_refused(tmp_path):
    """Two fits started at once into one folder both ran (last.ckpt beside last-v1.ckpt, one export)."""
    from lit_vr1.checkpoint import LOCK_NAME, lock_checkpoint_folders, release_checkpoint_folders

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(folder / LOCK_NAME)!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, str(os.getpid()).encode())\n"
        "print('held', flush=True); time.sleep(120)\n")], stdout=subprocess.PIPE, text=True)
    trainer = SimpleNamespace(world_size=1, checkpoint_callbacks=[SimpleNamespace(dirpath=str(folder))])
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(CheckpointError, match=rf"another fit \(process {holder.pid}\) is writing checkpoints into "
                                                  rf"{folder}: wait for it to end"):
            lock_checkpoint_folders(trainer)
    finally:
        holder.kill()
        holder.wait()
    lock_checkpoint_folders(trainer)  # its holder gone: this one takes it, and takes it again in the same process
    lock_checkpoint_folders(trainer)
    assert (folder / LOCK_NAME).read_text() == str(os.getpid())
    release_checkpoint_folders()


def test_a_second_kill_leaves_each_rollout_step_logged_once(tmp_path):
    """Killed at step 7 (checkpoint at 6), resumed into version_1 and killed again at step 8 before
    a checkpoint, then resumed into version_2: steps 7 and 8 stayed in version_1 beside
    version_2's own (each logged twice)."""
    import json

    from callbacks.rollout_log import RolloutLog

    logs = tmp_path / "logs"

    def write(version, steps):
        folder = logs / f"version_{version}"
        folder.mkdir(parents=True)
        (folder / "rollouts.jsonl").write_text("".join(json.dumps({"step": s}) + "\n" for s in steps))

    write(0, [1, 2, 3, 4, 5, 6, 7])  # the first run, killed at 7
    write(1, [7, 8])  # its resume from step 6, killed at 8
    write(9, [1, 2])  # an earlier run's folder in the same root: not this lineage's (it starts at step 1)
    log = RolloutLog()
    log._resumed_from_file = str(logs / "version_0" / "rollouts.jsonl")  # what the checkpoint at step 6 records
    trainer = SimpleNamespace(ckpt_path="last.ckpt", global_step=6, logger=object(), log_dir=str(logs / "version_2"),
                              default_root_dir=str(tmp_path), world_size=1, global_rank=0)
    log.on_train_start(trainer, None)

    def steps(version):
        return [json.loads(line)["step"] for line in open(logs / f"version_{version}" / "rollouts.jsonl")]

    assert steps(0) == [1, 2, 3, 4, 5, 6] and steps(1) == [] and steps(9) == [1, 2]


def test_each_process_of_a_resume_tidies_its_own_file_of_the_killed_run(tmp_path):
    """Two processes killed at step 9 (checkpoint at 8): the checkpoint records rank 0's file, and
    rank 1's kept step 9, which the resume logs again (helper-79)."""
    import json

    from callbacks.rollout_log import RolloutLog

    logs = tmp_path / "logs"
    (logs / "version_0").mkdir(parents=True)
    for rank in (0, 1):
        (logs / "version_0" / f"rollouts.rank{rank}.jsonl").write_text(
            "".join(json.dumps({"step": s, "rank": rank}) + "\n" for s in range(1, 10)))
    for rank in (0, 1):
        log = RolloutLog()
        log._resumed_from_file = str(logs / "version_0" / "rollouts.rank0.jsonl")  # the checkpoint's (rank 0's)
        trainer = SimpleNamespace(ckpt_path="last.ckpt", global_step=8, logger=object(),
                                  log_dir=str(logs / "version_1"), default_root_dir=str(tmp_path), world_size=2,
                                  global_rank=rank)
        log.on_train_start(trainer, None)
    for rank in (0, 1):
        lines = (logs / "version_0" / f"rollouts.rank{rank}.jsonl").read_text().splitlines()
        assert [json.loads(line)["step"] for line in lines] == list(range(1, 9)), rank


def test_a_fit_that_raises_lets_its_folders_lock_go():
    """Lightning runs no teardown when a fit raises: the lock stayed with an idle notebook kernel."""
    import tempfile

    from lit_vr1 import checkpoint
    from lit_vr1.quiet import NoticesBackOnError
    from lit_vr1.sft import SFTModule

    folder = tempfile.mkdtemp()
    checkpoint.lock_checkpoint_folders(SimpleNamespace(world_size=1, checkpoint_callbacks=[SimpleNamespace(dirpath=folder)]))
    assert folder in checkpoint._FOLDER_LOCKS
    NoticesBackOnError().on_exception(None, SFTModule(model="tiny:qwen2_5_vl"), RuntimeError("a step failed"))
    assert folder not in checkpoint._FOLDER_LOCKS and not os.path.exists(os.path.join(folder, checkpoint.LOCK_NAME))


def test_a_folder_setting_that_is_a_file_is_one_line_and_a_refused_fit_leaves_no_folder(tmp_path, capsys):
    """A logger folder that is a file: a 42-line traceback ending in NotADirectoryError, and the
    refused fit left <root>/checkpoints/ holding its lock file (helper-81)."""
    from lit_vr1.cli import main

    (tmp_path / "notadir").write_text("hi")
    root = tmp_path / "new" / "run"
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", str(ROOT / "configs/quickstart.yaml"), f"--trainer.default_root_dir={root}",
              f"--trainer.logger.init_args.save_dir={tmp_path / 'notadir'}", "--trainer.max_steps=1",
              f"--data.synthetic_dir={tmp_path / 'data'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2
    assert err[0] == (f"lit-vr1: error: {tmp_path / 'notadir'} is a file, and the run writes into "
                      f"{tmp_path / 'notadir' / 'logs'} as a folder: give the folder settings (--trainer.default_root_dir, "
                      "the logger's save_dir, model.export_dir, ...) a path that is not a file"), err
    assert not (tmp_path / "new").exists()  # the folders the lock made went with it, empty
    from lit_vr1 import checkpoint

    made = tmp_path / "made" / "deeper"
    checkpoint.lock_checkpoint_folders(SimpleNamespace(world_size=1, checkpoint_callbacks=[SimpleNamespace(dirpath=str(made))]))
    (made / "step=1.ckpt").write_text("x")  # a checkpoint saved: the folder stays
    checkpoint.release_checkpoint_folders()
    assert (made / "step=1.ckpt").exists() and not (made / checkpoint.LOCK_NAME).exists()


def test_only_a_folder_being_made_is_told_as_a_file_in_the_way(tmp_path):
    """Any FileExistsError naming a file read as the folder message, its traceback hidden (helper-83)."""
    from lit_vr1.cli import file_in_the_way

    blob = tmp_path / "blob"
    blob.write_text("x")
    for make in (lambda: os.makedirs(blob / "logs", exist_ok=True), lambda: os.makedirs(blob, exist_ok=True)):
        with pytest.raises(OSError) as made:
            make()
        assert "is a file, and the run writes into" in str(file_in_the_way(made.value))
    for other in (lambda: open(blob, "x"), lambda: os.symlink(tmp_path / "elsewhere", blob)):
        with pytest.raises(FileExistsError) as err:
            other()
        assert file_in_the_way(err.value) is None


def test_a_branch_of_another_run_does_not_write_over_its_export(tmp_path):
    """A fit resuming run A's checkpoint into a new root took A's export_dir with A's settings and
    wrote its model over A's export (helper-85); a resume of the run's own checkpoint exports as before."""
    from lit_vr1.checkpoint import SELECTED, export_of_another_run

    a, b = tmp_path / "runA", tmp_path / "runB"
    (a / "checkpoints").mkdir(parents=True)
    (a / "hf_model").mkdir()
    (a / "checkpoints" / "last.ckpt").write_bytes(b"x")

    def trainer(root, ckpt):
        return SimpleNamespace(checkpoint_callbacks=[SimpleNamespace(dirpath=str(root / "checkpoints"))],
                               **{SELECTED: str(ckpt) if ckpt else None})

    ckpt = a / "checkpoints" / "last.ckpt"
    assert export_of_another_run(trainer(b, ckpt), str(a / "hf_model")) is None  # nothing exported there yet
    (a / "hf_model" / "config.json").write_text("{}")
    refused = export_of_another_run(trainer(b, ckpt), str(a / "hf_model"))
    assert refused.startswith(f"model.export_dir={a / 'hf_model'} already holds a model, and this fit resumes {ckpt}")
    assert "--model.init_args.export_dir=<folder>" in refused
    assert export_of_another_run(trainer(a, ckpt), str(a / "hf_model")) is None  # its own run
    assert export_of_another_run(trainer(b, None), str(a / "hf_model")) is None  # no resume
    assert export_of_another_run(trainer(b, ckpt), str(b / "hf_model")) is None  # a folder of its own


def test_a_rollback_keeps_the_abandoned_runs_rollout_lines_beside_its_file(tmp_path):
    """A resume from step 10 beside the run's step-25 checkpoints emptied the rollouts.jsonl of
    the run that went on (helper-85); a crash's resume still drops the replayed steps."""
    import json

    from callbacks.rollout_log import RolloutLog
    from lit_vr1.checkpoint import ROLLBACK

    logs = tmp_path / "logs"
    (logs / "version_0").mkdir(parents=True)
    (logs / "version_0" / "rollouts.jsonl").write_text("".join(json.dumps({"step": s}) + "\n" for s in range(1, 26)))

    def resume(rollback):
        log = RolloutLog()
        log._resumed_from_file = str(logs / "version_0" / "rollouts.jsonl")
        trainer = SimpleNamespace(ckpt_path="mine.ckpt", global_step=10, logger=object(),
                                  log_dir=str(logs / "version_1"), default_root_dir=str(tmp_path), world_size=1,
                                  global_rank=0, **{ROLLBACK: 10 if rollback else None})
        log.on_train_start(trainer, None)

    def steps(name):
        return [json.loads(line)["step"] for line in open(logs / "version_0" / name)]

    resume(rollback=True)
    assert steps("rollouts.jsonl") == list(range(1, 11))
    assert steps("rollouts.abandoned-after-step10.jsonl") == list(range(11, 26))
    (logs / "version_0" / "rollouts.abandoned-after-step10.jsonl").unlink()
    (logs / "version_0" / "rollouts.jsonl").write_text("".join(json.dumps({"step": s}) + "\n" for s in range(1, 13)))
    resume(rollback=False)  # a killed run's resume: steps 11 and 12 are trained again, their old lines dropped
    assert steps("rollouts.jsonl") == list(range(1, 11))
    assert not (logs / "version_0" / "rollouts.abandoned-after-step10.jsonl").exists()


def test_a_moved_run_folder_still_finds_its_metrics_for_the_resumed_curve(tmp_path):
    """The checkpoint named the killed run's metrics.csv by its absolute path: after the run folder
    moved, the resumed metrics.csv began at the checkpoint's step without a word (helper-86)."""
    from lit_vr1.log_dirs import metrics_under_root, resumed_metrics

    old, new = tmp_path / "cwdA" / "runs" / "a1", tmp_path / "cwdB" / "runs" / "a1"
    (old / "logs" / "version_0").mkdir(parents=True)
    csv = old / "logs" / "version_0" / "metrics.csv"
    csv.write_text("step,loss\n1,0.5\n")
    from lightning.pytorch.loggers import CSVLogger

    trainer = SimpleNamespace(global_rank=0, default_root_dir=str(old),
                              loggers=[CSVLogger(str(old), name="logs", version=0)])
    assert metrics_under_root(trainer) == os.path.join("logs", "version_0", "metrics.csv")
    assert resumed_metrics(str(csv), "logs/version_0/metrics.csv", str(old)) == (str(csv), None)
    (tmp_path / "cwdA").rename(tmp_path / "cwdB")
    assert resumed_metrics(str(csv), "logs/version_0/metrics.csv", str(new)) == (
        str(new / "logs" / "version_0" / "metrics.csv"), None)
    path, note = resumed_metrics(str(csv), None, str(new))  # a checkpoint of before 2026-12-07: said
    assert path is None and note.startswith(f"the metrics.csv of the run this fit resumes is not at {csv}")
    assert resumed_metrics(None, None, str(new)) == (None, None)  # no CSV logger then: nothing to say


def test_a_model_folder_given_as_the_checkpoint_is_said_as_such(tmp_path):
    """--ckpt_path <an export>: "sharded checkpoint ... .metadata, meta.pt missing", or a weights
    file "corrupt or incomplete (3182968 bytes ...)" (helper-85)."""
    from lit_vr1.checkpoint import check_checkpoint_file, check_sharded_folder

    export = tmp_path / "stageA_model"
    export.mkdir()
    (export / "config.json").write_text("{}")
    (export / "model.safetensors").write_bytes(b"x" * 100)
    for check, path in ((check_sharded_folder, export), (check_checkpoint_file, export),
                        (check_checkpoint_file, export / "model.safetensors")):
        with pytest.raises(CheckpointError, match=rf"not a training checkpoint: start a new fit from it with "
                                                  rf"--model.init_args.model={export}, without --ckpt_path"):
            check(str(path))
    (tmp_path / "x.ckpt").write_bytes(b"x" * 100)  # a broken checkpoint is still said as one
    with pytest.raises(CheckpointError, match="is corrupt or incomplete"):
        check_checkpoint_file(str(tmp_path / "x.ckpt"))


def test_a_checkpoint_folder_that_cannot_be_written_is_one_line(tmp_path, monkeypatch):
    """A read-only root: a 40-line PermissionError traceback from the folder's lock (helper-89; as
    root here, chmod does not stop a write, so the refusal is simulated)."""
    from lit_vr1.checkpoint import FolderRefused, lock_checkpoint_folders

    def refused(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(os, "makedirs", refused)
    trainer = SimpleNamespace(world_size=1, checkpoint_callbacks=[SimpleNamespace(dirpath=str(tmp_path / "ro" / "ckpt"))])
    with pytest.raises(FolderRefused, match=r"cannot write into the checkpoint folder .*ckpt \(Permission denied: "
                                            r".*\): give --trainer.default_root_dir"):
        lock_checkpoint_folders(trainer)


def test_every_process_hears_why_the_first_could_not_take_the_folder(tmp_path, monkeypatch):
    """Under several processes the first takes the lock and broadcasts the outcome: any error of
    its own (a read-only mount's EROFS, not only another fit's lock) reaches the others, which
    waited in the broadcast (helper-90's review)."""
    import errno

    from lit_vr1 import checkpoint
    from lit_vr1.checkpoint import FolderRefused, lock_folders_of_processes

    told = []

    def trainer(rank):
        return SimpleNamespace(world_size=2, global_rank=rank, checkpoint_callbacks=[
            SimpleNamespace(dirpath=str(tmp_path / "ckpt"))], strategy=SimpleNamespace(
            broadcast=lambda obj, src: told.append(obj) or (told[0] if rank else obj)))

    def read_only(path, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(os, "makedirs", read_only)
    with pytest.raises(FolderRefused, match="Read-only file system"):
        lock_folders_of_processes(trainer(0))
    with pytest.raises(FolderRefused, match="Read-only file system"):  # the second process: what the first said
        lock_folders_of_processes(trainer(1))
    monkeypatch.setattr(checkpoint, "_checkpoint_folders", lambda t: 1 / 0)
    told.clear()
    with pytest.raises(FolderRefused, match="ZeroDivisionError"):
        lock_folders_of_processes(trainer(0))

