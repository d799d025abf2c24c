"""Meta-gradients against float64 finite differences on dense cells; first-order MAML against its
definition (more inner steps and conv cells: tests/integration)."""
import pytest
import torch

from pipeline.core.learners import loss_and_metric
from pipeline.core.meta_batch import InnerSettings, shard_meta_gradient
from pipeline.core.reference import loop_adapt, task_slice

from helpers import (
    ALL_METHODS,
    check_maml_meta_gradient_matches_finite_differences,
    directional_fd,
    make_learner,
    perturbed_params,
    random_direction,
    sine_batch,
)


@pytest.mark.parametrize("steps", [1])
def test_maml_meta_gradient_matches_finite_differences(steps):
    check_maml_meta_gradient_matches_finite_differences(steps)


EXACT = [m for m in ALL_METHODS if not make_learner(m, hidden=(4,), init_std=0.5).rule.first_order]


@pytest.mark.parametrize("method", EXACT)
def test_every_method_meta_gradient_matches_finite_differences(method):
    """Every method whose meta-gradient is the exact derivative. For masked methods the mask logits
    are excluded: the hard mask is piecewise constant in zeta, so its straight-through gradient is by
    design not the derivative (tested separately). First-order rules are not derivatives of the
    loss: FOMAML is checked against its definition below; Meta-LSTM (the learner's gradient an input,
    not differentiated) only in that every meta-learner weight receives a gradient (test_meta_lstm)."""
    learner = make_learner(method, hidden=(12, 12), init_std=0.5)
    params = perturbed_params(learner)
    batch = sine_batch(learner, params, n=3)
    inner = InnerSettings(alpha=0.1, steps=2)
    grads = shard_meta_gradient(learner, inner, params, batch).grads
    d = random_direction(params, 7)
    analytic = sum((grads[k] * d[k]).sum() for k in params).item()
    fd = directional_fd(learner, inner, params, batch, d)
    assert analytic == pytest.approx(fd, rel=1e-5)


def test_first_order_maml_is_query_gradient_at_adapted_weights():
    """FOMAML's meta-gradient is dL_query/dW evaluated at the adapted weights (the Hessian term
    of MAML is dropped): it equals that formula and differs from the exact MAML gradient."""
    maml, fomaml = make_learner("maml", (20, 20), 0.5), make_learner("fomaml", (20, 20), 0.5)
    params = maml.init_params(0, torch.float64)
    batch = sine_batch(maml, params, n=4)
    inner = InnerSettings(alpha=0.3, steps=1)
    exact = shard_meta_gradient(maml, inner, params, batch).grads
    first = shard_meta_gradient(fomaml, inner, params, batch).grads

    expected = {k: torch.zeros_like(v) for k, v in params.items()}
    for i in range(4):
        task = task_slice(batch, i)
        leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        fast = {k: v.detach().requires_grad_(True) for k, v in
                loop_adapt(maml, inner, leaves, task, create_graph=False).items()}
        loss = loss_and_metric(maml.net, fast, task["x_query"], task["y_query"])[0]
        for k, g in zip(fast, torch.autograd.grad(loss, list(fast.values()))):
            expected[k] += g
    for k in params:
        torch.testing.assert_close(first[k], expected[k], rtol=1e-9, atol=1e-12)
    rel = (sum((exact[k] - first[k]).norm() ** 2 for k in params).sqrt()
           / sum(exact[k].norm() ** 2 for k in params).sqrt())
    assert rel > 1e-2, "the dropped second-order term should matter at alpha = 0.3"
