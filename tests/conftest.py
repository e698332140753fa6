"""Shared fixtures: a small toy labelled sample, the tiny backbone, and the CLI runner."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from i2pscan.train.toydata import make_toy_dataset

from helpers import CORPORA


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


@pytest.fixture(scope="session")
def ray_cluster():
    """A real Ray cluster on 127.0.0.1 only (4 CPUs; a 2-CPU init has been seen to hang), shut down
    after the session. Yields its GCS address (HOST:PORT) for drivers in other processes."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # Ray then binds to the loopback address
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'i2pscan[ray]')")
    # address="local": always a new cluster of its own, never one that another session started
    ray.init(address="local", num_cpus=4, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
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
