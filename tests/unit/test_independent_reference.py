"""Every few-shot rule, batched (vmap, the training path), against an independent reference written
from its paper's formula (tests/independent_reference.py: no code shared with pipeline/core/rules/), in
float64 at 1e-6; plus Meta-Curvature against an explicit Kronecker matrix on conv-shaped gradients
and one Meta-LSTM step computed by hand in plain Python floats."""
import math

import pytest
import torch

from pipeline.core.meta_batch import InnerSettings, shard_meta_gradient
from pipeline.core.rules import get_rule

import independent_reference as ref
from helpers import ALL_METHODS, make_learner, perturbed_params, sine_batch

TEMPERATURE = 0.7


def compare(method, steps, alpha=0.1):
    learner = make_learner(method, hidden=(8, 6), init_std=0.5)
    params = perturbed_params(learner, seed=3)
    batch = sine_batch(learner, params, n=3, shots=5)
    batched = shard_meta_gradient(learner, InnerSettings(alpha, steps, TEMPERATURE), params, batch)
    losses, grads = ref.meta_gradient(method, params, batch, alpha, steps, TEMPERATURE)
    return params, batched, losses, grads


@pytest.mark.parametrize("method", ALL_METHODS)
def test_rule_matches_independent_reference(method):
    params, batched, losses, grads = compare(method, steps=2)
    assert batched.loss_sum == pytest.approx(losses.sum().item(), rel=1e-6)
    assert set(batched.grads) == set(grads)
    for k, g in grads.items():
        torch.testing.assert_close(batched.grads[k], g, rtol=1e-6, atol=1e-9, msg=lambda m: f"{method} {k}: {m}")
    # Not vacuous: the meta-only tensors of the rule (step sizes, T, logits, matrices, LSTM) get
    # non-zero gradients, so a rule that ignored them would fail above.
    meta_only = [k for k in params if k.rsplit(".", 1)[1] not in ("W", "b")]
    for k in meta_only:
        assert grads[k].abs().sum() > 0, f"{method}: reference gradient of {k} is zero"


def test_masks_are_not_all_ones_or_all_zeros():
    """The masked comparisons above exercise real masks: with this seed each per-unit cell has some
    units updated and some frozen."""
    learner = make_learner("mtnet", hidden=(8, 6), init_std=0.5)
    params = perturbed_params(learner, seed=3)
    batch = sine_batch(learner, params, n=3, shots=5)
    for t in range(3):
        task = {"noise": {k: v[t] for k, v in batch["noise"].items()}}
        m, _ = ref.masks(params, task, TEMPERATURE, full=False)
        for logit, mask in m.items():
            if mask.numel() > 1:
                assert 0 < mask.sum() < mask.numel(), (t, logit)


def test_first_order_maml_is_the_explicit_first_order_formula():
    """FOMAML equals the first-order formula (not merely differs from MAML): compare() runs the
    reference's fomaml branch, which is the query gradient at W' and nothing else."""
    _, batched, _, grads = compare("fomaml", steps=3)
    _, exact, _, _ = compare("maml", steps=3)
    for k, g in grads.items():
        torch.testing.assert_close(batched.grads[k], g, rtol=1e-6, atol=1e-9)
    diff = sum((exact.grads[k] - batched.grads[k]).norm() ** 2 for k in grads).sqrt()
    assert diff > 1e-3 * sum(g.norm() ** 2 for g in grads.values()).sqrt()


@pytest.mark.parametrize("method", ["mc1", "mc2"])
def test_meta_curvature_transform_is_the_kronecker_form_on_conv_gradients(method):
    """G (C_out, C_in, 3, 3) with random non-identity M_o, M_i, M_f: the rule's step equals
    alpha (M_o kron M_i kron M_f) vec(G); a transposed matrix would not."""
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(4, 3, 3, 3, generator=gen, dtype=torch.float64)
    params = {"conv0.W_mc_in": torch.randn(3, 3, generator=gen, dtype=torch.float64),
              "conv0.W_mc_filter": torch.randn(9, 9, generator=gen, dtype=torch.float64)}
    if method == "mc2":
        params["conv0.W_mc_out"] = torch.randn(4, 4, generator=gen, dtype=torch.float64)
    got = get_rule(method).step("conv0.W", g, params, {}, 0.3)
    torch.testing.assert_close(got, 0.3 * ref.kron_transform("conv0.W", g, params), rtol=1e-12, atol=1e-12)
    transposed = {k: v.T.contiguous() for k, v in params.items()}
    assert (got - 0.3 * ref.kron_transform("conv0.W", g, transposed)).abs().max() > 1e-3


# ---------------------------------------------------------------- Meta-LSTM by hand

def sig(z):
    return 1 / (1 + math.exp(-z))


def pre_hand(x, p=10.0):
    return (math.log(abs(x)) / p, math.copysign(1.0, x)) if abs(x) >= math.exp(-p) else (-1.0, math.exp(p) * x)


def lstm_step_by_hand(P, c, g, loss, h, c_l, f_prev, i_prev):
    """Ravi & Larochelle eq. 2 and section 3.1 for every coordinate, in plain floats."""
    H = len(P["lstm.W_hh"][0])
    out = []
    for n in range(len(c)):
        x = [*pre_hand(g[n]), *pre_hand(loss)]
        gates = [sum(P["lstm.W_ih"][r][j] * x[j] for j in range(4)) + sum(P["lstm.W_hh"][r][j] * h[n][j]
                 for j in range(H)) + P["lstm.bias"][r] for r in range(4 * H)]
        i_g, f_g, g_g, o_g = (gates[q * H:(q + 1) * H] for q in range(4))
        cl = [sig(f_g[u]) * c_l[n][u] + sig(i_g[u]) * math.tanh(g_g[u]) for u in range(H)]
        hn = [sig(o_g[u]) * math.tanh(cl[u]) for u in range(H)]
        f = sig(sum(P["lstm.W_f"][u] * hn[u] for u in range(H)) + P["lstm.W_f"][H] * c[n]
                + P["lstm.W_f"][H + 1] * f_prev[n] + P["lstm.b_f"][0])
        i = sig(sum(P["lstm.W_i"][u] * hn[u] for u in range(H)) + P["lstm.W_i"][H] * c[n]
                + P["lstm.W_i"][H + 1] * i_prev[n] + P["lstm.b_i"][0])
        out.append((f * c[n] - i * g[n], hn, cl, f, i))
    return out


def test_meta_lstm_two_steps_against_a_hand_computation():
    """Two steps (so h, the LSTM cell and f_prev / i_prev recur) on three coordinates, one of them
    with a gradient below e^-p (the linear branch of the preprocessing)."""
    rule = get_rule("metalstm")
    gen = torch.Generator().manual_seed(5)
    H = 20
    params = {"lstm.W_ih": 0.5 * torch.randn(4 * H, 4, generator=gen, dtype=torch.float64),
              "lstm.W_hh": 0.3 * torch.randn(4 * H, H, generator=gen, dtype=torch.float64),
              "lstm.bias": 0.2 * torch.randn(4 * H, generator=gen, dtype=torch.float64),
              "lstm.W_f": 0.4 * torch.randn(H + 2, generator=gen, dtype=torch.float64),
              "lstm.b_f": torch.tensor([1.5], dtype=torch.float64),
              "lstm.W_i": 0.4 * torch.randn(H + 2, generator=gen, dtype=torch.float64),
              "lstm.b_i": torch.tensor([-1.0], dtype=torch.float64)}
    fast = {"l0.W": torch.tensor([[0.7], [-0.2]], dtype=torch.float64),
            "l0.b": torch.tensor([0.05], dtype=torch.float64)}
    grads = [[0.3, -1e-6, 2.0], [-0.5, 0.02, 1e-5]]  # per step, coordinates in (W, b) order
    losses = [0.8, 0.35]
    carry = rule.init_carry(params, fast)

    P = {k: v.tolist() for k, v in params.items()}
    c = [0.7, -0.2, 0.05]
    h, c_l, f_prev, i_prev = [[0.0] * H] * 3, [[0.0] * H] * 3, [0.0] * 3, [0.0] * 3
    for g, loss in zip(grads, losses):
        gt = {"l0.W": torch.tensor(g[:2], dtype=torch.float64).reshape(2, 1),
              "l0.b": torch.tensor(g[2:], dtype=torch.float64)}
        fast, carry = rule.update(fast, gt, torch.tensor(loss, dtype=torch.float64), params, {}, carry, 0.0)
        steps = lstm_step_by_hand(P, c, g, loss, h, c_l, f_prev, i_prev)
        c = [s[0] for s in steps]
        h, c_l = [s[1] for s in steps], [s[2] for s in steps]
        f_prev, i_prev = [s[3] for s in steps], [s[4] for s in steps]
        got = torch.cat([fast["l0.W"].reshape(-1), fast["l0.b"]]).tolist()
        assert got == pytest.approx(c, rel=1e-12, abs=1e-14)
        assert carry["f"].tolist() == pytest.approx(f_prev, rel=1e-12)
        assert carry["i"].tolist() == pytest.approx(i_prev, rel=1e-12)
        assert carry["h"].tolist() == [pytest.approx(row, rel=1e-12, abs=1e-14) for row in h]
    # The gates are not saturated (the comparison has power): f and i are away from 0 and 1.
    assert all(0.05 < v < 0.95 for v in f_prev + i_prev)
