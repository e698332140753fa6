"""i2pscan: tell AI-generated images from camera photographs.

The command line (``i2pscan``) is a thin shell over these five functions; a notebook calls the
same ones and gets the same reports::

    from i2pscan import scan, load_detector
    outcome = scan(["photos"], output="report.parquet", detector=load_detector("detector.safetensors"))
    outcome.flagged, outcome.errors          # the whole report's counts
    scan(["photos"], output="report.parquet", resume=True)   # finishes a scan that was stopped

Library code never prints: progress and log lines go to the ``i2pscan`` logger and to the
progress sink of ``i2pscan.progress`` (the CLI draws them on stderr). Heavy libraries (torch,
open_clip) are imported only by what needs a model.
"""

from __future__ import annotations

import importlib
import inspect
import types

from i2pscan.version import __version__
__all__ = ["__version__", "calibrate", "evaluate", "finetune", "load_detector", "scan"]


class _CallableModule(types.ModuleType):
    """A module that is also an API function: ``i2pscan.scan`` is the scan package and the scan
    function, ``i2pscan.evaluate`` the evaluation module and the evaluate function. (A plain
    function of the same name would be replaced by the module as soon as the module is imported.)"""

    def __call__(self, *args, **kwargs):
        return self.__api__(*args, **kwargs)


def _callable(module: types.ModuleType, function) -> types.ModuleType:
    module.__class__ = _CallableModule
    module.__api__ = function
    module.__signature__ = inspect.signature(function)
    return module


from i2pscan import api as _api
from i2pscan.api import calibrate, finetune, load_detector  # noqa: E402

scan = _callable(importlib.import_module(__name__ + ".scan"), _api.scan)
evaluate = _callable(importlib.import_module(__name__ + ".evaluate"), _api.evaluate)
