"""COCO instances -> lit-vr1 detection JSONL (Vision-R1's layout), and back for a pycocotools check.

    python -m lit_vr1.data.coco instances.json train.jsonl [--categories image|all] [--prompt TEXT]
    python -m lit_vr1.data.coco --results predictions.jsonl instances.json results.json

The first form writes one line per image, in image-id order: ``{"id": <image id>, "image":
<file_name>, "problem": <prompt>, "solution": [[category name, [x1, y1, x2, y2]], ...], "width",
"height", "num_instances"}``. COCO's ``bbox`` is [x, y, width, height] in pixels: it becomes the
corners [x, y, x + width, y + height]. Left out, and counted in the summary: ``iscrowd`` regions
(lit-vr1 has no ignore regions; a box predicted on one then counts as a false positive, where
COCOeval would ignore it) and boxes without area (width or height 0; COCO keeps the image and
counts such an object missed, which no answer can find). An annotation whose category is not in
``categories``, or whose image is not in ``images``, is refused with its id.

The prompt names what to find: ``--categories image`` (the default) the categories present in
the image (an image without objects names every category, so that its empty answer is a real
negative), ``all`` every category of the file, in ``categories`` order. ``{categories}`` in
``--prompt`` stands for them, joined with ", ".

``--results`` turns ``callbacks.PredictionWriter``'s ``predictions.jsonl`` into COCO's results
list (``image_id``, ``category_id``, ``bbox`` as [x, y, w, h], ``score``), for pycocotools'
COCOeval: each box scores as lit-vr1's evaluation ranks it (the model states no confidence:
the k-th box of the file, counted across its images in file order, scores 1 / (1 + 0.001 k),
``lit_vr1.metrics.detection``); labels are matched to categories stripped and lower-cased, and a
box whose label names no category is left out and counted.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from typing import Any

from lit_vr1.metrics.detection import rank_score

DEFAULT_PROMPT = "<image>Locate every object of these categories: {categories}. Output their bbox coordinates in JSON format."
CATEGORY_CHOICES = ("image", "all")


class CocoError(ValueError):
    """A COCO file lit-vr1 cannot convert; the message names the file and the entry."""


@dataclass
class Converted:
    """The lines written and what was left out (counts, with the first few ids)."""

    lines: list[dict] = field(default_factory=list)
    objects: int = 0
    crowd: list[int] = field(default_factory=list)  # annotation ids left out as iscrowd
    no_area: list[int] = field(default_factory=list)  # annotation ids without area
    empty_images: int = 0

    def summary(self) -> str:
        out = f"{len(self.lines)} images, {self.objects} objects ({self.empty_images} images without objects)"
        for what, ids in (("iscrowd regions", self.crowd), ("boxes without area", self.no_area)):
            if ids:
                out += f"; left out {len(ids)} {what} (annotation ids {', '.join(map(str, ids[:5]))}" \
                       f"{' ...' if len(ids) > 5 else ''})"
        return out


def _entries(data: dict, key: str, where: str) -> list[dict]:
    value = data.get(key)
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise CocoError(f"{where}: '{key}' must be a list of objects (a COCO instances file has images, annotations "
                        "and categories)")
    return value


def corners(bbox: Any, where: str) -> list[float]:
    """COCO's [x, y, width, height] as [x1, y1, x2, y2] (rounded to 1/100 px)."""
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(isinstance(v, (int, float)) for v in bbox):
        raise CocoError(f"{where}: 'bbox' must be [x, y, width, height], got {bbox!r}")
    x, y, w, h = bbox
    return [round(x, 2), round(y, 2), round(x + w, 2), round(y + h, 2)]


def convert(data: dict, categories: str = "image", prompt: str = DEFAULT_PROMPT, where: str = "instances") -> Converted:
    """The lines of :func:`main`'s first form for the parsed COCO instances ``data``."""
    if categories not in CATEGORY_CHOICES:
        raise CocoError(f"--categories {categories!r} is not valid; choose one of {', '.join(CATEGORY_CHOICES)}")
    if "{categories}" not in prompt:
        raise CocoError("--prompt must hold {categories}, where the names of what to find go")
    cats = {c.get("id"): str(c.get("name", "")).strip() for c in _entries(data, "categories", where)}
    images = sorted(_entries(data, "images", where), key=lambda im: (str(type(im.get("id"))), im.get("id")))
    by_image: dict[Any, list[dict]] = {im.get("id"): [] for im in images}
    out = Converted()
    for ann in _entries(data, "annotations", where):
        at = f"{where}: annotation {ann.get('id')}"
        if ann.get("image_id") not in by_image:
            raise CocoError(f"{at}: image_id {ann.get('image_id')!r} is not in 'images'")
        if ann.get("category_id") not in cats:
            raise CocoError(f"{at}: category_id {ann.get('category_id')!r} is not in 'categories' "
                            f"(its ids: {', '.join(map(str, list(cats)[:10]))})")
        if ann.get("iscrowd"):
            out.crowd.append(ann.get("id"))
            continue
        box = corners(ann.get("bbox"), at)
        if box[2] <= box[0] or box[3] <= box[1]:
            out.no_area.append(ann.get("id"))
            continue
        by_image[ann["image_id"]].append({"name": cats[ann["category_id"]], "box": box})
    every = list(dict.fromkeys(cats.values()))
    for im in images:
        objects = by_image[im.get("id")]
        if not isinstance(im.get("file_name"), str):
            raise CocoError(f"{where}: image {im.get('id')}: 'file_name' must be a string")
        named = list(dict.fromkeys(o["name"] for o in objects)) if categories == "image" and objects else every
        line = {"id": im.get("id"), "image": im["file_name"], "problem": prompt.replace("{categories}", ", ".join(named)),
                "solution": [[o["name"], o["box"]] for o in objects], "num_instances": len(objects)}
        if im.get("width") and im.get("height"):
            line["width"], line["height"] = im["width"], im["height"]
        out.lines.append(line)
        out.objects += len(objects)
        out.empty_images += not objects
    return out


def results(predictions: list[dict], data: dict, where: str = "instances") -> tuple[list[dict], int]:
    """COCO results for PredictionWriter's lines, scored as lit-vr1 ranks them; and the number of
    boxes whose label names no category (left out)."""
    ids = {str(c.get("name", "")).strip().lower(): c.get("id") for c in _entries(data, "categories", where)}
    out, unknown, rank = [], 0, 0
    for p in predictions:
        for b in p.get("boxes", []):
            score = rank_score(rank)  # lit-vr1's evaluation's ranking: boxes in written order
            rank += 1
            category = ids.get(str(b.get("label", "")).strip().lower())
            if category is None:
                unknown += 1
                continue
            x1, y1, x2, y2 = b["bbox_2d"]
            out.append({"image_id": p["id"], "category_id": category, "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "score": score})
    return out, unknown


def _read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as e:
        raise CocoError(f"{path}: cannot be read ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise CocoError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lit_vr1.data.coco", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("instances", nargs="?", help="COCO instances JSON (images, annotations, categories)")
    p.add_argument("out", nargs="?", help="the JSONL file to write (with --results: the results JSON)")
    p.add_argument("--categories", default="image", choices=CATEGORY_CHOICES)
    p.add_argument("--prompt", default=DEFAULT_PROMPT)
    p.add_argument("--results", metavar="PREDICTIONS", help="PredictionWriter's predictions.jsonl to turn into COCO "
                                                            "results for the instances file")
    a = p.parse_args(argv)
    if a.instances is None or a.out is None:
        p.error("give the instances file and the file to write")
    try:
        data = _read_json(a.instances)
        if not isinstance(data, dict):
            raise CocoError(f"{a.instances}: expected a JSON object (a COCO instances file)")
        if a.results:
            try:
                with open(a.results, encoding="utf-8") as f:
                    predictions = [json.loads(line) for line in f if line.strip()]
            except (OSError, json.JSONDecodeError) as e:
                raise CocoError(f"{a.results}: cannot be read as JSON lines ({e})") from None
            found, unknown = results(predictions, data, a.instances)
            with open(a.out, "w", encoding="utf-8") as f:
                json.dump(found, f)
            print(f"{len(found)} boxes of {len(predictions)} images written to {a.out}"
                  + (f"; left out {unknown} whose label names no category" if unknown else ""))
            return 0
        converted = convert(data, a.categories, a.prompt, a.instances)
        with open(a.out, "w", encoding="utf-8") as f:
            for line in converted.lines:
                f.write(json.dumps(line) + "\n")
        print(f"{a.out}: {converted.summary()}")
        return 0
    except CocoError as e:
        print(f"lit_vr1.data.coco: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
