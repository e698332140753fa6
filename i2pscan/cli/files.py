"""``report``, ``info`` and ``detectors``: reading what i2pscan wrote and what ships with it."""

from __future__ import annotations

import click

from i2pscan.cli.app import command
from i2pscan.cli.options import OUTPUT, RUN, Command, option, quiet_option

INFO_EXIT_CODES = "0 shown; 2 not a detector or calibration file, or a damaged one"


@click.command(cls=Command, sections=(OUTPUT, RUN),
               exit_codes="0 done; 1 with --decisions: reviewers disagree on some files (listed on stderr); "
                          "2 not a readable report or decisions file, or a folder in the way")
@click.argument("report_file", metavar="REPORT.parquet|DIR/", type=click.Path(exists=True, path_type=str))
@option("--top", type=click.IntRange(min=0), default=20, show_default=True, group=OUTPUT,
        help="How many flagged files to list.")
@option("--html", "html_dir", type=click.Path(file_okay=False, path_type=str), default=None, metavar="DIR", group=OUTPUT,
        help="Instead of the summary, write a review page for moderators into DIR (index.html, thumbs/).")
@option("--open", "open_page", is_flag=True, group=OUTPUT, help="With --html: open the page in the system browser.")
@option("--max-thumbs", type=click.IntRange(min=0), default=None, metavar="N", group=OUTPUT,
        help="With --html: thumbnails for at most N files, flagged first by score [default: 5000].")
@option("--root", type=click.Path(exists=True, file_okay=False, path_type=str), default=None, group=OUTPUT,
        help="With --html or --decisions: the folder the report's relative paths start from [default: the current "
             "folder].")
@option("--workers", type=click.IntRange(min=0), default=None, metavar="N",
        help="With --html: thumbnail processes, isolated as a scan's decoding workers "
             "(default: from the CPU count; at least 1).")
@option("--decisions", "decision_files", multiple=True, metavar="CSV", group=OUTPUT,
        type=click.Path(exists=True, dir_okay=False, path_type=str),
        help="Instead of the summary, merge reviewers' decision files (as the review page exports them; "
             "repeatable): the agreed decisions go to stdout as one decisions CSV, the files reviewers disagree "
             "on are listed on stderr.")
@quiet_option
@command
def report(report_file, top, html_dir, open_page, max_thumbs, root, workers, decision_files, quiet):
    """Summarise a scan report (a file, or the dataset folder scan -o DIR/ writes): counts, the detector
    and options used, what flagged files, and the top flagged files with why.

    With --html DIR, write a static review page instead (works offline, from file://): cards with
    thumbnails and the reason for each verdict, filters, keyboard, a large view, score histograms,
    and decisions (with notes, reviewer and time) a moderator exports as a CSV whose path,label
    columns calibrate, finetune and evaluate accept. Prints the page's path. With --decisions
    a.csv --decisions b.csv, merge reviewers' exported decisions about the report.
    """
    from i2pscan import render

    if decision_files:
        if html_dir is not None:
            raise click.UsageError("--decisions and --html are separate steps: merge first, or build the page")
        return _merge_decisions(report_file, list(decision_files), root)
    if html_dir is None:
        given = [name for name, value in (("--open", open_page), ("--max-thumbs", max_thumbs is not None),
                                          ("--root", root), ("--workers", workers is not None)) if value]
        if given:
            raise click.UsageError(f"{given[0]} goes with --html DIR")
        from i2pscan.report.read import read_report

        return render.report_summary(report_file, read_report(report_file, top))
    _review_page(report_file, html_dir, open_page, max_thumbs, root, workers)


def _review_page(report_file, html_dir, open_page, max_thumbs, root, workers) -> None:
    from i2pscan import render
    from i2pscan.io.pool import default_workers
    from i2pscan.progress import progress
    from i2pscan.report.review import DEFAULT_MAX_THUMBS, build_page, open_in_browser

    page = build_page(report_file, html_dir, DEFAULT_MAX_THUMBS if max_thumbs is None else max_thumbs, root=root,
                      workers=default_workers() if workers is None else workers, progress=progress)
    missing = sum(page.thumb_failures.values())
    render.log(f"review page: {page.rows:,} files, {page.thumbs:,} thumbnails"
               + (f" ({missing:,} files gave none, e.g. {next(iter(page.thumb_failures))})" if missing else "")
               + f", {page.seconds:.1f} s")
    click.echo(page.index)
    if open_page and not open_in_browser(page.index):
        render.log(f"no display to open a browser on: open {page.index} in a browser")


def _merge_decisions(report_file: str, files: list[str], root: str | None) -> None:
    import os
    import sys

    from i2pscan import render
    from i2pscan.cli.app import EXIT_CLEAN, EXIT_FLAGGED, exit_with
    from i2pscan.report.decisions import merge, write_csv

    merged = merge(report_file, files, root)
    write_csv(merged.agreed, sys.stdout.buffer)
    sys.stdout.buffer.flush()
    for path, decisions in merged.conflicts.items():
        render.log(f"conflict: {os.fsdecode(path)}: " + ", ".join(f"{d.reviewer} {d.label}" for d in decisions))
    render.log(f"{len(merged.agreed):,} decision(s) agreed, {len(merged.conflicts):,} conflict(s) left out"
               + (f", {merged.not_in_report:,} naming no file of the report" if merged.not_in_report else ""))
    exit_with(EXIT_FLAGGED if merged.conflicts else EXIT_CLEAN)


@click.command(cls=Command, exit_codes=INFO_EXIT_CODES)
@click.argument("file", metavar="NAME|FILE")
@option("--json", "as_json", is_flag=True, group=OUTPUT, help="Print the file's metadata as JSON.")
@command
def info(file, as_json):
    """Show what a detector or calibration FILE (or a shipped detector NAME) holds and how it was made."""
    from i2pscan import render
    from i2pscan.model.shipped import resolve
    from i2pscan.model.tensorfile import read_meta

    path = resolve(file)
    kind, meta = read_meta(path, ("detector", "calibration"))
    render.info(path, kind, meta, as_json=as_json)


@click.command(cls=Command, exit_codes="0 listed; 2 an installation that lacks its shipped files")
@command
def detectors():
    """List the detectors that ship with i2pscan (use a NAME with -d, and `i2pscan info NAME`)."""
    from i2pscan import render
    from i2pscan.model.shipped import DEFAULT_DETECTOR, shipped

    render.detectors(shipped(), DEFAULT_DETECTOR)
