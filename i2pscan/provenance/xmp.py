"""XMP packets parsed with defusedxml (no DTD, so no entity bombs and no external entities): the
fields generators and editors declare an origin in, within the file's limits (containers.py)."""

from __future__ import annotations

import re

from i2pscan.errors import one_line
from i2pscan.provenance.found import MAX_LIST, MAX_TOTAL_XMP_BYTES, MAX_XMP_BYTES, MAX_XMP_PACKETS, Found, short

_NS = {
    "iptc": "{http://iptc.org/std/Iptc4xmpExt/2008-02-29/}",
    "xmp": "{http://ns.adobe.com/xap/1.0/}",
    "rdf": "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}",
    "dc": "{http://purl.org/dc/elements/1.1/}",
    "photoshop": "{http://ns.adobe.com/photoshop/1.0/}",
    "tiff": "{http://ns.adobe.com/tiff/1.0/}",
    "exif": "{http://ns.adobe.com/exif/1.0/}",
}
# XMP properties read, by (namespace, name) -> the key in xmp_info
_XMP_FIELDS = {
    _NS["iptc"] + "DigitalSourceType": "digital_source_types",
    _NS["iptc"] + "AISystemUsed": "ai_system",
    _NS["xmp"] + "CreatorTool": "creator_tool",
    _NS["dc"] + "description": "description",
    _NS["dc"] + "title": "title",
    _NS["dc"] + "creator": "creator",
    _NS["photoshop"] + "Credit": "credit",
    _NS["photoshop"] + "Source": "source",
    _NS["photoshop"] + "Instructions": "instructions",
    _NS["tiff"] + "Software": "software",
    _NS["tiff"] + "Make": "make",
    _NS["tiff"] + "Model": "model",
    _NS["tiff"] + "ImageDescription": "image_description",
    _NS["exif"] + "UserComment": "user_comment",
}
# a packet naming none of these is not parsed at all (a file of 100,000 tiny packets costs a search each)
_XMP_INTEREST = re.compile(rb"DigitalSourceType|AISystemUsed|CreatorTool|description|title|creator|Credit|Source"
                           rb"|Instructions|Software|Make|Model|ImageDescription|UserComment")


def read_xmp_packets(packets: list[bytes], found: Found) -> None:
    """Every packet into ``found.xmp_info`` (the first value of a field wins; source types
    gathered), within the limits; refusals and what was left out become notes."""
    total, parsed = 0, 0
    for i, packet in enumerate(packets):
        if len(packet) > MAX_XMP_BYTES:
            found.note(f"xmp: packet of {len(packet):,} bytes skipped (limit {MAX_XMP_BYTES:,})")
            continue
        total += len(packet)
        if total > MAX_TOTAL_XMP_BYTES or parsed >= MAX_XMP_PACKETS:
            found.note(f"xmp: {len(packets) - i} packet(s) beyond the limits ({MAX_TOTAL_XMP_BYTES:,} bytes, "
                       f"{MAX_XMP_PACKETS} packets) not read")
            break
        if b"<!DOCTYPE" in packet or b"<!ENTITY" in packet:  # never parsed: entity bombs, external entities
            found.note("xmp: refused (a DTD or entities in attacker-controlled XML)")
            continue
        if not _XMP_INTEREST.search(packet):
            continue
        parsed += 1
        _read_xmp(packet, found)
    types = found.xmp_info.get("digital_source_types")
    if types is not None:
        found.xmp_info["digital_source_types"] = list(dict.fromkeys(types))[:MAX_LIST]
    found.xmp_info = {k: v for k, v in found.xmp_info.items() if v}


def _read_xmp(packet: bytes, found: Found) -> None:
    from defusedxml import DefusedXmlException
    from defusedxml.ElementTree import fromstring

    stop = packet.rfind(b"</x:xmpmeta>")
    if stop > 0:  # drop the closing <?xpacket?> and padding (a DTD before the packet stays, and is refused)
        packet = packet[:stop + len(b"</x:xmpmeta>")]
    packet = packet.lstrip(b"\xef\xbb\xbf \t\r\n\x00")
    try:
        root = fromstring(packet, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        found.note(f"xmp: refused ({type(exc).__name__}: a DTD or entities in attacker-controlled XML)")
        return
    except Exception as exc:
        found.note(f"xmp: not well-formed ({one_line(exc, 120)})")
        return
    info = found.xmp_info
    for el in root.iter():
        for name, value in el.attrib.items():
            key = _XMP_FIELDS.get(name)
            if key:
                _xmp_value(info, key, value)
        key = _XMP_FIELDS.get(el.tag) if isinstance(el.tag, str) else None
        if key:
            value = el.get(_NS["rdf"] + "resource") or (el.text or "").strip()
            if not value:  # a language alternative or a sequence: rdf:Alt/rdf:Seq/rdf:Bag of rdf:li
                value = next((li.text.strip() for li in el.iter(_NS["rdf"] + "li") if (li.text or "").strip()), "")
            if value:
                _xmp_value(info, key, value)


def _xmp_value(info: dict, key: str, value: str) -> None:
    if key == "digital_source_types":
        info.setdefault(key, []).append(short(value.rstrip("/").rsplit("/", 1)[-1]))
    elif key not in info:
        info[key] = short(value)
