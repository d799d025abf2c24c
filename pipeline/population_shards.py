"""What a population computes per iteration, on any range of task indices: every member's shard
sums, one vmap over the stacked members (pipeline/population.py trains them). Its own module
because Ray shard workers (pipeline/workers.py) run it too, without the population's trainers."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from torch.func import vmap

from pipeline.config import Config, compile_shards, curve_at
from pipeline.experiment import make_experiment
from pipeline.meta_batch import CompiledShardFunction, ShardResult, _shard_sums, map_tree, time_chunk_sizes


def _population_sums(learner, inner, leaves: dict, batch: dict, chunk_size, functional: bool = True):
    """Per-member (summed query loss (P,), loss curve (P, steps + 1), metric (P,)): the shard forward
    of every member, vmapped over the member dimension; batch["alpha"]/["temperature"] are (P,).
    Inner gradients are torch.func's whatever `functional` asks: any per-task loop runs inside the
    vmap over members."""
    def member(member_leaves, member_batch):
        tasks = {k: v for k, v in member_batch.items() if k not in ("alpha", "temperature")}
        own = replace(inner, alpha=member_batch["alpha"], temperature=member_batch["temperature"])
        loss, curve, metric = _shard_sums(learner, own, member_leaves, tasks, chunk_size, functional=True)
        return (loss, curve, metric) if inner.curve else (loss, metric)

    if inner.curve:
        return vmap(member)(leaves, batch)
    loss, metric = vmap(member)(leaves, batch)
    return loss, None, metric


def _population_result(grads: dict, loss, curve, metric, batch: dict) -> ShardResult:
    """Members are independent, so the gradient of the summed losses is every member's own
    gradient, stacked. loss_sum/metric_sum are (P,) tensors here, not floats."""
    return ShardResult(grads, loss, batch["x_support"].shape[1], curve, metric)


class PopulationShards:
    """Every member's shard sums on a range of task indices, each member on its own task stream:
    the population's counterpart of `Experiment.train_shard`, with the same interface, so the
    backends (this process, or Ray shard workers) run it as they run a solo run's."""

    def __init__(self, cfgs: list[Config], device: str = "cpu", log=print):
        self.cfgs, self.device, self.log = cfgs, torch.device(device), log
        self.experiment = make_experiment(cfgs[0])  # the shared model and task sampler (samples on the CPU)
        self.learner, self.inner = self.experiment.learner, self.experiment.train_inner
        self._shapes = self.experiment.init_params()  # noise shapes only
        dtype = next(iter(self._shapes.values())).dtype
        self.alpha = torch.tensor([c.alpha for c in cfgs], dtype=dtype, device=self.device)
        self.temperature = torch.tensor([c.gumbel_temperature for c in cfgs], dtype=dtype, device=self.device)
        tpv = cfgs[0].train.tasks_per_vmap
        self.set_chunk_size(0 if tpv == "auto" else tpv)

    def _shard_fn(self, chunk: int | None, compile: bool, curve: bool) -> CompiledShardFunction:
        return CompiledShardFunction(self.learner, replace(self.inner, curve=curve), chunk, log=self.log,
                                     sums=_population_sums, result=_population_result, compile=compile)

    def set_chunk_size(self, tasks_per_vmap: int) -> None:
        # with and without the query-loss curve (config.curve_at), as a solo run's experiment
        self.chunk = tasks_per_vmap or None
        self.fns = {curve: self._shard_fn(self.chunk, compile_shards(self.cfgs[0]), curve) for curve in (True, False)}

    def sample(self, iteration: int, indices) -> dict:
        """Every member's tasks `indices` of its own stream, drawn in one call for all the members'
        seeds (members with the same seed share their tasks): (P, len(indices), ...)."""
        indices = np.asarray(indices)
        seeds = sorted({c.seed for c in self.cfgs})
        flat = self.experiment.sample(self._shapes, split="train", seed=np.repeat(seeds, len(indices)),
                                      iteration=iteration, indices=np.tile(indices, len(seeds)),
                                      shots=self.cfgs[0].task.shots)
        row = torch.tensor([seeds.index(c.seed) for c in self.cfgs])
        batch = map_tree(lambda x: x.view(len(seeds), len(indices), *x.shape[1:])[row].to(self.device), flat)
        batch["alpha"], batch["temperature"] = self.alpha, self.temperature
        return batch

    def train_shard(self, params: dict, iteration: int, indices, carry=None) -> ShardResult:
        params = {k: v.to(self.device) for k, v in params.items()}
        return self.fns[curve_at(self.cfgs[0], iteration)](params, self.sample(iteration, indices))

    def time_chunk_sizes(self, params: dict, indices) -> dict[int, float]:
        """Eager shard-call times of the population's first shard at each tasks_per_vmap choice."""
        params = {k: v.to(self.device) for k, v in params.items()}
        batch = self.sample(0, indices)
        return time_chunk_sizes(lambda c: self._shard_fn(c, compile=False, curve=False)(params, batch), len(indices))
