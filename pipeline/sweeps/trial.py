"""The trial side of a sweep: what runs inside each Ray Tune trial's process. A trial builds its
config from the sweep's base and its sampled values, trains one run directory with the same Trainer
as `metatrain train`, reports progress and checkpoints to Tune, and resumes from Tune's checkpoint
when it is retried. The driver side (the Tuner, progress, the trial record, the report) is
`pipeline/sweeps/driver.py`; the two share only `TrialContext` and the trial's name."""
from __future__ import annotations

import copy
import json
import math
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from ray import tune

from pipeline.config import load_config
from pipeline.driver import checkpoint
from pipeline.driver.hooks import DriverHook, eval_scalars, iteration_scalars
from pipeline.driver.population import Population
from pipeline.driver.schedulers import Halving, Pbt
from pipeline.driver.trainer import Trainer
from pipeline.shards.compiled import use_cpus
from pipeline.sweeps.record import TRIALS
from pipeline.sweeps.spec import Resources
from pipeline.tracking import MlflowTracker


@dataclass(frozen=True)
class TrialContext:
    """What every trial needs besides its sampled values (shipped once with tune.with_parameters)."""

    base: dict
    swept: tuple[str, ...]
    sweep_dir: str
    uri: str
    experiment_id: str
    parent_run_id: str
    resources: dict
    metric: str = "meta_loss"  # the scheduler's / search algorithm's metric
    halving: tuple[int, float] | None = None  # (grace period, reduction factor) inside each population
    pbt: Pbt | None = None  # PBT inside each population; its seed is completed per population (run_trial)


def _short(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value).replace(" ", "")


def trial_run_name(trial_id: str, config: dict, swept) -> str:
    """'00003-method=maml,alpha=0.01': the trial's index and its swept values, as a directory name."""
    desc = ",".join(f"{k.rsplit('.', 1)[-1]}={_short(config[k])}" for k in swept)
    return f"{trial_id.rsplit('_', 1)[-1]}-{desc}".replace("/", "_")[:120]


def trial_config(ctx: TrialContext, config: dict, run_name: str):
    r = Resources(**ctx.resources)
    overrides = {**{k: config[k] for k in ctx.swept}, "output_dir": str(Path(ctx.sweep_dir) / TRIALS),
                 "run_name": run_name, "backend": "ray" if r.workers else "local", "ray.workers": r.workers,
                 "ray.cpus_per_worker": r.cpus_per_worker, "ray.gpus_per_worker": r.gpus_per_worker,
                 "tracking.uri": ctx.uri, "tracking.enabled": True}
    return load_config(copy.deepcopy(ctx.base), overrides)


MEMBER_FILE = "member_{:03d}.pt"  # a Tune checkpoint: every run's state, one file per run


def member_id(trial_id: str, index: int) -> str:
    """A population member's id: its Tune trial's id and its index ('..._00002.003')."""
    return f"{trial_id}.{index:03d}"


def member_values(config: dict, index: int, swept) -> dict:
    """Member `index`'s swept values: the Tune trial's (unpacked keys) and its own (packed keys)."""
    return {**{k: config[k] for k in swept if k in config}, **config["members"][index]}


class TuneReporter(DriverHook):
    """Tune's view of a trial, one run's Trainer or a packed Population (the DriverHook's `driver`,
    here `source`): progress reports, checkpoints that hold every run's state, and a final report with
    each run's status and evaluation (`members_final`; a one-run trial's also flat, for the
    scheduler and the search algorithm)."""

    def __init__(self, metric: str = "meta_loss"):
        self.last, self.metric = {}, metric

    def _report(self, source, extra: dict | None = None, checkpoint=None) -> None:
        # The sweep's metric is in every report, NaN until it exists (an evaluation metric before
        # the final report; meta_loss when all steps were skipped): schedulers and search
        # algorithms read it from every result.
        tune.report({"meta_loss": math.nan, "query_metric": math.nan, self.metric: math.nan, **self.last,
                     "iteration": source.iteration, **(extra or {})}, checkpoint=checkpoint)

    # Nothing is reported at the last iteration before the final report: a scheduler (ASHA) acting on
    # it could stop a trial that has trained to the end, before its evaluation.
    def on_log(self, source, entry: dict) -> None:
        self.last = {**iteration_scalars(entry), "logged_at": entry["iteration"]}
        cfg = source.base
        if entry["iteration"] % cfg.train.checkpoint_every and entry["iteration"] < cfg.iterations:
            self._report(source)  # else on_checkpoint reports it

    def on_checkpoint(self, source) -> None:
        if source.iteration >= source.base.iterations:
            return
        with tempfile.TemporaryDirectory() as d:
            for i, state in enumerate(source.states()):
                torch.save(state, Path(d) / MEMBER_FILE.format(i))
            self._report(source, checkpoint=tune.Checkpoint.from_directory(d))

    def on_finish(self, source, results: list[dict]) -> None:
        finals = [{"status": r["status"], "iteration": r["iterations"], **t.last_scalars, **eval_scalars(r),
                   **({"pbt": r["pbt"]} if "pbt" in r else {})} for t, r in zip(source.runs, results)]
        extra = {"final": True, "status": "completed", "members_final": json.dumps(finals)}
        self._report(source, {**extra, **(finals[0] if len(finals) == 1 else {})})


def run_trial(config: dict, ctx: TrialContext) -> None:
    """The Tune function trainable: one meta-training run, or a packed population of runs
    (config["members"]: each member's own values), each in its own run directory with its own MLflow
    child run; resumed from the trial's checkpoint when Tune restarts it."""
    # Tune runs the next trial in this process (reuse_actors, pipeline/sweeps/driver.py): Dynamo's caches
    # start empty, so earlier trials' graphs neither count against its recompile limit (8 graphs
    # per code object, and every trial compiles the same code objects) nor add guard checks to calls.
    torch._dynamo.reset()
    trial_id = tune.get_context().get_trial_id()
    packed = "members" in config
    values = [member_values(config, i, ctx.swept) for i in range(len(config["members"]))] if packed else [config]
    ids = [member_id(trial_id, i) for i in range(len(values))] if packed else [trial_id]
    names = [trial_run_name(run_id, v, ctx.swept) for run_id, v in zip(ids, values)]
    cfgs = [trial_config(ctx, v, n) for v, n in zip(values, names)]
    states = None
    restored = tune.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as d:
            states = [checkpoint.read(Path(d) / MEMBER_FILE.format(i)) for i in range(len(cfgs))]
    if packed or not any(c.ray.workers for c in cfgs):  # computing in this process
        use_cpus(ctx.resources["cpus"])

    def hooks(i):
        tags = {"trial_id": ids[i], "sweep_dir": ctx.sweep_dir, **({"population": trial_id} if packed else {})}
        return (MlflowTracker(cfgs[i], ctx.uri, run_name=names[i], experiment_id=ctx.experiment_id,
                              parent_run_id=ctx.parent_run_id, tags=tags),)

    log, reporter = (lambda m: print(m, flush=True)), TuneReporter(ctx.metric)
    run_dirs = [Path(c.output_dir) / n for c, n in zip(cfgs, names)]
    if packed:
        # each population its own decisions: the sweep seed and the population's index
        pbt = replace(ctx.pbt, seed=(*ctx.pbt.seed, int(trial_id.rsplit("_", 1)[-1]))) if ctx.pbt else None
        scheduler = Halving(*ctx.halving) if ctx.halving else pbt
        with Population(cfgs, run_dirs, log=log, hooks=hooks, reporter=reporter, scheduler=scheduler) as population:
            population.train(states=states)
    else:
        (cfg,), (run_dir,) = cfgs, run_dirs
        with Trainer(cfg, run_dir, log=log, hooks=hooks(0), reporter=reporter) as trainer:
            trainer.train(state=states[0] if states else None)
