"""The pixels a model reads from an image file: the image as a viewer shows it, in 8-bit RGB.

A plain ``Image.open(path).convert("RGB")`` differs from what a person (or a labelling tool)
saw in three ways, each a silent mismatch between the boxes of a row and its pixels:

* **EXIF orientation.** A camera stores a portrait photo as landscape pixels with an
  orientation tag; every viewer, browser and labelling tool turns it upright, so that is where
  the boxes were drawn. PIL does not: the boxes would fall on other pixels, and a box that fits
  inside the stored size passes every check. :func:`open_image` applies the tag (as
  ``ImageOps.exif_transpose`` does) and :func:`displayed_size` reads the upright size from the header.
* **Transparency.** ``convert("RGB")`` drops the alpha channel, leaving whatever colour the
  transparent pixels hold (often black). Transparent pixels go on white, as qwen-vl-utils'
  ``to_rgb`` does for RGBA (here also for LA, PA and palette images with a transparent colour).
* **16-bit pixels.** ``convert("RGB")`` clips a 16-bit greyscale value (``I;16``, ``I``) to
  255: a medical or depth image becomes white. Values are scaled to 8 bits (divided by 257,
  so 65535 stays white). 32-bit float pixels (``F``) have no range to scale by and are refused.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from PIL import Image

ORIENTATION = 0x0112  # the EXIF orientation tag
TURNED = (5, 6, 7, 8)  # orientations whose upright image swaps width and height
SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")
REFUSED_MODES = {"F": "32-bit float pixels have no range to scale to 8 bits; convert the image to 8-bit first"}


# how each orientation turns the stored pixels upright (as ImageOps.exif_transpose does)
UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
           5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
           8: Image.Transpose.ROTATE_90}


def orientation(im: Image.Image) -> int:
    """The EXIF orientation tag (1: upright, also without EXIF), read from the header only. A PNG
    whose eXIf chunk is not before its pixels counts as upright: PIL finds such a chunk only by
    decoding the whole image (about 100 ms for 6 MP, at every row of a data set), and loading
    turns the pixels by this same value, so the size read at build and the pixels always agree."""
    if im.format == "PNG" and "exif" not in im.info:
        return 1
    try:
        value = im.getexif().get(ORIENTATION, 1)
    except (OSError, ValueError, SyntaxError):  # a broken EXIF block: read the pixels as stored
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def displayed_size(im: Image.Image) -> tuple[int, int]:
    """(width, height) of ``im`` as a viewer shows it (EXIF orientation applied), no pixel decoded."""
    w, h = im.size
    return (h, w) if orientation(im) in TURNED else (w, h)


def mode_problem(im: Image.Image) -> str | None:
    """Why the pixels of ``im`` cannot be read as 8-bit RGB, or None."""
    return REFUSED_MODES.get(im.mode)


def to_rgb(im: Image.Image) -> Image.Image:
    """``im`` (orientation already applied) in 8-bit RGB: transparent pixels on white, 16-bit
    greyscale scaled to 8 bits (see the module docstring)."""
    if im.mode in SIXTEEN_BIT:
        scaled = np.clip(np.rint(np.asarray(im, dtype=np.float64) / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(scaled, mode="L").convert("RGB")
    if (im.mode == "P" and "transparency" in im.info) or im.mode in ("LA", "PA", "La", "RGBa"):
        im = im.convert("RGBA")
    if im.mode == "RGBA":
        white = Image.new("RGB", im.size, (255, 255, 255))
        white.paste(im, mask=im.getchannel("A"))
        return white
    return im.convert("RGB")


def open_quietly(source: Any) -> Image.Image:
    """``Image.open(source)`` without PIL's decompression-bomb warning, which PIL gives at every
    open of a large image and names no file: the data checks say it once, naming the files
    (:func:`lit_vr1.data.jsonl.huge_images_note`). Over twice the limit PIL still raises."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(source)


def open_image(path: str) -> Image.Image:
    """The image at ``path`` as the model reads it: upright, 8-bit RGB, decoded (the file is closed).
    Raises ValueError for pixel modes that cannot be read (:func:`mode_problem`), and whatever
    PIL raises for a file it cannot decode (opened by :func:`open_quietly`)."""
    with open_quietly(path) as im:
        problem = mode_problem(im)
        if problem:
            raise ValueError(f"mode {im.mode}: {problem}")
        turn = UPRIGHT.get(orientation(im))
        im.load()
        return to_rgb(im.transpose(turn) if turn is not None else im)
