"""Gathering selected pre-activations with a sparse backward pass (the fast path of the TopK family).

The dense pre-activations ``relu(x @ W_enc + b)`` are computed once without autograd; only the ``n`` selected
entries enter the graph. Their backward touches only those entries: ``grad W_enc[:, j] += g * x[b]`` through a
sparse ``[d_sae, batch]`` matrix product, ``grad b[j] += g``, instead of a dense ``[batch, d_sae]`` gradient and a
second large matmul.
"""

from __future__ import annotations

import torch
from torch import Tensor


class GatherPreActivations(torch.autograd.Function):
    """values[i] = relu(x[rows[i]] @ W_enc[:, cols[i]] + bias[cols[i]]), read from precomputed ``pre``."""

    @staticmethod
    def forward(ctx, x: Tensor, W_enc: Tensor, bias: Tensor, pre: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
        values = pre[rows, cols]
        ctx.save_for_backward(x, W_enc, rows, cols, values)
        return values

    @staticmethod
    def backward(ctx, grad_values: Tensor):
        x, W_enc, rows, cols, values = ctx.saved_tensors
        grad_values = grad_values * (values > 0)  # ReLU
        grad_x = grad_W = grad_bias = None
        if ctx.needs_input_grad[1]:
            sparse = torch.sparse_coo_tensor(torch.stack([cols, rows]), grad_values, (W_enc.shape[1], x.shape[0]),
                                             check_invariants=False)
            grad_W = torch.sparse.mm(sparse.coalesce(), x).T.contiguous()  # [d_in, d_sae]
        if ctx.needs_input_grad[2]:
            grad_bias = torch.zeros(W_enc.shape[1], dtype=grad_values.dtype, device=grad_values.device)
            grad_bias.index_add_(0, cols, grad_values)
        if ctx.needs_input_grad[0]:
            grad_x = torch.zeros_like(x).index_add_(0, rows, grad_values[:, None] * W_enc.T[cols])
        return grad_x, grad_W, grad_bias, None, None, None


def gather_pre_activations(x: Tensor, W_enc: Tensor, bias: Tensor, pre: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """Differentiable ``pre[rows, cols]`` with a sparse backward.

    x: ``[batch, d_in]``, W_enc: ``[d_in, d_sae]``, bias: ``[d_sae]``, pre: ``[batch, d_sae]`` =
    ``relu(x @ W_enc + bias)`` computed without autograd; rows, cols: ``[n]``. Returns ``[n]``.
    """
    return GatherPreActivations.apply(x, W_enc, bias, pre, rows, cols)
