"""PBT's decisions (pipeline/driver/pbt.py) against Ray Tune's PBT rules, written out here from
ray/tune/schedulers/pbt.py (`_quantiles`, `_explore`): quantile sizes, NaN scores, ties, and each
kind of mutation. In-population exploits (bitwise copies, lineage, resume): tests/integration."""
import math

import numpy as np
import pytest

from pipeline.driver.pbt import Pbt, explore, quantiles


def tune_quantile_size(n: int, fraction: float) -> int:
    size = int(math.ceil(n * fraction))
    return int(math.floor(n / 2)) if size > n / 2 else size


@pytest.mark.parametrize("n,fraction", [(2, 0.25), (5, 0.25), (8, 0.25), (9, 0.5), (32, 0.25), (7, 0.4), (1, 0.5)])
def test_quantiles_take_tunes_sizes_best_first_ties_to_the_lower_index(n, fraction):
    rng = np.random.default_rng(n)
    scores = {i: float(rng.integers(0, 4)) for i in range(n)}  # many ties
    bottom, top = quantiles(scores, fraction)
    size = tune_quantile_size(n, fraction) if n > 1 else 0
    ranked = sorted(scores, key=lambda i: (scores[i], i))
    assert top == ranked[:size] and bottom == ranked[n - size:]
    assert not set(top) & set(bottom)


def test_nan_scores_take_no_part():
    bottom, top = quantiles({0: 1.0, 1: math.nan, 2: 3.0, 3: 2.0, 4: math.nan}, 0.25)
    assert top == [0] and bottom == [2]
    assert quantiles({0: math.nan, 1: 1.0}, 0.5) == ([], [])


def pbt(p: float, mutations: dict) -> Pbt:
    return Pbt(10, 0.25, p, (0.8, 1.2), mutations)


def test_explore_perturbs_by_a_factor_or_resamples_within_the_range():
    values = {"alpha": 0.01, "beta": 0.001, "gumbel_temperature": 1.0}
    rng = np.random.default_rng(0)
    for _ in range(50):
        new, ops = explore(values, pbt(0.0, {"alpha": {"loguniform": [1e-4, 1.0]}}), rng)
        assert ops["alpha"] in ("* 0.8", "* 1.2") and new["alpha"] in (0.01 * 0.8, 0.01 * 1.2)
        assert new["beta"] == 0.001 and "beta" not in ops  # unmutated keys keep the donor's values
        new, ops = explore(values, pbt(1.0, {"alpha": {"loguniform": [1e-4, 1.0]},
                                             "gumbel_temperature": {"uniform": [0.5, 2.0]}}), rng)
        assert ops == {"alpha": "resample", "gumbel_temperature": "resample"}
        assert 1e-4 <= new["alpha"] <= 1.0 and 0.5 <= new["gumbel_temperature"] <= 2.0
    # resample_probability 0.25: about a quarter resampled (binomial 400 x 0.25: 100 +- 26 at 3 sigma)
    resampled = sum(explore(values, pbt(0.25, {"alpha": {"uniform": [0.0, 1.0]}}), rng)[1]["alpha"] == "resample"
                    for _ in range(400))
    assert 74 <= resampled <= 126


def test_explore_moves_a_choice_one_place_clipped_or_resamples_a_value_not_listed():
    choices = [0.1, 0.2, 0.3]
    rng = np.random.default_rng(1)
    seen = set()
    for _ in range(60):
        new, ops = explore({"beta": 0.1}, pbt(0.0, {"beta": {"choice": choices}}), rng)
        assert (new["beta"], ops["beta"]) in ((0.1, "shift left (noop)"), (0.2, "shift right"))
        seen.add(ops["beta"])
        new, ops = explore({"beta": 0.25}, pbt(0.0, {"beta": {"choice": choices}}), rng)
        assert ops["beta"] == "resample" and new["beta"] in choices
    assert seen == {"shift left (noop)", "shift right"}


def test_decisions_are_a_function_of_the_seed_and_the_iteration():
    a, b = Pbt(10, 0.25, 0.25, (0.8, 1.2), {}, (3, 1)), Pbt(10, 0.25, 0.25, (0.8, 1.2), {}, (3, 2))
    assert a.rng(20).random() == a.rng(20).random() != a.rng(30).random()
    assert a.rng(20).random() != b.rng(20).random()
    assert a.due(20, 100) and not a.due(25, 100) and not a.due(100, 100)
