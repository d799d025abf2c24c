"""train.random_scaling (Lv et al. 2017): a training optimizee seen through a per-coordinate scale c
is the same problem under the change of variables theta = c * x. Written out here: SGD with step
alpha on f(c * x) from x_0 = theta_0 / c is, in theta, preconditioned SGD theta_{t+1} = theta_t -
alpha * c^2 * grad f(theta_t); c = 1 is the unscaled problem bit for bit; other splits are unscaled."""
import math

import numpy as np
import pytest
import torch

from pipeline.config import ConfigError, load_config
from pipeline.core.rules import get_rule
from pipeline.driver.families import make_source
from pipeline.shards.optimizer_experiment import run_steps
from tasks.optimizees import Quadratic, RandomlyScaled
from tasks.sampling import sample_optimizees

from helpers import quad_cfg


def draw(dist, split="train"):
    return sample_optimizees(dist, seed=5, split=split, iteration=1, indices=range(4), steps=10, dtype=torch.float64)


def test_scaled_sgd_is_preconditioned_sgd_under_the_change_of_variables():
    base, r, alpha = Quadratic(6), 1.5, 0.01
    scaled = RandomlyScaled(base, r)
    problem = draw(scaled)
    c = problem["scale"]
    assert c.min() >= math.exp(-r) and c.max() <= math.exp(r) and c.std() > 0.1  # one scale per coordinate
    assert torch.equal(problem["W"], draw(base)["W"])  # the scale is drawn after the problem's own data
    x0 = problem["theta0"]
    torch.testing.assert_close(x0 * c, draw(base)["theta0"], rtol=1e-15, atol=0)  # it starts where it would
    rule = get_rule("sgd")
    losses, x, _ = run_steps(rule, {}, scaled, problem, x0, rule.init_carry({}, {"theta": x0}), start=0, steps=10,
                             alpha=alpha)
    W, y, theta = problem["W"], problem["y"], x0 * c
    for t in range(10):  # the reference, in theta
        grad = 2 * (W.transpose(-1, -2) @ ((W @ theta.unsqueeze(-1)).squeeze(-1) - y).unsqueeze(-1)).squeeze(-1)
        theta = theta - alpha * c ** 2 * grad
        torch.testing.assert_close(losses[t], ((W @ theta.unsqueeze(-1)).squeeze(-1) - y).pow(2).sum(-1),
                                   rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x * c, theta, rtol=1e-12, atol=1e-12)


def test_a_unit_scale_is_the_unscaled_problem_and_other_splits_are_unscaled():
    base = Quadratic(6)
    unit = RandomlyScaled(base, 0.0)
    p, q = draw(unit), draw(base)
    assert torch.equal(p["scale"], torch.ones_like(p["scale"])) and torch.equal(p["theta0"], q["theta0"])
    theta = q["theta0"] + 0.3
    assert torch.equal(unit.loss(theta, p, 0), base.loss(theta, q, 0))
    for split in ("val", "test"):
        assert "scale" not in draw(RandomlyScaled(base, 2.0), split)


def test_a_scaled_run_trains_and_its_config_is_checked():
    source = make_source(quad_cfg(None, **{"train.random_scaling": 1.0}))
    assert isinstance(source.distribution, RandomlyScaled)
    result = source.train_shard(source.init_params(), 0, range(3))
    assert np.isfinite(result.loss_sum) and all(torch.isfinite(g).all() for g in result.grads.values())
    for sets, message in (({"train.random_scaling": -1}, "train.random_scaling: the log-scale range r must be >= 0 "
                                                          "(0 = off), got -1.0"),
                          ({"method": "maml", "train.random_scaling": 1}, "train.random_scaling: scales a learned "
                           "optimizer's optimizees (methods adam, l2l, nag, rmsprop, sgd); method maml takes 0")):
        with pytest.raises(ConfigError) as e:
            load_config(None, {"method": "l2l", "task.name": "quadratic", **sets} if "method" not in sets else sets)
        assert str(e.value) == message
