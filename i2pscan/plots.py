"""matplotlib, imported only when a plot is asked for (an optional dependency)."""

from __future__ import annotations

from i2pscan.errors import I2PError


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend; I2PError if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise I2PError("plots need matplotlib: pip install 'i2pscan[plot]'") from exc
    return plt
