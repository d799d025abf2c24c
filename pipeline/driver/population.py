"""Populations: runs that differ only in numeric keys trained as one program.

A sweep of the thesis's sine models is bound by per-op dispatch, not arithmetic: one 1-40-40-1 MLP
trial at meta-batch 4 does ~1 MFLOP of work per task in 4-6 ms of PyTorch overhead. Members of a
population share the method, task, model, meta-batch, inner steps, iterations and evaluation, and
differ only in PACKABLE keys (alpha, beta, the Gumbel temperature, the seeds). Their parameters are
stacked on a member dimension and one `vmap` over members (of the usual `vmap` over tasks) computes
every member's meta-gradient in one call; alpha and the temperature are per-member tensors inside
it, and Adam runs as one functional update with a per-member step size beta.

Members stay first-class: each is a `Trainer` over its own run directory (config.yaml,
metrics.jsonl, checkpoints that `metatrain eval`/`resume` accept, results.json, plots, its own
hooks), whose parameters are views into the stacked tensors. Its task and noise streams are those
of its solo run (its seed), its non-finite guard is its own: a member that diverges is frozen and
recorded as `diverged` while the others train on. A member's numbers equal its solo run's up to
float rounding (tests/integration/test_population.py: 1e-5).
"""
from __future__ import annotations

import functools
import math
import time
from pathlib import Path

import torch

from pipeline.config import MUTABLE, Config, ConfigError
from pipeline.distributed.backends import LocalBackend, RayBackend
from pipeline.driver import checkpoint
from pipeline.driver.families import family_of
from pipeline.driver.meta_step import StackedAdam
from pipeline.driver.population_step import MAX_WINDOW, WholeIteration
from pipeline.driver.run_dir import read_metrics
from pipeline.driver.schedulers import MemberScheduler
from pipeline.driver.trainer import Trainer, reported_aborts
from pipeline.members import PopulationSpec
from pipeline.shards.stacked import PopulationShards, stacked_from_wire
from pipeline.storage import StorageError


def check_packable(cfgs: list[Config]) -> PopulationSpec:
    """The members as one spec (pipeline/members.py); one line naming the first key (other than
    PACKABLE ones) in which members differ, or a method that does not pack."""
    spec = PopulationSpec.from_configs(cfgs)
    if not family_of(spec.base.method).packs:
        raise ConfigError(f"population: method {spec.base.method}: learned optimizers train one run at a time")
    return spec


class Member(Trainer):
    """A solo run's trainer whose parameters and Adam moments live in the population's stacked
    tensors (row `index`); its checkpoint is a solo checkpoint, in torch.optim.Adam's format."""

    def __init__(self, population: Population, index: int, cfg: Config, run_dir: Path, log, hooks):
        super().__init__(cfg, run_dir, log=log, backend="local", hooks=hooks)
        self.population, self.index = population, index

    def training_backend(self):
        return self.population.backend


class Population:
    """Trains members (configs that differ only in PACKABLE keys) as one program; each member's
    run directory is what its solo `metatrain train` would write. Use as a context manager.

    Arguments: see __init__.

    Example:
        >>> cfgs = [load_config("sine_mtnet", {"alpha": a}) for a in (0.01, 0.1)]  # doctest: +SKIP
        >>> dirs = [f"runs/a{c.alpha}" for c in cfgs]                             # doctest: +SKIP
        >>> with Population(cfgs, dirs, scheduler=Halving(500, 2.0)) as pop:      # doctest: +SKIP
        ...     results = pop.train()   # each member's results.json, in member order
    """

    def __init__(self, cfgs: list[Config], run_dirs: list[Path], log=print, hooks=None, reporter=None,
                 device: str = "cpu", scheduler: MemberScheduler | None = None,
                 whole_iteration: bool | None = None):
        """hooks(i): member i's TrainerHooks (its MLflow run); reporter: a PopulationHook (Tune);
        device: where the stacked members train ("cuda": the whole population on one GPU; tasks
        are drawn where task.sample_on says, and members evaluate on the CPU); scheduler: what decides
        on the members while they train (pipeline/driver/schedulers: Halving, Pbt; None: nothing,
        every member trains to the end); whole_iteration: each
        iteration as one function on the device where that applies (WholeIteration): None = when
        compiled (train.compile), True = also eagerly, False = step by step."""
        self.device = torch.device(device)
        self.spec = check_packable(cfgs)  # the shared config and the member table
        cfg = self.base = self.spec.base
        self.log, self.reporter = log, reporter or PopulationHook()
        self.scheduler = scheduler or MemberScheduler()
        narrows = self.scheduler.stops_members
        self.params = None  # stacked (P, ...) tensors (views into self.adam's buffer) once training starts
        names = [Path(d).name for d in run_dirs]
        self.members: list[Member] = []
        # Member log lines are prefixed; per-iteration progress comes from the population instead.
        progress = f"[{cfg.method}] it "  # every member's method is the same (check_packable)
        for i, (member_cfg, run_dir) in enumerate(zip(cfgs, run_dirs)):
            member_log = (lambda name: lambda m: None if m.startswith(progress) else log(f"{name}: {m}"))(names[i])
            self.members.append(Member(self, i, member_cfg, Path(run_dir), member_log, hooks(i) if hooks else ()))
        # Every member's shards: computed here, or by Ray shard workers (ray.workers > 0), each
        # computing every member on its range of task indices exactly as a solo run's workers do.
        # The in-process source also ranks the members at halving rungs (validate).
        self.live = list(range(len(cfgs)))  # the members in the stacked computation, in row order
        self.shards = PopulationShards(self.spec.select(self.live), device, log, narrows=narrows)
        if cfg.backend == "ray" and cfg.ray.workers:
            build = functools.partial(stacked_from_wire, narrows=narrows)
            self.backend = RayBackend(cfg, None, log, build=build, members=self.spec.select(self.live))
        else:
            self.backend = LocalBackend(cfg, self.shards)
        # The whole iteration as one function (pipeline/driver/population_step.py) where the members
        # train in this process, draw their tasks on its device and are compiled: eagerly it is
        # slower than step by step (torch.func's grad per op, one draw per iteration instead of a
        # block ahead: benchmarks/RESULTS.md, "Populations and packed sweeps").
        self.whole = None
        plan = self.shards.experiment.plan
        if (plan.compile if whole_iteration is None else whole_iteration) and isinstance(self.backend, LocalBackend) \
                and self.shards.experiment.sample_on_device and not cfg.train.block_tasks:
            self.whole = WholeIteration(self.shards, cfg.train.max_bad_steps, log, compile=plan.compile,
                                        graphs=plan.graphs)

    def _resolve_chunk_size(self, resumed: bool) -> None:
        """train.tasks_per_vmap: auto, timed once on the population's own first shard (every member's
        tasks; Ray: worker 0's) and recorded in every member's config as a solo run records it; a
        resumed population keeps the choice its members' config.yaml recorded."""
        chosen = self.members[0].choose_chunk_size(
            resumed, lambda: self.backend.time_chunk_sizes(self._stacked_params()), log=self.log)
        for m in self.members:
            m.use_chunk_size(chosen)
        self.base.train.tasks_per_vmap = chosen  # workers that start later build with it
        self.backend.set_chunk_size(chosen)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.backend.close()
        for m in self.members:
            m.close()

    # -- state -------------------------------------------------------------------------------
    def _stack_members(self) -> None:
        """Stacked parameters and Adam state from the members' (fresh or loaded) trainers; then
        every member's params become views into the stacked tensors."""
        stopped = [i for i, m in enumerate(self.members) if m.status == "stopped"]  # by an earlier rung
        if stopped:
            self._narrow([i for i in self.live if i not in stopped])
        live = [self.members[i] for i in self.live]
        for i, m in enumerate(self.members):  # a resumed PBT member's checkpoint carries its current values
            self.spec.set_values(i, {k: getattr(m.cfg, k) for k in MUTABLE})
        self._set_values()
        self.adam = StackedAdam(self._stacked_params(), self.beta[self.live], self.base.train.grad_clip,
                                compile=self.shards.experiment.plan.compile, log=self.log,
                                dynamic_members=self.scheduler.stops_members)
        self.params = self.adam.params
        for row, m in enumerate(live):  # from now on each member's outer step is a row of this one
            self.adam.load_row_state(row, m.adam.row_state(m.row, m.cfg.beta))
            m.adam, m.row = self.adam, row
            m.params = {k: self.params[k][row] for k in self.params}

    def _set_values(self) -> None:
        """Per-member step sizes and temperatures from the member table, wherever shards run (the
        table's rows travel, not configs)."""
        self.beta = torch.tensor(self.spec.column("beta"), dtype=torch.float64, device=self.device)
        values = [self.spec.values(i) for i in self.live]
        self.backend.set_member_values(values)
        if isinstance(self.backend, RayBackend):  # else the backend's source is self.shards
            self.shards.set_values(values)

    def _stacked_params(self) -> dict:
        live = [self.members[i] for i in self.live]
        return {k: torch.stack([m.params[k].detach() for m in live]).to(self.device) for k in live[0].params}

    def _narrow(self, keep: list[int]) -> None:
        """Only members `keep` (indices, in row order) stay in the stacked computation: the shard
        sources drop the others' rows, so the population gets cheaper as it narrows."""
        rows = [self.live.index(i) for i in keep]
        self.backend.select_members(rows)
        if isinstance(self.backend, RayBackend):  # else the backend's source is self.shards
            self.shards.select(rows)
        self.live = list(keep)

    def _decide(self, done: int) -> None:
        """The scheduler's decision after iteration `done`, from every running member's val_loss
        (PopulationShards.validate), applied: copies of rows (parameters, Adam moments, step count:
        bitwise, in memory), new values, each member's record, and the stopped members' rows (with
        those of members that diverged) leaving the stacked computation, each keeping its state and
        checkpoint."""
        cfg, live = self.base, [self.members[i] for i in self.live]
        running = [r for r, m in enumerate(live) if m.status == "running"]
        if not running:
            return
        val_loss, val_metric = (v.tolist() for v in self.shards.validate(self.params, cfg.eval.val_tasks))
        decision = self.scheduler.decide(done, {self.live[r]: val_loss[r] for r in running},
                                         {self.live[r]: val_metric[r] for r in running},
                                         {self.live[r]: self.spec.values(self.live[r]) for r in running},
                                         {i: m.run_dir.name for i, m in enumerate(self.members)}, cfg.eval.val_tasks)
        row = {i: r for r, i in enumerate(self.live)}
        for recipient, donor in decision.copies.items():
            self.adam.copy_row(row[donor], row[recipient])
        for i, new in decision.values.items():
            self.spec.set_values(i, new)
            # the member's own config is its run's record of its values (checkpoint, evaluation)
            for key in MUTABLE:
                setattr(self.members[i].cfg, key, self.spec.rows[i][key])
            self.adam.set_beta(row[i], new["beta"])
        if decision.values:
            self._set_values()
        for i, entry in decision.history.items():
            getattr(self.members[i], self.scheduler.history_key).append(entry)
        for i, entry in decision.entries.items():
            self.members[i].record(entry)
        if self.scheduler.stops_members:
            self._release([r for r, m in enumerate(live) if m.status != "running" or self.live[r] in decision.stop])
        self.log(decision.line)

    def _release(self, leaving: list[int]) -> None:
        """Rows `leaving` leave the stacked computation: each member takes its own state (a running
        one stops and saves), the others' rows are gathered anew."""
        live = [self.members[i] for i in self.live]
        for r in leaving:
            m = live[r]
            m.adam, m.row = self.adam.select([r]), 0  # its own state from now on
            m.params = {k: v[0] for k, v in m.adam.params.items()}
            if m.status == "running":
                m.status = "stopped"
                m.save()
        if leaving:
            stayed = [r for r in range(len(live)) if r not in leaving]
            self.adam = self.adam.select(stayed)
            self.params = self.adam.params
            for row, r in enumerate(stayed):
                live[r].adam, live[r].row = self.adam, row
                live[r].params = {k: self.params[k][row] for k in self.params}
            self._narrow([self.live[r] for r in stayed])

    def _resume_states(self) -> list[dict]:
        """Each member's checkpoint at one common iteration: members are saved one after another,
        so a population killed between two saves has some members one checkpoint ahead; their
        previous checkpoint is at the common iteration. Members that were stopped or diverged stay
        where they ended (a diverged member is saved when it diverges)."""
        states = [checkpoint.load(m.run_dir, m.log) for m in self.members]
        frozen = ("stopped", "diverged")
        moving = [s["iteration"] for s in states if s["status"] not in frozen]
        common = min(moving) if moving else None
        for i, m in enumerate(self.members):
            if common is not None and states[i]["iteration"] != common and states[i]["status"] not in frozen:
                prev = checkpoint.read(m.run_dir / checkpoint.PREVIOUS_CHECKPOINT)
                if prev["iteration"] != common:
                    raise ConfigError(f"population: member {m.run_dir} has checkpoints at iterations "
                                      f"{states[i]['iteration']} and {prev['iteration']}, none at {common}")
                states[i] = prev
        return states

    # -- training ----------------------------------------------------------------------------
    def train(self, resume: bool = False, states: list[dict] | None = None) -> list[dict]:
        """Train every member to its iterations, evaluate each; the members' results in order.
        resume: continue from the members' run directories; states: from these checkpoint states
        (a Tune trial's checkpoint)."""
        resumed = resume or states is not None
        if resume and states is None:
            states = self._resume_states()
        if self.base.train.tasks_per_vmap == "auto":
            self._resolve_chunk_size(resumed)
        for i, m in enumerate(self.members):
            m.begin(state=states[i]) if resumed else m.begin()
        self._stack_members()
        with reported_aborts(self.members, self._storage_fault):
            for m in self.members:
                m._emit("on_start", resumed)
                if resumed:  # as Trainer.train: what a killed member logged before its checkpoint
                    m._emit("on_replay", read_metrics(m.run_dir))
            self._loop()
            for m in self.members:  # evaluation and plots run where every solo run's do
                m.params = {k: v.cpu() for k, v in m.params.items()}
            results = [m.stopped_results() if m.status == "stopped" else m.finish() for m in self.members]
            self.reporter.on_finish(self, results)
            return results

    def _storage_fault(self, e: StorageError) -> StorageError:
        saved = {m.saved_at for m in self.members if m.status != "stopped"}
        root = self.members[0].run_dir.parent
        kept = (f"every member's checkpoint of iteration {min(saved)} in {root} is intact" if None not in saved
                else f"the members in {root} were not all saved yet")
        return e.finished_by(kept, "resume the population (`metatrain sweep FILE --resume` for a sweep's)")

    def _loop(self) -> None:
        cfg = self.base
        for m in self.members:
            m.start_clock()
        t0, it0 = time.perf_counter(), min(self.members[i].iteration for i in self.live)
        while any(m.status == "running" and m.iteration < cfg.iterations for m in self.members):
            # running members move in lockstep; a diverged one is frozen at its last iteration
            members = [self.members[i] for i in self.live]  # the stacked rows
            iteration = next(m.iteration for m in members if m.status == "running")
            if self.whole is not None:  # up to the next event, on the device
                steps = self.whole.run(self.adam, iteration, self._window(iteration), members)
            else:
                steps = [self._step(members, iteration)]
            done = iteration + len(steps)  # events fall on a window's last iteration only (_window)
            due = self.scheduler.due(done, cfg.iterations)
            for k, (finite, losses, curves, metrics) in enumerate(steps, iteration + 1):
                if k == done and due and self.scheduler.before_save:
                    self._decide(done)  # PBT: before the members save this iteration
                for i, m in enumerate(members):
                    if m.status == "running" and not m.after_step(finite[i], losses[i], curves[i], metrics[i]):
                        m.save()  # diverged: its checkpoint says so at once, as a solo run's does when it stops
            if due and not self.scheduler.before_save:
                self._decide(done)  # halving: ranks the members after their step's bookkeeping
            if done % cfg.train.log_every == 0 or done == cfg.iterations:
                self._progress(done, members, losses, t0, it0)
            if done % cfg.train.checkpoint_every == 0 and done < cfg.iterations:
                self.reporter.on_checkpoint(self)  # every running member has saved this iteration
        for m in self.members:
            if m.status != "stopped":
                m.end_loop()

    def _step(self, members: list, iteration: int) -> tuple[list, list, list, list]:
        """One iteration step by step: the shards (here or on Ray workers), then the stacked Adam
        update; the members' (finite, loss, curve, metric) lists, read at once."""
        running = torch.tensor([m.status == "running" for m in members], device=self.device)
        result = self.backend.meta_gradient(self.params, iteration)
        n = result.n_tasks
        finite = self.adam.step(result.grads, result.loss_sum, n, running).tolist()
        curves = [None] * len(members) if result.curve_sum is None else (result.curve_sum / n).tolist()
        return finite, (result.loss_sum / n).tolist(), curves, (result.metric_sum / n).tolist()

    def _window(self, iteration: int) -> int:
        """How many iterations from `iteration` run on the device before the host must look: up to
        and including the next one after which something happens (a log line, checkpoint,
        validation, halving rung, PBT decision, the end)."""
        cfg, train = self.base, self.base.train

        def event(done: int) -> bool:
            return (done % train.log_every == 0 or done % train.checkpoint_every == 0 or done >= cfg.iterations
                    or bool(train.validate_every and done % train.validate_every == 0)
                    or self.scheduler.due(done, cfg.iterations))

        count = 1
        while count < MAX_WINDOW and not event(iteration + count):
            count += 1
        return count

    def _progress(self, done: int, members: list, losses: list[float], t0: float, it0: int) -> None:
        """members: the stacked rows' members (losses' order) this iteration."""
        cfg = self.base
        running = [l for m, l in zip(members, losses) if m.status == "running" and math.isfinite(l)]
        diverged = sum(m.status == "diverged" for m in self.members)
        stopped = sum(m.status == "stopped" for m in self.members)
        dt = time.perf_counter() - t0
        rate = (done - it0) * len(members) / dt if dt > 0 else float("nan")
        spread = (f"meta-loss min {min(running):.4f} median {sorted(running)[len(running) // 2]:.4f} "
                  f"max {max(running):.4f}") if running else "no running member"
        narrowed = self.scheduler.progress(len(self.live), stopped)
        self.log(f"[population of {len(self.members)} {cfg.method}] it {done:>{len(str(cfg.iterations))}}/"
                 f"{cfg.iterations} | {spread} | diverged {diverged}{narrowed} | {rate:,.0f} member-iterations/s")
        self.reporter.on_log(self, {"iteration": done, "meta_loss": sorted(running)[len(running) // 2] if running
                                    else math.nan, "tasks_per_s": rate * cfg.meta_batch_size, "diverged": diverged,
                                    "stopped": stopped, **self.scheduler.progress_entry()})

    @property
    def iteration(self) -> int:
        """Iterations done (running members move in lockstep; a diverged one stays behind)."""
        return max(m.iteration for m in self.members)

    def states(self) -> list[dict]:
        """Every member's checkpoint state (what a Tune checkpoint of the population holds)."""
        return [m.state_dict() for m in self.members]

    @property
    def runs(self) -> list[Trainer]:
        """The members' trainers, in member order (Trainer.runs' counterpart)."""
        return self.members


class PopulationHook:
    """What a population reports beside its members' own hooks (Tune's progress and checkpoints)."""

    def on_log(self, population: Population, entry: dict) -> None: ...
    def on_checkpoint(self, population: Population) -> None: ...
    def on_finish(self, population: Population, results: list[dict]) -> None: ...
