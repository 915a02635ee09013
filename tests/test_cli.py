import csv
import glob
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from lit_vr1.cli import LitVR1CLI

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").rglob("*.yaml"))


def _config_args(config: str) -> list[str]:
    """A tiny twin (configs/tiny/<recipe>.yaml) is an overlay: it parses laid over its recipe."""
    path = Path(config)
    if path.parent.name == "tiny":
        return ["--config", str(Path("configs") / path.name), "--config", config]
    if path.parent.name == "strategy":  # a strategy overlay (configs/strategy/) parses laid over a recipe
        return ["--config", "configs/grpo_rec_qwen25vl_3b.yaml", "--config", config]
    return ["--config", config]


@pytest.mark.parametrize("config", CONFIGS)
def test_every_config_parses(config, monkeypatch):
    """Each YAML parses and validates against the CLI's signatures (nothing is built)."""
    monkeypatch.chdir(ROOT)
    config_ns = ParseOnly(_config_args(config)).config
    assert config_ns.model.class_path and config_ns.data.class_path


@pytest.mark.parametrize("flags, save_dir", [
    ([], "runs/quickstart"),
    (["--trainer.default_root_dir=runs/g8"], "runs/g8"),
    (["--trainer.default_root_dir", "runs/g8"], "runs/g8"),
    (["--trainer.default_root_dir=runs/g8", "--trainer.logger.init_args.save_dir=logs_here"], "logs_here"),
], ids=["config", "root_flag", "root_flag_spaced", "logger_flag_wins"])
def test_the_logger_follows_the_root_flag(flags, save_dir, monkeypatch):
    """--trainer.default_root_dir moves the logs with the checkpoints when the config saved
    both under its own root; a save_dir given on the command line is kept."""
    monkeypatch.chdir(ROOT)
    config_ns = ParseOnly(["--config", "configs/quickstart.yaml", *flags]).config
    assert config_ns.trainer.logger.init_args.save_dir == save_dir


def test_a_logger_saving_elsewhere_stays(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    overlay = tmp_path / "elsewhere.yaml"
    overlay.write_text("trainer:\n  logger:\n    class_path: lightning.pytorch.loggers.CSVLogger\n"
                       "    init_args: {save_dir: /tmp/shared_logs}\n")
    config_ns = ParseOnly(["--config", "configs/quickstart.yaml", "--config", str(overlay),
                           "--trainer.default_root_dir=runs/g8"]).config
    assert config_ns.trainer.logger.init_args.save_dir == "/tmp/shared_logs"


def test_args_from_python_beside_a_command_line_are_no_mistake(monkeypatch):
    """The demo and notebooks run the CLI with ``args`` while the process has its own command
    line (the demo's flags, a Jupyter kernel's ``-f kernel.json``): only ``args`` is parsed,
    so Lightning's notice that both were given is not shown."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", ["lit_vr1/demo.py", "--seed", "0", "--task", "detection"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config_ns = ParseOnly(["--config", "configs/quickstart.yaml", "--trainer.max_steps=3"]).config
    assert config_ns.trainer.max_steps == 3 and sys.argv[1:] == ["--seed", "0", "--task", "detection"]  # given back
    assert not [w for w in caught if "args parameter" in str(w.message)], [str(w.message) for w in caught]


class ParseOnly(LitVR1CLI):
    def __init__(self, args):
        super().__init__(args=args, run=False)

    def instantiate_classes(self) -> None:  # parse and validate only: build nothing
        pass


def test_two_step_fit_through_the_cli(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "lit_vr1.cli", "fit", "--config", str(ROOT / "configs/quickstart.yaml"),
        "--trainer.max_steps=2", "--trainer.val_check_interval=2", "--trainer.limit_val_batches=2",
        f"--trainer.default_root_dir={out}",  # the config's logger (save_dir runs/quickstart) follows it
        f"--data.init_args.synthetic_dir={tmp_path / 'data'}", "--data.init_args.synthetic.num_samples=8",
        "--data.init_args.num_val_samples=4", "--data.init_args.batch_size=2", "--data.init_args.val_batch_size=2",
        "--model.init_args.grpo.max_completion_length=8", "--model.init_args.grpo.num_generations=4",
        "--trainer.callbacks=[]", "--trainer.enable_progress_bar=false",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = glob.glob(str(out / "logs" / "version_*" / "metrics.csv"))
    assert metrics
    rows = list(csv.DictReader(open(metrics[0])))
    steps = sorted({int(r["step"]) for r in rows if r.get("train/loss")})
    assert steps == [1, 2]
    # the validation after step 2 on step 2's row, the format rate beside it; the sanity check logs nothing
    assert [int(r["step"]) for r in rows if r.get("val/miou") not in (None, "")] == [2]
    assert [int(r["step"]) for r in rows if r.get("val/format") not in (None, "")] == [2]
    assert glob.glob(str(out / "checkpoints" / "*.ckpt"))  # under the run's root (no dirpath given)


def test_cli_refuses_an_unknown_loss_type(tmp_path):
    cmd = [sys.executable, "-m", "lit_vr1.cli", "fit", "--config", str(ROOT / "configs/quickstart.yaml"),
           "--model.init_args.grpo.loss_type=ppo", "--print_config"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0
    assert "ppo" in proc.stderr and "dr_grpo" in proc.stderr


def test_a_run_refused_at_setup_leaves_no_log_folder(tmp_path, monkeypatch):
    """The quickstart with G=1 is refused when the fit starts (after the CLI wrote config.yaml
    into logs/version_0): the folder goes, so the next run logs to version_0."""
    monkeypatch.chdir(ROOT)
    root = tmp_path / "run"
    with pytest.raises(ValueError, match="num_generations=1"):
        LitVR1CLI(args=["fit", "--config", "configs/quickstart.yaml", f"--trainer.default_root_dir={root}",
                        f"--data.init_args.synthetic_dir={tmp_path / 'data'}", "--data.init_args.synthetic.num_samples=8",
                        "--data.init_args.num_val_samples=0", "--model.init_args.grpo.num_generations=1",
                        "--trainer.callbacks=[]", "--trainer.enable_progress_bar=false"])
    assert not (root / "logs").exists()  # nor the logs/ folder it created for it


@pytest.mark.parametrize("command", ["validate", "test"])
def test_validate_or_test_without_held_out_data_is_one_error_not_a_silent_success(command, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    root = tmp_path / "run"
    with pytest.raises(ValueError, match=f"lit-vr1 {command} has nothing to score: data.num_val_samples=0.*"
                                         "data.val_files and data.val_images"):
        LitVR1CLI(args=[command, "--config", "configs/quickstart.yaml", f"--trainer.default_root_dir={root}",
                        f"--data.init_args.synthetic_dir={tmp_path / 'data'}", "--data.init_args.synthetic.num_samples=8",
                        "--data.init_args.num_val_samples=0", "--trainer.callbacks=[]",
                        "--trainer.enable_progress_bar=false"])
    assert not (root / "logs").exists()


def test_disabling_the_progress_bar_on_the_command_line_drops_the_configs_bar(tmp_path, monkeypatch):
    """The recipes list RichProgressBar among their callbacks; Lightning refused the flag beside it."""
    monkeypatch.chdir(ROOT)
    cli = LitVR1CLI(args=["--config", "configs/quickstart.yaml", f"--trainer.default_root_dir={tmp_path}",
                          "--trainer.enable_progress_bar=false"], run=False)
    assert cli.trainer.progress_bar_callback is None
    assert any(type(c).__name__ == "ColdStart" for c in cli.trainer.callbacks)  # the others stay


def test_disabling_checkpointing_on_the_command_line_drops_the_configs_model_checkpoint(tmp_path, monkeypatch):
    """The quickstart lists a ModelCheckpoint; Lightning refused --trainer.enable_checkpointing=false beside
    it with a 35-line traceback (helper-65)."""
    monkeypatch.chdir(ROOT)
    cli = LitVR1CLI(args=["--config", "configs/quickstart.yaml", f"--trainer.default_root_dir={tmp_path}",
                          "--trainer.enable_checkpointing=false"], run=False)
    assert cli.trainer.checkpoint_callbacks == []
    assert any(type(c).__name__ == "ColdStart" for c in cli.trainer.callbacks)


def test_a_grpo_setting_is_set_to_null_on_the_command_line(tmp_path, monkeypatch):
    """jsonargparse read --model.grpo.mini_batch_size=null as the string 'None' and refused it, though
    lit-vr1's own messages say "or null" (helper-69); the other settings of the config stay."""
    from lit_vr1.cli import nulls_as_json

    assert nulls_as_json(["--model.init_args.grpo.epsilon_high", "~", "--model.grpo.beta=0"]) == [
        '--model.grpo={"epsilon_high": null}', "--model.grpo.beta=0"]
    # scale_rewards' word "none" is a word (jsonargparse read it as a null too); a field without None keeps its refusal
    assert nulls_as_json(["--model.grpo.scale_rewards", "none", "--model.grpo.num_generations=null"]) == [
        '--model.grpo={"scale_rewards": "none"}', "--model.grpo.num_generations=null"]
    monkeypatch.chdir(ROOT)
    (tmp_path / "over.yaml").write_text("model:\n  init_args:\n    grpo:\n      mini_batch_size: 8\n"
                                        "      epsilon_high: 0.28\n")
    cli = LitVR1CLI(args=["--config", "configs/quickstart.yaml", "--config", str(tmp_path / "over.yaml"),
                          f"--trainer.default_root_dir={tmp_path}", "--model.grpo.mini_batch_size=null",
                          "--model.init_args.grpo.epsilon_high", "None", "--model.grpo.num_iterations=2"], run=False)
    grpo = cli.model.config
    assert grpo.mini_batch_size is None and grpo.epsilon_high is None and grpo.num_iterations == 2
    cli = LitVR1CLI(args=["--config", "configs/quickstart.yaml", f"--trainer.default_root_dir={tmp_path}",
                          "--model.grpo.scale_rewards=none"], run=False)
    assert cli.model.config.scale_rewards == "none"
    assert grpo.num_generations == 8 and grpo.max_completion_length == 40  # the quickstart's own


def test_only_log_folders_without_metrics_are_removed(tmp_path):
    from lit_vr1.log_dirs import remove_unused_log_dirs

    setup_only, logged, absent = tmp_path / "version_0", tmp_path / "version_1", tmp_path / "version_2"
    setup_only.mkdir()
    (setup_only / "config.yaml").write_text("seed_everything: 0\n")
    logged.mkdir()
    (logged / "config.yaml").write_text("seed_everything: 0\n")
    (logged / "metrics.csv").write_text("step,train/loss\n1,0.5\n")
    assert remove_unused_log_dirs([str(setup_only), str(logged), str(absent)]) == [str(setup_only)]
    assert not setup_only.exists() and (logged / "metrics.csv").exists()
    nested = tmp_path / "logs"
    (nested / "version_0").mkdir(parents=True)
    (nested / "version_0" / "hparams.yaml").write_text("{}\n")
    assert remove_unused_log_dirs([str(nested)]) == [str(nested)] and not nested.exists()


def test_a_fit_stopped_by_sigterm_exits_143_not_0(monkeypatch, capsys):
    """Lightning stops at a SIGTERM by raising SIGTERMException, a SystemExit without a code:
    the command would exit 0, and a scheduler would take the run for finished."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    import lit_vr1.cli as cli_module

    def stopped(*args, **kwargs):
        raise SIGTERMException

    monkeypatch.setattr(cli_module, "LitVR1CLI", stopped)
    with pytest.raises(SystemExit) as info:
        cli_module.main(["fit", "--config", "configs/quickstart.yaml"])
    assert info.value.code == 143
    assert "stopped by SIGTERM" in capsys.readouterr().err


@pytest.mark.parametrize("rank", [0, 1])
@pytest.mark.parametrize("where", ["loading", "fit"])
def test_ctrl_c_exits_130_with_one_message(monkeypatch, capsys, where, rank):
    """Ctrl-C while the model loads (a KeyboardInterrupt through the CLI) or inside fit (Lightning
    shuts down, then calls sys.exit(1) while handling the KeyboardInterrupt): exit 130 and one
    line saying how to resume, not a traceback or Lightning's exit 1. A Ctrl-C reaches every
    process of a run: only rank 0 says it (under DDP each process printed the lines; helper-79)."""
    import sys as system

    from lightning.pytorch.utilities import rank_zero_only

    import lit_vr1.cli as cli_module

    monkeypatch.setattr(rank_zero_only, "rank", rank)

    def interrupted(*args, **kwargs):
        if where == "loading":
            raise KeyboardInterrupt
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            system.exit(1)

    monkeypatch.setattr(cli_module, "LitVR1CLI", interrupted)
    with pytest.raises(SystemExit) as info:
        cli_module.main(["fit", "--config", "configs/quickstart.yaml"])
    assert info.value.code == 130
    err = capsys.readouterr().err
    if rank:
        assert err == ""
        return
    assert "interrupted (Ctrl-C, exit 130)" in err and "--ckpt_path last" in err and "Traceback" not in err


def test_another_exit_1_is_left_alone(monkeypatch):
    import lit_vr1.cli as cli_module

    monkeypatch.setattr(cli_module, "LitVR1CLI", lambda *a, **k: sys.exit(1))
    with pytest.raises(SystemExit) as info:
        cli_module.main(["fit", "--config", "configs/quickstart.yaml"])
    assert info.value.code == 1


def test_ctrl_c_while_python_imports_the_libraries_gets_the_same_line(monkeypatch, capsys):
    """The ``lit-vr1`` command (lit_vr1.entry) imports the CLI, and with it torch and Lightning,
    for its first seconds: a Ctrl-C there printed the import's traceback."""
    import builtins

    from lit_vr1 import entry

    real_import = builtins.__import__

    def importing(name, globals=None, locals=None, fromlist=(), level=0):
        if name == "lit_vr1" and fromlist and "cli" in fromlist:
            raise KeyboardInterrupt
        return real_import(name, globals, locals, fromlist, level)

    monkeypatch.setattr(builtins, "__import__", importing)
    with pytest.raises(SystemExit) as info:
        entry.main()
    assert info.value.code == 130
    err = capsys.readouterr().err
    assert "interrupted (Ctrl-C, exit 130)" in err and "Traceback" not in err


def test_loggers_other_than_csv_receive_the_whole_config(tmp_path):
    """wandb's run config held the module's settings only: no optimiser, data, trainer or seed."""
    import json
    import os
    import subprocess
    import sys

    seen = tmp_path / "hparams.jsonl"
    loggers = ("[{class_path: lightning.pytorch.loggers.CSVLogger, init_args: {save_dir: " + str(tmp_path / "run") + "}}, "
               "{class_path: tests.helpers.HparamsFile, init_args: {path: " + str(seen) + "}}]")
    cmd = [sys.executable, "-m", "lit_vr1.cli", "fit", "--config", str(ROOT / "configs/quickstart.yaml"),
           "--trainer.max_steps=1", "--trainer.limit_val_batches=0", f"--trainer.default_root_dir={tmp_path / 'run'}",
           f"--trainer.logger={loggers}", f"--data.init_args.synthetic_dir={tmp_path / 'data'}",
           "--data.init_args.synthetic.num_samples=4", "--data.init_args.num_val_samples=0",
           "--data.init_args.batch_size=2", "--model.init_args.grpo.max_completion_length=4",
           "--model.init_args.grpo.num_generations=2", "--trainer.callbacks=[]", "--trainer.enable_progress_bar=false"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1"),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = next(c["config"] for c in map(json.loads, seen.read_text().splitlines()) if "config" in c)
    assert config["trainer"]["max_steps"] == 1 and config["seed_everything"] == 0
    assert config["model"]["init_args"]["optimizer"]["class_path"] == "torch.optim.AdamW"
    assert config["data"]["init_args"]["batch_size"] == 2
    assert list((tmp_path / "run").rglob("config.yaml"))  # the file, as before, in the CSV logger's folder
    # beside it, what the run was made with: the seed drawn with, versions, command (helper-86: none of it)
    run = json.loads(next((tmp_path / "run").rglob("run.json")).read_text())
    assert run["command"] == "fit" and run["seed_everything"] == 0 and run["argv"][1:3] == ["fit", "--config"]
    assert {"python", "torch", "transformers", "lightning", "lit-vr1"} <= set(run["versions"])


def test_a_refused_setting_under_ddp_is_said_once(tmp_path):
    """Every process refuses a setting alike: rank 0 says it (it was printed once per process)."""
    import subprocess

    from tests.test_resume import _env, fit_command

    out = tmp_path / "run"
    cmd = fit_command(out, out / "ckpt", tmp_path / "data", "--trainer.devices=2", "--trainer.strategy=ddp",
                      "--trainer.accelerator=cpu", "--model.init_args.grpo.mini_batch_size=3")
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.count("lit-vr1: error: model.grpo.mini_batch_size=3 is not a multiple") == 1, proc.stderr[-3000:]


def test_a_second_fit_of_two_processes_into_a_folder_in_use_is_refused_in_one_line(tmp_path):
    """Two 2-process fits into one folder both ran, their checkpoints and logs mixed: several
    processes took no lock (a new user's trial). The first process locks at setup and all refuse."""
    import subprocess
    import sys

    from lit_vr1.checkpoint import LOCK_NAME
    from tests.test_resume import _env, fit_command

    out = tmp_path / "run"
    (out / "ckpt").mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, time\n"
        f"fd = os.open({str(out / 'ckpt' / LOCK_NAME)!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, str(os.getpid()).encode())\n"
        "print('held', flush=True); time.sleep(300)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        cmd = fit_command(out, out / "ckpt", tmp_path / "data", "--trainer.devices=2", "--trainer.strategy=ddp",
                          "--trainer.accelerator=cpu")
        proc = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode == 75, proc.stderr[-3000:]  # EX_TEMPFAIL: the same command may run once that fit ends
    said = f"lit-vr1: error: another fit (process {holder.pid}) is writing checkpoints into {out / 'ckpt'}"
    assert proc.stderr.count(said) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert not list((out / "ckpt").glob("*.ckpt")) and not (out / "rollouts.jsonl").exists()


def test_a_prediction_into_a_new_root_leaves_its_predictions_and_no_log_folder(tmp_path):
    """``predict`` into a new default_root_dir: the root holds the predictions, so it stays, and
    the logs/version_0 under it held only config.yaml and hparams.yaml, which stayed too (only the
    outermost new folder was noted; helper-79)."""
    from lit_vr1.log_dirs import new_on_the_way, remove_unused_log_dirs

    root = tmp_path / "pred3"
    version = root / "logs" / "version_0"
    fresh = new_on_the_way(str(version))
    assert fresh == [str(root), str(root / "logs"), str(version)]
    version.mkdir(parents=True)
    (version / "config.yaml").write_text("seed_everything: 0\n")
    (root / "predictions").mkdir()
    (root / "predictions" / "predictions.jsonl").write_text("{}\n")
    assert remove_unused_log_dirs(fresh) == [str(root / "logs")]
    assert not (root / "logs").exists() and (root / "predictions" / "predictions.jsonl").exists()


@pytest.mark.parametrize("encoding, env, restarted", [("ANSI_X3.4-1968", {}, True), ("UTF-8", {}, False),
                                                      ("ANSI_X3.4-1968", {"PYTHONUTF8": "0"}, False)])
def test_the_command_restarts_in_utf8_mode_under_a_locale_that_is_not_utf8(monkeypatch, encoding, env, restarted):
    """Under a non-UTF-8 locale jsonargparse read a config holding "données" as ASCII and stopped
    with a UnicodeDecodeError traceback (helper-81); the command now starts again in UTF-8 mode,
    with the same arguments, once (the variable it sets stops a second start)."""
    from types import SimpleNamespace

    from lit_vr1 import entry

    calls = []
    monkeypatch.delenv("PYTHONUTF8", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(entry, "sys", SimpleNamespace(flags=SimpleNamespace(utf8_mode=0), executable="/venv/python",
                                                      orig_argv=["/venv/python", "/venv/bin/lit-vr1", "fit", "-c", "x"]))
    monkeypatch.setattr(entry.locale, "getpreferredencoding", lambda do_setlocale=True: encoding)
    monkeypatch.setattr(entry.os, "execv", lambda exe, argv: calls.append((exe, argv, os.environ.get("PYTHONUTF8"))))
    entry.in_utf8_mode()
    assert calls == ([("/venv/python", ["/venv/python", "/venv/bin/lit-vr1", "fit", "-c", "x"], "1")] if restarted else [])
