"""Each scheduler of pipeline/driver/schedulers alone, against its rule written out here: the no-op
default; synchronous successive halving (rungs, ceil(n / eta) kept by val_loss, non-finite last,
ties to the lower member); PBT against Ray Tune's rules from ray/tune/schedulers/pbt.py
(`_quantiles`, `_explore`): quantile sizes, NaN scores, ties, each kind of mutation, and whole
decisions. Applying decisions in a population (bitwise copies, stops, resume): tests/integration."""
import doctest
import math

import numpy as np
import pytest

from pipeline.driver import schedulers
from pipeline.driver.schedulers import Decision, Halving, MemberScheduler, Pbt, base, halving
from pipeline.driver.schedulers import pbt as pbt_module
from pipeline.driver.schedulers.pbt import explore, quantiles

NAMES = {m: f"run{m}" for m in range(16)}


def values_of(n: int) -> dict:
    return {m: {"alpha": 0.01 * (m + 1), "beta": 0.001, "gumbel_temperature": 1.0} for m in range(n)}


def test_the_default_scheduler_is_never_due_and_decides_nothing():
    s = MemberScheduler()
    assert not any(s.due(k, 100) for k in range(1, 101))
    assert s.decide(10, {0: 1.0}, {0: 0.0}, values_of(1), NAMES, 8) == Decision()
    assert s.progress(3, 0) == "" and s.progress_entry() == {} and not s.stops_members


def test_halving_rungs_are_the_grace_period_times_powers_of_the_factor_below_the_run_length():
    assert Halving(8, 2.0).rungs(40) == [8, 16, 32]
    assert Halving(5, 3.0).rungs(100) == [5, 15, 45]
    assert Halving(10, 2.0).rungs(10) == []  # a rung at the end would stop nothing that still trains
    s = Halving(8, 2.0)
    assert [k for k in range(1, 41) if s.due(k, 40)] == [8, 16, 32]


@pytest.mark.parametrize("n,eta", [(1, 2.0), (2, 2.0), (5, 2.0), (6, 3.0), (7, 4.0)])
def test_halving_keeps_the_ceil_n_over_eta_best_ties_to_the_lower_member(n, eta):
    rng = np.random.default_rng(n)
    members = sorted(rng.choice(16, n, replace=False).tolist())  # members that still run, any indices
    loss = {m: float(rng.integers(0, 3)) for m in members}  # many ties
    d = Halving(8, eta).decide(8, loss, dict.fromkeys(members, 0.5), values_of(16), NAMES, 20)
    keep = math.ceil(n / eta)
    best = sorted(members, key=lambda m: (loss[m], m))[:keep]  # the rule, written out
    assert set(d.stop) == set(members) - set(best) and len(d.stop) == n - keep
    assert d.history == {m: {"iteration": 8, "val_loss": loss[m], "val_metric": 0.5, "kept": m in best}
                         for m in members}
    assert d.entries == {m: {"iteration": 8, "val_loss": loss[m], "val_metric": 0.5} for m in members}
    assert not d.copies and not d.values
    stopped = ", ".join(NAMES[m] for m in sorted(d.stop)) or "none"
    assert d.line == (f"halving at it 8: {keep} of {n} running members continue by val_loss on 20 validation "
                      f"tasks; stopped: {stopped}")


def test_halving_ranks_non_finite_losses_last():
    loss = {0: math.nan, 1: 2.0, 2: math.inf, 3: 1.0}
    assert Halving(8, 2.0).decide(8, loss, dict.fromkeys(loss, 0.0), {}, NAMES, 8).stop == (0, 2)
    every = {0: float("nan"), 1: float("nan"), 2: float("inf")}  # every validation failed: the lowest indices stay
    assert Halving(8, 2.0).decide(8, every, dict.fromkeys(every, 0.0), {}, NAMES, 8).stop == (2,)


def test_halving_with_no_running_member_stops_nothing():
    d = Halving(8, 2.0).decide(8, {}, {}, {}, NAMES, 8)
    assert d.stop == () and d.entries == {} and "0 of 0 running members" in d.line


def test_a_pbt_decision_is_tunes_rule_with_the_decisions_random_numbers():
    """8 members with distinct losses, quantile 0.25: the 2 worst copy donors drawn, in recipient
    order, uniformly from the 2 best with rng(iteration); each explores from its donor's values;
    every member's entry holds its val_loss and its values after the decision."""
    pbt = Pbt(10, 0.25, 0.25, (0.8, 1.2), {"alpha": {"loguniform": [1e-3, 1.0]}}, (3, 0))
    loss = {m: l for m, l in enumerate([0.5, 0.1, 0.7, 0.3, 0.9, 0.2, 0.4, 0.8])}
    values = values_of(8)
    d = pbt.decide(10, loss, dict.fromkeys(loss, 0.0), values, NAMES, 16)
    bottom, top = [7, 4], [1, 5]  # worst two (best first), best two
    rng = np.random.default_rng([3, 0, 10])
    want = {}
    for r in sorted(bottom):
        donor = top[int(rng.integers(2))]
        want[r] = (donor, explore(values[donor], pbt, rng))
    assert d.copies == {r: w[0] for r, w in want.items()}
    assert d.values == {r: w[1][0] for r, w in want.items()}
    for r, (donor, (new, ops)) in want.items():
        assert d.history[r] == {"iteration": 10, "donor": NAMES[donor], "val_loss": loss[r],
                                "donor_val_loss": loss[donor], "old": values[r], "new": new, "ops": ops}
        assert d.entries[r]["exploit"] == d.history[r] and d.entries[r]["alpha"] == new["alpha"]
    for m in set(loss) - set(bottom):
        assert d.entries[m] == {"iteration": 10, "val_loss": loss[m], "val_metric": 0.0, **values[m]}
    assert d.stop == () and pbt.progress_entry() == {"exploits": 2} and "2 exploited at it 10" in pbt.progress(8, 0)
    assert d.line.startswith("pbt at it 10: 2 of 8 running members exploit the top 2 by val_loss on 16 "
                             "validation tasks: run4 <- ")


def test_pbt_with_one_member_or_every_member_diverged_decides_nothing():
    pbt = Pbt(10, 0.25, 0.25, (0.8, 1.2), {"alpha": {"uniform": [0.0, 1.0]}})
    for loss in ({0: 1.0}, {0: math.nan, 1: math.nan, 2: math.nan}, {}):
        d = pbt.decide(10, loss, dict.fromkeys(loss, 0.0), values_of(3), NAMES, 8)
        assert not d.copies and not d.values and not d.history and set(d.entries) == set(loss)


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


@pytest.mark.parametrize("module", [schedulers, base, halving, pbt_module])
def test_the_docstring_examples_hold(module):
    failed, tried = doctest.testmod(module)
    assert failed == 0 and (tried > 0 or module is schedulers)
