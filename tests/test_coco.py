"""COCO instances to lit-vr1 JSONL and back: the converter's lines are read by the data checks,
and its results file scored by pycocotools' COCOeval gives lit-vr1's own mAP."""

import json

import pytest
from PIL import Image

from lit_vr1.data.coco import CocoError, convert, main, results
from lit_vr1.data.jsonl import JsonlDataset
from lit_vr1.metrics.detection import DetectionMetrics
from lit_vr1.rewards.boxes import ParsedBox, solution_boxes

COCO = {
    "images": [{"id": 3, "file_name": "c.png", "width": 80, "height": 60},
               {"id": 1, "file_name": "a.png", "width": 80, "height": 60},
               {"id": 2, "file_name": "b.png", "width": 80, "height": 60}],
    "categories": [{"id": 7, "name": "cat"}, {"id": 9, "name": "dog"}],
    "annotations": [
        {"id": 10, "image_id": 1, "category_id": 7, "bbox": [10, 5, 20, 30], "iscrowd": 0},
        {"id": 11, "image_id": 1, "category_id": 9, "bbox": [40, 10, 30, 40], "iscrowd": 0},
        {"id": 12, "image_id": 1, "category_id": 9, "bbox": [0, 0, 80, 60], "iscrowd": 1},
        {"id": 13, "image_id": 3, "category_id": 7, "bbox": [5, 5, 0, 10], "iscrowd": 0},
        {"id": 14, "image_id": 3, "category_id": 7, "bbox": [50, 20, 25, 30], "iscrowd": 0},
    ],
}


def test_coco_instances_become_lines_the_data_checks_read(tmp_path):
    out = convert(COCO)
    assert [line["id"] for line in out.lines] == [1, 2, 3]  # image-id order
    first, empty, third = out.lines
    assert first["solution"] == [["cat", [10, 5, 30, 35]], ["dog", [40, 10, 70, 50]]]  # corners: x + w, y + h
    assert first["problem"].endswith("categories: cat, dog. Output their bbox coordinates in JSON format.")
    assert empty["solution"] == [] and "cat, dog" in empty["problem"]  # no objects: every category, a real negative
    assert third["solution"] == [["cat", [50, 20, 75, 50]]] and third["num_instances"] == 1
    assert out.crowd == [12] and out.no_area == [13] and out.empty_images == 1
    braces = convert(COCO, prompt='<image>Find {categories}. Answer like [{"bbox_2d": [x1, y1, x2, y2]}].')
    assert braces.lines[0]["problem"] == '<image>Find cat, dog. Answer like [{"bbox_2d": [x1, y1, x2, y2]}].'
    assert "left out 1 iscrowd regions (annotation ids 12); left out 1 boxes without area" in out.summary()
    for name in ("a.png", "b.png", "c.png"):
        Image.new("RGB", (80, 60)).save(tmp_path / name)
    instances, jsonl = tmp_path / "instances.json", tmp_path / "train.jsonl"
    instances.write_text(json.dumps(COCO))
    assert main([str(instances), str(jsonl), "--categories", "all"]) == 0
    ds = JsonlDataset(str(jsonl), str(tmp_path))
    assert len(ds) == 3 and ds[0].image_sizes == [(80, 60)] and ds[2].solution == [["cat", [50, 20, 75, 50]]]


@pytest.mark.parametrize("change, said", [
    (lambda d: d["annotations"].append({"id": 99, "image_id": 1, "category_id": 5, "bbox": [1, 1, 2, 2]}),
     r"annotation 99: category_id 5 is not in 'categories'"),
    (lambda d: d["annotations"].append({"id": 98, "image_id": 42, "category_id": 7, "bbox": [1, 1, 2, 2]}),
     r"annotation 98: image_id 42 is not in 'images'"),
    (lambda d: d["annotations"].append({"id": 97, "image_id": 1, "category_id": 7, "bbox": [1, 1, 2]}),
     r"annotation 97: 'bbox' must be \[x, y, width, height\]"),
    (lambda d: d.pop("categories"), r"'categories' must be a list"),
])
def test_a_broken_coco_file_is_refused_naming_the_entry(change, said):
    data = json.loads(json.dumps(COCO))
    change(data)
    with pytest.raises(CocoError, match=said):
        convert(data)


def test_the_results_file_scores_in_cocoeval_as_lit_vr1_scores(tmp_path, capsys):
    pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO as CocoApi
    from pycocotools.cocoeval import COCOeval

    lines = convert(COCO).lines
    # answers as PredictionWriter writes them, in the held-out file's order: a hit, a loose box,
    # a box on the empty image, a label no category has, and a miss
    answers = {1: [("cat", [11, 6, 30, 35]), ("dog", [35, 5, 75, 55]), ("bird", [0, 0, 9, 9])],
               2: [("dog", [10, 10, 30, 30])], 3: [("cat", [0, 0, 20, 20]), ("cat", [50, 21, 75, 50])]}
    predictions = [{"id": line["id"], "boxes": [{"bbox_2d": b, "label": c} for c, b in answers[line["id"]]]}
                   for line in lines]
    metric = DetectionMetrics(backend="pycocotools")
    metric.update([[ParsedBox(tuple(b["bbox_2d"]), b["label"]) for b in p["boxes"]] for p in predictions],
                  [solution_boxes(line["solution"]) for line in lines])
    ours = metric.compute()
    # the ground truth as converted (crowd and zero-area boxes left out), back in COCO's form
    gt = {"images": [{"id": line["id"], "width": 80, "height": 60} for line in lines],
          "categories": COCO["categories"],
          "annotations": [{"id": k, "image_id": line["id"], "category_id": {"cat": 7, "dog": 9}[c], "iscrowd": 0,
                           "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1)}
                          for k, (line, (c, (x1, y1, x2, y2))) in enumerate(
                              ((line, pair) for line in lines for pair in line["solution"]), start=1)]}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "instances.json").write_text(json.dumps(COCO))
    (tmp_path / "predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in predictions))
    assert main(["--results", str(tmp_path / "predictions.jsonl"), str(tmp_path / "instances.json"),
                 str(tmp_path / "results.json")]) == 0
    assert "left out 1 whose label names no category" in capsys.readouterr().out
    found, unknown = results(predictions, COCO)
    assert unknown == 1 and json.loads((tmp_path / "results.json").read_text()) == found
    api = CocoApi(str(tmp_path / "gt.json"))
    evaluation = COCOeval(api, api.loadRes(str(tmp_path / "results.json")), "bbox")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    assert abs(evaluation.stats[0] - float(ours["map"])) < 1e-6 and abs(evaluation.stats[1] - float(ours["map_50"])) < 1e-6
    assert 0 < float(ours["map_50"]) < 1  # a case with hits, misses and false positives
