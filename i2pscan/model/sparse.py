"""Sparse deltas on frozen linear layers, without a dense copy of the weights (DESIGN §1.2).

A tuned weight matrix is W = W0 + S, with S zero except at k fixed (row, col) entries whose
values train. ``SparseLinearFunction`` computes

    y = x W0ᵀ + b + x Sᵀ
    dL/dx = dy W0 + dy S
    dL/dvalues[j] = sum over tokens of dy[:, rows[j]] * x[:, cols[j]]

(the last is a sampled dense-dense product: one dot product per tuned entry, never the dense
``out x in`` gradient). W0 and the bias get no gradient. Backward keeps only x (as xᵀ), besides
the frozen W0 and the small index and value tensors: beyond what a frozen layer costs, memory and
work grow with k (and with the activations, for the transposes), not with the size of the
matrix. On CPU and CUDA the sparse products run as CSR sparse-dense products (``torch.sparse``
``addmm`` and ``sampled_addmm``), which are deterministic on CPU; elsewhere they fall back to
gathers and ``index_add``, with a [k, tokens] temporary.

``SparseLinear`` replaces a tuned ``nn.Linear`` and ``SparseAttention`` an ``nn.MultiheadAttention``
whose packed ``in_proj_weight`` and/or ``out_proj`` is tuned. Both hold the same frozen Parameter
objects under the same names (``weight``/``bias``, ``in_proj_weight``/``in_proj_bias``/``out_proj``),
plus a ``SparseDelta`` that carries the trainable ``values`` and their flat ``indices``.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from i2pscan.errors import ConfigError

__all__ = ["SparseDelta", "SparseLinear", "SparseAttention", "SparseLinearFunction", "sparse_linear", "DenseDelta",
           "attach"]

_CSR_DEVICES = ("cpu", "cuda")


class SparseDelta(nn.Module):
    """The tuned entries of one ``[out, in]`` weight matrix: ``values`` at flat ``indices``.

    Flat index i is entry (i // in, i % in). Besides ``indices`` (int64, as given) it keeps the
    CSR layout of S and of Sᵀ: row pointers, column indices, and the permutation that puts
    ``values`` in that order.
    """

    def __init__(self, indices: torch.Tensor, shape: tuple[int, int] | torch.Size,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32):
        super().__init__()
        out_features, in_features = (int(s) for s in shape)
        self.shape = (out_features, in_features)
        indices = torch.as_tensor(indices).to(device=device, dtype=torch.long).reshape(-1)
        k = len(indices)
        if k and (int(indices.min()) < 0 or int(indices.max()) >= out_features * in_features):
            raise ValueError(f"indices must be in [0, {out_features * in_features}) "
                             f"for a {out_features}x{in_features} weight")
        if k and len(torch.unique(indices)) != k:
            raise ValueError("indices must not repeat")
        rows, cols = indices // in_features, indices % in_features
        index = torch.int32 if max(out_features, in_features, k) < 2**31 else torch.long
        for suffix, major, minor, n in (("", rows, cols, out_features), ("_t", cols, rows, in_features)):
            perm = torch.argsort(major * (in_features if suffix == "" else out_features) + minor)
            crow = torch.zeros(n + 1, dtype=torch.long, device=indices.device)
            crow[1:] = torch.bincount(major, minlength=n).cumsum(0)
            self.register_buffer("crow" + suffix, crow.to(index))
            self.register_buffer("col" + suffix, minor[perm].to(index))
            self.register_buffer("perm" + suffix, perm)
        self.register_buffer("indices", indices)
        self.values = nn.Parameter(torch.zeros(k, device=indices.device, dtype=dtype))
        _quiet_csr_warning()

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """``F.linear(x, weight + S, bias)`` for this delta's S, without forming ``weight + S``."""
        if DENSE_INFERENCE and x.device.type == "cuda" and not torch.is_grad_enabled():
            return self.dense_linear(x, weight, bias)
        return sparse_linear(x, weight, bias, self.values, self)

    def dense_linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """Inference: ``F.linear(x, weight, bias)`` and ``F.linear(x, S)`` with S as a dense matrix in
        the autocast dtype (or x's without autocast), summed in float32. The delta keeps its own relative
        precision (it is never rounded against W0), and two dense products on a GPU are several
        times faster than the CSR product (``benchmarks/bench_delta_path.py``). No gradients."""
        dtype = torch.get_autocast_dtype(x.device.type) if _low_precision(x) else x.dtype
        s = torch.zeros(self.shape[0] * self.shape[1], dtype=dtype, device=x.device)
        s.index_put_((self.indices,), self.values.detach().to(dtype))
        y = F.linear(x, weight, bias).float()
        return y.add_(F.linear(x, s.view(self.shape)))

    def extra_repr(self) -> str:
        return f"shape={self.shape}, k={len(self.indices)}"


# Scans on CUDA add the delta as a second dense product (``SparseDelta.dense_linear``); False
# keeps the CSR product there too (benchmarks compare the two).
DENSE_INFERENCE = True


def _low_precision(x: torch.Tensor) -> bool:
    return torch.is_autocast_enabled(x.device.type)


def sparse_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, values: torch.Tensor,
                  delta: SparseDelta, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """``SparseLinearFunction`` under autocast too: the dense product runs in the autocast dtype, as
    ``F.linear`` would; the sparse terms run in float32 (or wider) and are added to the output in
    ``out_dtype``, by default float32 (or wider): a bf16 output would round a small delta's
    product away again."""
    device = x.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
    if out_dtype is None:
        out_dtype = torch.promote_types(dtype or x.dtype, values.dtype)
    return SparseLinearFunction.apply(x, weight, bias, values, delta, dtype, out_dtype)


class SparseLinearFunction(torch.autograd.Function):
    """y = x W0ᵀ + b + x Sᵀ; gradients for ``x`` and ``values`` only (see the module docstring).

    ``apply(x, weight, bias, values, delta, dtype=None, out_dtype=None)``: ``delta`` gives the
    positions of ``values``; ``dtype`` is the precision of the dense product (``None``: x's) and
    ``out_dtype`` that of y, to which the sparse term is added (``None``: ``dtype``).

    It works feature-major: on xᵀ ``[in, N]`` (N = all leading dims), the layout in which the CSR
    products stream contiguous rows. It returns y as a transposed view of a contiguous yᵀ, and
    dL/dx likewise, so that consecutive layers (c_fc, GELU, c_proj; and their gradients) hand
    each other that layout without copies; an input in the usual layout is transposed once.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, values, delta: SparseDelta, dtype: torch.dtype | None = None,
                out_dtype: torch.dtype | None = None):
        dtype = dtype or x.dtype
        sdtype = torch.promote_types(dtype, values.dtype)
        lead = x.shape[:-1]
        x_t = x.reshape(-1, x.shape[-1]).t().contiguous()  # free when x is a view of a contiguous xᵀ
        with torch.autocast(x.device.type, enabled=False):
            w, xd = weight.to(dtype), x_t.to(dtype)
            y_t = w @ xd if bias is None else torch.addmm(bias.to(dtype)[:, None], w, xd)
            if out_dtype is not None and out_dtype != y_t.dtype:
                y_t = y_t.to(out_dtype)
            _add_s(y_t, delta, values.to(sdtype), x_t.to(sdtype), transpose=False)
        ctx.delta, ctx.dtype, ctx.sdtype, ctx.lead = delta, dtype, sdtype, lead
        ctx.save_for_backward(x_t, weight, values)
        return y_t.t().view(*lead, y_t.shape[0])

    @staticmethod
    def backward(ctx, grad_y):
        x_t, weight, values = ctx.saved_tensors
        delta, dtype, sdtype = ctx.delta, ctx.dtype, ctx.sdtype
        gy_t = grad_y.reshape(-1, grad_y.shape[-1]).t().contiguous()
        grad_x = grad_values = None
        with torch.autocast(gy_t.device.type, enabled=False):
            if ctx.needs_input_grad[0]:
                gx_t = (weight.to(dtype).t() @ gy_t.to(dtype)).to(torch.promote_types(dtype, x_t.dtype))
                _add_s(gx_t, delta, values.to(sdtype), gy_t.to(sdtype), transpose=True)
                grad_x = gx_t.to(x_t.dtype).t().view(*ctx.lead, gx_t.shape[0])
            if ctx.needs_input_grad[3]:
                grad_values = _sampled(delta, gy_t.to(sdtype), x_t.to(sdtype)).to(values.dtype)
        return grad_x, None, None, grad_values, None, None, None


def _add_s(out_t: torch.Tensor, delta: SparseDelta, values: torch.Tensor, a_t: torch.Tensor,
           transpose: bool) -> None:
    """out_t += S a_t (``transpose=False``: a_t [in, N], out_t [out, N]) or Sᵀ a_t (``True``), in place."""
    if not len(delta.indices):
        return
    if out_t.dtype != a_t.dtype:  # autocast: the sparse term in its own precision, then added
        out_t.add_(_add_s_into(a_t.new_zeros(out_t.shape), delta, values, a_t, transpose))
    else:
        _add_s_into(out_t, delta, values, a_t, transpose)


def _add_s_into(out_t: torch.Tensor, delta: SparseDelta, values: torch.Tensor, a_t: torch.Tensor,
                transpose: bool) -> torch.Tensor:
    if a_t.device.type in _CSR_DEVICES:
        sfx = "_t" if transpose else ""
        crow, col, perm = getattr(delta, "crow" + sfx), getattr(delta, "col" + sfx), getattr(delta, "perm" + sfx)
        shape = delta.shape[::-1] if transpose else delta.shape
        s = torch.sparse_csr_tensor(crow, col, values.index_select(0, perm), shape, check_invariants=False)
        return out_t.addmm_(s, a_t)
    rows, cols = delta.indices // delta.shape[1], delta.indices % delta.shape[1]
    src, dst = (rows, cols) if transpose else (cols, rows)
    return out_t.index_add_(0, dst, a_t[src] * values[:, None])


def _sampled(delta: SparseDelta, gy_t: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
    """For every tuned entry j, sum_n gy_t[rows[j], n] * x_t[cols[j], n], in the order of ``indices``."""
    if not len(delta.indices):
        return gy_t.new_zeros(0)
    if x_t.device.type in _CSR_DEVICES:
        pattern = torch.sparse_csr_tensor(delta.crow, delta.col, gy_t.new_zeros(len(delta.perm)), delta.shape,
                                          check_invariants=False)
        dots = torch.sparse.sampled_addmm(pattern, gy_t, x_t.t(), beta=0.0).values()
        return torch.empty_like(dots).index_copy_(0, delta.perm, dots)
    rows, cols = delta.indices // delta.shape[1], delta.indices % delta.shape[1]
    return (gy_t[rows] * x_t[cols]).sum(1)


class SparseLinear(nn.Module):
    """A frozen ``nn.Linear`` with a trainable sparse delta on its weight (same ``weight``/``bias``
    Parameters; ``values``/``indices`` are the delta's)."""

    def __init__(self, linear: nn.Linear, indices: torch.Tensor):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias
        self.delta = SparseDelta(indices, linear.weight.shape, linear.weight.device)

    @property
    def values(self) -> nn.Parameter:
        return self.delta.values

    @property
    def indices(self) -> torch.Tensor:
        return self.delta.indices

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.delta.linear(x, self.weight, self.bias)


class SparseAttention(nn.Module):
    """Drop-in for an ``nn.MultiheadAttention`` (packed ``in_proj_weight``) with sparse deltas on
    the in-projection (``in_proj_delta``) and/or the out-projection (``out_proj`` a SparseLinear).

    Same call as the module it replaces; returns ``(output, None)``: attention weights are never
    computed (``need_weights=True`` is refused), nor is ``key_padding_mask`` supported. ``attn_mask``
    follows MultiheadAttention's convention (bool True = may not attend; float = added), shape
    ``[L, S]`` or ``[B * heads, L, S]``.
    """

    def __init__(self, mha: nn.MultiheadAttention, in_proj_indices: torch.Tensor | None = None,
                 out_proj_indices: torch.Tensor | None = None):
        super().__init__()
        if mha.in_proj_weight is None or mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError("SparseAttention needs a MultiheadAttention with a packed in-projection, "
                             "no bias_k/bias_v and no add_zero_attn")
        self.embed_dim, self.num_heads, self.head_dim = mha.embed_dim, mha.num_heads, mha.head_dim
        self.batch_first, self.dropout = mha.batch_first, mha.dropout
        self.in_proj_weight = mha.in_proj_weight
        self.in_proj_bias = mha.in_proj_bias
        self.in_proj_delta = (None if in_proj_indices is None
                              else SparseDelta(in_proj_indices, mha.in_proj_weight.shape, mha.in_proj_weight.device))
        self.out_proj = mha.out_proj if out_proj_indices is None else SparseLinear(mha.out_proj, out_proj_indices)

    def _in_proj(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_proj_delta is None:
            return F.linear(x, self.in_proj_weight, self.in_proj_bias)
        return self.in_proj_delta.linear(x, self.in_proj_weight, self.in_proj_bias)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = False,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, None]:
        if need_weights:
            raise NotImplementedError("SparseAttention does not return attention weights; pass need_weights=False")
        if key_padding_mask is not None:
            raise NotImplementedError("SparseAttention does not support key_padding_mask")
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        # now [B, L, D]: project, split the packed q, k, v and the heads into [B, H, L, hd] each
        batch, length, heads = query.shape[0], query.shape[1], self.num_heads
        if key is query and value is query:
            q, k, v = self._in_proj(query).view(batch, length, 3, heads, self.head_dim).permute(2, 0, 3, 1, 4)
        else:  # distinct inputs: each through the whole packed projection, keeping its third
            q, k, v = (self._in_proj(t).unflatten(-1, (3, heads, self.head_dim))[:, :, i].transpose(1, 2)
                       for i, t in enumerate((query, key, value)))
        if q.stride(-1) != 1:  # a feature-major projection (SparseLinearFunction): one copy, for SDPA
            q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        if attn_mask is not None:
            if attn_mask.dtype == torch.bool:
                attn_mask = torch.zeros(attn_mask.shape, dtype=q.dtype, device=q.device).masked_fill_(
                    attn_mask, float("-inf"))
            if attn_mask.dim() == 3:
                attn_mask = attn_mask.view(batch, heads, *attn_mask.shape[1:])
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                             dropout_p=self.dropout if self.training else 0.0,
                                             is_causal=is_causal and attn_mask is None)
        if isinstance(self.out_proj, SparseLinear):  # hand it [B, L, D] as a view of a contiguous [D, B*L]
            out = out.permute(1, 3, 0, 2).reshape(self.embed_dim, -1).t().view(batch, length, self.embed_dim)
        else:
            out = out.transpose(1, 2).flatten(2)
        out = self.out_proj(out)
        if unbatched:
            return out.squeeze(0), None
        return (out if self.batch_first else out.transpose(0, 1)), None


class DenseDelta(nn.Module):
    """Parametrization W = W0 + values of a wholly tuned tensor (strategy ``full``); ``indices`` is None."""

    indices = None

    def __init__(self, shape: torch.Size, device: torch.device):
        super().__init__()
        self.values = nn.Parameter(torch.zeros(shape, device=device))

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        return original + self.values


def attach(backbone, params: dict[str, nn.Parameter], indices: dict[str, torch.Tensor | None]
           ) -> dict[str, "SparseDelta | DenseDelta"]:
    """Give every tuned tensor of ``backbone`` (a ``i2pscan.backbone.Backbone``) its delta, zero
    for now; returns, by parameter name, objects with ``values`` (the Parameter to train or fill)
    and ``indices`` (flat indices into the tensor; None when dense). Training and scanning both
    use this, so a detector scores with the arithmetic it was validated with: W0 stays as it is
    and the delta is a separate float32 term (merging a small delta into W0 would round it away
    under bf16 autocast).

    A sparse delta swaps the block's modules for ones that add it without a dense copy of the
    weights: ``attn`` becomes a SparseAttention when its in- or out-projection is tuned,
    ``mlp.c_fc``/``mlp.c_proj`` SparseLinears, with the same frozen Parameters under the same
    names. A dense delta (``full``) is a parametrization W0 + values. Raises I2PError for a name
    that is not an attention or MLP weight of a kept block.
    """
    deltas: dict[str, SparseDelta | DenseDelta] = {}
    tuned = {n: idx for n, idx in indices.items() if idx is None or len(idx)}
    sparse = {n: idx for n, idx in tuned.items() if idx is not None}
    for i, block in enumerate(backbone.blocks):
        prefix = f"transformer.resblocks.{i}."
        in_proj, out_proj = sparse.get(prefix + "attn.in_proj_weight"), sparse.get(prefix + "attn.out_proj.weight")
        if in_proj is not None or out_proj is not None:
            block.attn = SparseAttention(block.attn, in_proj, out_proj)
            if in_proj is not None:
                deltas[prefix + "attn.in_proj_weight"] = block.attn.in_proj_delta
            if out_proj is not None:
                deltas[prefix + "attn.out_proj.weight"] = block.attn.out_proj.delta
        for fc in ("c_fc", "c_proj"):
            idx = sparse.get(f"{prefix}mlp.{fc}.weight")
            if idx is not None:
                setattr(block.mlp, fc, SparseLinear(getattr(block.mlp, fc), idx))
                deltas[f"{prefix}mlp.{fc}.weight"] = getattr(block.mlp, fc).delta
    unplaced = set(sparse) - set(deltas)
    if unplaced:
        raise ConfigError(f"cannot tune {sorted(unplaced)[0]}: not an attention or MLP weight of a kept block")
    modules = dict(backbone.visual.named_modules())
    for name in tuned:
        if tuned[name] is None:
            owner, attr = name.rsplit(".", 1)
            delta = DenseDelta(params[name].shape, backbone.device)
            parametrize.register_parametrization(modules[owner], attr, delta, unsafe=True)
            deltas[name] = delta
    return {n: deltas[n] for n in tuned}


_warned = False


def _quiet_csr_warning() -> None:
    """Construct one CSR tensor with warnings off: PyTorch's once-per-process 'CSR support is in
    beta' UserWarning is then spent here instead of reaching the user mid-training."""
    global _warned
    if not _warned:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.sparse_csr_tensor(torch.zeros(2, dtype=torch.long), torch.zeros(0, dtype=torch.long),
                                    torch.zeros(0), (1, 1), check_invariants=False)
        _warned = True
