import csv
import os

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import files_the_authors_read_differently, write_corrupt_files
from i2pscan.train.augment import Augment, TrainTransform
from i2pscan.io.preprocess import crop_origins, CropTransform, Preprocess
from i2pscan.io.decode import decode
from i2pscan.io.pool import collate
from i2pscan.io.loader import ImageFiles
from i2pscan.train.samples import load_labelled, split_stratified
from i2pscan.errors import I2PError

PP = Preprocess(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def _save(tmp_path, name, image, **kw):
    path = tmp_path / name
    image.save(path, **kw)
    return str(path)


def test_modes_become_rgb(tmp_path):
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in CMYK
    assert decode(_save(tmp_path, "c.jpg", cmyk)).image.getpixel((4, 4))[0] > 200

    p = Image.new("P", (8, 8), 1)
    p.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    p.info["transparency"] = 1
    assert decode(_save(tmp_path, "p.png", p, transparency=1)).image.getpixel((0, 0)) == (255, 255, 255)

    la = Image.new("LA", (8, 8), (0, 255))
    assert decode(_save(tmp_path, "la.png", la)).image.getpixel((0, 0)) == (0, 0, 0)

    i16 = Image.fromarray(np.full((8, 8), 65535, np.uint16))
    out = decode(_save(tmp_path, "i16.png", i16))
    assert out.error is None and out.image.mode == "RGB" and out.image.getpixel((0, 0)) == (255, 255, 255)

    one = Image.new("1", (8, 8), 1)
    assert decode(_save(tmp_path, "one.png", one)).image.getpixel((0, 0)) == (255, 255, 255)

    f = Image.fromarray(np.full((8, 8), 0.5, np.float32))
    assert decode(_save(tmp_path, "f.tif", f)).image.getpixel((0, 0)) == (128, 128, 128)


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 on display
    out = decode(_save(tmp_path, "o.jpg", image, exif=exif))
    assert (out.width, out.height) == (20, 40)


def test_published_preprocessing_decodes_as_the_authors_code(tmp_path):
    """crop_mode torchvision reads files as Image.open(path).convert("RGB"): stored orientation,
    alpha dropped (not composited on white), unlike i2p's decoding."""
    rotated, alpha = files_the_authors_read_differently(tmp_path)
    published = Preprocess(224, (0.5,) * 3, (0.5,) * 3, crop_mode="torchvision")
    assert published.rgb_mode == "pillow" and Preprocess(224, (0.5,) * 3, (0.5,) * 3).rgb_mode == "i2p"
    for path in (rotated, alpha):
        ours = decode(str(path), rgb=published.rgb_mode).image
        with Image.open(path) as image:
            authors = image.convert("RGB")
        assert np.array_equal(np.asarray(ours), np.asarray(authors)), path.name
        assert not np.array_equal(np.asarray(decode(str(path)).image), np.asarray(authors)), path.name
    assert decode(str(rotated), rgb="pillow").image.size == (320, 240)  # as stored, not turned


def test_the_pool_decodes_as_the_transforms_preprocessing_asks(tmp_path):
    from i2pscan.io.work import FileWork

    path, _ = files_the_authors_read_differently(tmp_path)
    shapes = {}
    for mode in ("torchvision", "i2p"):
        work = FileWork(CropTransform(Preprocess(32, (0.5,) * 3, (0.5,) * 3, crop_mode=mode), 1))
        shapes[mode] = (work(0, str(path)).info.width, work(0, str(path)).info.height)
    assert shapes == {"torchvision": (320, 240), "i2p": (240, 320)}  # stored vs turned upright
    assert FileWork(None, header_only=True)(0, str(path)).info.error is None


def test_high_bit_depth_images_are_scaled_not_blanked_in_either_mode(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)).save(path)
    for rgb in ("i2p", "pillow"):
        pixels = np.asarray(decode(str(path), rgb=rgb).image)
        assert pixels.min() == 0 and pixels.max() == 255, rgb
    with pytest.raises(ValueError, match="rgb must be"):
        decode(str(path), rgb="Pillow")


def test_animation_gives_first_frame(tmp_path):
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "a.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    r, g, b = decode(str(path)).image.getpixel((8, 8))
    assert r > 200 and b < 50


def test_bad_files_give_errors_not_exceptions(tmp_path):
    truncated, empty, text = write_corrupt_files(tmp_path)
    assert "truncated" in decode(str(truncated)).error.lower()
    assert decode(str(empty)).error == "empty file"
    assert decode(str(text)).error.startswith("not an image")
    assert decode(str(tmp_path / "missing.jpg")).error.startswith("file not found")
    assert decode(str(tmp_path)).error == "a folder, not an image file"


def test_decompression_bomb_is_refused(tmp_path):
    path = _save(tmp_path, "big.png", Image.new("RGB", (300, 300)))
    out = decode(path, max_pixels=50_000)
    assert out.image is None and out.error.startswith("decompression bomb")
    assert decode(path).error is None


def test_wrong_extension_is_decoded_by_content(tmp_path):
    path = _save(tmp_path, "photo.gif", Image.new("RGB", (8, 8)), format="PNG")
    out = decode(path)
    assert out.error is None and out.format == "PNG"


def test_unreadable_file(tmp_path, monkeypatch):
    path = _save(tmp_path, "x.png", Image.new("RGB", (8, 8)))
    os.chmod(path, 0)
    if os.geteuid() == 0:  # root reads any file: make the open fail as it would for a user

        def denied(*args, **kwargs):
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr("i2pscan.io.decode.open", denied, raising=False)
    assert decode(path).error == "permission denied"


def test_robustness_corpus_every_file_decodes_or_errors(corpus):
    rows = list(csv.DictReader(open(corpus.parent / "robustness.csv")))
    assert len(rows) == 213
    pillow_fails = 0
    ours = 0
    for row in rows:
        out = decode(str(corpus.parent / row["path"]))
        assert (out.image is None) == (out.error is not None), row["path"]
        if out.image is not None:
            assert out.image.mode == "RGB"
            CropTransform(PP, 5)(out.image, 0)
        ours += out.error is not None
        heif = row["path"].endswith(".heif")  # Pillow alone has no HEIF opener; i2pscan decodes HEIF (pi-heif)
        pillow_fails += "fails" in row["pillow_13_result"] and not heif
        if heif:
            assert (out.error, out.format) == (None, "HEIF"), row["path"]
    assert ours == pillow_fails  # every file Pillow cannot open or load is an error, and nothing else


def test_center_crop_is_exact_and_small_images_are_padded():
    pixels = np.arange(50 * 60 * 3, dtype=np.uint32).reshape(50, 60, 3) % 256
    image = Image.fromarray(pixels.astype(np.uint8))
    crop = CropTransform(PP, 1)(image, 0)[0]
    expected = PP.normalise(pixels[9:41, 14:46].astype(np.uint8))
    assert torch.equal(crop, expected)
    small = CropTransform(PP, 1)(Image.new("RGB", (10, 20), (255, 255, 255)), 0)[0]
    assert small.shape == (3, 32, 32)
    assert small[:, 0, 0].abs().sum() == 0  # padding is the mean colour
    assert small[0, 16, 16] == pytest.approx((1.0 - 0.5) / 0.25)


def test_crop_origins():
    assert crop_origins(100, 80, 32, 1) == [(34, 24)]
    assert crop_origins(100, 80, 32, 5) == [(34, 24), (0, 0), (68, 0), (0, 48), (68, 48)]
    assert len(crop_origins(100, 80, 32, 10)) == 10
    assert crop_origins(10, 10, 32, 3) == [(0, 0)] * 3
    # more than 5 crops of an image no larger than a crop: still n of them (the grid repeats the centre;
    # with 1 origin instead of 9, combine()'s view(-1, 9) failed in finetune's threshold fit and in scans)
    assert crop_origins(64, 64, 64, 9) == [(0, 0)] * 9
    assert crop_origins(10, 10, 32, 9) == [(0, 0)] * 9
    assert len(crop_origins(65, 65, 64, 9)) == 9
    assert crop_origins(100, 80, 32, 9)[:2] == [(34, 24), (0, 0)] and len(crop_origins(100, 80, 32, 9)) == 9


def test_train_transform_depends_only_on_seed_epoch_index():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 90, 3), dtype=np.uint8))
    t = TrainTransform(PP, Augment(), seed=3)
    a, b = t(image, 7), t(image, 7)
    assert torch.equal(a, b)
    t.epoch = 1
    assert not torch.equal(t(image, 7), a)


def test_dataset_gives_one_item_per_file(tmp_path):
    bad = write_corrupt_files(tmp_path)
    good = _save(tmp_path, "g.png", Image.new("RGB", (40, 40)))
    ds = ImageFiles([good] + [str(p) for p in bad], CropTransform(PP, 2))
    batch = collate([ds[i] for i in range(len(ds))])
    assert [it.index for it in batch.items] == [0, 1, 2, 3]
    assert batch.ok == [0]
    assert batch.pixels.shape == (2, 3, 32, 32)
    assert all(batch.items[i].info.error for i in (1, 2, 3))


def _tree(root, files):
    for rel in files:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".txt":
            path.write_text("not an image")
        else:
            Image.new("RGB", (8, 8)).save(path)


def test_genimage_layout(tmp_path):
    _tree(tmp_path, ["sdv14/train/ai/a.png", "sdv14/train/nature/b.JPEG", "sdv14/val/ai/c.png",
                     "midj/val/nature/d.jpg", "midj/val/ai/e.webp", "midj/val/ai/.hidden.png",
                     "midj/val/ai/readme.txt"])
    sample = load_labelled(tmp_path)
    assert [(os.path.relpath(i.path, tmp_path), i.label, i.subset) for i in sample.items] == [
        ("midj/val/ai/e.webp", 1, "midj"), ("midj/val/nature/d.jpg", 0, "midj"),
        ("sdv14/train/ai/a.png", 1, "sdv14"), ("sdv14/train/nature/b.JPEG", 0, "sdv14"),
        ("sdv14/val/ai/c.png", 1, "sdv14")]
    val = load_labelled(tmp_path, split="val")
    assert len(val.items) == 3
    assert {i.subset for i in load_labelled(tmp_path, subsets=["midj"]).items} == {"midj"}
    with pytest.raises(I2PError, match="no subset named"):
        load_labelled(tmp_path, subsets=["dalle"])


def test_forensynths_layout(tmp_path):
    _tree(tmp_path, ["progan/car/0_real/a.png", "progan/car/1_fake/b.png", "stylegan/0_real/c.png",
                     "stylegan/1_fake/d.png"])
    sample = load_labelled(tmp_path)
    assert sample.counts() == {"real": 2, "fake": 2, "subsets": {"progan": {"real": 1, "fake": 1},
                                                                "stylegan": {"real": 1, "fake": 1}}}


def test_flat_layout_subset_is_root_name(tmp_path):
    _tree(tmp_path / "mydata", ["real/a.png", "fake/b.png"])
    assert {i.subset for i in load_labelled(tmp_path / "mydata").items} == {"mydata"}


def test_manifests(tmp_path):
    _tree(tmp_path, ["x/1.png", "x/2.png", "x/3.png"])
    (tmp_path / "m.csv").write_text("path,label,subset\nx/1.png,real,a\nx/2.png,AI,b\nx/3.png,1,b\n")
    sample = load_labelled(tmp_path / "m.csv")
    assert [i.label for i in sample.items] == [0, 1, 1]
    assert sample.items[0].path == str(tmp_path / "x/1.png")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"path": [str(tmp_path / "x/1.png"), "x/2.png"], "label": [0, 1]}), tmp_path / "m.parquet")
    assert load_labelled(tmp_path / "m.parquet").counts()["subsets"] == {"m": {"real": 1, "fake": 1}}
    (tmp_path / "bad.csv").write_text("path,label\nx/1.png,maybe\n")
    with pytest.raises(I2PError, match="row 2: label 'maybe'"):
        load_labelled(tmp_path / "bad.csv")
    (tmp_path / "nocols.csv").write_text("file,y\nx/1.png,0\n")
    with pytest.raises(I2PError, match="needs columns path,label"):
        load_labelled(tmp_path / "nocols.csv")
    (tmp_path / "binary.parquet").write_bytes(b"\x00garbage")
    with pytest.raises(I2PError, match="cannot read manifest"):
        load_labelled(tmp_path / "binary.parquet")


def test_missing_class_and_empty_are_errors(tmp_path):
    _tree(tmp_path / "d", ["real/a.png", "real/b.png"])
    with pytest.raises(I2PError, match="2 real images and no fake ones"):
        load_labelled(tmp_path / "d")
    (tmp_path / "e").mkdir()
    with pytest.raises(I2PError, match="no labelled images"):
        load_labelled(tmp_path / "e")


def test_max_per_class_is_seeded_and_stratified(tmp_path):
    files = [f"g{g}/{c}/{i}.png" for g in (1, 2) for c in ("real", "fake") for i in range(g * 10)]
    _tree(tmp_path, files)
    a = load_labelled(tmp_path, max_per_class=9, seed=5)
    assert a.counts() == {"real": 9, "fake": 9, "subsets": {"g1": {"real": 3, "fake": 3}, "g2": {"real": 6, "fake": 6}}}
    assert a.paths == load_labelled(tmp_path, max_per_class=9, seed=5).paths
    assert a.paths != load_labelled(tmp_path, max_per_class=9, seed=6).paths
    assert a.fingerprint() != load_labelled(tmp_path, max_per_class=9, seed=6).fingerprint()


def test_split_stratified_holds_out_each_group(tmp_path):
    _tree(tmp_path, [f"{c}/{i}.png" for c in ("real", "fake") for i in range(10)])
    sample = load_labelled(tmp_path)
    train, val = split_stratified(sample, 0.2, seed=0)
    assert len(val) == 4 and len(train) == 16 and not set(train) & set(val)
    assert sorted(sample.labels[val]) == [0, 0, 1, 1]
