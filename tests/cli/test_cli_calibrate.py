import shutil

import pytest

from helpers import write_corrupt_files
from i2pscan import __version__
from i2pscan.train.calibrate import Calibration
from i2pscan.cli import cli


def test_version_and_help(run_cli):
    r = run_cli("--version")
    assert r.exit_code == 0 and __version__ in r.stdout
    r = run_cli("--help")
    assert r.exit_code == 0
    for name in ("calibrate", "finetune", "scan", "evaluate", "info", "report", "demo-data"):
        assert name in r.stdout


def test_every_command_and_option_is_documented():
    for name, command in cli.commands.items():
        assert command.help and len(command.help) > 40, name
        for param in command.params:
            if param.param_type_name == "option" and param.name not in ("help",):
                assert param.help, f"{name} --{param.name} has no help text"


def test_calibrate_end_to_end(tmp_path, toy_dir, run_cli):
    out = tmp_path / "cal.safetensors"
    r = run_cli("calibrate", toy_dir / "tconv" / "train", "--backbone", "i2p-tiny", "--out", out, "--top-k", "2",
                "--max-per-class", "30", "--workers", "0", "--plot", tmp_path / "cal.png")
    assert r.exit_code == 0, r.stderr
    assert r.stdout == ""  # results go to the file; the table is a log on stderr
    assert "critical layers S" in r.stderr and "importance per block" in r.stderr
    cal = Calibration.load(out)
    assert len(cal.critical) == 2 and cal.sample["counts"]["real"] == 30
    assert (tmp_path / "cal.png").read_bytes()[:4] == b"\x89PNG"
    info = run_cli("info", out)
    assert info.exit_code == 0 and "critical layers S" in info.stdout and str(cal.critical) in info.stdout


def test_calibrate_lists_corrupt_files_as_skipped(tmp_path, toy_dir, run_cli):
    data = tmp_path / "data"
    shutil.copytree(toy_dir / "tconv" / "val", data)
    bad = write_corrupt_files(data / "ai")
    r = run_cli("calibrate", data, "--backbone", "i2p-tiny", "--out", tmp_path / "c.safetensors", "--workers", "2",
                "--folds", "3")
    assert r.exit_code == 0, r.stderr
    for path in bad:
        assert f"skipped {path}" in r.stderr
    assert f"{len(bad)} skipped" in r.stderr


@pytest.mark.parametrize("case,message", [
    ("empty", "no labelled images"),
    ("one-class", "no fake ones"),
    ("backbone", "unknown backbone 'ViT-Nope'"),
    ("manifest", "cannot read manifest"),
    ("weights", "weights file not found"),
])
def test_calibrate_errors_are_one_line_exit_2(tmp_path, toy_dir, run_cli, case, message):
    data = toy_dir / "tconv" / "train"
    extra = []
    if case == "empty":
        data = tmp_path / "empty"
        data.mkdir()
    elif case == "one-class":
        data = toy_dir / "tconv" / "train" / "nature"
    elif case == "backbone":
        extra = ["--backbone", "ViT-Nope"]
    elif case == "manifest":
        data = tmp_path / "m.parquet"
        data.write_bytes(b"PAR1 not really")
    elif case == "weights":
        extra = ["--pretrained", str(tmp_path / "nope.safetensors")]
    r = run_cli("calibrate", data, "--out", tmp_path / "c.safetensors", *(extra or ["--backbone", "i2p-tiny"]))
    assert r.exit_code == 2
    assert message in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "c.safetensors").exists()


def test_info_refuses_foreign_files(tmp_path, run_cli):
    import torch
    from safetensors.torch import save_file

    pickle = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(2)}, pickle)
    r = run_cli("info", pickle)
    assert r.exit_code == 2 and "is a pickle" in r.stderr
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    r = run_cli("info", foreign)
    assert r.exit_code == 2 and "not an i2pscan" in r.stderr
    truncated = tmp_path / "trunc.safetensors"
    truncated.write_bytes(foreign.read_bytes()[:20])
    r = run_cli("info", truncated)
    assert r.exit_code == 2 and "truncated or corrupt" in r.stderr
