"""What a population computes per iteration, on any range of task indices: every member's shard
sums, one vmap over the stacked members (pipeline/driver/population.py trains them). Its own module
because Ray shard workers (pipeline/distributed/workers.py) run it too, without the population's trainers."""
from __future__ import annotations

import functools
from dataclasses import replace

import numpy as np
import torch
from torch.func import vmap

from pipeline.config import ConfigError
from pipeline.core.meta_batch import InnerSettings, ShardResult, map_tree, shard_sums
from pipeline.members import PopulationSpec
from pipeline.shards.chunking import time_chunk_sizes
from pipeline.shards.compiled import (
    CompiledShardFunction,
    curve_at,
    training_shard_functions,
)
from pipeline.shards.experiment import Experiment
from pipeline.shards.memory import USABLE, available_bytes, member_bytes, members_that_fit


def _population_sums(learner, inner, leaves: dict, batch: dict, chunk_size, functional: bool = True):
    """Per-member (summed query loss (P,), loss curve (P, steps + 1), metric (P,)): the shard forward
    of every member, vmapped over the member dimension; batch["alpha"]/["temperature"] are (P,).
    Inner gradients are torch.func's whatever `functional` asks: any per-task loop runs inside the
    vmap over members."""
    def member(member_leaves, member_batch):
        tasks = {k: v for k, v in member_batch.items() if k not in ("alpha", "temperature")}
        own = replace(inner, alpha=member_batch["alpha"], temperature=member_batch["temperature"])
        loss, curve, metric = shard_sums(learner, own, member_leaves, tasks, chunk_size, functional=True)
        return (loss, curve, metric) if inner.curve else (loss, metric)

    if inner.curve:
        return vmap(member)(leaves, batch)
    loss, metric = vmap(member)(leaves, batch)
    return loss, None, metric


def _population_result(grads: dict, loss, curve, metric, batch: dict) -> ShardResult:
    """Members are independent, so the gradient of the summed losses is every member's own
    gradient, stacked. loss_sum/metric_sum are (P,) tensors here, not floats."""
    return ShardResult(grads, loss, batch["x_support"].shape[1], curve, metric)


AHEAD_ITERATIONS, AHEAD_BYTES = 64, 4 << 20  # tasks drawn ahead: at most this many iterations, or bytes


# On a CPU, members go through a compiled shard function in groups of at most this many: a shard
# of 100 MT-nets took 19.6 ms in one call and 13.8 ms in five calls of 20 (MAML 6.7 and 5.9 ms;
# groups of 10: slower again), as larger calls fall out of the core's caches
# (benchmarks/bench_member_groups.py). Eager populations are dispatch-bound (groups of 20: 1.5-1.8x
# slower there) and GPUs want large calls: both take the whole population at once.
CPU_MEMBERS_PER_CALL = 20


@functools.cache
def member_groups(members: int, most: int) -> list[torch.Tensor] | None:
    """Equal groups of at most `most` members, the last padded with member 0 (its results dropped:
    one compiled graph serves every group); None for a single call."""
    if not most or members <= most:
        return None
    count = -(-members // most)
    size = -(-members // count)
    order = torch.arange(count * size)
    return list(torch.where(order < members, order, 0).view(count, size))


def flat_values(tree: dict):
    for v in tree.values():
        yield from flat_values(v) if isinstance(v, dict) else (v,)


class PopulationShards:
    """Every member's shard sums on a range of task indices, each member on its own task stream:
    the population's counterpart of `Experiment.train_shard`, with the same interface, so the
    backends (this process, or Ray shard workers) run it as they run a solo run's."""

    def __init__(self, spec: PopulationSpec, device: str = "cpu", log=print, narrows: bool = False):
        """spec: the members (pipeline/members.py); narrows: members will leave (halving), so compiled
        shard functions keep the member dimension dynamic (one graph whatever the count) instead of
        recompiling at every rung."""
        self.spec, self.device, self.log, self.narrows = spec, torch.device(device), log, narrows
        self.member_bytes = None  # counted at the first shard (check_memory)
        # the shared model and task sampler: tasks are drawn on the population's device where
        # task.sample_on says so (auto: on an accelerator), with numpy otherwise
        self.experiment = Experiment(spec.base, device=self.device)
        self.learner, self.inner = self.experiment.learner, self.experiment.train_inner
        self._shapes = self.experiment.init_params()  # noise shapes only
        self.set_values([spec.values(i) for i in range(len(spec))])
        tpv = spec.base.train.tasks_per_vmap
        self.set_chunk_size(0 if tpv == "auto" else tpv)
        self._block, self._depth = None, None  # tasks drawn ahead (sample)
        self._draw_key = self._draw_tasks = self._draw_tensors = None  # draw_inputs' tensors and what they are for

    def _shard_fn(self, chunk: int | None, compile: bool, curve: bool) -> CompiledShardFunction:
        return CompiledShardFunction(self.learner, replace(self.inner, curve=curve), chunk, log=self.log,
                                     sums=_population_sums, result=_population_result, compile=compile,
                                     dynamic_members=self.narrows)

    def set_chunk_size(self, tasks_per_vmap: int) -> None:
        # with and without the query-loss curve (curve_at), as a solo run's experiment
        self.chunk = tasks_per_vmap or None
        plan = self.experiment.plan  # the shared config's, resolved where the model is built
        self.fns = training_shard_functions(self.learner, self.inner, self.chunk, plan.compile, log=self.log,
                                            graphs=plan.graphs,
                                            sums=_population_sums, result=_population_result,
                                            dynamic_members=self.narrows)

    def sample(self, iteration: int, indices) -> dict:
        """Every member's tasks `indices` of its own stream, (P, len(indices), ...). Tasks are drawn
        for every member's seed (members with the same seed share them) and for several iterations
        ahead in one call: the sampler's per-call cost was a large part of a small population's
        iteration. Each task is still the pure function of (seed, split, iteration, index) that a
        solo run draws."""
        indices = tuple(int(i) for i in indices)
        block = self._block
        if block is None or block["indices"] != indices or not 0 <= iteration - block["start"] < block["depth"]:
            block = self._block = self._draw(iteration, indices, self._depth or 1)
            if self._depth is None:  # as many iterations as fit a few MB (one for image tasks)
                size = sum(x.numel() * x.element_size() for x in flat_values(block["tasks"]))
                self._depth = max(1, min(AHEAD_ITERATIONS, AHEAD_BYTES // max(size, 1)))
        one = map_tree(lambda x: x[iteration - block["start"]], block["tasks"])
        return {**one, "alpha": self.alpha, "temperature": self.temperature}

    def _seeds(self) -> tuple[list[int], list[int]]:
        """The members' distinct seeds, sorted (tasks are drawn once per seed), and each member's
        position among them (the row of its tasks)."""
        column = self.spec.column("seed")
        seeds = sorted(set(column))
        return seeds, [seeds.index(s) for s in column]

    def _draw(self, start: int, indices: tuple, depth: int) -> dict:
        """Tasks of iterations [start, start + depth), every member's: (depth, P, len(indices), ...)."""
        seeds, rows = self._seeds()
        n, s = len(indices), len(seeds)
        flat = self.experiment.sample(self._shapes, split="train", seed=np.tile(np.repeat(seeds, n), depth),
                                      iteration=np.repeat(np.arange(start, start + depth), s * n),
                                      indices=np.tile(indices, s * depth), shots=self.spec.base.task.shots)
        row = torch.tensor(rows)
        tasks = map_tree(lambda x: x.view(depth, s, n, *x.shape[1:])[:, row].to(self.device), flat)
        return {"start": start, "depth": depth, "indices": indices, "tasks": tasks}

    def draw_inputs(self, indices) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """draw's constant inputs for the live members and these task indices: the distinct seeds
        and the indices, one entry per (seed, index) task, and each member's seed (row of the
        tasks drawn), as tensors on the device."""
        (seeds, rows), n = self._seeds(), len(indices)
        key = (tuple(self.spec.column("seed")), tuple(indices))
        if self._draw_key != key:
            as_long = functools.partial(torch.tensor, dtype=torch.long, device=self.device)
            self._draw_key, self._draw_tasks, self._draw_tensors = key, n, (
                as_long(np.repeat(seeds, n).tolist()), as_long(np.tile(indices, len(seeds)).tolist()), as_long(rows))
        return self._draw_tensors

    def draw(self, iteration: torch.Tensor, seeds: torch.Tensor, indices: torch.Tensor, rows: torch.Tensor) -> dict:
        """Every member's tasks of `iteration` (a 0-d int64 tensor), (P, n, ...), drawn on the
        device with torch ops only (draw_inputs gives the rest): sample's tasks, and traceable,
        so that a population's whole iteration compiles into one graph (pipeline/driver/population_step.py).
        It reads no member config: the graph then holds for any live members (halving narrows them)."""
        flat = self.experiment.sample(self._shapes, split="train", seed=seeds, iteration=iteration, indices=indices,
                                      shots=self.experiment.cfg.task.shots)
        return {**map_tree(lambda x: x.view(-1, self._draw_tasks, *x.shape[1:])[rows], flat),
                "alpha": self.alpha, "temperature": self.temperature}

    def summed_loss(self, curve: bool):
        """The shard function's summed loss and its aux outputs, (leaves, batch) -> (loss, aux): what a
        caller differentiates inside a larger compiled function (pipeline/driver/population_step.py)."""
        return self.fns[curve].total

    def train_shard(self, params: dict, iteration: int, indices, carry=None) -> ShardResult:
        params = {k: v.to(self.device) for k, v in params.items()}
        batch, fn = self.sample(iteration, indices), self.fns[curve_at(self.spec.base, iteration)]
        members = len(self.spec)
        grouped = self.device.type == "cpu" and not fn.eager  # an eager call is dispatch-bound: all at once
        groups = member_groups(members, CPU_MEMBERS_PER_CALL if grouped else 0)
        if self.member_bytes is None:
            self.check_memory(params, batch, members if groups is None else len(groups[0]))
        if self.narrows and not fn.eager and members == 1:  # a dynamic dimension needs >= 2 rows
            groups = [torch.zeros(2, dtype=torch.long)]
        if groups is None:
            return fn(params, batch)
        outs = [fn(map_tree(lambda x: x[g], params), map_tree(lambda x: x[g], batch)) for g in groups]
        cat = lambda parts: torch.cat(parts)[:members]  # noqa: E731 - the padding dropped
        return ShardResult({k: cat([o.grads[k] for o in outs]) for k in outs[0].grads},
                           cat([o.loss_sum for o in outs]), outs[0].n_tasks,
                           None if outs[0].curve_sum is None else cat([o.curve_sum for o in outs]),
                           cat([o.metric_sum for o in outs]))

    def check_memory(self, params: dict, batch: dict, per_call: int) -> None:
        """Count one member's memory on this shard (pipeline/shards/memory.py) and refuse, in one
        line, a population whose calls of `per_call` members cannot fit the device: before the
        first full call, so that nothing runs out of memory halfway."""
        one = lambda x: x[:1]  # noqa: E731
        self.member_bytes = member_bytes(self._shard_fn(self.chunk, compile=False, curve=False),
                                         map_tree(one, params), map_tree(one, batch))
        fit = members_that_fit(self.member_bytes, self.device)
        mib = self.member_bytes / 2**20
        self.log(f"population: {len(self.spec)} members on {self.device}, {mib:,.1f} MiB each (counted on one "
                 f"member's shard of {len(batch['y_query'][0])} tasks); {fit:,} fit in one call")
        if per_call > fit:
            raise ConfigError(f"pack.max_members: {per_call} members per call on {self.device} need about "
                              f"{per_call * mib / 1024:,.1f} GiB ({mib:,.1f} MiB each, counted), more than "
                              f"{USABLE:.0%} of the {available_bytes(self.device) / 2**30:,.1f} GiB free: at most "
                              f"{fit} fit; set pack.max_members: {max(fit, 1)}, or give each worker fewer tasks "
                              "(more ray.workers)")

    def set_values(self, values: list[dict]) -> None:
        """The members' step sizes and temperatures (their MUTABLE values, in row order: at start, and
        after a scheduler changed them): values in per-member tensors, so no graph changes."""
        for i, v in enumerate(values):
            self.spec.set_values(i, v)
        dtype = next(iter(self._shapes.values())).dtype
        self.alpha = torch.tensor(self.spec.column("alpha"), dtype=dtype, device=self.device)
        self.temperature = torch.tensor(self.spec.column("gumbel_temperature"), dtype=dtype, device=self.device)

    def select(self, rows: list[int]) -> None:
        """Keep only these members (the others left the stacked computation): their rows, step sizes
        and temperatures; tasks drawn ahead are dropped (they are drawn again as needed)."""
        idx = torch.tensor(rows, dtype=torch.long, device=self.device)
        self.spec = self.spec.select(rows)
        self.alpha, self.temperature, self._block = self.alpha[idx], self.temperature[idx], None

    def validate(self, params: dict, tasks: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Every member's mean post-adaptation query loss and metric (P,) on validation tasks 0..tasks-1:
        the training distribution on a stream of its own (VAL_SEED, VAL_ITERATION; the same tasks
        for every member), each member's own step size and temperature, the evaluation's inner loop
        (eval.inner_steps, eval.mask, eval.query_bn); one call vmapped over the members."""
        cfg = self.spec.base
        params = {k: v.detach().to(self.device) for k, v in params.items()}
        tasks_ = self.experiment.sample(self._shapes, split="train", seed=VAL_SEED, iteration=VAL_ITERATION,
                                        indices=range(tasks), shots=cfg.task.shots)
        members = len(self.spec)
        batch = map_tree(lambda x: x.to(self.device).expand(members, *x.shape), tasks_)
        inner = replace(InnerSettings.for_eval(cfg), curve=False)
        with torch.no_grad():
            loss, _, metric = _population_sums(self.learner, inner, params,
                                               {**batch, "alpha": self.alpha, "temperature": self.temperature},
                                               self.chunk)
        return loss / tasks, metric / tasks

    def time_chunk_sizes(self, params: dict, indices) -> dict[int, float]:
        """Eager shard-call times of the population's first shard at each tasks_per_vmap choice."""
        params = {k: v.to(self.device) for k, v in params.items()}
        batch = self.sample(0, indices)
        return time_chunk_sizes(lambda c: self._shard_fn(c, compile=False, curve=False)(params, batch), len(indices))


VAL_SEED, VAL_ITERATION = 0, 2**63  # the validation tasks' stream: training iterations stay below 2**63


def stacked_from_wire(wire: dict, device: str = "cpu", narrows: bool = False) -> PopulationShards:
    """A population's shard source built on a worker from its spec (PopulationSpec.to_wire: plain data)."""
    return PopulationShards(PopulationSpec.from_wire(wire), device=device, narrows=narrows)
