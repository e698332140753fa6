"""i2pscan's version (read by the build from here, so that it needs no import of the package)."""

__version__ = "0.1.0"
