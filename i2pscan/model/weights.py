"""Backbone weights: what a backbone name means (its config, its usual weights), fetching and caching
them through open_clip's hub, working offline, and the hashes that identify them.

Network access happens only in :func:`fetch_weights`, and only when the weights are not cached:
offline, or with the hub unreachable, it fails within seconds naming the file to copy and
``--pretrained PATH``.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from importlib import resources
from pathlib import Path

import open_clip
import torch

from i2pscan.errors import WeightsUnavailable, one_line

DEFAULT_BACKBONE = "ViT-L-14"
DEFAULT_PRETRAINED = "openai"
TINY_BACKBONES = ("i2p-tiny", "i2p-tiny-deep")


def model_config(name: str) -> dict | None:
    """open_clip's model config for ``name``; the tiny backbones' come from i2pscan's own JSON files,
    read here rather than registered in open_clip's process-wide config list."""
    if name in TINY_BACKBONES:
        return json.loads((resources.files("i2pscan.weights") / f"{name}.json").read_text("utf-8"))
    return open_clip.get_model_config(name)


def tiny_weights_path(name: str) -> Path:
    """The shipped safetensors file of a tiny backbone."""
    with resources.as_file(resources.files("i2pscan.weights") / f"{name}.safetensors") as path:
        return Path(path)


def default_pretrained(name: str) -> str:
    """The weights a backbone name gets when ``--pretrained`` is not given."""
    if name in TINY_BACKBONES:
        return str(tiny_weights_path(name))
    tags = open_clip.list_pretrained_tags_by_model(name)
    if DEFAULT_PRETRAINED in tags:
        return DEFAULT_PRETRAINED
    if tags:
        return tags[0]
    raise WeightsUnavailable(f"backbone {name!r} has no known pretrained weights", "pass `pretrained` PATH")



def fetch_weights(name: str, tag: str) -> str:
    """The local file of an open_clip pretrained tag: from the cache, else downloaded once (with
    progress) and cached. Offline, or with the hub unreachable, raises I2PError within seconds
    naming where the file comes from and ``--pretrained PATH``."""
    cfg = open_clip.get_pretrained_cfg(name, tag)
    if "file" in cfg:
        return cfg["file"]
    hub, url = cfg.get("hf_hub", ""), cfg.get("url", "")
    cache_dir = _hf_cache_dir()
    if hub:  # as open_clip names the file: a safetensors twin first
        repo, filename = os.path.split(hub)
        filename = filename or "open_clip_pytorch_model.bin"
        names = [filename]
        if filename == "open_clip_pytorch_model.bin":
            names.insert(0, "open_clip_model.safetensors")
        elif filename.endswith((".bin", ".pth")):
            names.insert(0, filename[:-4] + ".safetensors")
        from huggingface_hub import try_to_load_from_cache

        for n in names:
            cached = try_to_load_from_cache(repo, n, cache_dir=cache_dir)
            if isinstance(cached, str) and os.path.isfile(cached):
                return cached
        where, host = f"https://huggingface.co/{repo}", "huggingface.co"
    else:
        cached = os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(url))
        if os.path.isfile(cached):
            return cached
        from urllib.parse import urlparse

        where, host = url, urlparse(url).hostname or ""
    hint = (f"the {name} weights {tag!r} are not cached here and {host} cannot be reached; download them "
            f"({where}) on a machine with internet and pass --pretrained PATH to the file, or run once online "
            f"(open_clip caches them)")
    if _offline() or not _reachable(host):
        raise WeightsUnavailable(hint)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            path = open_clip.download_pretrained(cfg, cache_dir=cache_dir if hub else None)
    except Exception as exc:
        raise WeightsUnavailable(f"{hint} ({one_line(exc, 120)})") from exc
    if not path or not os.path.isfile(path):
        raise WeightsUnavailable(hint)
    return path


def _hf_cache_dir() -> str:
    """huggingface_hub's cache folder, read from the environment now (not at its import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or
                                                    os.path.expanduser("~/.cache"), "huggingface")
    return os.path.join(home, "hub")


def _offline() -> bool:
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "I2PSCAN_OFFLINE"))


def _reachable(host: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``host``:443 opens within ``timeout`` seconds (DNS included).
    Behind a proxy the proxy decides, so this answers yes and the download says what failed."""
    if not host:
        return False
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    import socket
    import threading

    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def cache_dir() -> Path:
    """Where i2pscan keeps small caches: $XDG_CACHE_HOME/i2pscan (default ~/.cache/i2pscan)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")) / "i2pscan"


def cached_weights_sha256(path: str, name: str, visual: torch.nn.Module) -> str:
    """weights_sha256(visual), remembered by (file path, size, mtime, model name) so that a
    second run with the same 1.2 GB file does not hash it again. A cache that cannot be read or
    written is ignored."""
    st = os.stat(path)
    key = json.dumps([os.path.abspath(path), st.st_size, st.st_mtime_ns, name])
    store = cache_dir() / "backbone-sha256.json"
    try:
        cache = json.loads(store.read_text())
        if not isinstance(cache, dict):
            cache = {}
    except (OSError, ValueError):
        cache = {}
    hit = cache.get(key)
    if isinstance(hit, str) and len(hit) == 64:
        return hit
    digest = weights_sha256(visual)
    cache = {k: v for k, v in list(cache.items())[-63:]}  # keep it small
    cache[key] = digest
    try:
        store.parent.mkdir(parents=True, exist_ok=True)
        tmp = store.with_name(f".{store.name}.{os.getpid()}")
        tmp.write_text(json.dumps(cache))
        os.replace(tmp, store)
    except OSError:
        pass
    return digest


def recorded_weights(identity: dict, override: str | None = None) -> str:
    """Where to find the weights a calibration or detector file records (its ``backbone``
    identity): ``override`` if given, the shipped file of a tiny backbone, the open_clip tag, or
    the local file it was made from if that file is still there. Raises I2PError otherwise."""
    if override:
        return override
    name, tag = identity["name"], identity.get("pretrained")
    if name in TINY_BACKBONES and tag == tiny_weights_path(name).name:
        return str(tiny_weights_path(name))
    if tag and open_clip.get_pretrained_cfg(name, tag):
        return tag
    local = identity.get("pretrained_path")
    if local and os.path.isfile(local):
        return local
    if tag is None:
        raise WeightsUnavailable(f"the {name} weights were a random initialisation", "pass `pretrained` PATH to a weights file")
    raise WeightsUnavailable(f"the {name} weights were a local file ({tag}) that is not here; "
                             f"pass `pretrained` PATH to that file")


def weights_sha256(module: torch.nn.Module) -> str:
    """sha256 over a module's state dict: names, dtypes, shapes and bytes, in name order.

    The same weights give the same hash whether they came from .safetensors, .bin or a cache.
    """
    digest = hashlib.sha256()
    state = module.state_dict()
    for key in sorted(state):
        tensor = state[key].detach().to("cpu").contiguous()
        digest.update(json.dumps([key, str(tensor.dtype), list(tensor.shape)]).encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()
