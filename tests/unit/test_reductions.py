"""Reductions between methods (DESIGN section 2) on dense cells and one inner step, and the mask
estimator (conv cells and more inner steps: tests/integration)."""
import math

import pytest
import torch

from pipeline.core.meta_batch import InnerSettings, shard_meta_gradient
from pipeline.core.rules.masked import straight_through_mask
from tasks.sampling import NOISE_STREAM, Streams

from helpers import (
    check_meta_curvature_with_identity_matrices_is_maml,
    check_meta_sgd_with_uniform_step_is_maml,
    check_mtnet_with_saturated_mask_is_tnet,
    check_proposition_1_update_stays_in_span_of_first_d_columns_of_T,
    check_tnet_with_identity_T_is_maml,
    make_learner,
    perturbed_params,
    sine_batch,
)


@pytest.mark.parametrize("steps", [1])
def test_tnet_with_identity_T_is_maml(steps):
    check_tnet_with_identity_T_is_maml(steps)


@pytest.mark.parametrize("conv", [False], ids=["dense"])
@pytest.mark.parametrize("full", [False])
def test_mtnet_with_saturated_mask_is_tnet(full, conv):
    check_mtnet_with_saturated_mask_is_tnet(full, conv)


@pytest.mark.parametrize("learner_fn", [lambda: make_learner("mtnet", init_std=0.3)], ids=["dense"])
def test_proposition_1_update_stays_in_span_of_first_d_columns_of_T(learner_fn):
    check_proposition_1_update_stays_in_span_of_first_d_columns_of_T(learner_fn)


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
    check_meta_sgd_with_uniform_step_is_maml(conv)


@pytest.mark.parametrize("method", ["mc1", "mc2"])
@pytest.mark.parametrize("conv", [False])
def test_meta_curvature_with_identity_matrices_is_maml(method, conv):
    check_meta_curvature_with_identity_matrices_is_maml(method, conv)
