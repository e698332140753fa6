"""Where metadata lives inside a file: PNG text chunks, JPEG segments, WebP chunks, TIFF/EXIF
structures, XMP packets, and where a C2PA manifest store may be. Never raises for a bad file:
what it cannot read becomes a note, and each place is read on its own (one that fails costs the
others nothing).

Why the PNG, JPEG and WebP walks are written here rather than taken from Pillow (which parses
the EXIF found, io.decode.read_exif): hostile input demands it.

- Pillow's ``im.text`` decodes every pixel of a PNG to find text after the image data (a
  decompression bomb, and 100 times the cost of ``--metadata-only``); ``Image.open`` refuses a
  whole PNG whose one text chunk inflates past 1 MB (ValueError), so a large ComfyUI workflow
  would cost the file all of its evidence; and its per-process text limits are globals.
- Here every inflate of a file draws on one budget (``MAX_TOTAL_TEXT_BYTES``), enforced at each
  call: once it is spent nothing more is inflated (zlib reads ``max_length=0`` as "no limit", so
  a zero budget never reaches it).
- The same single pass finds where a C2PA store is (PNG ``caBX``, JPEG APP11, WebP ``C2PA``),
  which Pillow does not expose, so files without one are never handed to the C2PA SDK.
"""

from __future__ import annotations

import re
import struct
import zlib
from typing import Any

from i2pscan.errors import one_line
from i2pscan.provenance.found import (MAX_CHUNKS, MAX_LIST, MAX_TEXT_BYTES, MAX_TOTAL_PLAIN_BYTES, MAX_TOTAL_TEXT_BYTES,
                                      MAX_TOTAL_XMP_BYTES, MAX_XMP_BYTES, MAX_XMP_PACKETS, Found, short)
from i2pscan.provenance.xmp import read_xmp_packets

__all__ = ["MAX_LIST", "MAX_TEXT_BYTES", "MAX_TOTAL_TEXT_BYTES", "MAX_XMP_BYTES", "Found", "add_exif",
           "may_hold_manifest", "read_headers", "short"]

def read_headers(data: bytes, exif: dict | None = None, xmp: bytes | None = None) -> Found:
    """Everything but C2PA: container metadata (PNG text, JPEG/WebP segments), every XMP packet,
    EXIF (``exif``: tags decoding already parsed, io.decode.read_exif's keys, else parsed here;
    ``xmp``: a packet the decoder found, e.g. in HEIF/AVIF). Each place fails alone; never raises."""
    found = Found()
    try:
        _scan_container(data, found)
    except Exception as exc:  # a malformed container: keep what was read before it
        found.note(f"metadata: {one_line(exc, 200)}")
    try:
        packets = list(found.xmp)
        if xmp:
            packets.append(xmp)
        if not found.complete:  # XMP outside the places PNG/JPEG/WebP define for it (AVIF, HEIF, JXL, GIF, TIFF, SVG)
            packets += _find_xmp_packets(data, found)
        read_xmp_packets(packets, found)
    except Exception as exc:
        found.note(f"xmp: {one_line(exc, 200)}")
    try:
        if exif is not None:
            add_exif(exif, found)
        else:
            for blob in found.exif[:2]:
                _read_exif(blob, found)
    except Exception as exc:
        found.note(f"exif: {one_line(exc, 200)}")
    return found


def may_hold_manifest(data: bytes) -> bool:
    """False when the bytes cannot hold an embedded C2PA manifest store: every store is a JUMBF
    superbox (box type ``jumb``) labelled ``c2pa``. Most files have neither, and the search costs
    far less than asking the SDK (which would report no manifest for them)."""
    return data.find(b"jumb") >= 0 or data.find(b"c2pa") >= 0


def _scan_container(data: bytes, found: Found) -> None:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        _png(data, found)
    elif data.startswith(b"\xff\xd8"):
        _jpeg(data, found)
    elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        _webp(data, found)
    elif data[:4] in (b"II*\x00", b"MM\x00*"):
        found.exif.append(data)  # a TIFF (or DNG) is one EXIF structure


# -- PNG -----------------------------------------------------------------------------------------


def _png(data: bytes, found: Found) -> None:
    pos, end = 8, len(data)
    for _ in range(MAX_CHUNKS):
        if pos + 8 > end:
            break
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IEND":
            found.complete = True
            break
        if kind in (b"tEXt", b"zTXt", b"iTXt"):
            item = _png_text(kind, body, found)
            if item:
                key, text = item
                if key == "XML:com.adobe.xmp":
                    found.xmp.append(text.encode("utf-8", "surrogatepass"))
                else:
                    found.texts.setdefault(key, text)
        elif kind == b"eXIf":
            found.exif.append(body)
        elif kind == b"caBX":
            found.manifest_bytes += length


def _png_text(kind: bytes, body: bytes, found: Found) -> tuple[str, str] | None:
    key, sep, rest = body.partition(b"\0")
    if not sep or not key or len(key) > 79:
        return None
    name = key.decode("latin-1")
    compressed = kind == b"zTXt"
    if kind == b"tEXt":
        raw, encoding = rest, "latin-1"
    elif kind == b"zTXt":
        raw, encoding = _inflate(rest[1:], name, found), "latin-1"
    else:
        if len(rest) < 2:
            return None
        compressed, rest = bool(rest[0]), rest[2:]
        _lang, _, rest = rest.partition(b"\0")
        _translated, _, raw = rest.partition(b"\0")
        raw, encoding = (_inflate(raw, name, found) if compressed else raw), "utf-8"
    if raw is None:
        return None
    if not compressed:  # inflated text was counted as it was inflated
        keep = min(MAX_TEXT_BYTES, found.text_budget)
        if keep <= 0:
            found.note(f"png text {short(name, 40)}: not read (the file's {MAX_TOTAL_PLAIN_BYTES:,}-byte text "
                       f"budget is spent)")
            return None
        raw = raw[:keep]
        found.text_budget -= len(raw)
    return name, raw.decode(encoding, "replace")


def _inflate(raw: bytes, name: str, found: Found) -> bytes | None:
    """At most what is left of the file's text budget (and ``MAX_TEXT_BYTES``) of one compressed
    text; nothing at all once the budget is spent (``max_length=0`` would mean no limit)."""
    limit = min(MAX_TEXT_BYTES, found.inflate_budget)
    if limit <= 0:
        found.note(f"png text {short(name, 40)}: not inflated (the file's {MAX_TOTAL_TEXT_BYTES:,}-byte budget "
                   f"of inflated text is spent)")
        return None
    try:
        inflater = zlib.decompressobj()
        out = inflater.decompress(raw, limit)
    except zlib.error:
        found.note(f"png text {short(name, 40)}: corrupt compressed text")
        return None
    found.inflate_budget -= len(out)
    if inflater.unconsumed_tail:
        found.note(f"png text {short(name, 40)}: longer than {limit:,} bytes, cut")
    return out


# -- JPEG, WebP ------------------------------------------------------------------------------------

_XMP_SIG = b"http://ns.adobe.com/xap/1.0/\x00"
_XMP_EXT_SIG = b"http://ns.adobe.com/xmp/extension/\x00"


def _jpeg(data: bytes, found: Found) -> None:
    pos, end = 2, len(data)
    extended: list[tuple[int, bytes]] = []
    for _ in range(MAX_CHUNKS):
        if pos + 4 > end:
            break
        if data[pos] != 0xFF:
            break
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        if marker in (0xDA, 0xD9):  # start of scan: the metadata segments are behind us
            found.complete = True
            break
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        body = data[pos + 4:pos + 2 + length]
        pos += 2 + length
        if marker == 0xE1 and body.startswith(b"Exif\x00"):
            found.exif.append(body[6:])
        elif marker == 0xE1 and body.startswith(_XMP_SIG):
            found.xmp.append(body[len(_XMP_SIG):])
        elif marker == 0xE1 and body.startswith(_XMP_EXT_SIG) and len(body) >= len(_XMP_EXT_SIG) + 40:
            part = body[len(_XMP_EXT_SIG):]  # GUID (32), full length (4), offset (4), data: extended XMP
            extended.append((struct.unpack(">I", part[36:40])[0], part[40:]))
        elif marker == 0xEB:  # APP11: JUMBF, where C2PA lives
            found.manifest_bytes += length
        elif marker == 0xFE and body and "jpeg:comment" not in found.texts:
            keep = min(MAX_TEXT_BYTES, found.text_budget)
            found.text_budget -= min(len(body), keep)
            found.texts["jpeg:comment"] = body[:keep].decode("utf-8", "replace")
    if extended:  # the parts of one large packet, in order of their offsets
        found.xmp.append(b"".join(p for _, p in sorted(extended, key=lambda x: x[0]))[:MAX_XMP_BYTES + 1])


def _webp(data: bytes, found: Found) -> None:
    pos, end = 12, len(data)
    if pos >= end:
        return
    for _ in range(MAX_CHUNKS):
        if pos + 8 > end:
            break
        kind, length = struct.unpack("<4sI", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        pos += 8 + length + (length & 1)
        if kind == b"EXIF":
            found.exif.append(body[6:] if body.startswith(b"Exif\x00") else body)
        elif kind == b"XMP ":
            found.xmp.append(body)
        elif kind == b"C2PA":
            found.manifest_bytes += length
    found.complete = pos == end + (end & 1) or pos == end


def _find_xmp_packets(data: bytes, found: Found) -> list[bytes]:
    """Every XMP packet anywhere in the bytes (AVIF, HEIF, JXL, GIF, TIFF, SVG keep them in places
    of their own; a packet is plain text wherever it is), within the file's XMP budget."""
    packets, start, total = [], 0, 0
    while len(packets) < MAX_XMP_PACKETS:
        start = data.find(b"<x:xmpmeta", start)
        if start < 0:
            break
        stop = data.find(b"</x:xmpmeta>", start, start + MAX_XMP_BYTES + 16)
        if stop < 0:
            found.note("xmp: no end of packet within the size limit")
            break
        stop += len(b"</x:xmpmeta>")
        total += stop - start
        if total > MAX_TOTAL_XMP_BYTES:
            found.note(f"xmp: packets beyond {MAX_TOTAL_XMP_BYTES:,} bytes not read")
            break
        packets.append(data[start:stop])
        start = stop
    return packets


# -- EXIF ----------------------------------------------------------------------------------------


def _read_exif(blob: bytes, found: Found) -> None:
    from i2pscan.io.metadata import read_exif

    add_exif(read_exif(blob), found)


def add_exif(tags: dict, found: Found) -> None:
    """Add tags parsed by io.decode.read_exif (``name`` or ``name@ifd0``) to ``found.exif_info``:
    text as text (UserComment and MakerNote decoded), the first place that has a tag wins."""
    for k, v in tags.items():
        name = k.split("@", 1)[0]
        if name in ("UserComment", "MakerNote"):
            v = _user_comment(v) if name == "UserComment" else _maker_note(v)
        if isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        if isinstance(v, str):
            v = v.replace("\x00", "").strip()
            if v and name not in found.exif_info:
                found.exif_info[name] = v
                if k != name:
                    found.exif_info.setdefault("_where", {})[name] = k.split("@", 1)[1]


def _user_comment(value: Any) -> str | None:
    """EXIF UserComment: 8 bytes naming the charset, then the text (A1111 writes UTF-16 here).
    Pillow hands it over undecoded."""
    if isinstance(value, str):
        return value
    if not isinstance(value, bytes):
        return None
    head, body = value[:8], value[8:]
    if head.startswith(b"UNICODE"):
        if len(body) >= 2 and body[0] == 0 and body[1] != 0:
            return body.decode("utf-16-be", "replace")
        return body.decode("utf-16-le", "replace")
    if head.startswith(b"ASCII") or head == b"\x00" * 8:
        return body.decode("utf-8", "replace")
    return value.decode("utf-8", "replace")


def _maker_note(value: Any) -> str | None:
    """A MakerNote is vendor binary; only a leading text (as OpenAI writes, ``OpenAI--…``) is kept."""
    if isinstance(value, bytes):
        value = value[:1024].decode("latin-1")
    if not isinstance(value, str):
        return None
    match = re.match(r"[\x20-\x7e]{4,}", value[:1024])
    return match.group(0) if match else None
