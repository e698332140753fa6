"""Provenance evidence read from a file's own bytes, offline: C2PA, IPTC/XMP, generator metadata.

The only module that imports c2pa. What it reads, and how it is weighed (DESIGN §1.5):

- C2PA manifests, through c2pa-python (the Content Authenticity Initiative's bindings) with every
  network feature off: no remote manifest fetch, no OCSP, no network host allowed. The validation
  state is reported as the SDK gives it (``valid``, ``trusted``, ``invalid``); a manifest the SDK
  refuses is ``error`` with its message. Only a manifest that validates counts toward the verdict.
- IPTC Digital Source Type and ``xmp:CreatorTool`` in XMP, parsed with defusedxml (no DTD, so no
  entity bombs and no external entities).
- Generator metadata: PNG text chunks (AUTOMATIC1111/Forge ``parameters``, ComfyUI
  ``prompt``/``workflow``, InvokeAI, NovelAI, Fooocus, SwarmUI, ...), the same in EXIF
  (UserComment; ComfyUI writes ``workflow:``/``prompt:`` into Make/Model of its WebP files), and a
  Software/CreatorTool naming a known generator. The table lives in ``data/generators.json``.
- Camera EXIF (Make, Model, DateTimeOriginal, lens): weak and forgeable, reported, never a verdict.

Everything is bounded: text chunks are decompressed up to a cap, XMP packets and C2PA manifest
stores above a size limit are refused with a note, and nothing here raises for a bad file.
"""

from __future__ import annotations

import io
import json
import os
import re
import struct
import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

from i2pscan.errors import I2PError, one_line

PROVENANCE = ("generated", "ai-edited", "captured", "camera-exif", "none")
AI = ("generated", "ai-edited")
C2PA_STATES = ("valid", "trusted", "invalid", "error")
# picked up in folders by --metadata-only besides the decodable images: containers C2PA and XMP live in
METADATA_EXTENSIONS = ("dng", "heic", "heif", "avif", "jxl", "svg")

MAX_TEXT_BYTES = 4 << 20  # one text chunk, decompressed
MAX_TOTAL_TEXT_BYTES = 16 << 20  # all text chunks of a file together
MAX_XMP_BYTES = 4 << 20
MAX_MANIFEST_BYTES = 64 << 20  # a C2PA manifest store larger than this is not handed to the SDK
MAX_CHUNKS = 100_000  # PNG chunks / JPEG segments / RIFF chunks walked per file (a hostile file may hold millions)
MAX_LIST = 50  # status codes, source types... kept in the detail
PROMPT_CHARS = 2048
SHORT_CHARS = 256

# Never touch the network: these c2pa-rs settings switch off every fetch the SDK can make.
_OFFLINE_SETTINGS = {
    "core": {"allowed_network_hosts": [], "max_decompressed_manifest_size_in_mb": MAX_MANIFEST_BYTES >> 20},
    "verify": {"remote_manifest_fetch": False, "ocsp_fetch": False, "verify_trust": True},
}


@lru_cache(maxsize=1)
def table() -> dict:
    """The known-generator table (``i2pscan/data/generators.json``), compiled once."""
    raw = json.loads(resources.files("i2pscan").joinpath("data/generators.json").read_text("utf-8"))
    kinds = {}
    for kind, names in raw["source_types"].items():
        if not kind.startswith("_"):
            kinds.update({n: kind for n in names})
    return {
        "source_types": kinds,
        "text_keys": {e["key"]: {**e, "refine": [(re.compile(r["pattern"], re.I), r["generator"])
                                               for r in e.get("refine", [])],
                                 "requires": re.compile(e["requires"]) if e.get("requires") else None}
                      for e in raw["text_keys"]},
        "software": [(re.compile(e["pattern"], re.I), e["generator"]) for e in raw["software"]],
        "markers": tuple(raw["parameters_markers"]),
        "comfy_prefixes": tuple(raw["comfyui_exif_prefixes"]),
    }


def known_generator(text: str | None) -> str | None:
    """The generator a Software/CreatorTool/claim-generator string names, per the table, or None."""
    if not text:
        return None
    text = text[:1024]  # a tool name is short; a hostile multi-megabyte "Software" must not cost time
    for pattern, name in table()["software"]:
        if pattern.search(text):
            return name
    return None


def source_type_kind(uri: str) -> str | None:
    """``generated``, ``ai-edited`` or ``captured`` for an IPTC digital source type URI (or bare name)."""
    return table()["source_types"].get(uri.rstrip("/").rsplit("/", 1)[-1])


# -- the result ----------------------------------------------------------------------------------


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


# -- the reader ----------------------------------------------------------------------------------


class EvidenceReader:
    """Reads evidence from a file's bytes. Picklable (for decoding workers): the C2PA context is
    built lazily in each process.

    ``trust_pem``: the text of a PEM bundle of C2PA trust anchors; a manifest signed under one of
    them reads ``trusted`` instead of ``valid``. Raises I2PError when the SDK refuses the bundle.
    """

    def __init__(self, trust_pem: str | None = None):
        self.trust_pem = trust_pem
        self._context = None
        self._pid = None
        if trust_pem is not None:
            self._c2pa_context()  # refuse a bad bundle now, before any work

    @classmethod
    def from_trust_file(cls, path: str | None) -> "EvidenceReader":
        """A reader whose trust anchors come from the PEM file ``path`` (None: no anchors)."""
        if path is None:
            return cls()
        try:
            with open(path, "r", encoding="ascii", errors="replace") as fh:
                text = fh.read(16 << 20)
        except OSError as exc:
            raise I2PError(f"--c2pa-trust {path}: {exc.strerror or exc}") from exc
        if "-----BEGIN CERTIFICATE-----" not in text:
            raise I2PError(f"--c2pa-trust {path}: no PEM certificate in it (expected -----BEGIN CERTIFICATE-----)")
        from cryptography import x509  # a c2pa-python dependency; the SDK itself accepts broken certificates silently

        try:
            x509.load_pem_x509_certificates(text.encode("ascii", "replace"))
        except ValueError as exc:
            raise I2PError(f"--c2pa-trust {path}: not a readable PEM certificate bundle ({one_line(exc, 120)})") from exc
        return cls(text)

    def __getstate__(self):
        return {"trust_pem": self.trust_pem}

    def __setstate__(self, state):
        self.trust_pem, self._context, self._pid = state["trust_pem"], None, None

    def _c2pa_context(self):
        if self._context is None or self._pid != os.getpid():
            import c2pa

            settings = json.loads(json.dumps(_OFFLINE_SETTINGS))
            if self.trust_pem is not None:
                settings["trust"] = {"trust_anchors": self.trust_pem}
            try:
                self._context = c2pa.Context.from_dict(settings)
            except Exception as exc:
                raise I2PError(f"the C2PA SDK refused the trust anchors: {one_line(exc, 200)}") from exc
            self._pid = os.getpid()
        return self._context

    def read(self, data: bytes | None, path: str | None = None, exif: dict | None = None) -> Evidence:
        """Evidence from ``data`` (the whole file). ``path`` only hints the container (its
        extension) to the C2PA SDK. ``exif``: the tags decoding already parsed (decode.read_exif's
        keys), so that they are not parsed twice; None parses them here. Never raises for a bad file."""
        if data is None:
            return Evidence(provenance=None)
        try:
            return self._read(data, path, exif)
        except I2PError:
            raise
        except Exception as exc:  # a bug or an SDK surprise must not cost the image its row
            return Evidence(provenance=None, detail={"notes": [f"provenance reader failed: {one_line(exc, 200)}"]})

    def columns(self, data: bytes | None, path: str | None = None, exif: dict | None = None) -> dict:
        """The report columns of :meth:`read` (a file whose bytes could not be read: ``unread()``)."""
        return self.read(data, path, exif).columns() if data is not None else unread()

    def _read(self, data: bytes, path: str | None, exif: dict | None) -> Evidence:
        found = read_headers(data, exif)
        return _weigh(found, self._read_c2pa(data, path, found))

    def _read_c2pa(self, data: bytes, path: str | None, found: "_Found") -> dict | None:
        if found.manifest_bytes > MAX_MANIFEST_BYTES:
            return {"state": "error", "error": f"manifest store too large ({found.manifest_bytes:,} bytes, "
                                                f"limit {MAX_MANIFEST_BYTES:,})"}
        if found.complete and not found.manifest_bytes:
            return None  # a PNG/JPEG/WebP read to its end (or image data) keeps its manifest in caBX/APP11/C2PA
        if not found.complete and not _may_hold_manifest(data):
            return None
        import c2pa

        hint = _format_hint(path)
        try:
            reader = c2pa.Reader.try_create(hint, io.BytesIO(data), None, self._c2pa_context())
        except I2PError:
            raise
        except Exception as exc:
            text = one_line(exc, 300)
            if "NotSupported" in text or "type is unsupported" in text:
                return None  # a container the SDK does not read: no manifest to report
            return {"state": "error", "error": text.split(": ", 1)[1] if text.startswith("_C2pa") else text}
        if reader is None:
            return None
        with reader:
            try:
                store = json.loads(reader.json())
                state = (reader.get_validation_state() or "").lower() or None
            except Exception as exc:
                return {"state": "error", "error": one_line(exc, 300)}
        return _c2pa_summary(store, state)


def _may_hold_manifest(data: bytes) -> bool:
    """False when the bytes cannot hold an embedded C2PA manifest store: every store is a JUMBF
    superbox (box type ``jumb``) labelled ``c2pa``. Most files have neither, and the search costs
    far less than asking the SDK (which would report no manifest for them)."""
    return data.find(b"jumb") >= 0 or data.find(b"c2pa") >= 0


def read_headers(data: bytes, exif: dict | None = None) -> "_Found":
    """Everything but C2PA: container metadata (PNG text, JPEG/WebP segments), XMP, EXIF
    (``exif``: tags decoding already parsed, else parsed here). Never raises."""
    found = _Found()
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


def _format_hint(path: str | None) -> str | None:
    if not path:
        return None
    import c2pa

    ext = os.path.splitext(path)[1][1:].lower()
    return ext if ext and ext in _supported_types(c2pa) else None


_SUPPORTED: set[str] | None = None


def _supported_types(c2pa) -> set[str]:
    global _SUPPORTED
    if _SUPPORTED is None:
        _SUPPORTED = set(c2pa.Reader.get_supported_mime_types())
    return _SUPPORTED


def _c2pa_summary(store: dict, state: str | None) -> dict:
    manifests = store.get("manifests") or {}
    active = manifests.get(store.get("active_manifest") or "", {})
    out: dict[str, Any] = {"state": state,
                           "codes": [s.get("code") for s in store.get("validation_status") or []
                                     if isinstance(s, dict) and s.get("code")][:MAX_LIST]}
    out["claim_generator"] = _short(active.get("claim_generator") or " ".join(
        str(i["name"]) for i in active.get("claim_generator_info") or [] if isinstance(i, dict) and i.get("name"))
        or None)
    sig = active.get("signature_info") or {}
    out["signer"] = {k: _short(sig.get(k)) for k in ("issuer", "common_name", "time") if sig.get(k)}
    types, agents = _actions(active)
    out["source_types"] = types[:MAX_LIST]
    out["software_agents"] = agents[:MAX_LIST]
    ingredient_types = []
    for ing in active.get("ingredients") or []:
        label = ing.get("active_manifest") if isinstance(ing, dict) else None
        if label and label in manifests:
            ingredient_types += _actions(manifests[label])[0]
    out["ingredient_source_types"] = sorted(set(ingredient_types))[:MAX_LIST]
    out["ingredient_ai"] = any(source_type_kind(t) in AI for t in ingredient_types)
    return out


def _actions(manifest: dict) -> tuple[list[str], list[str]]:
    """(digital source types, software agents of AI actions) in a manifest's c2pa.actions assertions."""
    types, agents = [], []
    for assertion in manifest.get("assertions") or []:
        if not str(assertion.get("label", "")).startswith("c2pa.actions"):
            continue
        for action in (assertion.get("data") or {}).get("actions") or []:
            dst = action.get("digitalSourceType") if isinstance(action, dict) else None
            if isinstance(dst, str):
                name = dst.rstrip("/").rsplit("/", 1)[-1]
                types.append(name)
                agent = action.get("softwareAgent")
                agent = agent.get("name") if isinstance(agent, dict) else agent
                if isinstance(agent, str) and source_type_kind(name) in AI:
                    agents.append(_short(agent))
    return types, agents


# -- containers ----------------------------------------------------------------------------------


@dataclass
class _Found:
    texts: dict[str, str] = field(default_factory=dict)  # PNG text chunks (and JPEG comments)
    exif: list[bytes] = field(default_factory=list)
    xmp: list[bytes] = field(default_factory=list)
    manifest_bytes: int = 0
    complete: bool = False  # a PNG, JPEG or WebP whose metadata places were all walked: nothing elsewhere
    notes: list[str] = field(default_factory=list)
    xmp_info: dict = field(default_factory=dict)
    exif_info: dict = field(default_factory=dict)
    text_budget: int = MAX_TOTAL_TEXT_BYTES


def _scan_container(data: bytes, found: _Found) -> None:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        _png(data, found)
    elif data.startswith(b"\xff\xd8"):
        _jpeg(data, found)
    elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        _webp(data, found)
    elif data[:4] in (b"II*\x00", b"MM\x00*"):
        found.exif.append(data)  # a TIFF (or DNG) is one EXIF structure


def _png(data: bytes, found: _Found) -> None:
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


def _png_text(kind: bytes, body: bytes, found: _Found) -> tuple[str, str] | None:
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


def _inflate(raw: bytes, name: str, found: _Found) -> bytes | None:
    limit = min(MAX_TEXT_BYTES, max(found.text_budget, 0))
    try:
        inflater = zlib.decompressobj()
        out = inflater.decompress(raw, limit)
    except zlib.error:
        found.notes.append(f"png text {_short(name, 40)}: corrupt compressed text")
        return None
    if inflater.unconsumed_tail:
        found.notes.append(f"png text {_short(name, 40)}: longer than {limit:,} bytes, cut")
    return out


_XMP_SIG = b"http://ns.adobe.com/xap/1.0/\x00"


def _jpeg(data: bytes, found: _Found) -> None:
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


def _webp(data: bytes, found: _Found) -> None:
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

def _find_xmp_packet(data: bytes, found: _Found) -> bytes | None:
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


def _read_xmp(packet: bytes, found: _Found) -> None:
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
    found.xmp_info["digital_source_types"] = [_short(t.rstrip("/").rsplit("/", 1)[-1]) for t in types][:MAX_LIST]
    if tools:
        found.xmp_info["creator_tool"] = _short(tools[0])


# -- EXIF ----------------------------------------------------------------------------------------


def _read_exif(blob: bytes, found: _Found) -> None:
    from i2pscan.io.decode import read_exif

    _add_exif(read_exif(blob), found)


def _add_exif(tags: dict, found: _Found) -> None:
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


# -- weighing ------------------------------------------------------------------------------------


def _weigh(found: _Found, c2pa: dict | None) -> Evidence:
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

    text_gen, text_detail = _generator_texts(found.texts)
    if text_detail:
        detail["text"] = text_detail
    if text_gen is not None or text_detail.get("keys"):
        if text_detail.get("keys"):
            kinds.add("generated")
            matched += [f"text:{k}" for k in text_detail["keys"]]
        if text_gen:
            generators.append(text_gen)

    exif_gen, exif_detail, camera = _generator_exif(found.exif_info)
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


def _generator_texts(texts: dict[str, str]) -> tuple[str | None, dict]:
    """(generator, detail) from PNG text chunks and JPEG comments."""
    t = table()
    keys, generator, detail = [], None, {}
    if texts:
        detail["chunks"] = sorted(texts)[:32]
    for key, value in texts.items():
        entry = t["text_keys"].get(key)
        if key == "jpeg:comment" and sum(m in value for m in t["markers"]) >= 2:
            entry = t["text_keys"]["parameters"]
        if entry is None:
            if key in ("Software", "Source"):
                name = known_generator(value)
                if name:
                    keys.append(key)
                    generator = generator or name
                    detail.setdefault("software", _short(value))
            continue
        if entry.get("requires") is not None and not entry["requires"].search(value[:65536]):
            continue
        parsed = None
        if entry.get("json"):
            try:
                parsed = json.loads(value)
            except ValueError:
                continue
            if not isinstance(parsed, dict):
                continue
        keys.append(key)
        name = entry.get("generator")
        for pattern, refined in entry["refine"]:
            if pattern.search(value[:65536]):
                name = refined
                break
        generator = generator or name
        if entry["generator"] == "AUTOMATIC1111" or key == "jpeg:comment":
            detail.update(_a1111_detail(value))
        elif entry["generator"] == "ComfyUI" and key == "prompt" and parsed is not None:
            detail.update(_comfy_detail(parsed))
    if keys:
        detail["keys"] = keys
    return generator, detail


def _a1111_detail(text: str) -> dict:
    head = re.split(r"\nNegative prompt:|\nSteps: |^Steps: ", text, maxsplit=1)[0]
    out = {"prompt": head.strip()[:PROMPT_CHARS]}
    model = re.search(r"(?:^|, )Model: ([^,\n]+)", text)
    if model:
        out["model"] = _short(model.group(1).strip())
    return out


def _comfy_detail(prompt: dict) -> dict:
    texts, models = [], []
    for node in prompt.values():
        if not isinstance(node, dict):
            continue
        inputs = node.get("inputs") if isinstance(node.get("inputs"), dict) else {}
        if "CLIPTextEncode" in str(node.get("class_type", "")):
            texts += [v for k, v in inputs.items() if k.startswith("text") and isinstance(v, str) and v.strip()]
        for k in ("ckpt_name", "unet_name", "model_name"):
            if isinstance(inputs.get(k), str):
                models.append(_short(inputs[k]))
    out = {"nodes": len(prompt)}
    if texts:
        out["prompt"] = " | ".join(texts)[:PROMPT_CHARS]
    if models:
        out["model"] = models[0]
    return out


_CAMERA_TAGS = ("Make", "Model", "DateTimeOriginal", "LensModel")


def _generator_exif(info: dict) -> tuple[str | None, dict, bool]:
    """(generator or "" when generator metadata names no tool, or None; detail; camera EXIF present)."""
    if not info:
        return None, {}, False
    t = table()
    detail: dict[str, Any] = {}
    matched, generator = [], None
    comfy = [k for k in ("Make", "Model", "ImageDescription") if info.get(k, "").startswith(t["comfy_prefixes"])]
    if comfy:
        generator = "ComfyUI"
        matched += [f"exif:{k}" for k in comfy]
    comment = info.get("UserComment")
    if comment:
        if sum(m in comment for m in t["markers"]) >= 2:
            name = "AUTOMATIC1111"
            for pattern, refined in t["text_keys"]["parameters"]["refine"]:
                if pattern.search(comment[:65536]):
                    name = refined
                    break
            generator = generator or name
            matched.append("exif:UserComment")
            detail.update(_a1111_detail(comment))
        elif comment.lstrip().startswith("{") and ('"class_type"' in comment or '"nodes"' in comment):
            generator = generator or "ComfyUI"
            matched.append("exif:UserComment")
    for k in ("Software", "Artist", "ImageDescription"):
        name = known_generator(info.get(k)) if k not in comfy else None
        if name:
            generator = generator or name
            matched.append(f"exif:{k}")
    for k in ("Software", "Make", "Model", "DateTimeOriginal", "LensModel"):
        if k in info and k not in comfy:
            detail[k.lower()] = _short(info[k])
    camera = any(k in info and k not in comfy for k in ("Make", "Model"))
    if matched:
        detail["matched"] = matched
    return generator if matched else None, detail, camera


def _short(value: Any, limit: int = SHORT_CHARS) -> Any:
    if isinstance(value, str) and len(value) > limit:
        return value[:limit] + "…"
    return value
