"""Image files as a viewer shows them (lit_vr1/data/images.py): EXIF orientation applied,
transparency on white, 16-bit greyscale scaled to 8 bits, float pixels refused at build.
Each was a silent mismatch between a row's boxes and the pixels the model read."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from lit_vr1.data.images import displayed_size, open_image
from lit_vr1.data.jsonl import DataError, JsonlDataset

BOX = [8, 4, 28, 20]  # x1, y1, x2, y2 in the upright 64 x 48 image


def upright() -> Image.Image:
    im = Image.new("RGB", (64, 48), (40, 40, 200))
    ImageDraw.Draw(im).rectangle(BOX, fill=(230, 20, 20))
    return im


def save_turned(path, orientation: int = 6) -> None:
    """The upright image stored as a camera stores a portrait shot: pixels turned, tag set."""
    turn = {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270, 3: Image.Transpose.ROTATE_180}[orientation]
    exif = Image.Exif()
    exif[0x0112] = orientation
    upright().transpose(turn).save(path, exif=exif.tobytes(), quality=95)


def red_inside(im: Image.Image) -> bool:
    x, y = (BOX[0] + BOX[2]) // 2, (BOX[1] + BOX[3]) // 2
    r, g, b = im.getpixel((x, y))
    return r > 180 and g < 80 and b < 80


@pytest.mark.parametrize("orientation", [6, 8, 3])
def test_exif_orientation_is_applied_so_boxes_fall_on_their_pixels(tmp_path, orientation):
    path = tmp_path / "photo.jpg"
    save_turned(path, orientation)
    with Image.open(path) as raw:
        stored = raw.size
        assert not red_inside(raw.convert("RGB"))  # PIL alone reads it turned
        assert displayed_size(raw) == (64, 48)
    assert stored == ((48, 64) if orientation in (6, 8) else (64, 48))
    im = open_image(str(path))
    assert im.size == (64, 48) and im.mode == "RGB" and red_inside(im)


def rec_file(tmp_path, image: str, **fields) -> str:
    row = {"id": "a", "image": image, "conversations": [{"from": "human", "value": "<image>Find the red box."},
                                                         {"from": "gpt", "value": json.dumps(BOX)}], **fields}
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(row) + "\n")
    return str(path)


def test_a_row_reads_the_upright_image_and_its_size(tmp_path):
    save_turned(tmp_path / "photo.jpg")
    ds = JsonlDataset(rec_file(tmp_path, "photo.jpg"), str(tmp_path))
    sample = ds[0]
    assert sample.image_sizes == [(64, 48)] and red_inside(sample.images[0])


def test_declared_sizes_of_the_stored_pixels_are_refused_naming_the_orientation(tmp_path):
    save_turned(tmp_path / "photo.jpg")
    with pytest.raises(DataError) as info:
        JsonlDataset(rec_file(tmp_path, "photo.jpg", width=48, height=64), str(tmp_path))
    message = str(info.value)
    assert "rows.jsonl:1" in message and "say 48x64 but image" in message and "is 64x48 as a viewer shows it" in message
    assert "EXIF orientation 6" in message
    assert len(JsonlDataset(rec_file(tmp_path, "photo.jpg", width=64, height=48), str(tmp_path))) == 1


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparent_pixels_go_on_white_not_black(tmp_path, mode):
    im = Image.new("RGBA", (32, 32), (0, 0, 0, 0))  # transparent, black underneath
    ImageDraw.Draw(im).rectangle([8, 8, 23, 23], fill=(200, 30, 30, 255))
    path = tmp_path / "cut_out.png"
    if mode == "LA":
        im.convert("LA").save(path)
    elif mode == "P":
        im.convert("P", palette=Image.Palette.ADAPTIVE, colors=8).save(path, transparency=0)
        with Image.open(path) as check:
            assert check.mode == "P" and "transparency" in check.info
    else:
        im.save(path)
    got = open_image(str(path))
    assert got.mode == "RGB" and got.getpixel((0, 0)) == (255, 255, 255)
    inside = got.getpixel((16, 16))
    assert inside != (255, 255, 255) and inside != (0, 0, 0)


def test_sixteen_bit_greyscale_is_scaled_not_clipped_to_white(tmp_path):
    pixels = np.full((48, 64), 20000, dtype=np.uint16)
    pixels[10:20, 10:20] = 60000
    path = tmp_path / "depth.png"
    Image.fromarray(pixels).save(path)
    with Image.open(path) as raw:
        assert raw.mode.startswith("I")
        assert raw.convert("RGB").getpixel((0, 0)) == (255, 255, 255)  # what a plain convert gives
    got = open_image(str(path))
    assert got.getpixel((0, 0)) == (78, 78, 78) and got.getpixel((15, 15)) == (233, 233, 233)  # round(v / 257)


def test_float_pixels_are_refused_at_build_naming_the_row(tmp_path):
    Image.fromarray(np.full((48, 64), 0.5, dtype=np.float32)).save(tmp_path / "scan.tiff")
    with pytest.raises(DataError) as info:
        JsonlDataset(rec_file(tmp_path, "scan.tiff"), str(tmp_path))
    assert "rows.jsonl:1" in str(info.value) and "32-bit float pixels" in str(info.value)


def test_sizes_are_read_without_decoding_a_png_and_a_png_exif_header_is_applied(tmp_path, monkeypatch):
    """PIL looks for a PNG's eXIf chunk by decoding the whole image (about 100 ms for 6 MP, at
    every row of a data set) when the chunk is not before the pixels."""
    from PIL import PngImagePlugin

    from lit_vr1.data.jsonl import read_image_size

    Image.new("RGB", (300, 200)).save(tmp_path / "plain.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    upright().transpose(Image.Transpose.ROTATE_90).save(tmp_path / "turned.png", exif=exif.tobytes())

    def no_decoding(self):
        raise AssertionError("the pixels were decoded")

    with monkeypatch.context() as patch:
        patch.setattr(PngImagePlugin.PngImageFile, "load", no_decoding)
        assert read_image_size(str(tmp_path / "plain.png"), "x") == (300, 200)
        assert read_image_size(str(tmp_path / "turned.png"), "x") == (64, 48)
    im = open_image(str(tmp_path / "turned.png"))
    assert im.size == (64, 48) and red_inside(im)
