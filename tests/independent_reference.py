"""Independent references for every few-shot update rule, written from the papers' formulas.

Nothing here imports `pipeline`: the network, the losses, every inner update and the outer gradient
are written again with explicit per-task loops, plain tensor algebra and torch.autograd, so a wrong
rule in `pipeline/core/rules/` cannot agree with them by sharing code. (`tests/reference.py`, by
contrast, calls the rules themselves and checks only the vmap plumbing.)

The network is the sine MLP: cells l0, l1, ... computing y = T (W x + b) (T only for T-net / MT-net
cells), ReLU on every cell but the last, MSE loss. Tasks are dicts of tensors as sampled by the
project (input data, not code under test): x_support (K, 1), y_support, x_query, y_query and, for
masked rules, the logistic noise g1 - g2 of each mask-logit tensor.

Formulas:
  MAML, T-net   W' = W - alpha dL/dW                       (Finn et al. 2017; Lee & Choi 2018)
  FOMAML        meta-gradient = dL_query/dW' at the adapted W', the second-order term dropped
  Meta-SGD      W' = W - lr_W (elementwise) dL/dW          (Li et al. 2017)
  M(T)-net      m = 1[sigmoid((zeta + g1 - g2) / c) > 1/2]; W' = W - alpha m (elementwise, rows
                of W and b share m_j per unit); dm/dzeta := ds/dzeta = s (1 - s) / c (straight
                through)                                    (Lee & Choi 2018, eq. 3.6-3.8)
  MC1 / MC2     vec(W') = vec(W) - alpha (M_o kron M_i kron M_f) vec(G) on the row-major (o, i, f)
                flattening of G; b' = b - alpha m_b * g_b; MC1 has M_o = I (Park & Oliva 2019)
  Meta-LSTM     x = [pre(g), pre(L)], LSTM gates (i, f, g, o), f_t = sigmoid(W_F [h, c, f_prev] + b_F),
                i_t likewise, c_t = f_t c - i_t g           (Ravi & Larochelle 2017, eq. 2 and 3.1)
"""
from __future__ import annotations

import math

import torch

P = 10.0  # Meta-LSTM preprocessing constant (Ravi & Larochelle, after Andrychowicz et al.)


# ---------------------------------------------------------------- network

def cells(params: dict) -> list[str]:
    return sorted({k.split(".")[0] for k in params if k.endswith(".W")}, key=lambda c: int(c[1:]))


def mlp(params: dict, x: torch.Tensor) -> torch.Tensor:
    names = cells(params)
    for j, c in enumerate(names):
        x = x @ params[f"{c}.W"].T + params[f"{c}.b"]
        if f"{c}.T" in params:
            x = x @ params[f"{c}.T"].T
        if j < len(names) - 1:
            x = x.clamp_min(0)
    return x


def mse(params: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((mlp(params, x) - y) ** 2).mean()


def fast_keys(params: dict) -> list[str]:
    return [f"{c}.{r}" for c in cells(params) for r in ("W", "b")]


# ---------------------------------------------------------------- inner updates (one per rule)

def masks(params: dict, task: dict, temperature: float, full: bool) -> dict:
    """Hard 0/1 masks per fast key as leaf tensors (so dL/dm can be read off), and s per logit."""
    out, soft = {}, {}
    for k in fast_keys(params):
        logit = f"{k}_zeta" if full else f"{k.split('.')[0]}.zeta"
        if logit not in soft:
            s = torch.sigmoid((params[logit].detach() + task["noise"][logit]) / temperature)
            soft[logit] = s
            out[logit] = (s > 0.5).to(s.dtype).requires_grad_(True)
    return out, soft


def mask_of(key: str, m: dict, full: bool, like: torch.Tensor) -> torch.Tensor:
    if full:
        return m[f"{key}_zeta"]
    row = m[f"{key.split('.')[0]}.zeta"]
    return row.reshape(row.shape + (1,) * (like.dim() - 1))


def kron_transform(key: str, g: torch.Tensor, params: dict) -> torch.Tensor:
    """Meta-Curvature's transform of one gradient as an explicit Kronecker-product matrix."""
    if key.endswith(".b"):
        return params[f"{key}_mc"] * g
    c_out, c_in = g.shape[0], g.shape[1]
    d = g[0, 0].numel()
    m_o = params.get(f"{key}_mc_out", torch.eye(c_out, dtype=g.dtype))
    big = torch.kron(m_o, torch.kron(params[f"{key}_mc_in"], params[f"{key}_mc_filter"]))
    assert big.shape == (c_out * c_in * d, c_out * c_in * d)
    return (big @ g.reshape(-1)).reshape(g.shape)


def sgd_like_adapt(method: str, params: dict, task: dict, alpha: float, steps: int, m: dict | None) -> dict:
    """Second-order inner loop of MAML, T-net, Meta-SGD, M(T)-nets and Meta-Curvature."""
    full = method.endswith("_full")
    fast = {k: params[k] for k in fast_keys(params)}
    for _ in range(steps):
        loss = mse({**params, **fast}, task["x_support"], task["y_support"])
        grads = dict(zip(fast, torch.autograd.grad(loss, list(fast.values()), create_graph=True)))
        new = {}
        for k, w in fast.items():
            g = grads[k]
            if method in ("maml", "tnet"):
                new[k] = w - alpha * g
            elif method == "metasgd":
                new[k] = w - params[f"{k}_lr"] * g
            elif method in ("mnet", "mtnet", "mnet_full", "mtnet_full"):
                new[k] = w - alpha * mask_of(k, m, full, g) * g
            elif method in ("mc1", "mc2"):
                new[k] = w - alpha * kron_transform(k, g, params)
            else:
                raise ValueError(method)
        fast = new
    return fast


def pre(x: torch.Tensor) -> torch.Tensor:
    """(log|x| / p, sign x) if |x| >= e^-p else (-1, e^p x), as two columns."""
    big = x.abs() >= math.exp(-P)
    first = torch.where(big, x.abs().clamp_min(math.exp(-P)).log() / P, -torch.ones_like(x))
    second = torch.where(big, x.sign(), math.exp(P) * x)
    return torch.stack([first, second], 1)


def meta_lstm_step(params, c, g, loss, h, c_lstm, f_prev, i_prev):
    """One step of the Meta-Learner LSTM on flat coordinates; returns (c, h, c_lstm, f, i)."""
    n, H = c.shape[0], params["lstm.W_hh"].shape[1]
    x = torch.cat([pre(g), pre(loss.reshape(1)).expand(n, 2)], 1)
    W_ih, W_hh, bias = params["lstm.W_ih"], params["lstm.W_hh"], params["lstm.bias"]

    def gate(j):  # rows j*H .. (j+1)*H of the stacked (i, f, g, o) weights
        return x @ W_ih[j * H:(j + 1) * H].T + h @ W_hh[j * H:(j + 1) * H].T + bias[j * H:(j + 1) * H]

    c_lstm = torch.sigmoid(gate(1)) * c_lstm + torch.sigmoid(gate(0)) * torch.tanh(gate(2))
    h = torch.sigmoid(gate(3)) * torch.tanh(c_lstm)
    f = torch.sigmoid(h @ params["lstm.W_f"][:H] + c * params["lstm.W_f"][H] + f_prev * params["lstm.W_f"][H + 1]
                      + params["lstm.b_f"])
    i = torch.sigmoid(h @ params["lstm.W_i"][:H] + c * params["lstm.W_i"][H] + i_prev * params["lstm.W_i"][H + 1]
                      + params["lstm.b_i"])
    return f * c - i * g, h, c_lstm, f, i


def meta_lstm_adapt(params: dict, task: dict, steps: int) -> dict:
    keys = fast_keys(params)
    shapes = [params[k].shape for k in keys]
    c = torch.cat([params[k].reshape(-1) for k in keys])
    n, H = c.shape[0], params["lstm.W_hh"].shape[1]
    h, c_lstm, f, i = c.new_zeros(n, H), c.new_zeros(n, H), c.new_zeros(n), c.new_zeros(n)

    def unflat(c):
        out, start = {}, 0
        for k, s in zip(keys, shapes):
            out[k] = c[start:start + math.prod(s)].reshape(s)
            start += math.prod(s)
        return out

    for _ in range(steps):
        leaf = {k: v.detach().requires_grad_(True) for k, v in unflat(c).items()}
        loss = mse({**params, **leaf}, task["x_support"], task["y_support"])
        g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(loss, list(leaf.values()))])  # a constant
        c, h, c_lstm, f, i = meta_lstm_step(params, c, g, loss.detach(), h, c_lstm, f, i)
    return unflat(c)


# ---------------------------------------------------------------- the outer gradient

def meta_gradient(method: str, params: dict, batch: dict, alpha: float, steps: int,
                  temperature: float = 1.0) -> tuple[torch.Tensor, dict]:
    """(per-task query losses after adaptation, gradient of their sum w.r.t. every parameter)."""
    params = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    full = method.endswith("_full")
    total = {k: torch.zeros_like(v) for k, v in params.items()}
    losses = []
    for t in range(batch["x_support"].shape[0]):
        task = {k: ({n: a[t] for n, a in v.items()} if isinstance(v, dict) else v[t]) for k, v in batch.items()}
        if method == "fomaml":
            fast = {k: v.detach().requires_grad_(True) for k, v in
                    sgd_like_adapt("maml", params, task, alpha, steps, None).items()}
            loss = mse({**params, **fast}, task["x_query"], task["y_query"])
            for k, g in zip(fast, torch.autograd.grad(loss, list(fast.values()))):
                total[k] += g  # the first-order formula: query gradient at W' stands for dL/dW
            losses.append(loss.detach())
            continue
        m, soft = masks(params, task, temperature, full) if method.startswith(("mnet", "mtnet")) else ({}, {})
        fast = meta_lstm_adapt(params, task, steps) if method == "metalstm" else \
            sgd_like_adapt(method, params, task, alpha, steps, m)
        loss = mse({**params, **fast}, task["x_query"], task["y_query"])
        wrt = list(params.values()) + list(m.values())
        grads = torch.autograd.grad(loss, wrt, allow_unused=True)
        for k, g in zip(params, grads[:len(params)]):
            if g is not None:
                total[k] += g
        for logit, g in zip(m, grads[len(params):]):  # straight through: dL/dzeta = dL/dm * ds/dzeta
            if g is not None:
                s = soft[logit]
                total[logit] += g * s * (1 - s) / temperature
        losses.append(loss.detach())
    return torch.stack(losses), total
