"""Remote jobs against a real Ray head node that this module starts (`ray start --head` on 127.0.0.1,
token authentication on, free ports, its own temporary directory) and stops (without a cluster, and
the cluster definitions validated offline: tests/unit)."""
import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from mlflow import MlflowClient

from pipeline.cli import main
from pipeline.jobs import Jobs

from helpers import ROOT, free_ports

TOKEN = "metatrain-test-token-0123456789abcdef"
TINY = ["--set", "backend=local", "--set", "iterations=20", "--set", "meta_batch_size=4", "--set", "eval.tasks=20",
        "--set", "eval.shots=[10]", "--set", "train.log_every=10", "--set", "model.hidden=[16,16]",
        "--set", "tracking.log_model=false"]


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A one-node Ray cluster started as a user would, `metatrain cluster start` (127.0.0.1, token
    auth, its record in a temporary METATRAIN_HOME, the two user-facing ports chosen free: other Ray
    instances may run on this machine); `metatrain cluster stop` at the end must leave none of its
    processes behind."""
    home = tmp_path_factory.mktemp("metatrain_home")
    gcs, dash = free_ports(2)
    env = {**os.environ, "RAY_AUTH_TOKEN": TOKEN, "METATRAIN_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    cli = [sys.executable, "-m", "pipeline.cli", "cluster"]
    started = subprocess.run([*cli, "start", "--cpus", "2", "--port", str(gcs), "--dashboard-port", str(dash)],
                             env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert started.returncode == 0, started.stdout + started.stderr
    address, temp_dir = f"http://127.0.0.1:{dash}", Path(f"/tmp/metatrain-ray-{gcs}")
    assert f"metatrain submit train sine_quick --address {address}" in started.stdout
    try:
        yield address, temp_dir, gcs, env
    finally:
        os.environ["RAY_AUTH_TOKEN"] = TOKEN
        with contextlib.suppress(Exception):  # jobs a failed test left running
            jobs = Jobs(address)
            for job in jobs.client.list_jobs():
                if job.status.value not in ("SUCCEEDED", "FAILED", "STOPPED"):
                    jobs.client.stop_job(job.submission_id)
        os.environ.pop("RAY_AUTH_TOKEN", None)
        stopped = subprocess.run([*cli, "stop"], env=env, capture_output=True, text=True, timeout=120)
        assert stopped.returncode == 0 and f"stopped the Ray head on 127.0.0.1:{gcs}" in stopped.stdout, stopped
        left = [p for p in psutil.process_iter(["cwd", "cmdline"])
                if (p.info["cwd"] or "").startswith(str(temp_dir)) or f"--port={gcs}" in (p.info["cmdline"] or [])]
        assert not left and not temp_dir.exists(), left


def test_the_local_head_is_reported_reused_and_runs_train_and_sweep_with_address(head, tmp_path):
    """`cluster status` and a second `cluster start` find the running head; `train --address` and
    `sweep --address` run on it (the driver sends the token it finds in RAY_AUTH_TOKEN)."""
    address, _, gcs, env = head
    cli = [sys.executable, "-m", "pipeline.cli"]
    for argv in (["cluster", "status"], ["cluster", "start", "--port", str(gcs)]):
        proc = subprocess.run([*cli, *argv], env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and f"--address 127.0.0.1:{gcs}" in proc.stdout, proc
    sets = TINY[2:]  # as the jobs run, on Ray workers instead of backend=local
    assert TINY[:2] == ["--set", "backend=local"]
    proc = subprocess.run([*cli, "train", "sine_quick", *sets, "--set", f"output_dir={tmp_path}", "--set",
                           "tracking.enabled=false", "--set", "ray.workers=2", "--address", f"127.0.0.1:{gcs}"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "ray: 2 shard worker(s) on 1 node(s)" in proc.stdout and "it 20/20" in proc.stdout
    assert "; this MLP trains faster in one process (--local" in proc.stdout  # the start line says what is faster
    sweep = tmp_path / "mini.yaml"
    sweep.write_text(f"base: sine_quick\nname: mini\noutput_dir: {tmp_path / 'sweeps'}\n"
                     "set: {iterations: 10, eval.tasks: 10, model.hidden: [16, 16]}\n"
                     "space:\n  alpha: {grid: [0.01, 0.1]}\n")
    proc = subprocess.run([*cli, "sweep", str(sweep), "--address", f"127.0.0.1:{gcs}"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "trials: 2 completed" in proc.stdout


@pytest.fixture
def token(monkeypatch):
    monkeypatch.setenv("RAY_AUTH_TOKEN", TOKEN)


def test_a_training_job_succeeds_and_leaves_an_mlflow_run(head, token, tmp_path, capsys):
    address = head[0]
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    code = main(["submit", "train", "sine_quick", *TINY, "--set", f"output_dir={tmp_path}/runs", "--set",
                 "run_name=remote", "--address", address, "--tracking-uri", uri, "--follow", "--no-pip"])
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    job_id = out.split("submitted ", 1)[1].split()[0]
    assert f"{job_id}: SUCCEEDED" in out and "it 20/20" in out  # the job's own progress, streamed
    assert "python -m pipeline.cli train tune_configs/sine_quick.yaml --set backend=local" in out
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("metatrain").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "remote" and run.data.metrics["eval_K10_mean"] > 0
    assert (tmp_path / "runs" / "remote" / "results.json").is_file()
    # the jobs commands see it
    assert main(["jobs", "list", "--address", address]) == 0
    assert job_id in capsys.readouterr().out
    assert main(["jobs", "status", job_id, "--address", address]) == 0
    assert f"{job_id}: SUCCEEDED" in capsys.readouterr().out
    assert main(["jobs", "logs", job_id, "--address", address]) == 0
    assert "query MSE" in capsys.readouterr().out


def test_a_bad_config_fails_on_the_cluster_with_its_one_line_error(head, token, capsys):
    address = head[0]
    # valid here (data paths are the cluster's), missing on the cluster: the job fails there
    code = main(["submit", "train", "sine_quick", "--set", "task.name=omniglot", "--set",
                 "task.data=[/nonexistent/omniglot.zip]", "--address", address, "--no-pip"])
    out = capsys.readouterr().out
    assert code == 1 and ": FAILED" in out
    job_id = out.split("submitted ", 1)[1].split()[0]
    assert main(["jobs", "logs", job_id, "--address", address]) == 0
    logs = capsys.readouterr().out
    assert "metatrain: error: task.data: /nonexistent/omniglot.zip does not exist" in logs
    # a config that is wrong anywhere is refused here, before anything is sent
    assert main(["submit", "train", "sine_quick", "--set", "alpha=-1", "--address", address]) == 2
    assert "alpha: must be > 0" in capsys.readouterr().err


def test_stop_ends_a_running_job(head, token, tmp_path, capsys):
    """A long job (its entrypoint holds 1 of the head's 2 CPUs); meanwhile a run that wants 2 workers
    on that head is told who holds the cores and what to do; `jobs stop` ends the job."""
    address, _, gcs, env = head
    code = main(["submit", "train", "sine_quick", "--set", "backend=local", "--set", "iterations=1000000",
                 "--set", "train.compile=never", "--set", "train.log_every=50", "--set", f"output_dir={tmp_path}",
                 "--set", "tracking.enabled=false",
                 "--address", address, "--no-wait", "--no-pip"])
    out = capsys.readouterr().out
    assert code == 0 and "metatrain jobs logs" in out
    job_id = out.split("submitted ", 1)[1].split()[0]
    jobs = Jobs(address)
    deadline = time.time() + 120
    while not re.search(r"it +50/1000000", jobs.client.get_job_logs(job_id)):  # really training
        assert time.time() < deadline and jobs.status(job_id) in ("PENDING", "RUNNING")
        time.sleep(1)
    wait = subprocess.run([sys.executable, "-m", "pipeline.cli", "train", "sine_quick", "--workers", "2", "--set",
                           "ray.start_timeout_s=12", "--set", f"output_dir={tmp_path / 'waits'}", "--set",
                           "tracking.enabled=false", "--address", f"127.0.0.1:{gcs}"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert wait.returncode == 2, wait.stdout[-2000:] + wait.stderr[-2000:]
    lines = [l for l in wait.stdout.splitlines() if l.startswith("ray: waiting for 1 of 2 workers")]
    assert lines and re.search(r"1 CPU each\) not started after 1\d s; 0 of 2 cluster CPUs free, held by other "
                               r"jobs' actors: 1 JobSupervisor; meanwhile: fewer workers \(--workers 1\), --local",
                               lines[0]), wait.stdout[-2000:]
    assert main(["jobs", "stop", job_id, "--address", address]) == 0
    assert f"{job_id}: STOPPED" in capsys.readouterr().out and jobs.status(job_id) == "STOPPED"


@pytest.mark.parametrize("token_value,message", [
    (None, "requires a token and none was sent (401 Unauthorized); set RAY_AUTH_TOKEN"),
    ("wrong-token", "refused the token from RAY_AUTH_TOKEN (403 Forbidden): it is not this cluster's token")])
def test_a_missing_or_wrong_token_is_refused_clearly(head, monkeypatch, tmp_path, capsys, token_value, message):
    address = head[0]
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ray/auth_token either
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    if token_value:
        monkeypatch.setenv("RAY_AUTH_TOKEN", token_value)
    else:
        monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    assert main(["submit", "train", "sine_quick", "--address", address, "--no-pip"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert main(["jobs", "list", "--address", address]) == 2


def test_the_token_file_is_used_when_the_variable_is_unset(head, monkeypatch, tmp_path, capsys):
    address = head[0]
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text(TOKEN + "\n")
    assert main(["jobs", "list", "--address", address]) == 0


def enough_disk_for_a_pip_environment() -> bool:
    # Ray clones the virtualenv it runs in (torch included, several GB) for a job's pip environment.
    return shutil.disk_usage("/tmp").free > 25 * 2**30


@pytest.mark.skipif(not enough_disk_for_a_pip_environment(), reason="less than 25 GiB free in /tmp for the job's "
                    "pip environment (a clone of this virtualenv)")
def test_a_job_with_its_pip_environment(head, token, tmp_path, capsys):
    address = head[0]
    code = main(["submit", "train", "sine_quick", *TINY, "--set", f"output_dir={tmp_path}", "--set",
                 "tracking.enabled=false", "--address", address])
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    job_id = out.split("submitted ", 1)[1].split()[0]
    info = Jobs(address).client.get_job_info(job_id)
    assert info.runtime_env["pip"]["packages"] == [l for l in (ROOT / "requirements.txt").read_text().splitlines()
                                                   if l and not l.startswith("#")]
    ray_tmp = head[1]
    # the job ran in the environment Ray built for it (a virtualenv with those requirements)
    assert list(ray_tmp.glob("session_*/runtime_resources/pip/*/virtualenv/bin/python"))
