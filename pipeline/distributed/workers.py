"""Ray shard workers: each builds one shard source (pipeline/shards/sources.py, `ShardSource`) from
the builder and plain-dict configs the backend sends, and adapts a range of task indices per call.
Workers keep no state that the driver's broadcast cannot rebuild, so a lost worker is replaced and
its shard re-run with an identical result."""
from __future__ import annotations

import os
import warnings

import numpy as np
import ray
import torch

from pipeline.core.meta_batch import ShardResult
from pipeline.shards.compiled import use_cpus


@ray.remote(max_restarts=0)  # the driver replaces lost workers itself and re-runs their shard
class ShardWorker:
    def __init__(self, build, payload, num_cpus: float, use_gpu: bool):
        """build(payload, device): the shard source (a module-level function, pickled by reference)."""
        use_cpus(num_cpus)
        self.device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        self.source = build(payload, device=self.device)

    def _params(self, params_np: dict) -> dict:
        # Arrays come zero-copy from the object store and are read-only; nothing writes to them.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return {k: torch.from_numpy(v).to(self.device) for k, v in params_np.items()}

    def train_shard(self, params_np: dict, iteration: int, start: int, stop: int,
                    carry_np: dict | None = None) -> ShardResult:
        """The source's ShardResult in its wire form (ShardResult.from_wire restores it)."""
        carry = None if carry_np is None else self._params(carry_np)
        return self.source.train_shard(self._params(params_np), iteration, range(start, stop), carry).to_wire()

    def train_blocks(self, params_np: dict, iteration: int, blocks: list[tuple[int, int]],
                     carries: list[dict] | None = None) -> list[ShardResult]:
        """One ShardResult (wire form) per block of task indices, each one shard-function call:
        what a block computes does not depend on the worker (train.block_tasks)."""
        params = self._params(params_np)
        return [self.source.train_shard(params, iteration, range(a, b),
                                        None if carries is None else self._params(carries[i])).to_wire()
                for i, (a, b) in enumerate(blocks)]

    def eval_shard(self, params_np: dict, start: int, stop: int, **kw) -> tuple[np.ndarray, ...]:
        """The source's eval_shard on tasks start..stop-1; kw as the source takes them."""
        return tuple(t.cpu().numpy() for t in self.source.eval_shard(self._params(params_np), range(start, stop), **kw))

    def time_chunk_sizes(self, params_np: dict, start: int, stop: int) -> dict[int, float]:
        return self.source.time_chunk_sizes(self._params(params_np), range(start, stop))

    def set_chunk_size(self, tasks_per_vmap: int) -> None:
        self.source.set_chunk_size(tasks_per_vmap)

    def select_members(self, rows: list[int]) -> None:
        self.source.select(rows)

    def set_member_values(self, values: list[dict]) -> None:
        self.source.set_values(values)

    def where(self) -> dict:
        return {"pid": os.getpid(), "node_id": ray.get_runtime_context().get_node_id(), "device": self.device}
