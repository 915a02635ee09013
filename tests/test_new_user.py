"""A new user's silent traps: flags that a checkpoint used to override, checkpoint folders
shared by unrelated runs, and a resume that picked up another run's checkpoint."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def lit_vr1(cwd: Path, *args: str, module: str = "lit_vr1.cli") -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def small(root: Path, data: Path, *extra: str) -> list[str]:
    """The quickstart, two tiny steps, everything under ``root`` (no dirpath given: the
    checkpoints go to <root>/checkpoints)."""
    return ["--config", str(ROOT / "configs/quickstart.yaml"), "--trainer.max_steps=2", "--trainer.limit_val_batches=1",
            "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={root}",
            f"--trainer.logger.init_args.save_dir={root}", f"--data.init_args.synthetic_dir={data}",
            "--data.init_args.synthetic.num_samples=16", "--data.init_args.num_val_samples=4",
            "--data.init_args.batch_size=2", "--data.init_args.val_batch_size=2",
            "--model.init_args.grpo.max_completion_length=4", "--model.init_args.grpo.num_generations=2",
            "--trainer.callbacks=[{class_path: lightning.pytorch.callbacks.ModelCheckpoint,"
            " init_args: {save_last: true, every_n_train_steps: 1}}]", *extra]


def train_small(tmp_path_factory, run: str) -> Path:
    """A folder holding ``run``: two steps of :func:`small` trained by the command, its data beside."""
    work = tmp_path_factory.mktemp("trained")
    proc = lit_vr1(work, "fit", *small(work / run, work / "data"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_small(tmp_path_factory, "run_a")


def test_checkpoints_live_under_the_run_root(trained):
    assert (trained / "run_a" / "checkpoints" / "last.ckpt").is_file()
    # another root, another folder: nothing is written beside run_a's checkpoints
    proc = lit_vr1(trained, "fit", *small(trained / "run_b", trained / "data"), "--trainer.max_steps=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in (trained / "run_b" / "checkpoints").glob("*.ckpt")) == ["epoch=0-step=1.ckpt", "last.ckpt"]
    assert not list((trained / "run_a" / "checkpoints").glob("*-v1.ckpt"))


def test_command_line_flags_win_over_the_checkpoints_settings(trained):
    results = trained / "eval.json"
    proc = lit_vr1(trained, "validate", *small(trained / "run_a", trained / "data"),
                   "--ckpt_path", str(trained / "run_a" / "checkpoints" / "last.ckpt"),
                   f"--model.init_args.results_path={results}", "--trainer.callbacks=[]")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "callbacks used to create the checkpoint" not in proc.stderr  # validate restores no callback state
    data = json.loads(results.read_text())  # Lightning's own CLI dropped this flag for the checkpoint's None
    assert "acc50" in json.dumps(data)
    # the step evaluated is the checkpoint's (Lightning's counter reads 0 outside a fit)
    ckpt = trained / "run_a" / "checkpoints" / "last.ckpt"
    step = torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"]
    assert step > 0 and data[-1]["step"] == step and data[-1]["ckpt_path"] == str(ckpt)


def test_a_resume_with_other_data_is_refused_naming_what_differs(trained):
    other_data = small(trained / "run_a", trained / "data_b", "--data.init_args.synthetic.seed=7")
    proc = lit_vr1(trained, "fit", *other_data, "--trainer.max_steps=3", "--ckpt_path", "last")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "another training data" in proc.stderr and "data.synthetic.seed: 0 in the checkpoint, 7 now" in proc.stderr
    assert "canvas" not in proc.stderr  # only the setting that differs is named


def test_a_resume_with_another_model_is_refused_naming_what_differs(trained):
    other_model = small(trained / "run_a", trained / "data", "--model.init_args.freeze_vision=true")
    proc = lit_vr1(trained, "fit", *other_model, "--trainer.max_steps=3", "--ckpt_path", "last")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "another model" in proc.stderr and "model.freeze_vision: False in the checkpoint, True now" in proc.stderr


def test_a_resume_with_another_model_and_other_data_names_both(trained):
    both = small(trained / "run_a", trained / "data_b", "--data.init_args.synthetic.seed=7",
                 "--model.init_args.freeze_vision=true")
    proc = lit_vr1(trained, "fit", *both, "--trainer.max_steps=3", "--ckpt_path", "last")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "another model and training data" in proc.stderr
    assert "model.freeze_vision: False in the checkpoint, True now" in proc.stderr
    assert "data.synthetic.seed: 0 in the checkpoint, 7 now" in proc.stderr


def test_a_lora_fit_without_held_out_data_prints_no_notices(tmp_path):
    """No held-out data: the fit validates nothing and says nothing of it (Lightning warned
    of an empty loader); peft's deprecated transformers call is not the user's to fix."""
    proc = lit_vr1(tmp_path, "fit", *small(tmp_path / "run", tmp_path / "data", "--trainer.max_steps=1",
                                          "--data.init_args.num_val_samples=0", "--model.init_args.lora={r: 4}"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    for notice in ("Total length of", "is_gradient_checkpointing", "Warning"):
        assert notice not in proc.stderr, proc.stderr[-3000:]


def test_a_resume_with_the_same_settings_goes_on(trained):
    proc = lit_vr1(trained, "fit", *small(trained / "run_a", trained / "data"), "--trainer.max_steps=3",
                   "--ckpt_path", "last")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "exists and is not empty" not in proc.stderr  # a resume reads the folder it is told to


def test_export_turns_a_checkpoint_into_a_hugging_face_folder(trained):
    import torch
    from transformers import AutoModelForImageTextToText

    from lit_vr1.checkpoint import load_checkpoint_file
    from lit_vr1.export import main

    ckpt = trained / "run_a" / "checkpoints" / "last.ckpt"
    main([str(ckpt), str(trained / "hf")])
    model = AutoModelForImageTextToText.from_pretrained(trained / "hf")
    trained_weights = load_checkpoint_file(str(ckpt))["state_dict"]
    name, weight = next((k, v) for k, v in trained_weights.items() if k.startswith("policy.") and v.dim() == 2)
    assert torch.equal(model.state_dict()[name.removeprefix("policy.")], weight)  # the trained weights, not fresh ones


def test_a_trl_name_in_the_wrong_place_says_where_it_lives(tmp_path):
    proc = lit_vr1(tmp_path, "fit", "--config", str(ROOT / "configs/quickstart.yaml"),
                   "--model.grpo.max_prompt_length=100")
    assert proc.returncode == 2 and "--data.max_prompt_length" in proc.stderr
    proc = lit_vr1(tmp_path, "fit", "--config", str(ROOT / "configs/quickstart.yaml"), "--model.grpo.learning_rate=3e-5",
                   module="lit_vr1")  # python -m lit_vr1: the same command
    assert proc.returncode == 2 and "--model.optimizer.init_args.lr=3e-5 " in proc.stderr  # the value typed
    from lit_vr1.trl_names import misplaced_trl_flag

    assert "--model.grpo.gradient_clip_val=0.5" in misplaced_trl_flag(["--trainer.max_grad_norm", "0.5"])
    assert "lr=1e-6" in misplaced_trl_flag(["--learning_rate"])  # no value typed: an example
    assert "init_args: {weight: 0.5}" in misplaced_trl_flag(["--model.reward_weights=[1, 2]"])
    # names that are lit-vr1 options somewhere are left to the parser

    assert misplaced_trl_flag(["--data.init_args.synthetic.seed=7", "--trainer.max_steps=3",
                               "--model.gradient_checkpointing=true", "--data.max_prompt_length=9",
                               "--model.init_args.gradient_checkpointing=false",
                               "--trainer.callbacks.init_args.output_dir=p",
                               "--model.init_args.lr_scheduler.init_args.max_steps=100",
                               "--trainer.logger.init_args.report_to=x", "--model.optimizer.lr=1"]) is None
    # ... and where they are not, the hint names the place
    assert misplaced_trl_flag(["--model.grpo.max_steps=3"]).endswith("use --trainer.max_steps=3")
    assert "--trainer.default_root_dir=runs/x" in misplaced_trl_flag(["--output_dir", "runs/x"])
    assert "no vLLM here" in misplaced_trl_flag(["--model.grpo.use_vllm=true"])
    assert "--trainer.gradient_checkpointing: TRL's gradient_checkpointing" in misplaced_trl_flag(
        ["--trainer.gradient_checkpointing=false"])
    # GRPOConfig's TRL names anywhere but model.grpo (they got "did you mean --trainer.num_nodes?" before)
    for flag in ("--num_generations=4", "--trainer.num_generations=4", "--model.init_args.num_generations=4",
                 "--data.num_generations=4"):
        assert misplaced_trl_flag([flag]).endswith("use --model.grpo.num_generations=4 (a GRPOConfig field)"), flag
    assert misplaced_trl_flag(["--model.beta", "0"]).endswith("use --model.grpo.beta=0 (a GRPOConfig field)")
    assert misplaced_trl_flag(["--model.grpo.beta=0", "--model.init_args.grpo.temperature=0.7"]) is None
    for flag in ("--seed=1", "--trainer.seed=1", "--model.grpo.seed=1"):
        assert "use --seed_everything=1 (the run's seed" in misplaced_trl_flag([flag]), flag
    assert misplaced_trl_flag(["--seed_everything=1", "--model.seed=1"]) is None
    # logging_steps has no equivalent: GRPO logs every optimiser step (log_every_n_steps did nothing there)
    assert "nothing: GRPO logs every optimiser step" in misplaced_trl_flag(["--trainer.logging_steps=5"])


def test_lit_vr1_options_are_discoverable_from_the_command_line(tmp_path):
    for flags, expect in ((["--model.grpo.help"], "--num_generations"), (["--model.rewards.help", "IoUReward"], "--threshold"),
                          (["--model.help"], "--min_pixels"), (["--data.help"], "--train_files"),
                          (["--model.rewards.help"], "IoUReward, RecJsonFormat")):
        proc = lit_vr1(tmp_path, "fit", *flags)
        assert proc.returncode == 0 and expect in proc.stdout, (flags, proc.stdout[-500:], proc.stderr[-500:])
    epilog = " ".join(lit_vr1(tmp_path, "fit", "--help").stdout.split())
    assert "lit-vr1's own options" in epilog
    # a --help-only user found neither the classes to name without a config nor the export (helper-93)
    assert "--model lit_vr1.grpo.GRPOModule" in epilog and "python -m lit_vr1.export CKPT DIR" in epilog
    assert "fewest pixels an image is resized to" in lit_vr1(tmp_path, "fit", "--model.help").stdout
    # a reward is written as a list entry, named after its function by default
    reward_help = lit_vr1(tmp_path, "fit", "--model.rewards.help", "FunctionReward").stdout
    assert "In YAML, under model.init_args: rewards: [{class_path: lit_vr1.rewards.FunctionReward, " in reward_help
    assert re.search(r"its\s+function's\s+name", reward_help)
    assert "In YAML: model: {class_path: lit_vr1.grpo.GRPOModule" in lit_vr1(tmp_path, "fit", "--model.help").stdout


def test_the_trainers_clip_and_accumulation_are_answered_with_grpos_own_before_lightning_refuses(tmp_path):
    """Lightning refuses both under manual optimisation at the start of a fit, before any setup
    hook, with its own traceback; the CLI says where GRPO takes them, in one message."""
    proc = lit_vr1(tmp_path, "fit", *small(tmp_path / "run", tmp_path / "data"), "--trainer.accumulate_grad_batches=2",
                   "--trainer.gradient_clip_val=0.5")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "trainer.gradient_clip_val=0.5: GRPO steps its optimiser itself" in proc.stderr
    assert "set model.grpo.gradient_clip_val=0.5" in proc.stderr
    assert "trainer.accumulate_grad_batches=2: GRPO accumulates micro-batches itself" in proc.stderr
    assert "MisconfigurationException" not in proc.stderr
    assert not (tmp_path / "run" / "logs").exists()  # refused before anything was logged


def test_warnings_print_as_one_line_under_the_command():
    """Python's format added the source line of the warning call (``rank_zero_warn(``)."""
    from lit_vr1 import grpo
    from lit_vr1.cli import one_line_warning

    ours = one_line_warning(UserWarning("step 3: skipped"), UserWarning, grpo.__file__, 200, "rank_zero_warn(")
    assert ours == "lit-vr1: warning: step 3: skipped\n"
    theirs = one_line_warning(FutureWarning("old"), FutureWarning, torch.__file__, 7, "warnings.warn(")
    assert theirs == f"{torch.__file__}:7: FutureWarning: old\n"


def test_validate_into_another_root_says_nothing_of_the_checkpoints_folder(trained):
    """Lightning's "The dirpath has changed" notice is about what a ModelCheckpoint reloads for its
    next saves; validate saves none (a new user's trial printed it)."""
    proc = lit_vr1(trained, "validate", *small(trained / "elsewhere", trained / "data"),
                   "--ckpt_path", str(trained / "run_a" / "checkpoints" / "last.ckpt"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "The dirpath has changed" not in proc.stderr
