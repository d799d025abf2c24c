"""The command line end to end: train, eval and resume as `metatrain` processes (bad input:
tests/unit)."""
import json
import os
import subprocess
import sys


def test_train_eval_resume_end_to_end(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "pipeline.cli"]
    sets = ["--local", "--set", f"output_dir={tmp_path}", "--set", "run_name=e2e", "--set", "iterations=30",
            "--set", "meta_batch_size=5", "--set", "eval.tasks=40", "--set", "train.log_every=10",
            "--set", "train.checkpoint_every=10"]
    proc = subprocess.run([*cmd, "train", "sine_quick", *sets], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    run = tmp_path / "e2e"
    assert "it 30/30" in proc.stdout and "tasks/s" in proc.stdout and "ETA" in proc.stdout
    results = json.loads((run / "results.json").read_text())
    assert results["status"] == "completed" and set(results["results"]) == {"5", "10", "20"}
    assert results["results"]["10"]["n"] == 40
    assert 0 < results["updated_fraction"]["overall"] < 1

    proc = subprocess.run([*cmd, "eval", str(run), "--local", "--tasks", "20", "--shots", "5,10", "--seed", "3"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    ev = json.loads((run / "eval-seed3-tasks20.json").read_text())
    assert set(ev["results"]) == {"5", "10"} and ev["results"]["5"]["n"] == 20

    proc = subprocess.run([*cmd, "eval", str(run), "--shots", "5,x"], capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and "--shots" in proc.stderr

    proc = subprocess.run([*cmd, "resume", str(run)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr  # already complete, every record written: nothing to do
    assert proc.stdout == (f"{run}: finished (completed at iteration 30/30) with every record written; nothing to "
                           "do (--force evaluates it again)\n")
    proc = subprocess.run([*cmd, "resume", str(run), "--force"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr  # --force: re-evaluates, trains nothing more
    assert "it " not in proc.stdout.replace("iterations", "") and "query MSE" in proc.stdout
