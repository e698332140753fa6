"""Which generator made a file, by what it wrote: the known-generator table (data/generators.json),
IPTC digital source types, and the readers of generator metadata in PNG text, EXIF and XMP.

Each finding is a :class:`Claim`: what kind of origin it declares, the generator it names, where
it was found and a sentence saying so (the report's ``reason``). Every place is read on its own:
one that fails (a hostile JSON, a parser bug) becomes a note and costs the others nothing.

The AUTOMATIC1111 and ComfyUI readers are written here: sd-parsers (PyPI) was tried and does not
do the job on ComfyUI's own examples (no prompt found in the Flux example, and its
``PromptInfo.models`` raises TypeError there); its graph walk also copies the trail at every step
(quadratic on a hostile chain of nodes). What is needed here is small: the prompt and the model.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

from i2pscan.errors import one_line
from i2pscan.provenance.containers import short

AI = ("generated", "ai-edited")
PROMPT_CHARS = 2048
MAX_JSON_DEPTH = 64  # a workflow nests a few levels; "[" * 1_000_000 is refused before it is parsed
MAX_JSON_CHARS = 4 << 20


@dataclass
class Claim:
    """One finding: ``kind`` (generated, ai-edited, captured), the ``generator`` named (or None),
    ``where`` it was found (as matched in the detail) and ``sentence``, one sentence saying so."""

    kind: str
    generator: str | None
    where: str
    sentence: str
    rank: int = 5  # lower is stronger: a signed manifest, then IPTC types, parameters, tool names, sentences


@lru_cache(maxsize=1)
def table() -> dict:
    """The known-generator table (``i2pscan/data/generators.json``), compiled once."""
    raw = json.loads(resources.files("i2pscan").joinpath("data/generators.json").read_text("utf-8"))
    kinds = {}
    for kind, names in raw["source_types"].items():
        if not kind.startswith("_"):
            kinds.update({n: kind for n in names})

    def patterns(entries):
        return [(re.compile(e["pattern"], re.I), e["generator"], e.get("kind", "generated")) for e in entries]

    return {
        "source_types": kinds,
        "text_keys": {e["key"]: {**e, "refine": [(re.compile(r["pattern"], re.I), r["generator"])
                                               for r in e.get("refine", [])],
                                 "requires": re.compile(e["requires"]) if e.get("requires") else None}
                      for e in raw["text_keys"]},
        "software": patterns(raw["software"]),
        "free_text": patterns(raw["free_text"]),
        "markers": tuple(raw["parameters_markers"]),
        "comfy_prefixes": tuple(raw["comfyui_exif_prefixes"]),
    }


def _match(entries, text: str | None) -> tuple[str | None, str] | None:
    if not text or not isinstance(text, str):
        return None
    text = text[:1024]  # a tool name is short; a hostile multi-megabyte "Software" must not cost time
    for pattern, name, kind in entries:
        if pattern.search(text):
            return name, kind
    return None


def known_generator(text: str | None) -> str | None:
    """The generator a Software/CreatorTool/claim-generator string names, per the table, or None."""
    found = _match(table()["software"], text)
    return found[0] if found else None


def tool_claim(text: str | None) -> tuple[str | None, str] | None:
    """(generator, kind) named by a field that names a tool (Software, CreatorTool...), or None."""
    return _match(table()["software"], text)


def text_claim(text: str | None) -> tuple[str | None, str] | None:
    """(generator, kind) an unmistakable name or phrase in free text declares, or None."""
    return _match(table()["free_text"], text)


def source_type_kind(uri: str) -> str | None:
    """``generated``, ``ai-edited`` or ``captured`` for an IPTC digital source type URI (or bare name)."""
    return table()["source_types"].get(str(uri).rstrip("/").rsplit("/", 1)[-1])


def load_json(text: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` of attacker-controlled text, depth-limited: CPython's C decoder stops at the
    interpreter's recursion limit with RecursionError (at once, for ``"[" * 1_000_000``), turned
    into ValueError here, and the result is then walked without recursion and refused when it
    nests deeper than ``max_depth``, so that nothing downstream recurses on it. Raises
    ValueError for text that is too long, too deep or not JSON."""
    if len(text) > MAX_JSON_CHARS:
        raise ValueError(f"JSON of {len(text):,} characters (limit {MAX_JSON_CHARS:,})")
    try:
        value = json.loads(text)
    except RecursionError:
        raise ValueError(f"JSON nested too deep (limit {max_depth})") from None
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > max_depth:
            raise ValueError(f"JSON nested too deep (limit {max_depth})")
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values() if isinstance(v, (dict, list)))
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item if isinstance(v, (dict, list)))
    return value


# -- PNG text and JPEG comments --------------------------------------------------------------------

_FREE_TEXT_KEYS = ("Description", "Comment", "Title", "Author", "jpeg:comment", "Disclaimer", "Warning")
_TOOL_KEYS = ("Software", "Source")


def generator_texts(texts: dict[str, str]) -> tuple[list[Claim], dict, list[str]]:
    """(claims, detail, notes) from PNG text chunks and JPEG comments; each key read on its own."""
    t = table()
    claims: list[Claim] = []
    detail: dict[str, Any] = {}
    notes: list[str] = []
    if texts:
        detail["chunks"] = sorted(texts)[:32]
    keys = []
    for key, value in texts.items():
        try:
            claim = _text_key(t, key, value, detail)
        except Exception as exc:  # RecursionError included: this key's evidence is lost, not the file's
            notes.append(f"text {short(key, 40)}: {one_line(exc, 160)}")
            continue
        if claim is not None:
            keys.append(key)
            claims.append(claim)
    if keys:
        detail["keys"] = keys
    return claims, detail, notes


def _text_key(t: dict, key: str, value: str, detail: dict) -> Claim | None:
    entry = t["text_keys"].get(key)
    if key == "jpeg:comment" and sum(m in value for m in t["markers"]) >= 2:
        entry = t["text_keys"]["parameters"]
    if entry is None:
        found = tool_claim(value) if key in _TOOL_KEYS else text_claim(value) if key in _FREE_TEXT_KEYS else None
        if not found:
            return None
        detail.setdefault("software" if key in _TOOL_KEYS else "text", short(value))
        name, kind = found
        where = "JPEG comment" if key == "jpeg:comment" else f"PNG text {key}"
        return Claim(kind, name, f"text:{key}", f"{where} names {name or 'an AI generator'}: “{short(value, 80)}”", 3)
    if entry.get("requires") is not None and not entry["requires"].search(value[:65536]):
        return None
    parsed = None
    if entry.get("json"):
        try:
            parsed = load_json(value)
        except ValueError as exc:
            if not isinstance(exc, json.JSONDecodeError):
                raise  # too deep or too long: said in the notes
            return None  # a "prompt" chunk that is not a workflow is nobody's generator metadata
        if not isinstance(parsed, dict):
            return None
    name = entry.get("generator")
    for pattern, refined in entry["refine"]:
        if pattern.search(value[:65536]):
            name = refined
            break
    if entry["generator"] == "AUTOMATIC1111" or key == "jpeg:comment":
        detail.update(a1111_detail(value))
    elif entry["generator"] == "ComfyUI" and key == "prompt" and parsed is not None:
        detail.update(_comfy_detail(parsed))
    where = "JPEG comment" if key == "jpeg:comment" else f"PNG text {key}"
    return Claim("generated", name, f"text:{key}", f"{name or 'AI'} {entry.get('what', 'metadata')} in {where}", 2)


def a1111_detail(text: str) -> dict:
    """The prompt (at most 2 KB) and model of AUTOMATIC1111-style generation parameters."""
    head = re.split(r"\nNegative prompt:|\nSteps: |^Steps: ", text[:65536], maxsplit=1)[0]
    out = {"prompt": head.strip()[:PROMPT_CHARS]}
    model = re.search(r"(?:^|, )Model: ([^,\n]+)", text[:65536], re.M)
    if model:
        out["model"] = short(model.group(1).strip())
    return out


def _comfy_detail(prompt: dict) -> dict:
    texts, models = [], []
    for node in list(prompt.values())[:10_000]:
        if not isinstance(node, dict):
            continue
        inputs = node.get("inputs") if isinstance(node.get("inputs"), dict) else {}
        if "CLIPTextEncode" in str(node.get("class_type", ""))[:200]:
            texts += [v for k, v in inputs.items() if str(k).startswith("text") and isinstance(v, str) and v.strip()]
        for k in ("ckpt_name", "unet_name", "model_name"):
            if isinstance(inputs.get(k), str):
                models.append(short(inputs[k]))
    out: dict[str, Any] = {"nodes": len(prompt)}
    if texts:
        out["prompt"] = " | ".join(texts)[:PROMPT_CHARS]
    if models:
        out["model"] = models[0]
    return out


# -- EXIF ------------------------------------------------------------------------------------------

_CAMERA_TAGS = ("Make", "Model", "DateTimeOriginal", "LensModel")
_EXIF_TEXT_TAGS = ("UserComment", "ImageDescription", "Artist", "MakerNote", "XPComment", "XPTitle")


def generator_exif(info: dict) -> tuple[list[Claim], dict, bool]:
    """(claims, detail, camera EXIF present) from EXIF tags (containers.add_exif's names)."""
    if not info:
        return [], {}, False
    t = table()
    where = info.get("_where", {})
    claims: list[Claim] = []
    detail: dict[str, Any] = {}

    def place(tag: str) -> str:
        return f"EXIF {tag}" + (f" (in {where[tag].upper()})" if tag in where else "")

    comfy = [k for k in ("Make", "Model", "ImageDescription") if str(info.get(k, "")).startswith(t["comfy_prefixes"])]
    for tag in comfy:
        claims.append(Claim("generated", "ComfyUI", f"exif:{tag}", f"ComfyUI workflow in {place(tag)}", 2))
    for tag in _EXIF_TEXT_TAGS:
        value = info.get(tag)
        if not value or tag in comfy:
            continue
        if tag == "UserComment" and sum(m in value for m in t["markers"]) >= 2:
            name = "AUTOMATIC1111"
            for pattern, refined in t["text_keys"]["parameters"]["refine"]:
                if pattern.search(value[:65536]):
                    name = refined
                    break
            detail.update(a1111_detail(value))
            claims.append(Claim("generated", name, "exif:UserComment", f"{name} generation parameters in "
                                                                      f"{place(tag)}", 2))
            continue
        if tag == "UserComment" and value.lstrip().startswith("{") and ('"class_type"' in value or '"nodes"' in value):
            claims.append(Claim("generated", "ComfyUI", "exif:UserComment", f"ComfyUI workflow in {place(tag)}", 2))
            continue
        found = text_claim(value)
        if found:
            detail[tag.lower()] = short(value)
            claims.append(Claim(found[1], found[0], f"exif:{tag}", f"{place(tag)} names {found[0] or 'an AI generator'}: "
                                                                   f"“{short(value, 80)}”", 3))
    software = info.get("Software")
    found = tool_claim(software) if software and "Software" not in comfy else None
    if found:
        claims.append(Claim(found[1], found[0], "exif:Software", f"{place('Software')} names {found[0]}", 3))
    for k in ("Software",) + _CAMERA_TAGS:
        if k in info and k not in comfy:
            detail[k.lower()] = short(info[k])
    camera = any(k in info and k not in comfy for k in ("Make", "Model"))
    if claims:
        detail["matched"] = [c.where for c in claims]
    return claims, detail, camera


# -- XMP -------------------------------------------------------------------------------------------

_XMP_TEXT = {"description": "dc:description", "title": "dc:title", "creator": "dc:creator", "credit": "photoshop:Credit",
             "source": "photoshop:Source", "instructions": "photoshop:Instructions",
             "user_comment": "exif:UserComment", "image_description": "tiff:ImageDescription"}


def xmp_claims(xmp: dict) -> list[Claim]:
    """Claims of an XMP summary (containers' ``xmp_info``): IPTC digital source types and AI
    system, tool names, and unmistakable phrases. Unsigned XMP never makes a file captured."""
    claims: list[Claim] = []
    tool = None
    for key, field in (("ai_system", "Iptc4xmpExt:AISystemUsed"), ("creator_tool", "xmp:CreatorTool"),
                       ("software", "tiff:Software")):
        found = tool_claim(xmp.get(key))
        if found or (key == "ai_system" and xmp.get(key)):
            name, kind = found or (short(xmp[key], 80), "generated")
            tool = tool or name
            claims.append(Claim(kind, name, f"xmp:{field.split(':')[1]}", f"XMP {field} names {name}", 3))
    for t in xmp.get("digital_source_types", []):
        kind = source_type_kind(t)
        if kind in AI:
            claims.append(Claim(kind, tool, f"xmp:DigitalSourceType={t}", f"XMP declares {t} (IPTC digital source "
                                                                          f"type)" + (f", {tool}" if tool else ""), 1))
    for key, field in _XMP_TEXT.items():
        found = text_claim(xmp.get(key))
        if found:
            claims.append(Claim(found[1], found[0], f"xmp:{field.split(':')[1]}",
                                f"XMP {field} names {found[0] or 'an AI generator'}: “{short(xmp[key], 80)}”", 3))
    return claims
