"""Population Based Training inside a population: Ray Tune's PBT (ray/tune/schedulers/pbt.py,
`_quantiles` and `_explore`) made synchronous. Every `interval` meta-iterations all running members
are ranked by val_loss at once; each member of the bottom quantile copies a random top-quantile
member's parameters, Adam moments and step count in memory (no checkpoint is written or read), then
explores the mutated keys from the donor's values. The members keep their own seeds (task streams)
and run directories. Decisions come from an RNG seeded by (sweep seed, population, iteration), so a
resumed population takes the same decisions as an uninterrupted one."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MUTABLE = ("alpha", "beta", "gumbel_temperature")  # per-member tensors of a population
MUTATION_KINDS = ("choice", "uniform", "loguniform")


@dataclass(frozen=True)
class Pbt:
    interval: int  # meta-iterations between decisions
    quantile_fraction: float
    resample_probability: float
    factors: tuple[float, ...]
    mutations: dict  # key -> {"choice": [...]} | {"uniform": [lo, hi]} | {"loguniform": [lo, hi]}
    seed: tuple[int, ...] = (0,)  # (sweep seed, population index)

    def due(self, done: int, iterations: int) -> bool:
        return done % self.interval == 0 and done < iterations

    def rng(self, iteration: int) -> np.random.Generator:
        return np.random.default_rng([*self.seed, iteration])


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
