"""The ``i2pscan`` command line: parse options, call the library, print. No logic lives here.

Exit codes (as clamscan): 0 done, nothing flagged; 1 done, something flagged; 2 usage or
configuration error, or a scan that could not finish (its scored rows kept for --resume, and the
message says so); 3 done, nothing flagged, some files unreadable.
"""

from __future__ import annotations

import functools
import os
import sys

import click

from i2pscan import __version__
from i2pscan.errors import I2PError, one_line, short_path

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


def _scoring_options(f):
    """What scan and evaluate share: the detector, its weights, threshold and crops."""
    f = click.option("--combine", type=click.Choice(["mean", "max"]), default=None,
                     help="How the logits of several crops are combined [default: mean].")(f)
    f = click.option("--crops", type=click.IntRange(min=1), default=None,
                     help="Crops per image at native resolution: centre, then corners, then a grid [default: 1].")(f)
    f = click.option("--threshold", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
                     help="Flag at this calibrated probability instead of the detector's threshold.")(f)
    f = click.option("--pretrained", default=None, metavar="TAG|PATH",
                     help="Backbone weights, when the detector's recorded source is not available here.")(f)
    f = click.option("--precision", type=click.Choice(["auto", "bf16", "fp32"]), default=None,
                     help="The backbone's arithmetic on CUDA (a CPU always runs fp32). auto: fp32 for the published "
                          "detectors (their authors' scores), bf16 for I2P detectors (what finetune validated) "
                          "[default: auto].")(f)
    return f


def _detector_option(multiple: bool):
    more = " Repeat to compare several in one table." if multiple else ""
    return click.option("--detector", "-d", "detector_file", envvar="I2PSCAN_DETECTOR", default=None,
                        multiple=multiple, metavar="NAME|FILE",
                        help="A shipped detector (`i2pscan detectors`) or a detector file from `i2pscan finetune` "
                             f"[env: I2PSCAN_DETECTOR; default: rine-2class].{more}")


def _default_detector(given):
    """The detector asked for, or the shipped default, announced on stderr."""
    if given:
        return given
    from i2pscan.model.published import DEFAULT_DETECTOR

    _log(f"no --detector given: using the shipped {DEFAULT_DETECTOR} (RINE, ECCV 2024; `i2pscan info "
         f"{DEFAULT_DETECTOR}`); choose another with -d or I2PSCAN_DETECTOR, or scan without a model with "
         f"--metadata-only")
    return DEFAULT_DETECTOR


def _run_options(f):
    """Where and how a job runs: --device, --batch-size, --workers, --quiet."""
    return _device_option(_loader_options(_quiet_option(f)))


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
        from i2pscan import console

        console.set_quiet(kwargs.get("quiet", False))
        try:
            return f(*args, **kwargs)
        except I2PError as exc:
            if os.environ.get("I2PSCAN_DEBUG"):  # the cause's traceback too (e.g. what open_clip raised)
                import traceback

                traceback.print_exception(exc, file=sys.stderr)
            raise UserError(str(exc)) from exc
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except Exception as exc:  # a bug or an environment problem: still one line and exit 2, never 1 ("flagged")
            if os.environ.get("I2PSCAN_DEBUG"):
                raise
            raise UserError(f"internal error: {one_line(exc, 300)} "
                            f"(set I2PSCAN_DEBUG=1 for the traceback)") from exc

    return wrapper


class _Group(click.Group):
    def list_commands(self, ctx):
        return ["calibrate", "finetune", "scan", "evaluate", "info", "detectors", "report", "demo-data"]


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
    No training at all: `i2pscan scan photos/` uses the shipped rine-2class (`i2pscan detectors`).

    Exit codes: 0 nothing flagged, 1 something flagged, 2 usage or configuration error (or a
    scan stopped before the end), 3 nothing flagged but some files unreadable.
    """


@cli.command()
@click.argument("data", type=click.Path(exists=True, path_type=str))
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False, path_type=str),
              help="Calibration file to write (.safetensors).")
@click.option("--backbone", default="ViT-L-14", show_default=True,
              help="open_clip model name, or i2p-tiny / i2p-tiny-deep (shipped, CPU-sized).")
@click.option("--pretrained", default=None, metavar="TAG|PATH",
              help="open_clip pretrained tag or a local weights file [default: openai; the shipped file for tiny backbones].")
@click.option("--quick-gelu/--no-quick-gelu", "quick_gelu", default=None,
              help="Activation of weights from a file when neither a -quickgelu name nor an open_clip_config.json "
                   "beside the file says it [default: refuse to guess where the model's known weights differ].")
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
@_run_options
@_command
def calibrate(data, out, backbone, pretrained, quick_gelu, top_k, gamma, folds, view, max_per_class, subset, split, plot, seed,
              device, batch_size, workers, quiet):
    """Find the backbone layers that carry forgery cues in a labelled sample DATA.

    DATA is a folder with real|0_real|nature and fake|1_fake|ai|synthetic folders at any depth
    (GenImage and ForenSynths layouts work as they are), or a CSV/Parquet manifest with columns
    path,label[,subset]. Writes per-layer probe AUC, accuracy, Fisher ratio, importance, the
    critical layers S and L* (the deepest block the detector needs) to --out.
    """
    from i2pscan.train import calibrate as cal_mod
    from i2pscan.model.device import default_batch_size, resolve_device
    from i2pscan.model.backbone import load_backbone
    from i2pscan.io.files import check_writable
    from i2pscan.io.pool import default_workers
    from i2pscan.train.samples import load_labelled

    check_writable(out)
    if plot:
        check_writable(plot)
    where = resolve_device(device)
    config = cal_mod.CalibrateConfig(top_k=top_k, gamma=gamma, folds=folds, view=view, seed=seed,
                                     batch_size=batch_size or default_batch_size(where),
                                     workers=default_workers() if workers is None else workers)
    sample = load_labelled(data, max_per_class=max_per_class, seed=seed, subsets=subset, split=split)
    model = load_backbone(backbone, pretrained or "default", device=where, quick_gelu=quick_gelu)
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
              help="Validation data (same forms as DATA; --subset applies to it, --split does not); "
                   "default: hold out --val-split of DATA.")
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
@click.option("--crop-policies", default="1:mean", show_default=True, metavar="N:mean|max[,...]",
              help="Crop policies (scan --crops N --combine mean|max) to fit a threshold and temperature for; "
                   "1:mean is always fitted. A scan with another policy warns.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its checkpoint.")
@click.option("--dry-run", is_flag=True, help="Choose the mask, print what would be tuned, and stop.")
@_sample_options
@_seed_option
@_run_options
@_command
def finetune(data, calibration_file, out, pretrained, strategy, rho, q, epochs, max_steps, accumulate, lr_backbone,
             lr_head, weight_decay, warmup_steps, contrastive_weight, val_data, val_split, target_fpr,
             sensitivity_samples, saliency_samples, sensitivity_target, crop_policies, resume, dry_run, max_per_class, subset, split,
             seed, device, batch_size, workers, quiet):
    """Train a detector on labelled DATA: sparse updates inside a low-sensitivity subspace.

    Uses the backbone and critical layers of --calibration. Only a fraction --rho of the attention
    and MLP weights of blocks 1..L* move (chosen by --strategy), plus a small head over the
    critical layers. Keeps the epoch with the best validation AUC, fits a temperature and a
    threshold at --target-fpr, and writes the detector to --out. Ctrl-C leaves a checkpoint;
    run again with --resume to continue.
    """
    from i2pscan.model.device import default_batch_size, resolve_device
    from i2pscan.model.backbone import load_backbone
    from i2pscan.model.weights import recorded_weights
    from i2pscan.train.calibrate import Calibration
    from i2pscan.io.pool import default_workers
    from i2pscan.train.samples import load_labelled
    from i2pscan.train.finetune import FinetuneConfig, finetune as run_finetune, plan_mask
    from i2pscan.train.checkpoint import checkpoint_path
    from i2pscan.io.files import check_writable

    if not dry_run:
        check_writable(out)
    where = resolve_device(device)
    config = FinetuneConfig(strategy=strategy, rho=rho, q=q, epochs=epochs, max_steps=max_steps,
                            batch_size=batch_size or default_batch_size(where), accumulate=accumulate,
                            lr_backbone=lr_backbone, lr_head=lr_head, weight_decay=weight_decay,
                            warmup_steps=warmup_steps, contrastive_weight=contrastive_weight, val_split=val_split,
                            target_fpr=target_fpr, sensitivity_samples=sensitivity_samples,
                            saliency_samples=saliency_samples, sensitivity_target=sensitivity_target, seed=seed,
                            crop_policies=tuple(p for p in crop_policies.split(",") if p.strip()),
                            workers=default_workers() if workers is None else workers)
    cal = Calibration.load(calibration_file)
    train = load_labelled(data, max_per_class=max_per_class, seed=seed, subsets=subset, split=split)
    val = load_labelled(val_data, subsets=subset) if val_data else None
    model = load_backbone(cal.backbone["name"], recorded_weights(cal.backbone, pretrained), device=where,
                          quick_gelu=cal.backbone["model_config"].get("quick_gelu"))
    if dry_run:
        plan_mask(model, cal, train, config, val=val)
        return
    try:
        result = run_finetune(model, cal, train, out, config, val=val, resume=resume)
    except (KeyboardInterrupt, Terminated):
        if os.path.exists(checkpoint_path(out)):
            _log(f"interrupted: {checkpoint_path(out)} holds the last completed epoch; "
                 f"run the same command with --resume to continue")
        raise
    v = result.meta["training"]["validation"]
    _log(f"detector written to {out} ({os.path.getsize(out):,} bytes): best epoch "
         f"{result.meta['training']['best_epoch']}, validation AUC {v['val_auc']:.4f}, "
         f"threshold {result.meta['threshold']:.4f}")


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=str))
@_detector_option(multiple=False)
@_scoring_options
@click.option("--output", "-o", type=click.Path(path_type=str), default=None, metavar="REPORT.parquet|DIR/",
              help="Write a Parquet report with one row per file (written in closed shards, resumable); "
                   "a name ending in / writes a dataset folder of part files instead, for huge scans.")
@click.option("--resume", is_flag=True, help="Finish (or extend) the report of an interrupted scan; needs -o.")
@click.option("--overwrite", is_flag=True, help="Replace an existing report.")
@click.option("--format", "fmt", type=click.Choice(["table", "jsonl"]), default="table", show_default=True,
              help="stdout: a line per file, or one JSON object per file.")
@click.option("--flagged-only", is_flag=True, help="stdout: only the files flagged as synthetic (paths, or JSON rows).")
@click.option("-0", "--null", "null", is_flag=True, help="With --flagged-only: NUL-separated paths, for xargs -0.")
@click.option("--hash", "want_hash", is_flag=True, help="Add the sha256 of every file to the report.")
@click.option("--ext", "extensions", multiple=True, metavar="EXT[,EXT]",
              help="File extensions picked up in folders (default: jpg jpeg png webp bmp gif tif tiff, and "
                   "avif heic heif where a decoder is installed); repeatable.")
@click.option("--exclude", multiple=True, metavar="GLOB", help="Skip paths (below a folder) or names matching GLOB; repeatable.")
@click.option("--hidden", is_flag=True, help="Also scan hidden files and folders.")
@click.option("--follow-symlinks", is_flag=True, help="Follow symbolic links in folders (loops are detected).")
@click.option("--max-pixels", type=click.IntRange(min=1), default=None,
              help="Refuse images larger than this many pixels as decompression bombs [default: 178,956,970].")
@click.option("--flush-rows", type=click.IntRange(min=1), default=2048, show_default=True,
              help="Rows per report shard: at most this many files are scanned again after a kill.")
@click.option("--metadata-only", is_flag=True,
              help="No model: verdicts from each file's provenance metadata alone (synthetic, real for a "
                   "validating C2PA capture, unknown otherwise); no detector, backbone or weights are loaded.")
@click.option("--evidence", type=click.Choice(["all", "model"]), default=None,
              help="all: metadata declaring AI (C2PA, IPTC, generator parameters) flags a file whatever its "
                   "score; model: verdicts from the score alone (the evidence stays in the report) [default: all].")
@click.option("--c2pa-trust", type=click.Path(dir_okay=False, path_type=str), default=None, metavar="PEM",
              help="C2PA trust anchors (a PEM bundle, e.g. the C2PA trust list): signatures under them read "
                   "'trusted' instead of 'valid'.")
@click.option("--ray", "ray_address", default=None, metavar="auto|HOST:PORT|ray://HOST:PORT|local",
              help="Run the scan on a Ray cluster (pip install 'i2pscan[ray]'); local starts a private one.")
@_run_options
@_command
def scan(paths, detector_file, output, resume, overwrite, fmt, flagged_only, null, threshold, crops, combine,
         want_hash, extensions, exclude, hidden, follow_symlinks, max_pixels, pretrained, precision, flush_rows,
         metadata_only,
         evidence, c2pa_trust, ray_address, device, batch_size, workers, quiet):
    """Score every image under PATHS (files, folders, or - for paths on stdin).

    \b
    stdout carries results only; progress and the summary go to stderr. Exit codes:
      0  done, nothing flagged        1  done, at least one image flagged
      2  usage or configuration error, or stopped before the end (with -o, scored rows are
         kept and the message says to run again with --resume)
      3  done, nothing flagged, some files unreadable
    With --format/--flagged-only into a reader that leaves early (| head), the code reflects
    the rows printed before it left.
    Quarantine what is flagged:
      i2pscan scan photos/ -d detector.safetensors --flagged-only -0 | xargs -0 mv -t quarantine/
    """
    from i2pscan import scan as run_scan
    from i2pscan.scan.session import ScanStopped

    if null and not flagged_only:
        raise click.UsageError("-0 goes with --flagged-only")
    if ray_address == "local":
        from i2pscan.scan.ray import LOOPBACK_ENV

        os.environ.setdefault(LOOPBACK_ENV, "0")  # a private cluster listens on 127.0.0.1 only
    printer = _RowPrinter(fmt, flagged_only, null, stop_when_closed=output is None)
    exts = tuple(e.strip() for x in extensions for e in x.split(",") if e.strip()) or None
    try:
        outcome = run_scan(paths, output, None if metadata_only else detector_file, resume=resume, overwrite=overwrite,
                           metadata_only=metadata_only, on_row=printer, ray=ray_address, device=device,
                           pretrained=pretrained, precision=precision, extensions=exts, hidden=hidden,
                           follow_symlinks=follow_symlinks, exclude=exclude, stdin=sys.stdin.buffer,
                           flush_rows=flush_rows, crops=crops, combine=combine, threshold=threshold,
                           want_hash=want_hash, max_pixels=max_pixels, evidence=evidence,
                           c2pa_trust=c2pa_trust,
                           batch_size=batch_size, workers=workers)
    except ScanStopped as exc:
        if not isinstance(exc.cause, Exception):  # an interruption: say what is kept, exit as interrupted
            click.echo(str(exc), err=True)
            raise exc.cause from None
        raise
    if outcome.stopped:  # `i2pscan scan ... | head`: the code says what the reader was given
        _exit(_scan_exit_code(printer.flagged, printer.errors))
    _log(_describe(outcome.summary) + (f"; report: {short_path(output)}" if output else ""))
    _exit(_scan_exit_code(outcome.flagged, outcome.errors))


def _describe(summary) -> str:
    """The one-line summary printed after a scan."""
    why = ("by their metadata" if summary.threshold is None
           else f"(threshold {summary.threshold:.4f}" + (f"; {summary.by_metadata} by their metadata)"
                                                         if summary.by_metadata else ")"))
    text = (f"{summary.files} file(s) scanned in {summary.seconds:.1f} s ({summary.images_per_second:.1f}/s): "
            f"{summary.flagged} flagged as synthetic {why}, {summary.errors} unreadable")
    return text + (f"; {summary.skipped_done} already in the report" if summary.skipped_done else "")


def _scan_exit_code(flagged: int, errors: int) -> int:
    return EXIT_FLAGGED if flagged else EXIT_UNREADABLE if errors else EXIT_CLEAN


def _exit(code: int) -> None:
    """End the command with an exit code (works under click's runner as well as from the shell)."""
    click.get_current_context().exit(code)


class _RowPrinter:
    """A callback printing each row to stdout as asked. When the reader goes away (a closed
    pipe), printing stops; the scan stops too unless a report is being written. ``flagged`` and
    ``errors`` count the rows handed out before that (rows --flagged-only leaves out included), so
    that the exit code of ``scan ... | head -1`` reflects what the reader was given."""

    def __init__(self, fmt: str, flagged_only: bool, null: bool, stop_when_closed: bool):
        self.fmt, self.flagged_only, self.null, self.stop_when_closed = fmt, flagged_only, null, stop_when_closed
        self.terminal = sys.stdout.isatty()
        self.closed = False
        self.flagged = self.errors = 0

    def __call__(self, row: dict) -> None:
        from i2pscan.report.read import row_line
        from i2pscan.scan.rows import row_json

        if self.closed:
            return
        if not self.flagged_only or row["verdict"] == "synthetic":
            if self.fmt == "jsonl":
                data = (row_json(row) + "\n").encode("utf-8")
            elif self.flagged_only:
                raw = row["path_raw"] if row["path_raw"] is not None else row["path"].encode("utf-8")
                data = raw + (b"\0" if self.null else b"\n")
            else:
                data = (row_line(row) + "\n").encode("utf-8", "backslashreplace")
            try:
                if self.terminal:  # as text, so that a progress bar on the same terminal stays below the lines
                    sys.stdout.write(data.decode("utf-8", "backslashreplace"))
                    sys.stdout.flush()
                else:
                    sys.stdout.buffer.write(data)
                    sys.stdout.buffer.flush()
            except BrokenPipeError:
                self.closed = True
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())  # so that the interpreter's final flush stays quiet
                os.close(devnull)
                if self.stop_when_closed:
                    from i2pscan.scan.session import StopScan

                    raise StopScan() from None
                return
        self.flagged += row["verdict"] == "synthetic"
        self.errors += row["verdict"] == "error"


@cli.command()
@click.argument("data", type=click.Path(exists=True, path_type=str))
@_detector_option(multiple=True)
@_scoring_options
@click.option("--out", "-o", type=click.Path(dir_okay=False, path_type=str), default=None, metavar="FILE",
              help="Also write the table: .parquet, .csv or .md.")
@click.option("--plot", "plot_dir", type=click.Path(file_okay=False, path_type=str), default=None, metavar="DIR",
              help="Write ROC curves and score histograms as PNGs into DIR (needs matplotlib).")
@click.option("--perturb", "perturbations", multiple=True, metavar="KIND:VALUE",
              help="Degrade images before scoring: jpeg:65, jpeg:30, blur:3, blur:5, resize:0.5, or none "
                   "(clean); repeatable, one evaluation each.")
@_sample_options
@_seed_option
@_run_options
@_command
def evaluate(data, detector_file, out, plot_dir, perturbations, threshold, crops, combine, pretrained, precision,
             max_per_class, subset, split, seed, device, batch_size, workers, quiet):
    """Measure a detector on labelled DATA: accuracy, AP, AUC per subset (generator).

    DATA takes the forms `calibrate` takes (GenImage's <generator>/val/{ai,nature} and
    ForenSynths' <set>/[class/]{0_real,1_fake} work as they are; the first folder names the
    subset). Prints per subset and overall: accuracy on real, fake and their mean at the
    detector's threshold and at 0.5, AP, AUC, best-threshold accuracy, TPR at 1% and 5% FPR, and
    the unweighted mean over subsets.
    """
    from i2pscan.io.pixels import parse_perturbation
    from i2pscan.evaluate import CLEAN, plot, print_result, write_result
    from i2pscan.io.files import check_writable

    if out and not out.lower().endswith((".parquet", ".csv", ".md")):
        raise click.UsageError("--out must end in .parquet, .csv or .md")
    perturbs = tuple(CLEAN if p == CLEAN else parse_perturbation(p) for p in perturbations) or (CLEAN,)
    if out:
        check_writable(out)
    if plot_dir:
        os.makedirs(plot_dir, exist_ok=True)
        check_writable(os.path.join(plot_dir, "roc.png"))
    from i2pscan import evaluate as run_evaluate

    result = run_evaluate(data, list(detector_file) or [_default_detector(None)], perturbations=perturbs, device=device,
                          pretrained=pretrained, precision=precision or "auto", max_per_class=max_per_class,
                          subsets=subset, split=split, seed=seed, crops=crops, combine=combine, threshold=threshold,
                          batch_size=batch_size, workers=workers)
    results = result.by_detector or [(None, result)]
    print_result(result)
    if out:
        write_result(result, out)
        _log(f"table written to {out}")
    if plot_dir:
        for name, one in results:
            folder = plot_dir if len(results) == 1 else os.path.join(plot_dir, _slug(name))
            for path in plot(one, folder):
                _log(f"plot: {path}")


@cli.command()
@click.argument("report_file", metavar="REPORT.parquet", type=click.Path(exists=True, dir_okay=False, path_type=str))
@click.option("--top", type=click.IntRange(min=0), default=20, show_default=True, help="How many flagged files to list.")
@click.option("--html", "html_dir", type=click.Path(file_okay=False, path_type=str), default=None, metavar="DIR",
              help="Instead of the summary, write a review page for moderators into DIR (index.html, thumbs/).")
@click.option("--open", "open_page", is_flag=True, help="With --html: open the page in the system browser.")
@click.option("--max-thumbs", type=click.IntRange(min=0), default=None, metavar="N",
              help="With --html: thumbnails for at most N files, flagged first by score [default: 5000].")
@click.option("--root", type=click.Path(exists=True, file_okay=False, path_type=str), default=None,
              help="With --html: the folder the report's relative paths start from [default: the current folder].")
@click.option("--workers", type=click.IntRange(min=0), default=None, metavar="N",
              help="With --html: thumbnail processes (default: from the CPU count; 0 decodes in this process).")
@_quiet_option
@_command
def report(report_file, top, html_dir, open_page, max_thumbs, root, workers, quiet):
    """Summarise a scan report: counts, the detector and options used, and the top flagged files.

    With --html DIR, write a static review page instead (works offline, from file://): cards with
    thumbnails, filters, keyboard, a large view, score histograms, and decisions a moderator
    exports as a CSV path,label that calibrate, finetune and evaluate accept. Prints the page's path.
    """
    if html_dir is None:
        given = [name for name, value in (("--open", open_page), ("--max-thumbs", max_thumbs is not None),
                                          ("--root", root), ("--workers", workers is not None)) if value]
        if given:
            raise click.UsageError(f"{given[0]} goes with --html DIR")
    else:
        return _review_page(report_file, html_dir, open_page, max_thumbs, root, workers)
    from i2pscan.report.read import read_report

    s = read_report(report_file, top)
    from i2pscan import console

    meta = s.meta
    det = meta.get("detector", {})
    rows = [["report", report_file], ["files", s.files], ["flagged as synthetic", s.synthetic], ["real", s.real],
            ["unreadable", s.errors],
            ["detector", "none (--metadata-only)" if meta.get("options", {}).get("metadata_only") else
                         f"{meta.get('detector_path', '?')} ({str(meta.get('detector_id', '?'))[:12]}…), "
                         f"{det.get('backbone', {}).get('name', '?')}"],
            ["scanned", f"{meta.get('started', '?')} to {meta.get('finished', '?')} with i2pscan "
                        f"{meta.get('i2pscan_version', '?')}"]]
    if s.unknown:
        rows.insert(4, ["unknown (metadata only)", s.unknown])
    console.table(None, ["", ""], rows, to_stdout=True)
    if s.by_provenance is not None:
        console.table("by provenance", ["provenance", "files"],
                      [[k if k is not None else "(unread)", v] for k, v in s.by_provenance.items()], to_stdout=True)
    if s.by_generator:
        console.table("by generator (from metadata)", ["generator", "files"], [[k, v] for k, v in s.by_generator.items()],
                      to_stdout=True)
    if s.top:
        console.table(f"top {len(s.top)} flagged", ["score", "path"], [[r["score"], r["path"]] for r in s.top],
                      to_stdout=True)


def _review_page(report_file, html_dir, open_page, max_thumbs, root, workers):
    from i2pscan import console
    from i2pscan.report.review import DEFAULT_MAX_THUMBS, build_page, default_workers, open_in_browser

    page = build_page(report_file, html_dir, DEFAULT_MAX_THUMBS if max_thumbs is None else max_thumbs, root=root,
                      workers=default_workers() if workers is None else workers, progress=console.progress)
    missing = sum(page.thumb_failures.values())
    _log(f"review page: {page.rows:,} files, {page.thumbs:,} thumbnails"
         + (f" ({missing:,} files gave none, e.g. {next(iter(page.thumb_failures))})" if missing else "")
         + f", {page.seconds:.1f} s")
    click.echo(page.index)
    if open_page and not open_in_browser(page.index):
        _log(f"no display to open a browser on: open {page.index} in a browser")


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
    three toy upsampling generators (tconv, pixelshuffle, bilinear), in GenImage's layout
    OUT/<generator>/{train,val}/{nature,ai}. It demonstrates the pipeline, not real detection.
    """
    from i2pscan.train.toydata import make_toy_dataset

    counts = make_toy_dataset(out, train_per_class, val_per_class, tile, seed=seed)
    _log(f"wrote {sum(counts.values())} images to {out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


@cli.command()
@click.argument("file", metavar="NAME|FILE")
@click.option("--json", "as_json", is_flag=True, help="Print the file's metadata as JSON.")
@_command
def info(file, as_json):
    """Show what a detector or calibration FILE (or a shipped detector NAME) holds and how it was made."""
    from i2pscan.inspect import describe
    from i2pscan.model.published import resolve

    describe(resolve(file), as_json=as_json)


@cli.command()
@_command
def detectors():
    """List the detectors that ship with i2pscan (use a NAME with -d, and `i2pscan info NAME`)."""
    from i2pscan.inspect import list_shipped

    list_shipped()


def _slug(name: str) -> str:
    base = os.path.basename(name)
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in (base[:-len(".safetensors")] if base.endswith(".safetensors") else base))


def _log(message: str) -> None:
    from i2pscan import console

    console.log(message)


class Terminated(BaseException):
    """SIGTERM (a supervisor, ``timeout``, ``docker stop``) as an exception, so that a stopped
    scan keeps its rows and says how to resume, as it does for Ctrl-C."""


def _on_sigterm(signum, frame):
    raise Terminated()


def main(argv=None) -> None:
    """Console-script entry point: exit codes as documented, no traceback for user errors."""
    import signal

    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        code = cli.main(args=argv, prog_name="i2pscan", standalone_mode=False)
    except Terminated:
        click.echo("Terminated.", err=True)
        sys.exit(143)
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
