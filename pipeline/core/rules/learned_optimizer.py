"""Optimizers of optimizees (Andrychowicz et al. 2016, "Learning to learn by gradient descent by
gradient descent"): the learned coordinate-wise LSTM optimizer and the hand-designed baselines it
is compared with, as update rules of the "optimizer" family.

An optimizee's parameters are one flat tensor theta of shape (B, n): B optimizees at once, n
coordinates each. Every rule is coordinate-wise, so a batch of optimizees is just more
coordinates, and the carry (the rule's recurrent state) has the same leading B so it can be split
by optimizee across shard workers. `alpha` is the step size of the optimizee update for every
rule: the learning rate of a baseline, the scale of the LSTM's output for `l2l`.

l2l (DESIGN section 2):
  x_t = pre(grad_t)                          (B, n, 2), pre() as the Meta-Learner LSTM, p = 10
  h1_t = LSTM1(x_t, h1_{t-1}); h2_t = LSTM2(h1_t, h2_{t-1})   two layers, 20 units, shared weights
  theta_{t+1} = theta_t + alpha * (W_out h2_t + b_out)
grad_t enters as a constant (first order: d grad_theta f / d phi = 0, the lecture's simplification).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pipeline.core.rules.base import UpdateRule, register
from pipeline.core.rules.meta_lstm import P, preprocess

HIDDEN, LAYERS = 20, 2  # the paper's optimizer: two LSTM layers of 20 units
# Added to the forget gates' initial biases. 0: PyTorch's init. The paper's reference code adds 1
# (TensorFlow's forget_bias); on MNIST optimizees that was within the run-to-run spread of short
# meta-trainings (benchmarks/l2l_probe.py, logs in benchmarks/l2l_cpu/probes/), so the recorded
# runs' init stays.
FORGET_BIAS = 0.0
PREPROCESS_P = P  # the preprocessing's p: the paper's appendix, 10 (the reference's MNIST config: 5)


class OptimizerRule(UpdateRule):
    """Base of the optimizer family: one fast tensor "theta" (B, n); first order by construction."""

    family = "optimizer"
    trains_on = ("optimizee",)
    first_order = True
    fast_roles = ("theta",)
    alpha_name = "lr"  # a hand-designed optimizer's learning rate
    learned = False  # True: meta-parameters to train (l2l); False: a hand-designed baseline


def lstm_cell(x: torch.Tensor, h: torch.Tensor, c: torch.Tensor, params: dict, layer: int):
    """A plain LSTM cell (PyTorch's gate order i, f, g, o) over the last dimension."""
    gates = (F.linear(x, params[f"l2l.W_ih{layer}"]) + F.linear(h, params[f"l2l.W_hh{layer}"], params[f"l2l.b{layer}"]))
    gi, gf, gg, go = gates.chunk(4, -1)
    c = torch.sigmoid(gf) * c + torch.sigmoid(gi) * torch.tanh(gg)
    return torch.sigmoid(go) * torch.tanh(c), c


class LearnedOptimizer(OptimizerRule):
    name = "l2l"
    alpha_name = "output scale"  # the LSTM's output times alpha is the step
    learned = True

    def init_meta(self, net, params, generator):
        """phi, PyTorch's LSTM init: U[-1/sqrt(H), 1/sqrt(H)] for every weight and bias, plus
        FORGET_BIAS on the forget gates' biases."""
        dtype = params["theta"].dtype if "theta" in params else torch.get_default_dtype()
        bound = 1 / math.sqrt(HIDDEN)

        def uniform(*shape):
            return torch.empty(shape, dtype=dtype).uniform_(-bound, bound, generator=generator)

        phi = {}
        for layer in range(LAYERS):
            fan_in = 2 if layer == 0 else HIDDEN
            phi[f"l2l.W_ih{layer}"] = uniform(4 * HIDDEN, fan_in)
            phi[f"l2l.W_hh{layer}"] = uniform(4 * HIDDEN, HIDDEN)
            phi[f"l2l.b{layer}"] = uniform(4 * HIDDEN)
            phi[f"l2l.b{layer}"][HIDDEN:2 * HIDDEN] += FORGET_BIAS  # gate order i, f, g, o
        phi["l2l.W_out"], phi["l2l.b_out"] = uniform(1, HIDDEN), uniform(1)
        return phi

    def init_carry(self, params, fast):
        theta = fast["theta"]
        zeros = theta.new_zeros(*theta.shape, HIDDEN)
        return {f"{s}{layer}": zeros.clone() for layer in range(LAYERS) for s in ("h", "c")}

    def direction(self, grad: torch.Tensor, params: dict, carry: dict) -> tuple[torch.Tensor, dict]:
        """g_phi(grad, h): the LSTM's output per coordinate (before alpha) and the new carry."""
        x, new = preprocess(grad, PREPROCESS_P), {}
        for layer in range(LAYERS):
            x, c = lstm_cell(x, carry[f"h{layer}"], carry[f"c{layer}"], params, layer)
            new[f"h{layer}"], new[f"c{layer}"] = x, c
        return F.linear(x, params["l2l.W_out"], params["l2l.b_out"]).squeeze(-1), new

    def update(self, fast, grads, loss, params, state, carry, alpha):
        out, carry = self.direction(grads["theta"].detach(), params, carry)
        return {"theta": fast["theta"] + alpha * out}, carry


class SGD(OptimizerRule):
    name = "sgd"

    def update(self, fast, grads, loss, params, state, carry, alpha):
        return {"theta": fast["theta"] - alpha * grads["theta"]}, carry


class Nesterov(OptimizerRule):
    """Nesterov momentum as torch.optim.SGD(nesterov=True): v = mu v + g; theta -= lr (g + mu v)."""

    name = "nag"
    momentum = 0.9

    def init_carry(self, params, fast):
        return {"v": torch.zeros_like(fast["theta"])}

    def update(self, fast, grads, loss, params, state, carry, alpha):
        g = grads["theta"]
        v = self.momentum * carry["v"] + g
        return {"theta": fast["theta"] - alpha * (g + self.momentum * v)}, {"v": v}


class RMSprop(OptimizerRule):
    """As torch.optim.RMSprop's defaults: s = 0.99 s + 0.01 g^2; theta -= lr g / (sqrt(s) + 1e-8)."""

    name = "rmsprop"
    decay, eps = 0.99, 1e-8

    def init_carry(self, params, fast):
        return {"s": torch.zeros_like(fast["theta"])}

    def update(self, fast, grads, loss, params, state, carry, alpha):
        g = grads["theta"]
        s = self.decay * carry["s"] + (1 - self.decay) * g * g
        return {"theta": fast["theta"] - alpha * g / (s.sqrt() + self.eps)}, {"s": s}


class Adam(OptimizerRule):
    """As torch.optim.Adam's defaults (betas 0.9, 0.999, eps 1e-8, bias-corrected); the step count
    is carried per optimizee so a carry split across workers stays self-contained."""

    name = "adam"
    b1, b2, eps = 0.9, 0.999, 1e-8

    def init_carry(self, params, fast):
        theta = fast["theta"]
        return {"m": torch.zeros_like(theta), "v": torch.zeros_like(theta), "t": theta.new_zeros(theta.shape[0], 1)}

    def update(self, fast, grads, loss, params, state, carry, alpha):
        g, t = grads["theta"], carry["t"] + 1
        m = self.b1 * carry["m"] + (1 - self.b1) * g
        v = self.b2 * carry["v"] + (1 - self.b2) * g * g
        step = alpha * (m / (1 - self.b1 ** t)) / ((v / (1 - self.b2 ** t)).sqrt() + self.eps)
        return {"theta": fast["theta"] - step}, {"m": m, "v": v, "t": t}


for _rule in (LearnedOptimizer(), SGD(), Nesterov(), RMSprop(), Adam()):
    register(_rule)
