"""``scan``: files and folders in, one report row each, results on stdout."""

from __future__ import annotations

import sys

import click

from i2pscan.cli.app import EXIT_CLEAN, EXIT_FLAGGED, EXIT_UNREADABLE, command, exit_with, with_flags
from i2pscan.cli.options import (DETECTOR, INPUT, OUTPUT, RUN, Command, detector_option, option, run_options,
                                 scoring_options)
from i2pscan.cli.output import RowPrinter

EXIT_CODES = ("0 done, nothing flagged; 1 done, at least one image flagged; 2 usage or configuration error, or "
              "stopped before the end (with -o, scored rows are kept and the message says to run again with "
              "--resume); 3 done, nothing flagged, some files unreadable; 130 interrupted (Ctrl-C); 143 terminated "
              "(SIGTERM). With --format/--flagged-only into a reader that leaves early (| head), the code reflects "
              "the rows printed before it left")


class _Remember:
    """Hands rows to the printer, remembering which flagged files it printed, so that after a resume
    ``--flagged-only`` also prints the files flagged in the report's earlier runs (and says so)."""

    def __init__(self, printer: RowPrinter, flagged_only: bool):
        self.printer, self.flagged_only, self.keys = printer, flagged_only, set()

    def __call__(self, row: dict) -> None:
        if self.flagged_only and row["verdict"] == "synthetic":
            from i2pscan.report.schema import row_key

            self.keys.add(row_key(row))
        self.printer(row)

    def earlier_runs(self, outcome) -> None:
        if not (self.flagged_only and outcome.report and outcome.summary.skipped_done):
            return
        from i2pscan import render
        from i2pscan.report.read import flagged_rows
        from i2pscan.report.schema import row_key

        earlier = 0
        for row in flagged_rows(outcome.report):
            if row_key(row) not in self.keys and not self.printer.closed:
                self.printer(row)
                earlier += 1
        render.log(f"--flagged-only: {earlier} of the files printed were flagged by earlier runs of this report")


@click.command(cls=Command, sections=(OUTPUT, INPUT, DETECTOR, RUN), exit_codes=EXIT_CODES)
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=str))
@option("--out", "--output", "-o", "output", type=click.Path(path_type=str), default=None, group=OUTPUT,
        metavar="REPORT.parquet|DIR/",
        help="Write a Parquet report with one row per file (written in closed shards, resumable); a name ending "
             "in / writes a dataset folder of part files instead, for huge scans.")
@option("--resume", is_flag=True, group=OUTPUT, help="Finish (or extend) the report of an interrupted scan; needs -o.")
@option("--overwrite", is_flag=True, group=OUTPUT, help="Replace an existing report.")
@option("--format", "fmt", type=click.Choice(["table", "jsonl"]), default="table", show_default=True, group=OUTPUT,
        help="stdout: a line per file, or one JSON object per file.")
@option("--flagged-only", is_flag=True, group=OUTPUT,
        help="stdout: only the files flagged as synthetic (paths, or JSON rows); with --resume, those of the "
             "report's earlier runs too.")
@option("-0", "--null", "null", is_flag=True, group=OUTPUT, help="With --flagged-only: NUL-separated paths, for xargs -0.")
@option("--hash", "want_hash", is_flag=True, group=OUTPUT, help="Add the sha256 of every file to the report.")
@option("--flush-rows", type=click.IntRange(min=1), default=2048, show_default=True, group=OUTPUT,
        help="Rows per report shard: at most this many files are scanned again after a kill.")
@option("--metadata-only", is_flag=True, group=INPUT,
        help="No model: verdicts from each file's provenance metadata alone (synthetic, real for a validating "
             "C2PA capture, unknown otherwise); no detector, backbone or weights are loaded.")
@option("--ext", "extensions", multiple=True, metavar="EXT[,EXT]", group=INPUT,
        help="File extensions picked up in folders, replacing the default list (every image extension: jpg jpeg "
             "png webp gif tif avif heic heif ..., and camera raw, svg and jxl, which get a row saying why they are "
             "not scored); repeatable. Image files the list leaves out are counted in a warning.")
@option("--exclude", multiple=True, metavar="GLOB", group=INPUT,
        help="Skip paths (below a folder) or names matching GLOB; repeatable.")
@option("--hidden", is_flag=True, group=INPUT, help="Also scan hidden files and folders.")
@option("--follow-symlinks", is_flag=True, group=INPUT, help="Follow symbolic links in folders (loops are detected).")
@option("--max-pixels", type=click.IntRange(min=1), default=None, group=INPUT,
        help="Refuse images larger than this many pixels as decompression bombs [default: 178,956,970].")
@option("--decode-on", "decode_on", type=click.Choice(["cpu", "device"]), default=None, group=RUN,
        help="Where JPEGs are decoded: cpu (decoding workers; crops bit-identical to a full decode) or device "
             "(where the model runs: nvjpeg on CUDA, a few levels off some pixels; see docs/scanning.md) "
             "[default: cpu].")
@detector_option(multiple=False)
@scoring_options
@option("--evidence", type=click.Choice(["all", "model"]), default=None, group=DETECTOR,
        help="all: metadata declaring AI (C2PA, IPTC, generator parameters) flags a file whatever its score; "
             "model: verdicts from the score alone (the evidence stays in the report) [default: all].")
@option("--c2pa-trust", type=click.Path(dir_okay=False, path_type=str), default=None, metavar="PEM", group=DETECTOR,
        help="C2PA trust anchors (a PEM bundle, e.g. the C2PA trust list): signatures under them read 'trusted' "
             "instead of 'valid'.")
@option("--ray", "ray_address", default=None, metavar="auto|HOST:PORT|ray://HOST:PORT|local", group=RUN,
        help="Run the scan on a Ray cluster (pip install 'i2pscan[ray]'); local starts a private one.")
@run_options
@command
def scan(paths, output, fmt, flagged_only, null, detector_file, metadata_only, extensions, ray_address, quiet, **given):
    """Score every image under PATHS (files, folders, or - for paths on stdin).

    stdout carries results only; progress and the summary go to stderr. Quarantine what is flagged:

    \b
      i2pscan scan photos/ -d detector.safetensors --flagged-only -0 | xargs -0 mv -t quarantine/
    """
    from i2pscan import render, scan as run_scan
    from i2pscan.scan.session import ScanStopped

    if null and not flagged_only:
        raise click.UsageError("-0 goes with --flagged-only")
    printer = RowPrinter(fmt, flagged_only, null, stop_when_closed=output is None)
    printed = _Remember(printer, flagged_only)
    exts = tuple(e.strip() for x in extensions for e in x.split(",") if e.strip()) or None
    try:
        outcome = run_scan(paths, output, None if metadata_only else detector_file, metadata_only=metadata_only,
                           on_row=printed, ray=ray_address, extensions=exts, stdin=sys.stdin.buffer, **given)
    except ScanStopped as exc:
        if not isinstance(exc.cause, Exception):  # an interruption: say what is kept, exit as interrupted
            click.echo(with_flags(str(exc)), err=True)
            raise exc.cause from None
        raise
    if not outcome.stopped:  # `i2pscan scan ... | head`: the code says what the reader was given
        printed.earlier_runs(outcome)
        render.log(render.scan_summary(outcome.summary, output))
    counts = (printer.flagged, printer.errors) if outcome.stopped else (outcome.flagged, outcome.errors)
    exit_with(EXIT_FLAGGED if counts[0] else EXIT_UNREADABLE if counts[1] else EXIT_CLEAN)
