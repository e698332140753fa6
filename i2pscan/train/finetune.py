"""Sparse, sensitivity-masked fine-tuning: theta = theta0 + scatter(delta) (DESIGN §1.2).

Only the masked entries (``delta``) and the head learn; the optimiser holds state for nothing
else, so memory grows with rho, not with the model. Weight decay acts on delta, pulling theta
toward theta0. Each completed epoch leaves a checkpoint beside the output, from which
``resume=True`` continues to the same result as an uninterrupted run.
"""

from __future__ import annotations

import logging
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
from i2pscan.model.backbone import Backbone
from i2pscan.model.detector_file import Delta, write_detector
from i2pscan.model.head import KINDS, DetectorHead, HeadConfig
from i2pscan.model.policy import DEFAULT_POLICY, STANDARD_POLICIES, normalise_policies
from i2pscan.model.sparse import DenseDelta, SparseDelta, attach
from i2pscan.train.augment import Augment
from i2pscan.train.calibrate import Calibration
from i2pscan.train.checkpoint import (checkpoint_path, load_checkpoint, log_path, restore_checkpoint, save_checkpoint,
                                      write_log)
from i2pscan.train.loop import RunState, Trainer, better_epoch, snapshot
from i2pscan.train.retention import RETENTION_KEYS, delta_size, drift, drift_images, make_drift_set
from i2pscan.train.samples import LabelledSample
from i2pscan.train.validation import VAL_BY, hold_out_validation, validation_protocol
from i2pscan.train.plan import penalty_weights, plan
from i2pscan.train.sensitivity import NORMALISATIONS, STRATEGIES, Mask, needs_scores
from i2pscan.train.thresholds import fit_thresholds

log = logging.getLogger("i2pscan")
SALIENCY_HEADS = ("probe", "warmup")
SELECT_BY = ("saliency", "ratio")


@dataclass(frozen=True)
class FinetuneConfig:
    strategy: str = "i2p"
    rho: float = 0.01
    q: float = 0.1
    epochs: int = 5
    max_steps: int | None = None
    batch_size: int = 32
    accumulate: int = 1
    lr_backbone: float = 1e-4
    lr_head: float = 1e-3
    weight_decay: float = 0.0  # AdamW's decay of the delta toward theta0 (0.05 was nominal: drift unchanged)
    drift_penalty: float = 1e4  # strength of sum_i w_i delta_i^2, w ~ sensitivity, in units of predicted drift
    head_weight_decay: float = 1e-4
    warmup_steps: int | None = None  # head warm-up steps; None: three passes over the warm-up features, >= 100
    warmup_views: int = 2  # augmented crops of each training image the head warms up (and the probe fits) on
    saliency_head: str = "probe"  # what task saliency is measured against: the convex probe, or the warm-up head
    sensitivity_norm: str = "none"  # put sensitivity on one scale per tensor or group before ranking (drift: none)
    select_by: str = "saliency"  # i2p: rank the candidates by saliency, or by saliency / sensitivity ("ratio")
    contrastive_weight: float = 0.0
    contrastive_temperature: float = 0.1
    val_split: float = 0.2
    val_by: str = "auto"  # auto: hold out whole subsets (generators) when the data has several, else a fraction
    target_fpr: float = 0.05
    drift_samples: int = 256  # held-out real images whose embedding drift is logged per epoch (0: none)
    sensitivity_samples: int = 256
    sensitivity_projections: int = 8  # random projections v per image, averaged
    saliency_samples: int = 256
    sensitivity_target: str = "embedding"
    proj_dim: int | None = None
    head: str = "i2p"  # i2p (critical layers, one gate weight per layer), rine (all blocks, per-dimension gate), univfd
    head_dropout: float = 0.0
    crop_policies: tuple[str, ...] = STANDARD_POLICIES  # fit a threshold for each (N:mean|max); 1:mean always
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
        if self.head not in KINDS:
            raise ConfigError(f"`head` must be one of {', '.join(KINDS)}")
        if not 0 <= self.head_dropout < 1:
            raise ConfigError("`head_dropout` must be in [0, 1)")
        if self.select_by not in SELECT_BY:
            raise ConfigError(f"`select_by` must be one of {', '.join(SELECT_BY)}")
        if self.val_by not in VAL_BY:
            raise ConfigError(f"`val_by` must be one of {', '.join(VAL_BY)}")
        if self.sensitivity_target not in ("embedding", "taps"):
            raise ConfigError("`sensitivity_target` must be embedding or taps")
        object.__setattr__(self, "crop_policies", normalise_policies(self.crop_policies))
        if self.saliency_head not in SALIENCY_HEADS:
            raise ConfigError(f"`saliency_head` must be one of {', '.join(SALIENCY_HEADS)}")
        if self.sensitivity_norm not in NORMALISATIONS:
            raise ConfigError(f"`sensitivity_norm` must be one of {', '.join(NORMALISATIONS)}")
        if self.drift_penalty < 0:
            raise ConfigError("`drift_penalty` must be at least 0")
        if self.drift_penalty > 0 and self.drift_samples < 1:
            raise ConfigError("`drift_penalty` is scaled by the drift images' embeddings: `drift_samples` must be at "
                              "least 1")
        if self.sensitivity_projections < 1:
            raise ConfigError("`sensitivity_projections` must be at least 1")
        if self.warmup_views < 1:
            raise ConfigError("`warmup_views` must be at least 1")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ConfigError("`warmup_steps` must be at least 0")
        if self.warmup_steps == 0 and self.saliency_head == "warmup" and needs_scores(self.strategy)[1]:
            raise ConfigError(f"`strategy` {self.strategy} ranks weights by the task saliency of a warmed-up head: "
                              f"`warmup_steps` must be at least 1 (or `saliency_head` probe)")

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
    protocol = validation_protocol(train, val)
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
    last_block = max(head.layers)
    params = backbone.tunable_parameters(last_block)
    sensitivity = None
    if state is None:
        planned = plan(backbone, head, params, train, calibration.view, config)
        mask, sensitivity = planned.mask, planned.sensitivity
    else:
        mask = state["mask"]

    if on_mask is not None:
        on_mask(mask)
    view = calibration.view
    # the backbone stays whole while training (taps stop at L* anyway), so that drift can be measured
    # on the projected embedding; it is cut after L* before the thresholds are fitted
    deltas = _attach(backbone, params, mask)
    drift_set = make_drift_set(backbone, drift_images(val, config.drift_samples), config.batch_size, config.workers)
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
    if state is not None:
        trainer.penalty = {k[len("penalty."):]: t.to(backbone.device) for k, t in state["tensors"].items()
                           if k.startswith("penalty.")}
    else:
        trainer.penalty = penalty_weights(mask, sensitivity, None if drift_set is None else drift_set.reference,
                                          config.drift_penalty)
    ckpt_meta = {"train_fingerprint": train.fingerprint(), "val_fingerprint": val.fingerprint(),
                 "backbone_sha256": backbone.sha256, "config": config.to_dict()}
    for epoch in range(run.epoch, config.epochs):
        if config.max_steps is not None and run.step >= config.max_steps:
            break
        started = time.monotonic()
        train_loss = trainer.train_epoch(epoch, run)
        metrics, val_scored = trainer.validate()
        retained = {**(drift(backbone, drift_set) if drift_set is not None else {}), **delta_size(deltas, params)}
        entry = {"epoch": epoch + 1, "step": run.step, "train_loss": train_loss, **metrics, **retained,
                 "seconds": round(time.monotonic() - started, 3)}
        run.log.append(entry)
        best = next((e for e in run.log if e["epoch"] == run.best_epoch), None)
        if better_epoch(entry, best, *np.bincount(val_scored[1].astype(int), minlength=2)[::-1]):
            run.best_auc, run.best_epoch = metrics["val_auc"], epoch + 1
            run.best = snapshot(deltas, head, val_scored)
        run.epoch = epoch + 1
        save_checkpoint(ckpt, mask, deltas, head, optimizer, run, ckpt_meta, trainer.penalty)
        write_log(log_path(out), run.log)
        log.info("epoch {epoch}: loss {train_loss:.4f}, val AUC {val_auc:.4f}, AP {val_ap:.4f}, "
                    "acc {val_acc:.4f}".format(**entry))
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, entry)

    backbone.truncate(last_block)
    meta = _finish(run, deltas, head, val, calibration, backbone, mask, config, train, trainer.failures,
                   cal_overlap, 0 if drift_set is None else len(drift_set.paths), protocol)
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
    head = _new_head(backbone, calibration, config)
    params = backbone.tunable_parameters(max(head.layers))
    return plan(backbone, head, params, train, calibration.view, config).mask


def _new_head(backbone: Backbone, calibration: Calibration, config: FinetuneConfig) -> DetectorHead:
    in_dim = backbone.width * (2 if calibration.view == "cls+patchmean" else 1)
    layers = {"i2p": calibration.critical, "rine": range(1, calibration.num_blocks + 1),
              "univfd": [calibration.num_blocks]}[config.head]
    config_ = HeadConfig.for_layers(list(layers), calibration.importance, in_dim, config.proj_dim, config.head,
                                    config.head_dropout)
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


def _attach(backbone: Backbone, params: dict[str, nn.Parameter], mask: Mask) -> dict[str, SparseDelta | DenseDelta]:
    return attach(backbone, params, mask.indices)



def _finish(run, deltas, head, val, calibration, backbone, mask, config, train, failures,
            cal_overlap: int = 0, drift_count: int = 0, protocol: dict | None = None) -> dict:
    protocol = protocol or validation_protocol(train, val)
    if run.best is None or run.best["val_logits"] is None:
        raise TrainingFailed("training ran no epoch; nothing to save")
    for name, values in run.best["deltas"].items():
        deltas[name].values.data.copy_(values)
    head.load_state_dict(run.best["head"])
    head.eval()
    thresholds, logits, kept = fit_thresholds(backbone, head, val, calibration.view, config,
                                              protocol["temperature_floor"])
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
        "last_block": max(head.layers),
        "head": {"config": head.config.to_dict(), "layers": list(head.config.layers),
                 "gate": [float(w) for w in head.layer_weights().detach().cpu()]},
        "threshold": threshold,
        "threshold_logit": threshold_logit,
        "temperature": temperature,
        "thresholds": thresholds,
        "target_fpr": config.target_fpr,
        "mask": {"strategy": mask.strategy, "rho": mask.rho, "q": mask.q, "normalisation": mask.normalisation,
                 "select_by": config.select_by, "saliency_head": config.saliency_head, "trainable": mask.trainable,
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
            "selection": protocol,
            "retention": {**{k: best_metrics[k] for k in RETENTION_KEYS if k in best_metrics},
                          "drift_images": drift_count},
            "skipped": len(failures),
            "arithmetic": "bf16" if backbone.device.type == "cuda" else "fp32",  # what fit_thresholds computed in
        },
        "calibration": {"critical_layers": calibration.critical, "fingerprint": calibration.sample.get("fingerprint"),
                        "importance": [float(w) for w in calibration.importance]},
    }



def _counts(sample: LabelledSample) -> dict:
    c = sample.counts()
    return {"real": c["real"], "fake": c["fake"], "subsets": c["subsets"]}
