"""Decode only what is scored (issue 19): JPEG crops decoded as regions are bit-identical to a full
decode and crop, for every crop policy, orientation and kind of JPEG; anything else is decoded whole;
crops travel as uint8 and normalise to exactly the float crops of before."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms

from i2pscan.io import region
from i2pscan.io.decode import decode
from i2pscan.io.preprocess import CropTransform, Preprocess
from i2pscan.io.work import FileWork

pytestmark = pytest.mark.skipif(not region.available(), reason="nvImageCodec is not installed on this platform")

I2P = Preprocess(64, (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
TORCHVISION = Preprocess(64, I2P.mean, I2P.std, crop_mode="torchvision")


def _photo(width: int, height: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([(xx * 3 + yy) % 256, (yy * 5) % 256, ((xx ^ yy) * 7) % 256], -1)
    return np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)


def _jpeg(path, width=301, height=203, mode="RGB", seed=0, orientation=None, **save) -> str:
    image = Image.fromarray(_photo(width, height, seed))
    if mode != "RGB":
        image = image.convert(mode)
    if orientation:
        exif = Image.Exif()
        exif[0x0112] = orientation
        save["exif"] = exif
    image.save(path, "JPEG", **save)
    return str(path)


KINDS = {
    "baseline 4:2:0": dict(quality=90, subsampling=2),
    "baseline 4:2:2": dict(quality=85, subsampling=1),
    "baseline 4:4:4": dict(quality=95, subsampling=0),
    "progressive 4:2:0": dict(quality=90, progressive=True),
    "progressive 4:4:4": dict(quality=70, subsampling=0, progressive=True),
    "restart markers every row": dict(quality=90, restart_marker_rows=1),
    "restart markers every 5 blocks": dict(quality=80, subsampling=0, restart_marker_blocks=5),
    "optimised Huffman tables": dict(quality=75, optimize=True),
    "greyscale": dict(mode="L", quality=90),
    "greyscale progressive": dict(mode="L", quality=90, progressive=True),
    "CMYK (Adobe)": dict(mode="CMYK", quality=90),
    "an ICC profile (applied by neither)": dict(quality=90, icc_profile=ImageCms.ImageCmsProfile(
        ImageCms.createProfile("LAB")).tobytes()),
}


@pytest.fixture
def always_regions(monkeypatch):
    """Region decoding even where bands would not pay, so that exactness is tested everywhere."""
    monkeypatch.setattr(region, "BAND_GAIN", float("inf"))


def _expected(path: str, transform: CropTransform, rgb: str) -> list[np.ndarray]:
    whole = decode(path, rgb=rgb)  # today's path: the whole image, then the crops
    assert whole.error is None
    return transform.crop_arrays(whole.image)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("crops", [1, 4, 9])
def test_region_crops_equal_the_full_decode_for_every_kind_of_jpeg(tmp_path, kind, crops, always_regions):
    save = dict(KINDS[kind])
    mode = save.pop("mode", "RGB")
    path = _jpeg(tmp_path / "a.jpg", mode=mode, seed=crops, **save)
    layout = region.jpeg_layout(open(path, "rb").read())
    assert layout.exact, layout.why
    for preprocess in (I2P, TORCHVISION):
        transform = CropTransform(preprocess, crops)
        got = decode(path, rgb=preprocess.rgb_mode, boxes=transform.boxes)
        assert got.error is None and got.region and (got.width, got.height) == (301, 203)
        expected = _expected(path, transform, preprocess.rgb_mode)
        assert len(got.crops) == crops
        for a, b in zip(got.crops, expected):
            assert a.shape == b.shape and np.array_equal(a, b), kind


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_for_i2p_and_ignored_for_the_published_detectors(tmp_path, orientation,
                                                                                      always_regions):
    path = _jpeg(tmp_path / "o.jpg", 330, 190, quality=92, orientation=orientation)
    for preprocess in (I2P, TORCHVISION):
        transform = CropTransform(preprocess, 9)
        got = decode(path, rgb=preprocess.rgb_mode, boxes=transform.boxes)
        expected = _expected(path, transform, preprocess.rgb_mode)
        swapped = orientation >= 5 and preprocess is I2P
        assert (got.width, got.height) == ((190, 330) if swapped else (330, 190))
        assert got.region
        assert all(np.array_equal(a, b) for a, b in zip(got.crops, expected)), (orientation, preprocess.crop_mode)


def test_random_sizes_offsets_and_odd_dimensions(tmp_path, always_regions):
    rng = np.random.default_rng(7)
    for i in range(12):
        w, h = int(rng.integers(20, 400)), int(rng.integers(20, 400))
        save = dict(quality=int(rng.integers(50, 100)), subsampling=int(rng.integers(0, 3)),
                    progressive=bool(rng.integers(0, 2)))
        path = _jpeg(tmp_path / f"{i}.jpg", w, h, seed=i, **save)
        size = int(rng.integers(8, 100))
        transform = CropTransform(Preprocess(size, I2P.mean, I2P.std), int(rng.integers(1, 10)))
        got = decode(path, boxes=transform.boxes)
        assert got.region
        assert all(np.array_equal(a, b) for a, b in zip(got.crops, _expected(path, transform, "i2p"))), (w, h, save)


def _strip_segment(data: bytes, marker: int) -> bytes:
    pos = 2
    while data[pos + 1] != marker:
        pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
    return data[:pos] + data[pos + 2 + int.from_bytes(data[pos + 2:pos + 4], "big"):]


def test_jpegs_a_region_cannot_decode_exactly_are_decoded_whole(tmp_path):
    good = _jpeg(tmp_path / "g.jpg", quality=90)
    data = open(good, "rb").read()
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(data[: len(data) * 2 // 3])
    rgb_coded = tmp_path / "rgb.jpg"
    Image.fromarray(_photo(120, 90, 1)).save(rgb_coded, "JPEG", keep_rgb=True)
    assert not region.jpeg_layout(truncated.read_bytes()).exact
    assert region.jpeg_layout(rgb_coded.read_bytes()).why == "RGB-coded"
    transform = CropTransform(I2P, 1)
    cut = decode(str(truncated), boxes=transform.boxes)  # today's contract: a truncated file is an error row
    assert cut.crops is None and cut.error == decode(str(truncated)).error and cut.error
    rgb = decode(str(rgb_coded), boxes=transform.boxes)
    assert not rgb.region and np.array_equal(rgb.crops[0], _expected(str(rgb_coded), transform, "i2p")[0])
    no_jfif = tmp_path / "no-jfif.jpg"  # a CMYK file without its Adobe marker reads as plain CMYK
    no_jfif.write_bytes(_strip_segment(open(_jpeg(tmp_path / "c.jpg", mode="CMYK"), "rb").read(), 0xEE))
    got = decode(str(no_jfif), boxes=transform.boxes)
    assert np.array_equal(got.crops[0], _expected(str(no_jfif), transform, "i2p")[0])


def test_other_formats_keep_the_full_decode_with_conversions_on_the_crops(tmp_path):
    rgba = np.concatenate([_photo(150, 110, 3), np.random.default_rng(3).integers(0, 255, (110, 150, 1), np.uint8)], 2)
    files = {"rgba.png": Image.fromarray(rgba, "RGBA"), "p.gif": Image.fromarray(_photo(150, 110, 4)).convert("P"),
             "i16.png": Image.fromarray(np.random.default_rng(5).integers(0, 60000, (110, 150), np.uint16)),
             "f.tif": Image.fromarray(np.random.default_rng(6).normal(0, 3, (110, 150)).astype(np.float32))}
    for name, image in files.items():
        image.save(tmp_path / name)
        for preprocess in (I2P, TORCHVISION):
            transform = CropTransform(preprocess, 9)
            got = decode(str(tmp_path / name), rgb=preprocess.rgb_mode, boxes=transform.boxes)
            assert not got.region
            expected = _expected(str(tmp_path / name), transform, preprocess.rgb_mode)
            assert all(np.array_equal(a, b) for a, b in zip(got.crops, expected)), name


def test_bands_cost_less_than_the_whole_image_or_it_is_decoded_whole():
    size = 224
    transform = CropTransform(Preprocess(size, I2P.mean, I2P.std), 9)
    big = region.plan_bands(transform.boxes(6000, 4000), 6000, 4000)
    assert len(big) == 3 and all(b[3] - b[1] == size for b in big)  # one band per row of crops
    assert region.plan_bands(transform.boxes(1224, 816), 1224, 816) is None  # 9 crops cover most of 1 MP
    assert region.plan_bands(CropTransform(transform.preprocess, 1).boxes(1224, 816), 1224, 816) == [(500, 296, 724, 520)]
    overlapping = region.plan_bands([(0, 0, 10, 10), (5, 5, 20, 20), (0, 30, 10, 40)], 100, 100)
    assert overlapping == [(0, 0, 20, 20), (0, 30, 10, 40)]


@pytest.mark.parametrize("preprocess", [I2P, TORCHVISION], ids=["i2p", "torchvision"])
def test_uint8_crops_normalise_to_the_float_crops_bit_for_bit(tmp_path, preprocess):
    paths = [_jpeg(tmp_path / "big.jpg", 300, 200), _jpeg(tmp_path / "small.jpg", 40, 90, seed=2),
             _jpeg(tmp_path / "tiny.jpg", 30, 20, seed=3)]
    for crops in (1, 4):
        transform = CropTransform(preprocess, crops)
        for path in paths:
            floats = FileWork(transform)(0, path).pixels
            item = FileWork(transform, uint8=True)(0, path)
            assert item.pixels.dtype == np.uint8 and item.pixels.shape == (crops, 3, 64, 64)
            extents = None if item.extent is None else torch.tensor([item.extent] * crops)
            got = preprocess.normalise_batch(torch.from_numpy(item.pixels), extents)
            assert torch.equal(got, floats), (path, crops)
            reference = torch.stack([preprocess.normalise(c) for c in _expected(path, transform, preprocess.rgb_mode)])
            assert torch.equal(got, reference)


@pytest.mark.slow
def test_decoding_on_the_model_device_gives_the_same_rows_in_the_same_order(tmp_path, detector_file):
    """``decode_on="device"`` (here the CPU: torchvision's decode_jpeg): JPEGs travel as bytes and
    are decoded by the scorer, other files and refused ones by the exact path; one row per file, in
    order, the same errors, logits within what another JPEG decoder gives."""
    from helpers import noise_image, write_corrupt_files
    from i2pscan.model.detector import Detector
    from i2pscan.scan.options import ScanOptions
    from i2pscan.scan.session import run_scan

    paths = [_jpeg(tmp_path / "a.jpg", 300, 200, quality=92), _jpeg(tmp_path / "b.jpg", 50, 40, seed=2),
             _jpeg(tmp_path / "c.jpg", 330, 190, seed=3, orientation=6), str(noise_image(tmp_path / "d.png", size=90)),
             _jpeg(tmp_path / "e.jpg", 200, 200, mode="L", seed=4)]
    paths += [str(p) for p in write_corrupt_files(tmp_path / "bad")]
    detector = Detector.load(str(detector_file), device="cpu")
    rows = {}
    for where in ("cpu", "device"):
        got = []
        run_scan(paths, None, detector, ScanOptions(crops=5, workers=1, batch_size=3, decode_on=where),
                 on_row=got.append)
        rows[where] = got
    exact, device = rows["cpu"], rows["device"]
    assert [r["path"] for r in device] == [r["path"] for r in exact] == paths
    assert [r["error"] for r in device] == [r["error"] for r in exact]
    assert [(r["width"], r["height"]) for r in device] == [(r["width"], r["height"]) for r in exact]
    for a, b in zip(exact, device):
        if a["logit"] is not None:
            assert abs(a["logit"] - b["logit"]) < 0.05, (a["path"], a["logit"], b["logit"])


def test_a_library_whose_pixels_differ_turns_region_decoding_off(tmp_path, monkeypatch, caplog):
    """The self-check at first use compares regions of small JPEGs with Pillow's full decode; a
    difference (an nvImageCodec or Pillow upgrade) means whole-image decoding, with a warning."""
    assert region._self_check(region._get_decoder()) is None  # this installation is exact
    monkeypatch.setattr(region, "_decoder", None)
    monkeypatch.setattr(region, "_unavailable", None)
    monkeypatch.setattr(region, "_self_check", lambda loaded: "its 4:2:0 pixels differ from Pillow's")
    path = _jpeg(tmp_path / "a.jpg", quality=90)
    transform = CropTransform(I2P, 1)
    with caplog.at_level("WARNING", logger="i2pscan"):
        got = decode(path, boxes=transform.boxes)
    assert not got.region and np.array_equal(got.crops[0], _expected(path, transform, "i2p")[0])
    assert "JPEG region decoding is off: its 4:2:0 pixels differ from Pillow's" in caplog.text
    assert not region.available()


RESTART_KINDS = {
    "4:2:0, a marker every MCU row": dict(subsampling=2, restart_marker_rows=1),
    "4:2:2, every 3 MCUs": dict(subsampling=1, restart_marker_blocks=3),
    "4:4:4, every 7 MCUs": dict(subsampling=0, restart_marker_blocks=7),
    "greyscale, every 2 rows": dict(mode="L", restart_marker_rows=2),
}


@pytest.mark.parametrize("kind", RESTART_KINDS)
def test_restart_markers_let_a_band_skip_what_lies_above_and_stay_exact(tmp_path, kind, monkeypatch):
    """io/restart.py cuts the restart intervals around a band into a JPEG of their own: decoded by
    Pillow, its rows inside the margin equal the original's; through region decoding, every crop
    equals the full decode's, at every vertical offset."""
    from PIL import Image

    from i2pscan.io import restart

    save = dict(RESTART_KINDS[kind], quality=88)
    mode = save.pop("mode", "RGB")
    path = _jpeg(tmp_path / "r.jpg", 203, 1200, mode=mode, seed=11, **save)
    data = open(path, "rb").read()
    layout = region.jpeg_layout(data)
    assert layout.exact and layout.restart
    whole = np.asarray(Image.open(path).convert("RGB"))
    for top in range(0, 1200 - 64, 37):
        cut = restart.band_stream(data, layout, top, top + 64)
        if cut is None:
            continue
        band, shift = cut
        rows = np.asarray(Image.open(io.BytesIO(band)).convert("RGB"))
        assert np.array_equal(rows[top - shift:top - shift + 64], whole[top:top + 64]), (kind, top)
    used = []
    real = region.band_stream
    monkeypatch.setattr(region, "band_stream", lambda *a: used.append(real(*a)) or used[-1])
    for crops in (1, 4, 9):
        transform = CropTransform(Preprocess(64, I2P.mean, I2P.std), crops)
        got = decode(path, boxes=transform.boxes)
        assert got.region
        assert all(np.array_equal(a, b) for a, b in zip(got.crops, _expected(path, transform, "i2p"))), (kind, crops)
    assert any(u is not None for u in used)  # the cut was taken, not only the decode from the top
