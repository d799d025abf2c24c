"""Ray shard workers: worker-count invariance, worker failure and driver restart (real Ray)."""
import os
import signal
import subprocess
import sys
import time

import pytest
import ray
import torch

from pipeline import checkpoint
from pipeline.config import load_config
from pipeline.trainer import Trainer


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=4, include_dashboard=False, object_store_memory=150 * 2**20,
             logging_level="ERROR")
    yield
    ray.shutdown()


def cfg_for(tmp_path, workers, backend="ray", **over):
    sets = {"method": "mtnet", "iterations": 24, "meta_batch_size": 7, "model.hidden": "[20,20]",
            "eval.tasks": 30, "eval.shots": "[5,10]", "train.checkpoint_every": 8, "train.log_every": 4,
            "output_dir": str(tmp_path), "backend": backend, "ray.workers": workers}
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


@pytest.mark.parametrize("how", ["pid", "ray.kill"])
def test_killed_worker_is_replaced_and_the_run_matches(local_ray, tmp_path, how):
    undisturbed, _, _ = train(cfg_for(tmp_path, 2), tmp_path / "undisturbed")
    holder = {}

    def kill_at_12(msg):
        if "it 12/24" in msg:
            backend = holder["trainer"].backend
            if how == "pid":
                os.kill(backend.worker_info()[1]["pid"], signal.SIGKILL)
            else:
                ray.kill(backend.actors[0], no_restart=True)

    cfg = cfg_for(tmp_path, 2)
    with Trainer(cfg, tmp_path / "killed", log=kill_at_12) as t:
        holder["trainer"] = t
        results = t.train()
        assert t.backend.restarts >= 1 and results["worker_restarts"] >= 1
        assert results["status"] == "completed" and results["iterations"] == 24
        for k, v in undisturbed.items():
            assert torch.equal(v, t.params[k]), k  # the re-run shard is the same shard: bit-identical


def test_driver_killed_after_checkpoint_resumes_to_the_same_parameters(local_ray, tmp_path):
    sets = ["--set", f"output_dir={tmp_path}", "--set", "run_name=victim", "--set", "method=mtnet",
            "--set", "iterations=100", "--set", "meta_batch_size=7", "--set", "model.hidden=[20,20]",
            "--set", "eval.tasks=30", "--set", "train.checkpoint_every=10", "--set", "train.log_every=10",
            "--set", "eval.shots=[5,10]"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    cmd = [sys.executable, "-m", "pipeline.cli"]
    proc = subprocess.Popen([*cmd, "train", "sine_quick", "--workers", "2", *sets], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_dir = tmp_path / "victim"
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            if (run_dir / "checkpoint.pt").exists() and checkpoint.load(run_dir)["iteration"] >= 30:
                break
            assert proc.poll() is None, "the driver ended before it could be killed"
            time.sleep(0.2)
        else:
            pytest.fail("no checkpoint at iteration >= 30 within 240 s")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
        proc.wait()
    killed_at = checkpoint.load(run_dir)["iteration"]
    assert 30 <= killed_at < 100 and not (run_dir / "results.json").exists()

    done = subprocess.run([*cmd, "resume", str(run_dir)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resuming {run_dir} at iteration {killed_at}/100" in done.stdout
    resumed = checkpoint.load(run_dir)
    assert resumed["iteration"] == 100 and resumed["status"] == "completed"

    reference, _, _ = train(load_config(run_dir / "config.yaml", [f"output_dir={tmp_path}"]), tmp_path / "reference")
    assert_params_close(resumed["params"], reference, 1e-6)


def test_gpu_workers_fall_back_to_cpu_on_a_cluster_without_gpus(local_ray, tmp_path):
    lines = []
    params, res, _ = train(cfg_for(tmp_path, 2, **{"ray.gpus_per_worker": 0.5, "iterations": 4}), tmp_path / "g",
                           log=lines.append)
    assert res["status"] == "completed" and res["workers"] == 2 and res["placement"] == "spread"
    assert any("the cluster has no GPU: workers run on CPU" in l for l in lines)
    assert any("device cpu" in l for l in lines)
