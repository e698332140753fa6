"""i2pscan: tell AI-generated images from camera photographs.

The command line (``i2pscan``) is a thin shell over this package. A notebook user calls the same
functions: :func:`i2pscan.backbone.load_backbone`, :func:`i2pscan.calibrate.calibrate`,
:func:`i2pscan.finetune.finetune`, :class:`i2pscan.detector.Detector`,
:func:`i2pscan.scan.scan` and :func:`i2pscan.evaluate.evaluate`.
"""

__version__ = "0.1.0"
