"""Training checkpoints: safetensors tensors + JSON, written after every epoch, from which a
resumed run continues to the same result as an uninterrupted one; and the training log."""

from __future__ import annotations

import json
import os

import torch

from i2pscan.errors import ConfigError, FileRefused
from i2pscan.io.files import atomic_path
from i2pscan.model import tensorfile
from i2pscan.train.loop import RunState
from i2pscan.train.sensitivity import Mask

CHECKPOINT_KIND = "checkpoint"
RESUMABLE_CHANGES = ("epochs", "max_steps", "workers")


def checkpoint_path(out: str | os.PathLike) -> str:
    return _beside(out, ".checkpoint.safetensors")


def log_path(out: str | os.PathLike) -> str:
    return _beside(out, ".log.jsonl")


def _beside(out, suffix: str) -> str:
    out = os.fspath(out)
    stem = out[: -len(".safetensors")] if out.endswith(".safetensors") else out
    return stem + suffix


def write_log(path: str, log: list[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        for entry in log:
            fh.write(json.dumps(entry) + "\n")



def save_checkpoint(path, mask: Mask, deltas, head, optimizer, run: RunState, meta: dict,
                    penalty: dict | None = None) -> None:
    tensors = {f"penalty.{n}": w.detach().cpu() for n, w in (penalty or {}).items()}
    for name, idx in mask.indices.items():
        if idx is not None:
            tensors[f"mask.{name}"] = idx
    for name, d in deltas.items():
        tensors[f"delta.{name}"] = d.values.detach()
        tensors[f"best.delta.{name}"] = run.best["deltas"][name]
    for k, v in head.state_dict().items():
        tensors[f"head.{k}"] = v
    for k, v in run.best["head"].items():
        tensors[f"best.head.{k}"] = v
    if run.best["val_logits"] is not None:
        tensors["best.val_logits"] = torch.as_tensor(run.best["val_logits"])
        tensors["best.val_labels"] = torch.as_tensor(run.best["val_labels"])
    opt_state = optimizer.state_dict()
    for pid, st in opt_state["state"].items():
        for key, value in st.items():
            tensors[f"optim.{pid}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    meta = {**meta, "epoch": run.epoch, "step": run.step, "best_auc": run.best_auc, "best_epoch": run.best_epoch,
            "log": run.log, "param_groups": opt_state["param_groups"], "strategy": mask.strategy,
            "rho": mask.rho, "q": mask.q, "normalisation": mask.normalisation, "numels": mask.numels,
            "dense": [n for n, idx in mask.indices.items() if idx is None]}
    tensorfile.write(path, CHECKPOINT_KIND, tensors, meta)


def load_checkpoint(path, config, train, val, backbone) -> dict:
    _, meta, tensors = tensorfile.read(path, (CHECKPOINT_KIND,))
    now, saved = json.loads(json.dumps(config.to_dict())), meta["config"]
    differs = [k for k in now if k not in RESUMABLE_CHANGES and now[k] != saved.get(k)]
    if differs:
        raise ConfigError(f"cannot resume {path}: option(s) {', '.join(differs)} differ from the interrupted run")
    if meta["train_fingerprint"] != train.fingerprint() or meta["val_fingerprint"] != val.fingerprint():
        raise ConfigError(f"cannot resume {path}: the training or validation data differ from the interrupted run")
    if meta["backbone_sha256"] != backbone.sha256:
        raise FileRefused(f"cannot resume {path}: it was trained on other backbone weights")
    indices = {n: tensors[f"mask.{n}"] for n in meta["numels"] if f"mask.{n}" in tensors}
    indices.update({n: None for n in meta["dense"]})
    mask = Mask(meta["strategy"], indices, meta["numels"], meta["rho"], meta["q"], meta.get("normalisation", "none"))
    return {"mask": mask, "meta": meta, "tensors": tensors}


def restore_checkpoint(state: dict, deltas, head, optimizer, run: RunState) -> None:
    meta, t = state["meta"], state["tensors"]
    for name, d in deltas.items():
        d.values.data.copy_(t[f"delta.{name}"])
    head.load_state_dict({k[len("head."):]: v for k, v in t.items() if k.startswith("head.")})
    opt_state: dict = {"state": {}, "param_groups": meta["param_groups"]}
    for key, value in t.items():
        if key.startswith("optim."):
            _, pid, field_name = key.split(".", 2)
            opt_state["state"].setdefault(int(pid), {})[field_name] = value
    optimizer.load_state_dict(opt_state)
    run.epoch, run.step = meta["epoch"], meta["step"]
    run.best_auc, run.best_epoch, run.log = meta["best_auc"], meta["best_epoch"], meta["log"]
    run.best = {
        "deltas": {n: t[f"best.delta.{n}"] for n in deltas},
        "head": {k[len("best.head."):]: v for k, v in t.items() if k.startswith("best.head.")},
        "val_logits": t["best.val_logits"].numpy() if "best.val_logits" in t else None,
        "val_labels": t["best.val_labels"].numpy() if "best.val_labels" in t else None,
    }
