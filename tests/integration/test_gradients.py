"""Meta-gradients against float64 finite differences: MAML over two inner steps, and conv cells
(one inner step and dense cells: tests/unit)."""
import pytest
import torch

from pipeline.core.meta_batch import InnerSettings, shard_meta_gradient

from helpers import (
    conv_batch,
    conv_learner,
    directional_fd,
    make_learner,
    perturbed_params,
    random_direction,
    sine_batch,
)


@pytest.mark.parametrize("steps", [2])
def test_maml_meta_gradient_matches_finite_differences(steps):
    learner = make_learner("maml", hidden=(20, 20), init_std=0.5)
    params = learner.init_params(0, torch.float64)
    batch = sine_batch(learner, params, n=4)
    inner = InnerSettings(alpha=0.1, steps=steps)
    grads = shard_meta_gradient(learner, inner, params, batch).grads
    for seed in range(4):
        d = random_direction(params, seed)
        analytic = sum((grads[k] * d[k]).sum() for k in params).item()
        assert analytic == pytest.approx(directional_fd(learner, inner, params, batch, d), rel=1e-5)
    # A few individual coordinates as well.
    for key, idx in [("l0.W", (3, 0)), ("l1.W", (5, 7)), ("l2.b", (0,)), ("l1.b", (11,))]:
        d = {k: torch.zeros_like(v) for k, v in params.items()}
        d[key][idx] = 1.0
        assert grads[key][idx].item() == pytest.approx(directional_fd(learner, inner, params, batch, d),
                                                       rel=1e-5, abs=1e-9)


# finite differences through conv cells
@pytest.mark.parametrize("method", ["maml", "metasgd", "tnet", "mtnet", "mc2"])
def test_conv_meta_gradient_matches_finite_differences(method):
    """conv4 cells with batch-statistics batch norm (its scale/shift meta-learned): the second-order
    meta-gradient of every parameter, T, step sizes and curvature matrices included."""
    learner = conv_learner(method)
    params = perturbed_params(learner)
    batch = conv_batch(learner, params)
    inner = InnerSettings(alpha=0.3, steps=2)
    grads = shard_meta_gradient(learner, inner, params, batch).grads
    assert any(k.endswith("bn_scale") for k in grads)
    for seed in (3, 4):
        d = random_direction(params, seed)
        analytic = sum((grads[k] * d[k]).sum() for k in params).item()
        assert analytic == pytest.approx(directional_fd(learner, inner, params, batch, d), rel=1e-5)
