"""Shared fixtures: a small toy labelled sample, the tiny backbone, and the CLI runner."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from i2pscan.train.toydata import make_toy_dataset



def _corpora() -> Path:
    """../shared/corpora beside the repository (for a git worktree: beside the main checkout)."""
    repo = Path(__file__).resolve().parents[1]
    candidates = [repo.parent / "shared" / "corpora"]
    git = repo / ".git"
    if git.is_file():  # a worktree: .git names the main repository's git folder
        text = git.read_text().strip()
        if text.startswith("gitdir:"):
            main_git = (repo / text.split(":", 1)[1].strip()).resolve()
            candidates.append(main_git.parents[3] / "shared" / "corpora")  # <main>/.git/worktrees/<name>
    return next((c for c in candidates if c.is_dir()), candidates[0])


CORPORA = _corpora()


@pytest.fixture(scope="session")
def toy_dir(tmp_path_factory) -> Path:
    """Toy sample, GenImage layout: <generator>/{train,val}/{nature,ai}, 80 px tiles."""
    root = tmp_path_factory.mktemp("toy")
    make_toy_dataset(root, train_per_class=48, val_per_class=24, tile=80, generators=("tconv", "pixelshuffle"), seed=1)
    return root


@pytest.fixture(scope="session")
def tiny_backbone():
    from i2pscan.model.backbone import load_backbone

    return load_backbone("i2p-tiny")


@pytest.fixture
def run_cli():
    """Invoke the CLI in-process; returns click's Result (stdout and stderr kept apart)."""
    from i2pscan.cli import cli

    def run(*args, input=None, env=None):
        runner = CliRunner(env=env)
        return runner.invoke(cli, [str(a) for a in args], input=input, catch_exceptions=False)

    return run


@pytest.fixture
def corpus() -> Path:
    path = CORPORA / "robustness"
    if not path.is_dir():
        pytest.skip("../shared/corpora is not present on this machine")
    return path


def noise_image(path: Path, seed: int = 0, size: int = 72, width: int | None = None) -> Path:
    """A PNG (or whatever the suffix says) of uniform noise, size x width pixels (square by default)."""
    import numpy as np

    from i2pscan.io.pixels import save_image

    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 255, (size, width or size, 3), dtype=np.uint8)
    save_image(rgb, path)
    return path


def files_the_authors_read_differently(folder: Path) -> list[Path]:
    """A JPEG with EXIF orientation 6 (their code ignores it) and an RGBA PNG (their code drops
    alpha): i2pscan's own decoding would turn the first and composite the second on white."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    rotated, alpha = folder / "e-rotated.jpg", folder / "f-alpha.png"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)).save(rotated, exif=exif, quality=95)
    Image.fromarray(rng.integers(0, 255, (230, 250, 4), dtype=np.uint8), "RGBA").save(alpha)
    return [rotated, alpha]


def report_rows(report) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(report).to_pylist()


def write_corrupt_files(folder: Path) -> list[Path]:
    """A truncated JPEG, an empty file, a text file named .png; returns their paths."""
    from i2pscan.io.pixels import save_image
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    good = folder / "_good.jpg"
    save_image(np.full((64, 64, 3), 127, np.uint8), good)
    data = good.read_bytes()
    good.unlink()
    truncated = folder / "truncated.jpg"
    truncated.write_bytes(data[: len(data) // 2])
    empty = folder / "empty.png"
    empty.write_bytes(b"")
    text = folder / "notes.png"
    text.write_text("this is not an image\n")
    return [truncated, empty, text]


@pytest.fixture
def chdir(tmp_path):
    old = os.getcwd()
    os.chdir(tmp_path)
    yield tmp_path
    os.chdir(old)


@pytest.fixture(scope="session")
def detector_file(tmp_path_factory, toy_dir) -> Path:
    """A detector trained on the toy tconv generator with the tiny backbone (a few seconds)."""
    from i2pscan.model.backbone import load_backbone
    from i2pscan.train.calibrate import CalibrateConfig, calibrate
    from i2pscan.train.augment import Augment
    from i2pscan.train.samples import load_labelled
    from i2pscan.train.finetune import FinetuneConfig, finetune

    folder = tmp_path_factory.mktemp("detector")
    sample = load_labelled(toy_dir / "tconv" / "train")
    cal = calibrate(load_backbone("i2p-tiny"), sample, CalibrateConfig(top_k=2, folds=3))
    out = folder / "detector.safetensors"
    finetune(load_backbone("i2p-tiny"), cal, sample, out,
             FinetuneConfig(epochs=2, batch_size=16, sensitivity_samples=32, saliency_samples=32,
                            augment=Augment(blur_p=0.1, jpeg_p=0.1, jpeg_quality=(80, 100)), lr_backbone=1e-3))
    return out


def tamper_detector(src, dst, meta_edit=None, tensor_edit=None):
    """Copy a detector file with its metadata and/or tensors edited in place by the callbacks."""
    from i2pscan.model import tensorfile

    kind, meta, tensors = tensorfile.read(src, ("detector",))
    if meta_edit:
        meta_edit(meta)
    if tensor_edit:
        tensor_edit(tensors)
    tensorfile.write(dst, kind, tensors, meta)
    return dst


@pytest.fixture(scope="session")
def ray_cluster():
    """A real Ray cluster on 127.0.0.1 only (4 CPUs; a 2-CPU init has been seen to hang), shut down
    after the session. Yields its GCS address (HOST:PORT) for drivers in other processes."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # Ray then binds to the loopback address
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'i2pscan[ray]')")
    ray.init(num_cpus=4, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
             logging_level="ERROR")
    address = ray.get_runtime_context().gcs_address
    assert address.startswith("127.0.0.1:"), address
    yield address
    ray.shutdown()


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """The backbone-hash cache (XDG_CACHE_HOME/i2pscan) lives in a temporary folder during tests."""
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    yield
    if old is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = old
