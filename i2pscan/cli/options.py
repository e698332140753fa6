"""Options shared by several commands, as decorator factories, and help grouped into sections.

Click options default to None where a later layer decides (the detector file, the device): the
library's resolver applies "given, then the detector's, then the default", once.
"""

from __future__ import annotations

import click

# Help sections, the everyday ones first.
OUTPUT, INPUT, DETECTOR, TRAINING, DATA, RUN = "Output", "Input", "Detector and scoring", "Training", "Data", "Running"


class Option(click.Option):
    """An option that says which help section it belongs to (``group``)."""

    def __init__(self, *args, group: str = RUN, **kwargs):
        super().__init__(*args, **kwargs)
        self.group = group


class Command(click.Command):
    """A command whose options are listed in sections (``Option.group``), in the order given by
    ``sections``, and whose help ends with the exit codes it can return."""

    def __init__(self, *args, sections: tuple[str, ...] = (OUTPUT, INPUT, DETECTOR, TRAINING, DATA, RUN),
                 exit_codes: str = "0 done; 2 usage or configuration error; 130 interrupted; 143 terminated",
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.sections, self.exit_codes = sections, exit_codes

    def format_options(self, ctx, formatter):
        grouped: dict[str, list] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None:
                grouped.setdefault(getattr(param, "group", "Other"), []).append(record)
        for section in [*self.sections, *(g for g in grouped if g not in self.sections)]:
            if grouped.get(section):
                with formatter.section(section):
                    formatter.write_dl(grouped[section])

    def format_epilog(self, ctx, formatter):
        super().format_epilog(ctx, formatter)
        formatter.write_paragraph()
        formatter.write_text(f"Exit codes: {self.exit_codes}.")


def option(*decls, group: str = RUN, **kwargs):
    """click.option with a help section."""
    return click.option(*decls, cls=Option, group=group, **kwargs)


def device_option(f):
    return option("--device", default="auto", show_default=True, metavar="auto|cpu|cuda|cuda:N|mps",
                  help="Where the model runs; an explicit device is used or refused, never replaced.")(f)


def loader_options(f):
    f = option("--workers", type=click.IntRange(min=0), default=None, metavar="N",
               help="Decoding processes (default: from the CPU count; 0 decodes in the main process).")(f)
    f = option("--batch-size", type=click.IntRange(min=1), default=None, metavar="B",
               help="Images per forward pass (default: 32 on CPU, 128 on a GPU).")(f)
    return f


def quiet_option(f):
    return option("-q", "--quiet", is_flag=True, help="No progress or log lines on stderr.")(f)


def seed_option(f):
    return option("--seed", type=int, default=0, show_default=True, help="Random seed.")(f)


def run_options(f):
    """Where and how a job runs: --device, --batch-size, --workers, --quiet."""
    return device_option(loader_options(quiet_option(f)))


def sample_options(f):
    f = option("--split", default=None, metavar="NAME", group=DATA,
               help="Only images below a folder of this name (e.g. train or val in GenImage).")(f)
    f = option("--subset", multiple=True, metavar="NAME", group=DATA,
               help="Only this subset (first folder under DATA, e.g. a generator); repeatable.")(f)
    f = option("--max-per-class", type=click.IntRange(min=1), default=None, metavar="N", group=DATA,
               help="Use a seeded sample of at most N images per class, spread over subsets.")(f)
    return f


def scoring_options(f):
    """What scan and evaluate share: the detector's weights, threshold and crops."""
    f = option("--combine", type=click.Choice(["mean", "max"]), default=None, group=DETECTOR,
               help="How the logits of several crops are combined [default: mean].")(f)
    f = option("--crops", type=click.IntRange(min=1), default=None, group=DETECTOR,
               help="Crops per image at native resolution: centre, then corners, then a grid [default: 1].")(f)
    f = option("--force-policy", "force_policy", is_flag=True, default=None, group=DETECTOR,
               help="Score with --crops/--combine the detector has no threshold fitted for, using its centre-crop "
                    "threshold (whose false-positive rate may differ) [default: refuse, exit 2].")(f)
    f = option("--threshold", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None, group=DETECTOR,
               help="Flag at this calibrated probability instead of the detector's threshold.")(f)
    f = option("--pretrained", default=None, metavar="TAG|PATH", group=DETECTOR,
               help="Backbone weights, when the detector's recorded source is not available here.")(f)
    f = option("--precision", type=click.Choice(["auto", "bf16", "fp32"]), default=None, group=DETECTOR,
               help="The backbone's arithmetic on CUDA (a CPU always runs fp32). auto: fp32 for the published "
                    "detectors (their authors' scores), bf16 for I2P detectors (what finetune validated) "
                    "[default: auto].")(f)
    return f


def detector_option(multiple: bool):
    more = " Repeat to compare several in one table." if multiple else ""
    return option("--detector", "-d", "detector_file", envvar="I2PSCAN_DETECTOR", default=None, multiple=multiple,
                  metavar="NAME|FILE", group=DETECTOR,
                  help="A shipped detector (`i2pscan detectors`) or a detector file from `i2pscan finetune` "
                       f"[env: I2PSCAN_DETECTOR; default: rine-2class].{more}")
