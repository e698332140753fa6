"""The ``i2pscan`` group and ``main``: the only place where exceptions and outcomes become exit codes.

Exit codes (as clamscan): 0 done, nothing flagged; 1 done, something flagged; 2 usage or
configuration error, or a scan that could not finish (its scored rows kept for --resume, and the
message says so); 3 done, nothing flagged, some files unreadable; 130 interrupted (Ctrl-C);
143 terminated (SIGTERM).
"""

from __future__ import annotations

import functools
import os
import signal
import sys

import click

from i2pscan.version import __version__
from i2pscan.errors import PARAMETER, I2PError, one_line
from i2pscan.terminal import visible

EXIT_CLEAN, EXIT_FLAGGED, EXIT_ERROR, EXIT_UNREADABLE = 0, 1, 2, 3
EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143
# name -> where the command lives (imported when used: `i2pscan --help` imports no model library)
COMMANDS = {
    "scan": "i2pscan.cli.scan:scan",
    "report": "i2pscan.cli.files:report",
    "info": "i2pscan.cli.files:info",
    "detectors": "i2pscan.cli.files:detectors",
    "evaluate": "i2pscan.cli.evaluate:evaluate",
    "calibrate": "i2pscan.cli.train:calibrate",
    "finetune": "i2pscan.cli.train:finetune",
    "demo-data": "i2pscan.cli.train:demo_data",
}


class Terminated(BaseException):
    """SIGTERM (a supervisor, ``timeout``, ``docker stop``) as an exception, so that a stopped
    scan keeps its rows and says how to resume, as it does for Ctrl-C."""


# library parameters whose flag is not --<name with dashes>
FLAGS = {"output": "-o", "detector": "-d", "want_hash": "--hash", "extensions": "--ext", "html_dir": "--html",
         "calibration_file": "--calibration", "val_data": "--val", "ray_address": "--ray"}


def with_flags(message: str) -> str:
    """A library message with its `parameter` names as this command line's flags."""
    return PARAMETER.sub(lambda m: FLAGS.get(m.group(1), "--" + m.group(1).replace("_", "-")), message)


class UserError(click.ClickException):
    """An I2PError on its way out: ``Error: <one line>`` on stderr, exit code 2."""

    exit_code = EXIT_ERROR


def command(f):
    """Run a command body with the library's logs and progress shown on stderr (none with
    ``--quiet``); map library errors to one line on stderr and exit code 2, and any other
    failure too (never 1, which means "flagged")."""

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        from i2pscan import render

        try:
            with render.showing(quiet=kwargs.get("quiet", False)):
                return f(*args, **kwargs)
        except I2PError as exc:
            if os.environ.get("I2PSCAN_DEBUG"):  # the cause's traceback too (e.g. what open_clip raised)
                import traceback

                traceback.print_exception(exc, file=sys.stderr)
            raise UserError(visible(with_flags(str(exc)))) from exc
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except Exception as exc:
            if os.environ.get("I2PSCAN_DEBUG"):
                raise
            raise UserError(visible(f"internal error: {one_line(exc, 300)} (set I2PSCAN_DEBUG=1 for the "
                                    f"traceback)")) from exc

    return wrapper


def exit_with(code: int) -> None:
    """End the command with an exit code (works under click's runner as well as from the shell)."""
    click.get_current_context().exit(code)


class _Group(click.Group):
    """The commands in the order a moderator meets them, each imported when it is used."""

    def list_commands(self, ctx):
        return list(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        import importlib

        module, attr = COMMANDS[name].split(":")
        return getattr(importlib.import_module(module), attr)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "-V", "--version", prog_name="i2pscan")
def cli():
    """Tell AI-generated images from camera photographs.

    \b
    Scan a folder (the shipped rine-2class detector; --metadata-only runs no model):
      i2pscan scan photos/ -o report.parquet
      i2pscan report report.parquet --html review/        # a review page for moderators
    Train a detector of your own (a labelled sample: real/ and fake/ folders):
      i2pscan calibrate train/ --out cal.safetensors       # which layers carry forgery cues
      i2pscan finetune train/ --calibration cal.safetensors --out detector.safetensors
      i2pscan evaluate test/ -d detector.safetensors -d rine-2class
    Offline demo with the tiny shipped backbone: examples/quickstart.sh

    \b
    Exit codes: 0 nothing flagged; 1 something flagged; 2 usage or configuration error (or a
    scan stopped before the end); 3 nothing flagged but some files unreadable; 130 interrupted;
    143 terminated.
    """


def _on_sigterm(signum, frame):
    raise Terminated()


def main(argv=None) -> None:
    """Console-script entry point: exit codes as documented, no traceback for user errors."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        code = cli.main(args=argv, prog_name="i2pscan", standalone_mode=False)
    except Terminated:
        click.echo("Terminated.", err=True)
        sys.exit(EXIT_TERMINATED)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except click.ClickException as exc:
        if not isinstance(exc, UserError):  # click's own messages quote what was typed, which may be hostile
            exc.message = visible(exc.message)
        exc.show()
        sys.exit(EXIT_ERROR)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except BrokenPipeError:  # `i2pscan scan ... | head` is not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(EXIT_CLEAN)
    sys.exit(code if isinstance(code, int) else EXIT_CLEAN)
