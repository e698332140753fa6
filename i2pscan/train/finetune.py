"""Sparse, sensitivity-masked fine-tuning: theta = theta0 + scatter(delta) (DESIGN §1.2).

Only the masked entries (``delta``) and the head learn; the optimiser holds state for nothing
else, so memory grows with rho, not with the model. Weight decay acts on delta, pulling theta
toward theta0. Each completed epoch leaves a checkpoint beside the output, from which
``resume=True`` continues to the same result as an uninterrupted run.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from i2pscan.version import __version__
from i2pscan.errors import ConfigError, FileRefused, InputError, OutputError, TrainingFailed
from i2pscan.io.files import remove_leftovers
from i2pscan.io.loader import ImageFiles, loader
from i2pscan.io.preprocess import CropTransform, Preprocess
from i2pscan.model.backbone import Backbone
from i2pscan.model.detector_file import Delta, write_detector
from i2pscan.model.head import DetectorHead, HeadConfig
from i2pscan.model.policy import DEFAULT_POLICY, normalise_policies
from i2pscan.model.sparse import DenseDelta, SparseDelta, attach
from i2pscan.train.augment import Augment
from i2pscan.train.calibrate import Calibration
from i2pscan.train.checkpoint import (checkpoint_path, load_checkpoint, log_path, restore_checkpoint, save_checkpoint,
                                      write_log)
from i2pscan.train.loop import RunState, Trainer, snapshot, warm_up_head
from i2pscan.train.samples import FileSet, LabelledSample, split_stratified
from i2pscan.train.sensitivity import STRATEGIES, Mask, build_mask, intrinsic_sensitivity, needs_scores, task_saliency
from i2pscan.train.thresholds import fit_thresholds

log = logging.getLogger("i2pscan")


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
            raise ConfigError(f"`strategy` must be one of {', '.join(STRATEGIES)}")
        if not 0 < self.rho <= 1 or not 0 < self.q <= 1:
            raise ConfigError("`rho` and `q` must be in (0, 1]")
        if not 0 < self.target_fpr < 1:
            raise ConfigError("`target_fpr` must be in (0, 1)")
        if not 0 < self.val_split < 1:
            raise ConfigError("`val_split` must be in (0, 1)")
        if self.epochs < 1 or self.batch_size < 1 or self.accumulate < 1:
            raise ConfigError("`epochs`, `batch_size` and `accumulate` must be at least 1")
        if self.sensitivity_target not in ("embedding", "taps"):
            raise ConfigError("`sensitivity_target` must be embedding or taps")
        object.__setattr__(self, "crop_policies", normalise_policies(self.crop_policies))
        if self.warmup_steps < 1 and needs_scores(self.strategy)[1]:
            raise ConfigError(f"`strategy` {self.strategy} ranks weights by the task saliency of a warmed-up head: "
                              f"`warmup_steps` must be at least 1 (or choose low-sensitivity or random)")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FinetuneResult:
    path: str
    meta: dict
    mask: Mask
    log: list[dict]
    validation: dict = field(default_factory=dict)  # paths, labels, logits {policy: array}, best_epoch_logits



def finetune(backbone: Backbone, calibration: Calibration, train: LabelledSample, out: str | os.PathLike,
             config: FinetuneConfig = FinetuneConfig(), val: LabelledSample | None = None, resume: bool = False,
             on_epoch_end: Callable[[int, dict], None] | None = None,
             on_mask: Callable[[Mask], None] | None = None) -> FinetuneResult:
    """Train a detector on ``train`` and write it to ``out``; returns what was written.

    ``val``: validation sample; by default ``config.val_split`` of ``train`` (stratified) is held
    out. The backbone is consumed: it is truncated after L* and tuned in place.
    ``on_mask(mask)`` is called once the tuned weights are chosen (or read back from the checkpoint),
    ``on_epoch_end(epoch, metrics)`` after each epoch's checkpoint is written. Raises
    I2PError for a calibration of another backbone, a checkpoint in the way (or missing with
    ``resume``), or data with no usable images.
    """
    out = os.fspath(out)
    _check_calibration(backbone, calibration)
    train, val, cal_overlap = hold_out_validation(train, val, config, calibration)
    ckpt = checkpoint_path(out)
    for written in (out, ckpt, log_path(out)):  # what a run killed mid-write left
        remove_leftovers(written)
    state = None
    if resume:
        if not os.path.exists(ckpt):
            raise InputError(f"nothing to resume: no checkpoint {ckpt}")
        state = load_checkpoint(ckpt, config, train, val, backbone)
    elif os.path.exists(ckpt):
        raise OutputError(f"an interrupted run left {ckpt}", "pass `resume` to continue it, or delete it to start over")

    head = _new_head(backbone, calibration, config)
    params = backbone.tunable_parameters(calibration.last_block)
    if state is None:
        mask = _plan(backbone, head, params, train, calibration, config)
    else:
        mask = state["mask"]

    if on_mask is not None:
        on_mask(mask)
    view, last_block = calibration.view, calibration.last_block
    backbone.truncate(last_block)
    deltas = _attach(backbone, params, mask)
    optimizer = torch.optim.AdamW([
        {"params": [d.values for d in deltas.values()], "lr": config.lr_backbone, "weight_decay": config.weight_decay},
        {"params": list(head.parameters()), "lr": config.lr_head, "weight_decay": config.head_weight_decay},
    ])
    run = RunState()
    if state is not None:
        restore_checkpoint(state, deltas, head, optimizer, run)
        log.info(f"resuming after epoch {run.epoch} of {config.epochs}")
    else:
        run.best = snapshot(deltas, head, None)

    trainer = Trainer(backbone, head, deltas, optimizer, train, val, view, config)
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
            run.best = snapshot(deltas, head, val_scored)
        run.epoch = epoch + 1
        save_checkpoint(ckpt, mask, deltas, head, optimizer, run, ckpt_meta)
        write_log(log_path(out), run.log)
        log.info("epoch {epoch}: loss {train_loss:.4f}, val AUC {val_auc:.4f}, AP {val_ap:.4f}, "
                    "acc {val_acc:.4f}".format(**entry))
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, entry)

    meta = _finish(run, deltas, head, val, calibration, backbone, mask, config, train, trainer.failures,
                   cal_overlap)
    write_detector(out, meta, head, {n: Delta(d.indices, d.values.detach()) for n, d in deltas.items()})
    write_log(log_path(out), run.log)
    os.remove(ckpt)
    return FinetuneResult(out, meta, mask, run.log, run.validation)


# ----------------------------------------------------------------------------------------------


def plan_mask(backbone: Backbone, calibration: Calibration, train: LabelledSample,
              config: FinetuneConfig = FinetuneConfig(), val: LabelledSample | None = None) -> Mask:
    """The mask ``finetune`` would train with the same arguments (``--dry-run``): holds out the
    same validation split, warms up a head, scores the weights, and returns the mask.
    Writes nothing; the backbone is left as it was."""
    _check_calibration(backbone, calibration)
    train, _, _ = hold_out_validation(train, val, config, calibration)
    params = backbone.tunable_parameters(calibration.last_block)
    return _plan(backbone, _new_head(backbone, calibration, config), params, train, calibration, config)


def _plan(backbone, head, params, train, calibration, config) -> Mask:
    warm_up_head(backbone, head, train, calibration.view, config)
    return _choose_mask(backbone, head, params, train, calibration.view, list(calibration.critical), config)


def hold_out_validation(train: LabelledSample, val: LabelledSample | None, config: FinetuneConfig,
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
            raise InputError(f"{len(shared)} training image(s) are also validation images (the same file or the "
                             f"same bytes, e.g. {example}); give `val` data of its own, or `split` to keep only "
                             f"training images in DATA")
    _check_classes(train, "training")
    _check_classes(val, "validation")
    overlap = len(cal_files.find(val.paths)) if len(cal_files) else 0
    if overlap:
        log.warning(f"{overlap} of {len(val.items)} validation image(s) were in the calibration sample "
                     f"(they chose the critical layers): calibrate on images that do not validate")
    real = int(np.sum(val.labels == 0))
    needed = math.ceil(1 / config.target_fpr)
    if real < needed:
        log.warning(f"only {real} real validation image(s): a threshold at --target-fpr {config.target_fpr} "
                     f"needs at least {needed} to be more than a guess")
    return train, val, overlap


def _new_head(backbone: Backbone, calibration: Calibration, config: FinetuneConfig) -> DetectorHead:
    in_dim = backbone.width * (2 if calibration.view == "cls+patchmean" else 1)
    config_ = HeadConfig.for_layers(calibration.critical, calibration.importance, in_dim, config.proj_dim)
    with torch.random.fork_rng(devices=[]):  # the head's initialisation from the seed; the caller's RNG untouched
        torch.manual_seed(config.seed)
        return DetectorHead(config_).to(backbone.device)


def _check_calibration(backbone: Backbone, cal: Calibration) -> None:
    if cal.backbone["sha256"] != backbone.sha256 or cal.backbone["name"] != backbone.name:
        raise FileRefused(f"the calibration was made with {cal.backbone['name']} (weights "
                          f"{cal.backbone['sha256'][:12]}…), not {backbone.name} ({backbone.sha256[:12]}…): "
                          f"calibrate again with this backbone")
    recorded = bool(cal.backbone.get("model_config", {}).get("quick_gelu", False))
    if recorded != bool(backbone.model_config.get("quick_gelu", False)):
        act = {True: "QuickGELU", False: "GELU"}
        raise FileRefused(f"the calibration was made with {act[recorded]}, this backbone uses {act[not recorded]}: "
                          f"load the backbone with the calibration's activation")
    if backbone.run_blocks != backbone.num_blocks:
        raise ConfigError("finetune needs an untruncated backbone")


def _check_classes(sample: LabelledSample, what: str) -> None:
    counts = np.bincount(sample.labels, minlength=2)
    if counts.min() < 1:
        raise InputError(f"the {what} data has {counts[0]} real and {counts[1]} fake images; both are needed")


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



def _finish(run, deltas, head, val, calibration, backbone, mask, config, train, failures,
            cal_overlap: int = 0) -> dict:
    if run.best is None or run.best["val_logits"] is None:
        raise TrainingFailed("training ran no epoch; nothing to save")
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
        log.warning(f"{len(failures)} training image(s) could not be decoded and were skipped")
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



def _counts(sample: LabelledSample) -> dict:
    c = sample.counts()
    return {"real": c["real"], "fake": c["fake"], "subsets": c["subsets"]}
