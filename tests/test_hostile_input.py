"""Hostile input (issue: reliability II): bytes that are not UTF-8, <image> markers, image
paths that leave their folder, cut-off JSON lines, user errors as one message, broken
checkpoints, ``--ckpt_path last`` without a checkpoint, and logs that survive a kill."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from test_bad_data import images, rec
from torch.utils.data import DataLoader

from lit_vr1.checkpoint import AtomicCheckpointIO, CheckpointError, check_checkpoint_file, load_checkpoint_file
from lit_vr1.data.jsonl import DataError, JsonlDataset
from lit_vr1.data.prompts import build_messages

ROOT = Path(__file__).resolve().parents[1]


def write_bytes(tmp_path, lines: list[bytes]) -> tuple[str, str]:
    folder = images(tmp_path / "img")
    path = tmp_path / "data.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return str(path), str(folder)


# ----------------------------------------------------------------- 1. UTF-8, per line


@pytest.mark.parametrize("bad", [b"\xff", "é".encode("latin-1")], ids=["0xff", "latin1_e_acute"])
def test_a_line_that_is_not_utf8_is_named_and_skippable(tmp_path, bad):
    good = rec(1).encode()
    broken = rec(2, human="<image>Where is the caf? ").encode().replace(b"caf", b"caf" + bad)
    column = broken.index(bad) + 1
    path, folder = write_bytes(tmp_path, [good, broken, rec(3).encode()])
    with pytest.raises(DataError, match=rf"data\.jsonl:2: not valid UTF-8 \(byte 0x{bad[0]:02x} at column {column}\)"):
        JsonlDataset(path, folder)
    ds = JsonlDataset(path, folder, bad_rows="skip")
    assert [r.id for r in ds.records] == ["1", "3"]
    assert "not valid UTF-8" in ds.skipped[0].reason and ds.skipped[0].id.endswith("data.jsonl:2")


def test_a_byte_order_mark_on_line_one_is_accepted(tmp_path):
    path, folder = write_bytes(tmp_path, [b"\xef\xbb\xbf" + rec(1).encode(), rec(2).encode()])
    assert [r.id for r in JsonlDataset(path, folder).records] == ["1", "2"]


# ----------------------------------------------------------------- 2. <image> markers place images


def test_markers_place_images_where_they_stand():
    content = build_messages("Is <image> brighter than <image>?", 2)[0]["content"]
    assert content == [{"type": "text", "text": "Is "}, {"type": "image"}, {"type": "text", "text": " brighter than "},
                       {"type": "image"}, {"type": "text", "text": "?"}]
    # one leading marker (the common REC layout) and no marker both put the image first
    for question in ("<image>Find the cat.", "Find the cat."):
        assert build_messages(question, 1)[0]["content"] == [{"type": "image"}, {"type": "text", "text": "Find the cat."}]
    with pytest.raises(ValueError, match="1 <image> marker"):
        build_messages("Is <image> bright?", 2)


def test_a_marker_count_that_differs_from_the_images_is_refused_naming_the_line(tmp_path):
    line = json.dumps({"id": 5, "image": ["a.png", "small.png"],
                       "conversations": [{"from": "human", "value": "Is <image> brighter?"},
                                         {"from": "gpt", "value": "yes"}]})
    path, folder = write_bytes(tmp_path, [rec(1).encode(), line.encode()])
    with pytest.raises(DataError, match=r"data\.jsonl:2: .* has 1 <image> marker\(s\) but field 'image' lists 2"):
        JsonlDataset(path, folder)


def test_two_markers_put_two_images_into_the_prompt_in_order(tmp_path):
    from lit_vr1.models.loading import load_processor

    line = json.dumps({"id": 5, "image": ["a.png", "small.png"],
                       "conversations": [{"from": "human", "value": "Is <image> brighter than <image>?"},
                                         {"from": "gpt", "value": "yes"}]})
    path, folder = write_bytes(tmp_path, [line.encode()])
    sample = JsonlDataset(path, folder)[0]
    processor = load_processor("tiny:qwen2_5_vl")
    text = processor.apply_chat_template(sample.messages, add_generation_prompt=True, tokenize=False)
    vision = "<|vision_start|><|image_pad|><|vision_end|>"
    assert f"Is {vision} brighter than {vision}?" in text


# ----------------------------------------------------------------- 3. paths that leave the image folder


def test_image_paths_outside_the_folder_are_refused_unless_allowed(tmp_path):
    folder = images(tmp_path / "img")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "b.png").write_bytes((folder / "a.png").read_bytes())
    for name in ("../other/b.png", str(tmp_path / "other" / "b.png")):
        path = tmp_path / "data.jsonl"
        path.write_text(rec(1, image=name) + "\n")
        with pytest.raises(DataError, match=r"data\.jsonl:1: field 'image': .* outside the image folder"):
            JsonlDataset(str(path), str(folder))
        assert len(JsonlDataset(str(path), str(folder), images_outside_folder=True)) == 1
    os.symlink(tmp_path / "other" / "b.png", folder / "link.png")  # a link that points out
    (tmp_path / "data.jsonl").write_text(rec(1, image="link.png") + "\n")
    with pytest.raises(DataError, match="outside the image folder"):
        JsonlDataset(str(tmp_path / "data.jsonl"), str(folder))
    (folder / "sub").mkdir()
    (tmp_path / "data.jsonl").write_text(rec(1, image="./sub/../a.png") + "\n")  # stays inside: fine
    assert len(JsonlDataset(str(tmp_path / "data.jsonl"), str(folder))) == 1


# ----------------------------------------------------------------- 4. a cut-off line


def test_a_cut_off_line_reports_the_unterminated_string(tmp_path):
    whole = rec(2)
    path, folder = write_bytes(tmp_path, [rec(1).encode(), whole[:38].encode()])
    with pytest.raises(DataError) as info:
        JsonlDataset(path, folder)
    message = str(info.value)
    assert "data.jsonl:2: not valid JSON (Unterminated string starting at column" in message
    assert "at at" not in message and "control character" not in message


# ----------------------------------------------------------------- 5, 6. the command line


def cli(tmp_path, *args, env=None):
    cmd = [sys.executable, "-m", "lit_vr1.cli", "fit", "--config", str(ROOT / "configs/quickstart.yaml"),
           "--trainer.max_steps=1", *args]
    return subprocess.run(cmd, cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT), **(env or {})),
                          capture_output=True, text=True, timeout=180)


@pytest.mark.parametrize("flag, message", [
    ("--data.init_args.bad_rows=ignore", "data.bad_rows='ignore' is not valid; choose raise"),
    ("--model.init_args.model=tiny:llava", "no tiny model of family 'llava'"),
    ("--model.init_args.model=/nowhere/model", "model '/nowhere/model': no such folder (read from "),
    ("--data.init_args.train_files=x.jsonl", "data.train_files needs data.train_images"),
    ("--model.init_args.dtype=foo", "model.dtype='foo' is not valid; choose one of float32, bfloat16, float16, auto"),
])
def test_user_errors_print_one_message_and_exit_2(tmp_path, flag, message):
    proc = cli(tmp_path, flag)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr and "Union subtypes" not in proc.stderr and "Namespace(" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 4  # Lightning's seed line, our message, the hint
    shown = cli(tmp_path, flag, env={"LIT_VR1_TRACEBACK": "1"})
    assert shown.returncode != 0 and "Traceback" in shown.stderr


def test_abbreviated_flags_are_refused(tmp_path):
    proc = cli(tmp_path, "--trainer.max_st=2", "--print_config")
    assert proc.returncode == 2 and "unrecognized arguments: --trainer.max_st=2" in proc.stderr


# ----------------------------------------------------------------- 7. broken checkpoints


def test_broken_checkpoints_are_named_with_the_newest_intact_one(tmp_path):
    good = tmp_path / "step=1.ckpt"
    torch.save({"global_step": 1, "w": torch.ones(2)}, good)
    empty, noise = tmp_path / "empty.ckpt", tmp_path / "last.ckpt"
    empty.write_bytes(b"")
    noise.write_bytes(random.Random(0).randbytes(4096))
    half = tmp_path / "half.ckpt"
    half.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    for path, what in ((empty, "is empty"), (noise, "is corrupt or incomplete"), (half, "is corrupt or incomplete")):
        for load in (check_checkpoint_file, load_checkpoint_file, AtomicCheckpointIO().load_checkpoint):
            with pytest.raises(CheckpointError) as info:
                load(str(path))
            message = str(info.value)
            assert str(path) in message and what in message and str(good) in message
            assert "weights_only=False" not in message
    assert load_checkpoint_file(str(good))["global_step"] == 1


def test_random_bytes_are_always_reported_as_a_broken_checkpoint(tmp_path):
    """Bytes that are not a zip archive reach torch's legacy unpickler, where arbitrary noise fails
    with whatever its opcodes trip on (IndexError, KeyError, struct.error, ...): every one of them
    must come out as the one CheckpointError naming the file, never as a raw traceback."""
    good = tmp_path / "step=1.ckpt"
    torch.save({"global_step": 1}, good)
    noise = tmp_path / "last.ckpt"
    for seed in range(300):
        noise.write_bytes(random.Random(seed).randbytes(64 + seed * 13))
        for load in (load_checkpoint_file, AtomicCheckpointIO().load_checkpoint):
            with pytest.raises(CheckpointError) as info:
                load(str(noise))
            assert str(noise) in str(info.value) and str(good) in str(info.value), seed


class Payload:
    """Unpickled, it would call print: code a checkpoint must never run."""

    def __reduce__(self):
        return (print, ("this ran",))


def test_a_checkpoint_with_code_in_it_is_refused_without_unsafe_advice(tmp_path, capsys):
    path = tmp_path / "evil.ckpt"
    torch.save({"global_step": 1, "payload": Payload()}, path)  # an object a weights-only load refuses
    for load in (load_checkpoint_file, AtomicCheckpointIO().load_checkpoint):
        with pytest.raises(CheckpointError) as info:
            load(str(path))
        message = str(info.value)
        assert "weights-only load refuses" in message and "an object of print" in message, message
        assert "weights_only=False" not in message
    assert "this ran" not in capsys.readouterr().out
    # the settings lit-vr1's modules save from Python are read (paths among them)
    torch.save({"global_step": 1, "root": Path("runs/x")}, path)
    assert load_checkpoint_file(str(path))["root"] == Path("runs/x")


def test_cli_resume_from_a_corrupt_last_ckpt_is_one_message(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "last.ckpt").write_bytes(random.Random(1).randbytes(1000))
    proc = cli(tmp_path, f"--ckpt_path={ckpt / 'last.ckpt'}")
    assert proc.returncode == 2 and "is corrupt or incomplete" in proc.stderr
    assert "weights_only=False" not in proc.stderr and "Traceback" not in proc.stderr


# ----------------------------------------------------------------- 8. --ckpt_path last without a checkpoint


def test_ckpt_path_last_without_a_checkpoint_is_an_error_and_last_or_new_starts_fresh(tmp_path):
    ckpt = tmp_path / "none_yet"
    common = [f"--trainer.default_root_dir={tmp_path}", f"--trainer.logger.init_args.save_dir={tmp_path}",
              "--trainer.callbacks=[{class_path: lightning.pytorch.callbacks.ModelCheckpoint, init_args: "
              f"{{dirpath: {ckpt}, save_last: true}}}}]", "--trainer.limit_val_batches=0",
              "--trainer.enable_progress_bar=false", f"--data.init_args.synthetic_dir={tmp_path / 'data'}",
              "--data.init_args.synthetic.num_samples=8", "--data.init_args.num_val_samples=0",
              "--data.init_args.batch_size=2", "--model.init_args.grpo.max_completion_length=4",
              "--model.init_args.grpo.num_generations=2"]
    proc = cli(tmp_path, *common, "--ckpt_path=last")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "--ckpt_path last: there is no checkpoint to resume from in" in proc.stderr and "last_or_new" in proc.stderr
    assert "there is no last checkpoint available" not in proc.stderr  # Lightning's warning: said once, above
    validate = subprocess.run([sys.executable, "-m", "lit_vr1.cli", "validate", "--config",
                               str(ROOT / "configs/quickstart.yaml"), *common, "--ckpt_path=last"], cwd=tmp_path,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=180)
    assert validate.returncode == 2 and "--ckpt_path last: there is no checkpoint in" in validate.stderr
    assert "train one first" in validate.stderr and "last_or_new" not in validate.stderr
    fresh = cli(tmp_path, *common, "--ckpt_path=last_or_new")
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert (ckpt / "last.ckpt").is_file()
    again = cli(tmp_path, *common, "--ckpt_path=last_or_new", "--trainer.max_steps=2")  # now it resumes
    assert again.returncode == 0 and "Restoring states from the checkpoint path" in again.stdout + again.stderr


# ----------------------------------------------------------------- 9. logs that survive a kill and a resume


def test_rollout_log_lives_in_the_log_folder_and_a_resume_drops_unsaved_steps(samples, tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    from callbacks import RolloutLog
    from lit_vr1.data.datamodule import collate
    from lit_vr1.grpo import GRPOConfig, GRPOModule
    from tests.helpers import LengthReward

    def trainer(max_steps):  # a resume gets a new logger version, as the CLI's runs do
        return Trainer(accelerator="cpu", max_steps=max_steps, logger=CSVLogger(tmp_path, name="logs"),
                       callbacks=[RolloutLog(), ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True,
                                                                every_n_train_steps=1)],
                       enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)

    def module():
        seed_everything(0)
        return GRPOModule(rewards=[LengthReward()], grpo=GRPOConfig(num_generations=2, max_completion_length=4, beta=0.0))

    loader = DataLoader(samples[:8], batch_size=2, collate_fn=collate)
    trainer(2).fit(module(), loader)
    log = tmp_path / "logs" / "version_0" / "rollouts.jsonl"
    assert log.is_file() and not Path("rollouts.jsonl").exists()
    # a killed run got past its last checkpoint: step 3 was logged but never saved, and its last line was cut
    with open(log, "a") as f:
        f.write(json.dumps({"step": 3, "id": "lost"}) + "\n" + '{"step": 3, "id": "cu')
    trainer(3).fit(module(), loader, ckpt_path="last")
    resumed_log = tmp_path / "logs" / "version_1" / "rollouts.jsonl"
    steps = [json.loads(line)["step"] for path in (log, resumed_log) for line in path.read_text().splitlines()]
    assert steps == [1] * 4 + [2] * 4 + [3] * 4  # each step once, in order, over the two runs' files
    assert "lost" not in log.read_text()
