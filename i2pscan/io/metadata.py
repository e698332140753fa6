"""What Pillow reads of a file's metadata for the evidence reader (provenance/ imports no Pillow):
selected EXIF tags of IFD0 and the Exif IFD."""

from __future__ import annotations

import warnings

from PIL import Image

# EXIF tags read, by IFD: generators write in both (OpenAI puts UserComment and MakerNote in IFD0)
_EXIF_IFD0 = {0x010F: "Make", 0x0110: "Model", 0x0131: "Software", 0x010E: "ImageDescription", 0x013B: "Artist",
              0x9286: "UserComment@ifd0", 0x927C: "MakerNote@ifd0", 0x9C9C: "XPComment", 0x9C9B: "XPTitle"}
_EXIF_SUB = {0x9003: "DateTimeOriginal", 0xA434: "LensModel", 0x9286: "UserComment", 0x927C: "MakerNote",
             0x010E: "ImageDescription@exif", 0x0131: "Software@exif"}
_EXIF_TEXT_LIMIT = 1 << 20  # a tag value kept for the evidence reader (a UserComment of parameters is a few KB)


def read_exif(blob: bytes) -> dict:
    """Selected tags of a raw EXIF block (a TIFF structure, optionally after ``Exif\\0\\0``):
    {name: value} for Make, Model, Software, ImageDescription, Artist, XPComment, XPTitle,
    DateTimeOriginal, LensModel, UserComment and MakerNote (bytes), from IFD0 and the Exif IFD; a
    tag found where the standard does not put it is named ``Name@ifd0`` (or ``@exif``). Empty
    when the block cannot be parsed; never raises."""
    def load() -> Image.Exif:
        exif = Image.Exif()
        exif.load(blob)
        return exif

    return exif_tags(load)


def exif_tags(get_exif) -> dict:
    out: dict = {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exif = get_exif()
            for ifd, names in ((exif.get_ifd(0x8769), _EXIF_SUB), (exif, _EXIF_IFD0)):
                for tag, name in names.items():
                    value = ifd.get(tag)
                    if isinstance(value, tuple) and name.startswith("XP"):  # Windows XP tags: UTF-16LE bytes
                        value = bytes(value).decode("utf-16-le", "replace")
                    if isinstance(value, (str, bytes)) and value:
                        out[name] = value[:_EXIF_TEXT_LIMIT]
    except Exception:  # broken EXIF is common and never fatal
        pass
    return out
