"""The rows of a population that train together: the members' parameters and Adam moments in one
StackedAdam, which members are live (in the stacked computation, in row order), and the member
table's values wherever the shards run. A scheduler's `Decision` is applied here: rows copied,
values set, stopped and diverged members' rows released (each keeps its own state)."""
from __future__ import annotations

import math
import time

import torch

from pipeline.config import Config, ConfigError
from pipeline.distributed.backends import RayBackend
from pipeline.driver.families import family_of
from pipeline.driver.meta_step import StackedAdam
from pipeline.driver.record import RunRecord
from pipeline.driver.schedulers import Decision
from pipeline.members import PopulationSpec
from pipeline.storage import StorageError


def check_packable(cfgs: list[Config]) -> PopulationSpec:
    """The members as one spec; one line naming the first non-PACKABLE key in which they differ, or
    a method that does not pack."""
    spec = PopulationSpec.from_configs(cfgs)
    if not family_of(spec.base.method).packs:
        raise ConfigError(f"population: method {spec.base.method}: learned optimizers train one run at a time")
    return spec


class StackedRuns:
    """Arguments:
        spec: the population's member table (shared with the Population: its values are the table's).
        records: every member's RunRecord, in member order.
        shards: the in-process PopulationShards (it also validates the members at a decision).
        backend: where the shards run (LocalBackend over `shards`, or Ray workers).
        device: where the stacked state lives.

    Example:
        >>> stacked = StackedRuns(spec, records, shards, backend, "cpu")   # doctest: +SKIP
        >>> stacked.start(compile=False, dynamic_members=True)   # the records' rows, stacked
        >>> stacked.apply(Decision(stop=(1,)), history_key="rungs", releases=True)   # member 1 leaves with its state
    """

    def __init__(self, spec: PopulationSpec, records: list[RunRecord], shards, backend, device):
        self.spec, self.records, self.shards, self.backend = spec, records, shards, backend
        self.device = torch.device(device)
        self.live = list(range(len(records)))
        self.adam = None  # the stacked state, once started
        grad_clip = spec.base.train.grad_clip
        for r in records:  # each on a row of its own until the rows are stacked (start)
            r.bind(StackedAdam.of_run(shards.learner.init_params(r.cfg.seed), r.cfg.beta, grad_clip, r.log), 0)

    @property
    def params(self) -> dict:
        return self.adam.params

    def live_records(self) -> list[RunRecord]:
        return [self.records[i] for i in self.live]

    def stacked_params(self) -> dict:
        live = self.live_records()
        return {k: torch.stack([r.params[k].detach() for r in live]).to(self.device) for k in live[0].params}

    def resolve_chunk_size(self, resumed: bool, log) -> None:
        """train.tasks_per_vmap: auto, timed once on the population's own first shard (every member's
        tasks; Ray: worker 0's) and recorded in every member's config as a solo run records it; a
        resumed population keeps the choice its members' config.yaml recorded."""
        chosen = self.records[0].choose_chunk_size(
            resumed, lambda: self.backend.time_chunk_sizes(self.stacked_params()), self.shards.learner.net, log=log)
        for cfg in (self.spec.base, *(r.cfg for r in self.records)):
            cfg.train.tasks_per_vmap = chosen  # workers that start later build with it
        self.backend.set_chunk_size(chosen)

    def start(self, compile: bool, dynamic_members: bool, log=print) -> None:
        """One stacked state from the records' own (fresh or loaded) rows, members stopped by an
        earlier rung left out; from then on each live record's row is one of it."""
        stopped = [i for i, r in enumerate(self.records) if r.status == "stopped"]
        if stopped:
            self.narrow([i for i in self.live if i not in stopped])
        for i, r in enumerate(self.records):  # a resumed PBT member's checkpoint carries its current values
            self.spec.set_values(i, r.hyperparams())
        self.set_values()
        live = self.live_records()
        self.adam = StackedAdam(self.stacked_params(), self.beta[self.live], self.spec.base.train.grad_clip,
                                compile=compile, log=log, dynamic_members=dynamic_members)
        for row, r in enumerate(live):
            self.adam.load_row_state(row, r.adam.row_state(r.row, r.cfg.beta))
            r.bind(self.adam, row)

    def step(self, members: list[RunRecord], iteration: int) -> tuple[list, list, list, list]:
        """One iteration step by step: the shards (here or on Ray workers), then the stacked Adam
        update; the members' (finite, loss, curve, metric) lists, read at once."""
        running = torch.tensor([m.status == "running" for m in members], device=self.device)
        result = self.backend.meta_gradient(self.params, iteration)
        n = result.n_tasks
        finite = self.adam.step(result.grads, result.loss_sum, n, running).tolist()
        curves = [None] * len(members) if result.curve_sum is None else (result.curve_sum / n).tolist()
        return finite, (result.loss_sum / n).tolist(), curves, (result.metric_sum / n).tolist()

    def set_values(self) -> None:
        """Per-member step sizes and temperatures from the member table, wherever shards run (the
        table's rows travel, not configs)."""
        self.beta = torch.tensor(self.spec.column("beta"), dtype=torch.float64, device=self.device)
        values = [self.spec.values(i) for i in self.live]
        self.backend.set_member_values(values)
        if isinstance(self.backend, RayBackend):  # else the backend's source is self.shards
            self.shards.set_values(values)

    def narrow(self, keep: list[int]) -> None:
        """Only members `keep` (indices, in row order) stay in the stacked computation: the shard
        sources drop the others' rows, so the population gets cheaper as it narrows."""
        rows = [self.live.index(i) for i in keep]
        self.backend.select_members(rows)
        if isinstance(self.backend, RayBackend):  # else the backend's source is self.shards
            self.shards.select(rows)
        self.live = list(keep)

    def apply(self, decision: Decision, history_key: str, releases: bool) -> None:
        """A scheduler's decision: copies of rows (parameters, Adam moments, step count: bitwise, in
        memory), new values in the table and each member's record, history and entries; with
        `releases`, the stopped members' rows (and those of members that diverged) leave."""
        live = self.live_records()
        row = {i: r for r, i in enumerate(self.live)}
        for recipient, donor in decision.copies.items():
            self.adam.copy_row(row[donor], row[recipient])
        for i, new in decision.values.items():
            self.spec.set_values(i, new)
            self.records[i].set_values(self.spec.values(i))  # its checkpoint's and evaluation's values
            self.adam.set_beta(row[i], new["beta"])
        if decision.values:
            self.set_values()
        for i, entry in decision.history.items():
            getattr(self.records[i], history_key).append(entry)
        for i, entry in decision.entries.items():
            self.records[i].record(entry)
        if releases:
            self.release([r for r, m in enumerate(live) if m.status != "running" or self.live[r] in decision.stop])

    def release(self, leaving: list[int]) -> None:
        """Rows `leaving` leave the stacked computation: each record takes its own state (a running
        one stops and saves), the others' rows are gathered anew."""
        live = self.live_records()
        for r in leaving:
            live[r].bind(self.adam.select([r]), 0)  # its own state from now on
            if live[r].status == "running":
                live[r].stop()
        if leaving:
            stayed = [r for r in range(len(live)) if r not in leaving]
            self.adam = self.adam.select(stayed)
            for row, r in enumerate(stayed):
                live[r].bind(self.adam, row)
            self.narrow([self.live[r] for r in stayed])

    def decide(self, scheduler, done: int, val_tasks: int) -> str | None:
        """The scheduler's decision after iteration `done`, from every running member's validation
        (PopulationShards.validate), applied; its progress line (None: no member runs, no decision)."""
        live = self.live
        running = [r for r, i in enumerate(live) if self.records[i].status == "running"]
        if not running:
            return None
        val_loss, val_metric = (v.tolist() for v in self.shards.validate(self.params, val_tasks))
        decision = scheduler.decide(done, {live[r]: val_loss[r] for r in running},
                                    {live[r]: val_metric[r] for r in running},
                                    {live[r]: self.spec.values(live[r]) for r in running},
                                    {i: m.run_dir.name for i, m in enumerate(self.records)}, val_tasks)
        self.apply(decision, scheduler.history_key, scheduler.stops_members)
        return decision.line

    def progress(self, done: int, members: list[RunRecord], losses: list[float], member_its: int, t0: float,
                 scheduler) -> tuple[str, dict]:
        """The population's progress line and entry (Tune's series) after iteration `done`; members:
        the stacked rows' records (losses' order) this iteration; member_its: member-iterations
        since the clock `t0` (perf_counter) started."""
        cfg, dt = self.spec.base, time.perf_counter() - t0
        rate = member_its / dt if dt > 0 else float("nan")
        running = sorted(l for m, l in zip(members, losses) if m.status == "running" and math.isfinite(l))
        diverged, stopped = (sum(m.status == s for m in self.records) for s in ("diverged", "stopped"))
        spread = (f"meta-loss min {running[0]:.4f} median {running[len(running) // 2]:.4f} max {running[-1]:.4f}"
                  if running else "no running member")
        line = (f"[population of {len(self.records)} {cfg.method}] it {done:>{len(str(cfg.iterations))}}/"
                f"{cfg.iterations} | {spread} | diverged {diverged}{scheduler.progress(len(self.live), stopped)}"
                f" | {rate:,.0f} member-iterations/s")
        return line, {"iteration": done, "meta_loss": running[len(running) // 2] if running else math.nan,
                      "tasks_per_s": rate * cfg.meta_batch_size, "diverged": diverged, "stopped": stopped,
                      **scheduler.progress_entry()}

    def storage_fault(self, e: StorageError) -> StorageError:
        """A full or failing disk, in one line: what every member kept and how to finish."""
        saved, root = {m.saved_at for m in self.records if m.status != "stopped"}, self.records[0].run_dir.parent
        kept = (f"every member's checkpoint of iteration {min(saved)} in {root} is intact" if None not in saved
                else f"the members in {root} were not all saved yet")
        return e.finished_by(kept, "resume the population (`metatrain sweep FILE --resume` for a sweep's)")
