"""Meta-gradients against float64 finite differences: MAML over two inner steps, and conv cells
(one inner step and dense cells: tests/unit)."""
import pytest

from pipeline.core.meta_batch import InnerSettings, shard_meta_gradient

from helpers import (
    check_maml_meta_gradient_matches_finite_differences,
    conv_batch,
    conv_learner,
    directional_fd,
    perturbed_params,
    random_direction,
)


@pytest.mark.parametrize("steps", [2])
def test_maml_meta_gradient_matches_finite_differences(steps):
    check_maml_meta_gradient_matches_finite_differences(steps)


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
