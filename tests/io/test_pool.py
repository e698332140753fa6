"""The scanner's decode pool: one answer per file, in order, whatever a decoder does to its process."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import i2pscan.io.work as work_module
from i2pscan.io.preprocess import CropTransform, Preprocess
from i2pscan.io.pixels import save_image
from i2pscan.io.pool import DecodePool, scan_batches
from i2pscan.io.work import FileWork
from helpers import process_alive

PP = Preprocess(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def _images(folder: Path, n: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"{i:02d}.png"
        save_image(np.random.default_rng(i).integers(0, 255, (40, 48, 3), dtype=np.uint8), path)
        paths.append(str(path))
    return paths


def _misbehaving(crash: set[str], hang: set[str]):
    real = work_module.decode

    def decode(path, *args, **kwargs):
        name = os.path.basename(path)
        if name in crash:
            os._exit(7)  # what a segfaulting decoder looks like from outside
        if name in hang:
            time.sleep(3600)  # a decoder stuck in C code, deaf to decode()'s own alarm
        return real(path, *args, **kwargs)

    return decode


@pytest.fixture
def cpu_load():
    """Two busy processes competing for the cores while the pool works."""
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    yield
    for p in burners:
        p.kill()
        p.wait()


def test_items_come_in_order_one_per_file(tmp_path):
    paths = _images(tmp_path, 9) + [str(tmp_path / "missing.png")]
    work = FileWork(CropTransform(PP, 2))
    items = list(DecodePool(work, workers=2).items(paths))
    assert [it.index for it in items] == list(range(10))
    assert all(it.pixels.shape == (2, 3, 32, 32) for it in items[:9])
    assert items[9].pixels is None and items[9].info.error.startswith("file not found")
    inline = [work(i, p) for i, p in enumerate(paths[:9])]
    assert all(np.array_equal(a.pixels, b.pixels.numpy()) for a, b in zip(items, inline))


def test_paths_are_pulled_lazily_within_the_window(tmp_path):
    paths = _images(tmp_path, 4)
    pulled = []

    def endless():
        i = 0
        while True:
            pulled.append(i)
            yield paths[i % 4]
            i += 1

    decoded = DecodePool(FileWork(CropTransform(PP, 1)), workers=2, window=8).items(endless())
    first = [next(decoded) for _ in range(5)]
    decoded.close()
    assert [it.index for it in first] == [0, 1, 2, 3, 4]
    assert 5 <= len(pulled) <= 5 + 8


def test_closing_early_stops_the_workers(tmp_path):
    paths = _images(tmp_path, 12)
    before = set(multiprocessing.active_children())
    batches = scan_batches(paths, FileWork(CropTransform(PP, 1)), batch_size=2, workers=2)
    next(batches)
    batches.close()
    assert set(multiprocessing.active_children()) <= before


@pytest.mark.slow
def test_crashing_and_hanging_decoders_50_runs_under_load(tmp_path, monkeypatch, cpu_load):
    """Each run decodes 10 files with 2 workers; the decoder exits its process on one file and
    hangs on another. Every run must give the same 10 answers in order: 8 crops identical to an
    in-process decode, one crash row, one hang row (a 1 s timeout; the burners load the CPU)."""
    paths = _images(tmp_path, 10)
    work = FileWork(CropTransform(PP, 1))
    expected = [work(i, p).pixels.numpy() for i, p in enumerate(paths)]
    monkeypatch.setattr(work_module, "decode", _misbehaving(crash={"03.png"}, hang={"06.png"}))
    for run in range(50):
        batches = list(scan_batches(paths, work, batch_size=3, workers=2, timeout_s=1.0))
        assert [len(b.items) for b in batches] == [3, 3, 3, 1], run
        items = [it for b in batches for it in b.items]
        assert [it.index for it in items] == list(range(10)), run
        errors = {it.index: it.info.error for it in items if it.info.error}
        assert errors == {3: "the decoder crashed on this file (its process exited with code 7)",
                          6: "the decoder hung on this file (no result after 1 s; its process was stopped)"}, run
        assert items[3].info.size_bytes == os.path.getsize(paths[3])
        pixels = np.concatenate([np.asarray(b.pixels) for b in batches if b.pixels is not None])
        assert np.array_equal(pixels, np.concatenate([e for i, e in enumerate(expected) if i not in (3, 6)])), run


def test_a_worker_killed_from_outside_costs_only_its_file(tmp_path, monkeypatch):
    paths = _images(tmp_path, 6)
    real = work_module.decode

    def suicidal(path, *args, **kwargs):
        if path.endswith("02.png"):
            os.kill(os.getpid(), 9)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(work_module, "decode", suicidal)
    items = list(DecodePool(FileWork(CropTransform(PP, 1)), workers=2).items(paths))
    assert [it.info.error for it in items] == [None, None, "the decoder crashed on this file "
                                               "(its process was killed by SIGKILL)", None, None, None]


ORPHAN_SCRIPT = """
import os, sys, time
import i2pscan.io.pool as pool
import i2pscan.io.work as work_module
from i2pscan.io.preprocess import CropTransform, Preprocess
from i2pscan.io.work import FileWork
pool.PARENT_DEATH_SIGNAL = int(sys.argv[1])
real = work_module.decode
def slow(path, *args, **kwargs):
    time.sleep(0.5)
    return real(path, *args, **kwargs)
work_module.decode = slow
paths = sys.argv[2:]
items = pool.DecodePool(FileWork(CropTransform(Preprocess(32, (0.5,) * 3, (0.25,) * 3), 1)), workers=3).items(paths * 50)
next(items)
children = [p.pid for p in __import__("multiprocessing").active_children()]
print(" ".join(map(str, children)), flush=True)
time.sleep(600)
"""


@pytest.mark.slow
@pytest.mark.parametrize("death_signal", [9, 0], ids=["pipe-and-signal", "pipe-only"])
def test_workers_exit_within_seconds_of_their_scans_death(tmp_path, death_signal):
    """A scan SIGKILLed mid-run leaves no decoding worker behind (issue 21.3): each closes the
    scan's inherited pipe ends, so end-of-file reaches it; on Linux a parent-death signal too."""
    paths = _images(tmp_path, 4)
    proc = subprocess.Popen([sys.executable, "-c", ORPHAN_SCRIPT, str(death_signal), *paths],
                            stdout=subprocess.PIPE, text=True)
    workers = []
    try:
        workers = [int(pid) for pid in proc.stdout.readline().split()]
        assert len(workers) == 3 and all(process_alive(pid) for pid in workers)
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 10
        while any(process_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [pid for pid in workers if process_alive(pid)], "workers outlived their scan"
    finally:
        proc.kill()
        proc.wait()
        for pid in workers:
            if process_alive(pid):
                os.kill(pid, 9)


