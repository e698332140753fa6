"""The report lock and resume, output edges, exit codes and discovery edges (issue 13).

Kills are real SIGKILLs of real processes; limits are real rlimits set in the child process.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import resource
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from helpers import noise_image, process_alive, tamper_detector
from i2pscan.errors import I2PError
from i2pscan.report.writer import ReportWriter
from i2pscan.io.discover import DiscoverOptions, discover

META = {"detector_id": "x", "options": {"evidence": "all", "metadata_only": False}}


def _images(folder: Path, n: int) -> list[Path]:
    return [noise_image(folder / f"{i:04d}.png", seed=i, size=64) for i in range(n)]


def _scan_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "i2pscan", "scan", *[str(a) for a in args]]


def _row(path: str, verdict: str = "real") -> dict:
    return {"path": path, "verdict": verdict, "score": 0.1, "logit": -1.0}


def _wait_for(predicate, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


HOLDER = textwrap.dedent("""
    import json, os, sys, time
    from i2pscan.report.writer import ReportWriter
    writer = ReportWriter(sys.argv[1], json.loads(sys.argv[2]), shard_rows=1)
    writer.add({"path": "held.png", "verdict": "real"})
    child = os.fork()
    if child == 0:  # a forked worker that outlives its parent, as decoding workers do
        time.sleep(60)
        os._exit(0)
    print(child, flush=True)
    time.sleep(60)
""")


# -- the report lock and resume ----------------------------------------------------------------


def test_lock_belongs_to_the_scan_process_not_its_forked_children(tmp_path, run_cli):
    report = tmp_path / "r.parquet"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(report), json.dumps(META)], stdout=subprocess.PIPE, text=True)
    child = int(holder.stdout.readline())
    try:
        # while the scan runs, a second one (resume or plain) is told another scan holds the report
        with pytest.raises(I2PError, match=rf"another scan \(pid {holder.pid}\) is writing .*r.parquet right now"):
            ReportWriter(str(report), META, resume=True)
        noise_image(tmp_path / "a.png", size=64)
        r = run_cli("scan", tmp_path / "a.png", "-d", "unused", "-o", report)
        assert r.exit_code == 2
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        assert process_alive(child)  # the forked child still runs, with the lock file open...
        writer = ReportWriter(str(report), META, resume=True)  # ...and does not hold the lock
        assert writer.done == {"held.png"}
        writer.abandon()
    finally:
        os.kill(child, signal.SIGKILL)
        holder.kill()


def test_plain_scan_racing_another_is_told_another_scan_holds_it(tmp_path, detector_file, run_cli):
    report = tmp_path / "r.parquet"
    noise_image(tmp_path / "a.png", size=64)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(report), json.dumps(META)], stdout=subprocess.PIPE, text=True)
    child = int(holder.stdout.readline())
    try:
        r = run_cli("scan", tmp_path / "a.png", "-d", detector_file, "-o", report, "--workers", "0")
        assert r.exit_code == 2
        assert r.stderr.startswith(f"Error: another scan (pid {holder.pid}) is writing ")
        assert "interrupted" not in r.stderr
        assert (tmp_path / "r.parquet.parts" / "shard-000001.parquet").exists()  # the holder's rows are untouched
    finally:
        os.kill(child, signal.SIGKILL)
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_a_scan_killed_with_live_workers_can_be_resumed_at_once(tmp_path, detector_file):
    _images(tmp_path / "in", 160)
    cmd = _scan_cmd("in", "-d", detector_file, "-o", "r.parquet", "-q", "--workers", "2", "--batch-size", "2",
                    "--flush-rows", "4", "--format", "jsonl")
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    parts = tmp_path / "r.parquet.parts"
    _wait_for(lambda: parts.exists() and len(list(parts.glob("shard-*"))) >= 2)
    workers = [int(p) for task in Path(f"/proc/{proc.pid}/task").iterdir()  # forked by the pool's thread too
               for p in (task / "children").read_text().split()]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    try:  # issue 21.3: the workers of a killed scan end within seconds, however it died
        _wait_for(lambda: not any(process_alive(pid) for pid in workers), timeout=10)
    finally:
        for pid in workers:
            if process_alive(pid):
                os.kill(pid, signal.SIGKILL)
    writer = ReportWriter(str(tmp_path / "r.parquet"), json.loads(
        pq.read_schema(sorted(parts.glob("shard-*"))[0]).metadata[b"i2pscan"]), resume=True)  # at once: no refusal
    assert 0 < len(writer.done) < 160
    writer.abandon()
    assert workers  # the scan really had decoding workers
    r = subprocess.run(cmd + ["--resume"], cwd=tmp_path, capture_output=True)
    assert r.returncode in (0, 1), r.stderr.decode()
    assert [row["path"] for row in pq.read_table(tmp_path / "r.parquet").to_pylist()] == [
        f"in/{i:04d}.png" for i in range(160)]


@pytest.mark.slow
def test_resume_takes_the_lock_before_reading(tmp_path, detector_file, run_cli, monkeypatch):
    """A pause injected where resume reads the shards: another scan run during it is refused,
    so the resumed report cannot end up with only its own rows."""
    _images(tmp_path / "in", 12)
    report = tmp_path / "r.parquet"
    cmd = _scan_cmd(tmp_path / "in", "-d", detector_file, "-o", report, "-q", "--workers", "0")
    during_pause = {}
    original = ReportWriter._resume

    def paused_resume(self):
        during_pause["other"] = subprocess.run(cmd + ["--overwrite"], capture_output=True, text=True)
        original(self)

    monkeypatch.setattr(ReportWriter, "_resume", paused_resume)
    r = run_cli("scan", tmp_path / "in", "-d", detector_file, "-o", report, "--resume", "--workers", "0")
    assert r.exit_code in (0, 1), r.stderr
    other = during_pause["other"]
    assert other.returncode == 2 and "another scan" in other.stderr and "is writing" in other.stderr
    assert len(pq.read_table(report)) == 12


def test_leftover_temporary_files_of_killed_writers_are_removed(tmp_path, detector_file, run_cli):
    """A writer killed (SIGKILL) inside atomic_path leaves its temporary file; the next run of the
    same report removes it, while a live writer's temporary file stays."""
    report = tmp_path / "r.parquet"
    noise_image(tmp_path / "a.png", size=64)
    killed = textwrap.dedent("""
        import os, signal, sys
        from i2pscan.io.files import atomic_path
        for target in sys.argv[1:]:
            if os.fork() == 0:
                with atomic_path(target) as tmp:
                    open(tmp, "wb").write(b"half a file")
                    os.kill(os.getpid(), signal.SIGKILL)
            os.wait()
    """)
    os.makedirs(tmp_path / "r.parquet.parts")
    other = tmp_path / "other.parquet"
    subprocess.run([sys.executable, "-c", killed, str(report), str(tmp_path / "r.parquet.parts" / "shard-000001.parquet"),
                    str(other)], check=True)
    leftovers = sorted(p.name for p in tmp_path.glob(".tmp-*"))
    assert len(leftovers) == 2 and len(list((tmp_path / "r.parquet.parts").glob(".tmp-*"))) == 1
    live = subprocess.Popen(["sleep", "60"])
    from i2pscan.io.files import temporary_prefix

    live_tmp = tmp_path / f"{temporary_prefix(str(report))}{live.pid}-abc.parquet"
    live_tmp.write_bytes(b"being written")
    try:
        r = run_cli("scan", tmp_path / "a.png", "-d", detector_file, "-o", report, "--workers", "0", "--overwrite")
        assert r.exit_code in (0, 1), r.stderr
        left = sorted(p.name for p in tmp_path.glob(".tmp-*"))
        # the report's own leftover is gone; another file's leftover and a live writer's file stay
        assert left == sorted([live_tmp.name, *(n for n in leftovers if n.startswith(temporary_prefix(str(other))))])
        assert live_tmp.exists() and not (tmp_path / "r.parquet.parts").exists()
    finally:
        live.kill()
        live.wait()


def test_finetune_removes_its_leftover_log(tmp_path, toy_dir, run_cli):
    from i2pscan.train.checkpoint import log_path
    from i2pscan.io.files import temporary_prefix

    cal = tmp_path / "cal.safetensors"
    r = run_cli("calibrate", toy_dir / "tconv" / "train", "--backbone", "i2p-tiny", "--out", cal,
                "--max-per-class", "8", "--folds", "2", "--workers", "0", "-q")
    assert r.exit_code == 0, r.stderr
    out = tmp_path / "det.safetensors"
    dead = subprocess.Popen(["true"])  # a pid that no longer runs
    dead.wait()
    leftover = tmp_path / f"{temporary_prefix(log_path(out))}{dead.pid}-x.jsonl"
    leftover.write_text('{"epoch": 1}\n')
    r = run_cli("finetune", toy_dir / "tconv" / "train", "--calibration", cal, "--out", out, "--resume",
                "--max-per-class", "8", "--workers", "0")
    assert r.exit_code == 2 and "nothing to resume" in r.stderr
    assert not leftover.exists()


# -- output edges ---------------------------------------------------------------------------------


def test_outputs_never_replace_what_is_not_a_regular_file(tmp_path, detector_file, toy_dir, run_cli):
    noise_image(tmp_path / "a.png", size=64)
    before = os.stat("/dev/null")
    r = run_cli("scan", tmp_path / "a.png", "-d", detector_file, "-o", "/dev/null", "--overwrite", "--workers", "0")
    assert r.exit_code == 2
    assert r.stderr == "Error: cannot write /dev/null: it exists and is not a regular file; outputs only replace regular files\n"
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode) and os.stat("/dev/null").st_ino == before.st_ino
    fifo = tmp_path / "fifo.parquet"
    os.mkfifo(fifo)
    r = run_cli("scan", tmp_path / "a.png", "-d", detector_file, "-o", fifo, "--overwrite", "--workers", "0")
    assert r.exit_code == 2 and "is not a regular file" in r.stderr and stat.S_ISFIFO(os.stat(fifo).st_mode)
    r = run_cli("calibrate", toy_dir / "tconv" / "train", "--backbone", "i2p-tiny", "--out", "/dev/null")
    assert r.exit_code == 2 and "not a regular file" in r.stderr
    (tmp_path / "r.parquet.parts").write_text("not a folder")
    r = run_cli("scan", tmp_path / "a.png", "-d", detector_file, "-o", tmp_path / "r.parquet", "--workers", "0")
    assert r.exit_code == 2 and "r.parquet.parts exists and is not a folder" in r.stderr


def _limited(bytes_: int):
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (bytes_, bytes_))


@pytest.mark.slow
def test_a_file_size_limit_smaller_than_a_shard_ends_promptly_with_exit_2(tmp_path, detector_file):
    """Decoding workers hand crops over through pipes (pool.DecodePool), not shared-memory files,
    so a file-size limit only stops the report's shard, with the cause named, whatever --workers."""
    _images(tmp_path / "in", 8)
    for workers in ("2", "0"):
        started = time.monotonic()
        r = subprocess.run(_scan_cmd("in", "-d", detector_file, "-o", "r.parquet", "--workers", workers, "-q"),
                           cwd=tmp_path, capture_output=True, text=True, preexec_fn=_limited(8 * 1024), timeout=300)
        assert r.returncode == 2, r.stderr
        assert r.stderr.endswith("file too large: the file-size limit (ulimit -f) is 8,192 bytes\n"), r.stderr
        assert time.monotonic() - started < 120
        assert not list(tmp_path.glob("r.parquet*"))


@pytest.mark.slow
def test_a_scan_that_fails_in_the_merge_says_resume_finishes_it(tmp_path, detector_file):
    _images(tmp_path / "in", 100)
    cmd = _scan_cmd("in", "-d", detector_file, "-o", "r.parquet", "--workers", "0", "--flush-rows", "4", "--hash", "-q")
    # a limit between the size of one 4-row shard and of the 100-row report: measured, since both
    # carry the detector's metadata, whose size changes with the detector format
    small = tmp_path / "small"
    _images(small / "in", 4)
    subprocess.run(cmd, cwd=small, capture_output=True, check=False, timeout=300)
    subprocess.run(_scan_cmd("in", "-d", detector_file, "-o", "whole.parquet", "--workers", "0", "--hash", "-q"),
                   cwd=tmp_path, capture_output=True, check=False, timeout=300)
    shard, whole = (small / "r.parquet").stat().st_size, (tmp_path / "whole.parquet").stat().st_size
    assert whole - shard > 4096, (shard, whole)
    (tmp_path / "whole.parquet").unlink()
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, preexec_fn=_limited((shard + whole) // 2),
                       timeout=300)
    assert r.returncode == 2
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: cannot write r.parquet: file too large: the file-size limit")
    assert lines[0].endswith("; 100 scored row(s) are kept in r.parquet.parts: "
                             "run the same command with --resume to finish")
    assert not (tmp_path / "r.parquet").exists() and not list(tmp_path.glob(".tmp-*"))
    r = subprocess.run(cmd + ["--resume"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode in (0, 1) and "100 already in the report" in r.stderr or r.stderr == ""
    assert len(pq.read_table(tmp_path / "r.parquet")) == 100


@pytest.mark.slow
@pytest.mark.parametrize("sig,code,name", [(signal.SIGINT, 130, "KeyboardInterrupt"), (signal.SIGTERM, 143, "Terminated")])
def test_the_resume_hint_is_printed_when_a_stopped_scan_keeps_rows(tmp_path, detector_file, sig, code, name):
    _images(tmp_path / "in", 120)
    cmd = _scan_cmd("in", "-d", detector_file, "-o", "r.parquet", "--workers", "0", "--flush-rows", "2", "-q")
    proc = subprocess.Popen(cmd, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    parts = tmp_path / "r.parquet.parts"
    _wait_for(lambda: parts.exists() and len(list(parts.glob("shard-*"))) >= 2)
    proc.send_signal(sig)
    stderr = proc.communicate(timeout=120)[1]
    assert proc.returncode == code
    assert f"stopped ({name}); " in stderr and "run the same command with --resume to finish" in stderr
    kept = sum(pq.read_metadata(s).num_rows for s in parts.glob("shard-*"))
    assert f"; {kept} scored row(s) are kept in r.parquet.parts" in stderr


def _first_line_then_close(cmd, cwd) -> tuple[dict, int]:
    """Run ``cmd`` into a one-page pipe, read one line and leave, as ``| head -1`` does."""
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    fcntl.fcntl(proc.stdout.fileno(), fcntl.F_SETPIPE_SZ, 4096)
    first = json.loads(proc.stdout.readline())
    proc.stdout.close()
    return first, proc.wait(timeout=300)


@pytest.mark.slow
def test_exit_code_reflects_the_rows_printed_before_the_reader_left(tmp_path, detector_file):
    _images(tmp_path / "in", 48)
    flag_all = _scan_cmd("in", "-d", detector_file, "--workers", "0", "--format", "jsonl", "--threshold", "0.000001")
    first, code = _first_line_then_close(flag_all, tmp_path)
    assert first["verdict"] == "synthetic" and code == 1
    first, code = _first_line_then_close(flag_all[:-2] + ["--threshold", "0.999999"], tmp_path)
    assert first["verdict"] == "real" and code == 0
    # with a report, the scan goes on to the end and the code reflects the whole report
    first, code = _first_line_then_close(flag_all + ["-o", "r.parquet"], tmp_path)
    assert code == 1 and len(pq.read_table(tmp_path / "r.parquet")) == 48


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_reports_and_detectors_respect_the_umask(tmp_path, detector_file, run_cli, umask, mode):
    noise_image(tmp_path / "a.png", size=64)
    old = os.umask(umask)
    try:
        r = run_cli("scan", tmp_path / "a.png", "-d", detector_file, "-o", tmp_path / "r.parquet", "--workers", "0")
        assert r.exit_code in (0, 1), r.stderr
        tamper_detector(detector_file, tmp_path / "copy.safetensors")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "r.parquet").st_mode) == mode
    assert stat.S_IMODE(os.stat(tmp_path / "copy.safetensors").st_mode) == mode


# -- discovery ----------------------------------------------------------------------------------


def test_an_explicit_symlink_to_a_folder_is_followed(tmp_path, chdir, detector_file, run_cli):
    noise_image(tmp_path / "photos" / "a.png", size=64)
    noise_image(tmp_path / "elsewhere" / "b.png", size=64)
    os.symlink(tmp_path / "photos", tmp_path / "link")
    os.symlink(tmp_path / "elsewhere", tmp_path / "photos" / "inner")  # inside a folder: still not followed
    assert discover(["link"]) == ["link/a.png"]
    assert discover(["-"], stdin=io.BytesIO(b"link\n")) == ["link/a.png"]
    assert discover(["link"], DiscoverOptions(follow_symlinks=True)) == ["link/a.png", "link/inner/b.png"]
    r = run_cli("scan", "link", "-d", detector_file, "--workers", "0", "--format", "jsonl")
    assert r.exit_code in (0, 1) and [json.loads(x)["path"] for x in r.stdout.splitlines()] == ["link/a.png"]


def test_an_explicit_folder_without_images_gets_a_line(tmp_path, chdir, detector_file, run_cli):
    os.mkdir("a.jpg")
    noise_image(tmp_path / "b.png", size=64)
    r = run_cli("scan", "a.jpg", "b.png", "-d", detector_file, "--workers", "0", "--format", "jsonl")
    assert r.exit_code in (0, 1)
    assert [json.loads(x)["path"] for x in r.stdout.splitlines()] == ["b.png"]
    assert "warning: a.jpg is a folder with no image files to scan" in r.stderr
    r = run_cli("scan", "a.jpg", "-d", detector_file, "--workers", "0")
    assert r.exit_code == 0 and r.stdout == ""
    assert "warning: a.jpg is a folder with no image files to scan" in r.stderr
    assert "no image files found" in r.stderr


def test_stdin_names_keep_a_trailing_carriage_return(tmp_path, chdir, detector_file, run_cli):
    os.rename(noise_image(tmp_path / "a.png", size=64), tmp_path / "a.png\r")
    noise_image(tmp_path / "b.png", size=64)
    assert discover(["-"], stdin=io.BytesIO(b"a.png\r\nb.png\n\n")) == ["a.png\r", "b.png"]
    r = run_cli("scan", "-", "-d", detector_file, "--workers", "0", "--format", "jsonl", input=b"a.png\r\nb.png\n")
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["path"] for x in rows] == ["a.png\r", "b.png"] and all(x["verdict"] != "error" for x in rows)


def test_long_paths_are_shortened_in_messages_and_whole_in_the_report(tmp_path, chdir, detector_file, run_cli):
    deep = Path(*["d" * 200] * 18)  # 3,617 characters
    os.makedirs(deep)
    long_missing = str(deep / "gone.png")
    r = run_cli("scan", long_missing, "-d", detector_file)
    assert r.exit_code == 2 and r.stderr.startswith("Error: no such file or folder: ddd")
    assert "…" in r.stderr and len(r.stderr) < 250 and r.stderr.rstrip().endswith("dd/gone.png")
    r = run_cli("scan", deep, "-", "-d", detector_file, "--workers", "0", "-o", "r.parquet",
                input=long_missing.encode() + b"\n")
    assert r.exit_code == 3
    warning = [x for x in r.stderr.splitlines() if x.startswith("warning:")]
    assert len(warning) == 1 and len(warning[0]) < 300 and "…" in warning[0]
    (row,) = pq.read_table("r.parquet").to_pylist()
    assert row["path"] == long_missing and row["verdict"] == "error"
