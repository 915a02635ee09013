"""Out-of-domain splits of the REC demo (lit_vr1.ood) and the demo's report over them."""

import json

import pytest
from helpers import saved_model
from PIL import Image

from lit_vr1 import ood
from lit_vr1.data.synthetic import SyntheticSpec, write_synthetic
from lit_vr1.evaluate import constant_box_miou
from lit_vr1.rewards.boxes import first_box

TRAIN = SyntheticSpec(num_samples=12, canvas=112, min_shapes=1, max_shapes=1, min_size=28, max_size=72)


def test_each_shift_changes_one_property_and_draws_new_images(tmp_path):
    folders = ood.write_ood(str(tmp_path), TRAIN, ood.parse_shifts("all"), num_samples=6)
    assert list(folders) == ["small", "large", "plain", "distractors"]
    boxes = {s: [first_box(json.loads(line)["conversations"][1]["value"])
                 for line in open(f"{folders[s]}/val.jsonl")] for s in folders}
    sides = lambda s: [b[2] - b[0] for b in boxes[s]]
    assert all(14 <= v <= 27 for v in sides("small")) and all(73 <= v <= 100 for v in sides("large"))
    corner = Image.open(f"{folders['plain']}/images/val_00000.png").getpixel((0, 0))
    assert corner == (235, 235, 235)  # the plain background, not the training's ramp
    spec = json.loads(open(f"{folders['distractors']}/val.spec.json").read())
    assert (spec["min_shapes"], spec["max_shapes"], spec["background"]) == (2, 3, "gradient")
    assert all(json.loads(open(f"{f}/val.spec.json").read())["seed"] != TRAIN.seed for f in folders.values())


def test_a_split_drawn_from_the_same_spec_is_reused(tmp_path):
    first = ood.write_ood(str(tmp_path), TRAIN, ["small"], num_samples=3)["small"]
    stamp = tmp_path / "ood_small" / "val.jsonl"
    before = stamp.stat().st_mtime_ns
    assert ood.write_ood(str(tmp_path), TRAIN, ["small"], num_samples=3)["small"] == first
    assert stamp.stat().st_mtime_ns == before
    ood.write_ood(str(tmp_path), TRAIN, ["small"], num_samples=4)  # another spec: redrawn
    assert sum(1 for _ in open(stamp)) == 4


def test_unknown_shifts_are_named_in_the_error():
    assert ood.parse_shifts("") == [] and ood.parse_shifts("small, plain") == ["small", "plain"]
    with pytest.raises(ValueError, match="unknown shift 'tiny'; choose from small, large, plain, distractors"):
        ood.parse_shifts("small,tiny")


def test_a_shift_that_is_not_out_of_domain_or_cannot_be_drawn_is_refused():
    with pytest.raises(ValueError, match=r"--ood small \(sides 14-27 px, training 20-56 px.*overlap the training's"):
        ood.shifted_spec(SyntheticSpec(min_size=20, max_size=56), "small", 10)
    with pytest.raises(ValueError, match="--ood large .*canvas 64 px.*cannot be drawn"):
        ood.shifted_spec(SyntheticSpec(canvas=64, min_size=10, max_size=30), "large", 10)
    with pytest.raises(ValueError, match="--ood-samples must be at least 1, not 0"):
        ood.shifted_spec(TRAIN, "plain", 0)


def test_the_report_scores_every_model_on_every_split(tmp_path, tiny_qwen25):
    from lit_vr1.demo import report

    model, processor = tiny_qwen25
    data = tmp_path / "data"
    write_synthetic(data, TRAIN, "train")
    write_synthetic(data, SyntheticSpec(**{**vars(TRAIN), "num_samples": 4}), "val")
    model_dir = saved_model(model, processor, tmp_path / "model")
    folders = ood.write_ood(str(data), TRAIN, ["small", "distractors"], num_samples=3)
    result = report({"sft": model_dir, "grpo": model_dir}, str(data), "plain", str(tmp_path / "out"),
                    max_new_tokens=6, ood=folders)
    assert result["held_out_images"] == 4 and set(result["ood"]) == {"small", "distractors"}
    for shift, split in result["ood"].items():
        assert split["held_out_images"] == 3 and set(split) >= {"sft", "grpo", "gains", "constant_box"}
        assert split["gains"]["grpo_vs_sft"]["iou"] == {"mean": 0.0, "se": 0.0}  # the same model twice
        truths = [first_box(json.loads(line)["conversations"][1]["value"]) for line in open(f"{folders[shift]}/val.jsonl")]
        box = result["constant_box"]["box"]  # fitted once, on the training boxes
        assert split["constant_box"] == {"box": box, "miou": pytest.approx(constant_box_miou(box, truths))}


def test_ood_without_synthetic_data_is_refused_before_any_training(tmp_path, capsys):
    from pathlib import Path

    from lit_vr1.demo import main

    text = (Path(__file__).resolve().parents[1] / "configs" / "sft_synthetic.yaml").read_text()
    start, end = text.index("    synthetic:\n"), text.index("    synthetic_dir:")
    config = tmp_path / "sft_files.yaml"
    config.write_text(text[:start] + f"    train_files: {tmp_path}/a.jsonl\n    train_images: {tmp_path}\n" + text[end:])
    with pytest.raises(SystemExit):
        main(["--ood", "all", "--sft-config", str(config), "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err
    assert f"--ood draws shifted copies of the synthetic training data; {config} trains on data.train_files" in err
    assert not (tmp_path / "run").exists()  # nothing was trained
