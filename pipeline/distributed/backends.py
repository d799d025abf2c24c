"""Where shards run. Both backends call the same shard source (pipeline/shards/sources.py,
`ShardSource.train_shard` / `eval_shard`); the Ray backend splits the task indices of an iteration
across workers and merges their sums in a fixed order, so results match the in-process backend up
to float summation order.
"""
from __future__ import annotations

import functools
import os

import numpy as np

from pipeline.config import Config, ConfigError, worker_bounds
from pipeline.core.meta_batch import ShardResult, to_numpy
from pipeline.distributed.head import default_address, running_head
from pipeline.distributed.pool import RESUME_HINT, WorkerPool, WorkersLostError  # noqa: F401 (re-exported)
from pipeline.distributed.ranges import blocks, split, tree_sum
from pipeline.members import PopulationSpec
from pipeline.shards.sources import ShardSource, StackedSource, source_from_dict
from pipeline.yaml_dataclasses import to_dict
from tasks import TASKS


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
    workers = eval_spread = 1
    restarts = 0

    @property
    def changes(self) -> list:
        return []

    def __init__(self, cfg: Config, source: ShardSource | StackedSource, log=print):
        self.cfg, self.source = cfg, source

    def meta_gradient(self, params: dict, iteration: int, carry: dict | None = None) -> ShardResult:
        if self.cfg.train.block_tasks:  # the blocks one after another, added as every backend adds them
            return merge_blocks([self.source.train_shard(params, iteration, r, carry_part(carry, r))
                                 for r in blocks(self.cfg.meta_batch_size, self.cfg.train.block_tasks)])
        return self.source.train_shard(params, iteration, range(self.cfg.meta_batch_size), carry)

    def eval_chunks(self, params: dict, chunks: list[range], **kw) -> list[tuple[np.ndarray, ...]]:
        return [tuple(t.cpu().numpy() for t in self.source.eval_shard(params, c, **kw)) for c in chunks]

    def time_chunk_sizes(self, params: dict) -> dict[int, float]:
        return self.source.time_chunk_sizes(params, range(self.cfg.meta_batch_size))

    def set_chunk_size(self, tasks_per_vmap: int) -> None:
        self.source.set_chunk_size(tasks_per_vmap)

    def select_members(self, rows: list[int]) -> None:
        """A population's source keeps only these members (a halving rung stopped the others)."""
        self.source.select(rows)

    def set_member_values(self, values: list[dict]) -> None:
        """A population's source takes its members' current step sizes and temperatures (PBT)."""
        self.source.set_values(values)

    def close(self) -> None:
        pass


def send_token_to(address: str) -> None:
    """Before `import ray` (Ray reads RAY_AUTH_MODE when imported; a value the user set wins):
    token authentication, stated explicitly, where this project knows the cluster wants it. A
    local Ray started in process listens on every interface (GCS and raylet bind *:port), so its
    token protects it; saying so is what Ray's "Token authentication is enabled" warning asks, and
    it then stays quiet. The head `metatrain cluster start` runs has token auth on: joining it sends
    this machine's token (RAY_AUTH_TOKEN or ~/.ray/auth_token). Other clusters: as their owner set
    RAY_AUTH_MODE (cluster.yaml's nodes have it)."""
    import sys

    if "RAY_AUTH_MODE" in os.environ or "ray" in sys.modules:  # too late: Ray would start what it cannot join
        return
    head = running_head()
    ours = head is not None and address.removeprefix("ray://") in (f"127.0.0.1:{head['port']}",
                                                                   f"localhost:{head['port']}")
    if address == "local" or ours:
        os.environ["RAY_AUTH_MODE"] = "token"


def _local_cpus() -> int:
    """The CPUs Ray gives a local instance (cgroup limits included)."""
    try:
        from ray._private.utils import get_num_cpus  # private, hence the fallback

        return get_num_cpus()
    except Exception:  # noqa: BLE001
        return os.cpu_count() or 1


class RayBackend:
    name = "ray"

    def __init__(self, cfg: Config, source: ShardSource | None = None, log=print, *, build=None,
                 members: PopulationSpec | None = None):
        """Each worker builds its shard source as build(payload, device), payload the plain dict of
        `cfg` or `members.to_wire()` (a population's members: pipeline/driver/population.py);
        `build`: a module-level function of pipeline/shards (or a functools.partial of one), pickled
        by reference; None: `source`'s class, built from the config (`source`: the driver's own, of
        the run's method family; the workers compute)."""
        given = cfg.ray.address or os.environ.get("RAY_ADDRESS")
        address = given or default_address()
        send_token_to(address)
        if not given and address != "local":
            log(f"ray: joining the head that `metatrain cluster start` runs at {address} (no Ray start; "
                "--address local starts one for this run alone)")
        import ray

        from pipeline.distributed.workers import ShardWorker

        build = build or functools.partial(source_from_dict, type(source))
        self.ray, self.cfg, self.log, self.build, self.members = ray, cfg, log, build, members
        self.started_ray = self.own_cluster = False
        self._cls = ShardWorker
        if not ray.is_initialized():
            # "local" starts a fresh in-process Ray instead of attaching to whatever runs here.
            kwargs = {"include_dashboard": False, "logging_level": "WARNING"}
            if address == "local" and cfg.ray.object_store_mb:
                kwargs["object_store_memory"] = cfg.ray.object_store_mb * 2**20
            if address == "local" and cfg.ray.workers:
                # the CPUs a local Ray would have, known before spending seconds starting it
                self._check_fits(worker_bounds(cfg.ray)[0], 0.0, {"CPU": float(_local_cpus())}, own_cluster=True)
            ray.init(address=address, **kwargs)
            self.started_ray, self.own_cluster = True, address == "local"
        rc = cfg.ray
        self.gpus = rc.gpus_per_worker
        if self.gpus and not ray.cluster_resources().get("GPU", 0):
            log(f"ray: ray.gpus_per_worker={self.gpus:g} but the cluster has no GPU: workers run on CPU")
            self.gpus = 0.0
        # a number N is min = max = N; 0 sizes the workers to the cluster's free CPUs now
        self.low, self.high = worker_bounds(rc) if rc.workers else (self._auto_workers(),) * 2
        self.pool, self._changes, self._marks = None, [], {}
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
            wanted = self.low
        else:
            strategy = "SPREAD"
            self._check_fits(self.low, self.gpus, self.ray.cluster_resources(), self.own_cluster)
            wanted = max(self.low, min(self.high, self._fits_now()))  # elastic: what the cluster can place now
        self.placement = "the trial's placement group" if pg is not None else "spread"
        self._options = {"num_cpus": rc.cpus_per_worker, "num_gpus": self.gpus, "scheduling_strategy": strategy}
        self._cfg_dict = self._worker_config()
        each = f"{rc.cpus_per_worker:g} CPU{f' + {self.gpus:g} GPU' if self.gpus else ''}"
        self.pool = WorkerPool(ray, self._spawn, self.low, self.high, rc, log, each, on_join=self._catch_up)
        self.pool.start(wanted)
        where = [self.pool.info[a] for a in self.pool.active]
        nodes = len({w["node_id"] for w in where})
        devices = ",".join(sorted({w["device"] for w in where}))
        span = f" (elastic: {self.low} to {self.high})" if self.low < self.high else ""
        # a regression task's MLP is dispatch-bound: each iteration's round trip to the workers costs
        # more than its arithmetic (benchmarks/RESULTS.md, "Ray shard workers vs in-process")
        small = TASKS[self.cfg.task.name].kind == "regression" and nodes == 1 and not self.gpus
        log(f"ray: {len(where)} shard worker(s){span} on {nodes} node(s) ({self.placement}), {each} each, "
            f"device {devices}" + ("; this MLP trains faster in one process (--local: a sine MLP at meta-batch 25 "
                                   "took 2.95x its in-process time on Ray)" if small else ""))

    # (a backend exists only once its pool has started: __init__ closes and raises otherwise)
    @property
    def workers(self) -> int:
        """Shard workers running now (an elastic run's count changes between iterations)."""
        return len(self.pool.active)

    @property
    def actors(self) -> list:
        return self.pool.active

    @property
    def restarts(self) -> int:
        return self.pool.restarts

    @property
    def changes(self) -> list[list]:
        """[workers before, after, why] of every change since the start (WorkerPool)."""
        return [list(c) for c in self.pool.changes]

    @property
    def eval_spread(self) -> int:
        """The fewest evaluation chunks: one per configured worker (not per worker running now: the
        chunks set each per-task result's bits), and with fixed blocks none per worker at all."""
        return 1 if self.cfg.train.block_tasks else self.high

    def _fits_now(self) -> int:
        free = self.ray.available_resources()
        fit = int(free.get("CPU", 0.0) // self.cfg.ray.cpus_per_worker)
        return min(fit, int(free.get("GPU", 0.0) // self.gpus)) if self.gpus else fit

    def _check_fits(self, workers: int, gpus: float, total: dict, own_cluster: bool) -> None:
        """Workers that can never be placed fail here, in one line, instead of waiting forever. That
        is certain only for a Ray this process started (no autoscaler can add nodes to it); on a
        cluster we joined (ray.address, RAY_ADDRESS, an initialised Ray) an autoscaler may add nodes,
        so there we wait (WorkerPool.start)."""
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

    def _worker_config(self) -> dict | list[dict]:
        return self.members.to_wire() if self.members else to_dict(self.cfg)

    def _auto_workers(self) -> int:
        cpus = self.ray.available_resources().get("CPU", 1)
        by_cpu = int(cpus // self.cfg.ray.cpus_per_worker)
        if self.gpus:
            by_cpu = min(by_cpu, int(self.ray.available_resources().get("GPU", 0) // self.gpus) or by_cpu)
        return max(1, min(by_cpu, self.cfg.meta_batch_size))

    def _spawn(self):
        actor = self._cls.options(**self._options).remote(
            self.build, self._cfg_dict, self.cfg.ray.cpus_per_worker, self.gpus > 0)
        self._marks[actor] = len(self._changes)
        return actor

    def _tell_all(self, method: str, *args) -> None:
        """Every started worker calls method(*args) (a setting resolved or changed after the start);
        workers asked for before it and not started yet call it when they join (_catch_up)."""
        self._cfg_dict = self._worker_config()  # workers asked for from now on start with it
        # keep only the changes that a pending worker has yet to catch up on
        marks = {a: self._marks[a] for a in self.pool.pending.values() if a in self._marks}
        first = min(marks.values(), default=len(self._changes))
        self._changes, self._marks = self._changes[first:], {a: m - first for a, m in marks.items()}
        self._changes.append((method, args))
        self.pool.tell(lambda actor: getattr(actor, method).remote(*args))

    def _catch_up(self, actor) -> None:
        todo = self._changes[self._marks.pop(actor, len(self._changes)):]
        self.ray.get([getattr(actor, method).remote(*args) for method, args in todo])

    def meta_gradient(self, params: dict, iteration: int, carry: dict | None = None) -> ShardResult:
        ref = self.ray.put(to_numpy(params))  # one broadcast per iteration
        carry_np = None if carry is None else to_numpy(carry)
        if self.cfg.train.block_tasks:
            # each worker a contiguous run of whole blocks, one result per block; any worker count (or
            # reassignment after a failure) gives the same block results, added in the same tree
            every = blocks(self.cfg.meta_batch_size, self.cfg.train.block_tasks)
            def groups(n: int) -> list:  # cut for the n workers running once started ones have joined
                return [[(r.start, r.stop) for r in every[g.start:g.stop]] for g in split(len(every), n)]

            parts = (lambda job: None) if carry_np is None else (
                lambda job: [carry_part(carry_np, range(a, b)) for a, b in job])
            results = self.pool.run(groups, lambda a, job: a.train_blocks.remote(ref, iteration, job, parts(job)))
            return merge_blocks([ShardResult.from_wire(r) for worker in results for r in worker])
        # ranges for a fixed number of workers (not those running now: the sums depend on the ranges)
        ranges = split(self.cfg.meta_batch_size, self.high)
        # a per-task carry (learned optimizers' optimizee state) travels with its task range
        results = self.pool.run(ranges, lambda a, r: a.train_shard.remote(ref, iteration, r.start, r.stop,
                                                                     carry_part(carry_np, r)))
        return ShardResult.merge([ShardResult.from_wire(r) for r in results])

    def eval_chunks(self, params: dict, chunks: list[range], **kw) -> list[tuple[np.ndarray, ...]]:
        ref = self.ray.put(to_numpy(params))
        return self.pool.run(chunks, lambda a, c: a.eval_shard.remote(ref, c.start, c.stop, **kw))

    def time_chunk_sizes(self, params: dict) -> dict[int, float]:
        """Timed where shards run (worker 0, its device), on worker 0's shard: every worker's shard
        is that size or one task smaller."""
        first = split(self.cfg.meta_batch_size, self.high)[0]
        ref = self.ray.put(to_numpy(params))
        return self.pool.run([first], lambda a, r: a.time_chunk_sizes.remote(ref, r.start, r.stop))[0]

    def set_chunk_size(self, tasks_per_vmap: int) -> None:
        self._tell_all("set_chunk_size", tasks_per_vmap)

    def select_members(self, rows: list[int]) -> None:
        """Every worker's population source keeps only these members (a halving rung)."""
        self.members = self.members.select(rows)
        self._tell_all("select_members", rows)

    def set_member_values(self, values: list[dict]) -> None:
        """Every worker's population source takes these members' step sizes and temperatures (PBT's
        explore): the table's rows of values, not configs."""
        for i, v in enumerate(values):
            self.members.set_values(i, v)
        self._tell_all("set_member_values", values)

    def worker_info(self) -> list[dict]:
        return self.ray.get([a.where.remote() for a in self.actors])

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
        if self.started_ray:
            self.ray.shutdown()
            self.started_ray = False


def make_backend(cfg: Config, source: ShardSource, log=print):
    """The run's backend: this process over `source`, or Ray workers that each build a source of its class."""
    return (RayBackend if cfg.backend == "ray" else LocalBackend)(cfg, source, log)


