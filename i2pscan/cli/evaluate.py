"""``evaluate``: a detector's accuracy per subset (generator) of a labelled sample."""

from __future__ import annotations

import os

import click

from i2pscan.cli.app import command
from i2pscan.cli.options import (DATA, DETECTOR, OUTPUT, RUN, Command, detector_option, option, run_options,
                                 sample_options, scoring_options, seed_option)


@click.command(cls=Command, sections=(OUTPUT, DETECTOR, DATA, RUN))
@click.argument("data", type=click.Path(exists=True, path_type=str))
@option("--out", "-o", type=click.Path(dir_okay=False, path_type=str), default=None, metavar="FILE", group=OUTPUT,
        help="Also write the table: .parquet, .csv or .md.")
@option("--plot", "plot_dir", type=click.Path(file_okay=False, path_type=str), default=None, metavar="DIR",
        group=OUTPUT, help="Write ROC curves and score histograms as PNGs into DIR (needs matplotlib).")
@detector_option(multiple=True)
@scoring_options
@option("--perturb", "perturbations", multiple=True, metavar="KIND:VALUE", group=DATA,
        help="Degrade images before scoring: jpeg:65, jpeg:30, blur:3, blur:5, resize:0.5, or none (clean); "
             "fakes:jpeg:Q re-encodes the fake images only (JPEG-aligned evaluation, for GenImage's JPEG reals "
             "and PNG fakes); repeatable, one evaluation each.")
@sample_options
@seed_option
@run_options
@command
def evaluate(data, detector_file, out, plot_dir, perturbations, subset, quiet, **given):
    """Measure detectors on labelled DATA: accuracy, AP, AUC per subset (generator).

    DATA takes the forms `calibrate` takes (GenImage's <generator>/val/{ai,nature} and
    ForenSynths' <set>/[class/]{0_real,1_fake} work as they are; the first folder names the
    subset). Prints per subset and overall: accuracy on real, fake and their mean at the
    detector's threshold and at 0.5, AP, AUC, best-threshold accuracy, TPR at 1% and 5% FPR and
    at the detector's target FPR, the FPR at its threshold, its recorded embedding drift, and the
    unweighted mean over subsets.
    """
    from i2pscan import api, plots, render
    from i2pscan.evaluate import parse_perturbations, write_result
    from i2pscan.io.files import check_writable

    if out and not out.lower().endswith((".parquet", ".csv", ".md")):
        raise click.UsageError("--out must end in .parquet, .csv or .md")
    perturbs = parse_perturbations(perturbations)
    if out:
        check_writable(out)
    if plot_dir:
        os.makedirs(plot_dir, exist_ok=True)
        check_writable(os.path.join(plot_dir, "roc.png"))
    result = api.evaluate(data, list(detector_file) or ["rine-2class"], perturbations=perturbs, subsets=subset, **given)
    render.evaluation(result)
    if out:
        write_result(result, out)
        render.log(f"table written to {out}")
    for name, one in (result.by_detector or [(None, result)]) if plot_dir else ():
        folder = plot_dir if not result.by_detector else os.path.join(plot_dir, _slug(name))
        for path in plots.evaluation(one, folder):
            render.log(f"plot: {path}")


def _slug(name: str) -> str:
    base = os.path.basename(name)
    base = base[:-len(".safetensors")] if base.endswith(".safetensors") else base
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in base)
