"""The shard workers of a Ray run, as a pool that grows and shrinks between calls.

`ray.workers` is a number N (min = max = N) or `{min, max}` (elastic). The pool always asks Ray for
`max` workers: those placed and started are *active* and take jobs; the others are *pending*, and
Ray places them when capacity appears (a node joins; on an autoscaling cluster their resource
request is what makes the autoscaler add one). At the start of every call (`run`: an iteration's
shards, an evaluation) pending workers that have started join. A worker lost inside a call leaves
at once, its jobs go to the survivors and a replacement is asked for; only below `min` does the
pool wait, up to ray.replace_timeout_s, and then the run stops in one line with its checkpoints
intact. Jobs are pure functions of their arguments, gathered in job order: who computed which job
never changes a result."""
from __future__ import annotations

import collections
import itertools
import time

from pipeline.config import ConfigError


class WorkersLostError(ConfigError):
    """Shard workers that keep dying, or fewer than ray.workers' min for ray.replace_timeout_s: a
    fault, not bad input, but shown the same way, as one line; the checkpoints are untouched."""


RESUME_HINT = "checkpoints are intact: continue with `metatrain resume RUN_DIR` once the cluster is healthy"
PROGRESS_S = 10.0  # seconds between "waiting for workers" lines
START_GRACE_S = 30.0  # an elastic start waits this long for workers beyond min that should fit now


def one_line(error: BaseException):
    """A worker's bad-data ConfigError as its one line rather than Ray's remote traceback; None for
    any other error (re-raised as it is)."""
    from ray.exceptions import RayTaskError

    if isinstance(error, RayTaskError) and isinstance(error.cause, ConfigError):
        return ConfigError(str(error.cause))
    return None


def describe(job) -> str:
    """A job in words: a range of task indices, or a list of blocks (start, stop)."""
    if isinstance(job, range):
        return f"tasks {job.start}-{job.stop - 1}"
    if isinstance(job, list) and job and all(isinstance(b, tuple) for b in job):
        return f"tasks {job[0][0]}-{job[-1][1] - 1} ({len(job)} block{'s' if len(job) > 1 else ''})"
    return str(job)


class WorkerPool:
    def __init__(self, ray, spawn, low: int, high: int, rc, log, each: str, on_join=lambda actor: None):
        """spawn(): a new worker actor (not yet placed); each: what one worker takes ("1 CPU");
        on_join(actor): brings a worker asked for earlier up to date before it takes jobs."""
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

        self.ray, self._spawn, self.low, self.high, self.rc, self.log = ray, spawn, low, high, rc, log
        self.each, self.on_join = each, on_join
        self.lost_errors = (RayActorError, ActorDiedError, ActorUnavailableError)
        self.active: list = []  # started workers, in the order they joined
        self.info: dict = {}  # actor -> {pid, node_id, device, name}
        self.pending: dict = {}  # the `where` call of a worker asked for -> that worker
        self.restarts = 0  # workers lost (each one asked for again)
        self.changes: list[list] = []  # [workers before, after, why] of each change since the start
        self._names, self._nodes = itertools.count(), set()
        self._failed_starts = 0  # workers that died while starting, since the last that started

    # -- asking for workers and admitting them ------------------------------------------------------------

    def _ask(self) -> None:
        while len(self.active) + len(self.pending) < self.high:
            actor = self._spawn()
            self.pending[actor.where.remote()] = actor

    def start(self, wanted: int) -> None:
        """Ask for `max` workers and wait (progress lines, ray.start_timeout_s) until min have
        started; then up to START_GRACE_S more for the `wanted` the cluster could place when asked
        (capacity that has gone meanwhile does not fail a start that has min)."""
        self._ask()
        self._await(self.low, self.rc.start_timeout_s, "ray.start_timeout_s", starting=True)
        if wanted > len(self.active):
            self._await(wanted, min(START_GRACE_S, self.rc.start_timeout_s), "", starting=True, fail=False)

    def _settle(self, ref, starting: bool) -> None:
        """A pending worker's `where` call has returned: the worker joins, or (it died while
        starting) another is asked for in its place."""
        actor = self.pending.pop(ref)
        try:
            where = self.ray.get(ref)
            self.on_join(actor)
        except self.lost_errors as e:
            self.ray.kill(actor, no_restart=True)
            self._failed_starts += 1
            if self._failed_starts <= self.rc.max_worker_restarts:
                self.log(f"ray: a worker was lost while starting ({type(e).__name__}); asking for another")
                self._ask()
            elif len(self.active) < self.low:
                raise WorkersLostError(f"ray.max_worker_restarts: workers died {self._failed_starts} times in a row "
                                       f"while starting (limit {self.rc.max_worker_restarts}); last error: "
                                       f"{str(e).splitlines()[0]}; {RESUME_HINT}") from None
            else:  # at least min run: go on without this worker rather than stop a healthy run
                self.high = max(self.low, self.high - 1)
                self.log(f"ray: workers died {self._failed_starts} times in a row while starting; going on with at "
                         f"most {self.high} (last error: {str(e).splitlines()[0]})")
            return
        except BaseException as e:
            self.ray.kill(actor, no_restart=True)  # neither pending nor active: nobody else would
            raise one_line(e) or e from None
        self._failed_starts = 0
        where["name"] = next(self._names)
        why = "node joined" if where["node_id"] not in self._nodes and self._nodes else "worker started"
        self._nodes.add(where["node_id"])
        self.info[actor] = where
        self.active.append(actor)
        if not starting:
            self._changed(len(self.active) - 1, why)

    def _changed(self, before: int, why: str) -> None:
        self.changes.append([before, len(self.active), why])
        self.log(f"ray: workers {before} -> {len(self.active)}: {why}")

    def prepare(self) -> None:
        """Before a call's jobs are cut: started workers join; below min, wait for replacements."""
        self.admit()
        if len(self.active) < self.low:
            self._await(self.low, self.rc.replace_timeout_s, "ray.replace_timeout_s", starting=False)

    def tell(self, call) -> None:
        """call(worker) (a Ray call: a setting changed) on every active worker, waited for; a
        worker found dead leaves the pool, as in `run`."""
        refs = {actor: call(actor) for actor in self.active}
        for actor, ref in refs.items():
            try:
                self.ray.get(ref)
            except self.lost_errors as e:
                self._lose(actor, e)
            except Exception as e:  # noqa: BLE001 - a worker's bad-data line, or Ray's error as it is
                raise one_line(e) or e from None

    def admit(self) -> None:
        """Workers asked for earlier that have started join now (the pool grows); no waiting."""
        if self.pending:
            done, _ = self.ray.wait(list(self.pending), num_returns=len(self.pending), timeout=0)
            for ref in done:
                self._settle(ref, starting=False)

    def _await(self, wanted: int, timeout_s: float, key: str, starting: bool, fail: bool = True) -> None:
        """Wait until `wanted` workers are active, with a progress line every PROGRESS_S seconds;
        one line after timeout_s (`key` names the setting), or, with fail=False, just return."""
        t0 = time.monotonic()
        next_line = t0 + PROGRESS_S
        while len(self.active) < wanted:
            self._ask()
            now = time.monotonic()
            if not fail and (now - t0 >= timeout_s or not self.pending):
                return
            if not self.pending:  # fewer allowed than wanted (workers that kept dying while starting)
                timeout_s = 0.0
            if now - t0 >= timeout_s or now >= next_line:
                ray = self.ray
                state = (f"{wanted - len(self.active)} of {wanted} workers ({self.each} each) not started after "
                         f"{now - t0:.0f} s; {ray.available_resources().get('CPU', 0.0):g} of "
                         f"{ray.cluster_resources().get('CPU', 0.0):g} cluster CPUs free")
                if now - t0 >= timeout_s and starting:
                    raise ConfigError(f"{key}: {state}; lower ray.workers / ray.cpus_per_worker, add nodes, or raise "
                                      f"{key} (now {timeout_s:g})")
                if now - t0 >= timeout_s:
                    raise WorkersLostError(f"{key}: {len(self.active)} shard workers running, fewer than the {wanted} "
                                           f"needed (ray.workers min {self.low}), for {timeout_s:g} s ({state}); "
                                           f"{RESUME_HINT}")
                self.log(f"ray: waiting for {state}{_holders(ray)}; meanwhile: fewer workers (--workers "
                         f"{max(len(self.active), 1)}), --local (no Ray: the shard function in this process), or wait "
                         "for them to free")
                next_line += PROGRESS_S
            wait_s = max(0.0, min(next_line, t0 + timeout_s) - time.monotonic())
            done, _ = self.ray.wait(list(self.pending), num_returns=1, timeout=wait_s)
            for ref in done:
                self._settle(ref, starting)

    # -- running jobs -----------------------------------------------------------------------------------

    def run(self, jobs, submit) -> list:
        """submit(worker, job) for every job, spread round-robin over the active workers (after
        admitting those that have started); results in job order. `jobs`: a list, or a function of
        the number of active workers that cuts them, called once those have joined. A worker lost mid-call leaves
        the pool and its jobs are re-run on the least busy survivor (at most ray.max_worker_restarts
        times per job); a replacement is asked for at once."""
        from ray.exceptions import RayTaskError

        self.prepare()
        jobs = jobs(len(self.active)) if callable(jobs) else jobs
        busy, inflight, out = {a: 0 for a in self.active}, {}, [None] * len(jobs)

        def send(i: int, actor, attempt: int) -> None:
            inflight[submit(actor, jobs[i])] = (i, actor, attempt)
            busy[actor] = busy.get(actor, 0) + 1

        for i in range(len(jobs)):
            send(i, self.active[i % len(self.active)], 0)
        while inflight:
            (ref,), _ = self.ray.wait(list(inflight), num_returns=1)
            i, actor, attempt = inflight.pop(ref)
            busy[actor] -= 1
            try:
                out[i] = self.ray.get(ref)
            except RayTaskError as e:
                # bad data found by a worker (an image decoded on first use): its one line
                raise one_line(e) or e from None
            except self.lost_errors as e:
                if attempt == self.rc.max_worker_restarts:
                    raise WorkersLostError(f"ray.max_worker_restarts: the worker of shard {describe(jobs[i])} died "
                                           f"{attempt + 1} times in a row (limit {self.rc.max_worker_restarts}); "
                                           f"last error: {str(e).splitlines()[0]}; {RESUME_HINT}") from None
                self._lose(actor, e)
                if not self.active:
                    self._await(1, self.rc.replace_timeout_s, "ray.replace_timeout_s", starting=False)
                target = min(self.active, key=lambda a: busy.get(a, 0))
                self.log(f"ray: re-running {describe(jobs[i])} of lost worker {self.info[actor]['name']} on "
                         f"worker {self.info[target]['name']}")
                send(i, target, attempt + 1)
        return out

    def _lose(self, actor, error: BaseException) -> None:
        """A worker found dead leaves the pool (once: its other jobs fail too), and another is asked for."""
        if actor not in self.active:
            return
        before = len(self.active)
        self.active.remove(actor)
        self.restarts += 1
        self.ray.kill(actor, no_restart=True)
        node = self.info[actor]["node_id"]
        alive = any(n["NodeID"] == node and n["Alive"] for n in self.ray.nodes())
        why = f"worker {self.info[actor]['name']} lost{'' if alive else ' with its node'} ({type(error).__name__})"
        self._ask()
        self._changed(before, why)

    def close(self) -> None:
        for actor in [*self.active, *self.pending.values()]:
            self.ray.kill(actor, no_restart=True)
        self.active, self.pending = [], {}


def _holders(ray) -> str:
    """What holds the cluster's CPUs, from the actor table of the cluster this driver is connected to
    (the GCS's; Ray's state API would need a dashboard): other jobs' live actors by class (", held by
    other jobs' actors: 2 ShardWorker, 1 ImplicitFunc"), or this run's own workers; "" where the
    table cannot be read."""
    try:
        from ray._private import state  # private, hence the fallback: a hint only

        mine = ray.get_runtime_context().get_job_id()
        others = [a["ActorClassName"] for a in state.actors().values()
                  if a["State"] != "DEAD" and a["JobID"] != mine]
    except Exception:  # noqa: BLE001
        return ""
    if not others:
        return ", held by this run's own workers (no other job's actors on the cluster)"
    counts = sorted(collections.Counter(others).items())
    return f", held by other jobs' actors: {', '.join(f'{n} {c}' for c, n in counts)}"
