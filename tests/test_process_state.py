"""Library calls leave process-wide settings as they found them."""

import logging

import numpy as np
from PIL import Image

from i2pscan.backbone import load_backbone
from i2pscan.decode import decode, save_image


def test_decoding_restores_pillows_pixel_limit(tmp_path):
    path = tmp_path / "a.png"
    save_image(np.zeros((8, 8, 3), np.uint8), path)
    before = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = 12345
        assert decode(str(path), max_pixels=100).error is None
        assert decode(str(path), max_pixels=10).error.startswith("decompression bomb")
        assert Image.MAX_IMAGE_PIXELS == 12345
    finally:
        Image.MAX_IMAGE_PIXELS = before


def test_loading_a_backbone_keeps_the_callers_logging_disable_level():
    try:
        logging.disable(logging.WARNING)
        load_backbone("i2p-tiny")
        assert logging.root.manager.disable == logging.WARNING
    finally:
        logging.disable(logging.NOTSET)
