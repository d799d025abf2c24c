"""Populations: runs that differ only in PACKABLE keys trained as one program. A sine sweep is bound
by per-op dispatch, so the members' parameters are stacked (StackedRuns) and one `vmap` over members
computes every member's meta-gradient in one call. Each member keeps a RunRecord whose directory is
what its solo `metatrain train` would write, its own task streams and non-finite guard; its numbers
equal its solo run's up to float rounding (tests/integration/test_population.py: 1e-5)."""
from __future__ import annotations

import functools
import time
from pathlib import Path

from pipeline.config import Config
from pipeline.distributed.backends import LocalBackend, RayBackend
from pipeline.driver import checkpoint
from pipeline.driver.hooks import DriverHook
from pipeline.driver.population_step import WholeIteration, window
from pipeline.driver.record import RunRecord, check_trainable, reported_aborts
from pipeline.driver.schedulers import MemberScheduler
from pipeline.driver.stacked_runs import StackedRuns, check_packable
from pipeline.shards.stacked import PopulationShards, stacked_from_wire


class Population:
    """Trains members (configs that differ only in PACKABLE keys) as one program. Use as a context manager.

    Arguments:
        cfgs, run_dirs: the members' configs and run directories, in member order.
        hooks: hooks(i): member i's RunHooks (its MLflow run). reporter: a DriverHook (Tune).
        device: where the stacked members train ("cuda": the whole population on one GPU; tasks are
            drawn where task.sample_on says, members evaluate on the CPU).
        scheduler: decides on the members while they train (schedulers: Halving, Pbt; None: none).
        whole_iteration: each iteration as one function on the device where that applies
            (WholeIteration): None = when compiled (train.compile), True = also eagerly, False = never.

    Example:
        >>> cfgs = [load_config("sine_mtnet", {"alpha": a}) for a in (0.01, 0.1)]  # doctest: +SKIP
        >>> with Population(cfgs, [f"runs/a{c.alpha}" for c in cfgs], scheduler=Halving(500, 2.0)) as pop:
        ...     results = pop.train()   # each member's results.json, in member order  # doctest: +SKIP
    """

    def __init__(self, cfgs: list[Config], run_dirs: list[Path], log=print, hooks=None,
                 reporter: DriverHook | None = None, device: str = "cpu", scheduler: MemberScheduler | None = None,
                 whole_iteration: bool | None = None):
        self.spec = check_packable(cfgs)  # the shared config and the member table
        cfg = self.base = self.spec.base
        self.log, self.reporter = log, reporter or DriverHook()
        self.scheduler = scheduler or MemberScheduler()
        narrows = self.scheduler.stops_members
        progress = f"[{cfg.method}] it "  # per-iteration progress is the population's, not each member's

        def member_log(name):
            return lambda m: None if m.startswith(progress) else log(f"{name}: {m}")

        self.members = [RunRecord(c, d, self, member_log(Path(d).name), hooks(i) if hooks else ())
                        for i, (c, d) in enumerate(zip(cfgs, run_dirs))]
        # Every member's shards: computed here, or by Ray shard workers (ray.workers > 0) that compute
        # every member on their range of task indices exactly as a solo run's workers do.
        self.shards = PopulationShards(self.spec.select(range(len(cfgs))), device, log, narrows=narrows)
        self.backend = (RayBackend(cfg, None, log, build=functools.partial(stacked_from_wire, narrows=narrows),
                                   members=self.spec.select(range(len(cfgs))))
                        if cfg.backend == "ray" and cfg.ray.workers else LocalBackend(cfg, self.shards))
        self.stacked = StackedRuns(self.spec, self.members, self.shards, self.backend, device)
        self.whole = WholeIteration.where_it_applies(self.shards, isinstance(self.backend, LocalBackend),
                                                     whole_iteration, log)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.backend.close()

    # -- the driver's view (RunDriver; DriverHook's `driver`) --------------------------------
    @property
    def params(self) -> dict:
        return self.stacked.params

    @property
    def iteration(self) -> int:
        """Iterations done (running members move in lockstep; a diverged one stays behind)."""
        return max(m.iteration for m in self.members)

    @property
    def runs(self) -> list[RunRecord]:
        return self.members

    def states(self) -> list[dict]:
        """Every member's checkpoint state (what a Tune checkpoint of the population holds)."""
        return [m.state_dict() for m in self.members]

    def updated_fraction(self, params: dict) -> dict | None:
        return self.shards.experiment.updated_fraction(params)  # the rule is every member's

    def eval_backend(self, run: RunRecord):
        return LocalBackend(run.cfg, run.experiment)  # members evaluate where every solo run does

    # -- training ----------------------------------------------------------------------------
    def train(self, resume: bool = False, states: list[dict] | None = None) -> list[dict]:
        """Train every member to its iterations, evaluate each; the members' results in order.
        resume: continue from the members' run directories; states: from these checkpoint states
        (a Tune trial's checkpoint)."""
        check_trainable(self.base)
        resumed = resume or states is not None
        if resume and states is None:
            states = checkpoint.common_states([m.run_dir for m in self.members], [m.log for m in self.members])
        if self.base.train.tasks_per_vmap == "auto":
            self.stacked.resolve_chunk_size(resumed, self.log)
        for i, m in enumerate(self.members):
            m.begin(states[i] if resumed else None)
        self.stacked.start(self.shards.experiment.plan.compile, self.scheduler.stops_members, self.log)
        with reported_aborts(self.members, self.stacked.storage_fault):
            for m in self.members:
                m.announce_start(resumed)
            self._loop()
            for m in self.members:  # evaluation and plots run where every solo run's do
                m.bind(m.adam, m.row, {k: v.cpu() for k, v in m.params.items()})
            results = [m.stopped_results() if m.status == "stopped" else m.finish() for m in self.members]
            self.reporter.on_finish(self, results)
            return results

    def _loop(self) -> None:
        cfg, scheduler = self.base, self.scheduler
        for m in self.members:
            m.start_clock()
        t0, it0 = time.perf_counter(), min(m.iteration for m in self.stacked.live_records())
        while any(m.status == "running" and m.iteration < cfg.iterations for m in self.members):
            members = self.stacked.live_records()  # running members move in lockstep; a diverged one is frozen
            iteration = next(m.iteration for m in members if m.status == "running")
            steps = (self.whole.run(self.stacked.adam, iteration, window(iteration, cfg, scheduler), members)
                     if self.whole is not None else [self.stacked.step(members, iteration)])
            done = iteration + len(steps)  # events fall on a window's last iteration only (window)
            due = scheduler.due(done, cfg.iterations)
            for k, (finite, losses, curves, metrics) in enumerate(steps, iteration + 1):
                if k == done and due and scheduler.before_save:
                    self._decide(done)  # PBT: before the members save this iteration
                for i, m in enumerate(members):
                    if m.status == "running" and not m.after_step(finite[i], losses[i], curves[i], metrics[i]):
                        m.save()  # diverged: its checkpoint says so at once, as a solo run's does when it stops
            if due and not scheduler.before_save:
                self._decide(done)  # halving: ranks the members after their step's bookkeeping
            if done % cfg.train.log_every == 0 or done == cfg.iterations:
                line, entry = self.stacked.progress(done, members, losses, (done - it0) * len(members), t0, scheduler)
                self.log(line)
                self.reporter.on_log(self, entry)
            if done % cfg.train.checkpoint_every == 0 and done < cfg.iterations:
                self.reporter.on_checkpoint(self)  # every running member has saved this iteration
        for m in self.members:
            if m.status != "stopped":
                m.end_loop()

    def _decide(self, done: int) -> None:
        line = self.stacked.decide(self.scheduler, done, self.base.eval.val_tasks)
        if line is not None:
            self.log(line)
