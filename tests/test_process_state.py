"""Library calls leave process-wide settings as they found them."""

import logging
import signal

import numpy as np
from PIL import Image

from i2pscan.model.backbone import load_backbone
from i2pscan.io.decode import decode
from i2pscan.io.pixels import save_image


def test_decoding_in_this_process_leaves_pillows_limit_and_the_alarm_alone(tmp_path):
    path = tmp_path / "a.png"
    save_image(np.zeros((8, 8, 3), np.uint8), path)
    before, alarm = Image.MAX_IMAGE_PIXELS, signal.getsignal(signal.SIGALRM)
    try:
        Image.MAX_IMAGE_PIXELS = 12345
        assert decode(str(path), max_pixels=100).error is None
        assert decode(str(path), max_pixels=10).error.startswith("decompression bomb")
        assert Image.MAX_IMAGE_PIXELS == 12345 and signal.getsignal(signal.SIGALRM) is alarm
    finally:
        Image.MAX_IMAGE_PIXELS = before


def test_importing_i2pscan_registers_no_heif_opener():
    import subprocess
    import sys

    code = ("import sys, i2pscan, i2pscan.io.decode, i2pscan.io.pool; "
            "assert not {'pillow_heif', 'pi_heif', 'pillow_jxl'} & set(sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def test_loading_a_backbone_keeps_the_callers_logging_disable_level():
    try:
        logging.disable(logging.WARNING)
        load_backbone("i2p-tiny")
        assert logging.root.manager.disable == logging.WARNING
    finally:
        logging.disable(logging.NOTSET)


def test_the_tiny_backbones_are_not_registered_in_open_clip():
    import open_clip

    paths = list(open_clip.factory._MODEL_CONFIG_PATHS)
    backbone = load_backbone("i2p-tiny-deep")
    assert backbone.num_blocks > 0
    assert list(open_clip.factory._MODEL_CONFIG_PATHS) == paths
    assert "i2p-tiny" not in open_clip.list_models()  # another library's open_clip sees only its own models
