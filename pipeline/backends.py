"""Where shards run. Both backends call the same shard function (`Experiment.train_shard` /
`eval_shard`); the Ray backend splits the task indices of an iteration across workers and merges
their sums in a fixed order, so results match the in-process backend up to float summation order.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from pipeline.config import Config, to_dict
from pipeline.evaluation import split
from pipeline.experiment import Experiment  # or an OptimizerExperiment: the same shard interface
from pipeline.meta_batch import ShardResult


class LocalBackend:
    name = "local"
    placement = "in process"

    def __init__(self, cfg: Config, experiment: Experiment, log=print):
        self.cfg, self.experiment = cfg, experiment
        self.workers, self.restarts = 1, 0

    def meta_gradient(self, params: dict, iteration: int, carry: dict | None = None) -> ShardResult:
        return self.experiment.train_shard(params, iteration, range(self.cfg.meta_batch_size), carry)

    def eval_chunks(self, params: dict, chunks: list[range], **kw) -> list[tuple[np.ndarray, np.ndarray]]:
        return [tuple(t.cpu().numpy() for t in self.experiment.eval_shard(params, c, **kw)) for c in chunks]

    def close(self) -> None:
        pass


class RayBackend:
    name = "ray"

    def __init__(self, cfg: Config, experiment: Experiment, log=print):
        import ray

        from pipeline.workers import ShardWorker

        self.ray, self.cfg, self.log = ray, cfg, log
        self.started_ray = False
        if not ray.is_initialized():
            # "local" starts a fresh in-process Ray instead of attaching to whatever runs here.
            address = cfg.ray.address or os.environ.get("RAY_ADDRESS") or "local"
            kwargs = {"include_dashboard": False, "logging_level": "WARNING"}
            if address == "local" and cfg.ray.object_store_mb:
                kwargs["object_store_memory"] = cfg.ray.object_store_mb * 2**20
            ray.init(address=address, **kwargs)
            self.started_ray = True
        rc = cfg.ray
        self.gpus = rc.gpus_per_worker
        if self.gpus and not ray.cluster_resources().get("GPU", 0):
            log(f"ray: ray.gpus_per_worker={self.gpus:g} but the cluster has no GPU: workers run on CPU")
            self.gpus = 0.0
        self.workers = rc.workers or self._auto_workers()
        # Inside a Tune trial the workers take the bundles Tune reserved for them in the trial's
        # placement group; otherwise they are spread over the cluster's nodes.
        pg = ray.util.get_current_placement_group()
        if pg is not None:
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

            strategy = PlacementGroupSchedulingStrategy(pg, placement_group_capture_child_tasks=True)
        else:
            strategy = "SPREAD"
        self.placement = "the trial's placement group" if pg is not None else "spread"
        self._options = {"num_cpus": rc.cpus_per_worker, "num_gpus": self.gpus, "scheduling_strategy": strategy}
        self._cls = ShardWorker
        self._cfg_dict = to_dict(cfg)
        self.actors = [self._spawn() for _ in range(self.workers)]
        self.restarts = 0
        where = self.worker_info()
        nodes = len({w["node_id"] for w in where})
        devices = ",".join(sorted({w["device"] for w in where}))
        log(f"ray: {self.workers} shard worker(s) on {nodes} node(s) ({self.placement}), {rc.cpus_per_worker:g} CPU"
            f"{f' + {self.gpus:g} GPU' if self.gpus else ''} each, device {devices}")

    def _auto_workers(self) -> int:
        cpus = self.ray.available_resources().get("CPU", 1)
        by_cpu = int(cpus // self.cfg.ray.cpus_per_worker)
        if self.gpus:
            by_cpu = min(by_cpu, int(self.ray.available_resources().get("GPU", 0) // self.gpus) or by_cpu)
        return max(1, min(by_cpu, self.cfg.meta_batch_size))

    def _spawn(self):
        return self._cls.options(**self._options).remote(
            self._cfg_dict, self.cfg.ray.cpus_per_worker, self.gpus > 0)

    def _run(self, jobs: list, submit) -> list:
        """Submit job i to worker i % n; gather in job order. A worker that dies is replaced and
        its job re-run (the result is a pure function of the job, so it is the same)."""
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

        futures = [submit(self.actors[i % self.workers], job) for i, job in enumerate(jobs)]
        out = []
        for i, (future, job) in enumerate(zip(futures, jobs)):
            for attempt in range(self.cfg.ray.max_worker_restarts + 1):
                try:
                    out.append(self.ray.get(future))
                    break
                except (RayActorError, ActorDiedError, ActorUnavailableError) as e:
                    if attempt == self.cfg.ray.max_worker_restarts:
                        raise RuntimeError(f"shard {job} failed {attempt + 1} times; last error: {e}") from e
                    w = i % self.workers
                    self.log(f"ray: worker {w} lost ({type(e).__name__}); replacing it and re-running {job}")
                    self.ray.kill(self.actors[w], no_restart=True)
                    self.actors[w] = self._spawn()
                    self.restarts += 1
                    future = submit(self.actors[w], job)
        return out

    def meta_gradient(self, params: dict, iteration: int, carry: dict | None = None) -> ShardResult:
        from pipeline.workers import to_numpy

        ref = self.ray.put(to_numpy(params))  # one broadcast per iteration
        ranges = split(self.cfg.meta_batch_size, self.workers)
        # a per-task carry (learned optimizers' optimizee state) travels with its task range
        part = (lambda r: None) if carry is None else (lambda r: {k: v[r.start:r.stop] for k, v in to_numpy(carry).items()})
        results = self._run(ranges, lambda a, r: a.train_shard.remote(ref, iteration, r.start, r.stop, part(r)))
        for r in results:
            r.grads = {k: torch.tensor(v) for k, v in r.grads.items()}  # copies: object-store arrays are read-only
            r.curve_sum = torch.tensor(r.curve_sum)
            if "carry" in r.extra:
                r.extra["carry"] = {k: torch.tensor(v) for k, v in r.extra["carry"].items()}
        return ShardResult.merge(results)

    def eval_chunks(self, params: dict, chunks: list[range], **kw) -> list[tuple[np.ndarray, np.ndarray]]:
        from pipeline.workers import to_numpy

        ref = self.ray.put(to_numpy(params))
        return self._run(chunks, lambda a, c: a.eval_shard.remote(ref, c.start, c.stop, **kw))

    def worker_info(self) -> list[dict]:
        return self.ray.get([a.where.remote() for a in self.actors])

    def close(self) -> None:
        for a in self.actors:
            self.ray.kill(a, no_restart=True)
        self.actors = []
        if self.started_ray:
            self.ray.shutdown()


def make_backend(cfg: Config, experiment: Experiment, log=print):
    return (RayBackend if cfg.backend == "ray" else LocalBackend)(cfg, experiment, log)


