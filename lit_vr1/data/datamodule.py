"""The LightningDataModule: JSONL files (real or synthetic) in, lists of samples out."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningDataModule
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from torch.utils.data import DataLoader, Dataset, Subset

from lit_vr1.checkpoint import refuse_changed_resume, setting_differences
from lit_vr1.data.folder_lock import ReadLock, SyntheticFolderInUse, drawing, in_use_message
from lit_vr1.data.jsonl import (
    FailedRow,
    JsonlDataset,
    Sample,
    SkippedRow,
    check_bad_rows,
    image_token_outlier,
    is_box_answer,
    text_length_outlier,
)
from lit_vr1.data.sampler import EvalSampler, ResumableSampler, WithRepeats, place_sampler, train_position
from lit_vr1.data.synthetic import SyntheticSpec, write_synthetic
from lit_vr1.rules import ConfigError, enforce, rule, settings_object

# a report lists at most this many ids and this many reasons (the full list goes to a file)
REPORT_IDS, REPORT_REASONS = 50, 5
# the ':'-separated arguments that list task names (the others list paths)
NAME_LISTS = ("reward_methods", "val_reward_methods")


def joined(name: str, value: Any) -> str | None:
    """``value`` of the ':'-separated argument ``name`` as the string the data module keeps
    (so its hyperparameters and the CLI see strings): a string as it is, a path (``pathlib.Path``)
    as its string, a list or tuple of them joined with ':'; None stays None. Anything else, an
    empty list, or an item that holds ':' (the separator) is refused, naming the argument."""
    names = name in NAME_LISTS
    what = ("give a task name, a ':'-separated string of them, or a list of them" if names else
            "give a path, a ':'-separated string of paths, or a list of paths")
    item_types = (str,) if names else (str, os.PathLike)
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, item_types):
        return os.fspath(value)
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, item_types) for v in value):
        inner = {type(v).__name__ for v in value if not isinstance(v, item_types)} \
            if isinstance(value, (list, tuple)) else set()
        got = f"a {type(value).__name__} holding {', '.join(sorted(inner))}" if inner else type(value).__name__
        raise TypeError(f"data.{name}: got {got}; {what}")
    if not value:
        raise TypeError(f"data.{name}: got an empty {type(value).__name__}; {what}, or leave it unset (None)")
    parts = [os.fspath(v) for v in value]
    for part in parts:
        if ":" in part:
            raise TypeError(f"data.{name}: {part!r} holds ':', which separates the items; rename it, or give "
                            "the items as a ':'-separated string yourself")
    return ":".join(parts)


def collate(samples: list[Sample | FailedRow]) -> list[Sample | FailedRow]:
    """Batches stay lists of samples: the module's processor turns them into tensors. A held-out
    row that failed to load stays in its batch as a :class:`~lit_vr1.data.jsonl.FailedRow`
    (what it carries reaches :class:`SkippedRowsReport`), which the evaluation and prediction
    steps leave out (:func:`~lit_vr1.data.jsonl.loaded`)."""
    return samples


@rule("data.train_files", "config")
def train_data_given(train_files: str | None, synthetic: object, val_files: str | None = None,
                     predict_files: str | None = None) -> str | None:
    """Some data: training files, a synthetic spec, or (for validate, test and predict alone)
    held-out or prediction files; a fit without training data is refused at its setup."""
    if train_files is None and synthetic is None and val_files is None and predict_files is None:
        return ("set data.train_files (with data.train_images) or data.synthetic; for validate or test "
                "data.val_files (with data.val_images), for predict data.predict_files (with data.predict_images)")
    return None


@rule("data.train_images", "config")
def train_images_given(train_files: str | None, train_images: str | None) -> str | None:
    if train_files is None or train_images is not None:
        return None
    return "data.train_files needs data.train_images: one image folder per file, ':'-separated"


@rule("data.val_images", "config")
def val_images_given(val_files: str | None, val_images: str | None) -> str | None:
    """(Until 2026-12-06 ``validate`` without it failed with an AttributeError traceback.)"""
    if val_files is None or val_images is not None:
        return None
    return "data.val_files needs data.val_images: one image folder per file, ':'-separated"


@rule("data.max_prompt_length", "config")
def max_prompt_length_positive(value: int | None) -> str | None:
    return None if value is None or value >= 1 else f"data.max_prompt_length={value} must be >= 1, or null for no limit"


class GroundingDataModule(LightningDataModule):
    """Train (and validation) data as VLM-R1 JSONL.

    Args:
        train_files: ':'-separated JSONL files. Leave unset to use synthetic data.
        train_images: ':'-separated image folders, one per train file.
        val_files: ':'-separated JSONL files for validation (optional; with synthetic training
            data they replace the synthetic held-out split).
        val_images: image folders for ``val_files``.
        template: prompt template: plain, r1, qwen_rec or r1_rec.
        batch_size: prompts per rollout on each process (each gets G completions).
        num_workers: DataLoader workers.
        synthetic: draw shapes data with this spec when ``train_files`` is unset.
        synthetic_dir: where the synthetic JSONL and PNGs are written (reused when drawn
            with the same spec, redrawn otherwise). None (default): a folder of this spec's own,
            ``data/synthetic/<task>-<canvas>px-<hash of the spec>``, so that two data modules
            with other specs (a notebook's) never draw into one folder; a data module whose
            folder another redrew since it read it refuses to go on.
        num_val_samples: size of the synthetic held-out split (0: none; unused with ``val_files``).
        val_batch_size: prompts per validation batch (greedy decoding; None: ``batch_size``).
        reward_methods: ':'-separated task of each train file (VLM-R1's ``--reward_method``;
            one for all files when a single one is given); a line's own ``reward_method``
            field overrides it. Rewards with ``tasks`` set score only those samples.
        val_reward_methods: the same for ``val_files``.
        val_subset: evaluate on a random subset of this many held-out samples (e.g. 2000 per
            split), drawn with ``subset_seed``: the same subset every time (None: all).
        predict_files / predict_images: ':'-separated JSONL files of prompts (any layout; the
            solution may be absent) and their image folders, for ``lit-vr1 predict``.
        shuffle_seed: seed of the training order (None: the seed ``seed_everything`` set).
            The loaders draw from their own generators, never from the global RNG, so
            validating more or less often does not change the training order or the
            rollouts' sampling.
        bad_rows: "raise" (default: every row is checked, then the run stops with one error
            listing the bad rows, each with its file, line and field: the first 10 and a
            count of the rest) or "skip": bad rows are left out, counted and reported when
            the fit starts, and again at an epoch's end when loading left more out (a warning on
            rank 0 with their ids and reasons, the metric ``data/skipped_rows``, and every row
            in ``skipped_rows.jsonl`` in the log directory). A row whose image fails to decode at load time is replaced in its
            batch by the next row that loads, so batches keep their size (see
            ``lit_vr1.data.jsonl``).
        max_prompt_length: most tokens a prompt may have, image tokens counted as the
            model's processor expands them (None: no limit). Checked for every row at fit
            start, with the LightningModule's processor; a longer row is an error (or
            skipped); prompts are never truncated.
        check_boxes: check ground-truth boxes when the data is read (no area, outside the
            image by more than 1 px); set false for data whose answers are bracketed lists
            of four numbers that are not boxes.
        images_outside_folder: accept image paths that resolve outside their image folder
            (``../other/a.png``, absolute paths, links out); refused by default, so a data
            file cannot read files elsewhere on the machine by accident.
    """

    def __init__(
        self,
        train_files: str | None = None,
        train_images: str | None = None,
        val_files: str | None = None,
        val_images: str | None = None,
        template: str = "qwen_rec",
        batch_size: int = 2,
        num_workers: int = 0,
        synthetic: SyntheticSpec | None = None,
        synthetic_dir: str | None = None,
        num_val_samples: int = 64,
        val_batch_size: int | None = None,
        shuffle_seed: int | None = None,
        val_subset: int | None = None,
        subset_seed: int = 0,
        predict_files: str | None = None,
        predict_images: str | None = None,
        reward_methods: str | None = None,
        val_reward_methods: str | None = None,
        bad_rows: str = "raise",
        max_prompt_length: int | None = None,
        check_boxes: bool = True,
        images_outside_folder: bool = False,
    ) -> None:
        super().__init__()
        self.bad_rows = check_bad_rows(bad_rows)
        enforce(max_prompt_length_positive(max_prompt_length))
        self.max_prompt_length, self.check_boxes = max_prompt_length, check_boxes
        self.images_outside_folder = images_outside_folder
        # paths and lists of them from Python, kept as the ':'-separated strings the CLI gives
        train_files, train_images = joined("train_files", train_files), joined("train_images", train_images)
        val_files, val_images = joined("val_files", val_files), joined("val_images", val_images)
        predict_files, predict_images = joined("predict_files", predict_files), joined("predict_images", predict_images)
        reward_methods = joined("reward_methods", reward_methods)
        val_reward_methods = joined("val_reward_methods", val_reward_methods)
        synthetic = settings_object(synthetic, SyntheticSpec, "synthetic")  # from Python a dict may stand for it
        self.processor: Any = None  # for max_prompt_length: the module's, or one given to use_processor
        enforce(train_data_given(train_files, synthetic, val_files, predict_files))
        enforce(train_images_given(train_files, train_images))
        enforce(val_images_given(val_files, val_images))
        self.train_files, self.train_images = train_files, train_images
        self.val_files, self.val_images = val_files, val_images
        self.template = template
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.synthetic = synthetic
        self.synthetic_dir = synthetic_dir
        self._drawn: dict[str, tuple[Path, str]] = {}  # split -> (stamp file, the spec stamp its rows were read under)
        self._reading = ReadLock()  # a Trainer stage's hold on the synthetic folder (folder_lock)
        self.num_val_samples = num_val_samples
        self.val_batch_size = val_batch_size or batch_size
        self.shuffle_seed = shuffle_seed
        self.reward_methods, self.val_reward_methods = reward_methods, val_reward_methods
        self.val_subset, self.subset_seed = val_subset, subset_seed
        self.predict_files, self.predict_images = predict_files, predict_images
        self.predict_set: JsonlDataset | None = None
        self.train_set: JsonlDataset | None = None
        self.val_set: JsonlDataset | None = None
        self._resume_position: dict | None = None  # from a checkpoint, for the next train_dataloader
        self._train_sampler: ResumableSampler | None = None  # the last train_dataloader's

    @property
    def synthetic_dir(self) -> str:
        """The synthetic data's folder: the one given, else :func:`default_synthetic_dir`."""
        if self._synthetic_dir is not None or self.synthetic is None:
            return self._synthetic_dir
        return default_synthetic_dir(self.synthetic, self.num_val_samples)

    @synthetic_dir.setter
    def synthetic_dir(self, value: str | None) -> None:
        self._synthetic_dir = None if value is None else str(value)

    def _stamp(self, split: str) -> Path:
        return Path(self.synthetic_dir) / f"{split}.spec.json"

    def check_not_redrawn(self) -> None:
        """Refuse to go on when the synthetic folder this module read its rows from was redrawn
        since with another spec (another data module or run given the same ``synthetic_dir``):
        its rows' boxes would be read against the other spec's images, silently."""
        for split, (path, stamp) in self._drawn.items():
            now = path.read_text() if path.is_file() else None
            if now != stamp:
                raise ValueError(f"{path.parent}: its {split} split was drawn again with another spec (by another "
                                 "data module or run given the same data.synthetic_dir) after this data module read it: "
                                 "its rows no longer match the images there; give each data module its own "
                                 "synthetic_dir (or leave it unset: a folder per spec), then build this one again")

    def _synthetic_paths(self, split: str) -> tuple[str, str]:
        root = Path(self.synthetic_dir)
        return str(root / f"{split}.jsonl"), str(root / "images")

    def prepare_data(self) -> None:
        """Write the synthetic splits once (rank 0 only, as Lightning calls it; ``setup`` calls it
        on every process, where it draws nothing). Under a Trainer's stage the folder is then held
        for reading until :meth:`teardown`, and a redraw while another run reads it is refused
        (:mod:`lit_vr1.data.folder_lock`)."""
        if not self._reads_synthetic():
            return
        try:
            self._draw_and_hold()
        except SyntheticFolderInUse as refused:
            if self._processes() <= 1:
                raise
            self._refused = str(refused)  # said by every process at setup (Lightning calls this on one)

    def _reads_synthetic(self) -> bool:
        """Whether this stage reads a synthetic split: not with training files of the user's, nor
        for predict (``predict_files``) or a validate / test of held-out files."""
        if self.train_files is not None or self.synthetic is None:
            return False
        fn = getattr(getattr(self.trainer, "state", None), "fn", None)  # TrainerFn compares as its str value
        return not (fn in ("validate", "test") and self.val_files is not None or fn == "predict")

    def _draw_and_hold(self) -> None:
        folder = self.synthetic_dir
        with drawing(folder):
            for split, n in (("train", self.synthetic.num_samples), ("val", self.num_val_samples)):
                if n == 0 or (split == "val" and self.val_files is not None):  # the user's held-out files instead
                    continue
                path, _ = self._synthetic_paths(split)
                spec = SyntheticSpec(**{**vars(self.synthetic), "num_samples": n})
                stamp = self._stamp(split)
                wanted = json.dumps(vars(spec), sort_keys=True)
                drawn = stamp.read_text() if stamp.is_file() else None
                # Reuse what is on disk only when it was drawn with this very spec.
                if os.path.isfile(path) and drawn == wanted:
                    continue
                if drawn is not None and not self._reading.may_redraw(folder):
                    raise SyntheticFolderInUse(in_use_message(folder, split, drawn, wanted))
                stamp.unlink(missing_ok=True)  # a draw killed half way leaves no stamp over its rows
                write_synthetic(folder, spec, split)
                stamp.write_text(wanted)
            if self.trainer is not None:
                self._reading.hold(folder)

    def teardown(self, stage: str) -> None:
        """The stage is over: other runs may redraw the synthetic folder."""
        self._reading.release()

    def on_exception(self, exception: BaseException) -> None:
        """A stage that raised gets no teardown: the folder is let go here."""
        self._reading.release()

    def setup(self, stage: str | None = None) -> None:
        if stage == "predict":
            self._add_skipped_rows_report()
            return  # predict reads only data.predict_files (see predict_dataloader)
        if self._processes() > 1 and self.train_files is None and self.synthetic is not None:
            # a refusal of the first process's prepare_data, told to every process (the others would
            # wait for it in a collective, or die when it left)
            refused = self.trainer.strategy.broadcast(getattr(self, "_refused", None), src=0)
            self._refused = None
            if refused:
                raise SyntheticFolderInUse(refused)
        if self.train_files is None and self.synthetic is None:  # held-out files only: evaluation
            if stage in ("fit", None):
                raise ConfigError(f"{'lit-vr1 fit' if stage else 'training'} needs training data: set "
                                  "data.train_files (with data.train_images) or data.synthetic")
            train, images, val, val_images = None, None, self.val_files, self.val_images
        elif self.train_files is None:
            if self._reads_synthetic():  # idempotent; covers direct use outside a Trainer
                self._draw_and_hold()  # a refusal here is this process's own, raised as it comes
            train, images = self._synthetic_paths("train")
            val, val_images = self._synthetic_paths("val") if self.num_val_samples else (None, None)
            if self.val_files is not None:  # held-out files given: they are scored, not the synthetic split
                val, val_images = self.val_files, self.val_images
        else:
            train, images = self.train_files, self.train_images
            val, val_images = self.val_files, self.val_images
        # validate and test of held-out files read no training file (a bad training row refused them)
        evaluating_files = stage in ("validate", "test") and self.val_files is not None
        if self.train_set is None and train is not None and not evaluating_files:
            self.train_set = self._dataset(train, images, self.reward_methods, "train")
            self._remember_stamp("train", train)
        if self.val_set is None and val is not None:
            self.val_set = self._dataset(val, val_images, self.val_reward_methods, "val")
            self._remember_stamp("val", val)
            self.val_set.replace_failed = self._processes() > 1  # one process: a stand-in would be scored twice
        self.check_not_redrawn()
        if self.trainer is not None and stage == "fit" and self.val_set is None:
            self.trainer.limit_val_batches = 0  # no held-out data: the fit validates nothing (and says nothing of it)
        self._add_skipped_rows_report()

    def _remember_stamp(self, split: str, path: str) -> None:
        """The spec stamp of the synthetic ``split`` this module read its rows under (none for files of the user's)."""
        if self.train_files is None and self.synthetic is not None and path == self._synthetic_paths(split)[0]:
            stamp = self._stamp(split)
            if stamp.is_file():
                self._drawn[split] = (stamp, stamp.read_text())

    def _processes(self) -> int:
        """Processes of the run. Under several, a held-out row that fails to load is replaced, as a
        training row is: every process must run every evaluation batch (a process left with an empty
        one would skip the collectives the others wait in), and the distributed sampler already
        repeats rows to give each process as many."""
        return self.trainer.world_size if self.trainer is not None else 1

    def _add_skipped_rows_report(self) -> None:
        if self.trainer is not None and self.bad_rows == "skip":
            if not any(isinstance(c, SkippedRowsReport) for c in self.trainer.callbacks):
                self.trainer.callbacks.append(SkippedRowsReport(self))

    def use_processor(self, processor: Any) -> None:
        """The processor that counts prompt tokens for ``max_prompt_length`` when the data
        module is used without a Trainer (under one, the LightningModule's is taken)."""
        self.processor = processor

    def _dataset(self, files: str, images: str, reward_methods: str | None, split: str) -> JsonlDataset:
        ds = JsonlDataset(files, images, self.template, reward_methods, self.bad_rows, self.check_boxes,
                          self.images_outside_folder, flag_names(split))
        module = self.trainer.lightning_module if self.trainer is not None else None
        processor = self.processor or getattr(module, "processor", None)
        if self.max_prompt_length is not None:
            if processor is None:
                raise ValueError("data.max_prompt_length needs the model's processor to count tokens: train with a "
                                 "lit-vr1 module (it has one), or call datamodule.use_processor(processor) first")
            ds.check_prompt_lengths(processor, self.max_prompt_length)
        elif processor is not None:  # no limit: say so when a few images or questions dwarf the rest
            for outlier in (image_token_outlier(processor, ds.records, flag_names(split)[0]),
                            text_length_outlier(processor, ds.records, flag_names(split)[0], self.template)):
                if outlier:
                    rank_zero_warn(outlier)
        note = box_template_note(self.template, ds.records, flag_names(split)[0])
        if note:
            rank_zero_warn(note)
        return ds

    def skipped_at_build(self) -> list[SkippedRow]:
        """Rows left out of the training and validation sets when they were built."""
        return [r for ds in (self.train_set, self.val_set) if ds is not None for r in ds.skipped]

    def predict_dataloader(self) -> DataLoader:
        if self.predict_files is None or self.predict_images is None:
            raise ValueError("lit-vr1 predict needs data.predict_files and data.predict_images "
                             "(':'-separated JSONL files of prompts and their image folders)")
        if self.predict_set is None:
            self.predict_set = JsonlDataset(self.predict_files, self.predict_images, self.template,
                                            bad_rows=self.bad_rows, check_boxes=self.check_boxes,
                                            images_outside_folder=self.images_outside_folder,
                                            names=flag_names("predict"))
            self.predict_set.replace_failed = self._processes() > 1  # one process: a stand-in would be predicted twice
        return DataLoader(self.predict_set, batch_size=self.val_batch_size, collate_fn=collate,
                          num_workers=self.num_workers)

    def _shuffle_seed(self) -> int:
        """``data.shuffle_seed``, or the process's torch seed (``seed_everything``'s) when unset."""
        return (torch.initial_seed() if self.shuffle_seed is None else self.shuffle_seed) % 2**63

    def _generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self._shuffle_seed())

    def train_dataloader(self) -> DataLoader:
        """Shuffled by a :class:`ResumableSampler` (one seeded order per epoch, split across
        processes), which a resumed fit continues where its checkpoint was taken."""
        self.check_not_redrawn()
        trainer = self.trainer
        sampler = ResumableSampler(self.train_set, self.batch_size, self._shuffle_seed(),
                                   num_replicas=trainer.world_size if trainer else 1,
                                   rank=trainer.global_rank if trainer else 0)
        place_sampler(sampler, self._resume_position)
        self._resume_position = None
        self._train_sampler = sampler
        return DataLoader(
            self.train_set, batch_size=self.batch_size, sampler=sampler, collate_fn=collate,
            num_workers=self.num_workers, drop_last=True, generator=self._generator(),
        )

    def data_identity(self) -> dict:
        """The settings that make the training data what it is (files, folders, synthetic
        spec, template, tasks): a resume with any of them changed is refused."""
        return {"train_files": self.train_files, "train_images": self.train_images,
                "synthetic": vars(self.synthetic) if self.synthetic is not None and self.train_files is None else None,
                "template": self.template, "reward_methods": self.reward_methods}

    def training_order(self) -> dict:
        """What decides which samples come next after a mid-epoch resume, besides the data
        (:meth:`data_identity`): the resume skips the batches of the epoch trained so far, so
        they must be batches of the same size, in the same order (drawn from the shuffle
        seed), split over as many processes, of the same rows. ``num_workers`` does not
        matter: the order is drawn by the sampler, in the main process."""
        trainer = self.trainer
        sampler = self._train_sampler
        return {"batch_size": self.batch_size,
                "shuffle_seed": sampler.seed if sampler is not None else self._shuffle_seed(),
                "processes": trainer.world_size if trainer is not None else 1,
                "rows": len(self.train_set) if self.train_set is not None else None}

    def _position(self) -> dict | None:
        """``train_position`` of the fit, an epoch trained to its end given as the start of the
        next one (where the sampler resumes it), so that only a checkpoint taken mid-epoch says
        ``batches_done`` > 0."""
        position = train_position(self.trainer)
        sampler = self._train_sampler
        if position and sampler is not None and position["batches_done"] >= sampler.num_samples // sampler.batch_size:
            position = {"epoch": position["epoch"] + 1, "batches_done": 0}
        return position

    def state_dict(self) -> dict:
        """Saved in checkpoints: where the fit stands in the training data (see
        ``train_position``), which data it is (:meth:`data_identity`) and in what order it
        is trained (:meth:`training_order`)."""
        position = self._position()
        state: dict = {"data": self.data_identity(), "order": self.training_order()}
        if position:
            state["train_position"] = position
        return state

    def identity_differences(self, state_dict: dict) -> list[str]:
        """The settings of :meth:`data_identity` that differ from those saved in ``state_dict``
        (this data module's part of a checkpoint), each as ``data.<key>: ... now``."""
        saved = state_dict.get("data")
        return setting_differences(saved, self.data_identity(), tuple(saved), "data") if saved else []

    def order_differences(self, state_dict: dict) -> list[str]:
        """For a checkpoint taken mid-epoch, the settings of :meth:`training_order` that differ
        from those saved in ``state_dict``, each named as its flag (a resume would skip other
        samples than those trained, and train some twice and others never); none for a
        checkpoint taken at the end of an epoch, or one that did not save them."""
        saved, position = state_dict.get("order"), state_dict.get("train_position") or {}
        if not saved or not position.get("batches_done"):
            return []
        now = self.training_order()
        where = f"the checkpoint is {position['batches_done']} batches into epoch {position['epoch']}"
        return [f"{order_flag(key, self.shuffle_seed)}: {saved[key]!r} in the checkpoint, {now[key]!r} now ({where}"
                + (f"; data.shuffle_seed={saved[key]} goes on in its order)" if key == "shuffle_seed" else ")")
                for key in saved if key in now and None not in (saved[key], now[key]) and saved[key] != now[key]]

    def resume_differences(self, state_dict: dict) -> dict[str, list[str]]:
        """What a resume from ``state_dict`` (this data module's part of a checkpoint) would
        change: ``{"training data": identity_differences, "training order": order_differences}``."""
        return {"training data": self.identity_differences(state_dict),
                "training order": self.order_differences(state_dict)}

    def load_state_dict(self, state_dict: dict) -> None:
        if self.trainer is not None and self.trainer.state.fn == "fit":  # a resume
            refuse_changed_resume(self.resume_differences(state_dict))
        self._resume_position = state_dict.get("train_position")

    def held_out(self) -> Dataset:
        """The validation set, or its seeded subset of ``val_subset`` samples; a ValueError saying
        why when there is none (no held-out data configured, or the module not set up yet)."""
        self.check_not_redrawn()
        if self.val_set is None:
            if self.train_files is None and not self.num_val_samples and self.val_files is None:
                why = "num_val_samples=0 (the synthetic data's held-out split is empty): give num_val_samples > 0"
            elif self.train_files is not None and self.val_files is None:
                why = "val_files is not set: give held-out JSONL files with val_files and val_images"
            elif self.train_files is None and self.synthetic is None:  # held-out files alone
                why = "it is read in setup: call data.setup('validate') first (Trainer.validate does)"
            else:
                why = "it is read in setup: call data.setup('fit') first (Trainer.fit does)"
            raise ValueError(f"GroundingDataModule.held_out(): no held-out data; {why}")
        if self.val_subset is None or self.val_subset >= len(self.val_set):
            return self.val_set
        order = torch.randperm(len(self.val_set), generator=torch.Generator().manual_seed(self.subset_seed))
        return Subset(self.val_set, sorted(order[: self.val_subset].tolist()))

    def test_dataloader(self) -> DataLoader | list:
        """``lit-vr1 test`` scores the held-out files (and subset) that validation uses."""
        return self.val_dataloader()

    def val_dataloader(self) -> DataLoader | list:
        if self.val_set is None:
            fn = getattr(self.trainer.state.fn, "value", None) if self.trainer is not None else None
            if fn in ("validate", "test"):  # the command's whole point: say so rather than score nothing
                source = ("data.num_val_samples=0 (the synthetic data's held-out split is empty)"
                          if self.train_files is None else "data.val_files is not set")
                raise ValueError(f"lit-vr1 {fn} has nothing to score: {source}; give held-out data with "
                                 "data.val_files and data.val_images (JSONL files and their image folders)"
                                 + (" or data.num_val_samples > 0" if self.train_files is None else ""))
            return []  # no validation data (a fit sets limit_val_batches to 0 in setup: Lightning skips validation)
        # its own generator too: creating a loader's iterator draws a worker seed from it
        held_out, sampler = self.held_out(), None
        world = getattr(self.trainer, "world_size", 1) if self.trainer is not None else 1
        if world > 1:  # each row scored once over the processes (DistributedSampler's padding repeated some)
            held_out = WithRepeats(held_out)
            sampler = EvalSampler(held_out, num_replicas=world, rank=self.trainer.global_rank)
        return DataLoader(held_out, batch_size=self.val_batch_size, sampler=sampler, collate_fn=collate,
                          num_workers=self.num_workers, generator=self._generator())


def default_synthetic_dir(spec: SyntheticSpec, num_val_samples: int) -> str:
    """``data/synthetic/<task>-<canvas>px-<10 hex digits of the spec's hash>``: one folder per spec
    (the held-out split's size included), in the working directory."""
    key = json.dumps({**vars(spec), "num_val_samples": num_val_samples}, sort_keys=True)
    return str(Path("data") / "synthetic" / f"{spec.task}-{spec.canvas}px-{hashlib.sha1(key.encode()).hexdigest()[:10]}")


def _gather(rows: list[SkippedRow]) -> list[SkippedRow]:
    """Every process's rows, on every process (the rows themselves under a single process)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return rows
    parts: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, rows)
    return [r for part in parts for r in part]


class SkippedRowsReport(Callback):
    """Counts and reports the rows ``bad_rows="skip"`` left out (added by
    :class:`GroundingDataModule` itself; nothing to configure).

    When a fit starts, the rows left out when the data was read are warned of and written down.
    At the end of every training epoch: the metric ``data/skipped_rows`` (rows left out
    when the data was built, plus the distinct rows that failed to load this epoch on any
    process). The rows not reported before (a row that fails to load for the first time) are
    warned of on rank 0 with their ids and first reasons, and appended to
    ``skipped_rows.jsonl`` in the Trainer's log directory (when it has one) with the epoch:
    a row left out every epoch is listed once.
    """

    def __init__(self, datamodule: GroundingDataModule) -> None:
        self.datamodule = datamodule
        self.at_load: list[SkippedRow] = []
        self.reports: list[dict] = []  # one per epoch: {"epoch", "at_build", "at_load"}
        self.reported: set[tuple[str, str, str]] = set()  # (when, id, reason) of the rows warned of

    def _collect(self, batch: Any) -> None:
        for sample in batch if isinstance(batch, list) else []:  # FailedRow entries carry theirs too
            self.at_load.extend(getattr(sample, "skipped", []))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._collect(batch)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._collect(batch)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._collect(batch)

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._collect(batch)

    def _take_at_load(self) -> list[SkippedRow]:
        """The distinct rows that failed to load since the last report, on every process; cleared."""
        rows = list({(r.id, r.reason): r for r in _gather(self.at_load)}.values())
        self.at_load = []
        return rows

    def _report_alone(self, trainer, what: str, held_out: list[SkippedRow]) -> None:
        """``validate``, ``test`` and ``predict`` (no training epoch to report at): the rows they
        left out, once, at their end."""
        report = {"epoch": what, "at_build": held_out, "at_load": self._take_at_load()}
        self.reports.append(report)
        self._warn_new(report, trainer.log_dir)

    def on_validation_end(self, trainer, pl_module) -> None:
        if getattr(trainer.state.fn, "value", None) == "validate":
            val_set = self.datamodule.val_set
            self._report_alone(trainer, "validate", list(val_set.skipped) if val_set is not None else [])

    def on_test_end(self, trainer, pl_module) -> None:
        val_set = self.datamodule.val_set
        self._report_alone(trainer, "test", list(val_set.skipped) if val_set is not None else [])

    def on_predict_end(self, trainer, pl_module) -> None:
        predict_set = self.datamodule.predict_set
        self._report_alone(trainer, "predict", list(predict_set.skipped) if predict_set is not None else [])

    def on_train_start(self, trainer, pl_module) -> None:
        """The rows left out when the data was read, warned of and written down as the fit starts:
        at the first epoch's end alone, a run stopped before it (a preemption, a kill) never said
        them (a new user's 863 and 4,639 rows of a 150,000-row epoch)."""
        at_build = self.datamodule.skipped_at_build()
        if at_build:
            self._warn_new({"epoch": "the fit's start", "at_build": at_build, "at_load": []}, trainer.log_dir)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        at_build = self.datamodule.skipped_at_build()
        at_load = self._take_at_load()
        report = {"epoch": trainer.current_epoch, "at_build": at_build, "at_load": at_load}
        self.reports.append(report)
        # the same value on every process (gathered above); sync_dist only keeps Lightning from warning
        pl_module.log("data/skipped_rows", float(len(at_build) + len(at_load)), logger=True, sync_dist=True)
        self._warn_new(report, trainer.log_dir)

    def _warn_new(self, report: dict, log_dir: str | None) -> None:
        """Warn of (and write down) the rows of ``report`` not warned of before; ``log_dir`` is
        asked of the Trainer on every rank (a collective under DDP)."""
        new = {kind: [r for r in report[kind] if (kind, r.id, r.reason) not in self.reported]
               for kind in ("at_build", "at_load")}
        self.reported.update((kind, r.id, r.reason) for kind, rows in new.items() for r in rows)
        if new["at_build"] or new["at_load"]:
            earlier = len(new["at_build"]) + len(new["at_load"]) < len(report["at_build"]) + len(report["at_load"])
            self._warn({**report, **new, "earlier": earlier}, log_dir)

    @rank_zero_only
    def _warn(self, report: dict, log_dir: str | None) -> None:
        rows = report["at_build"] + report["at_load"]
        more = f" and {len(rows) - REPORT_IDS} more" if len(rows) > REPORT_IDS else ""
        ids = ", ".join(r.id for r in rows[:REPORT_IDS]) + more
        reasons = "\n  ".join(r.reason for r in rows[:REPORT_REASONS])
        where = ""
        if log_dir is not None:
            os.makedirs(log_dir, exist_ok=True)
            path = os.path.join(log_dir, "skipped_rows.jsonl")
            with open(path, "a", encoding="utf-8") as f:
                for kind in ("at_build", "at_load"):
                    for r in report[kind]:
                        f.write(json.dumps({"epoch": report["epoch"], "when": kind, "id": r.id, "reason": r.reason}) + "\n")
            where = f"; every row in {path}"
        when = (f"epoch {report['epoch']}" if isinstance(report["epoch"], int) else report["epoch"])
        loaded = ""
        if report["at_load"]:
            held_out = "; held-out rows left out" if self.datamodule.val_set is not None else ""
            loaded = (f", {len(report['at_load'])} at load time, "
                      + (f"training rows replaced in their batches by other rows{held_out}"
                         if isinstance(report["epoch"], int) else "left out of their batches"))
        fresh = " not reported before" if report.get("earlier") else ""  # the others were warned of already
        rank_zero_warn(f"data.bad_rows=skip: {when} left out {len(rows)} row(s){fresh} "
                       f"({len(report['at_build'])} when the data was read{loaded}): ids {ids}{where}. "
                       f"First reasons:\n  {reasons}")


def order_flag(key: str, shuffle_seed: int | None) -> str:
    """How a message names a setting of :meth:`GroundingDataModule.training_order`."""
    return {"batch_size": "data.batch_size",
            "shuffle_seed": "data.shuffle_seed" if shuffle_seed is not None else
            "data.shuffle_seed (unset: seed_everything's seed, a random one without it)",
            "processes": "processes (trainer.devices x trainer.num_nodes)",
            "rows": "training rows (data files changed, or other rows left out by data.bad_rows=skip)"}[key]


def flag_names(split: str) -> tuple[str, str, str]:
    """The flags that give a split's data files, image folders and reward methods, for
    messages: ``flag_names("val")`` is (data.val_files, data.val_images, data.val_reward_methods)."""
    methods = "data.reward_methods" if split == "train" else f"data.{split}_reward_methods"
    return f"data.{split}_files", f"data.{split}_images", methods


BOX_TEMPLATES = ("qwen_rec", "r1_rec")  # the templates that ask for a JSON list of boxes


def box_template_note(template: str, records: list, flag: str) -> str | None:
    """A note when a box template (``qwen_rec``, the default, or ``r1_rec``) is put on data whose
    labelled rows are mostly not boxes (a counting or VQA question then reads "... Answer with a
    JSON list such as [{"bbox_2d": ...}]", silently); None otherwise."""
    labelled = [r.solution for r in records if r.solution not in ("", None)]
    if template not in BOX_TEMPLATES or not labelled:
        return None
    boxes = sum(isinstance(s, list) or is_box_answer(s) for s in labelled)
    if boxes >= 0.5 * len(labelled):
        return None
    return (f"data.template={template!r} appends the box instruction ('Answer with a JSON list such as "
            f"[{{\"bbox_2d\": ...}}]') to every question, but {len(labelled) - boxes} of the {len(labelled)} "
            f"labelled rows of {flag} are answered without boxes: for questions that are not grounding set "
            "data.template to plain (the question as written) or r1 (think, then answer)")
