"""`cutout erase` and `cutout erase-batch` (the watermark helper) against the running mesh."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from bench.erase import score
from cutout import watermark
from tests.conftest import decode, encode
from tests.mesh.test_cli import run_cli


@pytest.fixture
def cli(mesh, funded_account):
    return lambda *args: run_cli(mesh, *args, api_key=funded_account.api_key)


def stamped(photo: Image.Image) -> tuple[Image.Image, np.ndarray]:
    """The photo with a pure white mark in its lower left quarter, and where the mark is."""
    out = photo.copy()
    width, height = out.size
    box = (width // 10, height * 3 // 4, width // 2, height * 3 // 4 + max(4, height // 30))
    ImageDraw.Draw(out).rectangle(box, fill=(255, 255, 255))
    ImageDraw.Draw(out).line((box[0], box[1] - 6, box[2], box[1] - 6), fill=(255, 255, 255), width=2)
    mark = np.any(np.asarray(out) != np.asarray(photo), axis=2)
    return out, mark


def test_erase_with_boxes_and_a_mask(cli, tmp_path, astronaut):
    photo = astronaut.resize((128, 128))
    (tmp_path / "in.png").write_bytes(encode(photo, "PNG"))
    mask = Image.new("L", (128, 128), 0)
    ImageDraw.Draw(mask).line((10, 100, 110, 100), fill=255, width=3)
    (tmp_path / "mask.png").write_bytes(encode(mask, "PNG"))
    done = cli("erase", str(tmp_path / "in.png"), "--mask", str(tmp_path / "mask.png"), "--box", "20,20,10,12")
    assert done.returncode == 0, done.stderr
    assert "2 regions" in done.stdout
    out = np.asarray(decode((tmp_path / "in-erased.png").read_bytes()))
    marked = np.asarray(mask) >= 128
    marked[20:32, 20:30] = True
    assert np.array_equal(out[~marked], np.asarray(photo)[~marked])
    assert not np.array_equal(out[marked], np.asarray(photo)[marked])


def test_erase_refuses_a_box_outside_and_says_which(cli, tmp_path, astronaut):
    (tmp_path / "in.png").write_bytes(encode(astronaut.resize((64, 64)), "PNG"))
    done = cli("erase", str(tmp_path / "in.png"), "--box", "60,0,10,10", "-o", str(tmp_path / "out.png"))
    assert done.returncode == 1 and "INVALID_ARGUMENT" in done.stderr and "box 0" in done.stderr
    assert not (tmp_path / "out.png").exists()
    assert cli("erase", str(tmp_path / "in.png")).returncode == 2  # nothing to erase said


def photos(astronaut: Image.Image) -> list[Image.Image]:
    """Three different photos of one size (a folder a watermark was stamped on at one place)."""
    return [astronaut.crop((x, y, x + 400, y + 300)).resize((200, 150)) for x, y in ((0, 0), (100, 50), (50, 200))]


@pytest.mark.parametrize("rule", ["color", "mask"])
def test_erase_batch_removes_one_watermark_from_a_folder(cli, tmp_path, astronaut, rule):
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    cases = []
    for n, clean in enumerate(photos(astronaut)):
        marked, mark = stamped(clean)
        (folder / f"p{n}.png").write_bytes(encode(marked, "PNG"))
        cases.append((np.asarray(clean), np.asarray(marked), mark))
    if rule == "color":
        # The astronaut's suit is near white too: the rule is kept to the lower left quarter.
        args = ["--color", "white", "--tolerance", "0", "--within", "0,100,150,40", "--grow", "0"]
    else:
        # One mask, drawn at twice the photos' size, serves them all, stretched.
        template = Image.fromarray(cases[0][2].astype(np.uint8) * 255).resize((400, 300), Image.Resampling.NEAREST)
        (tmp_path / "mark.png").write_bytes(encode(template, "PNG"))
        args = ["--mask", str(tmp_path / "mark.png")]
    done = cli("erase-batch", str(folder), "-o", str(out), "--no-progress", *args)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 done, 0 failed" in done.stdout
    for n, (clean, marked, mark) in enumerate(cases):
        erased = np.asarray(decode((out / f"p{n}.png").read_bytes()))
        if rule == "mask":
            assert np.array_equal(erased[~mark], marked[~mark]), n
        else:  # the rule may also take other pure white pixels, but only within its box
            outside = np.ones(mark.shape, bool)
            outside[100:140, 0:150] = False
            assert np.array_equal(erased[outside], marked[outside]), n
        assert score(clean, erased, mark).psnr > score(clean, marked, mark).psnr + 8, n
    again = cli("erase-batch", str(folder), "-o", str(out), "--no-progress", *args)
    assert "0 done, 0 failed, 3 skipped" in again.stdout


def test_a_colour_rule_that_marks_nothing_fails_that_image_only(cli, tmp_path, astronaut):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.png").write_bytes(encode(stamped(astronaut.resize((100, 100)))[0], "PNG"))
    (folder / "b.png").write_bytes(encode(Image.new("RGB", (50, 50), "black"), "PNG"))
    done = cli("erase-batch", str(folder), "-o", str(tmp_path / "out"), "--no-progress", "--color", "#ffffff")
    assert done.returncode == 1
    assert "1 done, 1 failed" in done.stdout and "no mask: no pixel is within 40" in done.stdout


def test_parse_box():
    assert watermark.parse_box("1,2,3,4").width == 3
    for bad in ("1,2,3", "a,b,c,d", "-1,0,5,5"):
        with pytest.raises(ValueError):
            watermark.parse_box(bad)
