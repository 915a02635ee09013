"""The detection demo's report (``make demo TASK=detection``): Vision-R1's localisation recipe
in miniature, scored on held-out multi-object images.

Every model answers each held-out prompt once, greedily (:func:`lit_vr1.evaluate.predict_detection`,
the project's evaluation), and the answers are scored three ways:

* COCO mAP and AP50 over the split (COCOeval's definition, the numbers of validation's
  torchmetrics :class:`~lit_vr1.metrics.detection.DetectionMetrics`, computed in NumPy);
  the standard error of a model-vs-model AP gain comes from a paired bootstrap over images
  (the same resampled images score both models; Efron & Tibshirani, 1993, ch. 6);
* per image, precision and recall at IoU 0.5 with labels (one-to-one Hungarian matching, as
  the rewards match), their paired gains with the usual standard error;
* hedging checks: boxes written per true object (padding the answer would raise recall), and
  the matched boxes' area over the truth's (loose boxes would raise IoU at low thresholds).

The trivial policy is the floor: for each category the prompt names, one constant box (the
best constant box for the training objects, :func:`lit_vr1.evaluate.best_constant_box`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from lit_vr1.data.jsonl import Sample
from lit_vr1.evaluate import predict_detection
from lit_vr1.metrics.detection import ImageMatches, coco_accumulate, coco_matches
from lit_vr1.models.loading import load_model, load_processor
from lit_vr1.rewards.boxes import Box, ParsedBox, solution_boxes
from lit_vr1.rewards.vision_r1 import hungarian_match
from lit_vr1.viz import BLUE, draw_boxes, grid

MATCH_IOU = 0.5
BOOTSTRAP = 200


@dataclass
class Detections:
    """One model's answers on a split: per image (same order as the samples) the predicted
    and the true boxes, in original pixels."""

    preds: list[list[ParsedBox]]
    gts: list[list[ParsedBox]]


def detect_dir(model_dir: str, samples: list[Sample], max_new_tokens: int) -> Detections:
    """Greedy detection answers of a saved model (``save_pretrained`` directory)."""
    processor = load_processor(model_dir)
    model = load_model(model_dir, processor).eval()
    preds, gts = predict_detection(model, processor, samples, max_new_tokens)
    return Detections(preds, gts)


def constant_detections(samples: list[Sample], box: Box) -> Detections:
    """The trivial policy: ``box`` once for every category the sample's prompt names."""
    gts = [solution_boxes(s.solution) for s in samples]
    preds = [[ParsedBox(tuple(box), label) for label in dict.fromkeys(b.label for b in gt)] for gt in gts]
    return Detections(preds, gts)


def average_precision(d: Detections, index: list[int] | None = None,
                      matched: list[ImageMatches] | None = None) -> dict[str, float]:
    """COCO mAP and AP50 of the images at ``index`` (all by default; repeats allowed), by
    :mod:`lit_vr1.metrics.detection`'s NumPy COCOeval (validation's torchmetrics numbers);
    ``matched``: ``coco_matches`` of ``d`` computed once, for resampling."""
    out = coco_accumulate(matched if matched is not None else coco_matches(d.preds, d.gts), index)
    return {"map": out["map"], "ap50": out["map_50"]}


def matches(pred: list[ParsedBox], gt: list[ParsedBox], iou: float = MATCH_IOU) -> list[tuple[int, int, float]]:
    """One-to-one pairs (pred index, true index, IoU) with the same label and IoU >= ``iou``."""
    return [m for m in hungarian_match(pred, gt, match_labels=True) if m[2] >= iou]


def image_scores(d: Detections) -> dict[str, list[float]]:
    """Per image: precision and recall at IoU 0.5 with labels (an empty answer has precision 0)."""
    prec, rec = [], []
    for pred, gt in zip(d.preds, d.gts, strict=True):
        hits = len(matches(pred, gt))
        prec.append(hits / len(pred) if pred else 0.0)
        rec.append(hits / len(gt) if gt else float(not pred))
    return {"precision": prec, "recall": rec}


def area(b: Box) -> float:
    return max(b[2] - b[0], 0.0) * max(b[3] - b[1], 0.0)


def hedging(d: Detections) -> dict[str, float]:
    """boxes_per_object: boxes written over true objects; area_ratio: over the label-matched
    pairs with any overlap, the predicted boxes' total area over their truths' (1 is tight)."""
    written = sum(len(p) for p in d.preds)
    objects = sum(len(g) for g in d.gts)
    pa = ga = 0.0
    for pred, gt in zip(d.preds, d.gts, strict=True):
        for i, j, _ in hungarian_match(pred, gt, match_labels=True):
            pa += area(pred[i].box)
            ga += area(gt[j].box)
    return {"boxes_per_object": written / max(objects, 1), "area_ratio": pa / ga if ga else float("nan")}


def paired_mean(before: list[float], after: list[float]) -> dict[str, float]:
    """Mean per-image gain and its standard error (std of the paired differences / sqrt(n))."""
    diffs = torch.tensor(after, dtype=torch.float64) - torch.tensor(before, dtype=torch.float64)
    se = diffs.std().item() / len(diffs) ** 0.5 if len(diffs) > 1 else float("nan")
    return {"mean": diffs.mean().item(), "se": se}


def paired_bootstrap(before: Detections, after: Detections, rounds: int = BOOTSTRAP,
                     seed: int = 0) -> dict[str, dict[str, float]]:
    """AP50 and mAP gains of ``after`` over ``before`` on the whole split, each with its paired
    bootstrap standard error: the spread of the gain over ``rounds`` resamples of the images
    (with replacement, the same resample for both models, kept in the split's order: the
    answers carry no confidence, so AP ranks boxes by the order of the images)."""
    if before.gts != after.gts:
        raise ValueError("paired_bootstrap: the two models were scored on different images")
    n = len(before.preds)
    rng = random.Random(seed)
    ma, mb = coco_matches(after.preds, after.gts), coco_matches(before.preds, before.gts)
    a, b = average_precision(after, matched=ma), average_precision(before, matched=mb)
    draws: dict[str, list[float]] = {key: [] for key in a}
    for _ in range(rounds):
        idx = sorted(rng.randrange(n) for _ in range(n))
        ra, rb = average_precision(after, idx, ma), average_precision(before, idx, mb)
        for key in draws:
            draws[key].append(ra[key] - rb[key])
    return {key: {"mean": a[key] - b[key], "se": float(torch.tensor(d, dtype=torch.float64).std())}
            for key, d in draws.items()}


def figures(d: Detections) -> dict[str, float]:
    per_image = image_scores(d)
    mean = {k: sum(v) / max(len(v), 1) for k, v in per_image.items()}
    return {**average_precision(d), **mean, **hedging(d)}


def annotator_detections(taught: list[str], truth: list[str]) -> dict[str, float]:
    """How good the SFT data's boxes are: the training answers SFT reads (``taught``, e.g. a
    loose annotator's) scored against the true answers of the same images (``truth``, what
    GRPO's rewards read), as the models are scored (AP50, mAP, precision, area ratio)."""
    if len(taught) != len(truth):
        raise ValueError(f"{len(taught)} SFT training answers against {len(truth)} true ones: not the same images")
    d = Detections([solution_boxes(s) for s in taught], [solution_boxes(s) for s in truth])
    return {"images": len(truth), **figures(d)}


def gains(before: Detections, after: Detections) -> dict[str, dict[str, float]]:
    """AP50 and mAP gains (paired bootstrap SE), precision and recall gains (paired SE)."""
    b, a = image_scores(before), image_scores(after)
    ap = paired_bootstrap(before, after)
    return {"ap50": ap["ap50"], "map": ap["map"], **{k: paired_mean(b[k], a[k]) for k in ("precision", "recall")}}


def draw_detections(samples: list[Sample], sft: Detections, grpo: Detections, path: str, n: int = 16) -> None:
    """Held-out images: truth green, SFT blue, GRPO red."""
    tiles = []
    for s, ps, pg, gt in list(zip(samples, sft.preds, grpo.preds, grpo.gts))[:n]:
        image = s.images[0]
        tiles.append(draw_boxes(image, gt=[b.box for b in gt], pred=[b.box for b in pg],
                                extra=[([b.box for b in ps], BLUE)], scale=max(2, 224 // image.width),
                                labels=[f"objects {len(gt)} sft {len(ps)} grpo {len(pg)}"]))
    grid(tiles, columns=4).save(path)


LABELS = {"sft": "after SFT", "control": "SFT control", "grpo": "after GRPO", "constant": "constant boxes"}


def score_detection(models: dict[str, str], samples: list[Sample], const_box: Box,
                    max_new_tokens: int) -> tuple[dict, dict[str, Detections]]:
    """Figures of each saved model and of the constant-box policy on ``samples``, and GRPO's
    gains over its SFT start, over the control and over the constant boxes."""
    dets = {name: detect_dir(path, samples, max_new_tokens) for name, path in models.items()}
    dets["constant"] = constant_detections(samples, const_box)
    out = {"held_out_images": len(samples), "constant_box": list(const_box),
           **{name: figures(d) for name, d in dets.items()},
           "gains": {f"grpo_vs_{base}": gains(dets[base], dets["grpo"]) for base in ("sft", "control", "constant")
                     if base in dets}}
    return out, dets


def print_detection_table(title: str, split: dict) -> None:
    print(f"{title}: {split['held_out_images']} images (greedy decoding)")
    print(f"{'':16}{'AP50':>7}{'mAP':>7}{'prec@.5':>9}{'rec@.5':>8}{'boxes/object':>14}{'area/truth':>12}")
    for name, label in LABELS.items():
        if name in split:
            f = split[name]
            print(f"{label:16}{f['ap50']:7.3f}{f['map']:7.3f}{f['precision']:9.3f}{f['recall']:8.3f}"
                  f"{f['boxes_per_object']:14.2f}{f['area_ratio']:12.2f}")
    if "annotator" in split:
        f = split["annotator"]
        print(f"SFT's training boxes against the truth ({f['images']} training images): AP50 {f['ap50']:.3f}, "
              f"mAP {f['map']:.3f}, prec@.5 {f['precision']:.3f}, area/truth {f['area_ratio']:.2f}")
    for key, by_metric in split["gains"].items():
        parts = ", ".join(f"{m} {g['mean']:+.3f} (SE {g['se']:.3f})" for m, g in by_metric.items())
        print(f"GRPO over {LABELS[key.removeprefix('grpo_vs_')]}: {parts}")
