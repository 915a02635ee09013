"""The demo (``make demo``): cold-start SFT, then GRPO from the SFT model, then a report.

    python -m lit_vr1.demo [--task rec|detection|reasoning|label_free] [--seed 0] [--out runs/demo]

1. ``lit-vr1 fit --config configs/sft_synthetic.yaml``  (saves ``OUT/sft_model``; its training
   boxes are a simulated loose annotator's, ``data.synthetic.teacher_margin``)
2. ``lit-vr1 fit --config configs/grpo_synthetic.yaml --model.init_args.model=OUT/sft_model``
   (the same images; the IoU reward reads their true boxes)
3. the control: more SFT from the same cold start (``--control-steps``, saves ``OUT/control_model``)
4. the report: held-out Acc@0.5, mean IoU, format rate and box area ratio of the models by
   one and the same greedy evaluation, the best constant box as the floor, GRPO's paired
   gains over its SFT start and over the control, ``curves.png`` (reward and IoU over steps)
   and ``boxes.png`` (held-out images, truth and both models' boxes), and ``results.json``;
   with ``--ood`` (``make demo TASK=ood``) the same table on each out-of-domain held-out
   split of :mod:`lit_vr1.ood` too (VLM-R1's in-domain vs out-of-domain comparison).

``--task detection`` (``make demo TASK=detection``) runs the same three fits from
``configs/sft_detection.yaml`` (a loose annotator's boxes, as for rec) and
``configs/grpo_detection.yaml`` (Vision-R1's localisation rewards on the true boxes) and
reports COCO AP50 / mAP, precision and recall at IoU 0.5 and the hedging checks beside one
constant box per named category and the annotator's own figures (:mod:`lit_vr1.demo_detection`).

``--task reasoning`` (``make demo TASK=reasoning``) runs Vision-R1's cold start + PTST in
miniature: ``configs/sft_reasoning.yaml`` (count the shapes, numbering them in ``<think>``
first), ``configs/grpo_reasoning.yaml`` (HFRRF under PTST), the same GRPO without PTST (one
stage at the full length: the paper's ablation, ``--no-ptst-ablation`` skips it), the
control, and held-out accuracy beside the majority answer (:mod:`lit_vr1.demo_reasoning`).

``--task label_free`` (``make demo TASK=label_free``) runs R1V-Free in miniature: the
reasoning demo's cold start, a judge SFT'd on labelled pairs of a disjoint split
(``configs/judge_label_free.yaml``), the judge served by ``python -m lit_vr1.rewards.serve``
(started here, on a free loopback port, and stopped after GRPO), GRPO whose only reward is
the judge's score (``configs/grpo_label_free.yaml``: no label read), the control, and
held-out accuracy with the judge's own agreement with the labels (:mod:`lit_vr1.demo_label_free`).

Both fits go through the ``lit-vr1`` CLI in this process, so the demo runs exactly what a
user runs; ``--seed`` sets ``seed_everything`` and the tiny model's initial weights.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import time
import urllib.parse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from lit_vr1 import allocator  # noqa: E402
from lit_vr1.cli import LitVR1CLI  # noqa: E402
from lit_vr1.data.jsonl import JsonlDataset  # noqa: E402
from lit_vr1.demo_detection import (  # noqa: E402
    annotator_detections,
    draw_detections,
    paired_mean,
    print_detection_table,
    score_detection,
)
from lit_vr1.demo_label_free import pair_agreement, print_judge, verdicts  # noqa: E402
from lit_vr1.demo_reasoning import (  # noqa: E402
    draw_answers,
    majority_answer,
    print_reasoning_table,
    score_reasoning,
    teacher_accuracy,
)
from lit_vr1.evaluate import EvalResult, best_constant_box, constant_box_miou, evaluate  # noqa: E402
from lit_vr1.models.loading import load_model, load_processor  # noqa: E402
from lit_vr1.ood import SHIFTS, parse_shifts, shifted_spec, write_ood  # noqa: E402
from lit_vr1.rewards.boxes import first_box, solution_boxes  # noqa: E402
from lit_vr1.rewards.reward_model import JudgeScorer  # noqa: E402
from lit_vr1.rewards.serve import launch  # noqa: E402
from lit_vr1.viz import BLUE, draw_boxes, grid  # noqa: E402

CONTROL_STEPS = 600  # SFT steps: 1.3-1.4x the GRPO stage's wall time on the 2-core CPU (measured, README)
TASKS = {  # task: (SFT config, GRPO config)
    "rec": ("configs/sft_synthetic.yaml", "configs/grpo_synthetic.yaml"),
    "detection": ("configs/sft_detection.yaml", "configs/grpo_detection.yaml"),
    "reasoning": ("configs/sft_reasoning.yaml", "configs/grpo_reasoning.yaml"),
    "label_free": ("configs/sft_reasoning.yaml", "configs/grpo_label_free.yaml"),
}
JUDGE_CONFIG = "configs/judge_label_free.yaml"  # the label-free demo's judge (SFT on labelled pairs)
JUDGE_THINK_TOKENS = 48  # the judge's reasoning budget: its longest (4 shapes, to </think>) is 29 tokens
JUDGE_BATCH = 40  # judge items per forward pass in the server
REASONING_CURVES = {"val": (("val/acc", "held-out accuracy (HFRRF)"), ("val/format", "held-out think/answer layout rate")),
                    "train": (("train/reward/total/mean", "HFRRF reward (train)"),)}


def evaluate_dir(model_dir: str, samples, max_new_tokens: int) -> EvalResult:
    processor = load_processor(model_dir)
    model = load_model(model_dir, processor).eval()
    return evaluate(model, processor, samples, batch_size=50, max_new_tokens=max_new_tokens)


def read_metrics(log_root: str) -> list[dict[str, str]]:
    """Rows of the newest ``metrics.csv`` under ``log_root`` ([] when there is none)."""
    files = sorted(glob.glob(os.path.join(log_root, "**", "metrics.csv"), recursive=True), key=os.path.getmtime)
    return list(csv.DictReader(open(files[-1], encoding="utf-8"))) if files else []


def series(rows: list[dict[str, str]], key: str) -> tuple[list[int], list[float]]:
    pts = [(int(r["step"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]
    return [p[0] for p in pts], [p[1] for p in pts]


REC_CURVES = {"val": (("val/miou", "held-out mean IoU"), ("val/acc50", "held-out Acc@0.5")),
              "train": (("train/reward/total/mean", "total reward"), ("train/reward/iou/mean", "IoU reward (train)"))}
DETECTION_CURVES = {"val": (("val/map_50", "held-out AP50"), ("val/map", "held-out mAP")),
                    "train": (("train/reward/total/mean", "total reward"),
                              ("train/reward/loc_recall/mean", "recall reward (train)"),
                              ("train/reward/loc_precision/mean", "precision reward (train)"))}


def plot_curves(sft_rows, grpo_rows, floor: float, path: str, keys: dict = REC_CURVES,
                floor_label: str = "constant-box floor") -> None:
    """SFT's held-out curves, then GRPO's training rewards and held-out curve; ``floor``: the
    trivial policy's score on the first held-out metric."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    held_out = False  # no validation rows at all: the demo ran with --no-validation
    for (key, label), marker in zip(keys["val"], "os"):
        x, y = series(sft_rows, key)
        if x:
            a.plot(x, y, f"{marker}-", label=label)
            held_out = True
    a.axhline(floor, color="grey", ls="--", label=f"{floor_label} ({floor:.2f})")
    a.set_title("SFT cold start")
    a.set_xlabel("optimiser step")
    a.legend(fontsize=8)
    for key, label in keys["train"]:
        x, y = series(grpo_rows, key)
        b.plot(x, y, alpha=0.8, label=label)
    key, label = keys["val"][0]
    x, y = series(grpo_rows, key)
    if x:
        b.plot(x, y, "o-", label=label)
        held_out = True
    if not held_out:
        a.text(0.5, 0.5, "no held-out curves:\nthe demo ran with --no-validation", ha="center", transform=a.transAxes)
    b.axhline(floor, color="grey", ls="--", label=floor_label)
    b.set_title("GRPO from the SFT model")
    b.set_xlabel("optimiser step")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def area_ratio(result: EvalResult) -> float:
    """Mean area of the predicted boxes over the mean area of their ground truths (parsed
    predictions only): above 1 means loose boxes, the hedging a plain IoU reward can teach."""
    pairs = [(p.box, first_box(p.sample.solution)) for p in result.predictions if p.box is not None]
    area = lambda b: (b[2] - b[0]) * (b[3] - b[1])
    return sum(area(b) for b, _ in pairs) / max(sum(area(g) for _, g in pairs), 1e-9) if pairs else float("nan")


def draw_grid(sft: EvalResult, grpo: EvalResult, path: str, n: int = 16) -> None:
    tiles = []
    for ps, pg in list(zip(sft.predictions, grpo.predictions))[:n]:
        gt = first_box(pg.sample.solution)
        tiles.append(draw_boxes(pg.sample.images[0], gt=[gt], pred=[pg.box] if pg.box else [],
                                extra=[([ps.box] if ps.box else [], BLUE)],
                                scale=max(2, 224 // pg.sample.images[0].width),
                                labels=[f"IoU sft {ps.iou:.2f} grpo {pg.iou:.2f}"]))
    grid(tiles, columns=4).save(path)


def paired_gain(before: EvalResult, after: EvalResult, metric: str = "iou") -> tuple[float, float]:
    """Mean per-image gain of ``after`` over ``before`` on the same images, and its standard
    error (sample standard deviation of the paired differences over sqrt(n)). ``metric``:
    "iou" (the image's IoU) or "acc50" (1 when its IoU is above 0.5)."""
    value = (lambda p: p.iou) if metric == "iou" else (lambda p: float(p.iou > 0.5))
    pairs = list(zip(before.predictions, after.predictions, strict=True))
    gain = paired_mean([value(b) for b, _ in pairs], [value(a) for _, a in pairs])
    return gain["mean"], gain["se"]


def fit(config: str, out: str, name: str, seed: int, overrides: list[str]) -> LitVR1CLI:
    """``lit-vr1 fit --config <config>`` with the run's seed and folders set; CSV logs go
    to ``out/name``, the trained model to ``out/name_model``."""
    args = ["fit", "--config", config, f"--seed_everything={seed}", f"--trainer.default_root_dir={out}",
            f"--trainer.logger.init_args.save_dir={out}", f"--trainer.logger.init_args.name={name}",
            f"--model.init_args.export_dir={out}/{name}_model", *overrides]
    return LitVR1CLI(args=args)


DISPLAY_CALLBACKS = ("lightning.pytorch.callbacks.RichProgressBar", "callbacks.RolloutTable")


def _yaml(config: str) -> dict:
    with open(config, encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def synthetic_dir(config: str) -> str | None:
    """The config's data.init_args.synthetic_dir (None when it sets none)."""
    return ((_yaml(config).get("data") or {}).get("init_args") or {}).get("synthetic_dir")


def callbacks_override(config: str, quiet: bool, drop: tuple[str, ...] = ()) -> list[str]:
    """``--trainer.callbacks=[...]``: the config's callbacks without the class paths in ``drop``
    and, when ``quiet``, without the display ones (progress bar, rollout tables); no argument
    when nothing is dropped. Training callbacks (PTST stages, cold starts) stay."""
    listed = (_yaml(config).get("trainer") or {}).get("callbacks") or []
    gone = set(drop) | (set(DISPLAY_CALLBACKS) if quiet else set())
    kept = [c for c in listed if not (isinstance(c, dict) and c.get("class_path") in gone)]
    return [] if len(kept) == len(listed) else [f"--trainer.callbacks={json.dumps(kept)}"]


LABELS = {"sft": "after SFT", "control": "SFT control", "grpo": "after GRPO"}
LABEL_FREE_CURVES = {"val": REASONING_CURVES["val"], "train": (("train/reward/total/mean", "judge reward (train)"),)}


def judge_rewards(config: str, url: str) -> list[str]:
    """``--model.init_args.rewards=[...]``: the GRPO config's rewards with every
    RemoteRewardModel's url moved to the judge served at ``url`` (its path kept); [] when the
    config has none."""
    rewards = ((_yaml(config).get("model") or {}).get("init_args") or {}).get("rewards") or []
    moved = False
    for reward in rewards:
        if isinstance(reward, dict) and str(reward.get("class_path", "")).endswith("RemoteRewardModel"):
            args = reward.setdefault("init_args", {})
            args["url"] = url + (urllib.parse.urlsplit(args.get("url", "")).path or "/score")
            moved = True
    return [f"--model.init_args.rewards={json.dumps(rewards)}"] if moved else []


def score(models: dict[str, str], samples, const_box, max_new_tokens: int) -> tuple[dict, dict[str, EvalResult]]:
    """One held-out split's figures: each model's Acc@0.5, mean IoU, format rate and area
    ratio, GRPO's paired gains over SFT (and the control), and the floor: the mean IoU of
    ``const_box`` (the best constant box on the training boxes); also the raw results."""
    results = {name: evaluate_dir(path, samples, max_new_tokens) for name, path in models.items()}
    floor = constant_box_miou(const_box, [first_box(s.solution) for s in samples])
    gains = {f"grpo_vs_{base}": {metric: dict(zip(("mean", "se"), paired_gain(results[base], results["grpo"], metric)))
                                 for metric in ("iou", "acc50")}
             for base in ("sft", "control") if base in results}
    figures = {name: {"acc50": r.acc50, "miou": r.miou, "format": r.format, "area_ratio": area_ratio(r)}
               for name, r in results.items()}
    return {"held_out_images": len(samples), **figures, "gains": gains,
            "constant_box": {"box": const_box, "miou": floor}}, results


def annotator_figures(taught: list, truth: list) -> dict:
    """How good the SFT data's boxes are: the training boxes SFT reads (``taught``, e.g. a
    loose annotator's) scored against the true boxes of the same images (``truth``, what
    GRPO's reward reads), as the models are scored: Acc@0.5, mean IoU, area ratio."""
    from torchvision.ops import box_iou

    if len(taught) != len(truth):
        raise ValueError(f"{len(taught)} SFT training boxes against {len(truth)} true ones: not the same images")
    a, b = torch.tensor(taught, dtype=torch.float32), torch.tensor(truth, dtype=torch.float32)
    ious = box_iou(a, b).diagonal()
    area = lambda t: ((t[:, 2] - t[:, 0]) * (t[:, 3] - t[:, 1])).sum()
    return {"images": len(truth), "acc50": float((ious > 0.5).float().mean()), "miou": float(ious.mean()),
            "area_ratio": float(area(a) / area(b))}


def print_table(title: str, split: dict) -> None:
    print(f"{title}: {split['held_out_images']} images (greedy decoding)")
    print(f"{'':14}{'Acc@0.5':>9}{'mean IoU':>10}{'format':>8}{'box area / truth':>18}")
    for name in LABELS:
        if name in split:
            f = split[name]
            print(f"{LABELS[name]:14}{f['acc50']:9.3f}{f['miou']:10.3f}{f['format']:8.3f}{f['area_ratio']:18.2f}")
    print(f"{'constant box':14}{'':9}{split['constant_box']['miou']:10.3f}")
    if "annotator" in split:
        f = split["annotator"]
        print(f"SFT's training boxes against the truth ({f['images']} training images): Acc@0.5 {f['acc50']:.3f}, "
              f"mean IoU {f['miou']:.3f}, box area / truth {f['area_ratio']:.2f}")
    for key, by_metric in split["gains"].items():
        for metric, g in by_metric.items():
            name = "mean IoU" if metric == "iou" else "Acc@0.5"
            print(f"{name} gain of GRPO over {LABELS[key.removeprefix('grpo_vs_')]}: {g['mean']:+.3f} "
                  f"(paired standard error {g['se']:.3f})")


def held_out(data_dir: str, template: str) -> tuple[list, list]:
    """The demo data's held-out samples and its training records (``val.jsonl``, ``train.jsonl``)."""
    images = os.path.join(data_dir, "images")
    val = JsonlDataset(os.path.join(data_dir, "val.jsonl"), images, template)
    train = JsonlDataset(os.path.join(data_dir, "train.jsonl"), images, template)
    return [val[i] for i in range(len(val))], train.records


def true_training_records(grpo_data_dir: str | None, template: str) -> list | None:
    """GRPO's training records (``grpo_data_dir/train.jsonl``: the true answers, where the SFT
    data hold a teacher's traces or an annotator's boxes); None when there are none."""
    if not (grpo_data_dir and os.path.isfile(os.path.join(grpo_data_dir, "train.jsonl"))):
        return None
    return JsonlDataset(os.path.join(grpo_data_dir, "train.jsonl"), os.path.join(grpo_data_dir, "images"), template).records


def report(models: dict[str, str], data_dir: str, template: str, out: str, max_new_tokens: int = 40,
           ood: dict[str, str] | None = None, grpo_data_dir: str | None = None) -> dict:
    """Evaluate the saved models (``{"sft": dir, "grpo": dir}``, and ``"control"``: the same
    compute spent on more SFT) on the held-out split, and on each out-of-domain split of
    ``ood`` (``{shift: folder}``, see :mod:`lit_vr1.ood`); print the tables, draw the PNGs;
    returns the figures. Gains are paired (the same images) with their standard errors. The
    floor, the best constant box, is fitted on the true training boxes: GRPO's
    (``grpo_data_dir``) where the SFT data hold a loose annotator's."""
    torch.manual_seed(0)
    samples, train = held_out(data_dir, template)
    taught = [first_box(r.solution) for r in train]
    truth = [first_box(r.solution) for r in true_training_records(grpo_data_dir, template) or train]
    const_box, _ = best_constant_box(truth, [first_box(s.solution) for s in samples], samples[0].images[0].width)
    split, results = score(models, samples, const_box, max_new_tokens)
    if taught != truth:
        split["annotator"] = annotator_figures(taught, truth)
    os.makedirs(out, exist_ok=True)
    curves, boxes = os.path.join(out, "curves.png"), os.path.join(out, "boxes.png")
    plot_curves(read_metrics(os.path.join(out, "sft")), read_metrics(os.path.join(out, "grpo")),
                split["constant_box"]["miou"], curves)
    draw_grid(results["sft"], results["grpo"], boxes)
    result = {**split, "miou_gain": split["gains"]["grpo_vs_sft"]["iou"], "curves_png": curves, "boxes_png": boxes}
    print_table("held-out images", split)
    if ood:
        result["ood"] = {}
        for shift, folder in ood.items():
            data = JsonlDataset(os.path.join(folder, "val.jsonl"), os.path.join(folder, "images"), template)
            result["ood"][shift], _ = score(models, [data[i] for i in range(len(data))], const_box, max_new_tokens)
            print_table(f"out of domain, {shift}", result["ood"][shift])
    print(f"wrote {curves} and {boxes} (green: truth, blue: SFT, red: GRPO)")
    return result


def report_detection(models: dict[str, str], data_dir: str, template: str, out: str, max_new_tokens: int,
                     grpo_data_dir: str | None = None) -> dict:
    """The detection demo's report (:mod:`lit_vr1.demo_detection`): AP50, mAP, precision and
    recall at IoU 0.5 and the hedging checks of each model and of the constant-box policy
    on the held-out split, GRPO's gains with their standard errors, and the PNGs. The
    constant boxes are fitted on the true training boxes: GRPO's (``grpo_data_dir``) where
    the SFT data hold a loose annotator's, whose own figures against the truth are reported."""
    torch.manual_seed(0)
    samples, taught = held_out(data_dir, template)
    truth = true_training_records(grpo_data_dir, template) or taught
    const_box, _ = best_constant_box([b.box for r in truth for b in solution_boxes(r.solution)],
                                     [b.box for s in samples for b in solution_boxes(s.solution)],
                                     samples[0].images[0].width)
    split, dets = score_detection(models, samples, const_box, max_new_tokens)
    taught_answers, true_answers = [r.solution for r in taught], [r.solution for r in truth]
    if taught_answers != true_answers:
        split["annotator"] = annotator_detections(taught_answers, true_answers)
    os.makedirs(out, exist_ok=True)
    curves, boxes = os.path.join(out, "curves.png"), os.path.join(out, "boxes.png")
    plot_curves(read_metrics(os.path.join(out, "sft")), read_metrics(os.path.join(out, "grpo")),
                split["constant"]["ap50"], curves, DETECTION_CURVES)
    draw_detections(samples, dets["sft"], dets["grpo"], boxes)
    print_detection_table("held-out images", split)
    print(f"wrote {curves} and {boxes} (green: truth, blue: SFT, red: GRPO)")
    return {**split, "curves_png": curves, "boxes_png": boxes}


def answer_pictures(split: dict, samples, preds: dict, out: str, keys: dict, floor_label: str) -> dict[str, str]:
    """``curves.png`` (SFT's and GRPO's curves ``keys`` beside the trivial answer's accuracy)
    and ``answers.png`` (held-out images with the SFT and GRPO answers) of a counting demo."""
    os.makedirs(out, exist_ok=True)
    curves, answers = os.path.join(out, "curves.png"), os.path.join(out, "answers.png")
    plot_curves(read_metrics(os.path.join(out, "sft")), read_metrics(os.path.join(out, "grpo")),
                split["majority"]["accuracy"], curves, keys, floor_label=floor_label)
    draw_answers(samples, preds["sft"], preds["grpo"], answers)
    return {"curves_png": curves, "answers_png": answers}


def report_reasoning(models: dict[str, str], data_dir: str, template: str, out: str, max_new_tokens: int,
                     grpo_data_dir: str | None = None) -> dict:
    """The reasoning demo's report (:mod:`lit_vr1.demo_reasoning`): held-out HFRRF accuracy,
    answer accuracy, layout rate and answer length of each model beside the majority answer
    (the most frequent true training count),
    GRPO's paired gains (over its SFT start, the control and GRPO without PTST), the
    cold-start teacher's accuracy on the training images (its traces' counts against the
    true counts GRPO read from ``grpo_data_dir``), the PNGs."""
    samples, train = held_out(data_dir, template)
    truth = true_training_records(grpo_data_dir, template)  # the true counts; the SFT data may hold a teacher's
    majority = majority_answer([r.solution for r in (truth or train)])
    split, preds = score_reasoning(models, samples, majority, max_new_tokens)
    if truth is not None:
        split["teacher"] = teacher_accuracy(train, truth)
    pictures = answer_pictures(split, samples, preds, out, REASONING_CURVES, "majority answer")
    print_reasoning_table("held-out images", split)
    print(f"wrote {pictures['curves_png']} and {pictures['answers_png']}")
    return {**split, **pictures}


def report_label_free(models: dict[str, str], data_dir: str, template: str, out: str, max_new_tokens: int,
                      judge_dir: str, judge_data_dir: str, think_tokens: int) -> dict:
    """The label-free demo's report: the reasoning demo's held-out table (accuracy with labels
    the GRPO stage never read; the trivial baseline is the best constant answer on the
    held-out images) and the judge's trust figures (:mod:`lit_vr1.demo_label_free`): its
    agreement on its own held-out pairs and its verdicts on the SFT and GRPO models' answers."""
    samples, _ = held_out(data_dir, template)
    split, preds = score_reasoning(models, samples, majority_answer([s.solution for s in samples]), max_new_tokens)
    scorer = JudgeScorer(judge_dir, think_tokens=think_tokens, batch_size=JUDGE_BATCH)
    split["judge"] = {"pairs": pair_agreement(scorer, judge_data_dir),
                      "on_answers": {name: verdicts(scorer, preds[name]) for name in ("sft", "grpo")}}
    pictures = answer_pictures(split, samples, preds, out, LABEL_FREE_CURVES, "best constant answer")
    print_reasoning_table("held-out images", split)
    print_judge(split)
    print(f"wrote {pictures['curves_png']} and {pictures['answers_png']}")
    return {**split, **pictures}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m lit_vr1.demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0, help="seed of the run (weights, data order, sampling)")
    ap.add_argument("--out", help="folder of the logs, models, PNGs and results.json (default: runs/demo; "
                                  "runs/demo_<task> for the other tasks)")
    ap.add_argument("--task", choices=list(TASKS), default="rec",
                    help="rec: one shape named by the prompt (VLM-R1); detection: every shape (Vision-R1's "
                         "localisation rewards); reasoning: count the shapes, thinking first (Vision-R1's cold start "
                         "+ PTST); label_free: the same counting, GRPO rewarded only by a judge model served over HTTP "
                         "(R1V-Free); picks the two configs below")
    ap.add_argument("--sft-config", help="default: the task's (configs/sft_synthetic.yaml for rec)")
    ap.add_argument("--grpo-config", help="default: the task's (configs/grpo_synthetic.yaml for rec)")
    ap.add_argument("--sft-steps", type=int, help="override the SFT config's trainer.max_steps")
    ap.add_argument("--grpo-steps", type=int,
                    help="stop GRPO after this many steps (the LR schedule stays the config's: a prefix of the full run)")
    ap.add_argument("--data-dir", help="override data.init_args.synthetic_dir of both configs (where the GRPO config "
                                       "draws other data than the SFT one, as the reasoning demo's does, GRPO's is "
                                       "DATA_DIR_grpo; the label-free judge's is DATA_DIR_judge)")
    ap.add_argument("--sft-model", help="skip the SFT fit: start GRPO from this save_pretrained directory (e.g. another "
                                        "run's OUT/sft_model; its data must be the one the configs draw)")
    ap.add_argument("--grpo-precision", help="trainer.precision of the GRPO fit (e.g. bf16-mixed: bf16 autocast over "
                                             "float32 weights, on CPU too); default: the config's")
    ap.add_argument("--control-steps", type=int, default=CONTROL_STEPS,
                    help="steps of the control: more SFT from the same cold start (the SFT config, its learning rate "
                         "decayed over these steps); 600 took 1.2-1.6x GRPO's wall time here for rec, 0.65-0.69x for "
                         "detection (its GRPO runs 450 steps); "
                         "0: no control")
    ap.add_argument("--control-model", help="with --sft-model: skip the control's fit, report this save_pretrained "
                                            "directory as the control (the OUT/control_model of the run whose "
                                            "OUT/sft_model --sft-model names; --control-steps then only labels it)")
    ap.add_argument("--ood", default="", help="also evaluate on out-of-domain held-out splits: 'all' or comma-separated "
                                              f"names of {', '.join(SHIFTS)} (lit_vr1/ood.py); make demo TASK=ood sets 'all'")
    ap.add_argument("--ood-samples", type=int, default=200, help="images per out-of-domain split")
    ap.add_argument("--ptst-ablation", action=argparse.BooleanOptionalAction, default=True,
                    help="--task reasoning: also run the GRPO config without its PTST callback (one stage at the "
                         "config's full length and group size), saved to OUT/no_ptst_model (default: on; "
                         "--no-ptst-ablation skips it)")
    ap.add_argument("--judge-config", default=JUDGE_CONFIG,
                    help=f"--task label_free: the judge's SFT config (default {JUDGE_CONFIG})")
    ap.add_argument("--judge-model", help="--task label_free: skip the judge's fit, serve this save_pretrained directory")
    ap.add_argument("--judge-think-tokens", type=int, default=JUDGE_THINK_TOKENS,
                    help="--task label_free: the judge server's --think-tokens (its reasoning before the verdict)")
    ap.add_argument("--quiet", action="store_true", help="no progress bars or rollout tables")
    ap.add_argument("--validation", action=argparse.BooleanOptionalAction, default=True,
                    help="the configs' periodic held-out validation, the held-out curves of curves.png (default: on); "
                         "--no-validation skips it in every fit: the models come out bit-identical (validation is "
                         "greedy and draws no random numbers) and the report scores each of them all the same")
    args = ap.parse_args(argv)
    allocator.keep_freed_memory()  # the report's decoding too, not only the fits
    try:
        shifts = parse_shifts(args.ood)
    except ValueError as err:
        ap.error(str(err))
    if shifts and args.task != "rec":
        ap.error(f"--ood is for --task rec; --task {args.task} has no out-of-domain splits")
    args.sft_config = args.sft_config or TASKS[args.task][0]
    args.grpo_config = args.grpo_config or TASKS[args.task][1]
    for flag, path in (("--sft-config", args.sft_config), ("--grpo-config", args.grpo_config)):
        if not os.path.isfile(path):
            ap.error(f"{flag} {path}: no such file (run from the repository root, or give a path to a config)")
    ablation = args.task == "reasoning" and args.ptst_ablation
    if ablation and not callbacks_override(args.grpo_config, False, drop=("callbacks.PTST",)):
        ap.error(f"the no-PTST ablation drops {args.grpo_config}'s callbacks.PTST, and it has none; "
                 "give a GRPO config with PTST stages or --no-ptst-ablation")
    for flag in ("sft_model", "control_model"):
        path = getattr(args, flag)
        if path and not os.path.isdir(path):
            ap.error(f"--{flag.replace('_', '-')} {path}: no such directory (a save_pretrained model)")
    if args.control_model and not args.sft_model:
        ap.error("--control-model is more SFT from a cold start: give that cold start with --sft-model too")
    if args.control_model and not args.control_steps:
        ap.error("--control-model with --control-steps 0: give the control's steps (they label it in the report)")
    if args.task == "label_free":
        if not os.path.isfile(args.judge_config):  # with --judge-model too: its data are the judge's held-out pairs
            ap.error(f"--judge-config {args.judge_config}: no such file (run from the repository root)")
        if args.judge_think_tokens < 0:
            ap.error(f"--judge-think-tokens {args.judge_think_tokens}: must be 0 (no reasoning) or a number of tokens")
        if args.judge_model and not os.path.isdir(args.judge_model):
            ap.error(f"--judge-model {args.judge_model}: no such directory (a save_pretrained judge)")
        if not judge_rewards(args.grpo_config, "http://127.0.0.1:0"):
            ap.error(f"--task label_free serves the judge for the GRPO config's RemoteRewardModel reward, and "
                     f"{args.grpo_config} has none")
    out = (args.out or ("runs/demo" if args.task == "rec" else f"runs/demo_{args.task}")).rstrip("/")
    args.data_dir = args.data_dir.rstrip("/") if args.data_dir else None
    common = ["--trainer.enable_progress_bar=false"] if args.quiet else []
    if not args.validation:  # no sanity check either: limit_val_batches=0 turns the validation loop off
        common.append("--trainer.limit_val_batches=0")
    sft_data, grpo_data = [], []
    if args.data_dir:
        own = synthetic_dir(args.sft_config) != synthetic_dir(args.grpo_config)
        sft_data = [f"--data.init_args.synthetic_dir={args.data_dir}"]
        grpo_data = [f"--data.init_args.synthetic_dir={args.data_dir}{'_grpo' if own else ''}"]
    judge_data_over = [f"--data.init_args.synthetic_dir={args.data_dir}_judge"] if args.data_dir else []
    times = {}
    sft_callbacks = callbacks_override(args.sft_config, args.quiet)
    sft_over = [f"--model.init_args.seed={args.seed}", *common, *sft_data, *sft_callbacks]
    if args.sft_steps:
        sft_over += [f"--trainer.max_steps={args.sft_steps}", f"--model.init_args.lr_scheduler.init_args.T_max={args.sft_steps}"]
    # the SFT config without a fit: for --ood's checks and for --sft-model's data, built once
    config_cli = LitVR1CLI(args=["--config", args.sft_config, *sft_over], run=False) if shifts or args.sft_model else None
    if shifts:  # every split checked before anything is trained
        probe = config_cli.datamodule
        if probe.synthetic is None or probe.train_files is not None:
            ap.error(f"--ood draws shifted copies of the synthetic training data; {args.sft_config} trains on "
                     f"{'data.train_files' if probe.train_files is not None else 'no data.synthetic'}")
        try:
            [shifted_spec(probe.synthetic, shift, args.ood_samples) for shift in shifts]
        except ValueError as err:
            ap.error(str(err))
    t0 = time.perf_counter()
    if args.sft_model:  # the data module alone: the GRPO run and the report read the same data
        sft_cli = config_cli
        sft_cli.datamodule.prepare_data()
        sft_dir = args.sft_model
    else:
        sft_cli = fit(args.sft_config, out, "sft", args.seed, sft_over)
        sft_dir = f"{out}/sft_model"
    times["sft_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    grpo_over = [f"--model.init_args.model={sft_dir}", *common, *grpo_data]
    grpo_callbacks = callbacks_override(args.grpo_config, args.quiet)
    if args.grpo_steps:
        grpo_over.append(f"--trainer.max_steps={args.grpo_steps}")
    if args.grpo_precision:
        grpo_over.append(f"--trainer.precision={args.grpo_precision}")
    judge_dir = None
    if args.task == "label_free":  # the judge: SFT on labelled pairs, then served for GRPO's reward
        judge_dir = args.judge_model or f"{out}/judge_model"
        if not args.judge_model:
            judge_cli = fit(args.judge_config, out, "judge", args.seed,
                            [f"--model.init_args.seed={1000 + args.seed}", *common, *judge_data_over,
                             *callbacks_override(args.judge_config, args.quiet)])
        else:  # the judge's data alone: the report measures it on their held-out pairs
            judge_cli = LitVR1CLI(args=["--config", args.judge_config, *judge_data_over], run=False)
            judge_cli.datamodule.prepare_data()
        judge_data = judge_cli.datamodule.synthetic_dir
        times["judge_s"] = time.perf_counter() - t1
        t1 = time.perf_counter()
        with launch(judge_dir, "--think-tokens", str(args.judge_think_tokens), "--batch-size", str(JUDGE_BATCH)) as served:
            grpo_cli = fit(args.grpo_config, out, "grpo", args.seed,
                           [*grpo_over, *grpo_callbacks, *judge_rewards(args.grpo_config, served.url)])
        judge_requests = sum(getattr(r, "attempts", 0) for r in grpo_cli.model.rewards)
    else:
        grpo_cli = fit(args.grpo_config, out, "grpo", args.seed, [*grpo_over, *grpo_callbacks])
    times["grpo_s"] = time.perf_counter() - t1
    models = {"sft": sft_dir, "grpo": f"{out}/grpo_model"}
    if ablation:
        t = time.perf_counter()
        fit(args.grpo_config, out, "no_ptst", args.seed,
            [*grpo_over, *callbacks_override(args.grpo_config, args.quiet, drop=("callbacks.PTST",))])
        times["no_ptst_s"] = time.perf_counter() - t
        models["no_ptst"] = f"{out}/no_ptst_model"
    if args.control_model:
        models["control"] = args.control_model
    elif args.control_steps:
        t2 = time.perf_counter()
        steps = args.control_steps
        fit(args.sft_config, out, "control", args.seed,
            [f"--model.init_args.model={sft_dir}", "--model.init_args.tiny_spec=null", f"--trainer.max_steps={steps}",
             f"--model.init_args.lr_scheduler.init_args.T_max={steps}", *common, *sft_data, *sft_callbacks])
        times["control_s"] = time.perf_counter() - t2
        models["control"] = f"{out}/control_model"
    t3 = time.perf_counter()
    data = sft_cli.datamodule
    ood = write_ood(data.synthetic_dir, data.synthetic, shifts, args.ood_samples) if shifts else None
    if args.task == "label_free":
        result = report_label_free(models, data.synthetic_dir, data.template, out, grpo_cli.model.eval_max_new_tokens,
                                   judge_dir, judge_data, args.judge_think_tokens)
        result["judge"]["requests"] = judge_requests  # HTTP requests GRPO's reward made to the served judge
    elif args.task == "reasoning":
        result = report_reasoning(models, data.synthetic_dir, data.template, out, grpo_cli.model.eval_max_new_tokens,
                                  grpo_cli.datamodule.synthetic_dir)
    elif args.task == "detection":
        result = report_detection(models, data.synthetic_dir, data.template, out, grpo_cli.model.eval_max_new_tokens,
                                  grpo_cli.datamodule.synthetic_dir)
    else:
        result = report(models, data.synthetic_dir, data.template, out, grpo_cli.model.eval_max_new_tokens, ood,
                        grpo_cli.datamodule.synthetic_dir)
    times["report_s"] = time.perf_counter() - t3
    times["total_s"] = time.perf_counter() - t0
    result.update(task=args.task, seed=args.seed, times=times, sft_steps=None if args.sft_model else sft_cli.trainer.global_step,
                  grpo_steps=grpo_cli.trainer.global_step, grpo_precision=str(grpo_cli.trainer.precision),
                  control_steps=args.control_steps)
    with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    print("seconds: " + ", ".join(f"{k[:-2]} {v:.0f}" for k, v in times.items()))
    return result


if __name__ == "__main__":
    main()
