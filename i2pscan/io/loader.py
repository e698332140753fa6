"""Training and feature extraction read files through torch's DataLoader (shuffling, persistent
augmentation seeds), where a crashing decoder stops the run; scans use the isolated
:class:`~i2pscan.io.pool.DecodePool` instead."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch

from i2pscan.io.decode import DEFAULT_DECODE_TIMEOUT_S, DEFAULT_MAX_PIXELS
from i2pscan.io.pool import PREFETCH_FACTOR, collate, worker_init
from i2pscan.io.work import FileWork, Item


class ImageFiles(torch.utils.data.Dataset):
    """Paths -> :class:`Item` (decoded and transformed in DataLoader workers)."""

    def __init__(self, paths: Sequence[str], transform, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.paths = list(paths)
        self.transform = transform
        self.work = FileWork(transform, max_pixels=max_pixels)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Item:
        return self.work(index, self.paths[index])


def _worker_init(worker_id: int) -> None:
    worker_init(worker_id)
    torch.utils.data.get_worker_info().dataset.work.prepare_process()


def loader(dataset: ImageFiles, batch_size: int, workers: int, pin_memory: bool = False,
           shuffle_seed: int | None = None, timeout_s: float = 0) -> torch.utils.data.DataLoader:
    """A DataLoader over ``dataset`` (training and feature extraction; scans use DecodePool).
    In its worker processes a decode stops after decode's default deadline."""
    if workers > 0:
        dataset.work = dataclasses.replace(dataset.work, deadline_s=DEFAULT_DECODE_TIMEOUT_S)
    generator = None
    if shuffle_seed is not None:
        generator = torch.Generator().manual_seed(shuffle_seed)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle_seed is not None,
        generator=generator,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        worker_init_fn=_worker_init if workers > 0 else None,
        persistent_workers=False,
        prefetch_factor=PREFETCH_FACTOR if workers > 0 else None,
        timeout=timeout_s if workers > 0 else 0,
    )
