"""PredictionWriter: ``lit-vr1 predict`` output as JSONL plus PNGs with the boxes drawn."""

from __future__ import annotations

import json
import math
import os
import re

from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info
from PIL import ImageDraw

from lit_vr1 import run_record
from lit_vr1.data.jsonl import predicted
from lit_vr1.rewards.boxes import flatten_box, solution_boxes

RED, GREEN = (220, 0, 0), (0, 170, 0)


def truth_boxes(solution) -> list[tuple[tuple[float, ...], str, tuple[int, int, int]]]:
    """The ground-truth boxes of a line that has them (any data format), for drawing in
    green; [] for prompts without a solution or with a text answer."""
    if solution in (None, ""):
        return []
    try:
        return [(b.box, b.label, GREEN) for b in solution_boxes(solution)
                if all(math.isfinite(v) for v in b.box)]
    except (TypeError, ValueError):
        return []


class PredictionWriter(BasePredictionWriter):
    """Write each predicted batch as it comes.

    ``{output_dir}/predictions.jsonl``: one line per prompt (id, source, prompt, completion,
    boxes in original-image pixels with labels, image sizes); with several processes each
    writes ``predictions.rank<r>.jsonl``. ``{output_dir}/images/<id>.png``: the first image
    with the predicted boxes in red and their labels, the line's ground truth (when it has
    boxes) in green, and "no box parsed" when the answer held none (when ``draw``),
    upscaled by ``scale``.
    """

    def __init__(self, output_dir: str = "predictions", draw: bool = True, scale: int = 1) -> None:
        super().__init__(write_interval="batch")
        if scale < 1:
            raise ValueError(f"PredictionWriter: scale={scale} must be >= 1")
        self.output_dir, self.draw, self.scale = output_dir, draw, scale

    def _jsonl(self, trainer) -> str:
        name = "predictions.jsonl" if trainer.world_size == 1 else f"predictions.rank{trainer.global_rank}.jsonl"
        return os.path.join(self.output_dir, name)

    def on_predict_start(self, trainer, pl_module) -> None:
        os.makedirs(os.path.join(self.output_dir, "images"), exist_ok=True)
        self._drawn: dict[str, int] = {}  # picture names drawn in this run, and how often
        open(self._jsonl(trainer), "w", encoding="utf-8").close()  # a new prediction run starts a new file
        if trainer.global_rank == 0:  # which checkpoint, model, versions and seed wrote these answers
            rec = dict(getattr(pl_module, "_run_record", None) or run_record.record("predict", trainer, pl_module))
            if getattr(trainer, "ckpt_path", None):  # known once restored (from Python: not yet at setup)
                rec["checkpoint"] = os.path.abspath(trainer.ckpt_path)
            run_record.write(self.output_dir, rec)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        """A prediction that failed before its first answer leaves no empty file behind (read as
        "no answers" beside the error); one that failed later keeps the answers it wrote."""
        path = self._jsonl(trainer)
        if trainer.predicting and os.path.isfile(path) and os.path.getsize(path) == 0:
            os.remove(path)

    def on_predict_end(self, trainer, pl_module) -> None:
        where = (self._jsonl(trainer) if trainer.world_size == 1 else  # one file per process, each of its rows
                 os.path.join(self.output_dir, f"predictions.rank{{0..{trainer.world_size - 1}}}.jsonl") +
                 " (one per process)")
        rank_zero_info(f"PredictionWriter: answers in {where}"
                       + (f", pictures in {os.path.join(self.output_dir, 'images')}" if self.draw else ""))

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx) -> None:
        rows = predicted(batch)  # the rows predicted (failed ones and stand-ins left out), in the order of ``prediction``
        if self.draw and len(rows) != len(prediction):
            raise ValueError(f"PredictionWriter: {len(prediction)} predictions for {len(rows)} rows predicted in the batch: "
                             "a predict_step returns one record per row of lit_vr1.data.jsonl.predicted(batch)")
        pictures = [self._picture_path(trainer, rec["id"]) if self.draw and sample.images else None
                    for rec, sample in zip(prediction, rows)]
        with open(self._jsonl(trainer), "a", encoding="utf-8") as f:
            for rec, picture in zip(prediction, pictures):
                if picture is not None:  # which picture is this row's (ids made safe for file names may collide)
                    rec = {**rec, "picture": os.path.relpath(picture, self.output_dir)}
                f.write(json.dumps(rec) + "\n")
        for rec, sample, picture in zip(prediction, rows, pictures):
            if picture is None:
                continue
            image = sample.images[0].convert("RGB")
            image = image.resize((image.width * self.scale, image.height * self.scale))
            draw = ImageDraw.Draw(image)
            for box, label, colour in truth_boxes(sample.solution) + [(b["bbox_2d"], b["label"], RED) for b in rec["boxes"]]:
                # drawn within the picture (a box written past the edge shows at the edge; the JSONL keeps it as written)
                w, h = image.width - 1, image.height - 1
                x1, y1, x2, y2 = (v * self.scale for v in flatten_box(tuple(box)))
                x1, x2 = (min(max(v, 0), w) for v in (x1, x2))
                y1, y2 = (min(max(v, 0), h) for v in (y1, y2))
                draw.rectangle([x1, y1, x2, y2], outline=colour, width=max(1, self.scale))
                if label:
                    draw.text((x1 + 2, y1 + 1), label, fill=colour)
            if not rec["boxes"]:
                draw.text((2, image.height - 12), "no box parsed", fill=RED)
            image.save(picture)

    def _picture_path(self, trainer, row_id) -> str:
        """``images/<id>.png``, the id made safe for a file name (letters and digits of any script,
        ``_``, ``.``, ``-``; at most 200 bytes in UTF-8, under the file systems' 255; an id of dots
        alone, ``..``, is ``row``: its name ``...png`` stopped the prediction before 2026-12-07); a
        name this process drew already in this prediction run (two rows with one id, or ids alike
        once made safe) gets ``-2``, ``-3``, ... rather than replacing that picture; under several
        processes, which share the folder, a process other than the first adds ``.rank<r>``. Each
        line of the JSONL names its picture."""
        safe = re.sub(r"[^\w.-]", "_", str(row_id)).encode()[:200].decode("utf-8", "ignore")
        if not safe.strip("._"):
            safe = "row"
        if trainer.world_size > 1 and trainer.global_rank > 0:
            safe = f"{safe}.rank{trainer.global_rank}"
        count = self._drawn.get(safe, 0) + 1
        self._drawn[safe] = count
        return os.path.join(self.output_dir, "images", f"{safe}.png" if count == 1 else f"{safe}-{count}.png")
