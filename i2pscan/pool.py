"""Batches of decoded images: one item per file, a crop tensor or an error, never a substitute."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Sequence

import torch

from .augment import perturb
from .decode import DEFAULT_MAX_PIXELS, Decoded, decode, read_header
from .errors import one_line
from .provenance import EvidenceReader, unread


@dataclass
class Item:
    index: int
    pixels: torch.Tensor | None  # [n_crops, 3, S, S]
    info: Decoded


@dataclass
class Batch:
    """Items in input order; ``pixels`` stacks the crops of the items that decoded."""

    items: list[Item]
    pixels: torch.Tensor | None
    ok: list[int] = field(default_factory=list)  # positions in ``items`` with pixels

    def pin_memory(self) -> "Batch":
        if self.pixels is not None:
            self.pixels = self.pixels.pin_memory()
        return self


def collate(items: list[Item]) -> Batch:
    ok = [i for i, it in enumerate(items) if it.pixels is not None]
    pixels = torch.cat([items[i].pixels for i in ok]) if ok else None
    for it in items:
        it.pixels = None  # the stacked tensor holds them; do not send them twice between processes
    return Batch(items=items, pixels=pixels, ok=ok)


class ImageFiles(torch.utils.data.Dataset):
    """Paths -> :class:`Item` (decoded and transformed in DataLoader workers)."""

    def __init__(self, paths: Sequence[str], transform, want_hash: bool = False,
                 max_pixels: int = DEFAULT_MAX_PIXELS, perturbation: str | None = None,
                 evidence: EvidenceReader | None = None):
        self.paths = list(paths)
        self.evidence = evidence
        self.transform = transform
        self.want_hash = want_hash
        self.max_pixels = max_pixels
        self.perturbation = perturbation

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Item:
        info = decode(self.paths[index], max_pixels=self.max_pixels, want_hash=self.want_hash,
                      keep_bytes=self.evidence is not None)
        _add_evidence(info, self.evidence, self.paths[index])
        pixels = None
        if info.image is not None:
            try:
                image = perturb(info.image, self.perturbation) if self.perturbation else info.image
                pixels = self.transform(image, index)
            except Exception as exc:
                info.error = f"preprocessing failed: {one_line(exc)}"
        info.image = None
        return Item(index=index, pixels=pixels, info=info)


class HeaderFiles(torch.utils.data.Dataset):
    """Paths -> :class:`Item` with no pixels: the file's header and its provenance evidence only
    (``scan --metadata-only``; nothing is decoded)."""

    def __init__(self, paths: Sequence[str], evidence: EvidenceReader, want_hash: bool = False):
        self.paths = list(paths)
        self.evidence = evidence
        self.want_hash = want_hash

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Item:
        info = read_header(self.paths[index], want_hash=self.want_hash)
        _add_evidence(info, self.evidence, self.paths[index])
        return Item(index=index, pixels=None, info=info)


def _add_evidence(info: Decoded, evidence: EvidenceReader | None, path: str) -> None:
    """Provenance columns from the bytes decoding already read (then the bytes are dropped)."""
    if evidence is not None:
        info.provenance = evidence.read(info.data, path, info.exif).columns() if info.data is not None else unread()
    info.data = info.exif = None


def worker_init(_worker_id: int) -> None:
    """DataLoader workers decode; one torch thread each leaves the cores to decoding.

    C decoders (libtiff above all) print warnings about damaged files straight to file
    descriptor 2; in workers that stream goes to /dev/null so that stderr stays readable. Errors
    still arrive: as error rows, or as the DataLoader's own exceptions in the main process.
    """
    torch.set_num_threads(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)


PREFETCH_FACTOR = 4


def loader(dataset: ImageFiles, batch_size: int, workers: int, pin_memory: bool = False,
           shuffle_seed: int | None = None, timeout_s: float = 0) -> torch.utils.data.DataLoader:
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


def default_workers() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return max(0, min(8, cpus - 1)) if cpus > 2 else cpus
