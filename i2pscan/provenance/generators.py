"""Which generator made a file, by what it wrote: the known-generator table (data/generators.json),
IPTC digital source types, and the parsers of generator parameters (AUTOMATIC1111/Forge
``parameters``, ComfyUI ``prompt``/``workflow``, ...) in PNG text and EXIF."""

from __future__ import annotations

import json
import re
from functools import lru_cache
from importlib import resources
from typing import Any

from i2pscan.provenance.containers import short

AI = ("generated", "ai-edited")
PROMPT_CHARS = 2048


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



def generator_texts(texts: dict[str, str]) -> tuple[str | None, dict]:
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
                    detail.setdefault("software", short(value))
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
        out["model"] = short(model.group(1).strip())
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
                models.append(short(inputs[k]))
    out = {"nodes": len(prompt)}
    if texts:
        out["prompt"] = " | ".join(texts)[:PROMPT_CHARS]
    if models:
        out["model"] = models[0]
    return out


_CAMERA_TAGS = ("Make", "Model", "DateTimeOriginal", "LensModel")


def generator_exif(info: dict) -> tuple[str | None, dict, bool]:
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
            detail[k.lower()] = short(info[k])
    camera = any(k in info and k not in comfy for k in ("Make", "Model"))
    if matched:
        detail["matched"] = matched
    return generator if matched else None, detail, camera
