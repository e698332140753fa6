import pytest
import torch
from safetensors.torch import load_file

from i2pscan.model.weights import TINY_BACKBONES, tiny_weights_path, weights_sha256
from i2pscan.model.backbone import load_backbone
from i2pscan.model.device import resolve_device
from i2pscan.errors import I2PError


@pytest.mark.parametrize("name", TINY_BACKBONES)
def test_tiny_backbones_load_by_name_and_are_small(name):
    bb = load_backbone(name)
    assert bb.image_size == 64
    assert bb.num_blocks in (6, 12)
    n_params = sum(p.numel() for p in bb.visual.parameters())
    assert 100_000 < n_params < 1_000_000
    assert tiny_weights_path(name).stat().st_size < 4_000_000
    assert bb.identity()["sha256"] == weights_sha256(bb.visual)


@pytest.mark.parametrize("name", TINY_BACKBONES)
def test_shipped_tiny_weights_regenerate_identically(name):
    from i2pscan.weights import generate

    rebuilt = generate.build(name)
    shipped = load_file(str(tiny_weights_path(name)))
    assert rebuilt.keys() == shipped.keys()
    for key in shipped:
        assert torch.equal(rebuilt[key], shipped[key]), key


def test_early_exit_taps_equal_full_forward_bitwise(tiny_backbone):
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    everything = tiny_backbone.taps(x, range(1, 7))
    full = tiny_backbone.visual.forward_intermediates(x, indices=None, stop_early=False, intermediates_only=True,
                                                      output_fmt="NLC", output_extra_tokens=True)
    for block in range(1, 7):
        early = tiny_backbone.taps(x, [block])[block]
        assert torch.equal(early, everything[block])
        assert torch.equal(early, full["image_intermediates_prefix"][block - 1][:, 0])


def test_blocks_after_the_last_tap_do_not_run(tiny_backbone):
    ran = []
    hooks = [blk.register_forward_hook(lambda m, i, o, n=n: ran.append(n))
             for n, blk in enumerate(tiny_backbone.blocks, start=1)]
    try:
        tiny_backbone.taps(torch.zeros(1, 3, 64, 64), [2, 3])
    finally:
        for h in hooks:
            h.remove()
    assert ran == [1, 2, 3]


def test_patchmean_view_appends_mean_patch_token(tiny_backbone):
    x = torch.randn(2, 3, 64, 64)
    both = tiny_backbone.taps(x, [4], view="cls+patchmean")[4]
    cls = tiny_backbone.taps(x, [4])[4]
    assert both.shape == (2, 128)
    assert torch.equal(both[:, :64], cls)


def test_truncate_drops_later_blocks_and_keeps_taps():
    bb = load_backbone("i2p-tiny")
    x = torch.randn(2, 3, 64, 64)
    before = bb.taps(x, [3])[3]
    bb.truncate(3)
    assert len(bb.blocks) == 3 and bb.run_blocks == 3 and bb.num_blocks == 6
    assert torch.equal(bb.taps(x, [3])[3], before)
    with pytest.raises(ValueError):
        bb.taps(x, [4])
    with pytest.raises(RuntimeError):
        bb.embed(x)


def test_embed_is_the_projected_clip_embedding(tiny_backbone):
    assert tiny_backbone.embed(torch.zeros(2, 3, 64, 64)).shape == (2, 32)


def test_weights_hash_is_independent_of_file_format(tmp_path, tiny_backbone):
    state = load_file(str(tiny_weights_path("i2p-tiny")))
    pt = tmp_path / "tiny.bin"
    torch.save(state, pt)
    assert load_backbone("i2p-tiny", str(pt)).sha256 == tiny_backbone.sha256


def test_random_init_is_explicit_and_differs(tiny_backbone):
    assert load_backbone("i2p-tiny", None).sha256 != tiny_backbone.sha256


def test_unknown_backbone_and_missing_weights_are_one_line_errors(tmp_path):
    with pytest.raises(I2PError, match="unknown backbone"):
        load_backbone("ViT-Nope-99")
    with pytest.raises(I2PError, match="weights file not found"):
        load_backbone("i2p-tiny", str(tmp_path / "missing.safetensors"))
    with pytest.raises(I2PError, match="neither a weights file nor a pretrained tag"):
        load_backbone("i2p-tiny", "laion-nonsense")
    wrong = tmp_path / "wrong.safetensors"
    from safetensors.torch import save_file
    save_file({"x": torch.zeros(2)}, str(wrong))
    with pytest.raises(I2PError, match="cannot load weights"):
        load_backbone("i2p-tiny", str(wrong))


def test_device_resolution_honours_or_refuses():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        with pytest.raises(I2PError, match="CUDA is not available"):
            resolve_device("cuda:0")
    with pytest.raises(I2PError, match="expected auto"):
        resolve_device("tpu")


def test_recorded_weights_resolve_tiny_local_and_missing(tmp_path, tiny_backbone):
    from i2pscan.model.weights import recorded_weights

    assert recorded_weights(tiny_backbone.identity()) == str(tiny_weights_path("i2p-tiny"))
    copy = tmp_path / "mine.safetensors"
    copy.write_bytes(tiny_weights_path("i2p-tiny").read_bytes())
    identity = load_backbone("i2p-tiny", str(copy)).identity()
    assert identity["pretrained"] == "mine.safetensors" and recorded_weights(identity) == str(copy)
    copy.unlink()
    with pytest.raises(I2PError, match="pass `pretrained` PATH"):
        recorded_weights(identity)
    assert recorded_weights(identity, "elsewhere.safetensors") == "elsewhere.safetensors"
