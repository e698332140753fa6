"""The ``i2pscan`` command line: parse options, call the library (i2pscan.api), render, and map
outcomes to exit codes (app.py, the only place that does). No logic lives here."""

from i2pscan.cli.app import cli, main

__all__ = ["cli", "main"]
