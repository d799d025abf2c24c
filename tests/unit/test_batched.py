"""The vmap-batched shard function agrees with the plain per-task autograd loop: dense cells, one
inner step, and the automatic vmap chunk size (conv cells and more steps: tests/integration)."""
import time

import pytest
import torch

from pipeline.core.meta_batch import InnerSettings, shard_evaluate, shard_meta_gradient
from pipeline.shards.chunking import pick_chunk_size, time_chunk_sizes

from helpers import (
    ALL_METHODS,
    check_batched_matches_per_task_loop_mlp,
    make_learner,
    perturbed_params,
    sine_batch,
)


@pytest.mark.parametrize("steps", [1])
@pytest.mark.parametrize("method", ALL_METHODS)
def test_batched_matches_per_task_loop_mlp(method, steps):
    check_batched_matches_per_task_loop_mlp(method, steps)


def test_evaluation_path_matches_training_path():
    learner = make_learner("mtnet", hidden=(16, 16), init_std=0.3)
    params = perturbed_params(learner)
    batch = sine_batch(learner, params, n=6)
    inner = InnerSettings(alpha=0.05, steps=2)
    metrics, curves = shard_evaluate(learner, inner, params, batch)
    result = shard_meta_gradient(learner, inner, params, batch)
    assert curves.shape == (6, 3)
    assert metrics.sum().item() == pytest.approx(result.loss_sum, rel=1e-10)
    torch.testing.assert_close(curves.sum(0), result.curve_sum)


def test_auto_chunk_size_is_the_fastest_measured_and_near_ties_go_to_the_larger_chunk():
    cost = {None: 0.02, 16: 0.015, 8: 0.004, 4: 0.007, 2: 0.01, 1: 0.03}  # seconds per shard call
    calls = []
    times = time_chunk_sizes(lambda c: (calls.append(c), time.sleep(cost[c])), shard_size=32, reps=2)
    assert list(times) == [0, 16, 8, 4, 2, 1] and calls.count(8) == 3  # one warm-up, then reps
    assert pick_chunk_size(times) == 8
    for c, t in times.items():
        assert t >= cost[c or None]
    assert list(time_chunk_sizes(lambda c: None, shard_size=3)) == [0, 2, 1]  # only chunks smaller than the shard
    assert list(time_chunk_sizes(lambda c: None, shard_size=1)) == [0, 1]  # vmap of one task, or the loop
    assert pick_chunk_size({0: 1.0, 8: 0.97, 1: 1.01}) == 0  # within 5% of the fastest: the larger chunk
    assert pick_chunk_size({0: 1.0, 8: 0.97, 1: 0.99}) == 8  # ... unless slower than the loop
    assert pick_chunk_size({0: 1.0, 8: 0.9, 1: 0.88}) == 1  # never slower than the loop as timed
