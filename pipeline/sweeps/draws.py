"""What a random search trains, fixed before Tune starts: the configurations drawn as Tune's
variant generator draws them - Tune's own search-space domains, one random state seeded by the
sweep seed, `num_samples` passes over the grid, each pass with fresh draws of the sampled entries -
and, when the sweep is packed, those configurations grouped into populations. The same sweep file
draws the same configurations every time, packed or not (`pack.max_members: 0`), so a packed
sweep trains exactly the runs of its unpacked twin."""
from __future__ import annotations

import json
import math

from ray import tune
from ray.tune.search.sample import _BackwardsCompatibleNumpyRng
from ray.tune.search.variant_generator import generate_variants

from pipeline.sweeps.spec import Sweep

DOMAINS = {"grid": tune.grid_search, "choice": tune.choice, "uniform": lambda v: tune.uniform(*v),
           "loguniform": lambda v: tune.loguniform(*v), "randint": lambda v: tune.randint(*v)}
DRAW = "draw"  # the Tune config key that picks a trial's configuration (not a config key of a run)


def tune_space(space: dict) -> dict:
    """The sweep's space in Tune's domains (what Tune samples itself under Optuna or ASHA)."""
    return {k: DOMAINS[kind](values) for k, e in space.items() for kind, values in e.items()}


def draw(sweep: Sweep) -> list[dict]:
    """Every run's swept values, in Tune's order: num_samples passes over the grid, the sampled
    entries drawn from one random state seeded by the sweep seed (BasicVariantGenerator's)."""
    rng = _BackwardsCompatibleNumpyRng(sweep.spec.seed)
    space = tune_space(sweep.space)
    return [{k: spec["config"][k] for k in sweep.space}
            for _ in range(sweep.spec.num_samples)
            for _, spec in generate_variants({"config": space}, random_state=rng)]


def trials(sweep: Sweep) -> list[dict]:
    """Each Tune trial's config: one drawn run, or for a packed sweep a population - the unpacked
    keys' values and `members`, the packed keys' values of each run. Runs that share their
    unpacked values form populations of nearly equal size (at most pack.max_members), members in
    the packed grid keys' order, sampled values in the order drawn."""
    draws = draw(sweep)
    if not sweep.packed:
        return draws
    unpacked = [k for k in sweep.space if k not in sweep.packed]
    groups: dict[str, list[dict]] = {}
    for d in draws:
        groups.setdefault(json.dumps([d[k] for k in unpacked]), []).append(d)
    grid = [k for k in sweep.packed if "grid" in sweep.space[k]]
    out = []
    for runs in groups.values():
        runs = sorted(runs, key=lambda d: [sweep.space[k]["grid"].index(d[k]) for k in grid])  # stable
        start = 0
        for size in population_sizes(len(runs), sweep.spec.pack.max_members):
            members = [{k: d[k] for k in sweep.packed} for d in runs[start:start + size]]
            out.append({**{k: runs[0][k] for k in unpacked}, "members": members})
            start += size
    return out


def population_sizes(runs: int, most: int) -> list[int]:
    """`runs` cut into populations of nearly equal size, at most `most` each (the larger ones first)."""
    count = math.ceil(runs / most)
    return [runs // count + (i < runs % count) for i in range(count)]


def param_space(configs: list[dict]) -> dict:
    """Tune's space for fixed trial configs: a grid over their index, each key looked up by it (the
    values appear in every trial's config, as if Tune had drawn them)."""
    def lookup(key: str):
        def value(spec):  # Tune hands over the trial's spec, {"config": ...} (older releases: an object)
            config = spec["config"] if isinstance(spec, dict) and "config" in spec else spec
            return configs[config[DRAW]][key]
        return value

    keys = dict.fromkeys(k for c in configs for k in c)
    return {DRAW: tune.grid_search(list(range(len(configs)))), **{k: tune.sample_from(lookup(k)) for k in keys}}
