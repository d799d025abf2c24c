"""Meta-Learner LSTM (Ravi & Larochelle 2017): the optimizer is learned.

The learner's parameters, flattened, are the cell state c of an LSTM applied coordinate-wise (every
coordinate shares the meta-learner's weights and keeps its own state):

  x_t = [pre(grad_t), pre(loss_t)]                        preprocessed inputs, (n, 4)
  h_t = LSTM(x_t, h_{t-1})                                a plain LSTM cell, hidden 20
  f_t = sigmoid(W_F [h_t, c_{t-1}, f_{t-1}] + b_F)        forget gate: learned weight decay
  i_t = sigmoid(W_I [h_t, c_{t-1}, i_{t-1}] + b_I)        input gate: learned step size
  c_t = f_t * c_{t-1} - i_t * grad_t

pre(x) = (log|x| / p, sign x) if |x| >= e^-p else (-1, e^p x), with p = 10. The learned c_0 is the
learner's initialisation (its W, b and batch-norm scale/shift: every learner parameter, as in the
paper). grad_t and loss_t enter as constants (first order). Small uniform weights, b_F in [4, 6]
and b_I in [-5, -4] start the learner as plain SGD with a small step (i ~ 0.01, f ~ 0.99).
The inner loop uses the whole support set at each of its T steps (the paper's learner batch is
the N x K support set); batch norm normalises each support pass with that batch's statistics, and
at meta-test time the query set with the averages of the support passes' statistics (`query_bn =
"support"`, the paper's section 3.4; training queries use their own batch's). No statistic outlives
a task.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pipeline.core.rules.base import UpdateRule, register

HIDDEN = 20
P = 10.0


def preprocess(x: torch.Tensor, p: float = P) -> torch.Tensor:
    """(..., 2): (log|x| / p, sign x) where |x| >= e^-p, else (-1, e^p x)."""
    big = x.abs() >= math.exp(-p)
    log_part = torch.where(big, torch.log(x.abs().clamp_min(math.exp(-p))) / p, torch.full_like(x, -1.0))
    sign_part = torch.where(big, torch.sign(x), math.exp(p) * x)
    return torch.stack([log_part, sign_part], -1)


class MetaLSTM(UpdateRule):
    name = "metalstm"
    first_order = True  # the learner's gradient and loss are inputs, not differentiated through
    query_bn = "support"  # Ravi & Larochelle section 3.4: the query set normalised by support statistics
    alpha_name = "unused (the LSTM computes the step)"
    figures = ("gates",)  # the run's figures include the gate values over the inner steps
    fast_roles = ("W", "b", "bn_scale", "bn_shift")

    def init_meta(self, net, params, generator):
        def uniform(*shape, lo=-0.01, hi=0.01):
            return torch.empty(shape, dtype=params[next(iter(params))].dtype).uniform_(lo, hi, generator=generator)

        return {"lstm.W_ih": uniform(4 * HIDDEN, 4), "lstm.W_hh": uniform(4 * HIDDEN, HIDDEN),
                "lstm.bias": torch.zeros(4 * HIDDEN, dtype=params[next(iter(params))].dtype),
                "lstm.W_f": uniform(HIDDEN + 2), "lstm.b_f": uniform(1, lo=4.0, hi=6.0),
                "lstm.W_i": uniform(HIDDEN + 2), "lstm.b_i": uniform(1, lo=-5.0, hi=-4.0)}

    def init_carry(self, params, fast):
        n = sum(v.numel() for v in fast.values())
        like = next(iter(fast.values()))
        zeros = lambda *s: like.new_zeros(s)  # noqa: E731
        return {"h": zeros(n, HIDDEN), "c_lstm": zeros(n, HIDDEN), "f": zeros(n), "i": zeros(n)}

    def update(self, fast, grads, loss, params, state, carry, alpha):
        c = torch.cat([v.reshape(-1) for v in fast.values()])
        g = torch.cat([grads[k].reshape(-1) for k in fast])
        x = torch.cat([preprocess(g), preprocess(loss).expand(g.shape[0], 2)], -1)
        gates = F.linear(x, params["lstm.W_ih"]) + F.linear(carry["h"], params["lstm.W_hh"], params["lstm.bias"])
        gi, gf, gg, go = gates.chunk(4, -1)
        c_lstm = torch.sigmoid(gf) * carry["c_lstm"] + torch.sigmoid(gi) * torch.tanh(gg)
        h = torch.sigmoid(go) * torch.tanh(c_lstm)
        f = torch.sigmoid(torch.cat([h, c[:, None], carry["f"][:, None]], -1) @ params["lstm.W_f"] + params["lstm.b_f"])
        i = torch.sigmoid(torch.cat([h, c[:, None], carry["i"][:, None]], -1) @ params["lstm.W_i"] + params["lstm.b_i"])
        c = f * c - i * g
        out, start = {}, 0
        for k, v in fast.items():
            out[k] = c[start:start + v.numel()].reshape(v.shape)
            start += v.numel()
        return out, {"h": h, "c_lstm": c_lstm, "f": f, "i": i}


register(MetaLSTM())
