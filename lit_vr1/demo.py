"""The demo's report: held-out Acc@0.5 and mean IoU of the SFT and the GRPO model, the
constant-box floor, reward/IoU curves and a grid of drawn boxes.

    python -m lit_vr1.demo --sft runs/demo/sft_model --grpo runs/demo/grpo_model \\
        --data data/demo --logs runs/demo --out runs/demo
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from lit_vr1.data.jsonl import JsonlDataset  # noqa: E402
from lit_vr1.evaluate import EvalResult, best_constant_box, evaluate  # noqa: E402
from lit_vr1.models.loading import load_model, load_processor  # noqa: E402
from lit_vr1.rewards.boxes import first_box  # noqa: E402
from lit_vr1.viz import BLUE, draw_boxes, grid  # noqa: E402


def evaluate_dir(model_dir: str, samples, max_new_tokens: int) -> EvalResult:
    processor = load_processor(model_dir)
    model = load_model(model_dir, processor).eval()
    return evaluate(model, processor, samples, batch_size=50, max_new_tokens=max_new_tokens)


def read_metrics(log_root: str) -> list[dict[str, str]]:
    """Rows of the newest ``metrics.csv`` under ``log_root`` ([] when there is none)."""
    files = sorted(glob.glob(os.path.join(log_root, "**", "metrics.csv"), recursive=True), key=os.path.getmtime)
    return list(csv.DictReader(open(files[-1]))) if files else []


def series(rows: list[dict[str, str]], key: str) -> tuple[list[int], list[float]]:
    pts = [(int(r["step"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_curves(sft_rows, grpo_rows, floor: float, path: str) -> None:
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    x, y = series(sft_rows, "val/miou")
    a.plot(x, y, "o-", label="held-out mean IoU")
    x, y = series(sft_rows, "val/acc50")
    a.plot(x, y, "s-", label="held-out Acc@0.5")
    a.axhline(floor, color="grey", ls="--", label=f"constant-box floor ({floor:.2f})")
    a.set_title("SFT cold start")
    a.set_xlabel("optimiser step")
    a.legend(fontsize=8)
    for key, label in (("train/reward/total/mean", "total reward"), ("train/reward/iou/mean", "IoU reward (train)")):
        x, y = series(grpo_rows, key)
        b.plot(x, y, alpha=0.8, label=label)
    x, y = series(grpo_rows, "val/miou")
    b.plot(x, y, "o-", label="held-out mean IoU")
    b.axhline(floor, color="grey", ls="--", label="constant-box floor")
    b.set_title("GRPO from the SFT model")
    b.set_xlabel("optimiser step")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw_grid(sft: EvalResult, grpo: EvalResult, path: str, n: int = 16) -> None:
    tiles = []
    for ps, pg in list(zip(sft.predictions, grpo.predictions))[:n]:
        gt = first_box(pg.sample.solution)
        tiles.append(draw_boxes(pg.sample.images[0], gt=[gt], pred=[pg.box] if pg.box else [],
                                extra=[([ps.box] if ps.box else [], BLUE)], scale=2,
                                labels=[f"IoU sft {ps.iou:.2f} grpo {pg.iou:.2f}"]))
    grid(tiles, columns=4).save(path)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sft", required=True, help="save_pretrained directory of the SFT model")
    ap.add_argument("--grpo", required=True, help="save_pretrained directory of the GRPO model")
    ap.add_argument("--data", required=True, help="synthetic data directory (train.jsonl, val.jsonl, images/)")
    ap.add_argument("--logs", required=True, help="folder holding sft/ and grpo/ CSV logs")
    ap.add_argument("--out", required=True, help="where the PNGs and results.json go")
    ap.add_argument("--max-new-tokens", type=int, default=40)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    images = os.path.join(args.data, "images")
    val = JsonlDataset(os.path.join(args.data, "val.jsonl"), images, "qwen_rec")
    samples = [val[i] for i in range(len(val))]
    sft = evaluate_dir(args.sft, samples, args.max_new_tokens)
    grpo = evaluate_dir(args.grpo, samples, args.max_new_tokens)
    train = JsonlDataset(os.path.join(args.data, "train.jsonl"), images, "qwen_rec")
    canvas = samples[0].images[0].width
    const_box, floor = best_constant_box([first_box(r.solution) for r in train.records],
                                         [first_box(s.solution) for s in samples], canvas)
    os.makedirs(args.out, exist_ok=True)
    curves, boxes = os.path.join(args.out, "curves.png"), os.path.join(args.out, "boxes.png")
    plot_curves(read_metrics(os.path.join(args.logs, "sft")), read_metrics(os.path.join(args.logs, "grpo")), floor, curves)
    draw_grid(sft, grpo, boxes)
    result = {
        "held_out_images": len(samples),
        "sft": {"acc50": sft.acc50, "miou": sft.miou, "format": sft.format},
        "grpo": {"acc50": grpo.acc50, "miou": grpo.miou, "format": grpo.format},
        "constant_box": {"box": const_box, "miou": floor},
        "curves_png": curves,
        "boxes_png": boxes,
    }
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(f"held-out images: {len(samples)} (greedy decoding)")
    print(f"{'':14}{'Acc@0.5':>9}{'mean IoU':>10}{'format':>8}")
    for name, r in (("after SFT", sft), ("after GRPO", grpo)):
        print(f"{name:14}{r.acc50:9.3f}{r.miou:10.3f}{r.format:8.3f}")
    print(f"{'constant box':14}{'':9}{floor:10.3f}")
    print(f"wrote {curves} and {boxes} (green: truth, blue: SFT, red: GRPO)")
    return result


if __name__ == "__main__":
    main()
