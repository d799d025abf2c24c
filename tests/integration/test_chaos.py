"""Chaos, elastic: a 180-iteration run with elastic shard workers (ray.workers: {min: 1, max: 4})
on a real multi-node Ray (ray.cluster_utils.Cluster) during which, at random moments, shard
workers are SIGKILLed (inside shard calls, between them, while a replacement starts), a second node
joins and is removed again, and the driver itself is SIGKILLed twice and resumed with `metatrain
resume`. Its final parameters equal those of an undisturbed one-worker run of the same config bit
for bit (`torch.equal`): every block is a pure function of the parameters, the iteration and its
task indices, and the blocks are added in a fixed tree (train.block_tasks), whoever computed them.

Everything is real: each driver is a `metatrain` process (in a session of its own, so that a killed
driver can be cleaned up after), nodes are real raylets, kills are SIGKILL. About 2-4 minutes on 2 cores."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import torch

from pipeline.driver import checkpoint
from pipeline.driver.run_dir import METRICS, RESULTS

ITERATIONS = 180
SETTINGS = {"method": "maml", "iterations": ITERATIONS, "meta_batch_size": 24, "inner_steps": 3,
            "model.hidden": "[64,64]", "task.shots": 10, "eval.tasks": 24, "eval.shots": "[5]",
            "train.checkpoint_every": 10, "train.log_every": 5, "ray.workers": 3, "train.block_tasks": 4,
            "ray.cpus_per_worker": 0.5,  # several workers on a 2-core machine
            "ray.max_worker_restarts": 30, "tracking.enabled": "false", "run_name": "run", "train.plots": "false",
            "train.compile": "never", "train.tasks_per_vmap": 0}  # no compile or chunk timing: not what is tested


def metatrain(args: list[str], log: Path) -> subprocess.Popen:
    """A driver process in a session of its own (its Ray processes share that session id)."""
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], stdout=log.open("a"),
                            stderr=subprocess.STDOUT, start_new_session=True, cwd=Path(__file__).parents[2])


def session_processes(sid: int) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getsid(p.pid) == sid:
                out.append(p)
        except (ProcessLookupError, PermissionError):
            pass
    return out


def shard_workers(sid: int) -> list[psutil.Process]:
    found = []
    for p in session_processes(sid):
        try:
            if " ".join(p.cmdline()).startswith("ray::ShardWorker"):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


def kill_session(sid: int) -> None:
    """A killed driver leaves its local Ray behind: end every process of its session."""
    for p in session_processes(sid):
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(session_processes(sid), timeout=30)


def last_iteration(run: Path) -> int:
    try:
        lines = (run / METRICS).read_text().splitlines()
        return max((json.loads(l).get("iteration", 0) for l in lines if l.strip()), default=0)
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


class Chaos:
    """After every 3-8 iterations of progress, 0-0.3 s later, SIGKILL a shard worker at random (the
    moment falls inside a shard call, most of a worker's time, or between calls); with a cluster,
    every other time instead add a second node when there is none, or remove it. (Paced by
    progress, not by the clock: a replacement takes seconds to start, and faster chaos would stall
    the run rather than test it.) `tick()` is called from the test's main thread: Ray starts a
    node's processes only there."""

    def __init__(self, workers, run: Path, rng: random.Random, cluster=None):
        self.workers, self.run_dir, self.rng, self.cluster = workers, run, rng, cluster
        self.kills = self.added = self.removed = self.events = 0
        self.target, self.at = last_iteration(run) + rng.randint(3, 8), None

    def tick(self) -> None:
        if self.at is None:
            if last_iteration(self.run_dir) >= self.target:
                self.at = time.monotonic() + self.rng.uniform(0.0, 0.3)
            return
        if time.monotonic() < self.at:
            return
        self.events += 1
        if self.cluster is not None and self.events % 2 == 0:  # every other event a node joins or leaves
            if self.cluster.worker_nodes:
                self.cluster.remove_node(next(iter(self.cluster.worker_nodes)))
                self.removed += 1
            else:
                self.cluster.add_node(num_cpus=1, object_store_memory=80 * 2**20)
                self.added += 1
        else:
            found = self.workers()
            if found:
                try:
                    self.rng.choice(found).send_signal(signal.SIGKILL)
                    self.kills += 1
                except psutil.NoSuchProcess:
                    pass
        self.target, self.at = last_iteration(self.run_dir) + self.rng.randint(3, 8), None


def cluster_workers(cluster) -> list[psutil.Process]:
    """The shard workers on the cluster's nodes (children of its raylets)."""
    found = []
    for node in [cluster.head_node, *cluster.worker_nodes]:
        for info in node.all_processes.get("raylet", []):
            try:
                found += [p for p in psutil.Process(info.process.pid).children(recursive=True)
                          if " ".join(p.cmdline()).startswith("ray::ShardWorker")]
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
    return found


def drive(args, log, run, chaos: Chaos, kill_driver_at: int | None, timeout=420) -> int:
    """One driver under fire; returns its exit code. kill_driver_at: SIGKILL the driver once the run
    has logged that iteration (None: let it finish)."""
    proc = metatrain(args, log)
    t0 = time.monotonic()
    try:
        while proc.poll() is None:
            assert time.monotonic() - t0 < timeout, (
                f"driver still running after {timeout} s:\n{log.read_text()[-3000:]}")
            if kill_driver_at is not None and last_iteration(run) >= kill_driver_at:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                break
            chaos.tick()
            time.sleep(0.05)
    finally:
        kill_session(proc.pid)
    return proc.returncode


def final_params(run: Path) -> dict:
    return checkpoint.load(run, log=lambda m: None, keys=checkpoint.PARAMS_KEYS)["params"]


def test_random_worker_node_and_driver_kills_leave_an_elastic_run_bitwise_unchanged(tmp_path):
    from ray.cluster_utils import Cluster

    sets = [a for k, v in SETTINGS.items() for a in ("--set", f"{k}={v}")]
    calm, chaotic = tmp_path / "calm", tmp_path / "chaos"
    log = tmp_path / "driver.log"

    # the undisturbed run: one worker, a local Ray of its own
    ref = metatrain(["train", "sine_quick", *sets, "--set", "ray.workers=1", "--set", f"output_dir={calm}"],
                    tmp_path / "calm.log")
    assert ref.wait(timeout=420) == 0, (tmp_path / "calm.log").read_text()[-3000:]
    kill_session(ref.pid)
    reference = final_params(calm / "run")
    assert json.loads((calm / "run" / RESULTS).read_text())["iterations"] == ITERATIONS

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 80 * 2**20,
                                                            "include_dashboard": False})
    try:
        elastic = ["--set", "ray.workers={min: 1, max: 4}", "--set", f"ray.address={cluster.address}"]
        rng, run = random.Random(1234), chaotic / "run"
        drivers = []
        for args, kill_at in ((["train", "sine_quick", *sets, *elastic, "--set", f"output_dir={chaotic}"],
                               rng.randint(45, 75)),
                              (["resume", str(run)], rng.randint(105, 135)),
                              (["resume", str(run)], None)):
            before = last_iteration(run)
            chaos = Chaos(lambda: cluster_workers(cluster), run, rng, cluster)
            code = drive(args, log, run, chaos, kill_driver_at=kill_at)
            drivers.append((chaos.kills, chaos.added, chaos.removed))
            assert code == (-signal.SIGKILL if kill_at else 0), log.read_text()[-3000:]
            assert last_iteration(run) > before, "a driver made no progress"
    finally:
        cluster.shutdown()
    text = log.read_text()

    results = json.loads((run / RESULTS).read_text())
    assert results["status"] == "completed" and results["iterations"] == ITERATIONS
    kills, added, removed = (sum(d[i] for d in drivers) for i in range(3))
    assert min(sum(d) for d in drivers) >= 1 and kills >= 3 and added >= 1 and removed >= 1, drivers
    # kills landed inside shard calls: the driver re-ran the lost blocks on the others at once
    assert text.count("re-running") >= 3, text[-3000:]
    assert "Traceback" not in text, text[-5000:]
    changes = [tuple(int(n) for n in line.split(":")[1].split()[-3::2]) for line in text.splitlines()
               if line.startswith("ray: workers ")]
    assert any(b > a for a, b in changes) and any(b < a for a, b in changes), changes  # grown and shrunk
    disturbed = final_params(run)
    assert set(disturbed) == set(reference)
    for key, value in reference.items():
        assert torch.equal(disturbed[key], value), f"{key}: max diff {(disturbed[key] - value).abs().max():.3g}"
    print(f"per driver (worker kills, nodes added, nodes removed): {drivers}; shard re-runs: "
          f"{text.count('re-running')}; worker count changes: {text.count('ray: workers ')}")


def test_a_worker_that_keeps_dying_is_one_line_and_keeps_the_checkpoint(tmp_path):
    """ray.max_worker_restarts=0: the first lost worker ends the run in one line, no traceback,
    and the run resumes from its checkpoint."""
    sets = [a for k, v in {**SETTINGS, "ray.max_worker_restarts": 0, "iterations": 100000,
                           "output_dir": tmp_path}.items() for a in ("--set", f"{k}={v}")]
    log, run = tmp_path / "driver.log", tmp_path / "run"
    proc = metatrain(["train", "sine_quick", *sets], log)
    try:
        t0 = time.monotonic()
        while last_iteration(run) < 20:
            assert proc.poll() is None and time.monotonic() - t0 < 300, log.read_text()[-3000:]
            time.sleep(0.2)
        shard_workers(proc.pid)[0].kill()
        assert proc.wait(timeout=120) == 2
    finally:
        kill_session(proc.pid)
    text = log.read_text()
    errors = [l for l in text.splitlines() if l.startswith("metatrain: error:")]
    assert len(errors) == 1 and "Traceback" not in text, text[-3000:]
    assert "ray.max_worker_restarts: the worker of shard tasks " in errors[0]
    assert "metatrain resume RUN_DIR" in errors[0]
    assert checkpoint.load(run, log=lambda m: None)["iteration"] >= 20
