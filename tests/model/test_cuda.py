"""The CUDA path: backbone under bf16 autocast, head in fp32, delta as a separate fp32 sparse term.

These run only where a GPU is (CI has none; a developer with a GPU runs ``pytest tests/test_cuda.py``).
They pin what the CPU tests cannot: that the logits a detector was validated on are the logits a
CUDA scan produces, that a CUDA scan agrees with a CPU scan of the same detector, that a small
trained delta is not rounded away, and that a CLI scan with ``--device cuda`` works end to end.
"""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from i2pscan.train.augment import Augment
from i2pscan.model.backbone import load_backbone
from i2pscan.train.calibrate import CalibrateConfig, calibrate
from i2pscan.model.detector import Detector
from i2pscan.train.finetune import FinetuneConfig, finetune
from i2pscan.train.samples import load_labelled
from i2pscan.scan.options import ScanOptions
from i2pscan.scan.session import run_scan
from i2pscan.model.sparse import SparseLinear

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

BATCH = 16


@pytest.fixture(scope="module")
def trained_on_cuda(tmp_path_factory, toy_dir):
    sample = load_labelled(toy_dir / "tconv" / "train")
    cal = calibrate(load_backbone("i2p-tiny", device="cuda"), load_labelled(sample.source, max_per_class=12),
                    CalibrateConfig(top_k=2, folds=3))
    config = FinetuneConfig(epochs=2, batch_size=BATCH, sensitivity_samples=16, saliency_samples=16, warmup_steps=30,
                            augment=Augment(blur_p=0.1, jpeg_p=0.1, jpeg_quality=(80, 100), blur_sigma=(0.0, 1.0)),
                            lr_backbone=1e-3, seed=0, crop_policies=("4:max",))
    out = tmp_path_factory.mktemp("cuda") / "d.safetensors"
    return finetune(load_backbone("i2p-tiny", device="cuda"), cal, sample, out, config)


def _scan_logits(detector, paths, crops=1, combine="mean", batch_size=BATCH):
    rows = []
    run_scan(paths, None, detector, ScanOptions(crops=crops, combine=combine, batch_size=batch_size), on_row=rows.append)
    assert [r["path"] for r in rows] == list(paths) and all(r["error"] is None for r in rows)
    return np.array([r["logit"] for r in rows], np.float32)


@pytest.mark.parametrize("crops,combine", [(1, "mean"), (4, "max")])
def test_validation_logits_equal_cuda_scan_logits(trained_on_cuda, crops, combine):
    v = trained_on_cuda.validation
    detector = Detector.load(trained_on_cuda.path, device="cuda")
    assert detector.device.type == "cuda"
    scanned = _scan_logits(detector, v["paths"], crops, combine)
    np.testing.assert_array_equal(scanned, v["logits"][f"{crops}:{combine}"])


def test_cuda_scan_agrees_with_cpu_scan(trained_on_cuda):
    """bf16 moves logits a little, never the ranking much: print the numbers for the record."""
    paths = trained_on_cuda.validation["paths"]
    on_cpu = _scan_logits(Detector.load(trained_on_cuda.path, device="cpu"), paths)
    on_cuda = _scan_logits(Detector.load(trained_on_cuda.path, device="cuda"), paths)
    diff = np.abs(on_cpu - on_cuda)
    rank = np.corrcoef(np.argsort(np.argsort(on_cpu)), np.argsort(np.argsort(on_cuda)))[0, 1]
    print(f"\nCPU fp32 vs CUDA bf16 logits over {len(paths)} images: max |diff| {diff.max():.3e}, "
          f"mean {diff.mean():.3e}, logit std {on_cpu.std():.3e}, rank correlation {rank:.4f}")
    assert rank > 0.98 and diff.max() < 0.1 * on_cpu.std() + 0.05


@pytest.mark.parametrize("grad", [False, True], ids=["scan (dense delta)", "training (CSR delta)"])
def test_a_small_delta_is_not_rounded_away_under_bf16(grad):
    """The issue's example: delta 6e-5 on W0 = 0.02. Merged into a bf16 weight it vanishes; added
    as a separate term (a scan's dense bf16 product, or training's CSR product) and summed in
    fp32, its product arrives."""
    torch.manual_seed(0)
    layer = nn.Linear(512, 64).cuda()
    layer.weight.data.fill_(0.02)
    indices = torch.arange(0, 64 * 512, 97, device="cuda")
    module = SparseLinear(layer, indices)
    module.values.data.fill_(6e-5)
    x = torch.randn(256, 512, device="cuda")
    delta_product = x @ torch.zeros(64 * 512, device="cuda").index_put_((indices,), module.values.data).view(64, 512).t()
    merged = layer.weight.data.view(-1).clone().index_add_(0, indices, module.values.data).view(64, 512)
    assert torch.equal(merged.bfloat16(), layer.weight.data.bfloat16())  # merging rounds it away
    with torch.set_grad_enabled(grad), torch.autocast("cuda", dtype=torch.bfloat16):
        with_delta = module(x).detach()
        module.values.data.zero_()
        without = module(x).detach()
    assert with_delta.dtype == torch.float32
    # the dense path multiplies bf16 copies of x and the delta (relative error ~2^-8 per term)
    rtol, atol = (1e-4, 1e-6) if grad else (1e-2, 1e-5)
    torch.testing.assert_close(with_delta - without, delta_product, rtol=rtol, atol=atol)
    assert float((with_delta - without).abs().mean()) > 0.5 * float(delta_product.abs().mean())


def test_scan_and_training_arithmetic_agree_on_cuda(tiny_backbone):
    """The dense-delta product a scan runs and the CSR product training runs give the same taps."""
    import copy

    from i2pscan.model import sparse
    from i2pscan.train.sensitivity import build_mask

    backbone = copy.deepcopy(tiny_backbone)
    backbone.visual.cuda()
    params = backbone.tunable_parameters(backbone.num_blocks)
    mask = build_mask("random", params, 0.05, 0.5, seed=0)
    modules = sparse.attach(backbone, params, mask.indices)
    for n, m in modules.items():
        m.values.data.normal_(0, 0.05 * float(params[n].detach().abs().mean()))
    x = torch.randn(8, 3, backbone.image_size, backbone.image_size, device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        dense = backbone.taps(x, [backbone.num_blocks], "cls")[backbone.num_blocks].float()
        sparse.DENSE_INFERENCE = False
        try:
            csr = backbone.taps(x, [backbone.num_blocks], "cls")[backbone.num_blocks].float()
        finally:
            sparse.DENSE_INFERENCE = True
    print(f"\ndense vs CSR delta under bf16: max |diff| {float((dense - csr).abs().max()):.3e} "
          f"on |taps| {float(csr.abs().mean()):.3e}")
    torch.testing.assert_close(dense, csr, rtol=0.05, atol=0.05 * float(csr.abs().mean()))


def test_cli_scan_on_cuda_end_to_end(trained_on_cuda, run_cli, tmp_path):
    paths = trained_on_cuda.validation["paths"][:8]
    r = run_cli("scan", *paths, "-d", str(trained_on_cuda.path), "--device", "cuda", "--format", "jsonl", "-q")
    assert r.exit_code in (0, 1), r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == 8 and all(row["score"] is not None for row in rows)


def test_sparse_backward_on_cuda_matches_dense():
    torch.manual_seed(0)
    layer = nn.Linear(48, 16).cuda()
    indices = torch.randperm(16 * 48, device="cuda")[:40]
    module = SparseLinear(layer, indices)
    module.values.data.normal_()
    x = torch.randn(4, 7, 48, device="cuda", requires_grad=True)
    values = module.values
    dense = layer.weight.detach().reshape(-1).index_add(0, indices, values).view(16, 48)
    ref = F.linear(x, dense, layer.bias.detach())
    y = module(x)
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-5)
    g = torch.randn_like(y)
    torch.testing.assert_close(torch.autograd.grad(y, (x, values), g), torch.autograd.grad(ref, (x, values), g),
                               rtol=1e-4, atol=1e-5)
