"""Which image formats exist for a scan: the extensions picked up in folders, which of them are
decoded (HEIF through pi-heif, AVIF through Pillow, JPEG XL where its plugin is installed), and
which are picked up only to get a row saying why they are not scored (camera raw, SVG)."""

from __future__ import annotations

import importlib
import importlib.util
import os

from PIL import Image

# HEIC/HEIF through pi-heif (a dependency: libheif's decoder alone, LGPL-3.0, see THIRD_PARTY_NOTICES)
# or pillow-heif where that is what is installed; the opener is registered with Pillow when the
# first HEIF file is met, not when i2pscan is imported.
_HEIF_MODULE = next((m for m in ("pi_heif", "pillow_heif") if importlib.util.find_spec(m)), None)
HEIF_EXTENSIONS = ("heic", "heif", "hif") if _HEIF_MODULE else ()
# JPEG XL only where the user installed pillow-jxl-plugin (GPL-3.0: i2pscan does not depend on it)
_JXL_MODULE = "pillow_jxl" if importlib.util.find_spec("pillow_jxl") else None
JXL_EXTENSIONS = ("jxl",) if _JXL_MODULE else ()

BASE_EXTENSIONS = ("jpg", "jpeg", "jpe", "jfif", "png", "apng", "webp", "bmp", "gif", "tif", "tiff")
AVIF_EXTENSIONS = ("avif",) if ".avif" in Image.registered_extensions() else ()
IMAGE_EXTENSIONS = BASE_EXTENSIONS + AVIF_EXTENSIONS + HEIF_EXTENSIONS + JXL_EXTENSIONS
# image files that are picked up and get a row saying why they are not scored (and what would score them)
RAW_EXTENSIONS = ("dng", "cr2", "cr3", "crw", "nef", "nrw", "arw", "srf", "sr2", "orf", "rw2", "raf", "pef",
                  "srw", "x3f", "3fr", "iiq", "erf", "mos", "mrw", "kdc", "dcr")
UNSCORED_EXTENSIONS = RAW_EXTENSIONS + ("svg", "svgz") + tuple(e for e in ("avif", "heic", "heif", "hif", "jxl")
                                                              if e not in IMAGE_EXTENSIONS)
# every extension a folder scan picks up: nothing with an image extension is skipped silently
SCANNED_EXTENSIONS = IMAGE_EXTENSIONS + UNSCORED_EXTENSIONS


_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1")


def is_heif(data: bytes) -> bool:
    return data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS


def is_jxl(data: bytes) -> bool:
    return data.startswith(b"\xff\x0a") or data.startswith(b"\x00\x00\x00\x0cJXL \r\n\x87\n")


_RAW_MAGIC = ((b"FUJIFILMCCD-RAW", "RAF"), (b"IIRO", "ORF"), (b"IIRS", "ORF"), (b"IIU\x00", "RW2"),
              (b"\x00MRM", "MRW"), (b"FOVb", "X3F"))


def unscored_kind(data: bytes, path: str = "") -> tuple[str, str] | None:
    """(format, why it is not scored and what would score it) for a file the detectors cannot
    score here: camera raw (DNG and the makers' formats), SVG, and HEIF or JPEG XL without their
    decoder; None for anything else. By content, and by extension where the content is a TIFF
    structure (most raw formats are)."""
    ext = os.path.splitext(path)[1][1:].lower()
    head = data[:4096]
    if data[4:12] == b"ftypcrx " or any(head.startswith(m) for m, _ in _RAW_MAGIC) or (
            ext in RAW_EXTENSIONS and head[:4] in (b"II*\x00", b"MM\x00*")):
        name = "CR3" if data[4:12] == b"ftypcrx " else next((f for m, f in _RAW_MAGIC if head.startswith(m)),
                                                              ext.upper() or "RAW")
        return name, (f"camera raw image ({name}): not scored; the detectors score developed pixels, and raw sensor "
                      f"data must be demosaiced first (export it as JPEG or TIFF to score it); its metadata is read")
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if ext in ("svg", "svgz") or (stripped.startswith((b"<?xml", b"<svg", b"<!--")) and b"<svg" in head):
        return "SVG", ("SVG vector drawing: not scored; the detectors score pixels, which an SVG has only once "
                       "rendered (render it to PNG to score it); its metadata is read")
    if is_jxl(data) and not JXL_EXTENSIONS:
        return "JXL", ("JPEG XL image: not scored; no JPEG XL decoder is installed (pip install pillow-jxl-plugin, "
                       "GPL-3.0, which i2pscan therefore does not install, then it is scored); its metadata is read")
    if is_heif(data) and not HEIF_EXTENSIONS:
        return "HEIF", ("HEIF/HEIC image: not scored; no HEIF decoder is installed (pip install pi-heif, then it "
                        "is scored); its metadata is read")
    return None


def is_dng(image: Image.Image) -> bool:
    try:
        return image.format == "TIFF" and 0xC612 in image.getexif()  # DNGVersion
    except Exception:
        return False


_registered: set[str] = set()


def register_decoders(data: bytes) -> None:
    """Register the HEIF or JPEG XL opener with Pillow when the first such file is met."""
    if is_heif(data) and _HEIF_MODULE and "heif" not in _registered:
        importlib.import_module(_HEIF_MODULE).register_heif_opener()
        _registered.add("heif")
    elif is_jxl(data) and _JXL_MODULE and "jxl" not in _registered:
        importlib.import_module(_JXL_MODULE)  # registers itself with Pillow
        _registered.add("jxl")
