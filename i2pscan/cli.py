"""The ``i2pscan`` command line: parse options, call the library, print. No logic lives here.

Exit codes (as clamscan): 0 done, nothing flagged; 1 done, something flagged; 2 usage or
configuration error, nothing done; 3 done, nothing flagged, some files unreadable.
"""

from __future__ import annotations

import functools
import os
import sys

import click

from . import __version__
from .errors import I2PError

EXIT_CLEAN, EXIT_FLAGGED, EXIT_ERROR, EXIT_UNREADABLE = 0, 1, 2, 3


def _device_option(f):
    return click.option("--device", default="auto", show_default=True, metavar="auto|cpu|cuda|cuda:N|mps",
                        help="Where the model runs; an explicit device is used or refused, never replaced.")(f)


def _loader_options(f):
    f = click.option("--workers", type=click.IntRange(min=0), default=None, metavar="N",
                     help="Decoding processes (default: from the CPU count; 0 decodes in the main process).")(f)
    f = click.option("--batch-size", type=click.IntRange(min=1), default=None, metavar="B",
                     help="Images per forward pass (default: 32 on CPU, 128 on a GPU).")(f)
    return f


def _sample_options(f):
    f = click.option("--split", default=None, metavar="NAME",
                     help="Only images below a folder of this name (e.g. train or val in GenImage).")(f)
    f = click.option("--subset", multiple=True, metavar="NAME",
                     help="Only this subset (first folder under DATA, e.g. a generator); repeatable.")(f)
    f = click.option("--max-per-class", type=click.IntRange(min=1), default=None, metavar="N",
                     help="Use a seeded sample of at most N images per class, spread over subsets.")(f)
    return f


def _quiet_option(f):
    return click.option("-q", "--quiet", is_flag=True, help="No progress or log lines on stderr.")(f)


def _seed_option(f):
    return click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")(f)


class UserError(click.ClickException):
    """An I2PError on its way out: ``Error: <one line>`` on stderr, exit code 2."""

    exit_code = EXIT_ERROR


def _command(f):
    """Map library errors to one line on stderr and exit code 2; quiet applies to the console."""

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        from . import console

        console.set_quiet(kwargs.get("quiet", False))
        try:
            return f(*args, **kwargs)
        except I2PError as exc:
            raise UserError(str(exc)) from exc

    return wrapper


class _Group(click.Group):
    def list_commands(self, ctx):
        return ["calibrate", "finetune", "scan", "evaluate", "info", "report", "demo-data"]


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "-V", "--version", prog_name="i2pscan")
def cli():
    """Tell AI-generated images from camera photographs.

    \b
    A typical run, with a GPU and a labelled sample (real/ and fake/ folders):
      i2pscan calibrate train/ --out cal.safetensors       # which layers carry forgery cues
      i2pscan finetune train/ --calibration cal.safetensors --out detector.safetensors
      i2pscan scan photos/ --detector detector.safetensors -o report.parquet
      i2pscan evaluate test/ --detector detector.safetensors
    Offline demo with the tiny shipped backbone: examples/quickstart.sh

    Exit codes: 0 nothing flagged, 1 something flagged, 2 usage or configuration error,
    3 nothing flagged but some files unreadable.
    """


@cli.command()
@click.argument("data", type=click.Path(exists=True, path_type=str))
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False, path_type=str),
              help="Calibration file to write (.safetensors).")
@click.option("--backbone", default="ViT-L-14", show_default=True,
              help="open_clip model name, or i2p-tiny / i2p-tiny-deep (shipped, CPU-sized).")
@click.option("--pretrained", default=None, metavar="TAG|PATH",
              help="open_clip pretrained tag or a local weights file [default: openai; the shipped file for tiny backbones].")
@click.option("--top-k", type=click.IntRange(min=1), default=3, show_default=True,
              help="How many critical layers S to keep.")
@click.option("--gamma", type=click.FloatRange(min=0, min_open=True), default=4.0, show_default=True,
              help="Sharpening of importance: w ∝ max(0, AUC-0.5)^gamma.")
@click.option("--folds", type=click.IntRange(min=2), default=5, show_default=True, help="Cross-validation folds of each layer probe.")
@click.option("--view", type=click.Choice(["cls", "cls+patchmean"]), default="cls", show_default=True,
              help="Features per layer: the class token, or it and the mean patch token.")
@_sample_options
@click.option("--plot", type=click.Path(dir_okay=False, path_type=str), default=None, metavar="PNG",
              help="Also draw AUC and importance per layer into a PNG (needs matplotlib).")
@_seed_option
@_device_option
@_loader_options
@_quiet_option
@_command
def calibrate(data, out, backbone, pretrained, top_k, gamma, folds, view, max_per_class, subset, split, plot, seed,
              device, batch_size, workers, quiet):
    """Find the backbone layers that carry forgery cues in a labelled sample DATA.

    DATA is a folder with real|0_real|nature and fake|1_fake|ai|synthetic folders at any depth
    (GenImage and ForenSynths layouts work as they are), or a CSV/Parquet manifest with columns
    path,label[,subset]. Writes per-layer probe AUC, accuracy, Fisher ratio, importance, the
    critical layers S and L* (the deepest block the detector needs) to --out.
    """
    from . import calibrate as cal_mod
    from .backbone import default_batch_size, load_backbone, resolve_device
    from .data import default_workers, load_labelled

    where = resolve_device(device)
    config = cal_mod.CalibrateConfig(top_k=top_k, gamma=gamma, folds=folds, view=view, seed=seed,
                                     batch_size=batch_size or default_batch_size(where),
                                     workers=default_workers() if workers is None else workers)
    sample = load_labelled(data, max_per_class=max_per_class, seed=seed, subsets=subset, split=split)
    model = load_backbone(backbone, pretrained or "default", device=where)
    result = cal_mod.calibrate(model, sample, config)
    result.save(out)
    cal_mod.print_summary(result)
    for skipped in result.sample["skipped"]:
        _log(f"skipped {skipped['path']}: {skipped['error']}")
    if plot:
        cal_mod.plot(result, plot)
        _log(f"plot: {plot}")
    _log(f"calibration written to {out}")


@cli.command()
@click.argument("data", type=click.Path(exists=True, path_type=str))
@click.option("--calibration", "calibration_file", required=True, type=click.Path(exists=True, dir_okay=False, path_type=str),
              help="Calibration file from `i2pscan calibrate` (same backbone).")
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False, path_type=str),
              help="Detector file to write (.safetensors); a training log (.log.jsonl) is written beside it.")
@click.option("--pretrained", default=None, metavar="TAG|PATH",
              help="Backbone weights, when the calibration's recorded source is not available here.")
@click.option("--strategy", type=click.Choice(["i2p", "low-sensitivity", "task-fisher", "random", "head-only", "full"]),
              default="i2p", show_default=True, help="Which backbone weights may move.")
@click.option("--rho", type=click.FloatRange(0, 1, min_open=True), default=0.01, show_default=True,
              help="Fraction of eligible backbone weights that are tuned.")
@click.option("--q", "q", type=click.FloatRange(0, 1, min_open=True), default=0.5, show_default=True,
              help="i2p: the fraction of weights with the lowest sensitivity that are candidates.")
@click.option("--epochs", type=click.IntRange(min=1), default=5, show_default=True, help="Training epochs.")
@click.option("--max-steps", type=click.IntRange(min=1), default=None, help="Stop after this many optimiser steps.")
@click.option("--accumulate", type=click.IntRange(min=1), default=1, show_default=True,
              help="Batches per optimiser step (gradient accumulation).")
@click.option("--lr-backbone", type=click.FloatRange(min=0, min_open=True), default=1e-4, show_default=True,
              help="Learning rate of the backbone delta.")
@click.option("--lr-head", type=click.FloatRange(min=0, min_open=True), default=1e-3, show_default=True,
              help="Learning rate of the head.")
@click.option("--weight-decay", type=click.FloatRange(min=0), default=0.05, show_default=True,
              help="Decay of the delta toward the pretrained weights (never of the weights themselves).")
@click.option("--warmup-steps", type=click.IntRange(min=0), default=300, show_default=True,
              help="Head-only steps on cached frozen features before task saliency is measured.")
@click.option("--contrastive-weight", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Weight of the supervised-contrastive term on the projected features.")
@click.option("--val", "val_data", type=click.Path(exists=True, path_type=str), default=None,
              help="Validation data (same forms as DATA); default: hold out --val-split of DATA.")
@click.option("--val-split", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.2, show_default=True,
              help="Fraction of DATA held out for validation when --val is not given.")
@click.option("--target-fpr", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.05,
              show_default=True, help="Threshold: flag at most this fraction of validation real images.")
@click.option("--sensitivity-samples", type=click.IntRange(min=1), default=256, show_default=True,
              help="Images used to estimate intrinsic sensitivity.")
@click.option("--saliency-samples", type=click.IntRange(min=1), default=256, show_default=True,
              help="Images used to estimate task saliency.")
@click.option("--sensitivity-target", type=click.Choice(["embedding", "taps"]), default="embedding", show_default=True,
              help="Representation whose movement sensitivity measures: the CLIP embedding or the tapped features.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its checkpoint.")
@click.option("--dry-run", is_flag=True, help="Choose the mask, print what would be tuned, and stop.")
@_sample_options
@_seed_option
@_device_option
@_loader_options
@_quiet_option
@_command
def finetune(data, calibration_file, out, pretrained, strategy, rho, q, epochs, max_steps, accumulate, lr_backbone,
             lr_head, weight_decay, warmup_steps, contrastive_weight, val_data, val_split, target_fpr,
             sensitivity_samples, saliency_samples, sensitivity_target, resume, dry_run, max_per_class, subset, split,
             seed, device, batch_size, workers, quiet):
    """Train a detector on labelled DATA: sparse updates inside a low-sensitivity subspace.

    Uses the backbone and critical layers of --calibration. Only a fraction --rho of the attention
    and MLP weights of blocks 1..L* move (chosen by --strategy), plus a small head over the
    critical layers. Keeps the epoch with the best validation AUC, fits a temperature and a
    threshold at --target-fpr, and writes the detector to --out. Ctrl-C leaves a checkpoint;
    run again with --resume to continue.
    """
    from .backbone import default_batch_size, load_backbone, resolve_device
    from .calibrate import Calibration
    from .data import default_workers, load_labelled
    from .finetune import FinetuneConfig, finetune as run_finetune

    where = resolve_device(device)
    config = FinetuneConfig(strategy=strategy, rho=rho, q=q, epochs=epochs, max_steps=max_steps,
                            batch_size=batch_size or default_batch_size(where), accumulate=accumulate,
                            lr_backbone=lr_backbone, lr_head=lr_head, weight_decay=weight_decay,
                            warmup_steps=warmup_steps, contrastive_weight=contrastive_weight, val_split=val_split,
                            target_fpr=target_fpr, sensitivity_samples=sensitivity_samples,
                            saliency_samples=saliency_samples, sensitivity_target=sensitivity_target, seed=seed,
                            workers=default_workers() if workers is None else workers)
    cal = Calibration.load(calibration_file)
    train = load_labelled(data, max_per_class=max_per_class, seed=seed, subsets=subset, split=split)
    val = load_labelled(val_data) if val_data else None
    model = load_backbone(cal.backbone["name"], pretrained or _calibration_weights(cal), device=where,
                          quick_gelu=cal.backbone["model_config"].get("quick_gelu"))
    result = run_finetune(model, cal, train, out, config, val=val, resume=resume, dry_run=dry_run)
    if dry_run:
        return
    v = result.meta["training"]["validation"]
    _log(f"detector written to {out} ({os.path.getsize(out):,} bytes): best epoch "
         f"{result.meta['training']['best_epoch']}, validation AUC {v['val_auc']:.4f}, "
         f"threshold {result.meta['threshold']:.4f}")


def _calibration_weights(cal) -> str:
    """The weights a calibration was made with: its tag, or the shipped file of a tiny backbone."""
    from .backbone import TINY_BACKBONES, tiny_weights_path

    name, tag = cal.backbone["name"], cal.backbone.get("pretrained")
    if name in TINY_BACKBONES and tag == tiny_weights_path(name).name:
        return str(tiny_weights_path(name))
    return tag or "default"


@cli.command("demo-data")
@click.argument("out", type=click.Path(file_okay=False, path_type=str))
@click.option("--train-per-class", type=click.IntRange(min=2), default=160, show_default=True,
              help="Training images per class and generator.")
@click.option("--val-per-class", type=click.IntRange(min=2), default=80, show_default=True,
              help="Validation images per class and generator.")
@click.option("--tile", type=click.IntRange(min=8), default=96, show_default=True, help="Tile size in pixels.")
@_seed_option
@_quiet_option
@_command
def demo_data(out, train_per_class, val_per_class, tile, seed, quiet):
    """Write a small toy labelled sample to OUT, offline, for trying the pipeline.

    Real images are tiles of the photographs bundled with scikit-image; "synthetic" ones come from
    three toy upsampling generators (tconv, nearest, bilinear), in GenImage's layout
    OUT/<generator>/{train,val}/{nature,ai}. It demonstrates the pipeline, not real detection.
    """
    from .toydata import make_toy_dataset

    counts = make_toy_dataset(out, train_per_class, val_per_class, tile, seed=seed)
    _log(f"wrote {sum(counts.values())} images to {out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


@cli.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print the file's metadata as JSON.")
@_command
def info(file, as_json):
    """Show what a detector or calibration FILE holds and how it was made."""
    from .inspect import describe

    describe(file, as_json=as_json)


def _log(message: str) -> None:
    from . import console

    console.log(message)


def main(argv=None) -> None:
    """Console-script entry point: exit codes as documented, no traceback for user errors."""
    try:
        code = cli.main(args=argv, prog_name="i2pscan", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(EXIT_ERROR)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
    except BrokenPipeError:  # `i2pscan scan ... | head` is not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(EXIT_CLEAN)
    sys.exit(code if isinstance(code, int) else EXIT_CLEAN)


if __name__ == "__main__":
    main()
