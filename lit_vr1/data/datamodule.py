"""The LightningDataModule: JSONL files (real or synthetic) in, lists of samples out."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, Subset

from lit_vr1.data.jsonl import JsonlDataset, Sample
from lit_vr1.data.synthetic import SyntheticSpec, write_synthetic


def collate(samples: list[Sample]) -> list[Sample]:
    """Batches stay lists of samples: the module's processor turns them into tensors."""
    return samples


class GroundingDataModule(LightningDataModule):
    """Train (and validation) data as VLM-R1 JSONL.

    Args:
        train_files: ':'-separated JSONL files. Leave unset to use synthetic data.
        train_images: ':'-separated image folders, one per train file.
        val_files: ':'-separated JSONL files for validation (optional).
        val_images: image folders for ``val_files``.
        template: prompt template: plain, r1, qwen_rec or r1_rec.
        batch_size: prompts per rollout on each process (each gets G completions).
        num_workers: DataLoader workers.
        synthetic: draw shapes data with this spec when ``train_files`` is unset.
        synthetic_dir: where the synthetic JSONL and PNGs are written (reused when drawn
            with the same spec, redrawn otherwise).
        num_val_samples: size of the synthetic held-out split (0: none).
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
        synthetic_dir: str = "data/synthetic",
        num_val_samples: int = 64,
        val_batch_size: int | None = None,
        shuffle_seed: int | None = None,
        val_subset: int | None = None,
        subset_seed: int = 0,
        predict_files: str | None = None,
        predict_images: str | None = None,
        reward_methods: str | None = None,
        val_reward_methods: str | None = None,
    ) -> None:
        super().__init__()
        if train_files is None and synthetic is None:
            raise ValueError("set data.train_files (with data.train_images) or data.synthetic")
        if train_files is not None and train_images is None:
            raise ValueError("data.train_files needs data.train_images: one image folder per file, ':'-separated")
        self.train_files, self.train_images = train_files, train_images
        self.val_files, self.val_images = val_files, val_images
        self.template = template
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.synthetic = synthetic
        self.synthetic_dir = synthetic_dir
        self.num_val_samples = num_val_samples
        self.val_batch_size = val_batch_size or batch_size
        self.shuffle_seed = shuffle_seed
        self.reward_methods, self.val_reward_methods = reward_methods, val_reward_methods
        self.val_subset, self.subset_seed = val_subset, subset_seed
        self.predict_files, self.predict_images = predict_files, predict_images
        self.predict_set: JsonlDataset | None = None
        self.train_set: JsonlDataset | None = None
        self.val_set: JsonlDataset | None = None

    def _synthetic_paths(self, split: str) -> tuple[str, str]:
        root = Path(self.synthetic_dir)
        return str(root / f"{split}.jsonl"), str(root / "images")

    def prepare_data(self) -> None:
        """Write the synthetic splits once (rank 0 only, as Lightning calls it)."""
        if self.train_files is not None or self.synthetic is None:
            return
        for split, n in (("train", self.synthetic.num_samples), ("val", self.num_val_samples)):
            if n == 0:
                continue
            path, _ = self._synthetic_paths(split)
            spec = SyntheticSpec(**{**vars(self.synthetic), "num_samples": n})
            stamp = Path(self.synthetic_dir) / f"{split}.spec.json"
            wanted = json.dumps(vars(spec), sort_keys=True)
            # Reuse what is on disk only when it was drawn with this very spec.
            if not (os.path.isfile(path) and stamp.is_file() and stamp.read_text() == wanted):
                write_synthetic(self.synthetic_dir, spec, split)
                stamp.write_text(wanted)

    def setup(self, stage: str | None = None) -> None:
        if stage == "predict":
            return  # predict reads only data.predict_files (see predict_dataloader)
        if self.train_files is None:
            self.prepare_data()  # idempotent; covers direct use outside a Trainer
            train, images = self._synthetic_paths("train")
            val, val_images = self._synthetic_paths("val") if self.num_val_samples else (None, None)
        else:
            train, images = self.train_files, self.train_images
            val, val_images = self.val_files, self.val_images
        if self.train_set is None:
            self.train_set = JsonlDataset(train, images, self.template, self.reward_methods)
        if self.val_set is None and val is not None:
            self.val_set = JsonlDataset(val, val_images, self.template, self.val_reward_methods)

    def predict_dataloader(self) -> DataLoader:
        if self.predict_files is None or self.predict_images is None:
            raise ValueError("lit-vr1 predict needs data.predict_files and data.predict_images "
                             "(':'-separated JSONL files of prompts and their image folders)")
        if self.predict_set is None:
            self.predict_set = JsonlDataset(self.predict_files, self.predict_images, self.template)
        return DataLoader(self.predict_set, batch_size=self.val_batch_size, collate_fn=collate,
                          num_workers=self.num_workers)

    def _generator(self) -> torch.Generator:
        seed = torch.initial_seed() if self.shuffle_seed is None else self.shuffle_seed
        return torch.Generator().manual_seed(seed % 2**63)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.train_set, batch_size=self.batch_size, shuffle=True, collate_fn=collate,
            num_workers=self.num_workers, drop_last=True, generator=self._generator(),
        )

    def held_out(self) -> Dataset | None:
        """The validation set, or its seeded subset of ``val_subset`` samples."""
        if self.val_set is None or self.val_subset is None or self.val_subset >= len(self.val_set):
            return self.val_set
        order = torch.randperm(len(self.val_set), generator=torch.Generator().manual_seed(self.subset_seed))
        return Subset(self.val_set, sorted(order[: self.val_subset].tolist()))

    def test_dataloader(self) -> DataLoader | list:
        """``lit-vr1 test`` scores the held-out files (and subset) that validation uses."""
        return self.val_dataloader()

    def val_dataloader(self) -> DataLoader | list:
        if self.val_set is None:
            return []  # no validation data: Lightning skips validation
        # its own generator too: creating a loader's iterator draws a worker seed from it
        return DataLoader(self.held_out(), batch_size=self.val_batch_size, collate_fn=collate,
                          num_workers=self.num_workers, generator=self._generator())
