"""JPEG decoding on the scoring device (``--decode-on device``): nvjpeg through torchvision on CUDA.

Decoding workers then only read bytes, headers and provenance; the scorer decodes the batch's
JPEGs in one call (``torchvision.io.decode_jpeg``, batched on CUDA), crops them as the exact path
would (the same boxes, the same packing), and puts their crops beside the workers' in item order.
(torchvision 0.29 deprecates its image decoding in favour of TorchCodec; nvImageCodec's GPU backend,
with ``nvidia-nvjpeg-cu13``, is the other candidate: bench_gpu_decode.py is where to compare them.)
It is not bit-identical to the exact path (another IDCT and upsampling on a GPU): the difference
is measured by benchmarks/bench_gpu_decode.py, and the exact path stays the default. A file the
device decoder refuses is decoded here by the exact CPU path, so it keeps the row it would have had.
"""

from __future__ import annotations

import logging
import warnings
from typing import Callable, Sequence

import numpy as np
import torch

from i2pscan.io.pool import Batch
from i2pscan.io.preprocess import CropTransform

log = logging.getLogger("i2pscan")


def decode_encoded(batch: Batch, paths: Sequence[str], transform: CropTransform, device: torch.device,
                   exact: Callable[[int, str], object]) -> Batch:
    """``batch`` with the crops of its encoded JPEGs (``batch.encoded``) decoded on ``device``
    and merged into ``pixels`` (uint8, on ``device``) and ``ok`` in item order. ``exact(index,
    path)``: the CPU path's work (a FileWork), for a file the device decoder refuses; an item it
    fails on gets its error."""
    if not batch.encoded:
        return batch
    with warnings.catch_warnings():  # torchvision 0.29 announces that its image decoding moves to TorchCodec
        warnings.simplefilter("ignore", DeprecationWarning)
        import torchvision.io  # noqa: F401

    exif = transform.preprocess.rgb_mode == "i2p"
    datas = [torch.from_numpy(np.array(a, copy=True)) for _, a in batch.encoded]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            images = torchvision.io.decode_jpeg(datas, mode=torchvision.io.ImageReadMode.RGB, device=device,
                                                apply_exif_orientation=exif)
    except RuntimeError:  # one refused file fails the batched call: decode them one by one
        images = [_one(d, device, exif) for d in datas]
    n = transform.n_crops
    parts: dict[int, tuple[torch.Tensor, tuple | None]] = {}
    cpu = None if batch.pixels is None else torch.as_tensor(batch.pixels)
    for k, pos in enumerate(batch.ok):
        extent = None if batch.extents is None else tuple(int(v) for v in batch.extents[k * n])
        s = transform.preprocess.crop_size
        parts[pos] = (cpu[k * n:(k + 1) * n].to(device, non_blocking=True),
                      None if extent is None or extent[2:] == (s, s) else extent)
    for (pos, _), image in zip(batch.encoded, images):
        if image is not None:
            parts[pos] = _pack(image, transform)
            continue
        item = batch.items[pos]
        redone = exact(item.index, paths[item.index])
        if redone.pixels is None:
            item.info.error = redone.info.error or "the JPEG could not be decoded"
            continue
        parts[pos] = (torch.from_numpy(redone.pixels).to(device), redone.extent)
    ok = sorted(parts)
    if not ok:
        return Batch(items=batch.items, pixels=None, ok=[])
    pixels = torch.cat([parts[p][0] for p in ok])
    extents = None
    if any(parts[p][1] is not None for p in ok):
        s = transform.preprocess.crop_size
        extents = np.concatenate([np.tile(np.asarray(parts[p][1] or (0, 0, s, s), np.int64), (n, 1)) for p in ok])
    return Batch(items=batch.items, pixels=pixels, ok=ok, extents=extents)


def _one(data: torch.Tensor, device: torch.device, exif: bool) -> torch.Tensor | None:
    import torchvision

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return torchvision.io.decode_jpeg(data, mode=torchvision.io.ImageReadMode.RGB, device=device,
                                              apply_exif_orientation=exif)
    except RuntimeError as exc:
        log.debug("the device's JPEG decoder refused a file (%s): the exact path decodes it", exc)
        return None


def _pack(image: torch.Tensor, transform: CropTransform) -> tuple[torch.Tensor, tuple | None]:
    """A decoded image [3, H, W] (uint8, on its device) -> its crops packed as CropTransform.pack does."""
    s = transform.preprocess.crop_size
    h, w = image.shape[1:]
    boxes = transform.boxes(w, h)
    left, top, right, bottom = boxes[0]
    ch, cw = bottom - top, right - left
    out = torch.zeros((len(boxes), 3, s, s), dtype=torch.uint8, device=image.device)
    y, x = (s - ch) // 2, (s - cw) // 2
    for i, (left, top, right, bottom) in enumerate(boxes):
        out[i, :, y:y + ch, x:x + cw] = image[:, top:bottom, left:right]
    return out, None if (ch, cw) == (s, s) else (y, x, ch, cw)
