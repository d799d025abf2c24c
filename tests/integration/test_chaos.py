"""Chaos: a 180-iteration run on 3 Ray shard workers during which workers are SIGKILLed at random
moments (inside shard calls, between them, while a replacement starts) and the driver itself is
SIGKILLed twice and resumed with `metatrain resume`. Its final parameters equal those of an
undisturbed run of the same config to 1e-6 (in practice bit for bit: every shard is a pure function
of the parameters, the iteration and its task range, and shards merge in a fixed order).

Everything is real: each driver is a `metatrain` process with its own local Ray (started in its own
session, so the test can find its workers and clean up after a killed driver), kills are SIGKILL.
Four drivers, each with its own Ray: about 2-4 minutes on 2 cores."""
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import torch

from pipeline.driver import checkpoint
from pipeline.driver.run_dir import METRICS, RESULTS

ITERATIONS = 180
SETTINGS = {"method": "maml", "iterations": ITERATIONS, "meta_batch_size": 24, "inner_steps": 3,
            "model.hidden": "[64,64]", "task.shots": 10, "eval.tasks": 24, "eval.shots": "[5]",
            "train.checkpoint_every": 10, "train.log_every": 10, "ray.workers": 3,
            "ray.cpus_per_worker": 0.5,  # three workers on a 2-core machine
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


class WorkerKiller(threading.Thread):
    """After every 10-24 iterations of progress, SIGKILLs one of the three shard workers at random,
    0-0.3 s later: the moment falls inside a shard call (most of a worker's time) or between calls.
    (Kills paced by progress, not by the clock: a replacement takes seconds to start, and kills
    faster than that would stall the run rather than test it.)"""

    def __init__(self, sid: int, run: Path, rng: random.Random):
        super().__init__(daemon=True)
        self.sid, self.run_dir, self.rng, self.kills, self.stop = sid, run, rng, 0, threading.Event()

    def run(self):
        target = last_iteration(self.run_dir) + self.rng.randint(10, 24)
        while not self.stop.wait(0.05):
            if last_iteration(self.run_dir) < target:
                continue
            self.stop.wait(self.rng.uniform(0.0, 0.3))
            workers = shard_workers(self.sid)
            if workers:
                try:
                    self.rng.choice(workers).send_signal(signal.SIGKILL)
                    self.kills += 1
                except psutil.NoSuchProcess:
                    pass
            target = last_iteration(self.run_dir) + self.rng.randint(10, 24)


def drive(args, log, run, rng, kill_driver_at: int | None, timeout=420) -> tuple[int, int]:
    """One driver under fire; returns (worker kills, driver exit code). kill_driver_at: SIGKILL
    the driver once the run has logged that iteration (None: let it finish)."""
    proc = metatrain(args, log)
    killer = WorkerKiller(proc.pid, run, rng)
    killer.start()
    t0 = time.monotonic()
    try:
        while proc.poll() is None:
            assert time.monotonic() - t0 < timeout, (
                f"driver still running after {timeout} s:\n{log.read_text()[-3000:]}")
            if kill_driver_at is not None and last_iteration(run) >= kill_driver_at:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                break
            time.sleep(0.2)
    finally:
        killer.stop.set()
        killer.join()
        kill_session(proc.pid)
    return killer.kills, proc.returncode


def final_params(run: Path) -> dict:
    return checkpoint.load(run, log=lambda m: None, keys=checkpoint.PARAMS_KEYS)["params"]


def test_random_worker_and_driver_kills_leave_the_result_unchanged(tmp_path):
    sets = [a for k, v in SETTINGS.items() for a in ("--set", f"{k}={v}")]
    calm, chaos = tmp_path / "calm", tmp_path / "chaos"
    log = tmp_path / "driver.log"

    ref = metatrain(["train", "sine_quick", *sets, "--set", f"output_dir={calm}"], tmp_path / "calm.log")
    assert ref.wait(timeout=420) == 0, (tmp_path / "calm.log").read_text()[-3000:]
    kill_session(ref.pid)
    reference = final_params(calm / "run")
    assert json.loads((calm / "run" / RESULTS).read_text())["iterations"] == ITERATIONS

    rng, run = random.Random(1234), chaos / "run"
    kills = []
    k, code = drive(["train", "sine_quick", *sets, "--set", f"output_dir={chaos}"], log, run, rng,
                    kill_driver_at=rng.randint(45, 75))
    kills.append(k)
    assert code == -signal.SIGKILL, log.read_text()[-3000:]
    first_stop = last_iteration(run)
    k, code = drive(["resume", str(run)], log, run, rng, kill_driver_at=rng.randint(105, 135))
    kills.append(k)
    assert code == -signal.SIGKILL, log.read_text()[-3000:]
    assert last_iteration(run) > first_stop, "the first resume made no progress"
    k, code = drive(["resume", str(run)], log, run, rng, kill_driver_at=None)
    kills.append(k)
    text = log.read_text()
    assert code == 0, text[-3000:]

    results = json.loads((run / RESULTS).read_text())
    assert results["status"] == "completed" and results["iterations"] == ITERATIONS
    assert min(kills) >= 1 and sum(kills) >= 6, kills
    # some kills landed inside shard calls: the driver replaced the worker and re-ran its shard
    assert text.count("re-running") >= 3, text[-3000:]
    assert "Traceback" not in text, text[-5000:]
    disturbed = final_params(run)
    assert set(disturbed) == set(reference)
    for key, value in reference.items():
        torch.testing.assert_close(disturbed[key], value, rtol=1e-6, atol=1e-6, msg=lambda m: f"{key}: {m}")
    print(f"worker kills per driver: {kills}; shard re-runs: {text.count('re-running')}; "
          f"max |difference|: {max((disturbed[k] - v).abs().max().item() for k, v in reference.items()):.3g}")


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
    assert "ray.max_worker_restarts: the worker of shard range(" in errors[0]
    assert "metatrain resume RUN_DIR" in errors[0]
    assert checkpoint.load(run, log=lambda m: None)["iteration"] >= 20
