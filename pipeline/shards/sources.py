"""The seam between what a worker computes and where it runs: `ShardSource`, the interface every
shard source implements (few-shot `Experiment`, `OptimizerExperiment`, and a population's
`PopulationShards`, which is also a `StackedSource`). Backends and workers call only this interface,
and build sources with the picklable builder below from the class a method's family names
(pipeline/driver/families.py: `Family.source`, the one family table), so they never name a family."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from pipeline.config import Config, load_config
from pipeline.core.meta_batch import ShardResult


class ShardSource(Protocol):
    """Samples the tasks of a range of indices and computes their sums (training) or per-task
    results (evaluation); holds nothing that the driver's parameters cannot rebuild. A population
    (`PopulationShards`) trains only: its members evaluate through their own `Experiment`s, as
    their solo runs do.

    Arguments (of every implementation's constructor): cfg (a validated Config), dtype, device.

    Example:
        >>> from pipeline.driver.families import make_source                      # doctest: +SKIP
        >>> source = make_source(load_config("sine_quick"))                       # doctest: +SKIP
        >>> result = source.train_shard(source.init_params(), iteration=0, indices=range(4))  # doctest: +SKIP
        >>> result.loss_sum / result.n_tasks                                      # doctest: +SKIP
    """

    def train_shard(self, params: dict, iteration: int, indices: Sequence[int],
                    carry: dict | None = None) -> ShardResult: ...

    def eval_shard(self, params: dict, indices: Sequence[int], **kw) -> tuple[torch.Tensor, ...]:
        """(per-task metric (B,), per-task curve (B, steps + 1)[, per-task loss on unseen data at a few
        steps, the last column after the last step (B, points)])."""

    def time_chunk_sizes(self, params: dict, indices: Sequence[int]) -> dict[int, float]: ...

    def set_chunk_size(self, tasks_per_vmap: int) -> None: ...

    def sample(self, *args, **kw) -> dict: ...


class StackedSource(ShardSource, Protocol):
    """The members of a population stacked on a leading dimension (pipeline/shards/stacked.py)."""

    def select(self, rows: list[int]) -> None:
        """Only these members (rows, in order) stay in the computation: a scheduler stopped the others."""

    def set_values(self, configs: list[Config]) -> None:
        """The members' current step sizes and temperatures (a scheduler changed them)."""


def source_from_dict(source_class, cfg_dict: dict, device: str = "cpu") -> ShardSource:
    """A run's shard source built on a worker from its config (a plain dict on the wire);
    source_class: its family's (`Family.source`), pickled by reference inside a functools.partial."""
    return source_class(load_config(cfg_dict), device=device)
