"""``calibrate``, ``finetune`` and ``demo-data``: making a detector."""

from __future__ import annotations

import os

import click

from i2pscan.cli.app import Terminated, command
from i2pscan.cli.options import (DATA, DETECTOR, INPUT, OUTPUT, TRAINING, Command, option, quiet_option, run_options,
                                 sample_options, seed_option)

STRATEGIES = ("i2p", "low-sensitivity", "task-fisher", "random", "head-only", "full")


@click.command(cls=Command)
@click.argument("data", type=click.Path(exists=True, path_type=str))
@option("--out", "-o", required=True, type=click.Path(dir_okay=False, path_type=str), group=OUTPUT,
        help="Calibration file to write (.safetensors).")
@option("--plot", type=click.Path(dir_okay=False, path_type=str), default=None, metavar="PNG", group=OUTPUT,
        help="Also draw AUC and importance per layer into a PNG (needs matplotlib).")
@option("--backbone", default="ViT-L-14", show_default=True, group=DETECTOR,
        help="open_clip model name, or i2p-tiny / i2p-tiny-deep (shipped, CPU-sized).")
@option("--pretrained", default=None, metavar="TAG|PATH", group=DETECTOR,
        help="open_clip pretrained tag or a local weights file [default: openai; the shipped file for tiny backbones].")
@option("--quick-gelu/--no-quick-gelu", "quick_gelu", default=None, group=DETECTOR,
        help="Activation of weights from a file when neither a -quickgelu name nor an open_clip_config.json "
             "beside the file says it [default: refuse to guess where the model's known weights differ].")
@option("--top-k", type=click.IntRange(min=1), default=3, show_default=True, group=TRAINING,
        help="How many critical layers S to keep.")
@option("--gamma", type=click.FloatRange(min=0, min_open=True), default=4.0, show_default=True, group=TRAINING,
        help="Sharpening of importance: w ∝ max(0, AUC-0.5)^gamma.")
@option("--folds", type=click.IntRange(min=2), default=5, show_default=True, group=TRAINING,
        help="Cross-validation folds of each layer probe.")
@option("--bootstrap", type=click.IntRange(min=0), default=200, show_default=True, group=TRAINING,
        help="Bootstrap resamples for each layer's AUC interval and how often S comes back (0: none).")
@option("--logo/--no-logo", default=True, show_default=True, group=TRAINING,
        help="Rank layers by leave-one-generator-out AUC when DATA has two subsets (generators) or more.")
@option("--view", type=click.Choice(["cls", "cls+patchmean"]), default="cls", show_default=True, group=TRAINING,
        help="Features per layer: the class token, or it and the mean patch token.")
@sample_options
@seed_option
@run_options
@command
def calibrate(data, out, plot, backbone, pretrained, quick_gelu, max_per_class, subset, split, device, quiet, **config):
    """Find the backbone layers that carry forgery cues in a labelled sample DATA.

    DATA is a folder with real|0_real|nature and fake|1_fake|ai|synthetic folders at any depth
    (GenImage and ForenSynths layouts work as they are), or a CSV/Parquet manifest with columns
    path,label[,subset]. Writes per-layer probe AUC, accuracy, Fisher ratio, importance, the
    critical layers S and L* (the deepest block the detector needs) to --out.
    """
    from i2pscan import api, plots, render
    from i2pscan.io.files import check_writable

    for path in filter(None, (out, plot)):
        check_writable(path)
    result = api.calibrate(data, out, backbone=backbone, pretrained=pretrained, quick_gelu=quick_gelu, device=device,
                           max_per_class=max_per_class, subsets=subset, split=split, **config)
    render.calibration(result)
    for skipped in result.sample["skipped"]:
        render.log(f"skipped {skipped['path']}: {skipped['error']}")
    if plot:
        plots.calibration(result, plot)
        render.log(f"plot: {plot}")
    render.log(f"calibration written to {out}")


@click.command(cls=Command)
@click.argument("data", type=click.Path(exists=True, path_type=str))
@option("--calibration", "calibration_file", required=True, type=click.Path(exists=True, dir_okay=False, path_type=str),
        group=INPUT, help="Calibration file from `i2pscan calibrate` (same backbone).")
@option("--out", "-o", required=True, type=click.Path(dir_okay=False, path_type=str), group=OUTPUT,
        help="Detector file to write (.safetensors); a training log (.log.jsonl) is written beside it.")
@option("--resume", is_flag=True, group=OUTPUT, help="Continue an interrupted run from its checkpoint.")
@option("--dry-run", is_flag=True, group=OUTPUT, help="Choose the mask, print what would be tuned, and stop.")
@option("--pretrained", default=None, metavar="TAG|PATH", group=DETECTOR,
        help="Backbone weights, when the calibration's recorded source is not available here.")
@option("--strategy", type=click.Choice(STRATEGIES), default="i2p", show_default=True, group=TRAINING,
        help="Which backbone weights may move.")
@option("--rho", type=click.FloatRange(0, 1, min_open=True), default=0.01, show_default=True, group=TRAINING,
        help="Fraction of eligible backbone weights that are tuned.")
@option("--q", "q", type=click.FloatRange(0, 1, min_open=True), default=0.1, show_default=True, group=TRAINING,
        help="i2p: the fraction of weights with the lowest sensitivity that are candidates.")
@option("--epochs", type=click.IntRange(min=1), default=5, show_default=True, group=TRAINING, help="Training epochs.")
@option("--max-steps", type=click.IntRange(min=1), default=None, group=TRAINING,
        help="Stop after this many optimiser steps.")
@option("--accumulate", type=click.IntRange(min=1), default=1, show_default=True, group=TRAINING,
        help="Batches per optimiser step (gradient accumulation).")
@option("--lr-backbone", type=click.FloatRange(min=0, min_open=True), default=1e-4, show_default=True,
        group=TRAINING, help="Learning rate of the backbone delta.")
@option("--lr-head", type=click.FloatRange(min=0, min_open=True), default=1e-3, show_default=True, group=TRAINING,
        help="Learning rate of the head.")
@option("--weight-decay", type=click.FloatRange(min=0), default=0.0, show_default=True, group=TRAINING,
        help="AdamW's decay of the delta toward the pretrained weights (never of the weights themselves).")
@option("--drift-penalty", type=click.FloatRange(min=0), default=1e4, show_default=True, group=TRAINING,
        help="Strength of the sensitivity-weighted penalty on the delta, sum_i w_i delta_i^2 with w_i proportional "
             "to sensitivity and scaled so that the sum is the embedding drift it predicts (0: none).")
@option("--warmup-steps", type=click.IntRange(min=0), default=None, group=TRAINING,
        help="Head-only steps on frozen features of augmented crops before training [default: three passes over "
             "them, at least 100].")
@option("--warmup-views", type=click.IntRange(min=1), default=2, show_default=True, group=TRAINING,
        help="Augmented crops of each training image the head warms up, and the saliency probe fits, on.")
@option("--saliency-head", type=click.Choice(["probe", "warmup"]), default="probe", show_default=True, group=TRAINING,
        help="What task saliency is measured against: a convex logistic probe on the critical layers (no "
             "random initialisation), or the warmed-up head.")
@option("--sensitivity-norm", type=click.Choice(["none", "tensor", "group"]), default="none", show_default=True,
        group=TRAINING, help="Put sensitivity on one scale before ranking: none (as measured: what drift follows), "
                             "per tensor, or per group (tensor, and the q/k/v rows of attention apart).")
@option("--select-by", type=click.Choice(["saliency", "ratio"]), default="saliency", show_default=True,
        group=TRAINING, help="i2p: rank the low-sensitivity candidates by saliency, or by saliency per unit of "
                             "sensitivity.")
@option("--head", type=click.Choice(["i2p", "rine", "univfd"]), default="i2p", show_default=True, group=TRAINING,
        help="i2p: the critical layers, one gate weight each; rine: every block, a per-dimension gate "
             "initialised from importance (no early exit); univfd: a linear layer on the last block.")
@option("--head-dropout", type=click.FloatRange(0, 1, max_open=True), default=0.0, show_default=True,
        group=TRAINING, help="Dropout before the head's projection and classifier.")
@option("--contrastive-weight", type=click.FloatRange(min=0), default=0.0, show_default=True, group=TRAINING,
        help="Weight of the supervised-contrastive term on the projected features.")
@option("--sensitivity-samples", type=click.IntRange(min=1), default=256, show_default=True, group=TRAINING,
        help="Images used to estimate intrinsic sensitivity.")
@option("--saliency-samples", type=click.IntRange(min=1), default=256, show_default=True, group=TRAINING,
        help="Images used to estimate task saliency.")
@option("--sensitivity-target", type=click.Choice(["embedding", "taps"]), default="embedding", show_default=True,
        group=TRAINING, help="Representation whose movement sensitivity measures: the CLIP embedding or the "
                             "tapped features.")
@option("--target-fpr", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.05, show_default=True,
        group=TRAINING, help="Threshold: flag at most this fraction of validation real images.")
@option("--crop-policies", default="1:mean,5:mean,5:max,9:mean,9:max", show_default=True,
        metavar="N:mean|max[,...]", group=TRAINING,
        help="Crop policies (scan --crops N --combine mean|max) to fit a threshold and temperature for; "
             "1:mean is always fitted. A scan with another policy refuses unless given --force-policy.")
@option("--val", "val_data", type=click.Path(exists=True, path_type=str), default=None, group=DATA,
        help="Validation data (same forms as DATA; --subset applies to it, --split does not); "
             "default: hold out --val-split of DATA.")
@option("--val-split", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.2, show_default=True,
        group=DATA, help="Fraction of DATA held out for validation when --val is not given.")
@option("--val-by", type=click.Choice(["auto", "subset", "random"]), default="auto", show_default=True, group=DATA,
        help="Without --val: hold out whole subsets (generators; auto does when DATA has two or more, so that epoch, "
             "temperature and threshold are chosen on generators training never saw) or a random fraction.")
@option("--drift-samples", type=click.IntRange(min=0), default=256, show_default=True, group=TRAINING,
        help="Held-out real validation images whose embedding drift (1 - cos) is logged per epoch and stored.")
@sample_options
@seed_option
@run_options
@command
def finetune(data, calibration_file, out, resume, dry_run, pretrained, val_data, max_per_class, subset, split, device,
             quiet, crop_policies, **config):
    """Train a detector on labelled DATA: sparse updates inside a low-sensitivity subspace.

    Uses the backbone and critical layers of --calibration. Only a fraction --rho of the attention
    and MLP weights of blocks 1..L* move (chosen by --strategy), plus a small head over the
    critical layers. Logs the embedding drift per epoch, keeps the epoch with the best validation
    AUC, fits a temperature and a conformal threshold at --target-fpr for each crop policy, and
    writes the detector to --out. Ctrl-C leaves a checkpoint; run again with --resume to continue.
    """
    from i2pscan import api, render
    from i2pscan.io.files import check_writable
    from i2pscan.train.checkpoint import checkpoint_path

    config["crop_policies"] = tuple(p for p in crop_policies.split(",") if p.strip())
    data_args = dict(pretrained=pretrained, val=val_data, device=device, max_per_class=max_per_class, subsets=subset,
                     split=split)
    if dry_run:
        return render.mask(api.plan_mask(data, calibration_file, **data_args, **config))
    check_writable(out)
    try:
        result = api.finetune(data, calibration_file, out, resume=resume, on_mask=render.mask, **data_args, **config)
    except (KeyboardInterrupt, Terminated):
        if os.path.exists(checkpoint_path(out)):
            render.log(f"interrupted: {checkpoint_path(out)} holds the last completed epoch; "
                       f"run the same command with --resume to continue")
        raise
    training = result.meta["training"]
    render.log(f"detector written to {out} ({os.path.getsize(out):,} bytes): best epoch {training['best_epoch']}, "
               f"validation AUC {training['validation']['val_auc']:.4f}, threshold {result.meta['threshold']:.4f}")


@click.command("demo-data", cls=Command)
@click.argument("out", type=click.Path(file_okay=False, path_type=str))
@option("--train-per-class", type=click.IntRange(min=2), default=160, show_default=True, group=DATA,
        help="Training images per class and generator.")
@option("--val-per-class", type=click.IntRange(min=2), default=80, show_default=True, group=DATA,
        help="Validation images per class and generator.")
@option("--tile", type=click.IntRange(min=8), default=96, show_default=True, group=DATA, help="Tile size in pixels.")
@seed_option
@quiet_option
@command
def demo_data(out, train_per_class, val_per_class, tile, seed, quiet):
    """Write a small toy labelled sample to OUT, offline, for trying the pipeline.

    Real images are tiles of the photographs bundled with scikit-image; "synthetic" ones come from
    three toy upsampling generators (tconv, pixelshuffle, bilinear), in GenImage's layout
    OUT/<generator>/{train,val}/{nature,ai}. It demonstrates the pipeline, not real detection.
    """
    from i2pscan import render
    from i2pscan.train.toydata import make_toy_dataset

    counts = make_toy_dataset(out, train_per_class, val_per_class, tile, seed=seed)
    render.log(f"wrote {sum(counts.values())} images to {out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
