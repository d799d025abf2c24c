"""Functional learners: a network is a tuple of cells and a flat dict of named tensors.

A cell computes y = T (W x + b) (T optional, identity-initialised) followed by an optional batch
norm (batch statistics only, scale/shift are meta-parameters) and ReLU. Parameter names are
"<cell>.<role>": roles W and b are the fast weights adapted in the inner loop; T, bn_scale,
bn_shift and anything an update rule adds (zeta, per-parameter step sizes, curvature matrices)
are meta-only. Because the forward pass only reads the dict, the same code runs per task, under
`torch.func.vmap` and inside nested `torch.func.grad`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

FAST_ROLES = ("W", "b")


@dataclass(frozen=True)
class Cell:
    name: str
    kind: str  # "dense" | "conv"
    fan_in: int  # input features / channels
    fan_out: int  # output units / channels
    relu: bool = True
    kernel: int = 3
    stride: int = 1
    padding: int = 1
    batch_norm: bool = False
    max_pool: bool = False
    flatten: bool = False  # flatten the input first (conv features -> dense head)

    def weight_shape(self) -> tuple[int, ...]:
        if self.kind == "dense":
            return (self.fan_out, self.fan_in)
        return (self.fan_out, self.fan_in, self.kernel, self.kernel)


@dataclass(frozen=True)
class Network:
    cells: tuple[Cell, ...]
    loss: str = "mse"  # "mse" | "cross_entropy"
    init_std: float = 0.01  # dense weights: truncated normal with this std (MAML's sine MLP)
    # train.precision "bf16": each cell's convolution / matrix product in bfloat16, its output back in
    # the parameters' dtype, so batch norm, the loss, the meta-gradient and Adam stay in float32
    low: torch.dtype | None = None


def mlp(in_dim: int, hidden: list[int] | tuple[int, ...], out_dim: int, init_std: float = 0.01) -> Network:
    dims = [in_dim, *hidden, out_dim]
    cells = tuple(
        Cell(f"l{i}", "dense", dims[i], dims[i + 1], relu=i < len(dims) - 2) for i in range(len(dims) - 1)
    )
    return Network(cells, loss="mse", init_std=init_std)


def conv4(in_channels: int, ways: int, image_size: int, filters: int = 64, strided: bool = True,
          batch_norm: bool = True) -> Network:
    """Four 3x3 conv cells + linear head. Omniglot: stride 2, no pooling; miniImageNet: stride 1 +
    2x2 max-pool. Batch norm uses batch statistics (reference MAML), never running statistics."""
    cells, size, c = [], image_size, in_channels
    for i in range(4):
        cells.append(Cell(f"conv{i}", "conv", c, filters, stride=2 if strided else 1,
                          batch_norm=batch_norm, max_pool=not strided))
        size = (size + 1) // 2 if strided else size // 2
        c = filters
    cells.append(Cell("head", "dense", c * size * size, ways, relu=False, flatten=True))
    return Network(tuple(cells), loss="cross_entropy")


def init_params(net: Network, t_cells: bool, generator: torch.Generator, dtype=torch.float32) -> dict:
    params = {}
    for cell in net.cells:
        w = torch.empty(cell.weight_shape(), dtype=dtype)
        if cell.kind == "dense" and net.loss == "mse":
            torch.nn.init.trunc_normal_(w, std=net.init_std, a=-2 * net.init_std, b=2 * net.init_std,
                                        generator=generator)
        else:
            torch.nn.init.xavier_uniform_(w, generator=generator)
        params[f"{cell.name}.W"] = w
        params[f"{cell.name}.b"] = torch.zeros(cell.fan_out, dtype=dtype)
        if t_cells:
            params[f"{cell.name}.T"] = torch.eye(cell.fan_out, dtype=dtype)
        if cell.batch_norm:
            params[f"{cell.name}.bn_scale"] = torch.ones(cell.fan_out, dtype=dtype)
            params[f"{cell.name}.bn_shift"] = torch.zeros(cell.fan_out, dtype=dtype)
    return params


def pre_activation(cell: Cell, p: dict, x: torch.Tensor, low: torch.dtype | None = None) -> torch.Tensor:
    """y = T (W x + b): the part of a cell that Proposition 1 is about (in `low` precision, if given)."""
    W, b, T = p[f"{cell.name}.W"], p[f"{cell.name}.b"], p.get(f"{cell.name}.T")
    if low is not None:
        full = W.dtype
        W, b, x, T = W.to(low), b.to(low), x.to(low), None if T is None else T.to(low)
        return _pre_activation(cell, W, b, T, x).to(full)
    return _pre_activation(cell, W, b, T, x)


def _pre_activation(cell: Cell, W, b, T, x: torch.Tensor) -> torch.Tensor:
    if cell.kind == "dense":
        y = F.linear(x, W, b)
        return y if T is None else F.linear(y, T)
    y = F.conv2d(x, W, b, stride=cell.stride, padding=cell.padding)
    # T as a 1x1 convolution from C to C channels.
    return y if T is None else torch.einsum("oc,nchw->nohw", T, y)


BN_EPS = 1e-5  # F.batch_norm's default


def forward(net: Network, p: dict, x: torch.Tensor, batch_stats: dict | None = None) -> torch.Tensor:
    """batch_stats, if a dict, receives each batch-norm cell's batch mean and (unbiased) variance
    as "<cell>.bn_mean" / "<cell>.bn_var", detached. Where p itself holds those keys (averages of
    a task's support passes, see meta_batch.inner_adapt), they normalise instead of the batch's."""
    for cell in net.cells:
        if cell.flatten:
            x = x.flatten(1)
        x = pre_activation(cell, p, x, net.low)
        if cell.batch_norm:
            scale, shift = p[f"{cell.name}.bn_scale"], p[f"{cell.name}.bn_shift"]
            dims = [0] + list(range(2, x.dim()))  # every axis but the channel
            if batch_stats is not None:
                batch_stats[f"{cell.name}.bn_mean"] = x.detach().mean(dims)
                batch_stats[f"{cell.name}.bn_var"] = x.detach().var(dims, correction=1)
            if f"{cell.name}.bn_mean" in p:
                shape = (1, -1) + (1,) * (x.dim() - 2)
                mean, var = p[f"{cell.name}.bn_mean"].reshape(shape), p[f"{cell.name}.bn_var"].reshape(shape)
                x = (x - mean) / torch.sqrt(var + BN_EPS) * scale.reshape(shape) + shift.reshape(shape)
            else:
                # Statistics of this batch only (one task's support or query set): nothing
                # outlives the forward pass, so nothing can leak from one task to the next.
                x = F.batch_norm(x, None, None, scale, shift, training=True, eps=BN_EPS)
        if cell.relu:
            x = F.relu(x)
        if cell.max_pool:
            x = F.max_pool2d(x, 2)
    return x


def loss_and_metric(net: Network, p: dict, x: torch.Tensor, y: torch.Tensor,
                    batch_stats: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean loss and the reported metric: MSE for regression, accuracy for classification."""
    out = forward(net, p, x, batch_stats)
    if net.loss == "mse":
        # not F.mse_loss: its batching rule fixes vmap's batch size in a compiled graph, which must keep
        # a population's member count dynamic to narrow without recompiling (the same bits in eager)
        loss = (out - y).square().mean()
        return loss, loss
    loss = F.cross_entropy(out, y)
    return loss, (out.argmax(-1) == y).to(out.dtype).mean()


def broadcast_rows(m: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-output-unit values (n,) shaped to multiply a weight (n, ...) row by row."""
    return m.reshape(m.shape + (1,) * (like.dim() - m.dim()))


def cell_of(key: str) -> str:
    return key.rsplit(".", 1)[0]


def n_elements(params: dict) -> int:
    return sum(math.prod(v.shape) for v in params.values())


@dataclass(frozen=True)
class Learner:
    """A network structure and an update rule; holds no tensors."""

    net: Network
    rule: UpdateRule  # noqa: F821 - pipeline.core.rules.UpdateRule, not imported: the rules import this module

    def init_params(self, seed: int, dtype=torch.float32) -> dict:
        gen = torch.Generator().manual_seed(seed)
        params = init_params(self.net, self.rule.t_cells, gen, dtype)
        params.update(self.rule.init_meta(self.net, params, gen))
        return params
