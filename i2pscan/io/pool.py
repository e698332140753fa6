"""The scanner's decode pool: worker processes that the scanner owns, answering files in order.

Every worker holds at most a few files at a time and answers them in order, so when a worker dies
(a decoder that segfaults or calls exit) or stops answering (a decoder stuck in C code), the file
it was on is known exactly; that file becomes an error row, the files queued behind it are handed
to a fresh worker, and the scan goes on. Crops travel between processes as arrays.
"""

from __future__ import annotations

import dataclasses
import sys
import multiprocessing
import os
import queue
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import wait as wait_ready
from typing import Any, Iterable, Iterator

import numpy as np

from i2pscan.errors import EnvironmentFailure, one_line
from i2pscan.io.decode import DEFAULT_DECODE_TIMEOUT_S, Decoded
from i2pscan.io.work import FileWork, Item


@dataclass
class Batch:
    """Items in input order; ``pixels`` stacks the crops of the items that decoded."""

    items: list[Item]
    pixels: Any  # an array, or a tensor where the items held tensors; None when nothing decoded
    ok: list[int] = field(default_factory=list)  # positions in ``items`` with pixels
    # uint8 crops with an image smaller than the crop: (top, left, height, width) of each crop row
    # of ``pixels`` inside its canvas (Preprocess.normalise_batch); None when no crop is padded
    extents: Any = None
    # JPEGs left for the scoring device to decode (FileWork.encoded_jpeg): (position in ``items``,
    # the file's bytes as a uint8 array); io/device_decode.py adds their crops to ``pixels``
    encoded: list = field(default_factory=list)

    def pin_memory(self) -> "Batch":
        """The pixels as a tensor in page-locked memory (for a non-blocking copy to CUDA)."""
        if self.pixels is not None:
            import torch

            pixels = torch.from_numpy(self.pixels) if isinstance(self.pixels, np.ndarray) else self.pixels
            self.pixels = pixels.pin_memory()
        return self


def collate(items: list[Item]) -> Batch:
    ok = [i for i, it in enumerate(items) if it.pixels is not None]
    pixels = extents = None
    if ok:
        parts = [items[i].pixels for i in ok]
        if all(isinstance(p, np.ndarray) for p in parts):
            pixels = np.concatenate(parts)
        else:
            import torch

            pixels = torch.cat([torch.from_numpy(p) if isinstance(p, np.ndarray) else p for p in parts])
        if any(items[i].extent is not None for i in ok):
            size = pixels.shape[-1]
            extents = np.concatenate([np.tile(np.asarray(items[i].extent or (0, 0, size, size), np.int64),
                                              (len(items[i].pixels), 1)) for i in ok])
    encoded = [(i, it.encoded) for i, it in enumerate(items) if it.encoded is not None]
    for it in items:
        it.pixels = it.encoded = None  # the batch holds them; do not send them twice between processes
    return Batch(items=items, pixels=pixels, ok=ok, extents=extents, encoded=encoded)


def worker_init(_worker_id: int = 0) -> None:
    """Decoding workers: one torch thread each leaves the cores to decoding.

    C decoders (libtiff above all) print warnings about damaged files straight to file
    descriptor 2; in workers that stream goes to /dev/null so that stderr stays readable. Errors
    still arrive: as error rows, or as the pool's own messages in the main process.
    """
    if "torch" in sys.modules:  # forked from a process that uses torch: leave the cores to decoding
        sys.modules["torch"].set_num_threads(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)


PREFETCH_FACTOR = 4


def default_workers() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return max(0, min(8, cpus - 1)) if cpus > 2 else cpus


EXIT_CODE_WAIT_S = 5.0  # a worker whose pipe closed is exiting; this bounds the wait for its code
DEFAULT_FILE_TIMEOUT_S = 120.0  # twice decode()'s own deadline: only a decoder deaf to signals gets here
STARTUP_TIMEOUT_S = 120.0
QUEUED_PER_WORKER = 2  # files a worker holds at once: one being decoded, one ready to start


_READY = "ready"


# The parent's ends of every live worker's pipe in this process. A forked worker inherits all of
# them and closes them at once: otherwise its own pipe would never reach end-of-file when the scan
# dies (the worker itself would hold the other end open) and it would outlive the scan for good.
_PARENT_ENDS: set = set()
_PARENT_ENDS_LOCK = threading.Lock()
# Second line, on Linux: the kernel sends this signal to a worker when the thread that forked it
# ends (the scan's decode thread, or the scan itself, however it died). 0: none.
PARENT_DEATH_SIGNAL = int(getattr(signal, "SIGKILL", 0))
_PR_SET_PDEATHSIG = 1  # prctl's option number


def _die_with_parent(parent_pid: int) -> None:
    if PARENT_DEATH_SIGNAL and sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, PARENT_DEATH_SIGNAL, 0, 0, 0)
        except (OSError, AttributeError):  # no prctl: the pipe's end-of-file still ends the worker
            pass
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(0)


def _worker_main(conn, work: FileWork, parent_pid: int, inherited: list) -> None:
    for end in inherited:  # the scan's ends of this and every other worker's pipe
        end.close()
    _die_with_parent(parent_pid)
    worker_init()
    work.prepare_process()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    conn.send(_READY)  # the file clock starts now: a slow start on a loaded machine is not a hang
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        index, path = task
        try:
            result = work(index, path)
        except BaseException as exc:  # noqa: BLE001 - one file's failure is that file's row
            result = Item(index=index, pixels=None, info=Decoded(image=None, error=one_line(exc)))
        conn.send(result)


class _Worker:
    def __init__(self, context, work: FileWork):
        self.conn, child = context.Pipe(duplex=True)
        with _PARENT_ENDS_LOCK:
            _PARENT_ENDS.add(self.conn)
            inherited = list(_PARENT_ENDS)
            self.process = context.Process(target=_worker_main, args=(child, work, os.getpid(), inherited), daemon=True)
            self.process.start()
        child.close()
        self.held: deque[tuple[int, str]] = deque()  # sent, not answered, in the order it works on them
        self.ready = False  # the process has started and said so
        self.born = self.since = time.monotonic()  # since: when the file at the head of ``held`` started

    def send(self, task: tuple[int, str]) -> None:
        if not self.held:
            self.since = time.monotonic()
        self.held.append(task)
        self.conn.send(task)

    def overdue(self, timeout_s: float) -> bool:
        """Silent for more than ``timeout_s`` on the file it holds (time to start up not counted)."""
        return self.ready and bool(self.held) and time.monotonic() - self.since > timeout_s

    def stop(self, kill: bool = False) -> None:
        try:
            if kill:
                self.process.kill()
            else:
                self.conn.send(None)
        except (OSError, ValueError):
            pass
        self.process.join(timeout=None if kill else 5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        with _PARENT_ENDS_LOCK:
            _PARENT_ENDS.discard(self.conn)
        self.conn.close()


def _exit_text(code: int | None) -> str:
    if code is None:
        return "its process vanished"
    if code < 0:
        try:
            return f"its process was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"its process was killed by signal {-code}"
    return f"its process exited with code {code}"


class DecodePool:
    """Worker processes that run ``work`` on files and answer each file in input order.

    ``work``: a :class:`FileWork` (a scan's decoding) or any work with the same methods
    (``in_worker``, ``prepare_process``, ``__call__(index, path) -> Item``, ``failed``), such as
    the review page's :class:`~i2pscan.io.work.ThumbWork`.

    ``items(paths)`` yields one :class:`Item` per path, in order, whatever happens to a worker:
    a worker that dies costs the file it was decoding an error row saying the decoder crashed; a
    worker silent for more than ``timeout_s`` on one file is killed and that file gets an error
    row saying the decoder hung. Files queued behind the culprit go to a fresh worker. At most
    ``window`` files are in flight or waiting to be yielded (back-pressure: ``paths`` may be a
    lazy iterable of any length). Worker processes are forked, so they see the parent's code.
    """

    def __init__(self, work: FileWork, workers: int, timeout_s: float = DEFAULT_FILE_TIMEOUT_S,
                 window: int | None = None):
        if workers < 1:
            raise ValueError("DecodePool needs at least one worker")
        self.work = work.in_worker(DEFAULT_DECODE_TIMEOUT_S)
        self.n_workers = workers
        self.timeout_s = timeout_s
        self.window = max(window or 0, workers * QUEUED_PER_WORKER * 2)
        methods = multiprocessing.get_all_start_methods()
        self.context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        self.restarts = 0
        self.failed_starts = 0

    def items(self, paths: Iterable[str], stop: threading.Event | None = None) -> Iterator[Item]:
        feed = iter(enumerate(paths))
        retry: deque[tuple[int, str]] = deque()  # files handed back by a worker that died or hung
        done: dict[int, Item] = {}
        next_in = next_out = 0
        exhausted = False
        workers = [_Worker(self.context, self.work) for _ in range(self.n_workers)]
        try:
            while True:
                if stop is not None and stop.is_set():
                    return
                # hand out files: retried ones first, then new ones, within the window
                for w in sorted(workers, key=lambda w: len(w.held)):
                    while len(w.held) < QUEUED_PER_WORKER:
                        if retry:
                            w.send(retry.popleft())
                        elif not exhausted and next_in - next_out < self.window:
                            try:
                                task = next(feed)
                            except StopIteration:
                                exhausted = True
                                break
                            next_in += 1
                            w.send(task)
                        else:
                            break
                while next_out in done:
                    yield done.pop(next_out)
                    next_out += 1
                if exhausted and not retry and next_out == next_in:
                    return
                busy = [w for w in workers if w.held]
                clocks = [w.since for w in busy if w.ready]
                deadline = min(clocks) + self.timeout_s if clocks else time.monotonic() + 1
                ready = wait_ready([w.conn for w in busy] + [w.process.sentinel for w in busy],
                                   timeout=max(0.0, min(deadline - time.monotonic(), 1.0)))
                for i, w in enumerate(workers):
                    if not w.held:
                        continue
                    died = False
                    if w.conn in ready or w.process.sentinel in ready:
                        died = not self._drain(w, done)
                    if died or not w.process.is_alive():
                        self._drain(w, done)  # answers sent before it died are valid
                        if not w.ready:  # it died starting up, before touching any file
                            self._restart_unstarted(workers, i, w, retry)
                            continue
                        # its pipe can close before the process is reaped: wait for the exit code
                        w.process.join(timeout=EXIT_CODE_WAIT_S)
                        self._replace(workers, i, w, retry, done,
                                      f"the decoder crashed on this file ({_exit_text(w.process.exitcode)})",
                                      kill=False)
                    elif w.overdue(self.timeout_s):
                        self._replace(workers, i, w, retry, done,
                                      f"the decoder hung on this file (no result after {self.timeout_s:g} s; "
                                      f"its process was stopped)", kill=True)
                    elif not w.ready and time.monotonic() - w.born > STARTUP_TIMEOUT_S:
                        self._restart_unstarted(workers, i, w, retry)
        finally:
            for w in workers:
                w.stop(kill=bool(w.held))

    def _drain(self, w: _Worker, done: dict[int, Item]) -> bool:
        """Read every answer waiting on ``w``'s pipe; False when the worker is gone."""
        try:
            while w.conn.poll():
                message = w.conn.recv()
                w.since = time.monotonic()
                if message == _READY:
                    w.ready = True
                    continue
                w.held.popleft()
                done[message.index] = message
        except (EOFError, OSError):
            return False
        return True

    def _restart_unstarted(self, workers: list[_Worker], i: int, w: _Worker, retry: deque) -> None:
        """A worker that never said it started holds no file's blame: its files go to a new one."""
        self.failed_starts += 1
        if self.failed_starts > 3:
            raise EnvironmentFailure(f"decoding workers do not start (no sign of life in {STARTUP_TIMEOUT_S:g} s)")
        retry.extendleft(reversed(w.held))
        w.held.clear()
        w.stop(kill=True)
        workers[i] = _Worker(self.context, self.work)

    def _replace(self, workers: list[_Worker], i: int, w: _Worker, retry: deque, done: dict[int, Item],
                 message: str, kill: bool) -> None:
        if w.held:
            index, path = w.held.popleft()  # the file it was working on when it died or hung
            done[index] = self.work.failed(index, path, message)
            retry.extendleft(reversed(w.held))
            w.held.clear()
        w.stop(kill=True)
        self.restarts += 1
        workers[i] = _Worker(self.context, self.work)


def _batched(items: Iterator[Item], batch_size: int) -> Iterator[list[Item]]:
    group: list[Item] = []
    for item in items:
        group.append(item)
        if len(group) == batch_size:
            yield group
            group = []
    if group:
        yield group


_END = object()


def scan_batches(paths: Iterable[str], work: FileWork, batch_size: int, workers: int, pin_memory: bool = False,
                 timeout_s: float = DEFAULT_FILE_TIMEOUT_S, prefetch: int = PREFETCH_FACTOR) -> Iterator[Batch]:
    """Batches of ``paths`` in input order, each item decoded by ``work``.

    With ``workers`` >= 1, a :class:`DecodePool` decodes and a background thread collates (and
    pins, for CUDA) up to ``prefetch`` batches ahead while the caller runs the model; with
    ``workers=0`` files are decoded here, in this process, with no isolation from a crashing
    decoder. Closing the generator early stops the workers.
    """
    if workers == 0:
        work = dataclasses.replace(work, as_numpy=True)
        for group in _batched((work(i, p) for i, p in enumerate(paths)), batch_size):
            batch = collate(group)
            yield batch.pin_memory() if pin_memory else batch
        return
    pool = DecodePool(work, workers, timeout_s, window=batch_size * (prefetch + 1))
    ready: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
    stop = threading.Event()

    def put(value) -> bool:
        while not stop.is_set():
            try:
                ready.put(value, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for group in _batched(pool.items(paths, stop), batch_size):
                batch = collate(group)
                if not put(batch.pin_memory() if pin_memory else batch):
                    return
            put(_END)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
            put(exc)

    thread = threading.Thread(target=produce, name="i2pscan-decode", daemon=True)
    thread.start()
    try:
        while True:
            value = ready.get()
            if value is _END:
                return
            if isinstance(value, BaseException):
                raise value
            yield value
    finally:
        stop.set()
        thread.join()
