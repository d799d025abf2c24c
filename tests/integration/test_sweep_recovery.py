"""Sweeps that lose a trial or the whole sweep and recover: a killed trial retried from its Tune
checkpoint (one run per trial, and packed), and a sweep interrupted with Ctrl+C resumed with
--resume without re-running finished trials. Real Ray, Tune and MLflow (SQLite)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from pipeline.config import load_config
from pipeline.driver import checkpoint
from pipeline.driver.trainer import Trainer

from sweep_runs import after_first_checkpoint, kill_trial_processes, mlflow_runs, sweep_ok, write_sweep


@pytest.mark.parametrize("max_members", [0, 8], ids=["one-trial-per-run", "packed"])
def test_a_failed_trial_is_retried_from_its_checkpoint(local_ray, tmp_path, max_members):
    """Packed, the Tune trial is a population (of one run here) restored from its members' states."""
    path, sweep_dir = write_sweep(tmp_path, "retry", {"seed": {"grid": [3]}},
                                  set_={"iterations": 60, "train.checkpoint_every": 20}, max_concurrent_trials=1,
                                  pack={"max_members": max_members})
    with after_first_checkpoint(sweep_dir, kill_trial_processes) as killed:
        sweep_ok(path, sweep_dir)
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
    # runs finish one by one (one Tune trial each), each long enough that the next cannot also finish
    # between the first "trials done" line and the driver's handling of Ctrl+C on a loaded machine (with
    # 40 iterations it once did in a full suite, and --resume then ran it again as Tune had not saved it)
    path, sweep_dir = write_sweep(tmp_path, "intr", {"seed": {"grid": [0, 1, 2]}}, max_concurrent_trials=1,
                                  pack={"max_members": 0}, set_={"iterations": 1000, "train.log_every": 250})
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


PBT_SCHEDULER = {"name": "pbt", "perturbation_interval": 10, "quantile_fraction": 0.25,
                 "hyperparam_mutations": {"alpha": {"loguniform": [0.001, 1.0]}, "beta": {"choice": [0.0005, 0.001,
                                                                                                       0.003]}}}


def test_a_pbt_sweep_killed_mid_way_resumes_to_the_undisturbed_lineage_and_parameters(local_ray, tmp_path):
    """One population of 8 runs (loguniform alpha, choice beta; seed 5), 60 iterations, a PBT decision
    every 10. The same sweep file run undisturbed and with its trial process SIGKILLed after its first
    checkpoint (Tune retries it from there): the same lineage in trials.json and the same final
    parameters (1e-6). The undisturbed sweep also records every decision where users look: each
    exploited run's results.json and metrics.jsonl, MLflow's alpha / beta series (one point per
    decision), the report's lineage lines and plots/pbt_schedules.png."""
    space = {"alpha": {"loguniform": [0.001, 1.0]}, "beta": {"choice": [0.0005, 0.001, 0.003]}}
    over = {"set_": {"iterations": 60, "train.checkpoint_every": 20, "method": "mtnet", "eval.val_tasks": 40},
            "scheduler": PBT_SCHEDULER, "num_samples": 8, "seed": 5, "max_concurrent_trials": 1}
    path, calm = write_sweep(tmp_path, "calm", space, **over)
    sweep_ok(path, calm)
    path, killed_dir = write_sweep(tmp_path, "killed", space, **over)
    with after_first_checkpoint(killed_dir, kill_trial_processes) as killed:
        sweep_ok(path, killed_dir)
    assert killed, "the trial was never killed"

    runs = {}
    for sweep_dir in (calm, killed_dir):
        manifest = json.loads((sweep_dir / "trials.json").read_text())
        runs[sweep_dir.name] = {t["name"].split("-", 1)[1]: t for t in manifest.values()}
    assert list(runs["calm"]) == list(runs["killed"]) and len(runs["calm"]) == 8
    assert any(t.get("retries") == 1 for t in runs["killed"].values())
    lineage = {name: t.get("lineage", []) for name, t in runs["calm"].items()}
    assert sum(map(len, lineage.values())) >= 5 * 2  # 5 decisions, 2 exploits each
    for name, t in runs["calm"].items():
        assert t.get("lineage", []) == runs["killed"][name].get("lineage", []), name
        a = checkpoint.load(calm / "trials" / t["name"])["params"]
        b = checkpoint.load(killed_dir / "trials" / runs["killed"][name]["name"])["params"]
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-6, atol=1e-7)

    name, t = next((n, t) for n, t in runs["calm"].items() if t.get("lineage"))
    run_dir = calm / "trials" / t["name"]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["pbt"]["lineage"] == t["lineage"] and results["pbt"]["final"] == t["final_values"]
    decisions = [e for e in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "val_loss" in e]
    assert [e["iteration"] for e in decisions] == [10, 20, 30, 40, 50]
    assert [e["exploit"] for e in decisions if "exploit" in e] == t["lineage"]
    client, _, children = mlflow_runs(f"sqlite:///{(tmp_path / 'sweeps').resolve()}/mlflow.db", "calm")
    history = client.get_metric_history(children[t["name"]].info.run_id, "alpha")
    assert [(m.step, m.value) for m in history] == [(e["iteration"], e["alpha"]) for e in decisions]
    report = (calm / "report.md").read_text()
    assert "## Population Based Training" in report and f"- {t['name']}: it {t['lineage'][0]['iteration']} ←" in report
    assert (calm / "plots" / "pbt_schedules.png").stat().st_size > 10_000
