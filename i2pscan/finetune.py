"""Sparse, sensitivity-masked fine-tuning: theta = theta0 + scatter(delta) (DESIGN §1.2).

Only the masked entries (``delta``) and the head learn; the optimiser holds state for nothing
else, so memory grows with rho, not with the model. Weight decay acts on delta, pulling theta
toward theta0. Each completed epoch leaves a checkpoint beside the output, from which
``resume=True`` continues to the same result as an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch
from scipy import optimize
from sklearn.metrics import average_precision_score, roc_auc_score
from torch import nn
from torch.nn.utils import parametrize

from i2pscan import __version__, console
from i2pscan.model import tensorfile
from i2pscan.io.files import atomic_path, remove_leftovers
from i2pscan.model.backbone import Backbone
from i2pscan.calibrate import Calibration
from i2pscan.augment import Augment, TrainTransform
from i2pscan.io.preprocess import CropTransform, Preprocess
from i2pscan.io.loader import ImageFiles, loader
from i2pscan.samples import FileSet, LabelledSample, split_stratified
from i2pscan.model.detector_file import Delta, write_detector
from i2pscan.errors import I2PError
from i2pscan.model.device import autocast
from i2pscan.features import extract
from i2pscan.model.head import DetectorHead, HeadConfig, supervised_contrastive
from i2pscan.model.inference import DEFAULT_POLICY, normalise_policies, sample_logits
from i2pscan.sensitivity import (STRATEGIES, Mask, build_mask, intrinsic_sensitivity, needs_scores, print_mask, task_saliency)
from i2pscan.model.sparse import DenseDelta, SparseDelta, attach

CHECKPOINT_KIND = "checkpoint"
_RESUMABLE_CHANGES = ("epochs", "max_steps", "workers")


@dataclass(frozen=True)
class FinetuneConfig:
    strategy: str = "i2p"
    rho: float = 0.01
    q: float = 0.5
    epochs: int = 5
    max_steps: int | None = None
    batch_size: int = 32
    accumulate: int = 1
    lr_backbone: float = 1e-4
    lr_head: float = 1e-3
    weight_decay: float = 0.05
    head_weight_decay: float = 1e-4
    warmup_steps: int = 300
    contrastive_weight: float = 0.0
    contrastive_temperature: float = 0.1
    val_split: float = 0.2
    target_fpr: float = 0.05
    sensitivity_samples: int = 256
    saliency_samples: int = 256
    sensitivity_target: str = "embedding"
    proj_dim: int | None = None
    crop_policies: tuple[str, ...] = (DEFAULT_POLICY,)  # fit a threshold for each (N:mean|max); 1:mean always
    augment: Augment = field(default_factory=Augment)
    seed: int = 0
    workers: int = 0

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise I2PError(f"--strategy must be one of {', '.join(STRATEGIES)}")
        if not 0 < self.rho <= 1 or not 0 < self.q <= 1:
            raise I2PError("--rho and --q must be in (0, 1]")
        if not 0 < self.target_fpr < 1:
            raise I2PError("--target-fpr must be in (0, 1)")
        if not 0 < self.val_split < 1:
            raise I2PError("--val-split must be in (0, 1)")
        if self.epochs < 1 or self.batch_size < 1 or self.accumulate < 1:
            raise I2PError("--epochs, --batch-size and --accumulate must be at least 1")
        if self.sensitivity_target not in ("embedding", "taps"):
            raise I2PError("--sensitivity-target must be embedding or taps")
        object.__setattr__(self, "crop_policies", normalise_policies(self.crop_policies))
        if self.warmup_steps < 1 and needs_scores(self.strategy)[1]:
            raise I2PError(f"--strategy {self.strategy} ranks weights by the task saliency of a warmed-up head: "
                           f"--warmup-steps must be at least 1 (or choose low-sensitivity or random)")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FinetuneResult:
    path: str
    meta: dict
    mask: Mask
    log: list[dict]
    validation: dict = field(default_factory=dict)  # paths, labels, logits {policy: array}, best_epoch_logits


def checkpoint_path(out: str | os.PathLike) -> str:
    return _beside(out, ".checkpoint.safetensors")


def log_path(out: str | os.PathLike) -> str:
    return _beside(out, ".log.jsonl")


def _beside(out, suffix: str) -> str:
    out = os.fspath(out)
    stem = out[: -len(".safetensors")] if out.endswith(".safetensors") else out
    return stem + suffix


def finetune(backbone: Backbone, calibration: Calibration, train: LabelledSample, out: str | os.PathLike,
             config: FinetuneConfig = FinetuneConfig(), val: LabelledSample | None = None, resume: bool = False,
             on_epoch_end: Callable[[int, dict], None] | None = None) -> FinetuneResult:
    """Train a detector on ``train`` and write it to ``out``; returns what was written.

    ``val``: validation sample; by default ``config.val_split`` of ``train`` (stratified) is held
    out. The backbone is consumed: it is truncated after L* and tuned in place.
    ``on_epoch_end(epoch, metrics)`` is called after each epoch's checkpoint is written. Raises
    I2PError for a calibration of another backbone, a checkpoint in the way (or missing with
    ``resume``), or data with no usable images.
    """
    out = os.fspath(out)
    _check_calibration(backbone, calibration)
    train, val, cal_overlap = _split(train, val, config, calibration)
    ckpt = checkpoint_path(out)
    for written in (out, ckpt, log_path(out)):  # what a run killed mid-write left
        remove_leftovers(written)
    state = None
    if resume:
        if not os.path.exists(ckpt):
            raise I2PError(f"nothing to resume: no checkpoint {ckpt}")
        state = _load_checkpoint(ckpt, config, train, val, backbone)
    elif os.path.exists(ckpt):
        raise I2PError(f"an interrupted run left {ckpt}: pass --resume to continue it, or delete it to start over")

    head = _new_head(backbone, calibration, config)
    params = backbone.tunable_parameters(calibration.last_block)
    if state is None:
        mask = _plan(backbone, head, params, train, calibration, config)
    else:
        mask = state["mask"]
        print_mask(mask)

    view, last_block = calibration.view, calibration.last_block
    backbone.truncate(last_block)
    deltas = _attach(backbone, params, mask)
    optimizer = torch.optim.AdamW([
        {"params": [d.values for d in deltas.values()], "lr": config.lr_backbone, "weight_decay": config.weight_decay},
        {"params": list(head.parameters()), "lr": config.lr_head, "weight_decay": config.head_weight_decay},
    ])
    run = _RunState()
    if state is not None:
        _restore(state, deltas, head, optimizer, run)
        console.log(f"resuming after epoch {run.epoch} of {config.epochs}")
    else:
        run.best = _snapshot(deltas, head, None)

    trainer = _Trainer(backbone, head, deltas, optimizer, train, val, view, config)
    ckpt_meta = {"train_fingerprint": train.fingerprint(), "val_fingerprint": val.fingerprint(),
                 "backbone_sha256": backbone.sha256, "config": config.to_dict()}
    for epoch in range(run.epoch, config.epochs):
        if config.max_steps is not None and run.step >= config.max_steps:
            break
        started = time.monotonic()
        train_loss = trainer.train_epoch(epoch, run)
        metrics, val_scored = trainer.validate()
        entry = {"epoch": epoch + 1, "step": run.step, "train_loss": train_loss, **metrics,
                 "seconds": round(time.monotonic() - started, 3)}
        run.log.append(entry)
        if run.best_epoch == 0 or metrics["val_auc"] > run.best_auc:  # NaN AUC: keep the first epoch
            run.best_auc, run.best_epoch = metrics["val_auc"], epoch + 1
            run.best = _snapshot(deltas, head, val_scored)
        run.epoch = epoch + 1
        _save_checkpoint(ckpt, mask, deltas, head, optimizer, run, ckpt_meta)
        _write_log(log_path(out), run.log)
        console.log("epoch {epoch}: loss {train_loss:.4f}, val AUC {val_auc:.4f}, AP {val_ap:.4f}, "
                    "acc {val_acc:.4f}".format(**entry))
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, entry)

    meta = _finish(run, deltas, head, val, calibration, backbone, mask, config, train, trainer.failures,
                   cal_overlap)
    write_detector(out, meta, head, {n: Delta(d.indices, d.values.detach()) for n, d in deltas.items()})
    _write_log(log_path(out), run.log)
    os.remove(ckpt)
    return FinetuneResult(out, meta, mask, run.log, run.validation)


# ----------------------------------------------------------------------------------------------


def plan_mask(backbone: Backbone, calibration: Calibration, train: LabelledSample,
              config: FinetuneConfig = FinetuneConfig(), val: LabelledSample | None = None) -> Mask:
    """The mask ``finetune`` would train with the same arguments (``--dry-run``): holds out the
    same validation split, warms up a head, scores the weights, prints and returns the mask.
    Writes nothing; the backbone is left as it was."""
    _check_calibration(backbone, calibration)
    train, _, _ = _split(train, val, config, calibration)
    params = backbone.tunable_parameters(calibration.last_block)
    return _plan(backbone, _new_head(backbone, calibration, config), params, train, calibration, config)


def _plan(backbone, head, params, train, calibration, config) -> Mask:
    _warm_up_head(backbone, head, train, calibration.view, config)
    mask = _choose_mask(backbone, head, params, train, calibration.view, list(calibration.critical), config)
    print_mask(mask)
    return mask


def _split(train: LabelledSample, val: LabelledSample | None, config: FinetuneConfig,
           calibration: Calibration | None = None) -> tuple[LabelledSample, LabelledSample, int]:
    """(training, validation, how many validation images the calibration also used).

    Validation never shares a file with training: the same real path (symlinks resolved) or the
    same bytes. Calibration images go to the training part of an automatic split as far as each
    group allows; any that validate anyway (or are in ``--val``) are counted and warned about.
    """
    cal_files = FileSet((calibration.sample.get("files") or []) if calibration is not None else [])
    if val is None:
        avoid = cal_files.find(train.paths) if len(cal_files) else []
        train_idx, val_idx = split_stratified(train, config.val_split, config.seed, avoid=avoid)
        train, val = train.subset(train_idx), train.subset(val_idx)
    else:
        shared = FileSet.of(val.paths).find(train.paths)
        if shared:
            example = train.paths[shared[0]]
            raise I2PError(f"{len(shared)} training image(s) are also validation images (the same file or the "
                           f"same bytes, e.g. {example}); give --val data of its own, or --split to keep only "
                           f"training images in DATA")
    _check_classes(train, "training")
    _check_classes(val, "validation")
    overlap = len(cal_files.find(val.paths)) if len(cal_files) else 0
    if overlap:
        console.warn(f"{overlap} of {len(val.items)} validation image(s) were in the calibration sample "
                     f"(they chose the critical layers): calibrate on images that do not validate")
    real = int(np.sum(val.labels == 0))
    needed = math.ceil(1 / config.target_fpr)
    if real < needed:
        console.warn(f"only {real} real validation image(s): a threshold at --target-fpr {config.target_fpr} "
                     f"needs at least {needed} to be more than a guess")
    return train, val, overlap


def _new_head(backbone: Backbone, calibration: Calibration, config: FinetuneConfig) -> DetectorHead:
    torch.manual_seed(config.seed)
    in_dim = backbone.width * (2 if calibration.view == "cls+patchmean" else 1)
    config_ = HeadConfig.for_layers(calibration.critical, calibration.importance, in_dim, config.proj_dim)
    return DetectorHead(config_).to(backbone.device)


def _check_calibration(backbone: Backbone, cal: Calibration) -> None:
    if cal.backbone["sha256"] != backbone.sha256 or cal.backbone["name"] != backbone.name:
        raise I2PError(f"the calibration was made with {cal.backbone['name']} (weights "
                       f"{cal.backbone['sha256'][:12]}…), not {backbone.name} ({backbone.sha256[:12]}…): "
                       f"calibrate again with this backbone")
    recorded = bool(cal.backbone.get("model_config", {}).get("quick_gelu", False))
    if recorded != bool(backbone.model_config.get("quick_gelu", False)):
        act = {True: "QuickGELU", False: "GELU"}
        raise I2PError(f"the calibration was made with {act[recorded]}, this backbone uses {act[not recorded]}: "
                       f"load the backbone with the calibration's activation")
    if backbone.run_blocks != backbone.num_blocks:
        raise I2PError("finetune needs an untruncated backbone")


def _check_classes(sample: LabelledSample, what: str) -> None:
    counts = np.bincount(sample.labels, minlength=2)
    if counts.min() < 1:
        raise I2PError(f"the {what} data has {counts[0]} real and {counts[1]} fake images; both are needed")


def _warm_up_head(backbone: Backbone, head: DetectorHead, train: LabelledSample, view: str,
                  config: FinetuneConfig) -> None:
    """Head-only training on frozen centre-crop features: a task loss needs a head (DESIGN §1.2 step 2)."""
    if config.warmup_steps < 1:
        return
    layers = list(head.config.layers)
    ex = extract(backbone, train.paths, layers, view, config.batch_size, config.workers, description="warm-up: features")
    if not ex.kept:
        raise I2PError("none of the training images could be decoded")
    labels = torch.as_tensor(train.labels[ex.kept], dtype=torch.float32)
    opt = torch.optim.AdamW(head.parameters(), lr=config.lr_head, weight_decay=config.head_weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    device = backbone.device
    head.train()
    batches_per_epoch = math.ceil(len(labels) / config.batch_size)
    for step in range(config.warmup_steps):
        if step % batches_per_epoch == 0:
            order = torch.randperm(len(labels), generator=generator)
        i = (step % batches_per_epoch) * config.batch_size
        idx = order[i:i + config.batch_size]
        taps = {b: ex.features[b][idx].to(device) for b in layers}
        logits, _ = head(taps)
        loss = nn.functional.binary_cross_entropy_with_logits(logits, labels[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def _choose_mask(backbone: Backbone, head: DetectorHead, params, train: LabelledSample, view: str,
                 layers: list[int], config: FinetuneConfig) -> Mask:
    need_s, need_t = needs_scores(config.strategy)
    sensitivity = saliency = None
    if need_s:
        idx = _subsample(len(train.items), config.sensitivity_samples, config.seed)
        sensitivity = intrinsic_sensitivity(backbone, params, _pixel_batches(backbone, train.subset(idx), config),
                                            total=len(idx), target=config.sensitivity_target, layers=layers,
                                            seed=config.seed, view=view)
    if need_t:
        idx = _subsample(len(train.items), config.saliency_samples, config.seed + 1)
        saliency = task_saliency(backbone, head, params, _pixel_batches(backbone, train.subset(idx), config, labels=True),
                                 total=len(idx), view=view, seed=config.seed)
    return build_mask(config.strategy, params, config.rho, config.q, sensitivity, saliency, seed=config.seed)


def _subsample(n: int, k: int, seed: int) -> list[int]:
    if k >= n:
        return list(range(n))
    return sorted(torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k].tolist())


def _pixel_batches(backbone: Backbone, sample: LabelledSample, config: FinetuneConfig, labels: bool = False):
    preprocess = Preprocess.from_dict(backbone.preprocessing())
    dataset = ImageFiles(sample.paths, CropTransform(preprocess, 1))
    device = backbone.device
    for batch in loader(dataset, config.batch_size, config.workers, pin_memory=device.type == "cuda"):
        if batch.pixels is None:
            continue
        pixels = batch.pixels.to(device, non_blocking=True)
        if labels:
            y = torch.as_tensor(sample.labels[[batch.items[i].index for i in batch.ok]])
            yield pixels, y
        else:
            yield pixels


def _attach(backbone: Backbone, params: dict[str, nn.Parameter], mask: Mask) -> dict[str, SparseDelta | DenseDelta]:
    return attach(backbone, params, mask.indices)


@dataclass
class _RunState:
    epoch: int = 0
    step: int = 0
    best_auc: float = -1.0
    best_epoch: int = 0
    best: dict | None = None
    log: list[dict] = field(default_factory=list)
    validation: dict | None = None  # filled at the end: the saved detector's validation logits per policy


def _snapshot(deltas: dict[str, SparseDelta], head: DetectorHead, val: tuple[np.ndarray, np.ndarray] | None) -> dict:
    """A copy of the tunable state, with the validation (logits, labels) it scored."""
    return {
        "deltas": {n: d.values.detach().clone() for n, d in deltas.items()},
        "head": {k: v.detach().clone() for k, v in head.state_dict().items()},
        "val_logits": None if val is None else np.array(val[0], copy=True),
        "val_labels": None if val is None else np.array(val[1], copy=True),
    }


class _Trainer:
    def __init__(self, backbone, head, deltas, optimizer, train, val, view, config: FinetuneConfig):
        self.backbone, self.head, self.deltas, self.optimizer = backbone, head, deltas, optimizer
        self.train, self.val, self.view, self.config = train, val, view, config
        self.layers = list(head.config.layers)
        preprocess = Preprocess.from_dict(backbone.preprocessing())
        self.transform = TrainTransform(preprocess, config.augment, config.seed)
        self.failures: dict[str, str] = {}

    def _forward(self, pixels):
        # cached: a dense (``full``) parametrization is computed once per forward, not at every
        # read of the weight (MultiheadAttention reads in_proj_weight several times)
        with parametrize.cached(), autocast(self.backbone.device):
            return self.head(self.backbone.taps(pixels, self.layers, self.view))

    def train_epoch(self, epoch: int, run: _RunState) -> float:
        c, device = self.config, self.backbone.device
        self.transform.epoch = epoch
        dataset = ImageFiles(self.train.paths, self.transform)
        batches = loader(dataset, c.batch_size, c.workers, pin_memory=device.type == "cuda",
                         shuffle_seed=c.seed * 100_003 + epoch)
        self.head.train()
        total, count, micro = 0.0, 0, 0
        self.optimizer.zero_grad(set_to_none=True)
        with console.progress(len(dataset), f"epoch {epoch + 1}/{c.epochs}") as bar:
            for batch in batches:
                for item in batch.items:
                    if item.info.error:
                        self.failures[self.train.paths[item.index]] = item.info.error
                if batch.pixels is not None:
                    labels = torch.as_tensor(self.train.labels[[batch.items[i].index for i in batch.ok]],
                                             dtype=torch.float32, device=device)
                    logits, embedding = self._forward(batch.pixels.to(device, non_blocking=True))
                    loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), labels)
                    if c.contrastive_weight > 0:
                        loss = loss + c.contrastive_weight * supervised_contrastive(
                            embedding, labels, c.contrastive_temperature)
                    if not torch.isfinite(loss):
                        raise I2PError(f"training diverged (loss {loss.item()}) in epoch {epoch + 1}, after step "
                                       f"{run.step}: lower --lr-backbone / --lr-head")
                    (loss / c.accumulate).backward()
                    micro += 1
                    total += loss.item() * len(labels)
                    count += len(labels)
                    if micro % c.accumulate == 0:
                        self._step(run)
                bar.advance(len(batch.items), postfix=f"loss {total / max(count, 1):.4f}")
                if c.max_steps is not None and run.step >= c.max_steps:
                    break
        if micro % c.accumulate:
            self._step(run)
        if count == 0:
            raise I2PError("none of the training images could be decoded")
        return total / count

    def _step(self, run: _RunState) -> None:
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        run.step += 1

    @torch.no_grad()
    def validate(self) -> tuple[dict, tuple[np.ndarray, np.ndarray]]:
        logits, labels = predict(self.backbone, self.head, self.val, self.view, self.config.batch_size,
                                 self.config.workers)
        self.head.train()
        return validation_metrics(logits, labels), (logits, labels)


@torch.no_grad()
def predict(backbone, head, sample: LabelledSample, view: str, batch_size: int, workers: int,
            description: str = "validate", policy: str = DEFAULT_POLICY) -> tuple[np.ndarray, np.ndarray]:
    """Logits (as a scan with ``policy`` computes them: ``inference.sample_logits``) and labels of
    the images in ``sample`` that decode."""
    logits, kept = sample_logits(backbone, head, view, sample.paths, (policy,), batch_size, workers, description)
    return logits[policy], sample.labels[kept]


def validation_metrics(logits: np.ndarray, labels: np.ndarray) -> dict:
    if not np.all(np.isfinite(logits)):
        raise I2PError("validation scores are not finite: training diverged; lower --lr-backbone / --lr-head")
    z = torch.as_tensor(logits, dtype=torch.float64)
    y = torch.as_tensor(labels, dtype=torch.float64)
    both = len(set(labels.tolist())) == 2
    return {
        "val_auc": float(roc_auc_score(labels, logits)) if both else float("nan"),
        "val_ap": float(average_precision_score(labels, logits)) if both else float("nan"),
        "val_acc": float(np.mean((logits > 0) == labels)),
        "val_loss": float(nn.functional.binary_cross_entropy_with_logits(z, y)),
    }


def fit_temperature(logits: np.ndarray, labels: np.ndarray, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """The T minimising the BCE of sigmoid(logit / T) on held-out data (Guo et al. 2017), within bounds.

    The BCE is convex in 1/T, so it has one minimum in log T: a bounded scalar search finds it
    anywhere in the interval (a gradient method with T clamped to the bounds stopped at a bound
    when its first step overshot into the flat beyond it). No logits: T = 1."""
    z = np.asarray(logits, np.float64)
    y = np.asarray(labels, np.float64)
    if z.size == 0:
        return 1.0

    def nll(log_t: float) -> float:
        a = z / math.exp(log_t)
        return float(np.mean(np.logaddexp(0.0, a) - y * a))

    found = optimize.minimize_scalar(nll, bounds=(math.log(bounds[0]), math.log(bounds[1])), method="bounded",
                                     options={"xatol": 1e-9})
    return float(np.clip(math.exp(found.x), bounds[0], bounds[1]))


def threshold_at_fpr(real_logits: np.ndarray, fpr: float) -> float:
    """The lowest logit threshold (flag when logit >= it, in float32) that flags at most ``fpr`` of
    ``real_logits``."""
    z = np.sort(np.asarray(real_logits, np.float32))[::-1]
    k = int(math.floor(fpr * len(z)))
    if k >= len(z):
        return float(np.float32(-np.inf))
    return float(np.nextafter(z[k], np.float32(np.inf)))


def _finish(run, deltas, head, val, calibration, backbone, mask, config, train, failures,
            cal_overlap: int = 0) -> dict:
    if run.best is None or run.best["val_logits"] is None:
        raise I2PError("training ran no epoch; nothing to save")
    for name, values in run.best["deltas"].items():
        deltas[name].values.data.copy_(values)
    head.load_state_dict(run.best["head"])
    head.eval()
    thresholds, logits, kept = fit_thresholds(backbone, head, val, calibration.view, config)
    run.validation = {"paths": [val.paths[i] for i in kept], "labels": val.labels[kept], "logits": logits,
                      "best_epoch_logits": run.best["val_logits"]}
    centre = thresholds[DEFAULT_POLICY]
    temperature, threshold_logit, threshold = centre["temperature"], centre["threshold_logit"], centre["threshold"]
    best_metrics = next(e for e in run.log if e["epoch"] == run.best_epoch)
    if failures:
        console.warn(f"{len(failures)} training image(s) could not be decoded and were skipped")
    return {
        "i2pscan_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "backbone": backbone.identity(),
        "preprocessing": backbone.preprocessing(),
        "view": calibration.view,
        "last_block": calibration.last_block,
        "head": {"config": head.config.to_dict(), "layers": list(head.config.layers),
                 "gate": [float(w) for w in head.layer_weights().detach().cpu()]},
        "threshold": threshold,
        "threshold_logit": threshold_logit,
        "temperature": temperature,
        "thresholds": thresholds,
        "target_fpr": config.target_fpr,
        "mask": {"strategy": mask.strategy, "rho": mask.rho, "q": mask.q, "trainable": mask.trainable,
                 "eligible": mask.eligible,
                 "per_block": {str(b): {"trainable": t, "eligible": e} for b, (t, e) in mask.per_block().items()},
                 "tensors": sorted(deltas)},
        "training": {
            "config": config.to_dict(),
            "counts": {"train": _counts(train), "val": _counts(val)},
            "fingerprint": train.fingerprint(),
            "val_fingerprint": val.fingerprint(),
            "val_in_calibration": cal_overlap,
            "best_epoch": run.best_epoch,
            "epochs": run.epoch,
            "steps": run.step,
            "validation": {k: v for k, v in best_metrics.items() if k.startswith("val_")},
            "skipped": len(failures),
            "arithmetic": "bf16" if backbone.device.type == "cuda" else "fp32",  # what fit_thresholds computed in
        },
        "calibration": {"critical_layers": calibration.critical, "fingerprint": calibration.sample.get("fingerprint"),
                        "importance": [float(w) for w in calibration.importance]},
    }


def fit_thresholds(backbone, head, val: LabelledSample, view: str, config: FinetuneConfig
                   ) -> tuple[dict[str, dict], dict[str, np.ndarray], list[int]]:
    """For every crop policy of ``config``: the temperature and the threshold at ``target_fpr``,
    fitted on the validation logits a scan with that policy computes (the detector as it will be
    saved). Returns ({policy: {threshold, threshold_logit, temperature, val_fpr, val_real}},
    {policy: logits}, positions in ``val`` of the images that decoded)."""
    logits, kept = sample_logits(backbone, head, view, val.paths, config.crop_policies, config.batch_size,
                                 config.workers, description="thresholds")
    labels = val.labels[kept]
    out = {}
    for policy, z in logits.items():
        temperature = fit_temperature(z, labels)
        cut = threshold_at_fpr(z[labels == 0], config.target_fpr)
        probability = float(1.0 / (1.0 + math.exp(-cut / temperature))) if math.isfinite(cut) else 0.0
        out[policy] = {"threshold": probability, "threshold_logit": cut, "temperature": temperature,
                       "val_fpr": float(np.mean(z[labels == 0] >= np.float32(cut))),
                       "val_real": int(np.sum(labels == 0))}
    return out, logits, kept


def _counts(sample: LabelledSample) -> dict:
    c = sample.counts()
    return {"real": c["real"], "fake": c["fake"], "subsets": c["subsets"]}


def _write_log(path: str, log: list[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        for entry in log:
            fh.write(json.dumps(entry) + "\n")


# -- checkpoints: safetensors tensors + JSON, written after every epoch -------------------------


def _save_checkpoint(path, mask: Mask, deltas, head, optimizer, run: _RunState, meta: dict) -> None:
    tensors = {}
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
            "rho": mask.rho, "q": mask.q, "numels": mask.numels,
            "dense": [n for n, idx in mask.indices.items() if idx is None]}
    tensorfile.write(path, CHECKPOINT_KIND, tensors, meta)


def _load_checkpoint(path, config: FinetuneConfig, train, val, backbone) -> dict:
    _, meta, tensors = tensorfile.read(path, (CHECKPOINT_KIND,))
    now, saved = json.loads(json.dumps(config.to_dict())), meta["config"]
    differs = [k for k in now if k not in _RESUMABLE_CHANGES and now[k] != saved.get(k)]
    if differs:
        raise I2PError(f"cannot resume {path}: option(s) {', '.join(differs)} differ from the interrupted run")
    if meta["train_fingerprint"] != train.fingerprint() or meta["val_fingerprint"] != val.fingerprint():
        raise I2PError(f"cannot resume {path}: the training or validation data differ from the interrupted run")
    if meta["backbone_sha256"] != backbone.sha256:
        raise I2PError(f"cannot resume {path}: it was trained on other backbone weights")
    indices = {n: tensors[f"mask.{n}"] for n in meta["numels"] if f"mask.{n}" in tensors}
    indices.update({n: None for n in meta["dense"]})
    mask = Mask(meta["strategy"], indices, meta["numels"], meta["rho"], meta["q"])
    return {"mask": mask, "meta": meta, "tensors": tensors}


def _restore(state: dict, deltas, head, optimizer, run: _RunState) -> None:
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
