"""Provenance evidence read from a file's own bytes, offline: C2PA, IPTC/XMP, generator metadata
(DESIGN §1.5), and how it is weighed into a file's provenance, generator and C2PA columns.

- C2PA manifests (c2pa.py): only a manifest that validates counts toward the verdict.
- IPTC Digital Source Type and ``xmp:CreatorTool`` in XMP, parsed with defusedxml (no DTD, so no
  entity bombs and no external entities).
- Generator metadata (generators.py): PNG text chunks, the same in EXIF, and a
  Software/CreatorTool naming a known generator.
- Camera EXIF (Make, Model, DateTimeOriginal, lens): weak and forgeable, reported, never a verdict.

Everything is bounded (containers.py) and nothing here raises for a bad file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from i2pscan.errors import I2PError, one_line
from i2pscan.provenance.c2pa import C2PA_STATES, C2paReader, read_trust_file
from i2pscan.provenance.containers import Found, read_headers
from i2pscan.provenance.generators import AI, generator_exif, generator_texts, known_generator, source_type_kind

__all__ = ["AI", "PROVENANCE", "METADATA_EXTENSIONS", "Evidence", "EvidenceReader", "unread", "weigh"]

PROVENANCE = ("generated", "ai-edited", "captured", "camera-exif", "none")
# picked up in folders by --metadata-only besides the decodable images: containers C2PA and XMP live in
METADATA_EXTENSIONS = ("dng", "heic", "heif", "avif", "jxl", "svg")


@dataclass
class Evidence:
    """What one file's metadata says about its origin; ``columns()`` gives the report columns."""

    provenance: str | None = "none"
    generator: str | None = None
    c2pa: str | None = None
    detail: dict = field(default_factory=dict)

    def columns(self) -> dict:
        return {"provenance": self.provenance, "generator": self.generator, "c2pa": self.c2pa,
                "provenance_detail": json.dumps(self.detail, ensure_ascii=False, sort_keys=True)
                if self.detail else None}

    @property
    def declares_ai(self) -> bool:
        return self.provenance in AI


def unread() -> dict:
    """The provenance columns of a file whose bytes could not be read."""
    return Evidence(provenance=None).columns()


class EvidenceReader:
    """Reads evidence from a file's bytes. Picklable (for decoding workers).

    ``trust_pem``: the text of a PEM bundle of C2PA trust anchors; a manifest signed under one of
    them reads ``trusted`` instead of ``valid``. Raises I2PError when the SDK refuses the bundle.
    """

    def __init__(self, trust_pem: str | None = None):
        self.c2pa = C2paReader(trust_pem)

    @property
    def trust_pem(self) -> str | None:
        return self.c2pa.trust_pem

    @classmethod
    def from_trust_file(cls, path: str | None) -> "EvidenceReader":
        """A reader whose trust anchors come from the PEM file ``path`` (None: no anchors)."""
        return cls(read_trust_file(path))

    def read(self, data: bytes | None, path: str | None = None, exif: dict | None = None) -> Evidence:
        """Evidence from ``data`` (the whole file). ``path`` only hints the container (its
        extension) to the C2PA SDK. ``exif``: the tags decoding already parsed (decode.read_exif's
        keys), so that they are not parsed twice; None parses them here. Never raises for a bad file."""
        if data is None:
            return Evidence(provenance=None)
        try:
            found = read_headers(data, exif)
            return weigh(found, self.c2pa.read(data, path, found))
        except I2PError:
            raise
        except Exception as exc:  # a bug or an SDK surprise must not cost the image its row
            return Evidence(provenance=None, detail={"notes": [f"provenance reader failed: {one_line(exc, 200)}"]})

    def columns(self, data: bytes | None, path: str | None = None, exif: dict | None = None) -> dict:
        """The report columns of :meth:`read` (a file whose bytes could not be read: ``unread()``)."""
        return self.read(data, path, exif).columns() if data is not None else unread()


def weigh(found: Found, c2pa: dict | None) -> Evidence:
    ev = Evidence()
    detail: dict[str, Any] = {}
    kinds: set[str] = set()
    generators: list[str] = []
    matched: list[str] = []

    if c2pa is not None:
        ev.c2pa = c2pa["state"] if c2pa.get("state") in C2PA_STATES else "error"
        detail["c2pa"] = c2pa
        if ev.c2pa in ("valid", "trusted"):
            found_kinds = {source_type_kind(t) for t in c2pa["source_types"]} - {None}
            if c2pa.get("ingredient_ai"):
                found_kinds.add("ai-edited")
                matched.append("c2pa:ingredient")
            kinds |= found_kinds
            matched += [f"c2pa:{t}" for t in c2pa["source_types"] if source_type_kind(t)]
            generators += [g for a in c2pa["software_agents"] for g in [known_generator(a) or a] if g]
            if found_kinds & set(AI):
                generators += [g for g in [known_generator(c2pa.get("claim_generator"))] if g]

    xmp = found.xmp_info
    if xmp.get("digital_source_types") or xmp.get("creator_tool"):
        detail["xmp"] = xmp
        for t in xmp.get("digital_source_types", []):
            kind = source_type_kind(t)
            if kind in AI:  # unsigned XMP never makes a file "captured"
                kinds.add(kind)
                matched.append(f"xmp:DigitalSourceType={t}")
        tool = known_generator(xmp.get("creator_tool"))
        if tool:
            kinds.add("generated")
            generators.append(tool)
            matched.append("xmp:CreatorTool")

    text_gen, text_detail = generator_texts(found.texts)
    if text_detail:
        detail["text"] = text_detail
    if text_gen is not None or text_detail.get("keys"):
        if text_detail.get("keys"):
            kinds.add("generated")
            matched += [f"text:{k}" for k in text_detail["keys"]]
        if text_gen:
            generators.append(text_gen)

    exif_gen, exif_detail, camera = generator_exif(found.exif_info)
    if exif_detail:
        detail["exif"] = exif_detail
    if exif_gen is not None:
        kinds.add("generated")
        matched += exif_detail.get("matched", [])
        if exif_gen:
            generators.append(exif_gen)

    if matched:
        detail["matched"] = matched
    if found.notes:
        detail["notes"] = found.notes[:10]
    captured = "captured" in kinds and not (kinds & set(AI))
    for kind in ("generated", "ai-edited"):
        if kind in kinds:
            ev.provenance = kind
            break
    else:
        ev.provenance = "captured" if captured else "camera-exif" if camera else "none"
    ev.generator = generators[0] if generators else None
    ev.detail = detail
    return ev
