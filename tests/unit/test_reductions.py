"""Reductions between methods (DESIGN section 2) on dense cells and one inner step, and the mask
estimator (conv cells and more inner steps: tests/integration)."""
import math

import pytest
import torch

from pipeline.core.learners import pre_activation
from pipeline.core.meta_batch import InnerSettings, inner_adapt, shard_meta_gradient
from pipeline.core.reference import task_slice
from pipeline.core.rules.masked import straight_through_mask
from tasks.sampling import NOISE_STREAM, Streams

from helpers import WB, assert_reduces, conv_batch, conv_learner, make_learner, perturbed_params, sine_batch


@pytest.mark.parametrize("steps", [1])
def test_tnet_with_identity_T_is_maml(steps):
    maml, tnet = make_learner("maml", init_std=0.3), make_learner("tnet", init_std=0.3)
    p_maml = maml.init_params(0, torch.float64)
    p_tnet = tnet.init_params(0, torch.float64)  # same seed: same W, b; T = I
    assert all(torch.equal(p_tnet[f"{c.name}.T"], torch.eye(c.fan_out, dtype=torch.float64)) for c in tnet.net.cells)
    batch = sine_batch(maml, p_maml, n=5)
    g_tnet, _ = assert_reduces(tnet, maml, InnerSettings(0.1, steps), batch, p_tnet, p_maml, exact=True)
    assert any(g_tnet.grads[f"{c.name}.T"].abs().sum() > 0 for c in tnet.net.cells), "T must be learnable"


@pytest.mark.parametrize("conv", [False], ids=["dense"])
@pytest.mark.parametrize("full", [False])
def test_mtnet_with_saturated_mask_is_tnet(full, conv):
    name = "mtnet_full" if full else "mtnet"
    tnet = conv_learner("tnet") if conv else make_learner("tnet", init_std=0.3)
    mtnet = conv_learner(name) if conv else make_learner(name, init_std=0.3)
    p_tnet = perturbed_params(tnet)  # non-identity T
    p_mtnet = {**p_tnet, **{k: torch.full_like(v, math.inf) for k, v in mtnet.init_params(0, torch.float64).items()
                            if k.endswith("zeta")}}
    batch = conv_batch(mtnet, p_mtnet) if conv else sine_batch(mtnet, p_mtnet, n=5)
    assert_reduces(mtnet, tnet, InnerSettings(0.1, 2, temperature=0.5), batch, p_mtnet, p_tnet,
                   keys_equal=("W", "b", "T", "bn_scale", "bn_shift"), exact=True)


@pytest.mark.parametrize("learner_fn", [lambda: make_learner("mtnet", init_std=0.3)], ids=["dense"])
def test_proposition_1_update_stays_in_span_of_first_d_columns_of_T(learner_fn):
    """Mask fixed to the first d rows, T invertible: after one inner step, the change of every
    cell's pre-activation y = T(Wx + b) lies in span(T[:, :d])."""
    learner = learner_fn()
    params = perturbed_params(learner, scale=0.3)
    batch = conv_batch(learner, params) if learner.net.loss != "mse" else sine_batch(learner, params, n=2)
    d = 3
    for cell in learner.net.cells:
        zeta = torch.full((cell.fan_out,), -math.inf, dtype=torch.float64)
        zeta[:d] = math.inf
        params[f"{cell.name}.zeta"] = zeta
    task = task_slice(batch, 0)
    fast, _ = inner_adapt(learner, InnerSettings(0.5, 1, mask_mode="argmax"), params, task)
    for cell in learner.net.cells:
        T = params[f"{cell.name}.T"]
        assert torch.linalg.matrix_rank(T) == cell.fan_out
        inp = torch.randn((7, cell.fan_in) if cell.kind == "dense" else (2, cell.fan_in, 6, 6), dtype=torch.float64)
        dy = pre_activation(cell, {**params, **fast}, inp) - pre_activation(cell, params, inp)
        dy = dy.movedim(1, -1).reshape(-1, cell.fan_out)  # rows: vectors in output space
        basis, _ = torch.linalg.qr(T[:, :d])
        residual = dy - dy @ basis @ basis.T
        assert dy.norm() > 1e-3
        assert residual.norm() < 1e-10 * dy.norm()


def test_sampled_masks_have_mean_sigmoid_zeta_and_straight_through_gradient():
    zeta = torch.linspace(-3, 3, 13, dtype=torch.float64)
    n = 20000
    noise = torch.as_tensor(Streams(0, "train", 0, range(n), NOISE_STREAM).logistic(zeta.shape))
    masks = straight_through_mask(zeta, noise, temperature=0.5)
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    p = torch.sigmoid(zeta)
    assert (masks.mean(0) - p).abs().max() < 4 * math.sqrt(0.25 / n)

    z = zeta.clone().requires_grad_(True)
    w = torch.arange(1.0, 14.0, dtype=torch.float64)
    (straight_through_mask(z, noise[0], 0.5) * w).sum().backward()
    s = torch.sigmoid((zeta + noise[0]) / 0.5)
    torch.testing.assert_close(z.grad, w * s * (1 - s) / 0.5)


def test_mask_logits_receive_meta_gradient():
    learner = make_learner("mtnet", init_std=0.3)
    params = perturbed_params(learner)
    result = shard_meta_gradient(learner, InnerSettings(0.1, 1), params, sine_batch(learner, params, n=4))
    for cell in learner.net.cells:
        assert result.grads[f"{cell.name}.zeta"].abs().sum() > 0


@pytest.mark.parametrize("conv", [False], ids=["dense"])
def test_meta_sgd_with_uniform_step_is_maml(conv):
    maml = conv_learner("maml") if conv else make_learner("maml", init_std=0.3)
    msgd = conv_learner("metasgd") if conv else make_learner("metasgd", init_std=0.3)
    p_maml = maml.init_params(0, torch.float64)
    p_msgd = {**p_maml, **{k: torch.full_like(v, 0.07) for k, v in msgd.init_params(0, torch.float64).items()
                           if k.endswith("_lr")}}
    batch = conv_batch(maml, p_maml) if conv else sine_batch(maml, p_maml, n=5)
    assert_reduces(msgd, maml, InnerSettings(0.07, 2), batch, p_msgd, p_maml,
                   keys_equal=("W", "b", "bn_scale", "bn_shift") if conv else WB)


@pytest.mark.parametrize("method", ["mc1", "mc2"])
@pytest.mark.parametrize("conv", [False])
def test_meta_curvature_with_identity_matrices_is_maml(method, conv):
    maml = conv_learner("maml") if conv else make_learner("maml", init_std=0.3)
    mc = conv_learner(method) if conv else make_learner(method, init_std=0.3)
    p_maml, p_mc = maml.init_params(0, torch.float64), mc.init_params(0, torch.float64)
    batch = conv_batch(maml, p_maml) if conv else sine_batch(maml, p_maml, n=5)
    g_mc, _ = assert_reduces(mc, maml, InnerSettings(0.1, 2), batch, p_mc, p_maml)
    assert ("l0.W_mc_out" in p_mc or "conv0.W_mc_out" in p_mc) == (method == "mc2")
    assert any(g.abs().sum() > 0 for k, g in g_mc.grads.items() if "_mc" in k)
