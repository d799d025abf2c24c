"""The trial side of a sweep: what runs inside each Ray Tune trial's process. A trial builds its
config from the sweep's base and its sampled values, trains one run directory with the same Trainer
as `metatrain train`, reports progress and checkpoints to Tune, and resumes from Tune's checkpoint
when it is retried. The driver side (the Tuner, progress, the trial record, the report) is
`pipeline/sweep.py`; the two share only `TrialContext` and the trial's name."""
from __future__ import annotations

import copy
import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ray import tune

from pipeline import checkpoint
from pipeline.config import load_config
from pipeline.meta_batch import use_cpus
from pipeline.sweep_config import Resources
from pipeline.sweep_dir import TRIALS
from pipeline.trainer import Trainer, TrainerHook, eval_scalars, iteration_scalars


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


class TuneReporter(TrainerHook):
    """Reports a trial's progress to Tune; checkpoints travel with the reports."""

    def __init__(self, metric: str = "meta_loss"):
        self.last, self.metric = {}, metric

    def _metrics(self, trainer, extra: dict | None = None) -> dict:
        # The sweep's metric is in every report, NaN until it exists (an evaluation metric before
        # the final report; meta_loss when all steps were skipped): schedulers and search
        # algorithms read it from every result.
        return {"meta_loss": math.nan, "query_metric": math.nan, self.metric: math.nan, **self.last,
                "iteration": trainer.iteration, **(extra or {})}

    # Nothing is reported at the last iteration before the final report: a scheduler (ASHA) acting on
    # it could stop a trial that has trained to the end, before its evaluation.
    def on_log(self, trainer, entry: dict) -> None:
        self.last = {**iteration_scalars(entry), "logged_at": entry["iteration"]}
        last = entry["iteration"] >= trainer.cfg.iterations
        if entry["iteration"] % trainer.cfg.train.checkpoint_every and not last:  # else on_checkpoint reports it
            tune.report(self._metrics(trainer))

    def on_checkpoint(self, trainer) -> None:
        if trainer.iteration >= trainer.cfg.iterations:
            return
        with tempfile.TemporaryDirectory() as d:
            checkpoint.save(Path(d), trainer.state_dict())
            tune.report(self._metrics(trainer), checkpoint=tune.Checkpoint.from_directory(d))

    def on_finish(self, trainer, results: dict) -> None:
        tune.report(self._metrics(trainer, {**eval_scalars(results), "status": results["status"], "final": True}))


MEMBER_FILE = "member_{:03d}.pt"


def member_id(trial_id: str, index: int) -> str:
    """A population member's id: its Tune trial's id and its index ('..._00002.003')."""
    return f"{trial_id}.{index:03d}"


def member_values(config: dict, index: int, swept) -> dict:
    """Member `index`'s swept values: the Tune trial's (unpacked keys) and its own (packed keys)."""
    return {**{k: config[k] for k in swept if k in config}, **config["members"][index]}


class PopulationReporter:
    """Tune progress and checkpoints of a population (a PopulationHook): the checkpoint holds every
    member's state; the final report each member's status."""

    def __init__(self, metric: str = "meta_loss"):
        self.metric = metric

    def on_log(self, population, entry: dict) -> None:
        cfg = population.cfgs[0]
        if entry["iteration"] % cfg.train.checkpoint_every and entry["iteration"] < cfg.iterations:
            tune.report({**entry, "logged_at": entry["iteration"], self.metric: entry.get(self.metric, math.nan)})
        self.last = entry

    def on_checkpoint(self, population) -> None:
        import torch

        with tempfile.TemporaryDirectory() as d:
            for i, state in enumerate(population.states()):
                torch.save(state, Path(d) / MEMBER_FILE.format(i))
            entry = getattr(self, "last", {})
            tune.report({**entry, "logged_at": entry.get("iteration", -1), self.metric: entry.get(self.metric, math.nan)},
                        checkpoint=tune.Checkpoint.from_directory(d))

    def on_finish(self, population, results: list[dict]) -> None:
        members = [{"status": r["status"], **eval_scalars(r)} for r in results]
        tune.report({"final": True, "status": "completed", "members_final": json.dumps(members),
                     "iteration": population.cfgs[0].iterations, self.metric: math.nan})


def run_population(config: dict, ctx: TrialContext) -> None:
    """A packed Tune trial: its members (config["members"]) trained as one population, each in its
    own run directory with its own MLflow child run; resumed from the trial's checkpoint."""
    from pipeline.population import Population
    from pipeline.tracking import MlflowTracker

    trial_id = tune.get_context().get_trial_id()
    names, cfgs = [], []
    for i in range(len(config["members"])):
        values = member_values(config, i, ctx.swept)
        names.append(trial_run_name(member_id(trial_id, i), values, ctx.swept))
        cfgs.append(trial_config(ctx, values, names[-1]))
    states = None
    restored = tune.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as d:
            states = [checkpoint.read(Path(d) / MEMBER_FILE.format(i)) for i in range(len(cfgs))]
    use_cpus(ctx.resources["cpus"])

    def hooks(i):
        return (MlflowTracker(cfgs[i], ctx.uri, run_name=names[i], experiment_id=ctx.experiment_id,
                              parent_run_id=ctx.parent_run_id,
                              tags={"trial_id": member_id(trial_id, i), "population": trial_id,
                                    "sweep_dir": ctx.sweep_dir}),)

    run_dirs = [Path(c.output_dir) / n for c, n in zip(cfgs, names)]
    with Population(cfgs, run_dirs, log=lambda m: print(m, flush=True), hooks=hooks,
                    reporter=PopulationReporter(ctx.metric)) as population:
        population.train(states=states)


def run_trial(config: dict, ctx: TrialContext) -> None:
    """The Tune function trainable: one meta-training run (or a packed population of runs),
    resumed from the trial's checkpoint when Tune restarts it."""
    import torch

    from pipeline.tracking import MlflowTracker

    # Tune runs the next trial in this process (reuse_actors, pipeline/sweep.py): Dynamo's caches
    # start empty, so earlier trials' graphs neither count against its recompile limit (8 graphs
    # per code object, and every trial compiles the same code objects) nor add guard checks to calls.
    torch._dynamo.reset()
    if "members" in config:
        return run_population(config, ctx)
    tc = tune.get_context()
    trial_id = tc.get_trial_id()
    run_name = trial_run_name(trial_id, config, ctx.swept)
    cfg = trial_config(ctx, config, run_name)
    state = None
    restored = tune.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as d:
            state = checkpoint.load(Path(d))
    if not cfg.ray.workers:
        use_cpus(ctx.resources["cpus"])
    tracker = MlflowTracker(cfg, ctx.uri, run_name=run_name,
                            experiment_id=ctx.experiment_id, parent_run_id=ctx.parent_run_id,
                            tags={"trial_id": trial_id, "sweep_dir": ctx.sweep_dir})
    run_dir = Path(cfg.output_dir) / run_name
    with Trainer(cfg, run_dir, log=lambda m: print(m, flush=True), hooks=(tracker, TuneReporter(ctx.metric))) as trainer:
        trainer.train(state=state)
