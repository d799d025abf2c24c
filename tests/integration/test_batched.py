"""The vmap-batched shard function agrees with the plain per-task autograd loop: dense cells over
several inner steps, conv cells, and vmap in chunks (one inner step on dense cells: tests/unit)."""
import pytest
import torch

from pipeline.core.meta_batch import InnerSettings, shard_evaluate, shard_meta_gradient
from pipeline.core.reference import loop_meta_gradient

from helpers import (
    ALL_METHODS,
    assert_same,
    check_batched_matches_per_task_loop_mlp,
    conv_batch,
    conv_learner,
    perturbed_params,
)


@pytest.mark.parametrize("steps", [3])
@pytest.mark.parametrize("method", ALL_METHODS)
def test_batched_matches_per_task_loop_mlp(method, steps):
    check_batched_matches_per_task_loop_mlp(method, steps)


# conv cells in float64: 10-40 s each on 2 busy cores
@pytest.mark.parametrize("method", ALL_METHODS)
def test_batched_matches_per_task_loop_conv(method):
    learner = conv_learner(method)
    params = perturbed_params(learner)
    batch = conv_batch(learner, params)
    inner = InnerSettings(alpha=0.1, steps=2)
    losses, grads = loop_meta_gradient(learner, inner, params, batch)
    assert_same(shard_meta_gradient(learner, inner, params, batch), losses, grads, 3)


# conv cells, several vmap chunk sizes
@pytest.mark.parametrize("method,chunk", [("mtnet", 2), ("mtnet", 1), ("fomaml", 1), ("metalstm", 1), ("mc2", 1)])
def test_chunked_vmap_and_the_task_loop_give_the_same_result(method, chunk):
    """chunk 1: the plain per-task loop, its inner gradient by torch.autograd instead of torch.func."""
    learner = conv_learner(method)
    params = perturbed_params(learner)
    batch = conv_batch(learner, params, n=5)
    inner = InnerSettings(alpha=0.1, steps=1)
    whole = shard_meta_gradient(learner, inner, params, batch)
    chunked = shard_meta_gradient(learner, inner, params, batch, chunk_size=chunk)
    assert chunked.loss_sum == pytest.approx(whole.loss_sum, rel=1e-12)
    torch.testing.assert_close(chunked.curve_sum, whole.curve_sum, rtol=1e-12, atol=0)
    for k in whole.grads:
        torch.testing.assert_close(chunked.grads[k], whole.grads[k], rtol=1e-10, atol=1e-12)
    metrics, curves = shard_evaluate(learner, inner, params, batch)
    metrics_c, curves_c = shard_evaluate(learner, inner, params, batch, chunk_size=chunk)
    torch.testing.assert_close(metrics_c, metrics, rtol=1e-12, atol=0)
    torch.testing.assert_close(curves_c, curves, rtol=1e-12, atol=0)
