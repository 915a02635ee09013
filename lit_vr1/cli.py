"""The ``lit-vr1`` command: a LightningCLI with fit, validate, test and predict.

    lit-vr1 fit --config configs/quickstart.yaml
    lit-vr1 fit --config configs/quickstart.yaml --model.grpo.num_generations=8 --trainer.max_steps=100

Models, data modules, rewards, optimisers, schedulers, loggers, callbacks and
strategies are all chosen with ``class_path`` / ``init_args`` in YAML.

Checkpoints are written atomically (:class:`~lit_vr1.checkpoint.AtomicCheckpointIO`), so a
run killed at any moment resumes from its last complete checkpoint:

    lit-vr1 fit --config configs/quickstart.yaml --ckpt_path last

``--ckpt_path last`` with no checkpoint to resume is an error; ``--ckpt_path last_or_new``
resumes when there is one and starts fresh otherwise (for jobs that restart themselves).
lit-vr1's own errors print as one message (exit 2); ``--traceback`` shows the traceback.
"""

from __future__ import annotations

import os
import re
import sys
import warnings
from pathlib import Path

import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lit_vr1.checkpoint import (
    LAST_SAVED_AT_END,
    check_sharded_folder,
    is_sharded,
    load_checkpoint_file,
    newest_checkpoint,
    release_checkpoint_folders,
    resumable,
)
from lit_vr1.cli_errors import LitVR1ArgumentParser, config_file_problem, yaml_value
from lit_vr1.config_keys import unknown_keys
from lit_vr1.config_lists import replace_lists_whole  # noqa: E402
from lit_vr1.heartbeat import add_heartbeat
from lit_vr1.interrupt import RESUME_HINT, RESUME_LAST, interrupted
from lit_vr1.log_dirs import new_log_dirs, new_on_the_way, remove_unused_log_dirs
from lit_vr1.quiet import quiet_cli_notices, quiet_known_notices  # noqa: E402
from lit_vr1.trl_names import misplaced_trl_flag  # noqa: E402

PACKAGE_DIR = Path(__file__).resolve().parent
TRACEBACK_FLAG, TRACEBACK_ENV = "--traceback", "LIT_VR1_TRACEBACK"


class ConfigToLoggers(SaveConfigCallback):
    """Lightning's config.yaml in the log folder, and the whole run's config (trainer, model with
    its optimiser and rewards, data, seed) given to every logger but CSV (which has the file) as
    the hyperparameter ``config``: wandb's and TensorBoard's runs held the module's settings only."""

    def save_config(self, trainer, pl_module, stage: str) -> None:
        import yaml
        from lightning.pytorch.loggers import CSVLogger

        others = [lg for lg in trainer.loggers if not isinstance(lg, CSVLogger)]
        if not others:
            return
        config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        for logger in others:
            logger.log_hyperparams({"config": config})


def shadowed_callbacks_note() -> str | None:
    """A note when a module named ``callbacks`` other than lit-vr1's (a ``callbacks.py`` of the
    user's in the working directory, which ``python -m`` puts first on the path) would be imported
    for a config's ``callbacks.ColdStart``: it was refused as "module 'callbacks' has no attribute
    'ColdStart'", with nothing on why."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("callbacks")
    except (ImportError, ValueError):
        return None
    ours = PACKAGE_DIR.parent / "callbacks"
    if spec is None or spec.origin is None or Path(spec.origin).resolve().is_relative_to(ours.resolve()):
        return None
    return (f"a module named 'callbacks' at {spec.origin} hides lit-vr1's callbacks package ({ours}): a config's "
            "callbacks.ColdStart, callbacks.RolloutLog, ... cannot be found; rename your module, or run from another "
            "folder")


CKPT_PATH_HELP = {
    True: ("The checkpoint to resume: a .ckpt file, a sharded checkpoint's folder (FSDP2), 'last' (the run root's "
           "last.ckpt; an error when there is none) or 'last_or_new' (last.ckpt, else the newest checkpoint, else a "
           "fresh start). Its model settings are this run's defaults. To start a new fit from a trained model, give "
           "--model.init_args.model=<exported folder> instead."),
    False: ("The checkpoint whose weights to read: a .ckpt file, a sharded checkpoint's folder, or 'last' (the run "
            "root's last.ckpt). Its model settings are this run's defaults. Without it the model is read from "
            "model.model."),
}


def shared_log_dir_note(trainer, ckpt_path: str | None) -> str | None:
    """A note for a fresh fit whose log folder (the first logger's) is not a ``version_N`` folder
    of its own and holds an earlier run's ``config.yaml``: a WandbLogger listed first writes the
    CLI's config.yaml and RolloutLog's rollouts.jsonl into its ``save_dir`` itself, so two fits
    there shared one rollouts.jsonl and the second overwrote the first's config.yaml."""
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    loggers = getattr(trainer, "loggers", None) or []
    if ckpt_path is not None or not loggers or isinstance(loggers[0], (CSVLogger, TensorBoardLogger)):
        return None
    folder = trainer.log_dir
    if folder is None or not os.path.isfile(os.path.join(folder, "config.yaml")):
        return None
    return (f"trainer.logger: the first logger ({type(loggers[0]).__name__}) keeps no version_N folder per run, so this "
            f"fit's config.yaml and RolloutLog's rollouts.jsonl go to {folder} beside an earlier run's (its config.yaml "
            "is overwritten, both runs' rollouts share one file): list a CSVLogger or TensorBoardLogger first, or give "
            "this run another trainer.default_root_dir")


class LitVR1CLI(LightningCLI):
    """LightningCLI for any lit-vr1 module and data module (``class_path`` in the config)."""

    def __init__(self, args=None, run: bool = True) -> None:
        quiet_known_notices()
        super().__init__(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            auto_configure_optimizers=False,
            parser_class=LitVR1ArgumentParser,  # parse errors as one message, not the usage and a nested dump
            save_config_callback=ConfigToLoggers,
            save_config_kwargs={"overwrite": True},
            # no argparse abbreviations: --trainer.max_st=2 must not silently mean max_steps
            parser_kwargs={"allow_abbrev": False, "prog": "lit-vr1",
                           **{c: {"allow_abbrev": False, "epilog": HELP_EPILOG} for c in self.subcommands()}},
            args=args,
            run=run,
        )

    def instantiate_trainer(self, **kwargs):
        """The Trainer made :func:`~lit_vr1.checkpoint.resumable`: its single-file checkpoints
        atomic, ``--ckpt_path last`` strict, CSV metrics written at every step, checkpoints
        without a ``dirpath`` under ``<default_root_dir>/checkpoints``, the bar counting steps;
        a fit's with a :class:`~lit_vr1.heartbeat.Heartbeat` unless its config lists one."""
        trainer = super().instantiate_trainer(**kwargs)
        if getattr(self, "subcommand", None) == "predict":
            default_prediction_writer(trainer)
        if getattr(self, "subcommand", None) == "fit":
            add_heartbeat(trainer)  # progress lines in a redirected log, and a last line with where the results are
        return resumable(trainer)

    def parse_arguments(self, parser, args) -> None:
        """With ``--ckpt_path <file>``, the model settings saved in the checkpoint become the
        defaults of ``model``, and the config files and flags are parsed over them: what the
        user gives wins (Lightning applies the checkpoint's settings after parsing instead,
        silently dropping every ``--model.*`` flag, e.g. ``results_path``). A broken file is
        reported by name (:func:`~lit_vr1.checkpoint.load_checkpoint_file`)."""
        argv = self._argv = nulls_as_json(list(sys.argv[1:] if args is None else args))
        for name, sub in getattr(self, "_subcommand_parsers", {}).items():  # lit-vr1's own words, not Lightning's
            for action in sub._actions:
                if action.dest == "ckpt_path":
                    action.help = CKPT_PATH_HELP[name == "fit"]
        if args is not None:
            args = argv
        LitVR1ArgumentParser.config_files = _flag_values(argv, ("--config", "-c"))
        LitVR1ArgumentParser.flag_keys = flag_keys(argv)
        LitVR1ArgumentParser.start_dir = os.getcwd()
        for path in LitVR1ArgumentParser.config_files:
            problem = config_file_problem(path)
            if problem:
                parser.error(problem)
        subcommand = next((a for a in argv if a in self.subcommands()), None)
        LitVR1ArgumentParser.unknown_keys = []
        sub_parser = getattr(self, "_subcommand_parsers", {}).get(subcommand)
        if sub_parser is not None:  # the keys of the subcommand's config files, all at once
            after = argv[argv.index(subcommand) + 1:]
            dests = [a.dest for a in sub_parser._actions]
            class_flags = [s for s in ("model", "data") if any(a == f"--{s}" or a.startswith((f"--{s}=", f"--{s}.class_path"))
                                                              for a in after)]
            LitVR1ArgumentParser.unknown_keys = unknown_keys(_flag_values(after, ("--config", "-c")), dests, subcommand,
                                                             class_flags)
        ckpt_path = _flag_value(argv, "--ckpt_path")
        if ckpt_path in ("last", "last_or_new"):  # the root's last.ckpt, when the command line or configs name the root
            ckpt_path = root_last_checkpoint(argv)
        if subcommand and ckpt_path and (Path(ckpt_path).is_file() or is_sharded(ckpt_path)):
            hparams = checkpoint_model_settings(ckpt_path)
            if hparams:
                self._subcommand_parsers[subcommand].set_defaults({"model": hparams})
        # Run from Python (the demo, a notebook), ``args`` is all that is parsed: the process's own
        # command line (the demo's flags, a Jupyter kernel's) is hidden from Lightning's check,
        # which would call giving both a mistake
        own, sys.argv[1:] = sys.argv[1:], ([] if args is not None else argv)
        try:
            super().parse_arguments(parser, args)
        finally:
            sys.argv[1:] = own

    def _parse_ckpt_path(self) -> None:
        """Done in :meth:`parse_arguments`, before the flags rather than over them."""

    def _run_subcommand(self, subcommand: str) -> None:
        """Run it; a run that fails before logging a metric, and a prediction, remove the log folder
        they made (:mod:`lit_vr1.log_dirs`), so the next run's logs take its place."""
        fresh = new_log_dirs(self.trainer)
        try:
            super()._run_subcommand(subcommand)
        except BaseException as exc:
            remove_unused_log_dirs(fresh)
            exported = getattr(getattr(self, "model", None), "export_failed", False)  # its own note says what to run
            if subcommand == "fit" and self.trainer.global_step > 0 and not exported:  # errors, Ctrl-C and SIGTERM
                exc.add_note(resume_note(self.trainer, failed=isinstance(exc, Exception)))
            raise
        if subcommand == "predict":  # logs no metric: its folder would be an empty version_N among a run's logs
            remove_unused_log_dirs(fresh)

    def before_fit(self) -> None:
        """The Trainer's settings that manual optimisation cannot take, refused with GRPO's own
        (:func:`~lit_vr1.checks.check_trainer`) before Lightning refuses them with a traceback."""
        from lit_vr1.checks import check_trainer

        check_trainer(self.model, self.trainer)
        fit = self.config[self.subcommand] if self.subcommand else self.config
        note = shared_log_dir_note(self.trainer, fit.get("ckpt_path"))
        if note:
            rank_zero_warn(note)

    def before_instantiate_classes(self) -> None:
        """The loggers follow ``--trainer.default_root_dir`` (:func:`loggers_follow_root`)."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        loggers_follow_root(config, self._argv)
        no_bar_when_disabled(config)
        quiet_cli_notices(self.subcommand)


# ``--<key>.help [NAME]``: the classes behind each configurable key (NAME picks among several)
HELP_KEYS = {
    "model": ("lit_vr1.grpo.GRPOModule", "lit_vr1.sft.SFTModule"),
    "data": ("lit_vr1.data.datamodule.GroundingDataModule",),
    "model.grpo": ("lit_vr1.config.GRPOConfig",),
    "model.lora": ("lit_vr1.models.lora.LoraSpec",),
    "model.tiny_spec": ("lit_vr1.models.tiny_parts.TinySpec",),
    "data.synthetic": ("lit_vr1.data.synthetic.SyntheticSpec",),
    "model.rewards": tuple(f"lit_vr1.rewards.{name}" for name in (
        "IoUReward", "RecJsonFormat", "ThinkAnswerFormat", "DetectionMAP", "ODLength", "DetectionWeightedSum",
        "DualFormat", "LocalizationPrecision", "LocalizationRecall", "Accuracy", "HFRRF", "CosineLength",
        "RepetitionPenalty", "FunctionReward", "RewardModelReward", "RemoteRewardModel")),
}
HELP_EPILOG = (
    "lit-vr1's own options: --model.help (GRPOModule or SFTModule), --data.help, "
    "--model.grpo.help (GRPO: G, clipping, KL, batches), --model.rewards.help NAME (one reward, e.g. IoUReward; "
    "without NAME the list), --model.lora.help, --model.tiny_spec.help, --data.synthetic.help. "
    "Without a config, name the classes: --model lit_vr1.grpo.GRPOModule (or lit_vr1.sft.SFTModule) --data "
    "lit_vr1.data.datamodule.GroundingDataModule; a model is exported with python -m lit_vr1.export CKPT DIR. "
    "Errors print as one line; --traceback shows the traceback."
)


def _resolve(path: str):
    module, _, name = path.rpartition(".")
    return getattr(__import__(module, fromlist=[name]), name)


def option_help(argv: list[str]) -> str | None:
    """The help text for ``--<key>.help [NAME]`` when ``key`` is one of :data:`HELP_KEYS`
    (jsonargparse wants dotted class paths and a class already chosen; this takes short
    names, and nested settings like ``--model.grpo.help``); None for any other command line."""
    from jsonargparse import ArgumentParser

    for i, arg in enumerate(argv):
        key = arg.removeprefix("--").replace(".init_args", "").split("=", 1)[0]
        if not key.endswith(".help") or key[: -len(".help")] not in HELP_KEYS:
            continue
        key = key[: -len(".help")]
        name = arg.split("=", 1)[1] if "=" in arg else (argv[i + 1] if i + 1 < len(argv) and not
                                                         argv[i + 1].startswith("-") else None)
        choices = HELP_KEYS[key]
        if name is None and len(choices) > 1 and key != "model":
            return f"--{key}.help NAME: NAME is one of " + ", ".join(c.rsplit(".", 1)[1] for c in choices) + "\n"
        picked = choices[0] if name is None else next(
            (c for c in choices if c == name or c.rsplit(".", 1)[1] == name), None)
        if picked is None:
            return (f"--{key}.help: {name!r} is not one of " + ", ".join(c.rsplit(".", 1)[1] for c in choices)
                    + "\n")
        cls = _resolve(picked)
        parser = ArgumentParser(prog=f"lit-vr1 fit --{key}", description=(cls.__doc__ or "").split("\n\n")[0])
        parser.add_class_arguments(cls, nested_key=None, fail_untyped=False)
        text = parser.format_help()
        return text + _yaml_hint(key, picked)
    return None


def _yaml_hint(key: str, class_path: str) -> str:
    """How the class picked by ``--<key>.help`` is written in a config file."""
    entry = f"{{class_path: {class_path}, init_args: {{...}}}}"
    if key in ("model", "data"):
        return f"\nIn YAML: {key}: {entry}\n"
    if key == "model.rewards":  # a list: one given anew replaces a config's whole list
        return f"\nIn YAML, under model.init_args: rewards: [{entry}, ...] (a list: every reward the run scores with)\n"
    return ""


NULLS = ("null", "None", "~", "Null", "NULL")  # not "none": scale_rewards takes it as a word
GRPO_FLAG = re.compile(r"^--model\.(?:init_args\.)?grpo\.(?:init_args\.)?(\w+)$")


def _nullable_grpo_fields() -> frozenset[str]:
    import dataclasses

    from lit_vr1.config import GRPOConfig

    return frozenset(f.name for f in dataclasses.fields(GRPOConfig) if "None" in str(f.type))


def nulls_as_json(argv: list[str]) -> list[str]:
    """``--model.grpo.<field>=null`` as ``--model.grpo={"<field>": null}``: jsonargparse reads a null
    given to a field of the GRPO settings (a dataclass inside the model's init args) as the string
    'None' and refuses it ("got 'None'; expected int"), though lit-vr1's own messages say "or null";
    the dict form sets that field alone, as the flag would. Only for fields that take None; and
    ``scale_rewards=none``, which jsonargparse read as a null too, as the word."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        key, sep, value = arg.partition("=")
        if not sep and i + 1 < len(argv) and GRPO_FLAG.match(arg) and argv[i + 1] in (*NULLS, "none"):
            value, sep, i = argv[i + 1], "=", i + 1
        found = GRPO_FLAG.match(key) if sep else None
        field = found.group(1) if found else None
        if field and value in NULLS and field in _nullable_grpo_fields():
            out.append(f'--model.grpo={{"{field}": null}}')
        elif field and value == "none" and field not in _nullable_grpo_fields():  # scale_rewards' word, not a null
            out.append(f'--model.grpo={{"{field}": "none"}}')
        else:
            out.append(arg if "=" in arg or not sep else f"{key}={value}")
        i += 1
    return out


def _flag_values(argv: list[str], flags: tuple[str, ...]) -> list[str]:
    """Every value given to any of ``flags`` in ``argv`` (``--flag value`` or ``--flag=value``)."""
    values = []
    for i, arg in enumerate(argv):
        if arg in flags and i + 1 < len(argv):
            values.append(argv[i + 1])
        elif "=" in arg and arg.split("=", 1)[0] in flags:
            values.append(arg.split("=", 1)[1])
    return values


def flag_keys(argv: list[str]) -> set[str]:
    """The keys ``argv``'s flags set, without ``init_args`` (``--model.init_args.grpo.beta=0``
    -> ``model.grpo.beta``); ``--config`` and ``--help`` left out."""
    keys = {a[2:].split("=", 1)[0].replace(".init_args.", ".") for a in argv if a.startswith("--")}
    return keys - {"config", "help", "print_config"}


def _flag_value(argv: list[str], flag: str) -> str | None:
    """The value of ``flag`` in ``argv`` (``--flag value`` or ``--flag=value``; the last wins)."""
    values = _flag_values(argv, (flag,))
    return values[-1] if values else None


def _config_files_value(argv: list[str], keys: tuple[str, ...]):
    """The value at ``keys`` in the YAML files given with ``--config`` (the last file that sets
    it wins, as in parsing); None when none sets it or a file cannot be read."""
    value = None
    for path in _flag_values(argv, ("--config", "-c")):
        found = yaml_value(path, keys)
        value = found if found is not None else value
    return value


def root_last_checkpoint(argv: list[str]) -> str | None:
    """``<trainer.default_root_dir>/checkpoints/last.ckpt`` of the command line (or its config
    files), when it exists: ``--ckpt_path last`` then takes its model settings as defaults, as a
    checkpoint's path does. A ``--help``-only user's ``validate --ckpt_path last`` with no config
    was refused for another model than the checkpoint's (its settings were not read), while the
    same file's path worked. A ModelCheckpoint of another ``dirpath`` is not looked for here."""
    root = _flag_value(argv, "--trainer.default_root_dir") or _config_files_value(argv, ("trainer", "default_root_dir"))
    if not isinstance(root, str):
        return None
    path = os.path.join(root, "checkpoints", "last.ckpt")
    return path if os.path.isfile(path) or is_sharded(path) else None


def loggers_follow_root(config, argv: list[str]) -> None:
    """With ``--trainer.default_root_dir=D`` on the command line, each logger whose
    ``save_dir`` is the config files' ``default_root_dir`` is saved under D as well, so that one
    flag moves a run's checkpoints and its logs (``configs/quickstart.yaml`` writes both under
    runs/quickstart). A logger set on the command line, or saving elsewhere, is left alone."""
    root = _flag_value(argv, "--trainer.default_root_dir")
    if root is None or any(a.startswith("--trainer.logger") for a in argv):
        return
    configured = _config_files_value(argv, ("trainer", "default_root_dir"))
    loggers = config.get("trainer.logger") if configured is not None else None
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        save_dir = logger.get("init_args.save_dir") if hasattr(logger, "get") else None
        if isinstance(save_dir, str) and os.path.normpath(save_dir) == os.path.normpath(str(configured)):
            logger["init_args.save_dir"] = root


def default_prediction_writer(trainer) -> None:
    """``lit-vr1 predict`` without a prediction writer among the callbacks would decode every
    prompt and keep nothing: it gets ``callbacks.PredictionWriter`` writing under
    ``<trainer.default_root_dir>/predictions`` (a writer given in the config or flags is kept)."""
    from lightning.pytorch.callbacks import BasePredictionWriter

    if any(isinstance(c, BasePredictionWriter) for c in trainer.callbacks):
        return
    from callbacks import PredictionWriter

    trainer.callbacks.append(PredictionWriter(output_dir=os.path.join(trainer.default_root_dir, "predictions")))


DISABLED_BY = {"trainer.enable_progress_bar": "ProgressBar", "trainer.enable_checkpointing": "ModelCheckpoint"}


def no_bar_when_disabled(config) -> None:
    """``--trainer.enable_progress_bar=false`` over a config that lists a progress bar among its
    callbacks (the recipes list ``RichProgressBar``) drops that callback, and
    ``--trainer.enable_checkpointing=false`` a listed ``ModelCheckpoint`` (the quickstart's): the
    flag is the later word (Lightning refuses either pair with a MisconfigurationException)."""
    for flag, suffix in DISABLED_BY.items():
        callbacks = config.get("trainer.callbacks")
        if config.get(flag) is not False or not isinstance(callbacks, list):
            continue
        config["trainer.callbacks"] = [c for c in callbacks
                                       if not str(getattr(c, "class_path", "") or "").endswith(suffix)]


def checkpoint_model_settings(path: str) -> dict | None:
    """``{"class_path", "init_args"}`` of the LightningModule saved in a checkpoint (its
    ``save_hyperparameters``; the class as the CLI records it, or as the module records it
    from Python), or None when it saved none."""
    from lit_vr1.module import CLASS_KEY, MODEL_DIR_KEY

    # a sharded folder's settings lie in its meta.pt, beside the shards (not read here)
    checkpoint = check_sharded_folder(path) if is_sharded(path) else load_checkpoint_file(path, map_location="cpu")
    hparams = dict(checkpoint.get("hyper_parameters") or {})
    hparams.pop("_instantiator", None)
    class_path = hparams.pop("_class_path", None) or checkpoint.get(CLASS_KEY)
    if not hparams or class_path is None:
        return None
    model, folder = hparams.get("model"), checkpoint.get(MODEL_DIR_KEY)
    if isinstance(model, str) and isinstance(folder, str) and not os.path.exists(model) and os.path.isdir(folder):
        # the run named its model folder relative to where it ran (a LoRA checkpoint holds no base weights)
        print(f"lit-vr1: the checkpoint's model {model!r} is not here; using the folder its run read, {folder}",
              file=sys.stderr)
        hparams["model"] = folder
    return {"class_path": class_path, "init_args": hparams}


def _innermost_file(exc: BaseException) -> Path | None:
    tb, last = exc.__traceback__, None
    while tb is not None:
        last, tb = tb, tb.tb_next
    return Path(last.tb_frame.f_code.co_filename).resolve() if last is not None else None


def _raised_in_package(exc: BaseException) -> bool:
    """Whether the innermost frame of ``exc``'s traceback is lit-vr1's own code (the package and
    its ``callbacks``)."""
    where = _innermost_file(exc)
    return where is not None and any(where.is_relative_to(d) for d in OWN_DIRS)


def lightning_settings_error(exc: BaseException) -> bool:
    """Lightning's refusal of the Trainer's settings: its ``MisconfigurationException``, or a
    ``ValueError`` its fit loop raises while it reads them (``val_check_interval`` past the batches
    of an epoch): the message names the setting, and the 35-54 lines of traceback above it say
    nothing more to a user (``--traceback`` shows them)."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    if isinstance(exc, MisconfigurationException):
        return True
    where = _innermost_file(exc)
    return isinstance(exc, ValueError) and where is not None and where.name == "fit_loop.py" and "lightning" in where.parts


def _notes(exc: BaseException) -> list[str]:
    return list(getattr(exc, "__notes__", []))


def resume_note(trainer, failed: bool = True) -> str:
    """What a fit that failed (or was stopped: ``failed`` False) after some optimiser steps can
    resume from (printed under its error or its stop)."""
    stopped = f"the fit stopped after optimiser step {trainer.global_step}"
    mended = "once the cause is mended, " if failed else ""
    if not trainer.checkpoint_callbacks:
        return f"{stopped} and saved no checkpoint (no ModelCheckpoint in trainer.callbacks): a new fit starts over"
    # a last.ckpt that exists (a save the disk refused leaves the name set and no file; FSDP2 saves a folder)
    saver = next((cb for cb in trainer.checkpoint_callbacks if cb.last_model_path and os.path.exists(cb.last_model_path)),
                 None)
    if saver is not None:
        # Lightning's count (0 until this process saves) or the save at the fit's last batch, which leaves it be
        step = max(getattr(saver, "_last_global_step_saved", 0) or 0, getattr(saver, LAST_SAVED_AT_END, 0))
        at = f" (optimiser step {step})" if step else ""
        return f"{stopped}; {mended}it resumes from {saver.last_model_path}{at} with {RESUME_LAST}"
    folders = [cb.dirpath for cb in trainer.checkpoint_callbacks if cb.dirpath]
    newest = newest_checkpoint(folders) if any(cb.best_model_path for cb in trainer.checkpoint_callbacks) else None
    if newest is None:
        source = trainer.ckpt_path
        if source and os.path.exists(source):  # resumed from a file elsewhere, stopped before saving one here
            return f"{stopped} before its first checkpoint here; it resumes again with --ckpt_path {source}"
        return f"{stopped} before its first checkpoint: a new fit starts over"
    return (f"{stopped}; {mended}it resumes from its newest checkpoint with --ckpt_path {newest} "
            "(the steps after it run again)")


def user_error(exc: BaseException) -> BaseException | None:
    """The error a user should read: the first exception in ``exc``'s chain (causes and
    contexts, outermost first) that lit-vr1 raised on purpose (a ``ValueError`` or
    ``TypeError`` from our checks, the ``FloatingPointError`` of a run whose steps are all
    skipped, an out-of-memory error (:mod:`lit_vr1.oom`), the ``ImportError`` naming an optional
    package to install, ``DataError``, ``ConfigError``, ``RewardError``, ...),
    however deep jsonargparse or Lightning wrapped it; None for anything else (a bug)."""
    from lit_vr1 import oom
    from lit_vr1.parallel import peer_stopped
    from lit_vr1.rewards.base import RewardError

    missing = missing_package(exc)  # the outermost error only: an install hint raised inside a fallback is no cause
    if missing is not None:
        return missing
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        own = (ValueError, TypeError, FileNotFoundError, FloatingPointError, ImportError)
        if isinstance(current, (RewardError, oom.OutOfMemory)) or (isinstance(current, own)
                                                                   and _raised_in_package(current)):
            return current
        if lightning_settings_error(current):
            return current
        if isinstance(current, torch.OutOfMemoryError):  # outside the passes lit-vr1 measures (loading, SFT)
            return oom.general(current)
        told = fsdp2_sizes_error(current) or file_in_the_way(current)
        if told is not None:
            return told
        peer = peer_stopped(current)  # another process's error is the one to read; this one only lost its peer
        if peer is not None:
            return peer
        current = current.__cause__ or current.__context__
    return None


def file_in_the_way(exc: BaseException) -> BaseException | None:
    """A folder the run writes into (``trainer.default_root_dir``, a logger's ``save_dir``, an
    export or prediction folder) that is a file, or lies under one: one
    :class:`~lit_vr1.rules.ConfigError` naming the file, where a 37-42 line traceback ended in
    ``NotADirectoryError`` or ``FileExistsError`` (a new user's trial); None for anything else."""
    from lit_vr1.rules import ConfigError

    if not isinstance(exc, (NotADirectoryError, FileExistsError)) or not getattr(exc, "filename", None) \
            or getattr(exc, "filename2", None) is not None:
        return None
    frames, tb = [], exc.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    if not {"makedirs", "mkdir"} & set(frames):  # a folder being made, not any file operation
        return None
    new = new_on_the_way(str(exc.filename))
    path = os.path.dirname(new[0]) if new else os.path.abspath(str(exc.filename))  # the nearest that exists
    if not os.path.isfile(path):
        return None
    return ConfigError(f"{path} is a file, and the run writes into {os.path.abspath(str(exc.filename))} as a folder: "
                       "give the folder settings (--trainer.default_root_dir, the logger's save_dir, model.export_dir, "
                       "...) a path that is not a file")


def fsdp2_sizes_error(exc: BaseException) -> BaseException | None:
    """ModelParallelStrategy's refusal of a ``data_parallel_size`` that, times the tensor-parallel
    size, is not the number of processes (``configs/strategy/fsdp2.yaml`` writes 8; on other
    machines 80 lines of traceback, one per process, ended in Lightning's sentence), as one
    :class:`~lit_vr1.rules.ConfigError` naming the value to give; None for anything else."""
    from lit_vr1.rules import ConfigError

    found = re.search(r"data_parallel_size=(\d+)`? and `?tensor_parallel_size=(\d+)`? multiplied should equal the "
                      r"world size \((\d+)\)", str(exc)) if isinstance(exc, RuntimeError) else None
    if found is None:
        return None
    dp, tp, world = map(int, found.groups())
    give = f"--trainer.strategy.init_args.data_parallel_size={world // tp}" if world % tp == 0 else \
        "a data_parallel_size x tensor_parallel_size equal to it"
    return ConfigError(f"trainer.strategy.init_args.data_parallel_size={dp} x tensor_parallel_size={tp} must equal the "
                       f"number of processes, trainer.num_nodes x trainer.devices = {world}: give {give} (the FSDP2 "
                       "overlays write the sizes of the machines they were written for)")


def missing_package(exc: BaseException) -> ImportError | None:
    """An optional package's absence that says how to install it, as one ImportError: Lightning's
    ``WandbLogger`` and ``DeepSpeedStrategy`` raise it while the config's classes are built, and
    jsonargparse folds it into a ValueError listing the union's alternatives and a dump of the
    whole value (60-86 lines); None for anything else."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    if not isinstance(exc, (ImportError, MisconfigurationException, ValueError)) or "pip install" not in str(exc):
        return None
    if isinstance(exc, ImportError):
        return exc
    line = next(x for x in str(exc).splitlines() if "pip install" in x)
    return ImportError(line.strip().removeprefix("- "))


OWN_DIRS = (PACKAGE_DIR, PACKAGE_DIR.parent / "callbacks")  # where lit-vr1's own warnings come from


def one_line_warning(message, category, filename, lineno, line=None) -> str:
    """How the command prints a warning: lit-vr1's own as ``lit-vr1: warning: <message>``,
    another package's with its file, line and category; without the source line Python
    appends, which showed the warning call itself (``rank_zero_warn(``), nothing of the user's."""
    path = Path(filename).resolve()
    if any(path.is_relative_to(d) for d in OWN_DIRS):
        return f"lit-vr1: warning: {message}\n"
    return f"{filename}:{lineno}: {category.__name__}: {message}\n"


def exit_status(error: BaseException) -> int:
    """2 for an error to mend (a setting, the data, a checkpoint), 75 (``EX_TEMPFAIL``) for a
    folder another run holds (checkpoints another fit writes, synthetic data another run reads):
    the same command may run once that run ends. An unattended job told the two apart only by
    the message (a new user's trial)."""
    from lit_vr1.checkpoint import IN_USE_EXIT, FolderInUse
    from lit_vr1.data.folder_lock import SyntheticFolderInUse

    return IN_USE_EXIT if isinstance(error, (FolderInUse, SyntheticFolderInUse)) else 2


def same_on_every_process(error: BaseException) -> bool:
    """Whether every process of a run raises ``error`` alike: a refused setting (``ConfigError``)
    or a resume refused for a changed setting (``SettingsRefused``) is judged from what every
    process reads, and a checkpoint folder refused (``FolderRefused``: in use, not writable) from
    what the first tells the others, so rank 0 says it alone (under DDP it was printed once per process); any other
    error, an out-of-memory one or a checkpoint file one machine lacks, may be one process's own
    and is printed where it happened."""
    from lit_vr1.checkpoint import FolderRefused, SettingsRefused
    from lit_vr1.data.folder_lock import SyntheticFolderInUse
    from lit_vr1.rules import ConfigError

    return isinstance(error, (ConfigError, SettingsRefused, FolderRefused, SyntheticFolderInUse))


def main(args: list[str] | None = None) -> None:
    """``lit-vr1``: the CLI, with lit-vr1's own errors printed as one message (exit 2).
    ``--traceback`` (anywhere on the command line) or ``LIT_VR1_TRACEBACK=1`` shows the
    full traceback instead."""
    argv = list(sys.argv[1:] if args is None else args)
    show_traceback = TRACEBACK_FLAG in argv or os.environ.get(TRACEBACK_ENV, "") not in ("", "0")
    argv = [a for a in argv if a != TRACEBACK_FLAG]
    text = option_help(argv)
    if text is not None:
        print(text, end="")
        sys.exit(0)
    argv = replace_lists_whole(argv)  # a list of classes given again replaces the earlier one whole
    misplaced = misplaced_trl_flag(argv)
    if misplaced is not None:
        print(f"lit-vr1: error: {misplaced}", file=sys.stderr)
        sys.exit(2)
    if args is None:
        sys.argv[1:] = argv  # the command line itself, so that Lightning does not warn about args
    if not show_traceback:
        warnings.formatwarning = one_line_warning
    shadowed = shadowed_callbacks_note()
    if shadowed is not None:
        warnings.warn(shadowed, UserWarning, stacklevel=1)
    try:
        LitVR1CLI(args=None if args is None else argv)
    except KeyboardInterrupt as stop:  # Ctrl-C outside Lightning's loops (loading the model, the data): no traceback
        interrupted(_notes(stop), say=rank_zero_only.rank == 0)
    except SIGTERMException as stop:  # a SystemExit without a code: the process would exit 0, as if it had finished
        if rank_zero_only.rank == 0:  # under several processes they all stop at the same step: one message
            print(f"lit-vr1: stopped by SIGTERM (exit 143); resume from the last checkpoint with {RESUME_HINT}"
                  + "".join(f"\n{note}" for note in _notes(stop)), file=sys.stderr)
        sys.exit(143)
    except SystemExit as stop:
        # Ctrl-C inside fit / validate / test / predict: Lightning shuts down, then exits 1
        if stop.code == 1 and isinstance(stop.__context__, KeyboardInterrupt):
            interrupted(_notes(stop), say=rank_zero_only.rank == 0)  # every process is stopped: one message
        raise
    except Exception as exc:  # noqa: BLE001 - ours become one line, anything else is re-raised
        release_checkpoint_folders()  # a fit refused before its module's setup: no teardown, no exception hook
        error = None if show_traceback else user_error(exc)
        if error is None:
            raise
        message = str(error).strip() or type(error).__name__
        for note in getattr(exc, "__notes__", []):
            message += f"\n{note}"
        if rank_zero_only.rank == 0 or not same_on_every_process(error):
            print(f"lit-vr1: error: {message}\n(run again with {TRACEBACK_FLAG} or {TRACEBACK_ENV}=1 for the traceback)",
                  file=sys.stderr)
        sys.exit(exit_status(error))


if __name__ == "__main__":
    main()
