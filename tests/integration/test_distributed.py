"""Ray shard workers: worker-count invariance, worker failure and driver restart (real Ray)."""
import os
import re
import subprocess
import sys
import time

import pytest
import ray
import torch

from pipeline.config import load_config
from pipeline.driver.trainer import Trainer


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=4, include_dashboard=False, object_store_memory=150 * 2**20,
             logging_level="ERROR")
    yield
    ray.shutdown()


def cfg_for(tmp_path, workers, backend="ray", **over):
    sets = {"method": "mtnet", "iterations": 24, "meta_batch_size": 7, "model.hidden": "[20,20]",
            "eval.tasks": 30, "eval.shots": "[5,10]", "train.checkpoint_every": 8, "train.log_every": 4,
            "output_dir": str(tmp_path), "backend": backend, "ray.workers": workers, "train.plots": "false"}
    sets.update(over)
    return load_config(None, [f"{k}={v}" for k, v in sets.items()])


def train(cfg, run_dir, log=lambda m: None):
    with Trainer(cfg, run_dir, log=log) as t:
        results = t.train()
        return {k: v.detach().clone() for k, v in t.params.items()}, results, getattr(t.backend, "restarts", 0)


def assert_params_close(a, b, rel):
    for k in a:
        err = (a[k] - b[k]).abs().max().item()
        assert err <= rel * max(a[k].abs().max().item(), 1e-12), f"{k}: max abs diff {err}"


def test_one_two_three_workers_give_the_same_parameters(local_ray, tmp_path):
    local, res_local, _ = train(cfg_for(tmp_path, 0, backend="local"), tmp_path / "local")
    for n in (1, 2, 3):
        params, res, _ = train(cfg_for(tmp_path, n), tmp_path / f"w{n}")
        assert res["workers"] == n and res["backend"] == "ray"
        assert_params_close(params, local, 1e-5)
        for k in ("5", "10"):
            assert res["results"][k]["mean"] == pytest.approx(res_local["results"][k]["mean"], rel=1e-4)


def test_killed_worker_is_replaced_and_the_run_matches(local_ray, tmp_path):
    """ray.kill of a worker mid-run (SIGKILLed worker processes: tests/integration/test_chaos.py)."""
    undisturbed, _, _ = train(cfg_for(tmp_path, 2), tmp_path / "undisturbed")
    holder = {}

    def kill_at_12(msg):
        if "it 12/24" in msg:
            ray.kill(holder["trainer"].backend.actors[0], no_restart=True)

    cfg = cfg_for(tmp_path, 2)
    with Trainer(cfg, tmp_path / "killed", log=kill_at_12) as t:
        holder["trainer"] = t
        results = t.train()
        assert t.backend.restarts >= 1 and results["worker_restarts"] >= 1
        assert results["status"] == "completed" and results["iterations"] == 24
        for k, v in undisturbed.items():
            assert torch.equal(v, t.params[k]), k  # the re-run shard is the same shard: bit-identical


# A driver SIGKILLed mid-run and resumed: tests/integration/test_chaos.py (twice, with worker kills around it).


def test_gpu_workers_fall_back_to_cpu_on_a_cluster_without_gpus(local_ray, tmp_path):
    lines = []
    params, res, _ = train(cfg_for(tmp_path, 2, **{"ray.gpus_per_worker": 0.5, "iterations": 4}), tmp_path / "g",
                           log=lines.append)
    assert res["status"] == "completed" and res["workers"] == 2 and res["placement"] == "spread"
    assert any("the cluster has no GPU: workers run on CPU" in l for l in lines)
    assert any("device cpu" in l for l in lines)


def test_workers_a_joined_cluster_cannot_place_report_progress_then_time_out(local_ray, tmp_path, monkeypatch):
    """On a cluster we joined (an autoscaler might add nodes) unplaceable workers are waited for,
    with progress lines, until ray.start_timeout_s; then one line, and every started actor is gone."""
    import pipeline.distributed.pool
    from pipeline.config import ConfigError

    monkeypatch.setattr(pipeline.distributed.pool, "PROGRESS_S", 1.0)
    lines = []
    t0 = time.monotonic()
    with pytest.raises(ConfigError) as e:
        Trainer(cfg_for(tmp_path, 6, **{"ray.start_timeout_s": 6}), tmp_path / "r", log=lines.append)
    waited = time.monotonic() - t0
    msg = str(e.value)
    # at least the 2 workers that do not fit are missing (the 4 that fit may still be booting)
    m = re.match(r"ray.start_timeout_s: ([2-6]) of 6 workers \(1 CPU each\) not started after \d+ s; "
                 r"0 of 4 cluster CPUs free; .* raise ray.start_timeout_s \(now 6\)$", msg)
    assert m and "\n" not in msg, msg
    assert lines[0].startswith("ray: ray.workers: 6 workers x 1 CPU (ray.cpus_per_worker) need 6 CPUs, but the "
                               "Ray cluster has 4 now; waiting up to ray.start_timeout_s=6 s")
    progress = [l for l in lines if re.match(r"ray: waiting for [2-6] of 6 workers \(1 CPU each\) not started", l)]
    assert len(progress) >= 3, lines  # one a second (PROGRESS_S patched to 1 s)
    # what holds the cores (the 4 workers that fit, while they boot) and what to do
    assert re.search(r", held by this run's own workers \(no other job's actors on the cluster\); meanwhile: "
                     r"fewer workers \(--workers \d\), --local "
                     r"\(no Ray: the shard function in this process\), or wait for them to free$",
                     progress[-1]), progress
    assert 6 <= waited < 60
    assert not (tmp_path / "r").exists()
    deadline = time.monotonic() + 30  # the started actors were killed: their CPUs come back
    while ray.available_resources().get("CPU", 0) < 4 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ray.available_resources().get("CPU", 0) == 4


def test_workers_that_never_fit_a_local_ray_exit_2_before_starting_it(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "train", "sine_quick", "--workers", "10000",
                           "--set", f"output_dir={tmp_path / 'runs'}"], capture_output=True, text=True, env=env,
                          timeout=300)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 2, proc.stderr
    from pipeline.distributed.backends import _local_cpus

    cpus = _local_cpus()
    assert proc.stderr == (f"metatrain: error: ray.workers: 10000 workers x 1 CPU (ray.cpus_per_worker) need 10000 "
                           f"CPUs, but the local Ray on this machine has {cpus} and no autoscaler to add nodes; use "
                           f"--workers {cpus} or fewer (0 sizes the workers to the cluster)\n")
    assert "Traceback" not in proc.stdout and not (tmp_path / "runs").exists()
    assert elapsed < 120  # no Ray was started: the time is Python's imports


def test_an_unreadable_image_met_by_a_worker_is_one_line_naming_the_file(local_ray, tmp_path):
    """miniImageNet images are decoded on first use, inside the Ray worker that samples them: the
    worker's one-line data error reaches the driver as that line, not as Ray's remote traceback."""
    from pipeline.config import ConfigError

    from helpers import write_mini_folder

    write_mini_folder(tmp_path / "mini")
    bad_class = sorted(p for p in (tmp_path / "mini").iterdir() if p.is_dir())[0]  # a train class
    for p in bad_class.iterdir():
        p.write_bytes(b"not a jpeg")
    cfg = load_config(None, {"task.name": "miniimagenet", "task.data": [str(tmp_path / "mini")], "task.ways": 2,
                             "task.shots": 1, "task.query": 2, "eval.shots": [1], "eval.tasks": 4,
                             "meta_batch_size": 4, "iterations": 3, "model.filters": 4, "model.strided": False,
                             "task.image_size": 16, "backend": "ray", "ray.workers": 2, "output_dir": str(tmp_path),
                             "tracking.enabled": False})
    with Trainer(cfg, tmp_path / "r", log=lambda m: None) as t, pytest.raises(ConfigError) as e:
        t.train()
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"task.data: {bad_class}/") and "is not a readable image" in msg, msg


def test_a_worker_dead_when_a_setting_changes_leaves_and_the_run_goes_on(local_ray, tmp_path):
    """A worker killed between calls is found dead when a setting is sent to every worker (the
    resolved chunk size, a halving rung, PBT's values): it leaves the pool, a replacement is asked
    for, and the next iteration equals an undisturbed one's bit for bit (train.block_tasks)."""
    from pipeline.distributed.backends import RayBackend
    from pipeline.shards.experiment import Experiment

    cfg = cfg_for(tmp_path, 2, **{"train.block_tasks": 2})
    exp = Experiment(cfg)
    params = exp.init_params()
    lines = []
    backend = RayBackend(cfg, exp, log=lines.append)
    try:
        want = backend.meta_gradient(params, 3)
        ray.kill(backend.actors[0], no_restart=True)
        backend.set_chunk_size(0)
        assert backend.workers == 1 and backend.restarts == 1
        assert any(line.startswith("ray: workers 2 -> 1: worker 0 lost") for line in lines), lines
        got = backend.meta_gradient(params, 3)  # the replacement has joined (min = 2) or is awaited
        assert backend.workers == 2
        assert got.loss_sum == want.loss_sum
        assert all(torch.equal(got.grads[k], g) for k, g in want.grads.items())
    finally:
        backend.close()
