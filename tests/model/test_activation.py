"""QuickGELU or GELU: recorded activations win, files follow their config, ambiguity is refused."""

import json

import pytest
import torch

from i2pscan.model.backbone import load_backbone, resolve_quick_gelu
from i2pscan.cli.app import with_flags
from i2pscan.errors import I2PError

AMBIGUOUS = ("cannot tell which activation weights.bin was trained with (ViT-B-32 weights differ: openai uses "
             "QuickGELU, laion2b_e16 GELU): pass `backbone` ViT-B-32-quickgelu for OpenAI-style weights or "
             "`no_quick_gelu` for GELU, or put its open_clip_config.json beside it")


@pytest.fixture
def weights(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"not loaded by these tests")
    return path


def test_a_file_of_a_model_whose_known_weights_differ_is_refused(weights):
    with pytest.raises(I2PError) as err:
        resolve_quick_gelu("ViT-B-32", str(weights))
    assert str(err.value) == AMBIGUOUS


def test_quickgelu_names_config_beside_the_file_and_explicit_choices_decide(weights):
    assert resolve_quick_gelu("ViT-B-32-quickgelu", str(weights)) is True
    assert resolve_quick_gelu("ViT-B-32", str(weights), quick_gelu=False) is False
    assert resolve_quick_gelu("ViT-B-32", str(weights), quick_gelu=True) is True
    with pytest.raises(I2PError, match="^ViT-B-32-quickgelu is a QuickGELU model"):
        resolve_quick_gelu("ViT-B-32-quickgelu", str(weights), quick_gelu=False)
    beside = weights.parent / "open_clip_config.json"
    beside.write_text(json.dumps({"model_cfg": {"embed_dim": 512, "quick_gelu": True}}))
    assert resolve_quick_gelu("ViT-B-32", str(weights)) is True
    beside.write_text(json.dumps({"model_cfg": {"embed_dim": 512}}))
    assert resolve_quick_gelu("ViT-B-32", str(weights)) is False
    beside.write_text("{broken")
    with pytest.raises(I2PError, match="^cannot read the activation from .*open_clip_config.json: "):
        resolve_quick_gelu("ViT-B-32", str(weights))


def test_tags_follow_open_clip_and_unambiguous_models_need_no_choice(weights):
    assert resolve_quick_gelu("ViT-B-32", "openai") is True
    assert resolve_quick_gelu("ViT-B-32", "laion2b_e16") is False
    assert resolve_quick_gelu("i2p-tiny", str(weights)) is False


def test_calibrate_cli_refuses_to_guess_with_exit_2(run_cli, toy_dir, tmp_path, weights):
    r = run_cli("calibrate", toy_dir / "tconv" / "train", "--out", tmp_path / "c.safetensors",
                "--backbone", "ViT-B-32", "--pretrained", weights, "--device", "cpu")
    assert r.exit_code == 2
    assert r.stderr.strip() == f"Error: {with_flags(AMBIGUOUS)}"
    assert r.stdout == "" and not (tmp_path / "c.safetensors").exists()


@pytest.mark.slow
def test_the_activation_is_built_recorded_and_checked_by_finetune(tmp_path, toy_dir):
    from i2pscan.train.calibrate import CalibrateConfig, calibrate
    from i2pscan.train.finetune import finetune
    from i2pscan.train.samples import load_labelled

    plain, quick = load_backbone("i2p-tiny"), load_backbone("i2p-tiny", quick_gelu=True)
    x = torch.randn(2, 3, plain.image_size, plain.image_size, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(plain.taps(x, [2])[2], quick.taps(x, [2])[2])
    assert quick.identity()["model_config"]["quick_gelu"] is True
    assert plain.identity()["model_config"]["quick_gelu"] is False
    sample = load_labelled(toy_dir / "tconv" / "train", max_per_class=6)
    cal = calibrate(quick, sample, CalibrateConfig(top_k=1, folds=2))
    with pytest.raises(I2PError, match="^the calibration was made with QuickGELU, this backbone uses GELU"):
        finetune(load_backbone("i2p-tiny"), cal, sample, tmp_path / "d.safetensors")


def test_debug_shows_the_cause_of_a_library_error(run_cli, tmp_path, toy_dir):
    bad = tmp_path / "damaged.safetensors"
    bad.write_bytes(b"\x00" * 64)
    args = ("calibrate", toy_dir / "tconv" / "train", "--out", tmp_path / "c.safetensors", "--backbone", "i2p-tiny",
            "--pretrained", bad, "--device", "cpu")
    quiet = run_cli(*args)
    loud = run_cli(*args, env={"I2PSCAN_DEBUG": "1"})
    assert quiet.exit_code == loud.exit_code == 2
    assert quiet.stderr.startswith(f"Error: cannot load weights {bad} into i2p-tiny: ") and "Traceback" not in quiet.stderr
    assert "Traceback (most recent call last)" in loud.stderr
    assert loud.stderr.strip().splitlines()[-1] == quiet.stderr.strip()

