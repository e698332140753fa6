"""Training and feature extraction read files through torch's DataLoader (shuffling, persistent
augmentation seeds), where a crashing decoder stops the run; scans use the isolated
:class:`~i2pscan.io.pool.DecodePool` instead."""

from __future__ import annotations

from typing import Sequence

import torch

from i2pscan.io.decode import DEFAULT_MAX_PIXELS
from i2pscan.io.pool import PREFETCH_FACTOR, collate, worker_init
from i2pscan.io.work import EvidenceSource, FileWork, Item


class ImageFiles(torch.utils.data.Dataset):
    """Paths -> :class:`Item` (decoded and transformed in DataLoader workers)."""

    def __init__(self, paths: Sequence[str], transform, want_hash: bool = False,
                 max_pixels: int = DEFAULT_MAX_PIXELS, perturbation: str | None = None,
                 evidence: EvidenceSource | None = None):
        self.paths = list(paths)
        self.evidence = evidence
        self.transform = transform
        self.work = FileWork(transform, want_hash, max_pixels, perturbation, evidence)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Item:
        return self.work(index, self.paths[index])



def loader(dataset: ImageFiles, batch_size: int, workers: int, pin_memory: bool = False,
           shuffle_seed: int | None = None, timeout_s: float = 0) -> torch.utils.data.DataLoader:
    """A DataLoader over ``dataset`` (training and feature extraction; scans use DecodePool)."""
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
        worker_init_fn=worker_init if workers > 0 else None,
        persistent_workers=False,
        prefetch_factor=PREFETCH_FACTOR if workers > 0 else None,
        timeout=timeout_s if workers > 0 else 0,
    )
