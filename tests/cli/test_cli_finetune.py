import json

import pytest
import torch
from safetensors.torch import save_file

from helpers import tamper_detector
from i2pscan.model.backbone import load_backbone
from i2pscan.model.detector import Detector


@pytest.fixture(scope="module")
def trained(tmp_path_factory, toy_dir):
    """calibrate + finetune through the CLI once; returns the folder with both files."""
    from click.testing import CliRunner
    from i2pscan.cli import cli

    folder = tmp_path_factory.mktemp("trained")
    runner = CliRunner()
    r = runner.invoke(cli, ["calibrate", str(toy_dir / "tconv" / "train"), "--backbone", "i2p-tiny", "--out",
                            str(folder / "cal.safetensors"), "--top-k", "2", "--workers", "0"])
    assert r.exit_code == 0, r.stderr
    r = runner.invoke(cli, ["finetune", str(toy_dir / "tconv" / "train"), "--calibration", str(folder / "cal.safetensors"),
                            "--out", str(folder / "det.safetensors"), "--epochs", "2", "--workers", "0",
                            "--sensitivity-samples", "32", "--saliency-samples", "32", "--batch-size", "16"])
    assert r.exit_code == 0, r.stderr
    assert "detector written to" in r.stderr and "tuned weights" in r.stderr
    return folder


def test_finetune_cli_writes_detector_log_and_info(trained, run_cli):
    det = trained / "det.safetensors"
    log = [json.loads(line) for line in open(trained / "det.log.jsonl")]
    assert len(log) == 2 and {"val_auc", "train_loss"} <= set(log[0])
    r = run_cli("info", det)
    assert r.exit_code == 0
    for text in ("i2p-tiny", "critical layers S", "threshold", "training data", "validation", "bytes", "mask"):
        assert text in r.stdout
    r = run_cli("info", det, "--json")
    meta = json.loads(r.stdout)
    assert meta["kind"] == "detector" and meta["mask"]["strategy"] == "i2p"


@pytest.mark.slow
def test_finetune_dry_run_prints_the_mask(trained, toy_dir, run_cli, tmp_path):
    r = run_cli("finetune", toy_dir / "tconv" / "train", "--calibration", trained / "cal.safetensors", "--out",
                tmp_path / "d.safetensors", "--dry-run", "--strategy", "random", "--rho", "0.1", "--workers", "0")
    assert r.exit_code == 0, r.stderr
    assert "tuned weights: random" in r.stderr and "total" in r.stderr
    assert not (tmp_path / "d.safetensors").exists()


@pytest.mark.parametrize("case,message", [
    ("resume", "nothing to resume"),
    ("calibration", "not a calibration file"),
    ("weights", "calibrate again"),
    ("rho", "Invalid value for '--rho'"),
])
def test_finetune_errors(trained, toy_dir, run_cli, tmp_path, case, message):
    args = ["finetune", toy_dir / "tconv" / "train", "--calibration", trained / "cal.safetensors",
            "--out", tmp_path / "d.safetensors", "--workers", "0"]
    if case == "resume":
        args.append("--resume")
    elif case == "calibration":
        args[3] = trained / "det.safetensors"
    elif case == "weights":
        other = tmp_path / "other.safetensors"
        torch.manual_seed(1)
        random = load_backbone("i2p-tiny", None).visual.state_dict()
        save_file({f"visual.{k}": v.contiguous() for k, v in random.items()}, str(other))
        args += ["--pretrained", other]
    elif case == "rho":
        args += ["--rho", "0"]
    r = run_cli(*args)
    assert r.exit_code == 2
    assert message in r.stderr


@pytest.mark.parametrize("case,message", [
    ("sha", "backbone weights differ"),
    ("unknown-key", r"Additional properties are not allowed \('surprise' was unexpected\)"),
    ("indices", "fall outside the tensor"),
    ("head", "head tensors do not match"),
    ("last-block", "L\\* = 99 is beyond the backbone's 6 blocks"),
])
def test_detector_load_refuses_tampered_files(trained, tmp_path, case, message):
    src, dst = trained / "det.safetensors", tmp_path / "bad.safetensors"
    name = "transformer.resblocks.0.mlp.c_fc.weight"
    edits = {
        "sha": dict(meta_edit=lambda m: m["backbone"].update(sha256="0" * 64)),
        "unknown-key": dict(meta_edit=lambda m: m.update(surprise=1)),
        "indices": dict(tensor_edit=lambda t: t.update({f"delta.{name}.indices": torch.tensor([10**7], dtype=torch.int32),
                                                         f"delta.{name}.values": torch.tensor([1.0])})),
        "head": dict(tensor_edit=lambda t: t.pop("head.gate")),
        "last-block": dict(meta_edit=lambda m: m.update(last_block=99)),
    }[case]
    tamper_detector(src, dst, **edits)
    from i2pscan.errors import I2PError
    with pytest.raises(I2PError, match=message):
        Detector.load(dst)
