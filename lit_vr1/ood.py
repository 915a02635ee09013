"""Out-of-domain held-out splits for the REC demo (``make demo TASK=ood``).

VLM-R1's headline is that GRPO matches SFT in domain and beats it out of domain. Each
shift below redraws the demo's held-out images with one property the training never
saw, everything else as in training (one canvas size, the same colours and shapes):

- ``small`` / ``large``: shapes below / above the training's side range;
- ``plain``: a uniform grey background instead of the training's colour ramp (the ramp is
  the tiny vision tower's absolute-position cue);
- ``distractors``: two or three shapes (sides up to 48 px, so that three fit), the expression
  names one (training images hold exactly one, so the expression never had to be read).

A shift that would not be out of domain for the training spec (a size range overlapping
the training's) or cannot be drawn (an empty range, a shape larger than the canvas) is
refused with the reason, before anything is trained.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from lit_vr1.data.folder_lock import drawing
from lit_vr1.data.synthetic import SyntheticSpec, write_synthetic

SHIFTS: dict[str, dict] = {
    "small": {"min_size": 14, "max_size": 27},
    "large": {"min_size": 73, "max_size": 100},
    "plain": {"background": "plain"},
    "distractors": {"min_shapes": 2, "max_shapes": 3, "max_size": 48},
}


def _known(shift: str) -> str:
    if shift not in SHIFTS:
        raise ValueError(f"--ood: unknown shift {shift!r}; choose from {', '.join(SHIFTS)} or 'all'")
    return shift


def shifted_spec(spec: SyntheticSpec, shift: str, num_samples: int) -> SyntheticSpec:
    """The training ``spec`` with ``shift``'s changes, ``num_samples`` images and its own seed
    (so no OOD image repeats a training or in-domain held-out one)."""
    _known(shift)
    if num_samples < 1:
        raise ValueError(f"--ood-samples must be at least 1, not {num_samples}")
    out = dataclasses.replace(spec, num_samples=num_samples, seed=spec.seed + 1000, **SHIFTS[shift])
    where = f"--ood {shift} (sides {out.min_size}-{out.max_size} px, training {spec.min_size}-{spec.max_size} px, " \
            f"canvas {spec.canvas} px)"
    if not out.min_size <= out.max_size <= spec.canvas:
        raise ValueError(f"{where}: the shapes cannot be drawn on this canvas")
    if shift in ("small", "large") and out.min_size <= spec.max_size and spec.min_size <= out.max_size:
        raise ValueError(f"{where}: the sizes overlap the training's, so the split would not be out of domain")
    return out


def parse_shifts(value: str) -> list[str]:
    """``--ood``: "" (none), "all", or comma-separated shift names."""
    if not value:
        return []
    return list(SHIFTS) if value == "all" else [_known(v.strip()) for v in value.split(",") if v.strip()]


def write_ood(data_dir: str, spec: SyntheticSpec, shifts: list[str], num_samples: int) -> dict[str, str]:
    """Write each shift's held-out split to ``{data_dir}/ood_{shift}/val.jsonl`` (with its
    images), reusing one already drawn from the same spec; returns ``{shift: folder}``."""
    folders = {}
    for shift in shifts:
        folder = Path(data_dir) / f"ood_{shift}"
        shifted = shifted_spec(spec, shift, num_samples)
        stamp, wanted = folder / "val.spec.json", json.dumps(vars(shifted), sort_keys=True)
        with drawing(str(folder)):  # two demos at once: one draws, the other reads what it drew
            if not ((folder / "val.jsonl").is_file() and stamp.is_file() and stamp.read_text() == wanted):
                write_synthetic(folder, shifted, "val")
                stamp.write_text(wanted)
        folders[shift] = str(folder)
    return folders
