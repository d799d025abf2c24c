"""Population Based Training inside a population: Ray Tune's PBT (ray/tune/schedulers/pbt.py,
`_quantiles` and `_explore`) made synchronous. Every `interval` meta-iterations all running members
are ranked by val_loss at once; each member of the bottom quantile copies a random top-quantile
member's parameters, Adam moments and step count in memory (no checkpoint is written or read), then
explores the mutated keys from the donor's values. The members keep their own seeds (task streams)
and run directories. Decisions come from an RNG seeded by (sweep seed, population, iteration), so a
resumed population takes the same decisions as an uninterrupted one."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from pipeline.driver.schedulers.base import Decision, MemberScheduler


@dataclass(frozen=True)
class Pbt(MemberScheduler):
    """Arguments:
        interval: meta-iterations between decisions.
        quantile_fraction: the bottom and top quantiles' share of the ranked members (Tune's).
        resample_probability: how often a mutated key is drawn afresh instead of perturbed.
        factors: the perturbation factors of a uniform or loguniform key.
        mutations: key (of MUTABLE) -> {"choice": [...]} | {"uniform": [lo, hi]} | {"loguniform": [lo, hi]}.
        seed: (sweep seed, population index): the decisions' random numbers, per iteration.

    Example:
        >>> pbt = Pbt(10, 0.25, 0.25, (0.8, 1.2), {"alpha": {"loguniform": [1e-3, 1.0]}}, (3, 0))
        >>> values = {m: {"alpha": 0.1, "beta": 1e-3, "gumbel_temperature": 1.0} for m in range(4)}
        >>> d = pbt.decide(10, {0: 0.4, 1: 0.1, 2: 0.3, 3: 0.2}, dict.fromkeys(range(4), 0.0), values,
        ...                {m: f"run{m}" for m in range(4)}, 16)
        >>> d.copies
        {0: 1}
    """

    interval: int
    quantile_fraction: float
    resample_probability: float
    factors: tuple[float, ...]
    mutations: dict
    seed: tuple[int, ...] = (0,)
    exploits: list = field(default_factory=list, init=False, compare=False, repr=False)  # (iteration, count) each

    history_key = "lineage"
    before_save = True  # the members' checkpoints of this iteration hold the decision

    def due(self, done: int, iterations: int) -> bool:
        return done % self.interval == 0 and done < iterations

    def rng(self, iteration: int) -> np.random.Generator:
        return np.random.default_rng([*self.seed, iteration])

    def decide(self, done, val_loss, val_metric, values, names, val_tasks) -> Decision:
        """Each bottom-quantile member copies a random top-quantile member (its parameters, Adam
        moments and step count) and explores from the donor's values; every ranked member's entry
        holds its val_loss and (new) values, an exploited one's also the event."""
        bottom, top = quantiles(val_loss, self.quantile_fraction)
        rng, decision = self.rng(done), Decision()
        for r in sorted(bottom):
            d = top[int(rng.integers(len(top)))]
            new, ops = explore(values[d], self, rng)
            decision.copies[r], decision.values[r] = d, new
            decision.history[r] = {"iteration": done, "donor": names[d], "val_loss": val_loss[r],
                                   "donor_val_loss": val_loss[d], "old": values[r], "new": new, "ops": ops}
        for m in val_loss:
            entry = {"iteration": done, "val_loss": val_loss[m], "val_metric": val_metric[m],
                     **decision.values.get(m, values[m])}
            decision.entries[m] = {**entry, **({"exploit": decision.history[m]} if m in decision.history else {})}
        self.exploits.append((done, len(decision.history)))
        moves = "; ".join(f"{names[r]} <- {e['donor']} ("
                          + ", ".join(f"{k} {_g(e['old'][k])} -> {_g(e['new'][k])} ({e['ops'][k]})" for k in e["ops"])
                          + ")" for r, e in decision.history.items())
        decision.line = (f"pbt at it {done}: {len(decision.history)} of {len(val_loss)} running members exploit the "
                         f"top {len(top)} by val_loss on {val_tasks} validation tasks{': ' + moves if moves else ''}")
        return decision

    def progress(self, live: int, stopped: int) -> str:
        if not self.exploits:
            return ""
        done, n = self.exploits[-1]
        return f" | pbt: {n} exploited at it {done}"

    def progress_entry(self) -> dict:
        return {"exploits": sum(n for _, n in self.exploits)}


def _g(v: float) -> str:
    return f"{v:.4g}"


def quantiles(scores: dict[int, float], fraction: float) -> tuple[list[int], list[int]]:
    """(bottom, top): the members (keys of `scores`, lower is better) in the worst and the best
    quantile, as Tune's `_quantiles`: ceil(n * fraction) each, at most floor(n / 2); NaN scores take
    no part; ties go to the lower member index. Both lists are ordered best first."""
    ranked = sorted((r for r, s in scores.items() if not math.isnan(s)), key=lambda r: (scores[r], r))
    if len(ranked) <= 1:
        return [], []
    n = math.ceil(len(ranked) * fraction)
    n = min(n, len(ranked) // 2)
    return ranked[len(ranked) - n:], ranked[:n]


def explore(values: dict, pbt: Pbt, rng: np.random.Generator) -> tuple[dict, dict]:
    """New values of the mutated keys from a donor's `values`, and what was done to each, as
    Tune's `_explore`: a choice list is resampled with probability resample_probability (or when
    the value is not in it), else shifted one place left or right (clipped at the ends); a uniform
    or loguniform key is resampled from its range with that probability, else multiplied by a
    random perturbation factor (not clipped to the range, as in Tune)."""
    new, ops = dict(values), {}
    for key, entry in pbt.mutations.items():
        kind, spec = next(iter(entry.items()))
        value = values[key]
        if kind == "choice":
            if rng.random() < pbt.resample_probability or value not in spec:
                new[key], ops[key] = float(spec[rng.integers(len(spec))]), "resample"
            else:
                shift = (-1, 1)[rng.integers(2)]
                old = spec.index(value)
                idx = min(max(old + shift, 0), len(spec) - 1)
                new[key], ops[key] = float(spec[idx]), f"shift {'left' if shift < 0 else 'right'}" + (
                    " (noop)" if idx == old else "")
        elif rng.random() < pbt.resample_probability:
            lo, hi = spec
            new[key] = float(rng.uniform(lo, hi) if kind == "uniform" else math.exp(rng.uniform(math.log(lo),
                                                                                             math.log(hi))))
            ops[key] = "resample"
        else:
            factor = pbt.factors[rng.integers(len(pbt.factors))]
            new[key], ops[key] = float(value * factor), f"* {factor:g}"
    return new, ops
