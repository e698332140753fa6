"""Which images validate a detector, and what that makes of its epoch, temperature and threshold
(DESIGN §1.2 step 7)."""

from __future__ import annotations

import logging
import math

import numpy as np

from i2pscan.errors import InputError
from i2pscan.train.samples import FileSet, LabelledSample, split_by_subset, split_stratified

log = logging.getLogger("i2pscan")
VAL_BY = ("auto", "subset", "random")
IN_DISTRIBUTION_TEMPERATURE_FLOOR = 1.0


def hold_out_validation(train: LabelledSample, val: LabelledSample | None, config,
           calibration=None) -> tuple[LabelledSample, LabelledSample, int]:
    """(training, validation, how many validation images the calibration also used).

    Validation never shares a file with training: the same real path (symlinks resolved) or the
    same bytes. An automatic split holds out whole subsets (generators) when the data has several
    (``val_by`` auto; DESIGN §1.2 step 7: epoch, temperature and threshold are then chosen on
    generators training never saw), else a stratified fraction of each class. Calibration images
    go to the training part of a stratified split as far as each group allows; any that validate
    anyway (or are in ``--val``) are counted and warned about.
    """
    cal_files = FileSet((calibration.sample.get("files") or []) if calibration is not None else [])
    if val is None:
        avoid = cal_files.find(train.paths) if len(cal_files) else []
        subsets = {it.subset for it in train.items}
        if config.val_by == "subset" or (config.val_by == "auto" and len(subsets) > 1):
            if len(subsets) < 2:
                raise InputError(f"`val_by` subset needs training data of two subsets (generators) or more; "
                                 f"it has {len(subsets)}")
            train_idx, val_idx = split_by_subset(train, config.val_split, config.seed)
        else:
            train_idx, val_idx = split_stratified(train, config.val_split, config.seed, avoid=avoid)
        train, val = train.subset(train_idx), train.subset(val_idx)
    else:
        shared = FileSet.of(val.paths).find(train.paths)
        if shared:
            example = train.paths[shared[0]]
            raise InputError(f"{len(shared)} training image(s) are also validation images (the same file or the "
                             f"same bytes, e.g. {example}); give `val` data of its own, or `split` to keep only "
                             f"training images in DATA")
    check_classes(train, "training")
    check_classes(val, "validation")
    overlap = len(cal_files.find(val.paths)) if len(cal_files) else 0
    if overlap:
        log.warning(f"{overlap} of {len(val.items)} validation image(s) were in the calibration sample "
                     f"(they chose the critical layers): calibrate on images that do not validate")
    real = int(np.sum(val.labels == 0))
    needed = math.ceil(1 / config.target_fpr - 1 - 1e-9)  # the fewest with floor(target (n + 1)) >= 1
    if real < needed:
        log.warning(f"only {real} real validation image(s): a threshold at --target-fpr {config.target_fpr} "
                     f"needs at least {needed} to hold it (here a new real image is flagged with probability "
                     f"{1 / (real + 1):.3g} at best)")
    return train, val, overlap


def validation_protocol(train: LabelledSample, val: LabelledSample) -> dict:
    """How the epoch, temperature and threshold were chosen: on generators training never saw
    (``held-out generators``: no subset in common) or in-distribution, where the temperature is
    floored at 1 (validation on the training generators rewards over-confidence) and the log
    says so."""
    train_subsets = sorted({it.subset for it in train.items})
    val_subsets = sorted({it.subset for it in val.items})
    held_out = not set(train_subsets) & set(val_subsets)
    if not held_out:
        log.info("validation shares the training generators: epoch, temperature and threshold are chosen "
                 "in-distribution (the temperature is kept at 1 or above); train on several generators, or give "
                 "`val` data from generators training does not see, to choose them on held-out ones")
    return {"validation": "held-out generators" if held_out else "in-distribution",
            "train_subsets": train_subsets, "val_subsets": val_subsets,
            "temperature_floor": None if held_out else IN_DISTRIBUTION_TEMPERATURE_FLOOR}


def check_classes(sample: LabelledSample, what: str) -> None:
    """Refuse a sample without both classes, with its counts."""
    counts = np.bincount(sample.labels, minlength=2)
    if counts.min() < 1:
        raise InputError(f"the {what} data has {counts[0]} real and {counts[1]} fake images; both are needed")
