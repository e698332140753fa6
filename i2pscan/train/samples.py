"""Labelled samples: GenImage/ForenSynths folder layouts and CSV/Parquet manifests (DESIGN §6)."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from i2pscan.io.decode import has_image_extension
from i2pscan.errors import InputError, one_line
from i2pscan.io.files import file_sha256

REAL_NAMES = ("real", "0_real", "nature")
FAKE_NAMES = ("fake", "1_fake", "ai", "synthetic")
LABEL_WORDS = {"real": 0, "0": 0, "nature": 0, "fake": 1, "1": 1, "ai": 1, "synthetic": 1}
LABEL_NAMES = ("real", "fake")


@dataclass(frozen=True)
class LabelledImage:
    path: str
    label: int  # 0 real, 1 fake
    subset: str


@dataclass
class LabelledSample:
    """Labelled image files, sorted by path, with the subset (generator) each belongs to."""

    items: list[LabelledImage]
    source: str

    @property
    def paths(self) -> list[str]:
        return [it.path for it in self.items]

    @property
    def labels(self) -> np.ndarray:
        return np.asarray([it.label for it in self.items], np.int64)

    def counts(self) -> dict:
        per_class = Counter(LABEL_NAMES[it.label] for it in self.items)
        per_subset: dict[str, dict[str, int]] = defaultdict(lambda: {"real": 0, "fake": 0})
        for it in self.items:
            per_subset[it.subset][LABEL_NAMES[it.label]] += 1
        return {"real": per_class["real"], "fake": per_class["fake"], "subsets": dict(sorted(per_subset.items()))}

    def fingerprint(self) -> str:
        """sha256 over (path relative to the source, label, subset) of every item."""
        root = self.source if os.path.isdir(self.source) else os.path.dirname(self.source)
        digest = hashlib.sha256()
        for it in self.items:
            rel = os.path.relpath(it.path, root) if root else it.path
            digest.update(json.dumps([rel, it.label, it.subset]).encode("utf-8", "surrogateescape"))
        return digest.hexdigest()

    def subset(self, keep: Sequence[int]) -> "LabelledSample":
        return LabelledSample([self.items[i] for i in keep], self.source)


def load_labelled(source: str | os.PathLike, max_per_class: int | None = None, seed: int = 0,
                  subsets: Sequence[str] | None = None, split: str | None = None) -> LabelledSample:
    """Find labelled images in a folder tree or a CSV/Parquet manifest (DESIGN §6).

    Folders named real/0_real/nature and fake/1_fake/ai/synthetic, at any depth, label the images
    below them; the first path component under the root names the subset. ``subsets`` keeps only
    those subsets; ``split`` only files below a folder of that name (GenImage's train or val).
    ``max_per_class`` keeps
    a seeded sample of at most N images per class, spread over subsets in proportion to their size.
    Raises I2PError when nothing is found or a class is missing.
    """
    source = os.fspath(source)
    if not os.path.exists(source):
        raise InputError(f"data not found: {source}")
    if os.path.isdir(source):
        items = _discover_labelled(source)
    elif source.lower().endswith((".csv", ".parquet", ".pq")):
        items = _read_manifest(source)
    else:
        raise InputError(f"{source}: expected a folder of labelled images or a .csv/.parquet manifest")
    if subsets:
        unknown = sorted(set(subsets) - {it.subset for it in items})
        if unknown:
            raise InputError(f"no subset named {', '.join(unknown)} in {source}; "
                             f"subsets: {', '.join(sorted({it.subset for it in items}))}")
        items = [it for it in items if it.subset in set(subsets)]
    if split:
        base = source if os.path.isdir(source) else os.path.dirname(os.path.abspath(source))
        items = [it for it in items
                 if split.lower() in (p.lower() for p in Path(os.path.relpath(it.path, base)).parts[:-1])]
    if not items:
        raise InputError(
                         f"no labelled images in {source}: expected folders named {'|'.join(REAL_NAMES)} and "
                         f"{'|'.join(FAKE_NAMES)} (at any depth), or a CSV/Parquet manifest with path,label[,subset]")
    counts = Counter(it.label for it in items)
    for label in (0, 1):
        if counts[label] == 0:
            other = LABEL_NAMES[1 - label]
            raise InputError(f"{source} has {counts[1 - label]} {other} images and no {LABEL_NAMES[label]} ones; "
                             f"both classes are needed")
    if max_per_class:
        items = _stratified(items, max_per_class, seed)
    items.sort(key=lambda it: it.path)
    return LabelledSample(items, source)


def _discover_labelled(root: str) -> list[LabelledImage]:
    names = {n: 0 for n in REAL_NAMES} | {n: 1 for n in FAKE_NAMES}
    root_name = os.path.basename(os.path.normpath(root)) or "data"
    items = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_parts = Path(os.path.relpath(dirpath, root)).parts
        rel_parts = () if rel_parts == (".",) else rel_parts
        label = None
        for part in reversed((root_name,) + rel_parts):
            if part.lower() in names:
                label = names[part.lower()]
                break
        if label is None:
            continue
        first = rel_parts[0] if rel_parts else root_name
        subset = root_name if first.lower() in names else first
        for name in sorted(filenames):
            if not name.startswith(".") and has_image_extension(name):
                items.append(LabelledImage(os.path.join(dirpath, name), label, subset))
    return items


def _read_manifest(path: str) -> list[LabelledImage]:
    base = os.path.dirname(os.path.abspath(path))
    try:
        if path.lower().endswith(".csv"):
            with open(path, newline="", encoding="utf-8", errors="surrogateescape") as fh:  # names: exact bytes
                rows = list(csv.DictReader(fh))
        else:
            import pyarrow.parquet as pq

            rows = pq.read_table(path).to_pylist()
    except (OSError, UnicodeDecodeError, csv.Error, ValueError) as exc:
        raise InputError(f"cannot read manifest {path}: {one_line(exc)}") from exc
    if not rows or "path" not in rows[0] or "label" not in rows[0]:
        raise InputError(f"manifest {path} needs columns path,label[,subset]")
    default_subset = os.path.splitext(os.path.basename(path))[0]
    items = []
    for line, row in enumerate(rows, start=2):
        label = LABEL_WORDS.get(str(row["label"]).strip().lower())
        if label is None:
            raise InputError(f"manifest {path} row {line}: label {row['label']!r} is not one of "
                             f"real/fake, 0/1, nature/ai")
        p = str(row["path"])
        items.append(LabelledImage(p if os.path.isabs(p) else os.path.join(base, p), label,
                                   str(row.get("subset") or default_subset)))
    return items


def _stratified(items: list[LabelledImage], per_class: int, seed: int) -> list[LabelledImage]:
    rng = random.Random(seed)
    kept = []
    for label in (0, 1):
        groups: dict[str, list[LabelledImage]] = defaultdict(list)
        for it in items:
            if it.label == label:
                groups[it.subset].append(it)
        total = sum(len(g) for g in groups.values())
        if total <= per_class:
            kept.extend(it for g in groups.values() for it in g)
            continue
        # largest-remainder allocation of per_class over subsets, in proportion to their sizes
        shares = {k: per_class * len(g) / total for k, g in sorted(groups.items())}
        alloc = {k: int(v) for k, v in shares.items()}
        for k in sorted(shares, key=lambda k: (-(shares[k] - alloc[k]), k))[:per_class - sum(alloc.values())]:
            alloc[k] += 1
        for k, g in sorted(groups.items()):
            kept.extend(rng.sample(sorted(g, key=lambda it: it.path), alloc[k]))
    return kept


def split_stratified(sample: LabelledSample, fraction: float, seed: int,
                     avoid: Sequence[int] = ()) -> tuple[list[int], list[int]]:
    """Indices (train, validation): ``fraction`` of each (label, subset) group held out.

    Items in ``avoid`` (e.g. the calibration sample) go to validation only where a group has too
    few other items to fill its share.
    """
    rng = random.Random(seed)
    avoid = set(avoid)
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, it in enumerate(sample.items):
        groups[(it.label, it.subset)].append(i)
    train, val = [], []
    for key in sorted(groups):
        idx = groups[key][:]
        rng.shuffle(idx)
        idx.sort(key=lambda i: i in avoid)  # stable: the shuffled order within each kind
        n_val = int(round(len(idx) * fraction))
        if len(idx) >= 2:
            n_val = min(max(n_val, 1), len(idx) - 1)
        val.extend(idx[:n_val])
        train.extend(idx[n_val:])
    return sorted(train), sorted(val)


def split_by_subset(sample: LabelledSample, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (train, validation): whole subsets (generators) held out, ``fraction`` of them
    (at least one, at most all but one), chosen by ``seed``. Needs two subsets or more."""
    names = sorted({it.subset for it in sample.items})
    if len(names) < 2:
        raise ValueError("a split by subset needs two subsets or more")
    n_val = min(max(int(round(len(names) * fraction)), 1), len(names) - 1)
    held = set(random.Random(seed).sample(names, n_val))
    val = [i for i, it in enumerate(sample.items) if it.subset in held]
    train = [i for i, it in enumerate(sample.items) if it.subset not in held]
    return train, val


class FileSet:
    """File identities: the real path (symlinks resolved) and the size and sha256 of the bytes.

    ``find(paths)`` says which paths are one of these files or a byte-identical copy; content is
    hashed only for files whose size matches a member's, so comparing two large samples costs a
    stat per file. Unreadable files are compared by path only.
    """

    def __init__(self, entries: Sequence[Sequence] = ()):
        self._real: set[str] = set()
        self._by_size: dict[int, list[list]] = defaultdict(list)  # size -> [[path, sha256 or None]]
        for real, size, sha in entries:
            self._real.add(real)
            if size is not None:
                self._by_size[int(size)].append([real, sha])

    @classmethod
    def of(cls, paths: Sequence[str], hashed: bool = False) -> "FileSet":
        """The identities of ``paths``; ``hashed``: compute every sha256 now (for recording them)."""
        entries = []
        for p in paths:
            size = _size(p)
            entries.append((os.path.realpath(p), size, file_sha256(p) if hashed and size is not None else None))
        return cls(entries)

    def entries(self) -> list[list]:
        """[[real path, size, sha256], ...] sorted by path (JSON-friendly), hashing what is not yet."""
        out = [[m[0], size, self._hash(m)] for size, members in self._by_size.items() for m in members]
        sized = {e[0] for e in out}
        out += [[real, None, None] for real in self._real - sized]
        return sorted(out, key=lambda e: e[0])

    def _hash(self, member: list) -> str | None:
        if member[1] is None:
            try:
                member[1] = file_sha256(member[0])
            except OSError:
                return None
        return member[1]

    def find(self, paths: Sequence[str]) -> list[int]:
        """Positions in ``paths`` of files in this set (same real path or same bytes)."""
        found = []
        for i, p in enumerate(paths):
            if os.path.realpath(p) in self._real:
                found.append(i)
                continue
            size = _size(p)
            members = self._by_size.get(size) if size is not None else None
            if members:
                try:
                    digest = file_sha256(p)
                except OSError:
                    continue
                if any(self._hash(m) == digest for m in members):
                    found.append(i)
        return found

    def __len__(self) -> int:
        return len(self._real)


def _size(path: str) -> int | None:
    try:
        return os.stat(path).st_size
    except OSError:
        return None
