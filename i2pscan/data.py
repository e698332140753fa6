"""Images in: labelled-sample discovery, robust decoding, crops and training augmentations.

The only module that imports Pillow. Decoding never raises for a bad file: it returns a
:class:`Decoded` whose ``error`` says what was wrong, so that one input always gives one result.
Crops never resize (resampling would erase the traces a detector looks for); images smaller than
the crop are padded with the mean colour (zero after normalisation).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import random
import signal
import threading
import warnings
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image, ImageCms, ImageFilter, ImageOps, UnidentifiedImageError

from .errors import I2PError, one_line

try:  # HEIC/HEIF only where the optional decoder is installed (pip install i2pscan[heif])
    import pillow_heif

    pillow_heif.register_heif_opener()
    HEIF_EXTENSIONS = ("heic", "heif")
except ImportError:
    HEIF_EXTENSIONS = ()

BASE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
AVIF_EXTENSIONS = ("avif",) if ".avif" in Image.registered_extensions() else ()
IMAGE_EXTENSIONS = BASE_EXTENSIONS + AVIF_EXTENSIONS + HEIF_EXTENSIONS

REAL_NAMES = ("real", "0_real", "nature")
FAKE_NAMES = ("fake", "1_fake", "ai", "synthetic")
LABEL_WORDS = {"real": 0, "0": 0, "nature": 0, "fake": 1, "1": 1, "ai": 1, "synthetic": 1}
LABEL_NAMES = ("real", "fake")

DEFAULT_MAX_PIXELS = 2 * Image.MAX_IMAGE_PIXELS  # Pillow's own refusal limit, about 179 MP
DEFAULT_MAX_BYTES = 1 << 30
DEFAULT_DECODE_TIMEOUT_S = 60.0


# --------------------------------------------------------------------------------------------
# Decoding


@dataclass
class Decoded:
    """What decoding one file gave: an RGB image, or an error message. Never both."""

    image: Image.Image | None
    error: str | None = None
    format: str | None = None
    width: int | None = None
    height: int | None = None
    size_bytes: int | None = None
    mtime: float | None = None
    sha256: str | None = None


def decode(path: str, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_BYTES,
           want_hash: bool = False, timeout_s: float | None = DEFAULT_DECODE_TIMEOUT_S) -> Decoded:
    """Read and decode one image file into 8-bit RGB.

    The format is recognised from the content, not the extension. EXIF orientation is applied;
    animations give their first frame; every Pillow mode is mapped to RGB (alpha composited on
    white, 16/32-bit and float scaled to 8 bits, LAB and CMYK converted). Truncated files, files
    above ``max_pixels`` (decompression bombs), above ``max_bytes``, or taking over ``timeout_s``
    to decode give an error, as does anything that cannot be read at all.
    """
    result = Decoded(image=None)
    data = b""
    try:
        st = os.stat(path)
        result.size_bytes, result.mtime = st.st_size, st.st_mtime
        if os.path.isdir(path):
            result.error = ("a folder that cannot be listed" if not os.access(path, os.R_OK | os.X_OK)
                            else "a folder, not an image file")
            return result
        if not os.path.isfile(path):
            result.error = "not a regular file"
            return result
        if st.st_size == 0:
            result.error = "empty file"
            return result
        if st.st_size > max_bytes:
            result.error = f"file too large ({st.st_size:,} bytes, limit {max_bytes:,})"
            return result
        with open(path, "rb") as fh:
            data = fh.read()
        if want_hash:
            result.sha256 = hashlib.sha256(data).hexdigest()
        with _deadline(timeout_s), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = _open_checked(data, max_pixels, result)
            if image is not None:
                result.image = _to_rgb(_oriented(image))
                result.width, result.height = result.image.size
    except FileNotFoundError:
        result.error = "file not found (deleted or moved during the scan?)"
    except PermissionError:
        result.error = "permission denied"
    except Image.DecompressionBombError as exc:
        result.error = f"decompression bomb: {exc}".split(", could be")[0]
    except UnidentifiedImageError:
        result.error = _unidentified_message(data)
    except _DecodeTimeout:
        result.error = f"decoding took longer than {timeout_s:g} s"
    except MemoryError:
        result.error = "out of memory while decoding"
    except Exception as exc:  # a corrupt file can raise anything from a decoder
        result.error = one_line(exc)
    if result.error:
        result.image = None
    return result


_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1")


def _unidentified_message(data: bytes) -> str:
    if data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS and not HEIF_EXTENSIONS:
        return "HEIF/HEIC image: install the optional decoder with pip install 'i2pscan[heif]'"
    return "not an image (or a format Pillow cannot read)"


def _open_checked(data: bytes, max_pixels: int, result: Decoded) -> Image.Image | None:
    if Image.MAX_IMAGE_PIXELS != max_pixels // 2:
        Image.MAX_IMAGE_PIXELS = max_pixels // 2  # Pillow warns above this and refuses above twice it
    image = Image.open(io.BytesIO(data))
    result.format = image.format
    width, height = image.size
    result.width, result.height = width, height
    if width * height > max_pixels:
        result.error = f"decompression bomb: {width}x{height} pixels exceeds the limit of {max_pixels:,}"
        return None
    if width < 1 or height < 1:
        result.error = f"invalid image size {width}x{height}"
        return None
    image.load()
    return image


_EXIF_ORIENTATION = 0x0112


def _oriented(image: Image.Image) -> Image.Image:
    try:
        if image.getexif().get(_EXIF_ORIENTATION, 1) in (1, None):
            return image  # exif_transpose would copy the whole image for nothing
        return ImageOps.exif_transpose(image)
    except Exception:  # broken EXIF: keep the stored orientation rather than lose the image
        return image


_LAB_TO_SRGB = None


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I;16") or mode in ("I", "F"):
        return Image.fromarray(_to_uint8(np.asarray(image)), "L").convert("RGB")
    if mode == "LAB":
        global _LAB_TO_SRGB
        if _LAB_TO_SRGB is None:
            _LAB_TO_SRGB = ImageCms.buildTransform(ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"),
                                                   "LAB", "RGB")
        return ImageCms.applyTransform(image, _LAB_TO_SRGB)
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Scale a 16-bit, 32-bit or float single-channel image to 8 bits."""
    a = array.astype(np.float64)
    finite = np.isfinite(a)
    if not finite.any():
        return np.zeros(a.shape, np.uint8)
    a = np.where(finite, a, 0.0)
    lo, hi = float(a.min()), float(a.max())
    if array.dtype.kind == "f":
        scale = 255.0 if lo >= 0.0 and hi <= 1.0 else None
    elif hi <= 255:
        scale = 1.0
    elif hi <= 65535 and lo >= 0:
        scale = 255.0 / 65535.0
    else:
        scale = None
    if scale is None:  # unknown range: stretch to the full 8 bits
        a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
        scale = 1.0
    return np.clip(np.rint(a * scale), 0, 255).astype(np.uint8)


class _DecodeTimeout(Exception):
    pass


@contextmanager
def _deadline(seconds: float | None) -> Iterator[None]:
    """Interrupt decoding after ``seconds`` (SIGALRM; only in a process's main thread)."""
    usable = (seconds and seconds > 0 and hasattr(signal, "setitimer")
              and threading.current_thread() is threading.main_thread())
    if not usable:
        yield
        return

    def expire(signum, frame):
        raise _DecodeTimeout()

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# --------------------------------------------------------------------------------------------
# Crops and augmentations


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes model input: a crop of ``crop_size`` at native resolution, normalised."""

    crop_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        return cls(int(d["crop_size"]), tuple(float(x) for x in d["mean"]), tuple(float(x) for x in d["std"]))

    def to_dict(self) -> dict:
        return {"crop_size": self.crop_size, "mean": list(self.mean), "std": list(self.std)}

    def normalise(self, pixels: np.ndarray) -> torch.Tensor:
        """uint8 HxWx3 (H, W <= crop) -> float CxSxS, centred in a zero (mean-colour) canvas."""
        s = self.crop_size
        mean = np.asarray(self.mean, np.float32)
        std = np.asarray(self.std, np.float32)
        norm = (pixels.astype(np.float32) / 255.0 - mean) / std
        out = np.zeros((s, s, 3), np.float32)
        h, w = norm.shape[:2]
        top, left = (s - h) // 2, (s - w) // 2
        out[top:top + h, left:left + w] = norm
        return torch.from_numpy(out.transpose(2, 0, 1).copy())


def crop_origins(width: int, height: int, size: int, n: int) -> list[tuple[int, int]]:
    """Top-left corners of ``n`` crops: the centre first, then the four corners, then a grid."""
    if n < 1:
        raise ValueError("n must be >= 1")
    max_x, max_y = max(width - size, 0), max(height - size, 0)
    origins = [(max_x // 2, max_y // 2), (0, 0), (max_x, 0), (0, max_y), (max_x, max_y)]
    if n > len(origins):
        g = math.ceil(math.sqrt(n))
        grid = [(round(max_x * i / max(g - 1, 1)), round(max_y * j / max(g - 1, 1))) for j in range(g) for i in range(g)]
        origins = origins[:1] + [o for o in grid if o != origins[0]]
    return origins[:n]


class CropTransform:
    """Deterministic crops for calibration and scanning: ``n`` crops per image -> Tensor[n, 3, S, S]."""

    def __init__(self, preprocess: Preprocess, n_crops: int = 1):
        self.preprocess = preprocess
        self.n_crops = n_crops

    def __call__(self, image: Image.Image, index: int) -> torch.Tensor:
        s = self.preprocess.crop_size
        crops = []
        for x, y in crop_origins(image.width, image.height, s, self.n_crops):
            # crop in Pillow first: converting a whole 12 MP image to an array costs as much as decoding it
            box = (x, y, min(x + s, image.width), min(y + s, image.height))
            crops.append(self.preprocess.normalise(np.asarray(image.crop(box))))
        return torch.stack(crops)


@dataclass(frozen=True)
class Augment:
    """Training augmentations (DESIGN §1.2 step 6), applied to both classes alike."""

    flip: float = 0.5
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.0, 3.0)
    jpeg_p: float = 0.5
    jpeg_quality: tuple[int, int] = (30, 100)


class TrainTransform:
    """Random crop (no resize), flip, Gaussian blur and JPEG re-encoding -> Tensor[1, 3, S, S].

    The randomness of image ``index`` in ``epoch`` comes from (seed, epoch, index) alone, so a run
    gives the same batches whatever the number of workers, and a resumed run the same as an
    uninterrupted one.
    """

    def __init__(self, preprocess: Preprocess, augment: Augment, seed: int):
        self.preprocess = preprocess
        self.augment = augment
        self.seed = seed
        self.epoch = 0

    def __call__(self, image: Image.Image, index: int) -> torch.Tensor:
        rng = random.Random(f"{self.seed}/{self.epoch}/{index}")
        a, s = self.augment, self.preprocess.crop_size
        x = rng.randint(0, max(image.width - s, 0))
        y = rng.randint(0, max(image.height - s, 0))
        crop = image.crop((x, y, min(x + s, image.width), min(y + s, image.height)))
        if rng.random() < a.flip:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if rng.random() < a.blur_p:
            crop = crop.filter(ImageFilter.GaussianBlur(radius=rng.uniform(*a.blur_sigma)))
        if rng.random() < a.jpeg_p:
            crop = jpeg_roundtrip(crop, rng.randint(*a.jpeg_quality))
        return self.preprocess.normalise(np.asarray(crop))[None]


def jpeg_roundtrip(image: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    return Image.open(buf).convert("RGB")


PERTURBATIONS = ("jpeg", "blur", "resize")


def perturb(image: Image.Image, spec: str) -> Image.Image:
    """Robustness perturbations as GenImage/RINE report them: ``jpeg:Q``, ``blur:SIGMA``, ``resize:F``."""
    kind, _, value = spec.partition(":")
    v = float(value)
    if kind == "jpeg":
        return jpeg_roundtrip(image, int(v))
    if kind == "blur":
        return image.filter(ImageFilter.GaussianBlur(radius=v))
    if kind == "resize":
        size = (max(1, round(image.width * v)), max(1, round(image.height * v)))
        return image.resize(size, Image.Resampling.BILINEAR)
    raise ValueError(f"unknown perturbation {spec!r}")


def parse_perturbation(spec: str) -> str:
    """Validate ``KIND:VALUE`` and return it normalised; raises I2PError."""
    kind, sep, value = spec.partition(":")
    try:
        v = float(value)
    except ValueError:
        v = None
    ok = sep and kind in PERTURBATIONS and v is not None and (
        (kind == "jpeg" and 1 <= v <= 100) or (kind == "blur" and v >= 0) or (kind == "resize" and 0 < v <= 4))
    if not ok:
        raise I2PError(f"--perturb {spec}: expected jpeg:QUALITY (1-100), blur:SIGMA or resize:FACTOR")
    return f"{kind}:{value}"


def save_image(array: np.ndarray, path: str | Path, quality: int | None = None) -> None:
    """Write an HxWx3 uint8 array (PNG, or JPEG when the suffix says so)."""
    image = Image.fromarray(np.ascontiguousarray(array), "RGB")
    if str(path).lower().endswith((".jpg", ".jpeg")):
        image.save(path, quality=quality or 95)
    else:
        image.save(path)


# --------------------------------------------------------------------------------------------
# Datasets: one item per file, a decoded crop tensor or an error, never a substitute sample


@dataclass
class Item:
    index: int
    pixels: torch.Tensor | None  # [n_crops, 3, S, S]
    info: Decoded


@dataclass
class Batch:
    """Items in input order; ``pixels`` stacks the crops of the items that decoded."""

    items: list[Item]
    pixels: torch.Tensor | None
    ok: list[int] = field(default_factory=list)  # positions in ``items`` with pixels

    def pin_memory(self) -> "Batch":
        if self.pixels is not None:
            self.pixels = self.pixels.pin_memory()
        return self


def collate(items: list[Item]) -> Batch:
    ok = [i for i, it in enumerate(items) if it.pixels is not None]
    pixels = torch.cat([items[i].pixels for i in ok]) if ok else None
    for it in items:
        it.pixels = None  # the stacked tensor holds them; do not send them twice between processes
    return Batch(items=items, pixels=pixels, ok=ok)


class ImageFiles(torch.utils.data.Dataset):
    """Paths -> :class:`Item` (decoded and transformed in DataLoader workers)."""

    def __init__(self, paths: Sequence[str], transform, want_hash: bool = False,
                 max_pixels: int = DEFAULT_MAX_PIXELS, perturbation: str | None = None):
        self.paths = list(paths)
        self.transform = transform
        self.want_hash = want_hash
        self.max_pixels = max_pixels
        self.perturbation = perturbation

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Item:
        info = decode(self.paths[index], max_pixels=self.max_pixels, want_hash=self.want_hash)
        pixels = None
        if info.image is not None:
            try:
                image = perturb(info.image, self.perturbation) if self.perturbation else info.image
                pixels = self.transform(image, index)
            except Exception as exc:
                info.error = f"preprocessing failed: {one_line(exc)}"
        info.image = None
        return Item(index=index, pixels=pixels, info=info)


def worker_init(_worker_id: int) -> None:
    """DataLoader workers decode; one torch thread each leaves the cores to decoding.

    C decoders (libtiff above all) print warnings about damaged files straight to file
    descriptor 2; in workers that stream goes to /dev/null so that stderr stays readable. Errors
    still arrive: as error rows, or as the DataLoader's own exceptions in the main process.
    """
    torch.set_num_threads(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)


PREFETCH_FACTOR = 4


def loader(dataset: ImageFiles, batch_size: int, workers: int, pin_memory: bool = False,
           shuffle_seed: int | None = None, timeout_s: float = 0) -> torch.utils.data.DataLoader:
    generator = None
    if shuffle_seed is not None:
        generator = torch.Generator().manual_seed(shuffle_seed)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle_seed is not None,
        generator=generator,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        worker_init_fn=worker_init if workers > 0 else None,
        persistent_workers=False,
        prefetch_factor=PREFETCH_FACTOR if workers > 0 else None,
        timeout=timeout_s if workers > 0 else 0,
    )


def default_workers() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return max(0, min(8, cpus - 1)) if cpus > 2 else cpus


# --------------------------------------------------------------------------------------------
# Labelled samples


@dataclass(frozen=True)
class LabelledImage:
    path: str
    label: int  # 0 real, 1 fake
    subset: str


@dataclass
class LabelledSample:
    """Labelled image files, sorted by path, with the subset (generator) each belongs to."""

    items: list[LabelledImage]
    source: str

    @property
    def paths(self) -> list[str]:
        return [it.path for it in self.items]

    @property
    def labels(self) -> np.ndarray:
        return np.asarray([it.label for it in self.items], np.int64)

    def counts(self) -> dict:
        per_class = Counter(LABEL_NAMES[it.label] for it in self.items)
        per_subset: dict[str, dict[str, int]] = defaultdict(lambda: {"real": 0, "fake": 0})
        for it in self.items:
            per_subset[it.subset][LABEL_NAMES[it.label]] += 1
        return {"real": per_class["real"], "fake": per_class["fake"], "subsets": dict(sorted(per_subset.items()))}

    def fingerprint(self) -> str:
        """sha256 over (path relative to the source, label, subset) of every item."""
        root = self.source if os.path.isdir(self.source) else os.path.dirname(self.source)
        digest = hashlib.sha256()
        for it in self.items:
            rel = os.path.relpath(it.path, root) if root else it.path
            digest.update(json.dumps([rel, it.label, it.subset]).encode("utf-8", "surrogateescape"))
        return digest.hexdigest()

    def subset(self, keep: Sequence[int]) -> "LabelledSample":
        return LabelledSample([self.items[i] for i in keep], self.source)


def load_labelled(source: str | os.PathLike, max_per_class: int | None = None, seed: int = 0,
                  subsets: Sequence[str] | None = None, split: str | None = None) -> LabelledSample:
    """Find labelled images in a folder tree or a CSV/Parquet manifest (DESIGN §6).

    Folders named real/0_real/nature and fake/1_fake/ai/synthetic, at any depth, label the images
    below them; the first path component under the root names the subset. ``subsets`` keeps only
    those subsets; ``split`` only files below a folder of that name (GenImage's train or val).
    ``max_per_class`` keeps
    a seeded sample of at most N images per class, spread over subsets in proportion to their size.
    Raises I2PError when nothing is found or a class is missing.
    """
    source = os.fspath(source)
    if not os.path.exists(source):
        raise I2PError(f"data not found: {source}")
    if os.path.isdir(source):
        items = _discover_labelled(source)
    elif source.lower().endswith((".csv", ".parquet", ".pq")):
        items = _read_manifest(source)
    else:
        raise I2PError(f"{source}: expected a folder of labelled images or a .csv/.parquet manifest")
    if subsets:
        unknown = sorted(set(subsets) - {it.subset for it in items})
        if unknown:
            raise I2PError(f"no subset named {', '.join(unknown)} in {source}; "
                           f"subsets: {', '.join(sorted({it.subset for it in items}))}")
        items = [it for it in items if it.subset in set(subsets)]
    if split:
        base = source if os.path.isdir(source) else os.path.dirname(os.path.abspath(source))
        items = [it for it in items
                 if split.lower() in (p.lower() for p in Path(os.path.relpath(it.path, base)).parts[:-1])]
    if not items:
        raise I2PError(
            f"no labelled images in {source}: expected folders named {'|'.join(REAL_NAMES)} and "
            f"{'|'.join(FAKE_NAMES)} (at any depth), or a CSV/Parquet manifest with path,label[,subset]")
    counts = Counter(it.label for it in items)
    for label in (0, 1):
        if counts[label] == 0:
            other = LABEL_NAMES[1 - label]
            raise I2PError(f"{source} has {counts[1 - label]} {other} images and no {LABEL_NAMES[label]} ones; "
                           f"both classes are needed")
    if max_per_class:
        items = _stratified(items, max_per_class, seed)
    items.sort(key=lambda it: it.path)
    return LabelledSample(items, source)


def _discover_labelled(root: str) -> list[LabelledImage]:
    names = {n: 0 for n in REAL_NAMES} | {n: 1 for n in FAKE_NAMES}
    root_name = os.path.basename(os.path.normpath(root)) or "data"
    items = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_parts = Path(os.path.relpath(dirpath, root)).parts
        rel_parts = () if rel_parts == (".",) else rel_parts
        label = None
        for part in reversed((root_name,) + rel_parts):
            if part.lower() in names:
                label = names[part.lower()]
                break
        if label is None:
            continue
        first = rel_parts[0] if rel_parts else root_name
        subset = root_name if first.lower() in names else first
        for name in sorted(filenames):
            if not name.startswith(".") and has_image_extension(name):
                items.append(LabelledImage(os.path.join(dirpath, name), label, subset))
    return items


def _read_manifest(path: str) -> list[LabelledImage]:
    base = os.path.dirname(os.path.abspath(path))
    try:
        if path.lower().endswith(".csv"):
            with open(path, newline="", encoding="utf-8") as fh:
                rows = list(csv.DictReader(fh))
        else:
            import pyarrow.parquet as pq

            rows = pq.read_table(path).to_pylist()
    except (OSError, UnicodeDecodeError, csv.Error, ValueError) as exc:
        raise I2PError(f"cannot read manifest {path}: {one_line(exc)}") from exc
    if not rows or "path" not in rows[0] or "label" not in rows[0]:
        raise I2PError(f"manifest {path} needs columns path,label[,subset]")
    default_subset = os.path.splitext(os.path.basename(path))[0]
    items = []
    for line, row in enumerate(rows, start=2):
        label = LABEL_WORDS.get(str(row["label"]).strip().lower())
        if label is None:
            raise I2PError(f"manifest {path} row {line}: label {row['label']!r} is not one of "
                           f"real/fake, 0/1, nature/ai")
        p = str(row["path"])
        items.append(LabelledImage(p if os.path.isabs(p) else os.path.join(base, p), label,
                                   str(row.get("subset") or default_subset)))
    return items


def _stratified(items: list[LabelledImage], per_class: int, seed: int) -> list[LabelledImage]:
    rng = random.Random(seed)
    kept = []
    for label in (0, 1):
        groups: dict[str, list[LabelledImage]] = defaultdict(list)
        for it in items:
            if it.label == label:
                groups[it.subset].append(it)
        total = sum(len(g) for g in groups.values())
        if total <= per_class:
            kept.extend(it for g in groups.values() for it in g)
            continue
        # largest-remainder allocation of per_class over subsets, in proportion to their sizes
        shares = {k: per_class * len(g) / total for k, g in sorted(groups.items())}
        alloc = {k: int(v) for k, v in shares.items()}
        for k in sorted(shares, key=lambda k: (-(shares[k] - alloc[k]), k))[:per_class - sum(alloc.values())]:
            alloc[k] += 1
        for k, g in sorted(groups.items()):
            kept.extend(rng.sample(sorted(g, key=lambda it: it.path), alloc[k]))
    return kept


def split_stratified(sample: LabelledSample, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (train, validation): ``fraction`` of each (label, subset) group held out."""
    rng = random.Random(seed)
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, it in enumerate(sample.items):
        groups[(it.label, it.subset)].append(i)
    train, val = [], []
    for key in sorted(groups):
        idx = groups[key][:]
        rng.shuffle(idx)
        n_val = int(round(len(idx) * fraction))
        if len(idx) >= 2:
            n_val = min(max(n_val, 1), len(idx) - 1)
        val.extend(idx[:n_val])
        train.extend(idx[n_val:])
    return sorted(train), sorted(val)


def has_image_extension(name: str, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> bool:
    ext = os.path.splitext(name)[1][1:].lower()
    return ext in extensions
