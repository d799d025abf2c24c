"""The seam between what a worker computes and where it runs: `ShardSource`, the interface every
shard source implements (few-shot `Experiment`, `OptimizerExperiment`, `PopulationShards`), and
`make_experiment`, a config's source by its method's family. Backends and workers call only this
interface, and build sources with the picklable builders below, so they never name a family."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from pipeline.config import Config, load_config
from pipeline.core.meta_batch import ShardResult
from pipeline.core.rules import get_rule
from pipeline.shards.experiment import Experiment
from pipeline.shards.optimizer_experiment import OptimizerExperiment


class ShardSource(Protocol):
    """Samples the tasks of a range of indices and computes their sums (training) or per-task
    results (evaluation); holds nothing that the driver's parameters cannot rebuild. A population
    (`PopulationShards`) trains only: its members evaluate through their own `Experiment`s, as
    their solo runs do."""

    def train_shard(self, params: dict, iteration: int, indices: Sequence[int],
                    carry: dict | None = None) -> ShardResult: ...

    def eval_shard(self, params: dict, indices: Sequence[int], **kw) -> tuple[torch.Tensor, ...]:
        """(per-task metric (B,), per-task curve (B, steps + 1)[, per-task loss on unseen data (B,)])."""

    def time_chunk_sizes(self, params: dict, indices: Sequence[int]) -> dict[int, float]: ...

    def set_chunk_size(self, tasks_per_vmap: int) -> None: ...

    def sample(self, *args, **kw) -> dict: ...


# the shard source of each method family (UpdateRule.family)
SOURCES = {"few_shot": Experiment, "optimizer": OptimizerExperiment}


def make_experiment(cfg: Config, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """The shard source of a config's method family: few-shot adaptation, or learned optimizers."""
    return SOURCES[get_rule(cfg.method).family](cfg, dtype, device)


def experiment_from_dict(cfg_dict: dict, device: str = "cpu"):
    """A run's shard source built on a worker from its config (a plain dict on the wire)."""
    return make_experiment(load_config(cfg_dict), device=device)
