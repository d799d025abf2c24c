"""Ray shard workers: each holds the model structure and the task sampler (an `Experiment`) and
adapts a range of task indices per call. Workers keep no state that the driver's broadcast cannot
rebuild, so a lost worker is replaced and its shard re-run with an identical result."""
from __future__ import annotations

import os
import warnings

import numpy as np
import ray
import torch

from pipeline.config import load_config
from pipeline.experiment import make_experiment
from pipeline.meta_batch import ShardResult, use_cpus


def to_numpy(params: dict) -> dict:
    return {k: v.detach().cpu().numpy() for k, v in params.items()}


@ray.remote(max_restarts=0)  # the driver replaces lost workers itself and re-runs their shard
class ShardWorker:
    def __init__(self, cfg_dict: dict, num_cpus: float, use_gpu: bool):
        use_cpus(num_cpus)
        self.device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        if isinstance(cfg_dict, list):  # a population's members: every member on each task range
            from pipeline.population_shards import PopulationShards

            self.experiment = PopulationShards([load_config(d) for d in cfg_dict], device=self.device)
        else:
            self.experiment = make_experiment(load_config(cfg_dict), device=self.device)

    def _params(self, params_np: dict) -> dict:
        # Arrays come zero-copy from the object store and are read-only; nothing writes to them.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return {k: torch.from_numpy(v).to(self.device) for k, v in params_np.items()}

    def train_shard(self, params_np: dict, iteration: int, start: int, stop: int,
                    carry_np: dict | None = None) -> ShardResult:
        """ShardResult with numpy arrays (the driver turns them back into tensors)."""
        carry = None if carry_np is None else self._params(carry_np)
        r = self.experiment.train_shard(self._params(params_np), iteration, range(start, stop), carry)
        # numpy on the wire: Ray serialises arrays several times faster than torch tensors.
        extra = {"carry": to_numpy(r.extra["carry"])} if "carry" in r.extra else {}
        curve = None if r.curve_sum is None else r.curve_sum.cpu().numpy()
        loss, metric = ((r.loss_sum.cpu().numpy(), r.metric_sum.cpu().numpy()) if torch.is_tensor(r.loss_sum)
                        else (r.loss_sum, r.metric_sum))  # a population's are per member
        return ShardResult(to_numpy(r.grads), loss, r.n_tasks, curve, metric, extra)

    def eval_shard(self, params_np: dict, start: int, stop: int, **kw) -> tuple[np.ndarray, np.ndarray]:
        """The experiment's eval_shard on tasks start..stop-1; kw as the experiment takes them."""
        m, c = self.experiment.eval_shard(self._params(params_np), range(start, stop), **kw)
        return m.cpu().numpy(), c.cpu().numpy()

    def time_chunk_sizes(self, params_np: dict, start: int, stop: int) -> dict[int, float]:
        return self.experiment.time_chunk_sizes(self._params(params_np), range(start, stop))

    def set_chunk_size(self, tasks_per_vmap: int) -> None:
        self.experiment.set_chunk_size(tasks_per_vmap)

    def where(self) -> dict:
        return {"pid": os.getpid(), "node_id": ray.get_runtime_context().get_node_id(), "device": self.device}
