"""Published detectors (RINE, UnivFD): names, info, conversion, the default, offline failure, parity."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from i2pscan.model import tensorfile
from i2pscan.errors import I2PError
from i2pscan.model.shipped import CARDS, SHIPPED, resolve, shipped_path

from helpers import CORPORA, files_the_authors_read_differently, noise_image

REPO = Path(__file__).resolve().parents[2]
THIRD_PARTY = CORPORA.parent / "third_party"  # ../shared/third_party, found as the corpora are


def test_detectors_lists_the_shipped_ones(run_cli):
    r = run_cli("detectors")
    assert r.exit_code == 0, r.output
    assert "rine-2class (default)" in r.stdout and "univfd" in r.stdout
    assert "Apache-2.0" in r.stdout and "MIT" in r.stdout


@pytest.mark.parametrize("name", SHIPPED)
def test_info_by_name_shows_the_card_and_no_hash(run_cli, name):
    r = run_cli("info", name)
    assert r.exit_code == 0, r.output
    card = CARDS[name]
    for text in ("arXiv", card["licence"], "none recorded", "ForenSynths", "torchvision rounding", "QuickGELU"):
        assert text in r.stdout
    meta = json.loads(run_cli("info", name, "--json").stdout)
    assert meta["backbone"] == {"name": "ViT-L-14", "pretrained": "openai", "pretrained_path": None, "sha256": None,
                                "num_blocks": 24, "width": 1024, "model_config": {"quick_gelu": True}}
    assert meta["preprocessing"]["crop_mode"] == "torchvision" and meta["preprocessing"]["crop_size"] == 224


def test_unknown_name_is_one_line(run_cli, tmp_path):
    noise_image(tmp_path / "a.png", 0, 32, 32)
    r = run_cli("scan", tmp_path / "a.png", "-d", "rine-4class")
    assert r.exit_code == 2
    assert r.stderr.strip().splitlines() == [
        "Error: no detector file rine-4class and no shipped detector of that name (shipped: rine-2class, univfd; "
        "`i2pscan detectors` lists them)"]
    r = run_cli("info", "nope")
    assert r.exit_code == 2 and "no shipped detector" in r.stderr
    with pytest.raises(I2PError):
        resolve("nope")
    assert resolve("univfd") == str(shipped_path("univfd"))


@pytest.mark.slow
@pytest.mark.skipif(not THIRD_PARTY.is_dir(), reason="the authors' original files are not on this machine")
def test_conversion_is_reproducible_and_matches_the_shipped_files(tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "weights" / "convert_published.py"), str(THIRD_PARTY),
                        "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    for name in SHIPPED:
        assert (tmp_path / f"{name}.safetensors").read_bytes() == shipped_path(name).read_bytes()
    rine = torch.load(THIRD_PARTY / "rine" / "model_2class_trainable.pth", map_location="cpu", weights_only=True)
    _, _, tensors = tensorfile.read(shipped_path("rine-2class"), ("detector",))
    assert sorted(tensors) == sorted(f"rine.{k}" for k in rine)
    assert all(torch.equal(tensors[f"rine.{k}"], v) for k, v in rine.items())


@pytest.mark.slow
def test_conversion_refuses_a_file_that_is_not_the_authors(tmp_path):
    (tmp_path / "rine").mkdir()
    (tmp_path / "rine" / "model_2class_trainable.pth").write_bytes(b"not the checkpoint")
    r = subprocess.run([sys.executable, str(REPO / "weights" / "convert_published.py"), str(tmp_path),
                        "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "not the authors' file" in r.stderr
    assert not (tmp_path / "out").exists()


_BLOCK_SOCKETS = """
import socket, sys
def refuse(*a, **k):
    raise OSError("network blocked by the test")
socket.socket.connect = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse
from i2pscan.cli import main
sys.argv = ["i2pscan"] + sys.argv[1:]
main()
"""


@pytest.mark.slow
def test_default_detector_offline_without_cache_fails_fast(tmp_path):
    img = noise_image(tmp_path / "a.png", 0, 64, 64)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "I2PSCAN_")) and "PROXY" not in k.upper()}
    env.update(HF_HOME=str(tmp_path / "hf"), XDG_CACHE_HOME=str(tmp_path / "cache"), HOME=str(tmp_path))
    started = time.monotonic()
    r = subprocess.run([sys.executable, "-c", _BLOCK_SOCKETS, "scan", str(img)], capture_output=True, text=True,
                       env=env, timeout=120)
    elapsed = time.monotonic() - started
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr
    assert lines[0].startswith("no --detector given: using the shipped rine-2class")
    assert len(lines) == 2 and lines[1].startswith("Error: the ViT-L-14 weights 'openai' are not cached here")
    assert "--pretrained PATH" in lines[1] and "https://huggingface.co/timm/vit_large_patch14_clip_224.openai" in lines[1]
    assert r.stdout == ""
    assert elapsed < 60  # not open_clip's ~50 s of retries plus start-up (start-up alone is a few seconds)


def test_hf_offline_env_fails_without_probing(tmp_path, run_cli, monkeypatch):
    import socket

    def refuse(*a, **k):
        raise AssertionError("no connection may be attempted when HF_HUB_OFFLINE=1")

    monkeypatch.setattr(socket, "create_connection", refuse)
    noise_image(tmp_path / "a.png", 0, 32, 32)
    r = run_cli("scan", tmp_path / "a.png", "-d", "univfd",
                env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": None})
    assert r.exit_code == 2 and "--pretrained PATH" in r.stderr


# -- parity with an independent forward written from the authors' description ---------------------

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


@pytest.fixture(scope="module")
def random_vitl(tmp_path_factory) -> Path:
    """A random ViT-L-14-quickgelu vision tower saved as an open_clip checkpoint (1.2 GB, on disk only)."""
    import open_clip
    from open_clip.model import _build_vision_tower
    from safetensors.torch import save_file

    cfg = open_clip.get_model_config("ViT-L-14-quickgelu")
    torch.manual_seed(0)
    visual = _build_vision_tower(cfg["embed_dim"], cfg["vision_cfg"], quick_gelu=True)
    with torch.no_grad():  # open_clip leaves the projection at randn * width^-0.5; make the taps varied too
        for name, p in visual.named_parameters():
            if name.endswith("ln_2.weight") or name.endswith("ln_2.bias"):
                p.normal_(0.5, 0.3)
    path = tmp_path_factory.mktemp("vitl") / "vitl-random.safetensors"
    save_file({f"visual.{k}": v.contiguous() for k, v in visual.state_dict().items()}, str(path))
    del visual
    return path


def _authors_preprocess(path: Path) -> torch.Tensor:
    from PIL import Image
    from torchvision import transforms

    t = transforms.Compose([transforms.CenterCrop(224), transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    return t(Image.open(path).convert("RGB"))


def _openai_clip_forward(w: dict, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """OpenAI's CLIP visual transformer, sequence-first as in their code: returns (ln_2 class
    tokens [B, 24, D] captured as RINE's hooks see them, projected embedding [B, 768])."""
    v = lambda k: w[f"visual.{k}"]  # noqa: E731
    b = x.shape[0]
    x = F.conv2d(x, v("conv1.weight"), stride=14)
    d = x.shape[1]
    x = x.reshape(b, d, -1).permute(2, 0, 1)  # [L, B, D]
    x = torch.cat([v("class_embedding").expand(1, b, d), x]) + v("positional_embedding")[:, None, :]
    x = F.layer_norm(x, (d,), v("ln_pre.weight"), v("ln_pre.bias"))
    hooks = []
    for i in range(24):
        p = f"transformer.resblocks.{i}."
        h = F.layer_norm(x, (d,), v(p + "ln_1.weight"), v(p + "ln_1.bias"))
        a, _ = F.multi_head_attention_forward(h, h, h, d, 16, v(p + "attn.in_proj_weight"), v(p + "attn.in_proj_bias"),
                                              None, None, False, 0.0, v(p + "attn.out_proj.weight"),
                                              v(p + "attn.out_proj.bias"), training=False, need_weights=False)
        x = x + a
        h = F.layer_norm(x, (d,), v(p + "ln_2.weight"), v(p + "ln_2.bias"))
        hooks.append(h)  # the hook's output, [L, B, D]
        m = F.linear(h, v(p + "mlp.c_fc.weight"), v(p + "mlp.c_fc.bias"))
        m = m * torch.sigmoid(1.702 * m)  # QuickGELU
        x = x + F.linear(m, v(p + "mlp.c_proj.weight"), v(p + "mlp.c_proj.bias"))
    g = torch.stack(hooks, dim=2)[0]  # as the RINE code: stack on dim 2, take sequence position 0
    emb = F.layer_norm(x[0], (d,), v("ln_post.weight"), v("ln_post.bias")) @ v("proj")
    return g, emb


def _authors_rine_head(tensors: dict) -> torch.nn.Module:
    from torch import nn

    class Rine(nn.Module):
        def __init__(self):
            super().__init__()
            self.alpha = nn.Parameter(torch.zeros(1, 24, 128))
            proj = lambda first: nn.Sequential(nn.Dropout(), *[m for i in range(4) for m in (  # noqa: E731
                nn.Linear(first if i == 0 else 128, 128), nn.ReLU(), nn.Dropout())])
            self.proj1, self.proj2 = proj(1024), proj(128)
            self.head = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Dropout(), nn.Linear(128, 128), nn.ReLU(),
                                      nn.Dropout(), nn.Linear(128, 1))

        def forward(self, g):
            g = self.proj1(g.float())
            z = torch.softmax(self.alpha, dim=1) * g
            return self.head(self.proj2(torch.sum(z, dim=1)))

    m = Rine()
    m.load_state_dict({k[len("rine."):]: t for k, t in tensors.items()})
    return m.eval()


@pytest.mark.slow
def test_published_detectors_score_as_the_authors_models(random_vitl, tmp_path):
    images = [noise_image(tmp_path / "in" / "a-224.png", 1, 224, 224), noise_image(tmp_path / "in" / "b-odd.png", 2, 227, 259),
              noise_image(tmp_path / "in" / "c-large.png", 3, 300, 401), noise_image(tmp_path / "in" / "d-small.png", 4, 180, 200),
              *files_the_authors_read_differently(tmp_path / "in")]
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    got = {}
    for name in SHIPPED:
        r = subprocess.run([sys.executable, "-m", "i2pscan", "scan", str(tmp_path / "in"), "-d", name, "--pretrained",
                            str(random_vitl), "--format", "jsonl", "--workers", "0", "-q"],
                           capture_output=True, text=True, env=env, timeout=900)
        assert r.returncode in (0, 1), r.stderr
        got[name] = {Path(row["path"]).name: row["logit"] for row in map(json.loads, r.stdout.splitlines())}
    from safetensors.torch import load_file

    weights = load_file(str(random_vitl))
    with torch.no_grad():
        g, emb = _openai_clip_forward(weights, torch.stack([_authors_preprocess(p) for p in images]))
        del weights
        _, _, rine = tensorfile.read(shipped_path("rine-2class"), ("detector",))
        rine_logits = _authors_rine_head(rine)(g).squeeze(-1)
        _, _, univfd = tensorfile.read(shipped_path("univfd"), ("detector",))
        univfd_logits = F.linear(emb, univfd["univfd.fc.weight"], univfd["univfd.fc.bias"]).squeeze(-1)
    for name, expected in (("rine-2class", rine_logits), ("univfd", univfd_logits)):
        ours = torch.tensor([got[name][p.name] for p in images], dtype=torch.float64)
        assert torch.allclose(ours, expected.double(), atol=1e-3, rtol=0), (name, ours, expected)
    assert float(univfd_logits.std()) > 1e-3 and float(rine_logits.std()) > 1e-4  # the images differ in the output


@pytest.mark.parametrize("h,w", [(224, 224), (227, 259), (261, 300), (225, 226), (180, 200), (100, 300), (230, 150)])
def test_torchvision_crop_mode_matches_center_crop(tmp_path, h, w):
    """The published detectors' preprocessing equals the authors' (CenterCrop, ToTensor, Normalize),
    offsets rounded half to even and small images padded with black."""
    from i2pscan.io.preprocess import CropTransform, Preprocess
    from i2pscan.io.decode import decode

    path = noise_image(tmp_path / "x.png", h * w, h, w)
    ours = CropTransform(Preprocess(224, MEAN, STD, "torchvision"), 1)(decode(str(path)).image, 0)[0]
    assert torch.allclose(ours, _authors_preprocess(path), atol=1e-5)


def test_scan_with_env_detector_is_not_announced(detector_file, tmp_path, run_cli):
    noise_image(tmp_path / "a.png", 0, 70, 70)
    r = run_cli("scan", tmp_path / "a.png", "--workers", "0", env={"I2PSCAN_DETECTOR": str(detector_file)})
    assert r.exit_code in (0, 1), r.output
    assert "no --detector given" not in r.stderr


@pytest.mark.slow
def test_evaluate_several_detectors_in_one_table(detector_file, toy_dir, tmp_path, run_cli):
    from helpers import tamper_detector
    import csv

    other = tamper_detector(detector_file, tmp_path / "other.safetensors",
                            meta_edit=lambda meta: meta.update(threshold=0.5, threshold_logit=0.0))
    out = tmp_path / "table.csv"
    r = run_cli("evaluate", toy_dir, "--split", "val", "-d", detector_file, "-d", other, "--out", out,
                "--workers", "0", "--max-per-class", "8")
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0])[:3] == ["detector", "perturbation", "subset"]
    for subset in ("pixelshuffle", "tconv", "overall", "mean"):
        assert [row["detector"] for row in rows if row["subset"] == subset] == [str(detector_file), str(other)]
    assert "detector" in r.stdout.splitlines()[1] or "detector" in r.stdout
    r = run_cli("evaluate", toy_dir, "--split", "val", "-d", detector_file, "-d", "nope", "--workers", "0")
    assert r.exit_code == 2 and r.stdout == "" and "no detector file nope" in r.stderr


@pytest.mark.slow
def test_bench_startup_runs(tmp_path):
    r = subprocess.run([sys.executable, "bench_startup.py", "--skip-vitl"], cwd=REPO / "benchmarks",
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "tiny i2p" in r.stdout and "second/first" in r.stdout
