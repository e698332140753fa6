"""Where metadata lives inside a file: PNG text chunks, JPEG segments, WebP chunks, TIFF/EXIF
structures, XMP packets, and where a C2PA manifest store may be. Walks the container's bytes with
every size bounded (a hostile file may hold millions of chunks or a decompression bomb of text)
and never raises for a bad file: what it cannot read becomes a note.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

from i2pscan.errors import one_line

MAX_TEXT_BYTES = 4 << 20  # one text chunk, decompressed
MAX_TOTAL_TEXT_BYTES = 16 << 20  # all text chunks of a file together
MAX_XMP_BYTES = 4 << 20
MAX_CHUNKS = 100_000  # PNG chunks / JPEG segments / RIFF chunks walked per file (a hostile file may hold millions)
MAX_LIST = 50  # status codes, source types... kept in the detail
SHORT_CHARS = 256


@dataclass
class Found:
    texts: dict[str, str] = field(default_factory=dict)  # PNG text chunks (and JPEG comments)
    exif: list[bytes] = field(default_factory=list)
    xmp: list[bytes] = field(default_factory=list)
    manifest_bytes: int = 0
    complete: bool = False  # a PNG, JPEG or WebP whose metadata places were all walked: nothing elsewhere
    notes: list[str] = field(default_factory=list)
    xmp_info: dict = field(default_factory=dict)
    exif_info: dict = field(default_factory=dict)
    text_budget: int = MAX_TOTAL_TEXT_BYTES


def read_headers(data: bytes, exif: dict | None = None) -> "Found":
    """Everything but C2PA: container metadata (PNG text, JPEG/WebP segments), XMP, EXIF
    (``exif``: tags decoding already parsed, else parsed here). Never raises."""
    found = Found()
    try:
        _scan_container(data, found)
    except Exception as exc:  # a malformed container: keep what was read before it
        found.notes.append(f"metadata: {one_line(exc, 200)}")
    for xmp in found.xmp[:4]:
        _read_xmp(xmp, found)
    if not found.xmp and not found.complete:  # XMP outside the places PNG/JPEG/WebP define for it
        packet = _find_xmp_packet(data, found)
        if packet:
            _read_xmp(packet, found)
    if exif is not None:
        _add_exif(exif, found)
    else:
        for blob in found.exif[:2]:
            _read_exif(blob, found)
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
                    found.xmp.append(text.encode("utf-8"))
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
    if kind == b"tEXt":
        raw, encoding = rest, "latin-1"
    elif kind == b"zTXt":
        raw, encoding = _inflate(rest[1:], name, found), "latin-1"
    else:
        if len(rest) < 2:
            return None
        compressed, rest = rest[0], rest[2:]
        _lang, _, rest = rest.partition(b"\0")
        _translated, _, raw = rest.partition(b"\0")
        raw, encoding = (_inflate(raw, name, found) if compressed else raw), "utf-8"
    if raw is None:
        return None
    raw = raw[:min(MAX_TEXT_BYTES, max(found.text_budget, 0))]
    found.text_budget -= len(raw)
    return name, raw.decode(encoding, "replace")


def _inflate(raw: bytes, name: str, found: Found) -> bytes | None:
    limit = min(MAX_TEXT_BYTES, max(found.text_budget, 0))
    try:
        inflater = zlib.decompressobj()
        out = inflater.decompress(raw, limit)
    except zlib.error:
        found.notes.append(f"png text {short(name, 40)}: corrupt compressed text")
        return None
    if inflater.unconsumed_tail:
        found.notes.append(f"png text {short(name, 40)}: longer than {limit:,} bytes, cut")
    return out


_XMP_SIG = b"http://ns.adobe.com/xap/1.0/\x00"


def _jpeg(data: bytes, found: Found) -> None:
    pos, end = 2, len(data)
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
        elif marker == 0xEB:  # APP11: JUMBF, where C2PA lives
            found.manifest_bytes += length
        elif marker == 0xFE and body:
            found.texts.setdefault("jpeg:comment", body[:MAX_TEXT_BYTES].decode("utf-8", "replace"))


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

def _find_xmp_packet(data: bytes, found: Found) -> bytes | None:
    """An XMP packet anywhere in the bytes (AVIF, HEIF, JXL, GIF, TIFF, SVG keep it in places of
    their own; the packet is plain text wherever it is)."""
    start = data.find(b"<x:xmpmeta")
    if start < 0:
        return None
    stop = data.find(b"</x:xmpmeta>", start, start + MAX_XMP_BYTES + 16)
    if stop < 0:
        found.notes.append("xmp: no end of packet within the size limit")
        return None
    return data[start:stop + len(b"</x:xmpmeta>")]


# -- XMP -----------------------------------------------------------------------------------------

_NS_IPTC_EXT = "{http://iptc.org/std/Iptc4xmpExt/2008-02-29/}"
_NS_XMP = "{http://ns.adobe.com/xap/1.0/}"
_NS_RDF = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}"


def _read_xmp(packet: bytes, found: Found) -> None:
    from defusedxml import DefusedXmlException
    from defusedxml.ElementTree import fromstring

    if len(packet) > MAX_XMP_BYTES:
        found.notes.append(f"xmp: packet of {len(packet):,} bytes skipped (limit {MAX_XMP_BYTES:,})")
        return
    stop = packet.rfind(b"</x:xmpmeta>")
    if stop > 0:  # drop the closing <?xpacket?> and padding (a DTD before the packet stays, and is refused)
        packet = packet[:stop + len(b"</x:xmpmeta>")]
    packet = packet.lstrip(b"\xef\xbb\xbf \t\r\n\x00")
    try:
        root = fromstring(packet, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        found.notes.append(f"xmp: refused ({type(exc).__name__}: a DTD or entities in attacker-controlled XML)")
        return
    except Exception as exc:
        found.notes.append(f"xmp: not well-formed ({one_line(exc, 120)})")
        return
    types, tools = found.xmp_info.setdefault("digital_source_types", []), []
    for el in root.iter():
        for name, value in el.attrib.items():
            if name == _NS_IPTC_EXT + "DigitalSourceType":
                types.append(value)
            elif name == _NS_XMP + "CreatorTool":
                tools.append(value)
        if el.tag == _NS_IPTC_EXT + "DigitalSourceType":
            value = el.get(_NS_RDF + "resource") or (el.text or "").strip()
            if value:
                types.append(value)
        elif el.tag == _NS_XMP + "CreatorTool" and (el.text or "").strip():
            tools.append(el.text.strip())
    found.xmp_info["digital_source_types"] = [short(t.rstrip("/").rsplit("/", 1)[-1]) for t in types][:MAX_LIST]
    if tools:
        found.xmp_info["creator_tool"] = short(tools[0])


# -- EXIF ----------------------------------------------------------------------------------------


def _read_exif(blob: bytes, found: Found) -> None:
    from i2pscan.io.decode import read_exif

    _add_exif(read_exif(blob), found)


def _add_exif(tags: dict, found: Found) -> None:
    for k, v in tags.items():
        if k == "UserComment":
            v = _user_comment(v)
        if isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        if isinstance(v, str):
            v = v.replace("\x00", "").strip()
            if v:
                found.exif_info.setdefault(k, v)


def _user_comment(value: Any) -> str | None:
    """EXIF UserComment: 8 bytes naming the charset, then the text (A1111 writes UTF-16 here)."""
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


def short(value: Any, limit: int = SHORT_CHARS) -> Any:
    if isinstance(value, str) and len(value) > limit:
        return value[:limit] + "…"
    return value
