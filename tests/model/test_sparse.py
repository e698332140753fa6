import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from i2pscan.model import sparse
from i2pscan.model.backbone import load_backbone
from i2pscan.model.detector_file import Delta
from i2pscan.train.sensitivity import build_mask
from i2pscan.model.sparse import attach, SparseAttention, SparseDelta, SparseLinear, SparseLinearFunction, sparse_linear

F64 = torch.float64


def merge_delta(param: torch.Tensor, delta: Delta) -> None:
    """theta0 + scatter(delta), in place: the reference a separate delta term must equal."""
    values = delta.values.to(param.device, param.dtype)
    if delta.indices is None:
        param.data.add_(values)
    else:
        param.data.view(-1).index_add_(0, delta.indices.to(param.device, torch.long), values)



@pytest.fixture(params=["csr", "gather"])
def kernel(request, monkeypatch):
    """Both implementations of the sparse products: CSR kernels (CPU, CUDA) and the generic fallback."""
    if request.param == "gather":
        monkeypatch.setattr(sparse, "_CSR_DEVICES", ())
    return request.param


def _problem(out=7, inn=5, k=11, lead=(3, 4), seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    indices = torch.randperm(out * inn, generator=g)[:k]
    weight = torch.randn(out, inn, generator=g, dtype=dtype)
    bias = torch.randn(out, generator=g, dtype=dtype)
    x = torch.randn(*lead, inn, generator=g, dtype=dtype).requires_grad_()
    values = torch.randn(k, generator=g, dtype=dtype).requires_grad_()
    return indices, weight, bias, x, values


def test_gradcheck(kernel):
    indices, weight, bias, x, values = _problem()
    delta = SparseDelta(indices, weight.shape)
    assert torch.autograd.gradcheck(lambda x, v: SparseLinearFunction.apply(x, weight, bias, v, delta), (x, values))
    assert torch.autograd.gradcheck(lambda x, v: SparseLinearFunction.apply(x, weight, None, v, delta), (x, values))


@pytest.mark.parametrize("shape", [(7, 5, 11), (16, 48, 200), (48, 16, 1), (6, 9, 54)])
def test_matches_a_dense_linear_with_the_delta_scattered_in(kernel, shape):
    out, inn, k = shape
    indices, weight, bias, x, values = _problem(out, inn, k, seed=k)
    y = SparseLinearFunction.apply(x, weight, bias, values, SparseDelta(indices, weight.shape))
    dense = weight.reshape(-1).index_add(0, indices, values).view(out, inn)
    ref = F.linear(x, dense, bias)
    torch.testing.assert_close(y, ref)
    grad = torch.randn_like(y)
    torch.testing.assert_close(torch.autograd.grad(y, (x, values), grad), torch.autograd.grad(ref, (x, values), grad))


def test_autocast_runs_the_dense_product_in_its_dtype_and_the_delta_in_float32():
    indices, weight, bias, x, values = _problem(16, 48, 200, dtype=torch.float32)
    layer = nn.Linear(48, 16)
    layer.weight.data.copy_(weight)
    layer.bias.data.copy_(bias)
    module = SparseLinear(layer, indices)
    module.values.data.copy_(values.detach())
    exact = F.linear(x.detach(), weight.reshape(-1).index_add(0, indices, values).view(16, 48), bias)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = module(x)
    assert y.dtype == torch.float32  # the delta's fp32 product is not rounded into a bf16 output
    assert (y.float() - exact).norm() / exact.norm() < 1e-2
    y.float().square().sum().backward()
    assert module.values.grad.dtype == torch.float32 and x.grad.dtype == torch.float32
    exact_grad = torch.autograd.grad(exact.square().sum(), values)[0]
    assert (module.values.grad - exact_grad).norm() / exact_grad.norm() < 2e-2


def test_no_grad_for_the_frozen_weight_and_none_asked_for_x():
    indices, weight, bias, x, values = _problem()
    weight.requires_grad_()
    y = SparseLinearFunction.apply(x.detach(), weight, bias, values, SparseDelta(indices, weight.shape))
    y.sum().backward()
    assert weight.grad is None and values.grad is not None


def test_bad_indices_are_refused():
    with pytest.raises(ValueError, match="must be in"):
        SparseDelta(torch.tensor([0, 35]), (7, 5))
    with pytest.raises(ValueError, match="repeat"):
        SparseDelta(torch.tensor([3, 3]), (7, 5))


def test_sparse_linear_keeps_the_frozen_parameters_and_names():
    linear = nn.Linear(6, 4)
    module = SparseLinear(linear, torch.tensor([1, 9, 23]))
    assert module.weight is linear.weight and module.bias is linear.bias
    assert {n for n, _ in module.named_parameters()} == {"weight", "bias", "delta.values"}
    assert module.values is module.delta.values and torch.equal(module.indices, torch.tensor([1, 9, 23]))


def _merged(mha: nn.MultiheadAttention, deltas: dict[str, Delta]) -> nn.MultiheadAttention:
    merged = copy.deepcopy(mha)
    for name, delta in deltas.items():
        merge_delta(merged.get_parameter(name), delta)
    return merged


def _random_deltas(numels: dict[str, int], k: int, seed: int = 0) -> dict[str, Delta]:
    g = torch.Generator().manual_seed(seed)
    return {n: Delta(torch.randperm(numel, generator=g)[:k], torch.randn(k, generator=g) * 0.05)
            for n, numel in numels.items()}


@pytest.mark.parametrize("tuned", [("in_proj_weight", "out_proj.weight"), ("in_proj_weight",), ("out_proj.weight",)])
def test_attention_matches_multihead_attention_with_the_delta_merged(tiny_backbone, tuned):
    mha = tiny_backbone.blocks[1].attn
    deltas = _random_deltas({n: mha.get_parameter(n).numel() for n in tuned}, k=300)
    attn = SparseAttention(mha, *(deltas[n].indices if n in deltas else None
                                  for n in ("in_proj_weight", "out_proj.weight")))
    for name, delta in deltas.items():
        (attn.in_proj_delta if name == "in_proj_weight" else attn.out_proj.delta).values.data.copy_(delta.values)
    merged = _merged(mha, deltas)
    x = torch.randn(3, 17, mha.embed_dim)
    ref = merged(x, x, x, need_weights=False)[0]
    out, weights = attn(x, x, x, need_weights=False, attn_mask=None)
    assert weights is None
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # MultiheadAttention's inference fast path
        torch.testing.assert_close(attn(x, x, x, need_weights=False)[0], merged(x, x, x, need_weights=False)[0],
                                   atol=1e-5, rtol=1e-5)


def test_attention_masks_layouts_and_distinct_inputs(tiny_backbone):
    mha = copy.deepcopy(tiny_backbone.blocks[0].attn)
    deltas = _random_deltas({"in_proj_weight": mha.in_proj_weight.numel()}, k=200, seed=1)
    attn = SparseAttention(mha, deltas["in_proj_weight"].indices)
    attn.in_proj_delta.values.data.copy_(deltas["in_proj_weight"].values)
    merged = _merged(mha, deltas)
    x, y = torch.randn(2, 5, mha.embed_dim), torch.randn(2, 5, mha.embed_dim)
    causal = torch.triu(torch.ones(5, 5, dtype=torch.bool), 1)
    float_mask = torch.randn(2 * mha.num_heads, 5, 5)
    for mask in (causal, causal.float().masked_fill(causal, float("-inf")), float_mask):
        torch.testing.assert_close(attn(x, x, x, attn_mask=mask)[0],
                                   merged(x, x, x, need_weights=False, attn_mask=mask)[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attn(x, y, y)[0], merged(x, y, y, need_weights=False)[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attn(x[0], x[0], x[0])[0], merged(x[0], x[0], x[0], need_weights=False)[0],
                               atol=1e-5, rtol=1e-5)  # unbatched
    attn.batch_first = merged.batch_first = False
    xt = x.transpose(0, 1)
    torch.testing.assert_close(attn(xt, xt, xt)[0], merged(xt, xt, xt, need_weights=False)[0], atol=1e-5, rtol=1e-5)
    with pytest.raises(NotImplementedError):
        attn(x, x, x, need_weights=True)


def test_backbone_with_sparse_modules_matches_the_delta_merged(kernel):
    last = 3
    tuned = load_backbone("i2p-tiny")
    params = tuned.tunable_parameters(last)
    mask = build_mask("random", params, rho=0.05, q=0.5, seed=3)
    merged = load_backbone("i2p-tiny")
    tuned.truncate(last)
    merged.truncate(last)
    deltas = attach(tuned, params, mask.indices)
    assert set(deltas) == set(mask.indices) and all(torch.equal(d.indices, mask.indices[n]) for n, d in deltas.items())
    g = torch.Generator().manual_seed(0)
    merged_params = merged.tunable_parameters(last)
    for name, d in deltas.items():
        d.values.data.copy_(torch.randn(len(d.indices), generator=g) * 0.02)
        merge_delta(merged_params[name], Delta(d.indices, d.values.detach()))
    blocks = tuned.blocks
    assert isinstance(blocks[0].attn, SparseAttention) and isinstance(blocks[0].mlp.c_fc, SparseLinear)
    assert blocks[0].attn.in_proj_weight is params["transformer.resblocks.0.attn.in_proj_weight"]
    pixels = torch.randn(2, 3, tuned.image_size, tuned.image_size, generator=g)
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            a, b = tuned.taps(pixels, [1, 2, 3], "cls+patchmean"), merged.taps(pixels, [1, 2, 3], "cls+patchmean")
        for block in (1, 2, 3):
            torch.testing.assert_close(a[block], b[block], atol=1e-5, rtol=1e-5)
    # the gradient of the tuned entries is the merged model's weight gradient at those entries
    for p in merged_params.values():
        p.requires_grad_(True)
    sum(t.square().sum() for t in tuned.taps(pixels, [3]).values()).backward()
    sum(t.square().sum() for t in merged.taps(pixels, [3]).values()).backward()
    for name, d in deltas.items():
        torch.testing.assert_close(d.values.grad, merged_params[name].grad.reshape(-1)[d.indices],
                                   atol=1e-4, rtol=1e-4)


def test_training_a_sparse_backbone_is_bitwise_reproducible():
    def run():
        backbone = load_backbone("i2p-tiny")
        params = backbone.tunable_parameters(2)
        backbone.truncate(2)
        deltas = attach(backbone, params, build_mask("random", params, rho=0.02, q=0.5, seed=0).indices)
        opt = torch.optim.AdamW([d.values for d in deltas.values()], lr=1e-2)
        pixels = torch.randn(4, 3, backbone.image_size, backbone.image_size, generator=torch.Generator().manual_seed(1))
        for _ in range(3):
            backbone.taps(pixels, [2])[2].square().mean().backward()
            opt.step()
            opt.zero_grad()
        return torch.cat([d.values.detach() for d in deltas.values()])

    a, b = run(), run()
    assert torch.equal(a, b) and a.abs().sum() > 0


def test_an_fp32_output_keeps_the_delta_term_exact_under_autocast():
    """``out_dtype=float32``: the dense product rounds to bf16 as F.linear would, the delta's
    product is added in fp32 afterwards, so a delta far below a bf16 ulp of y still arrives."""
    indices, weight, bias, x, _ = _problem(16, 48, 200, dtype=torch.float32)
    layer = nn.Linear(48, 16)
    layer.weight.data.copy_(weight)
    layer.bias.data.copy_(bias)
    module = SparseLinear(layer, indices)
    module.values.data.fill_(1e-4)
    x = x.detach()
    s = torch.zeros(16 * 48).index_put_((indices,), module.values.data).view(16, 48)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = sparse_linear(x, layer.weight, layer.bias, module.values, module.delta, out_dtype=torch.float32)
        rounded = sparse_linear(x, layer.weight, layer.bias, module.values, module.delta, out_dtype=torch.bfloat16)
        module.values.data.zero_()
        without = sparse_linear(x, layer.weight, layer.bias, module.values, module.delta, out_dtype=torch.float32)
    assert y.dtype == torch.float32 and rounded.dtype == torch.bfloat16
    torch.testing.assert_close(y - without, x @ s.t(), rtol=0, atol=1e-6)  # fp32 rounding of y alone
    lost = (rounded.float() - without.bfloat16().float()).abs() < 1e-12
    assert lost.float().mean() > 0.5  # rounded into bf16, most of the delta's product is gone


def test_dense_inference_adds_the_delta_as_a_second_product_summed_in_fp32():
    """What a CUDA scan runs (no grad, autocast): F.linear(x, W0, b) + F.linear(x, S) in fp32,
    S dense in bf16; checked here under CPU autocast against the exact fp32 delta product."""
    indices, weight, bias, x, values = _problem(16, 48, 200, dtype=torch.float32)
    layer = nn.Linear(48, 16)
    layer.weight.data.copy_(weight)
    layer.bias.data.copy_(bias)
    module = SparseLinear(layer, indices)
    module.values.data.copy_(1e-3 * values.detach().sign())
    x = x.detach()
    s = torch.zeros(16 * 48).index_put_((indices,), module.values.data).view(16, 48)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = module.delta.dense_linear(x, layer.weight, layer.bias)
        base = F.linear(x, layer.weight, layer.bias)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y - base.float(), x @ s.t(), rtol=2e-2, atol=2e-5)  # bf16 products, fp32 sum
    with torch.autocast("cpu", dtype=torch.bfloat16):  # inference only: no gradient reaches the delta's values
        module.delta.dense_linear(x, layer.weight, layer.bias).sum().backward()
    assert module.values.requires_grad and module.values.grad is None
