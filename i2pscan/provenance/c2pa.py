"""C2PA manifests, read offline through c2pa-python (the Content Authenticity Initiative's
bindings): the only module that imports c2pa.

Every network feature of the SDK is off: no remote manifest fetch, no OCSP, no network host
allowed. The validation state is the SDK's, named so that no one mistakes one for another:
``trusted`` (the signer's chain ends in a ``--c2pa-trust`` anchor), ``valid-untrusted`` (signature
and hashes hold, the signer is on no trust list given: anyone can make one with a public test
key), ``invalid`` (e.g. the image changed after signing), and ``error`` (a manifest the SDK
refuses, with its message).
"""

from __future__ import annotations

import io
import json
import os
from typing import Any

from i2pscan.errors import I2PError, InputError, one_line
from i2pscan.provenance.containers import MAX_LIST, Found, may_hold_manifest, short
from i2pscan.provenance.generators import AI, source_type_kind

C2PA_STATES = ("trusted", "valid-untrusted", "invalid", "error")
VALID = ("trusted", "valid-untrusted", "valid")  # "valid": what reports before 0.2 called valid-untrusted
MAX_MANIFEST_BYTES = 64 << 20  # a C2PA manifest store larger than this is not handed to the SDK

# Never touch the network: these c2pa-rs settings switch off every fetch the SDK can make.
_OFFLINE_SETTINGS = {
    "core": {"allowed_network_hosts": [], "max_decompressed_manifest_size_in_mb": MAX_MANIFEST_BYTES >> 20},
    "verify": {"remote_manifest_fetch": False, "ocsp_fetch": False, "verify_trust": True},
}



class C2paReader:
    """Reads the C2PA manifest store of a file's bytes. Picklable (for decoding workers): the SDK
    context is built lazily in each process.

    ``trust_pem``: the text of a PEM bundle of C2PA trust anchors; a manifest signed under one of
    them reads ``trusted`` instead of ``valid``. Raises I2PError when the SDK refuses the bundle.
    """

    def __init__(self, trust_pem: str | None = None):
        self.trust_pem = trust_pem
        self._context = None
        self._pid = None
        if trust_pem is not None:
            self._c2pa_context()  # refuse a bad bundle now, before any work

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
                raise InputError(f"the C2PA SDK refused the trust anchors: {one_line(exc, 200)}") from exc
            self._pid = os.getpid()
        return self._context

    def read(self, data: bytes, path: str | None, found: Found) -> dict | None:
        """A summary of the manifest store in ``data`` (state, signer, actions, ingredients), or None
        when it holds none. ``found``: what the container walk saw (where a store may be)."""
        if found.manifest_bytes > MAX_MANIFEST_BYTES:
            return {"state": "error", "error": f"manifest store too large ({found.manifest_bytes:,} bytes, "
                                                f"limit {MAX_MANIFEST_BYTES:,})"}
        if found.complete and not found.manifest_bytes:
            return None  # a PNG/JPEG/WebP read to its end (or image data) keeps its manifest in caBX/APP11/C2PA
        if not found.complete and not may_hold_manifest(data):
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


def read_trust_file(path: str | None) -> str | None:
    """The text of a PEM bundle of trust anchors (None: none). Raises I2PError for a file that
    cannot be read or holds no readable certificate."""
    if path is None:
        return None
    try:
        with open(path, "r", encoding="ascii", errors="replace") as fh:
            text = fh.read(16 << 20)
    except OSError as exc:
        raise InputError(f"`c2pa_trust` {path}: {exc.strerror or exc}") from exc
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise InputError(f"`c2pa_trust` {path}: no PEM certificate in it (expected -----BEGIN CERTIFICATE-----)")
    from cryptography import x509  # a c2pa-python dependency; the SDK itself accepts broken certificates silently

    try:
        x509.load_pem_x509_certificates(text.encode("ascii", "replace"))
    except ValueError as exc:
        raise InputError(f"`c2pa_trust` {path}: not a readable PEM certificate bundle ({one_line(exc, 120)})") from exc
    return text


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
    out: dict[str, Any] = {"state": "valid-untrusted" if state == "valid" else state,
                           "codes": [s.get("code") for s in store.get("validation_status") or []
                                     if isinstance(s, dict) and s.get("code")][:MAX_LIST]}
    out["claim_generator"] = short(active.get("claim_generator") or " ".join(
        str(i["name"]) for i in active.get("claim_generator_info") or [] if isinstance(i, dict) and i.get("name"))
        or None)
    sig = active.get("signature_info") or {}
    out["signer"] = {k: short(sig.get(k)) for k in ("issuer", "common_name", "time") if sig.get(k)}
    types, agents = _actions(active)
    out["source_types"] = types[:MAX_LIST]
    out["software_agents"] = agents[:MAX_LIST]
    ingredients = [_ingredient(ing, manifests, 0, set()) for ing in (active.get("ingredients") or [])[:MAX_LIST]
                   if isinstance(ing, dict)]
    ingredient_types = [t for i in ingredients for t in i["source_types"]]
    out["ingredient_source_types"] = sorted(set(ingredient_types))[:MAX_LIST]
    out["ingredient_agents"] = list(dict.fromkeys(a for i in ingredients for a in i["agents"]))[:MAX_LIST]
    kinds = [{source_type_kind(t) for t in i["source_types"]} for i in ingredients]
    out["ingredient_ai"] = any(k & set(AI) for k in kinds)
    # every ingredient generated (a text-to-image made, then edited): the file is generated; some: AI-edited
    out["ingredient_kind"] = ("generated" if kinds and all("generated" in k for k in kinds) else
                              "ai-edited" if out["ingredient_ai"] else None)
    out["ingredients"] = [{k: i[k] for k in ("title", "source_types") if i.get(k)} for i in ingredients][:MAX_LIST]
    return out


_MAX_INGREDIENT_DEPTH = 8  # ingredients of ingredients: a hostile store may chain or loop them


def _ingredient(ing: dict, manifests: dict, depth: int, seen: set) -> dict:
    """An ingredient's title, and the source types and AI agents of its manifest and of its own
    ingredients (to ``_MAX_INGREDIENT_DEPTH``, each manifest once)."""
    out = {"title": short(ing.get("title")) if isinstance(ing.get("title"), str) else None, "source_types": [],
           "agents": []}
    label = ing.get("active_manifest")
    if not isinstance(label, str) or label not in manifests or label in seen or depth >= _MAX_INGREDIENT_DEPTH:
        return out
    seen.add(label)
    manifest = manifests[label]
    out["source_types"], out["agents"] = _actions(manifest)
    for sub in (manifest.get("ingredients") or [])[:MAX_LIST]:
        if isinstance(sub, dict):
            inner = _ingredient(sub, manifests, depth + 1, seen)
            out["source_types"] += inner["source_types"]
            out["agents"] += inner["agents"]
    return out


def _actions(manifest: dict) -> tuple[list[str], list[str]]:
    """(digital source types, software agents of AI actions) in a manifest's c2pa.actions assertions."""
    types, agents = [], []
    for assertion in manifest.get("assertions") or []:
        if not isinstance(assertion, dict) or not str(assertion.get("label", "")).startswith("c2pa.actions"):
            continue
        data = assertion.get("data") if isinstance(assertion.get("data"), dict) else {}
        for action in data.get("actions") or []:
            dst = action.get("digitalSourceType") if isinstance(action, dict) else None
            if isinstance(dst, str):
                name = dst.rstrip("/").rsplit("/", 1)[-1]
                types.append(short(name))
                agent = action.get("softwareAgent")
                agent = agent.get("name") if isinstance(agent, dict) else agent
                if isinstance(agent, str) and source_type_kind(name) in AI:
                    agents.append(short(agent))
    return types, agents
