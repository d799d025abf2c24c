"""The sweep-file schema: a base experiment config, fixed overrides, a search space over any config
keys, and how Tune runs the trials. Checked completely - every swept value against the experiment
schema - before any Ray work starts; errors are one line naming the key and what is allowed."""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.config import (
    CONFIG_DIR,
    MUTABLE,
    MUTATION_KINDS,
    PACKABLE,
    Config,
    ConfigError,
    load_config,
    resolve_path,
)
from pipeline.yaml_dataclasses import build, get_key, load_yaml, to_dict
from tasks.errors import unknown_choice

SPACE_KINDS = ("grid", "choice", "uniform", "loguniform", "randint")
SCHEDULERS = ("none", "asha", "halving", "pbt")
IN_POPULATIONS = ("halving", "pbt")  # schedulers that act inside packed populations
SEARCHERS = ("random", "optuna")
PER_ITERATION_METRICS = ("meta_loss", "query_metric")
# Keys the sweep itself decides for every trial (where it writes, how it is placed and tracked).
SWEEP_OWNED = ("output_dir", "run_name", "backend", "ray.workers", "ray.cpus_per_worker", "ray.gpus_per_worker",
               "ray.address", "tracking.uri", "tracking.experiment", "tracking.enabled")


@dataclass
class Resources:
    cpus: float = 1.0  # the trial process: the trial's driver (and its compute when workers = 0)
    workers: int = 0  # shard workers per trial, Ray actors in the trial's placement group; 0 = compute in the trial
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0  # fractional allowed

    def bundles(self) -> list[dict]:
        worker = {"CPU": self.cpus_per_worker, **({"GPU": self.gpus_per_worker} if self.gpus_per_worker else {})}
        return [{"CPU": self.cpus}] + [dict(worker) for _ in range(self.workers)]


@dataclass
class SchedulerSpec:
    # none | asha: Tune's asynchronous successive halving, one Tune trial per run, by `metric` |
    # halving: synchronous successive halving inside each population, by val_loss (eval.val_tasks
    # validation tasks): at grace_period * reduction_factor^k meta-iterations the
    # ceil(n / reduction_factor) best members continue and the others stop, leaving the stacked computation
    # pbt: Population Based Training inside each population, Tune's semantics made synchronous
    # (pipeline/driver/schedulers/pbt.py): every perturbation_interval meta-iterations the members are ranked by
    # val_loss and the bottom quantile_fraction copies the top's state, then explores hyperparam_mutations
    name: str = "none"
    grace_period: int = 0  # meta-iterations before the first rung; 0 = a tenth of the run
    reduction_factor: float = 3.0
    perturbation_interval: int = 0  # pbt: meta-iterations between decisions; 0 = a tenth of the run
    quantile_fraction: float = 0.25
    resample_probability: float = 0.25
    perturbation_factors: list[float] = field(default_factory=lambda: [0.8, 1.2])
    # key (alpha, beta, gumbel_temperature) -> {choice: [...]} | {uniform: [lo, hi]} | {loguniform: [lo, hi]}
    hyperparam_mutations: dict = field(default_factory=dict)

    def interval_from(self, iterations: int) -> int:
        return self.perturbation_interval or max(1, iterations // 10)

    def rungs_from(self, iterations: int) -> tuple[int, float]:
        """(grace period, reduction factor) with the default grace period resolved."""
        return self.grace_period or max(1, iterations // 10), self.reduction_factor


@dataclass
class SearchSpec:
    name: str = "random"  # random: Tune's grid/random variant generator | optuna (no grid entries)


@dataclass
class ReportSpec:
    rows: list[str] = field(default_factory=list)  # config keys of the table rows; [] = swept keys but method, seed
    shots: list[int] = field(default_factory=list)  # evaluation K to tabulate; [] = every K evaluated


@dataclass
class PackSpec:
    # runs per population: trials that differ only in packable grid keys (alpha, beta, the Gumbel
    # temperature, seeds) train as one program in one Tune trial; 0 = one Tune trial per run
    max_members: int = 64


@dataclass
class SweepConfig:
    base: str = ""  # experiment config: a path (relative to the sweep file) or a name in tune_configs/
    name: str = ""  # "" = the sweep file's stem; the sweep directory is <output_dir>/<name>
    output_dir: str = "sweeps"
    set: dict = field(default_factory=dict)  # fixed overrides of the base config (dotted keys)
    # dotted key -> {grid|choice: [...]} | {uniform|loguniform|randint: [lo, hi]}
    space: dict = field(default_factory=dict)
    num_samples: int = 1  # repetitions of the grid (each with fresh samples of the random entries)
    seed: int = 0  # seed of the random search
    metric: str = "meta_loss"  # what the scheduler / search algorithm optimise
    mode: str = "min"
    max_concurrent_trials: int = 0  # 0 = as many as the cluster's resources allow
    max_failures: int = 2  # retries of a failing trial, each from its last checkpoint
    resources: Resources = field(default_factory=Resources)
    scheduler: SchedulerSpec = field(default_factory=SchedulerSpec)
    search: SearchSpec = field(default_factory=SearchSpec)
    report: ReportSpec = field(default_factory=ReportSpec)
    pack: PackSpec = field(default_factory=PackSpec)


@dataclass
class Sweep:
    """A validated sweep: its spec, the base experiment config (with `set` applied) as a dict, and
    the space with every value coerced to its key's type."""

    spec: SweepConfig
    base: dict
    space: dict
    path: Path
    packed: list[str] = field(default_factory=list)  # swept keys packed into populations ([] = none; draws.py)
    unpacked_because: str = ""  # why a sweep with packable keys runs one trial per run

    @property
    def swept_keys(self) -> list[str]:
        return list(self.space)

    def trial_count(self) -> int:
        """Trials in the sweep: num_samples repetitions of the grid (other entries are sampled)."""
        n = self.spec.num_samples
        for entry in self.space.values():
            n *= len(entry["grid"]) if "grid" in entry else 1
        return n

    def to_dict(self) -> dict:
        return {**to_dict(self.spec), "base_config": self.base, "space": self.space}


def _check_key(dotted: str, what: str = "space") -> None:
    obj = Config()
    for i, part in enumerate(dotted.split(".")):
        if not dataclasses.is_dataclass(obj) or part not in {f.name for f in dataclasses.fields(obj)}:
            where = ".".join(dotted.split(".")[:i]) or "the experiment config"
            allowed = ", ".join(f.name for f in dataclasses.fields(obj)) if dataclasses.is_dataclass(obj) else ""
            raise ConfigError(f"{what}: {dotted} is not a config key (no {part!r} in {where}; allowed: {allowed})")
        obj = getattr(obj, part)
    if dataclasses.is_dataclass(obj):
        raise ConfigError(f"{what}: {dotted} is a section, not a key")


def _validated_value(base: dict, key: str, value, local: bool):
    """`value` coerced to the type of `key`, or a one-line error naming the swept key."""
    try:
        return get_key(load_config(copy.deepcopy(base), {key: value}, local=local), key)
    except ConfigError as e:
        raise ConfigError(f"space: {e}") from None


def _check_entry(key: str, entry, base: dict, local: bool) -> dict:
    if key in SWEEP_OWNED or key.split(".")[0] == "ray":
        raise ConfigError(f"space: {key} is set by the sweep itself (see its resources section); "
                          f"swept keys may not be one of {', '.join(SWEEP_OWNED)}")
    _check_key(key)
    if not isinstance(entry, dict) or len(entry) != 1 or next(iter(entry)) not in SPACE_KINDS:
        raise ConfigError(f"space.{key}: expected one of {', '.join(f'{{{k}: ...}}' for k in SPACE_KINDS)}, "
                          f"got {entry!r}")
    kind, values = next(iter(entry.items()))
    if kind in ("grid", "choice"):
        if not isinstance(values, list) or not values:
            raise ConfigError(f"space.{key}.{kind}: expected a non-empty list of values, got {values!r}")
        return {kind: [_validated_value(base, key, v, local) for v in values]}
    if not (isinstance(values, list) and len(values) == 2):
        raise ConfigError(f"space.{key}.{kind}: expected [low, high], got {values!r}")
    try:
        lo, hi = (int(v) if kind == "randint" else float(v) for v in values)
    except (TypeError, ValueError):
        raise ConfigError(f"space.{key}.{kind}: bounds must be numbers, got {values!r}") from None
    if kind == "randint" and any(isinstance(v, float) and not float(v).is_integer() for v in values):
        raise ConfigError(f"space.{key}.randint: bounds must be integers, got {values!r}")
    if not lo < hi:
        raise ConfigError(f"space.{key}.{kind}: low must be < high, got {values!r}")
    if kind == "loguniform" and lo <= 0:
        raise ConfigError(f"space.{key}.loguniform: low must be > 0, got {values!r}")
    # Every value the distribution can produce lies between these two, so checking them is enough.
    for v in (lo, hi - 1 if kind == "randint" else hi):
        _validated_value(base, key, v, local)
    return {kind: [lo, hi]}


def resolve_base(base: str, sweep_path: Path) -> Path:
    if not base:
        raise ConfigError("base: missing; name the experiment config to sweep (a path or a name in tune_configs/, "
                          f"e.g. {', '.join(sorted(p.stem for p in CONFIG_DIR.glob('sine_*.yaml'))[:3])})")
    local = (sweep_path.parent / base)
    for candidate in (local, local.with_suffix(".yaml")):
        if candidate.is_file():
            return candidate
    try:
        return resolve_path(base)
    except ConfigError as e:
        raise ConfigError(f"base: {str(e).split(': ', 1)[1]}") from None


def load_sweep(path: str | Path, *, local: bool = True) -> Sweep:
    """The validated sweep; local=False for a sweep sent to a cluster (see config.load_config)."""

    try:
        path = resolve_path(path, "sweep")
    except ConfigError as e:
        raise ConfigError(f"sweep: {str(e).split(': ', 1)[1]}") from None
    raw = load_yaml(path, "sweep")
    if "base" not in raw and "method" in raw:
        raise ConfigError(f"sweep: {path} is an experiment config; train it with `metatrain train {path}`, or "
                          "sweep it from a sweep file whose base: names it")
    spec: SweepConfig = build(SweepConfig, raw)
    spec.name = spec.name or path.stem
    base_path = resolve_base(spec.base, path)
    fixed = dict(spec.set)
    for key in fixed:
        if key in SWEEP_OWNED:
            raise ConfigError(f"set: {key} is set by the sweep itself; it may not be one of {', '.join(SWEEP_OWNED)}")
    base_cfg = load_config(base_path, fixed, local=local)  # every fixed key checked here
    base = to_dict(base_cfg)
    if not spec.space:
        raise ConfigError("space: empty; a sweep needs at least one swept key, e.g. alpha: {grid: [0.01, 0.1]}")
    both = [k for k in spec.space if k in fixed]
    if both:
        raise ConfigError(f"space: {both[0]} is both fixed (set) and swept (space); keep one")
    space = {key: _check_entry(key, entry, base, local) for key, entry in spec.space.items()}
    _check_spec(spec, space, base_cfg)
    sweep = Sweep(spec, base, space, path)
    _decide_packing(sweep, base_cfg, explicit="pack" in raw)
    return sweep


def _decide_packing(sweep: Sweep, base_cfg: Config, explicit: bool) -> None:
    """Pack the packable keys (grid or sampled) unless something needs one Tune trial per run; where
    the sweep file asked for packing explicitly, that is a one-line error, else a note in the start line."""
    spec, keys = sweep.spec, [k for k in sweep.space if k in PACKABLE]
    if spec.pack.max_members < 0:
        raise ConfigError(f"pack.max_members: must be >= 0 (0 = no packing), got {spec.pack.max_members}")
    if spec.pack.max_members < 2 or not keys:
        if spec.scheduler.name in IN_POPULATIONS:
            raise ConfigError(f"scheduler.name: {spec.scheduler.name} acts inside populations, and this sweep packs "
                              f"none ({'pack.max_members < 2' if keys else 'no packable key is swept'}); use asha")
        return
    # a sampled key outside PACKABLE gives every run a population of its own: nothing to pack
    sampled = [k for k, e in sweep.space.items() if "grid" not in e and k not in PACKABLE]
    unpackable = [k for k in sweep.space if k not in PACKABLE]
    from pipeline.driver.families import family_of  # torch: only where a sweep is checked, never to read one
    methods = [base_cfg.method, *(m for e in sweep.space.get("method", {}).values() for m in e)]
    why = ("the asha scheduler stops runs one at a time" if spec.scheduler.name == "asha" else
           f"space.{unpackable[0]} is not packable and the optuna search proposes every key per run (packable: "
           f"{', '.join(PACKABLE)})" if spec.search.name == "optuna" and unpackable else
           f"space.{sampled[0]} is sampled and not packable (packable: {', '.join(PACKABLE)})" if sampled else
           "learned optimizers train one run at a time" if not all(family_of(m).packs for m in methods)
           else "")
    if why and spec.scheduler.name in IN_POPULATIONS:
        raise ConfigError(f"scheduler.name: {spec.scheduler.name} acts inside populations, and this sweep cannot "
                          f"pack ({why}); use asha")
    if why and explicit:
        raise ConfigError(f"pack: cannot pack this sweep ({why}); remove pack, or set pack.max_members: 0")
    if why:
        sweep.unpacked_because = why
    else:
        sweep.packed = keys


def _check_pbt(s: SchedulerSpec, iterations: int) -> None:
    def need(ok: bool, msg: str):
        if not ok:
            raise ConfigError(msg)

    need(0 < s.quantile_fraction <= 0.5, f"scheduler.quantile_fraction: must be in (0, 0.5], got {s.quantile_fraction}")
    need(0 <= s.resample_probability <= 1,
         f"scheduler.resample_probability: must be in [0, 1], got {s.resample_probability}")
    need(s.perturbation_interval >= 0, f"scheduler.perturbation_interval: must be >= 0, got {s.perturbation_interval}")
    need(s.interval_from(iterations) < iterations,
         f"scheduler.perturbation_interval: {s.perturbation_interval} is not shorter than the run ({iterations} "
         "iterations): no decision would be taken")
    need(bool(s.perturbation_factors) and all(isinstance(f, (int, float)) and f > 0 for f in s.perturbation_factors),
         f"scheduler.perturbation_factors: must be a non-empty list of positive numbers, got {s.perturbation_factors}")
    need(bool(s.hyperparam_mutations),
         f"scheduler.hyperparam_mutations: empty; give at least one of {', '.join(MUTABLE)}, e.g. "
         "alpha: {loguniform: [0.0001, 1.0]}")
    for key, entry in s.hyperparam_mutations.items():
        need(key in MUTABLE, f"scheduler.hyperparam_mutations.{key}: not mutable inside a population; allowed: "
                             f"{', '.join(MUTABLE)}")
        kinds = list(entry) if isinstance(entry, dict) else []
        need(len(kinds) == 1 and kinds[0] in MUTATION_KINDS,
             f"scheduler.hyperparam_mutations.{key}: must be one of {{{' | '.join(MUTATION_KINDS)}: ...}}, "
             f"got {entry!r}")
        values = entry[kinds[0]]
        ok = isinstance(values, list) and values and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                         and v >= 0 for v in values)
        if kinds[0] == "choice":
            need(ok, f"scheduler.hyperparam_mutations.{key}.choice: must be a non-empty list of numbers >= 0")
        else:
            low = 0 if kinds[0] == "uniform" else 1e-300  # a log range starts above 0
            need(ok and len(values) == 2 and low <= values[0] < values[1],
                 f"scheduler.hyperparam_mutations.{key}.{kinds[0]}: must be [low, high] with "
                 f"{'0 <=' if kinds[0] == 'uniform' else '0 <'} low < high, got {values!r}")


def _check_spec(spec: SweepConfig, space: dict, base_cfg: Config) -> None:
    def need(ok: bool, msg: str):
        if not ok:
            raise ConfigError(msg)

    need("/" not in spec.name and spec.name not in (".", ".."),
         f"name: must be a plain directory name, got {spec.name!r}")
    need(spec.num_samples >= 1, f"num_samples: must be >= 1, got {spec.num_samples}")
    need(spec.seed >= 0, f"seed: must be >= 0, got {spec.seed}")
    need(spec.max_concurrent_trials >= 0,
         f"max_concurrent_trials: must be >= 0 (0 = no limit), got {spec.max_concurrent_trials}")
    need(spec.max_failures >= 0, f"max_failures: must be >= 0, got {spec.max_failures}")
    need(spec.mode in ("min", "max"), unknown_choice("mode", "mode", spec.mode, ("min", "max")))
    swept_shots = {k for e in space.get("eval.shots", {}).values() for v in e for k in v}
    shots = sorted(set(base_cfg.eval.shots) | swept_shots)
    methods = [base_cfg.method, *(m for e in space.get("method", {}).values() for m in e)]
    from pipeline.driver.families import family_of  # torch: only where a sweep is checked, never to read one
    final_metrics = family_of(base_cfg.method).final_metrics(base_cfg, methods, shots)
    allowed = (*PER_ITERATION_METRICS, *final_metrics)
    need(spec.metric in allowed, unknown_choice("metric", "metric", spec.metric, allowed))
    r = spec.resources
    need(r.cpus > 0, f"resources.cpus: must be > 0, got {r.cpus}")
    need(r.workers >= 0, f"resources.workers: must be >= 0 (0 = compute in the trial process), got {r.workers}")
    need(r.cpus_per_worker > 0, f"resources.cpus_per_worker: must be > 0, got {r.cpus_per_worker}")
    need(r.gpus_per_worker >= 0, f"resources.gpus_per_worker: must be >= 0, got {r.gpus_per_worker}")
    s = spec.scheduler
    need(s.name in SCHEDULERS, unknown_choice("scheduler.name", "scheduler", s.name, SCHEDULERS))
    need(s.grace_period >= 0, f"scheduler.grace_period: must be >= 0, got {s.grace_period}")
    need(s.reduction_factor > 1, f"scheduler.reduction_factor: must be > 1, got {s.reduction_factor}")
    if s.name == "pbt":
        _check_pbt(s, base_cfg.iterations)
    need(s.name != "asha" or spec.metric in PER_ITERATION_METRICS,
         f"metric: the asha scheduler compares trials during training; allowed: {', '.join(PER_ITERATION_METRICS)}")
    need(spec.search.name in SEARCHERS,
         unknown_choice("search.name", "search", spec.search.name, SEARCHERS))
    if spec.search.name == "optuna":
        grids = [k for k, e in space.items() if "grid" in e]
        need(not grids, f"space.{grids[0] if grids else ''}: optuna does not take grid entries; use choice")
    for key in spec.report.rows:
        _check_key(key, "report.rows")
    for k in spec.report.shots:
        need(k in shots, f"report.shots: K={k} is not evaluated; allowed: {', '.join(map(str, shots))}")
