"""`scan --ray` against a real Ray cluster on 127.0.0.1 (the ray_cluster fixture)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pyarrow.parquet as pq
import pytest

from helpers import noise_image, report_rows, write_corrupt_files

pytestmark = pytest.mark.slow


def _same_rows(a: list[dict], b: list[dict]) -> None:
    assert [r["path"] for r in a] == [r["path"] for r in b]
    for x, y in zip(a, b):
        assert {k: v for k, v in x.items() if k not in ("score", "logit")} == \
               {k: v for k, v in y.items() if k not in ("score", "logit")}, x["path"]
        for k in ("score", "logit"):
            assert (x[k] is None) == (y[k] is None) and (x[k] is None or abs(x[k] - y[k]) <= 1e-5), (x["path"], k)


def _descendants(root: int) -> set[int]:
    """Pids of the processes below ``root`` (from /proc: children, their children...)."""
    parent = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    parent[int(entry)] = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    below, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, ppid in parent.items() if ppid in frontier} - below
        below |= frontier
    return below


def _ray_processes(title: str) -> list[int]:
    """Pids of the Ray workers of this test process's own cluster (the ray_cluster fixture starts it
    below this process) whose title starts with ``ray::TITLE``: never another session's."""
    pids = []
    for pid in _descendants(os.getpid()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                if fh.read().startswith(f"ray::{title}".encode()):
                    pids.append(pid)
        except OSError:
            pass
    return pids


def test_ray_scan_gives_the_local_scan_rows_and_exit_code(tmp_path, detector_file, run_cli, ray_cluster, chdir):
    for i in range(40):
        noise_image(tmp_path / "in" / f"{i:02d}.png", seed=i)
    write_corrupt_files(tmp_path / "in")
    local = run_cli("scan", "in", "-d", detector_file, "-o", "local.parquet", "--workers", "0", "-q")
    r = run_cli("scan", "in", "-d", detector_file, "-o", "ray.parquet", "--ray", "auto", "-q", "--format", "jsonl")
    assert r.exit_code == local.exit_code and r.exit_code in (1, 3), r.stderr
    rows, expected = report_rows("ray.parquet"), report_rows("local.parquet")
    assert len(rows) == 43 and sum(row["verdict"] == "error" for row in rows) == 3
    _same_rows(rows, expected)
    assert [line.split('"path": "')[1].split('"')[0] for line in r.stdout.splitlines()] == [x["path"] for x in expected]


def test_ray_scan_a_crashing_decoder_costs_one_error_row(tmp_path, detector_file, ray_cluster):
    from i2pscan.io.preprocess import CropTransform
    from i2pscan.model.detector import Detector
    from i2pscan.io.work import FileWork
    from i2pscan.scan.options import ScanOptions
    from i2pscan.scan.ray import RayExecutor
    from i2pscan.scan.session import run_scan

    paths = [str(noise_image(tmp_path / f"{i:02d}.png", seed=i)) for i in range(12)]
    detector = Detector.load(detector_file)

    from i2pscan.provenance.evidence import EvidenceReader

    class Misbehaving:  # reads evidence in the decode task's worker process, from the bytes decoding read
        real = EvidenceReader()

        def columns(self, data, path, exif=None, xmp=None):
            if path.endswith("05.png"):
                os._exit(9)  # what a segfaulting reader looks like from outside
            if path.endswith("08.png"):
                time.sleep(3600)  # stuck in C code
            return self.real.columns(data, path, exif, xmp)

    work = FileWork(CropTransform(detector.preprocess, 1), evidence=Misbehaving())
    rows = []
    run_scan(paths, None, detector, ScanOptions(file_timeout_s=2.0), on_row=rows.append, work=work,
             executor=lambda *args: RayExecutor("auto", *args, block_files=4))
    assert [r["path"] for r in rows] == paths
    assert {i: r["error"] for i, r in enumerate(rows) if r["verdict"] == "error"} == {
        5: "the decoder crashed on this file (its process exited with code 9)",
        8: "the decoder hung on this file (no result after 2 s; its process was stopped)"}


def test_ray_workers_killed_mid_scan_lose_and_duplicate_nothing(tmp_path, detector_file, ray_cluster):
    from i2pscan.model.detector import Detector
    from i2pscan.scan.options import ScanOptions
    from i2pscan.scan.ray import RayExecutor
    from i2pscan.scan.session import run_scan

    paths = [str(noise_image(tmp_path / f"{i:03d}.png", seed=i)) for i in range(96)]
    detector = Detector.load(detector_file)
    expected = []
    run_scan(paths, None, detector, ScanOptions(workers=0, crops=5), on_row=expected.append)
    rows, killed = [], []

    def on_row(row):
        rows.append(row)
        if len(rows) == 8:  # the first block is in: kill the model actor and the decoders now at work
            for title in ("_Scorer", "_decode_block"):
                for pid in _ray_processes(title):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(title)

    run_scan(paths, None, detector, ScanOptions(crops=5), on_row=on_row,
             executor=lambda *args: RayExecutor("auto", *args, block_files=8))
    assert "_Scorer" in killed
    _same_rows(rows, expected)


def test_resume_after_the_driver_is_killed(tmp_path, detector_file, ray_cluster):
    for i in range(160):
        noise_image(tmp_path / "in" / f"{i:03d}.png", seed=i, size=96)
    cmd = [sys.executable, "-m", "i2pscan", "scan", "in", "-d", str(detector_file), "-o", "r.parquet", "-q",
           "--ray", ray_cluster, "--crops", "9", "--flush-rows", "8", "--format", "jsonl"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    parts = tmp_path / "r.parquet.parts"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and len(list(parts.glob("shard-*.parquet")) if parts.exists() else []) < 2:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    shards = sorted(parts.glob("shard-*.parquet"))
    assert shards and sum(pq.read_metadata(s).num_rows for s in shards) < 160, proc.stderr.read().decode()
    r = subprocess.run(cmd + ["--resume"], cwd=tmp_path, capture_output=True)
    assert r.returncode in (0, 1), r.stderr.decode()
    rows = report_rows(tmp_path / "r.parquet")
    assert [row["path"] for row in rows] == [f"in/{i:03d}.png" for i in range(160)]
    assert not parts.exists()


def test_unreachable_cluster_is_a_usage_error(tmp_path, detector_file):
    noise_image(tmp_path / "a.png")
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    r = subprocess.run([sys.executable, "-m", "i2pscan", "scan", "a.png", "-d", str(detector_file), "-q",
                        "--ray", "ray://127.0.0.1:9"], cwd=tmp_path, capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 2
    assert r.stderr.startswith("Error: cannot connect to the Ray cluster at ray://127.0.0.1:9: "), r.stderr
    assert len(r.stderr.splitlines()) == 1, r.stderr
    assert r.stdout == ""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> list[str]:
    """Local addresses listening on ``port`` (from /proc/net/tcp and tcp6)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:
                found.append(address)
    return found


@pytest.fixture(scope="module")
def token_cluster(tmp_path_factory):
    """A cluster as `ray start` makes one where a token exists: token authentication on, listening
    on 127.0.0.1 only (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, as docs/ray.md says). It runs in the
    foreground (--block) below this process and is stopped by its pid, with everything it started."""
    home = tmp_path_factory.mktemp("ray-home")
    env = {**os.environ, "HOME": str(home), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    env.pop("RAY_AUTH_MODE", None)
    subprocess.run(["ray", "get-auth-token", "--generate"], env=env, capture_output=True, check=True)
    port = _free_port()
    # a temp dir of its own: `ray start` records itself there as "the current cluster", where other
    # sessions' ray.init() would otherwise find it and attach
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    head = subprocess.Popen(["ray", "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(port),
                             "--num-cpus", "2", "--include-dashboard", "false", "--disable-usage-stats",
                             f"--temp-dir={temp}"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not _listening(port) and head.poll() is None:
        time.sleep(0.5)
    try:
        assert _listening(port), head.stdout.read1().decode(errors="replace") if head.poll() is not None else "no GCS"
        yield f"127.0.0.1:{port}", home, port
    finally:
        started = _descendants(head.pid)
        head.send_signal(signal.SIGINT)  # `ray start --block` stops what it started
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(os.path.exists(f"/proc/{pid}") for pid in started):
            time.sleep(0.5)
        left = [pid for pid in started if os.path.exists(f"/proc/{pid}")]
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)
        assert not left, f"Ray processes outlived their cluster: {left}"


def test_a_token_cluster_on_loopback_listens_there_only(token_cluster):
    _, _, port = token_cluster
    addresses = _listening(port)
    loopback = ("0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000")
    assert addresses and all(a in loopback for a in addresses), addresses


def test_ray_with_the_token_on_this_machine_scans_quietly(tmp_path, detector_file, token_cluster):
    address, home, _ = token_cluster
    noise_image(tmp_path / "a.png")
    env = {**os.environ, "HOME": str(home)}
    for variable in ("RAY_AUTH_MODE", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_ADDRESS"):
        env.pop(variable, None)
    r = subprocess.run([sys.executable, "-m", "i2pscan", "scan", "a.png", "-d", str(detector_file), "-q", "--ray",
                        address, "--format", "jsonl"], cwd=tmp_path, capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode in (0, 1), r.stderr
    assert r.stderr == ""  # -q: nothing, Ray's own C++ log lines included
    assert len(r.stdout.splitlines()) == 1


def test_ray_without_the_token_exits_2_naming_it(tmp_path, detector_file, token_cluster):
    address, _, _ = token_cluster
    noise_image(tmp_path / "a.png")
    env = {**os.environ, "HOME": str(tmp_path)}  # no ~/.ray/auth_token here
    for variable in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"):
        env.pop(variable, None)
    r = subprocess.run([sys.executable, "-m", "i2pscan", "scan", "a.png", "-d", str(detector_file), "-q", "--ray",
                        address], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2
    assert r.stderr == (f"Error: the Ray cluster at {address} uses token authentication and there is no token on this "
                        f"machine; copy the cluster's token (`ray get-auth-token` on its head node) to "
                        f"~/.ray/auth_token, or set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH\n")
