"""Drawing boxes on images (ground truth in green, predictions in red) and grids of them."""

from __future__ import annotations

from PIL import Image, ImageDraw

from lit_vr1.rewards.boxes import flatten_box

Box = tuple[float, float, float, float]


GREEN, RED, BLUE = (0, 170, 0), (220, 0, 0), (0, 90, 255)


def draw_boxes(image: Image.Image, gt: list[Box] = (), pred: list[Box] = (), labels: list[str] = (),
               scale: int = 1, extra: list[tuple[list[Box], tuple[int, int, int]]] = ()) -> Image.Image:
    """A copy of ``image`` (upscaled by ``scale``) with boxes in original-image pixels drawn
    on it: ``gt`` in green, ``pred`` in red, each ``extra`` (boxes, rgb) in its colour.
    A box without an area (inverted, zero width) is drawn as the line or point the rewards
    score it as (``boxes.flatten_box``); None entries are skipped."""
    out = image.convert("RGB").resize((image.width * scale, image.height * scale), Image.NEAREST)
    draw = ImageDraw.Draw(out)
    for boxes, colour in ((gt, GREEN), *extra, (pred, RED)):
        for box in boxes:
            if box is not None:
                draw.rectangle([v * scale for v in flatten_box(tuple(box))], outline=colour, width=max(1, scale))
    for i, text in enumerate(labels):
        draw.text((2, 2 + 10 * i), text, fill=(0, 0, 0))
    return out


def grid(images: list[Image.Image], columns: int = 4, pad: int = 4) -> Image.Image:
    """Tile equally sized images into one picture."""
    if not images:
        raise ValueError("no images to tile")
    w, h = images[0].size
    rows = (len(images) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * (w + pad) + pad, rows * (h + pad) + pad), (255, 255, 255))
    for i, im in enumerate(images):
        sheet.paste(im, (pad + (i % columns) * (w + pad), pad + (i // columns) * (h + pad)))
    return sheet
