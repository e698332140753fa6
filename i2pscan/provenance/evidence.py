"""Provenance evidence read from a file's own bytes, offline: C2PA, IPTC/XMP, generator metadata
(DESIGN §1.5), and how it is weighed into a file's provenance, generator and C2PA columns and a
sentence saying why.

- C2PA manifests (c2pa.py). Trust is asymmetric: a manifest that validates and declares AI
  (itself or through its ingredients) makes the file ``generated`` or ``ai-edited`` whoever
  signed it, since declaring AI gains a forger nothing; a declared capture makes it ``captured``
  only when the signer is trusted (``--c2pa-trust``), since anyone holding the public C2PA test
  key can sign one. An invalid manifest's claims stay in the detail.
- IPTC Digital Source Type, AI system and tool fields in XMP (defusedxml: no DTD, so no entity
  bombs and no external entities); unsigned XMP never makes a file captured.
- Generator metadata (generators.py): PNG text chunks, EXIF (IFD0 and the Exif IFD) and XMP
  fields naming a known generator.
- Camera EXIF (Make, Model, DateTimeOriginal, lens): weak and forgeable, reported, never a verdict.

Each source is read on its own (one that fails becomes a note), everything is bounded
(containers.py), every string leaving here is valid Unicode, and nothing raises for a bad file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from i2pscan.errors import I2PError, one_line, valid_text
from i2pscan.provenance.c2pa import C2PA_STATES, VALID, C2paReader, read_trust_file
from i2pscan.provenance.containers import Found, read_headers, short
from i2pscan.provenance.generators import AI, Claim, generator_exif, generator_texts, known_generator, \
    source_type_kind, xmp_claims

__all__ = ["AI", "PROVENANCE", "Evidence", "EvidenceReader", "unread", "weigh"]

PROVENANCE = ("generated", "ai-edited", "captured", "camera-exif", "none")


@dataclass
class Evidence:
    """What one file's metadata says about its origin; ``columns()`` gives the report columns
    (and ``metadata_reason``, the sentence the row's ``reason`` starts from)."""

    provenance: str | None = "none"
    generator: str | None = None
    c2pa: str | None = None
    detail: dict = field(default_factory=dict)
    reason: str | None = None

    def columns(self) -> dict:
        detail, changed = _valid(self.detail)
        if changed:
            detail.setdefault("notes", []).append("text: lone surrogates (not valid Unicode) shown as \\uXXXX")
        return {"provenance": self.provenance, "generator": valid_text(self.generator) if self.generator else None,
                "c2pa": self.c2pa,
                "provenance_detail": json.dumps(detail, ensure_ascii=False, sort_keys=True) if detail else None,
                "metadata_reason": valid_text(self.reason) if self.reason else None}

    @property
    def declares_ai(self) -> bool:
        return self.provenance in AI


def _valid(value: Any) -> tuple[Any, bool]:
    """``value`` with every string valid Unicode (errors.valid_text), and whether any changed."""
    if isinstance(value, str):
        clean = valid_text(value)
        return clean, clean is not value
    if isinstance(value, dict):
        out, changed = {}, False
        for k, v in value.items():
            (k2, c1), (v2, c2) = _valid(k), _valid(v)
            out[k2] = v2
            changed = changed or c1 or c2
        return out, changed
    if isinstance(value, list):
        items = [_valid(v) for v in value]
        return [v for v, _ in items], any(c for _, c in items)
    return value, False


def unread() -> dict:
    """The provenance columns of a file whose bytes could not be read."""
    return Evidence(provenance=None).columns()


class EvidenceReader:
    """Reads evidence from a file's bytes. Picklable (for decoding workers).

    ``trust_pem``: the text of a PEM bundle of C2PA trust anchors; a manifest signed under one of
    them reads ``trusted`` instead of ``valid-untrusted``. Raises I2PError when the SDK refuses it.
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

    def read(self, data: bytes | None, path: str | None = None, exif: dict | None = None,
             xmp: bytes | None = None) -> Evidence:
        """Evidence from ``data`` (the whole file). ``path`` only hints the container (its
        extension) to the C2PA SDK. ``exif``: the tags decoding already parsed (decode.read_exif's
        keys), so that they are not parsed twice; None parses them here. ``xmp``: a packet the
        decoder found (HEIF/AVIF items). Never raises for a bad file: a source that fails is a note."""
        if data is None:
            return Evidence(provenance=None)
        try:
            found = read_headers(data, exif, xmp)
        except Exception as exc:  # read_headers catches per place; this is a bug's last line
            found = Found(notes=[f"metadata reader failed: {one_line(exc, 200)}"])
        try:
            manifest = self.c2pa.read(data, path, found)
        except I2PError:
            raise
        except Exception as exc:  # an SDK surprise costs the manifest, not the file's other evidence
            manifest = {"state": "error", "error": f"C2PA reader failed: {one_line(exc, 200)}"}
        return weigh(found, manifest)

    def columns(self, data: bytes | None, path: str | None = None, exif: dict | None = None,
                xmp: bytes | None = None) -> dict:
        """The report columns of :meth:`read` (a file whose bytes could not be read: ``unread()``)."""
        return self.read(data, path, exif, xmp).columns() if data is not None else unread()


def weigh(found: Found, c2pa: dict | None) -> Evidence:
    """The provenance, generator, C2PA state, detail and reason of what was found."""
    ev = Evidence()
    detail: dict[str, Any] = {}
    claims: list[Claim] = []
    notes = list(found.notes)
    camera = False
    for name, part in (("c2pa", lambda: _c2pa_claims(c2pa, detail, ev)), ("xmp", lambda: _xmp(found, detail)),
                       ("text", lambda: _texts(found, detail, notes))):
        try:
            claims += part()
        except Exception as exc:  # each source fails alone
            notes.append(f"{name}: reading failed ({one_line(exc, 160)})")
    try:
        exif_claims, exif_detail, camera = generator_exif(found.exif_info)
        claims += exif_claims
        if exif_detail:
            detail["exif"] = exif_detail
    except Exception as exc:
        notes.append(f"exif: reading failed ({one_line(exc, 160)})")
    claims.sort(key=lambda c: c.rank)
    if claims:
        detail["matched"] = [c.where for c in claims][:50]
    if notes:
        detail["notes"] = notes[:20]
    ai = [c for c in claims if c.kind in AI]
    captured = [c for c in claims if c.kind == "captured"]
    if ai:
        ev.provenance = "generated" if any(c.kind == "generated" for c in ai) else "ai-edited"
        first = next(c for c in ai if c.kind == ev.provenance)
        ev.reason = first.sentence
    elif captured:
        ev.provenance, ev.reason = "captured", captured[0].sentence
    else:
        ev.provenance = "camera-exif" if camera else "none"
        ev.reason = detail.pop("_untrusted_capture", None) or (_camera_sentence(found.exif_info) if camera else None)
    detail.pop("_untrusted_capture", None)
    ev.generator = next((c.generator for c in ai if c.generator), None)
    ev.detail = detail
    return ev


def _camera_sentence(exif: dict) -> str:
    what = " ".join(str(exif[k]) for k in ("Make", "Model") if exif.get(k))
    return f"only camera EXIF ({short(what, 60)}), which anyone can write"


def _c2pa_claims(c2pa: dict | None, detail: dict, ev: Evidence) -> list[Claim]:
    if c2pa is None:
        return []
    state = c2pa.get("state")
    ev.c2pa = "valid-untrusted" if state == "valid" else state if state in C2PA_STATES else "error"
    detail["c2pa"] = c2pa
    if ev.c2pa not in VALID:
        return []
    trusted = ev.c2pa == "trusted"
    signer = (c2pa.get("signer") or {}).get("common_name") or (c2pa.get("signer") or {}).get("issuer")
    by = f"signed by {signer}" if signer else "signed"
    by += "" if trusted else " (not a trusted signer)"
    agents = [known_generator(a) or a for a in c2pa.get("software_agents") or []]
    tool = next((a for a in agents if a), None)
    claims = []
    own = [t for t in c2pa.get("source_types") or [] if source_type_kind(t)]
    ai_own = [t for t in own if source_type_kind(t) in AI]
    if ai_own:
        kind = "generated" if any(source_type_kind(t) == "generated" for t in ai_own) else "ai-edited"
        tool = tool or known_generator(c2pa.get("claim_generator"))
        claims.append(Claim(kind, tool, f"c2pa:{ai_own[0]}", f"C2PA manifest {by} declares {ai_own[0]}"
                                                             + (f" ({tool})" if tool else ""), 0))
    elif c2pa.get("ingredient_kind") in AI:
        kind = c2pa["ingredient_kind"]
        agents = [known_generator(a) or a for a in c2pa.get("ingredient_agents") or []]
        tool = next((a for a in agents if a), None) or known_generator(c2pa.get("claim_generator"))
        types = [t for t in c2pa.get("ingredient_source_types") or [] if source_type_kind(t) in AI]
        claims.append(Claim(kind, tool, "c2pa:ingredient", f"C2PA manifest {by} has an ingredient declared "
                                                           f"{types[0] if types else 'AI-made'}"
                                                           + (f" ({tool})" if tool else ""), 0))
    elif any(source_type_kind(t) == "captured" for t in own):
        capture = next(t for t in own if source_type_kind(t) == "captured")
        if trusted:
            claims.append(Claim("captured", None, f"c2pa:{capture}", f"C2PA manifest {by} (trusted) declares "
                                                                     f"{capture}", 0))
        else:  # anyone can sign a capture with a public test key: it counts for nothing, and says so
            detail["_untrusted_capture"] = (f"C2PA manifest {by} declares {capture}, which counts only from a "
                                            f"trusted signer (--c2pa-trust)")
    return claims


def _xmp(found: Found, detail: dict) -> list[Claim]:
    if found.xmp_info:
        detail["xmp"] = found.xmp_info
    return xmp_claims(found.xmp_info)


def _texts(found: Found, detail: dict, notes: list[str]) -> list[Claim]:
    claims, text_detail, text_notes = generator_texts(found.texts)
    notes += text_notes
    if text_detail:
        detail["text"] = text_detail
    return claims
