"""Sweeps that lose a trial or the whole sweep and recover: a killed trial retried from its Tune
checkpoint (one run per trial, and packed), and a sweep interrupted with Ctrl+C resumed with
--resume without re-running finished trials. Real Ray, Tune and MLflow (SQLite)."""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest
import torch

from pipeline.config import load_config
from pipeline.driver import checkpoint
from pipeline.driver.trainer import Trainer

from sweep_runs import mlflow_runs, sweep_ok, write_sweep


@pytest.mark.parametrize("max_members", [0, 8], ids=["one-trial-per-run", "packed"])
def test_a_failed_trial_is_retried_from_its_checkpoint(local_ray, tmp_path, max_members):
    """Packed, the Tune trial is a population (of one run here) restored from its members' states."""
    path, sweep_dir = write_sweep(tmp_path, "retry", {"seed": {"grid": [3]}},
                                  set_={"iterations": 60, "train.checkpoint_every": 20}, max_concurrent_trials=1,
                                  pack={"max_members": max_members})
    killed = []

    def checkpoint_registered() -> bool:
        """Tune's driver has processed a report that carried a checkpoint (its result.json line
        names the checkpoint): only then does a retry restore it. The checkpoint's directory alone
        appears earlier, while the report is still in flight."""
        for path in sweep_dir.glob("tune/*/result.json"):
            for line in path.read_text().splitlines():
                try:
                    if json.loads(line).get("checkpoint_dir_name"):
                        return True
                except ValueError:  # a line being written
                    pass
        return False

    def kill_after_first_checkpoint():
        deadline = time.time() + 300
        while time.time() < deadline and not killed:
            if checkpoint_registered():
                for p in psutil.Process().children(recursive=True):  # this test's Ray only
                    try:
                        if (p.cmdline() or [""])[0].startswith("ray::ImplicitFunc"):
                            p.kill()
                            killed.append(p.pid)
                    except psutil.Error:  # gone meanwhile
                        pass
            time.sleep(0.05)

    watcher = threading.Thread(target=kill_after_first_checkpoint, daemon=True)
    watcher.start()
    sweep_ok(path, sweep_dir)
    watcher.join()
    assert killed, "the trial was never killed"
    manifest = json.loads((sweep_dir / "trials.json").read_text())
    (trial,) = manifest.values()
    assert trial["status"] == "completed" and trial["retries"] == 1
    _, _, children = mlflow_runs(f"sqlite:///{(tmp_path / 'sweeps').resolve()}/mlflow.db", "retry")
    (run,) = children.values()  # the retry reopened the trial's run
    assert run.info.status == "FINISHED" and int(run.data.tags["resumed_at_iteration"]) in (20, 40)
    # resumed from the checkpoint, the trial ends where an undisturbed run ends
    run_dir = sweep_dir / "trials" / trial["name"]
    cfg = load_config(run_dir / "config.yaml", {"output_dir": str(tmp_path / "ref"), "tracking.enabled": False})
    with Trainer(cfg, tmp_path / "ref" / "r", log=lambda m: None) as ref:
        ref.train()
    final = checkpoint.load(run_dir)["params"]
    for k, v in ref.params.items():
        assert torch.allclose(final[k], v.detach(), rtol=1e-5, atol=1e-7), k


def test_interrupted_sweep_resumes_without_rerunning_finished_trials(tmp_path):
    path, sweep_dir = write_sweep(tmp_path, "intr", {"seed": {"grid": [0, 1, 2]}}, max_concurrent_trials=1,
                                  pack={"max_members": 0})  # runs finish one by one: one Tune trial each
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    cmd = [sys.executable, "-m", "pipeline.cli", "sweep", str(path)]
    log = tmp_path / "first.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 300
        while "(1/3 trials done)" not in log.read_text():
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.time() < deadline, "no trial finished within 300 s"
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)  # Ctrl+C: Tune saves its state and stops
        assert proc.wait(timeout=120) == 130, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert "--resume" in log.read_text()
    manifest = json.loads((sweep_dir / "trials.json").read_text())
    done = {t["name"] for t in manifest.values() if t["status"] == "completed"}
    assert 1 <= len(done) < 3
    before = {n: ((sweep_dir / "trials" / n / "results.json").stat().st_mtime_ns,
                  (sweep_dir / "trials" / n / "metrics.jsonl").read_text()) for n in done}

    second = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    for n in done:  # finished trials were neither re-run nor touched (the report may name them)
        assert f"[{n}]" not in second.stdout
        assert ((sweep_dir / "trials" / n / "results.json").stat().st_mtime_ns,
                (sweep_dir / "trials" / n / "metrics.jsonl").read_text()) == before[n]
    manifest = json.loads((sweep_dir / "trials.json").read_text())
    assert sorted(t["status"] for t in manifest.values()) == ["completed"] * 3
    _, parent, children = mlflow_runs(f"sqlite:///{(tmp_path / 'sweeps').resolve()}/mlflow.db", "intr")
    assert len(children) == 3 and all(r.info.status == "FINISHED" for r in children.values())
    assert parent.info.status == "FINISHED" and parent.data.metrics["trials_completed"] == 3
