"""Where shards run. Both backends call the same shard source (pipeline/shards/sources.py,
`ShardSource.train_shard` / `eval_shard`); the Ray backend splits the task indices of an iteration
across workers and merges their sums in a fixed order, so results match the in-process backend up
to float summation order.
"""
from __future__ import annotations

import os
import time

import numpy as np

from pipeline.config import Config, ConfigError
from pipeline.core.meta_batch import ShardResult, to_numpy
from pipeline.distributed.ranges import blocks, split, tree_sum
from pipeline.shards.sources import ShardSource, experiment_from_dict
from pipeline.yaml_dataclasses import to_dict


class WorkersLostError(ConfigError):
    """Shard workers that keep dying (more than ray.max_worker_restarts times for one shard): a
    fault, not bad input, but shown the same way, as one line; the checkpoints are untouched."""


RESUME_HINT = "checkpoints are intact: continue with `metatrain resume RUN_DIR` once the cluster is healthy"


def carry_part(carry: dict | None, r: range) -> dict | None:
    """The per-task carry of tasks r (tensors or arrays), or None where nothing carries over."""
    return None if carry is None else {k: v[r.start:r.stop] for k, v in carry.items()}


def merge_blocks(results: list[ShardResult]) -> ShardResult:
    """Block results, in block order, added in the fixed pairwise tree (ranges.tree_sum); a per-task
    carry stays in task order (adjacent blocks are joined in order)."""
    return tree_sum(results, lambda a, b: ShardResult.merge([a, b]))


class LocalBackend:
    name = "local"
    placement = "in process"

    def __init__(self, cfg: Config, experiment: ShardSource, log=print):
        self.cfg, self.experiment = cfg, experiment
        self.workers, self.restarts = 1, 0

    def meta_gradient(self, params: dict, iteration: int, carry: dict | None = None) -> ShardResult:
        if self.cfg.train.block_tasks:  # the blocks one after another, added as every backend adds them
            return merge_blocks([self.experiment.train_shard(params, iteration, r, carry_part(carry, r))
                                 for r in blocks(self.cfg.meta_batch_size, self.cfg.train.block_tasks)])
        return self.experiment.train_shard(params, iteration, range(self.cfg.meta_batch_size), carry)

    def eval_chunks(self, params: dict, chunks: list[range], **kw) -> list[tuple[np.ndarray, np.ndarray]]:
        return [tuple(t.cpu().numpy() for t in self.experiment.eval_shard(params, c, **kw)) for c in chunks]

    def time_chunk_sizes(self, params: dict) -> dict[int, float]:
        return self.experiment.time_chunk_sizes(params, range(self.cfg.meta_batch_size))

    def set_chunk_size(self, tasks_per_vmap: int) -> None:
        self.experiment.set_chunk_size(tasks_per_vmap)

    def select_members(self, rows: list[int]) -> None:
        """A population's source keeps only these members (a halving rung stopped the others)."""
        self.experiment.select(rows)

    def set_member_values(self, configs: list[Config]) -> None:
        """A population's source takes its members' current step sizes and temperatures (PBT)."""
        self.experiment.set_values(configs)

    def close(self) -> None:
        pass


def _local_cpus() -> int:
    """The CPUs Ray gives a local instance (cgroup limits included)."""
    try:
        from ray._private.utils import get_num_cpus  # private, hence the fallback

        return get_num_cpus()
    except Exception:  # noqa: BLE001
        return os.cpu_count() or 1


PROGRESS_S = 10.0  # seconds between "waiting for workers" lines


class RayBackend:
    name = "ray"

    def __init__(self, cfg: Config, experiment: ShardSource | None = None, log=print, *,
                 build=experiment_from_dict, configs: list[Config] | None = None):
        """Each worker builds its shard source as build(payload, device), payload the plain dict of
        `cfg` or the list of dicts of `configs` (a population's members: pipeline/driver/population.py);
        `build` is a module-level function of pipeline/shards, pickled by reference."""
        import ray

        from pipeline.distributed.workers import ShardWorker

        self.ray, self.cfg, self.log, self.build, self.configs = ray, cfg, log, build, configs
        self.started_ray = self.own_cluster = False
        self._cls = ShardWorker
        if not ray.is_initialized():
            # "local" starts a fresh in-process Ray instead of attaching to whatever runs here.
            address = cfg.ray.address or os.environ.get("RAY_ADDRESS") or "local"
            kwargs = {"include_dashboard": False, "logging_level": "WARNING"}
            if address == "local" and cfg.ray.object_store_mb:
                kwargs["object_store_memory"] = cfg.ray.object_store_mb * 2**20
            if address == "local" and cfg.ray.workers:
                # the CPUs a local Ray would have, known before spending seconds starting it
                self._check_fits(cfg.ray.workers, 0.0, {"CPU": float(_local_cpus())}, own_cluster=True)
            ray.init(address=address, **kwargs)
            self.started_ray, self.own_cluster = True, address == "local"
        rc = cfg.ray
        self.gpus = rc.gpus_per_worker
        if self.gpus and not ray.cluster_resources().get("GPU", 0):
            log(f"ray: ray.gpus_per_worker={self.gpus:g} but the cluster has no GPU: workers run on CPU")
            self.gpus = 0.0
        self.workers = rc.workers or self._auto_workers()
        self.actors, self.restarts = [], 0
        try:
            self._start_workers(log)
        except BaseException:
            self.close()  # no actor or in-process Ray outlives a failed start
            raise

    def _start_workers(self, log) -> None:
        ray, rc = self.ray, self.cfg.ray
        # Inside a Tune trial the workers take the bundles Tune reserved for them in the trial's
        # placement group; otherwise they are spread over the cluster's nodes.
        pg = ray.util.get_current_placement_group()
        if pg is not None:
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

            strategy = PlacementGroupSchedulingStrategy(pg, placement_group_capture_child_tasks=True)
        else:
            strategy = "SPREAD"
            self._check_fits(self.workers, self.gpus, self.ray.cluster_resources(), self.own_cluster)
        self.placement = "the trial's placement group" if pg is not None else "spread"
        self._options = {"num_cpus": rc.cpus_per_worker, "num_gpus": self.gpus, "scheduling_strategy": strategy}
        self._cfg_dict = self._worker_config()
        self.actors = [self._spawn() for _ in range(self.workers)]
        where = self._wait_started()
        nodes = len({w["node_id"] for w in where})
        devices = ",".join(sorted({w["device"] for w in where}))
        log(f"ray: {self.workers} shard worker(s) on {nodes} node(s) ({self.placement}), {rc.cpus_per_worker:g} CPU"
            f"{f' + {self.gpus:g} GPU' if self.gpus else ''} each, device {devices}")

    def _check_fits(self, workers: int, gpus: float, total: dict, own_cluster: bool) -> None:
        """Workers that can never be placed fail here, in one line, instead of waiting forever. That
        is certain only for a Ray this process started (no autoscaler can add nodes to it); on a
        cluster we joined (ray.address, RAY_ADDRESS, an initialised Ray) an autoscaler may add nodes,
        so there we wait (`_wait_started`)."""
        rc = self.cfg.ray
        for unit, each, key in (("CPU", rc.cpus_per_worker, "ray.cpus_per_worker"),
                                ("GPU", gpus, "ray.gpus_per_worker")):
            need, have = workers * each, total.get(unit, 0.0)
            if each and need > have + 1e-9:
                fit = int(have // each)
                msg = f"ray.workers: {workers} workers x {each:g} {unit} ({key}) need {need:g} {unit}s, but "
                if own_cluster:
                    raise ConfigError(f"{msg}the local Ray on this machine has {have:g} and no autoscaler to add "
                                      f"nodes; use --workers {fit} or fewer (0 sizes the workers to the cluster)")
                msg += f"the Ray cluster has {have:g}"
                self.log(f"ray: {msg} now; waiting up to ray.start_timeout_s={rc.start_timeout_s:g} s for an "
                         "autoscaler to add nodes")

    def _wait_started(self) -> list[dict]:
        """Each worker's placement once all have started, with a progress line every
        `PROGRESS_S` seconds; a one-line error after ray.start_timeout_s."""
        rc, n = self.cfg.ray, len(self.actors)
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

        pending = {a.where.remote(): i for i, a in enumerate(self.actors)}
        where, t0, lost = [None] * n, time.monotonic(), [0] * n
        while pending:
            left = rc.start_timeout_s - (time.monotonic() - t0)
            done, _ = self.ray.wait(list(pending), num_returns=len(pending), timeout=max(0.0, min(PROGRESS_S, left)))
            for ref in done:
                i = pending.pop(ref)
                try:
                    where[i] = self.ray.get(ref)
                except (RayActorError, ActorDiedError, ActorUnavailableError) as e:
                    # a worker that dies while starting is replaced, like one that dies in a shard call
                    lost[i] += 1
                    if lost[i] > rc.max_worker_restarts:
                        raise WorkersLostError(f"ray.max_worker_restarts: worker {i} died {lost[i]} times while "
                                               f"starting (limit {rc.max_worker_restarts}); last error: "
                                               f"{str(e).splitlines()[0]}; {RESUME_HINT}") from None
                    self.log(f"ray: worker {i} lost while starting ({type(e).__name__}); replacing it")
                    pending[self._replace(i).where.remote()] = i
            if not pending:
                break
            waited, free = time.monotonic() - t0, self.ray.available_resources().get("CPU", 0.0)
            state = (f"{len(pending)} of {n} workers ({rc.cpus_per_worker:g} CPU"
                     f"{f' + {self.gpus:g} GPU' if self.gpus else ''} each) not started after {waited:.0f} s; "
                     f"{free:g} of {self.ray.cluster_resources().get('CPU', 0.0):g} cluster CPUs free")
            if waited >= rc.start_timeout_s:
                raise ConfigError(f"ray.start_timeout_s: {state}; lower ray.workers / ray.cpus_per_worker, add "
                                  f"nodes, or raise ray.start_timeout_s (now {rc.start_timeout_s:g})")
            self.log(f"ray: waiting for {state}")
        return where

    def _worker_config(self) -> dict | list[dict]:
        return [to_dict(c) for c in self.configs] if self.configs else to_dict(self.cfg)

    def _auto_workers(self) -> int:
        cpus = self.ray.available_resources().get("CPU", 1)
        by_cpu = int(cpus // self.cfg.ray.cpus_per_worker)
        if self.gpus:
            by_cpu = min(by_cpu, int(self.ray.available_resources().get("GPU", 0) // self.gpus) or by_cpu)
        return max(1, min(by_cpu, self.cfg.meta_batch_size))

    def _spawn(self):
        return self._cls.options(**self._options).remote(
            self.build, self._cfg_dict, self.cfg.ray.cpus_per_worker, self.gpus > 0)

    def _replace(self, w: int):
        """A fresh actor in place of lost worker w (killed for good first, should it linger)."""
        self.ray.kill(self.actors[w], no_restart=True)
        self.actors[w] = self._spawn()
        self.restarts += 1
        return self.actors[w]

    def _run(self, jobs: list, submit) -> list:
        """Submit job i to worker i % n; gather in job order. A worker that dies is replaced and
        its job re-run (the result is a pure function of the job, so it is the same)."""
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayTaskError

        futures = [submit(self.actors[i % self.workers], job) for i, job in enumerate(jobs)]
        out = []
        for i, (future, job) in enumerate(zip(futures, jobs)):
            for attempt in range(self.cfg.ray.max_worker_restarts + 1):
                try:
                    out.append(self.ray.get(future))
                    break
                except RayTaskError as e:
                    # Bad data found by a worker (an image decoded on first use): the worker's one
                    # line, not Ray's remote traceback.
                    if isinstance(e.cause, ConfigError):
                        raise ConfigError(str(e.cause)) from None
                    raise
                except (RayActorError, ActorDiedError, ActorUnavailableError) as e:
                    if attempt == self.cfg.ray.max_worker_restarts:
                        raise WorkersLostError(f"ray.max_worker_restarts: the worker of shard {job} died "
                                               f"{attempt + 1} times in a row (limit "
                                               f"{self.cfg.ray.max_worker_restarts}); last error: "
                                               f"{str(e).splitlines()[0]}; {RESUME_HINT}") from None
                    w = i % self.workers
                    self.log(f"ray: worker {w} lost ({type(e).__name__}); replacing it and re-running {job}")
                    future = submit(self._replace(w), job)
        return out

    def meta_gradient(self, params: dict, iteration: int, carry: dict | None = None) -> ShardResult:
        ref = self.ray.put(to_numpy(params))  # one broadcast per iteration
        carry_np = None if carry is None else to_numpy(carry)
        if self.cfg.train.block_tasks:
            # each worker a contiguous run of whole blocks, one result per block; any worker count (or
            # reassignment after a failure) gives the same block results, added in the same tree
            every = blocks(self.cfg.meta_batch_size, self.cfg.train.block_tasks)
            jobs = [[(r.start, r.stop) for r in every[g.start:g.stop]] for g in split(len(every), self.workers)]
            parts = (lambda job: None) if carry_np is None else (
                lambda job: [carry_part(carry_np, range(a, b)) for a, b in job])
            results = self._run(jobs, lambda a, job: a.train_blocks.remote(ref, iteration, job, parts(job)))
            return merge_blocks([ShardResult.from_wire(r) for worker in results for r in worker])
        ranges = split(self.cfg.meta_batch_size, self.workers)
        # a per-task carry (learned optimizers' optimizee state) travels with its task range
        results = self._run(ranges, lambda a, r: a.train_shard.remote(ref, iteration, r.start, r.stop,
                                                                     carry_part(carry_np, r)))
        return ShardResult.merge([ShardResult.from_wire(r) for r in results])

    def eval_chunks(self, params: dict, chunks: list[range], **kw) -> list[tuple[np.ndarray, np.ndarray]]:
        ref = self.ray.put(to_numpy(params))
        return self._run(chunks, lambda a, c: a.eval_shard.remote(ref, c.start, c.stop, **kw))

    def time_chunk_sizes(self, params: dict) -> dict[int, float]:
        """Timed where shards run (worker 0, its device), on worker 0's shard: every worker's shard
        is that size or one task smaller."""
        first = split(self.cfg.meta_batch_size, self.workers)[0]
        ref = self.ray.put(to_numpy(params))
        return self._run([first], lambda a, r: a.time_chunk_sizes.remote(ref, r.start, r.stop))[0]

    def set_chunk_size(self, tasks_per_vmap: int) -> None:
        self._cfg_dict = self._worker_config()  # replacement workers start with the resolved value
        self.ray.get([a.set_chunk_size.remote(tasks_per_vmap) for a in self.actors])

    def select_members(self, rows: list[int]) -> None:
        """Every worker's population source keeps only these members; replacement workers start so."""
        self.configs = [self.configs[i] for i in rows]
        self._cfg_dict = self._worker_config()
        self.ray.get([a.select_members.remote(rows) for a in self.actors])

    def set_member_values(self, configs: list[Config]) -> None:
        """Every worker's population source takes these members' step sizes and temperatures (PBT's
        explore); replacement workers start with them."""
        self.configs = list(configs)
        self._cfg_dict = self._worker_config()
        self.ray.get([a.set_member_values.remote(self._cfg_dict) for a in self.actors])

    def worker_info(self) -> list[dict]:
        return self.ray.get([a.where.remote() for a in self.actors])

    def close(self) -> None:
        for a in self.actors:
            self.ray.kill(a, no_restart=True)
        self.actors = []
        if self.started_ray:
            self.ray.shutdown()
            self.started_ray = False


def make_backend(cfg: Config, experiment: ShardSource, log=print):
    return (RayBackend if cfg.backend == "ray" else LocalBackend)(cfg, experiment, log)


