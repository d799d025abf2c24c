"""`metatrain sweep` and `metatrain report` on a real Ray runtime with real MLflow stores (SQLite,
and a `mlflow server` started here): runs, params, metrics, artifacts, divergence, packing, ASHA +
Optuna, and the report against the runs it read (a lost trial or sweep: test_sweep_recovery.py)."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray
import torch
import yaml

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.driver import checkpoint
from pipeline.driver.evaluation import mean_ci95
from pipeline.sweeps import draws
from pipeline.sweeps.report import pool
from pipeline.yaml_dataclasses import to_dict

from sweep_runs import TINY, mlflow_runs, sweep_ok, write_sweep

ROOT = Path(__file__).resolve().parents[2]

BAD_SWEEPS = [
    ({"space": {"alpha": {"grid": [0.01, 0]}}}, "space: alpha: must be > 0, got 0.0"),
    ({"space": {"methd": {"grid": ["maml"]}}}, "space: methd is not a config key"),
    ({"space": {"method": {"grid": ["maml", "reptile"]}}}, "space: method: unknown method 'reptile'; allowed:"),
    ({"space": {"alpha": {"range": [1, 2]}}}, "space.alpha: expected one of {grid: ...}, {choice: ...}"),
    ({"space": {"alpha": {"loguniform": [0, 1]}}}, "space.alpha.loguniform: low must be > 0"),
    ({"space": {"alpha": {"uniform": [1, 0.5]}}}, "space.alpha.uniform: low must be < high"),
    ({"space": {"inner_steps": {"randint": [0, 3]}}}, "space: inner_steps: must be >= 1, got 0"),
    ({"space": {"ray.workers": {"grid": [1, 2]}}}, "space: ray.workers is set by the sweep itself"),
    ({"space": {}}, "space: empty; a sweep needs at least one swept key"),
    ({"scheduler": {"name": "hyperband"}},
     "scheduler.name: unknown scheduler 'hyperband'; allowed: none, asha, halving, pbt"),
    ({"search": {"name": "optuna"}}, "space.alpha: optuna does not take grid entries; use choice"),
    ({"metric": "accuracy"}, "metric: unknown metric 'accuracy'; allowed: meta_loss, query_metric, eval_K10_mean"),
    ({"metric": "eval_K10_mean", "scheduler": {"name": "asha"}}, "metric: the asha scheduler compares trials"),
    ({"resources": {"workers": -1}}, "resources.workers: must be >= 0"),
    ({"resources": {"gpus": 1}}, "resources.gpus: unknown key; allowed: resources.cpus, resources.workers"),
    ({"base": "nope"}, "base: no such file 'nope'; shipped experiment configs:"),
    ({"set": {"alpha": -1}}, "alpha: must be > 0, got -1.0"),
    ({"set": {"output_dir": "x"}}, "set: output_dir is set by the sweep itself"),
    ({"report": {"shots": [5]}}, "report.shots: K=5 is not evaluated; allowed: 10"),
    ({"num_samples": 0}, "num_samples: must be >= 1"),
    ({"pack": {"max_members": -1}}, "pack.max_members: must be >= 0 (0 = no packing), got -1"),
    ({"pack": {"max_members": 8}, "scheduler": {"name": "asha"}},
     "pack: cannot pack this sweep (the asha scheduler stops runs one at a time); remove pack, or set "
     "pack.max_members: 0"),
    ({"pack": {"max_members": 8}, "search": {"name": "optuna"},
      "space": {"alpha": {"uniform": [0.01, 0.1]}, "inner_steps": {"randint": [1, 3]}}},
     "pack: cannot pack this sweep (space.inner_steps is not packable and the optuna search proposes every key "
     "per run (packable: alpha, beta, gumbel_temperature, seed, eval.seed, run_name, output_dir)); remove pack"),
    ({"scheduler": {"name": "halving"}, "pack": {"max_members": 0}},
     "scheduler.name: halving acts inside populations, and this sweep packs none (pack.max_members < 2); "
     "use asha"),
    ({"scheduler": {"name": "halving"}, "space": {"alpha": {"grid": [0.01, 0.1]}, "inner_steps": {"grid": [1, 2]},
                                                  "task.shots": {"randint": [5, 10]}}},
     "scheduler.name: halving acts inside populations, and this sweep cannot pack (space.task.shots is "
     "sampled and not packable"),
    ({"scheduler": {"name": "pbt", "hyperparam_mutations": {"task.shots": {"choice": [5, 10]}}}},
     "scheduler.hyperparam_mutations.task.shots: not mutable inside a population; allowed: alpha, beta, "
     "gumbel_temperature"),
    ({"scheduler": {"name": "pbt", "quantile_fraction": 0.6, "hyperparam_mutations": {"alpha": {"choice": [0.1]}}}},
     "scheduler.quantile_fraction: must be in (0, 0.5], got 0.6"),
    ({"scheduler": {"name": "pbt", "perturbation_interval": 40, "hyperparam_mutations": {"alpha": {"choice": [0.1]}}}},
     "scheduler.perturbation_interval: 40 is not shorter than the run (40 iterations): no decision would be taken"),
    ({"scheduler": {"name": "pbt", "hyperparam_mutations": {"alpha": {"loguniform": [0, 1]}}}},
     "scheduler.hyperparam_mutations.alpha.loguniform: must be [low, high] with 0 < low < high, got [0, 1]"),
    ({"scheduler": {"name": "pbt"}}, "scheduler.hyperparam_mutations: empty; give at least one of alpha, beta, "),
    ({"scheduler": {"name": "halving", "reduction_factor": 1}}, "scheduler.reduction_factor: must be > 1, got 1.0"),
    ({"pack": {"max_members": 8}, "space": {"alpha": {"uniform": [0.01, 0.1]}, "inner_steps": {"randint": [1, 3]}}},
     "pack: cannot pack this sweep (space.inner_steps is sampled and not packable (packable: alpha, beta, "),
]


@pytest.mark.parametrize("change,message", BAD_SWEEPS, ids=[m for _, m in BAD_SWEEPS])
def test_bad_sweep_files_are_one_line_errors_before_any_work(tmp_path, capsys, change, message):
    spec = {"base": "sine_quick", "name": "bad", "output_dir": str(tmp_path / "sweeps"), "set": dict(TINY),
            "space": {"alpha": {"grid": [0.01, 0.1]}}}
    spec.update(change)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("metatrain: error: ") and message in err, err
    assert not (tmp_path / "sweeps").exists() and not ray.is_initialized()


def test_an_existing_sweep_is_never_overwritten_and_resume_needs_one(tmp_path, capsys):
    path, sweep_dir = write_sweep(tmp_path, "keep", {"alpha": {"grid": [0.01]}})
    assert main(["sweep", str(path), "--resume"]) == 2
    assert "--resume: " in capsys.readouterr().err and not sweep_dir.exists()
    sweep_dir.mkdir(parents=True)
    (sweep_dir / "trials.json").write_text("precious")
    assert main(["sweep", str(path)]) == 2
    assert "already holds a sweep; continue it with --resume" in capsys.readouterr().err
    assert (sweep_dir / "trials.json").read_text() == "precious"
    assert main(["report", str(tmp_path)]) == 2
    assert "is not a sweep directory" in capsys.readouterr().err


def check_tiny_sweep(uri, sweep_dir):
    """2 methods x 1 alpha: parent and child runs, params, metrics, artifacts, report."""
    client, parent, children = mlflow_runs(uri, "tiny")
    assert parent.info.status == "FINISHED" and parent.data.tags["type"] == "sweep"
    assert parent.data.metrics["trials_completed"] == 2
    assert json.loads(parent.data.params["space.alpha"]) == {"grid": [0.1]}
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "report")} >= {
        "report/report.md", "report/report.parquet", "report/trials.parquet", "report/report.png"}
    manifest = json.loads((sweep_dir / "trials.json").read_text())
    assert sorted(t["name"] for t in manifest.values()) == sorted(children)
    md = (sweep_dir / "report.md").read_text()
    cells = {(r["alpha"], r["method"]): r for r in pq.read_table(sweep_dir / "report.parquet").to_pylist()}
    for name, run in children.items():
        assert run.info.status == "FINISHED" and run.data.tags["status"] == "completed"
        method, alpha = run.data.params["method"], float(run.data.params["alpha"])
        assert name.endswith(f"method={method},alpha={alpha:g}")
        assert run.data.params["task.shots"] == "10" and run.data.params["iterations"] == "40"
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "meta_loss")]
        assert steps == [10, 20, 30, 40]
        assert {"config.yaml", "checkpoint.pt", "results.json", "plots"} <= {
            a.path for a in client.list_artifacts(run.info.run_id)}
        results = json.loads((sweep_dir / "trials" / name / "results.json").read_text())
        assert ((results["backend"], results["workers"], results["placement"])
                == ("ray", 1, "the trial's placement group"))
        mean, ci = run.data.metrics["eval_K10_mean"], run.data.metrics["eval_K10_ci95"]
        assert mean == pytest.approx(results["results"]["10"]["mean"])
        # the report's cell is this run (one seed per cell): same numbers in Parquet and Markdown
        cell = cells[(alpha, method)]
        assert cell["mean"] == pytest.approx(mean) and cell["ci95"] == pytest.approx(ci) and cell["n"] == 40
        assert f"{mean:.3f} ± {ci:.3f}" in md
    return client, children


def test_tiny_sweep_into_sqlite_with_trial_workers(local_ray, tmp_path, capsys):
    path, sweep_dir = write_sweep(tmp_path, "tiny", {"method": {"grid": ["maml", "mtnet"]}, "alpha": {"grid": [0.1]}},
                                  set_={"tracking.log_model": True, "train.plots": True},
                                  resources={"cpus": 0.5, "workers": 1})
    sweep_ok(path, sweep_dir)
    uri = f"sqlite:///{(tmp_path / 'sweeps').resolve()}/mlflow.db"
    client, children = check_tiny_sweep(uri, sweep_dir)
    exp = client.get_experiment_by_name("tiny")
    models = client.search_logged_models([exp.experiment_id])
    logged = {}  # every trial logs the network and the pyfunc model that adapts to an episode
    for m in models:
        logged.setdefault(m.source_run_id, []).append(m.name)
    assert {k: sorted(v) for k, v in logged.items()} == {r.info.run_id: ["adapt_model", "model"]
                                                        for r in children.values()}
    out = capsys.readouterr().out
    assert "(2/2 trials done)" in out and "| alpha | maml | mtnet |" in out
    assert "sweep tiny: 2 trial(s) of maml, mtnet on sinusoid over method, alpha" in out  # the swept methods
    # every trial is a normal run directory: `metatrain eval` works on it
    trial = next(iter(children))
    assert main(["eval", str(sweep_dir / "trials" / trial), "--local", "--tasks", "10", "--shots", "10"]) == 0


@pytest.fixture
def mlflow_server(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    proc = subprocess.Popen([str(mlflow_bin), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                             "--backend-store-uri", f"sqlite:///{tmp_path}/server.db",
                             "--artifacts-destination", str(tmp_path / "server-artifacts")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        import urllib.request

        deadline = time.monotonic() + 240  # its workers import MLflow: a minute and more on 2 busy cores
        while True:
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=2)
                break
            except OSError:
                assert proc.poll() is None, "mlflow server exited"
                if time.monotonic() > deadline:
                    pytest.fail("mlflow server did not answer within 240 s")
                time.sleep(0.5)
        yield uri, tmp_path / "server-artifacts"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:  # its workers' graceful stop takes ~15 s on 2 cores; nothing of it is kept
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_a_sweep_against_a_real_mlflow_server_reports_a_diverging_trial_and_goes_on(local_ray, tmp_path,
                                                                                     mlflow_server):
    """Runs, metrics and artifacts through a real `mlflow server`; MAML with alpha = 10 and five
    inner steps overflows float32 within a few meta-iterations: that run is reported as diverged
    and the other completes (both in one population: packed by default)."""
    uri, artifact_root = mlflow_server
    path, sweep_dir = write_sweep(tmp_path, "div", {"alpha": {"grid": [0.01, 10]}},
                                  set_={"method": "maml", "inner_steps": 5, "eval.inner_steps": 5,
                                        "train.max_bad_steps": 5})
    sweep_ok(path, sweep_dir, tracking_uri=uri)
    assert not (tmp_path / "sweeps" / "mlflow.db").exists()  # nothing went to the default store
    manifest = json.loads((sweep_dir / "trials.json").read_text())
    status = {t["config"]["alpha"]: t["status"] for t in manifest.values()}
    assert status == {0.01: "completed", 10: "diverged"}
    client, parent, children = mlflow_runs(uri, "div")
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["trials_diverged"] == 1 and parent.data.metrics["trials_completed"] == 1
    bad = next(r for n, r in children.items() if n.endswith("alpha=10"))
    assert bad.info.status == "FAILED" and bad.data.tags["status"] == "diverged"
    assert bad.data.metrics["skipped_steps"] >= 5
    md = (sweep_dir / "report.md").read_text()
    assert "| 10 | diverged † |" in md and "diverged in meta-training" in md
    good = next(r for n, r in children.items() if n.endswith("alpha=0.01"))
    assert f"| 0.01 | {good.data.metrics['eval_K10_mean']:.3f} ± " in md
    assert [m.step for m in client.get_metric_history(good.info.run_id, "meta_loss")] == [10, 20, 30, 40]
    assert {"config.yaml", "checkpoint.pt", "results.json"} <= {a.path for a in client.list_artifacts(good.info.run_id)}
    local = client.download_artifacts(good.info.run_id, "config.yaml")
    assert yaml.safe_load(Path(local).read_text())["tracking"]["uri"] == uri
    assert any(artifact_root.rglob("checkpoint.pt"))  # stored by the server, not by the client


def test_a_packed_sweep_gives_the_unpacked_sweeps_runs_and_report(local_ray, tmp_path, capsys):
    """alpha x seed packed into one population of 4 runs (one Tune trial, on one Ray shard worker in
    its placement group) against the same sweep with one Tune trial per run, computed in the trial
    processes one trial at a time, so that Tune runs them all in one reused process (reuse_actors):
    the same run directories, MLflow child runs and report cells."""
    space = {"alpha": {"grid": [0.01, 0.1]}, "seed": {"grid": [0, 1]}}
    dirs = {}
    for name, pack, workers in (("packed", 8, 1), ("single", 0, 0)):
        (tmp_path / name).mkdir()
        path, dirs[name] = write_sweep(tmp_path / name, "s", space, set_={"method": "mtnet"},
                                       pack={"max_members": pack}, resources={"cpus": 0.5, "workers": workers},
                                       max_concurrent_trials=1)
        sweep_ok(path, dirs[name])
    out = capsys.readouterr().out
    assert "packed: trials that differ only in alpha, seed train as populations of 4 run(s), 1 Tune trial(s)" in out
    assert "population of 4] started" in out
    assert [out.count(f"({i}/4 trials done)") for i in (1, 2, 3, 4)] == [2, 2, 2, 2]  # each member counts once,
    # in each of the two sweeps (packed: four lines of one population)
    cells = {}
    for name, sweep_dir in dirs.items():
        manifest = json.loads((sweep_dir / "trials.json").read_text())
        assert sorted(t["status"] for t in manifest.values()) == ["completed"] * 4
        assert len({(t["process"]["host"], t["process"]["pid"]) for t in manifest.values()}) == 1  # one process
        runs = {(t["config"]["alpha"], t["config"]["seed"]): sweep_dir / "trials" / t["name"]
                for t in manifest.values()}
        placed = {json.loads((d / "results.json").read_text())["placement"] for d in runs.values()}
        assert placed == ({"the trial's placement group"} if name == "packed" else {"in process"})
        cells[name] = {"params": {k: checkpoint.load(d)["params"] for k, d in runs.items()},
                       "report": {(r["alpha"],): (r["mean"], r["ci95"], r["n"])
                                  for r in pq.read_table(sweep_dir / "report.parquet").to_pylist()}}
        _, parent, children = mlflow_runs(f"sqlite:///{(tmp_path / name / 'sweeps').resolve()}/mlflow.db", "s")
        assert parent.data.metrics["trials_completed"] == 4 and len(children) == 4
        assert all(r.info.status == "FINISHED" and len(r.data.metrics) > 5 for r in children.values())
    for key, params in cells["single"]["params"].items():
        for k, v in params.items():
            torch.testing.assert_close(cells["packed"]["params"][key][k], v, rtol=1e-5, atol=1e-7)
    assert cells["packed"]["report"].keys() == cells["single"]["report"].keys()
    for key, (mean, ci, n) in cells["single"]["report"].items():
        got = cells["packed"]["report"][key]
        assert got[0] == pytest.approx(mean, rel=1e-5) and got[1] == pytest.approx(ci, rel=1e-4) and got[2] == n
    # `metatrain report` on a finished sweep reads its files alone: no torch, Ray or MLflow is imported
    (dirs["packed"] / "report.md").unlink()
    code = (f"import sys\nfrom pipeline.cli import main\nassert main(['report', {str(dirs['packed'])!r}]) == 0\n"
            "print(sorted(m for m in ('torch', 'ray', 'mlflow') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.strip().splitlines()[-1] == "[]" and (dirs["packed"] / "report.md").is_file(), proc.stderr


def test_a_packed_random_search_trains_the_runs_of_its_unpacked_twin(local_ray, tmp_path, capsys):
    """loguniform alpha x uniform temperature, 3 samples each of 2 seeds: packed, the six drawn runs
    train as one population (one Tune trial); with pack.max_members: 0, as six Tune trials. The same
    configurations are drawn, and each run's parameters and the report's cells agree (1e-5)."""
    space = {"alpha": {"loguniform": [0.005, 0.1]}, "gumbel_temperature": {"uniform": [0.5, 2.0]},
             "seed": {"grid": [0, 1]}}
    dirs, cells = {}, {}
    for name, pack in (("packed", 8), ("single", 0)):
        (tmp_path / name).mkdir()
        path, dirs[name] = write_sweep(tmp_path / name, "rs", space, set_={"method": "mtnet", "iterations": 30},
                                       num_samples=3, seed=11, pack={"max_members": pack}, resources={"cpus": 1},
                                       max_concurrent_trials=1, report={"rows": ["seed"]})
        sweep_ok(path, dirs[name])
        manifest = json.loads((dirs[name] / "trials.json").read_text())
        assert sorted(t["status"] for t in manifest.values()) == ["completed"] * 6
        runs = {(t["config"]["alpha"], t["config"]["gumbel_temperature"], t["config"]["seed"]):
                dirs[name] / "trials" / t["name"] for t in manifest.values()}
        cells[name] = {"params": {k: checkpoint.load(d)["params"] for k, d in runs.items()},
                       "report": {r["seed"]: (r["mean"], r["ci95"], r["n"])
                                  for r in pq.read_table(dirs[name] / "report.parquet").to_pylist()}}
        _, _, children = mlflow_runs(f"sqlite:///{(tmp_path / name / 'sweeps').resolve()}/mlflow.db", "rs")
        logged = {(float(r.data.params["alpha"]), float(r.data.params["gumbel_temperature"]),
                   int(r.data.params["seed"])) for r in children.values()}
        assert logged == set(runs), "MLflow holds every run's drawn values"
    out = capsys.readouterr().out
    assert "packed: trials that differ only in alpha, gumbel_temperature, seed train as populations of 6 run(s), " \
           "1 Tune trial(s)" in out
    drawn = set(cells["single"]["params"])
    assert drawn == set(cells["packed"]["params"]) and len(drawn) == 6
    assert len({a for a, _, _ in drawn}) == 6 and all(0.005 <= a <= 0.1 and 0.5 <= t <= 2.0 for a, t, _ in drawn)
    for key, params in cells["single"]["params"].items():
        for k, v in params.items():
            torch.testing.assert_close(cells["packed"]["params"][key][k], v, rtol=1e-5, atol=1e-7)
    for seed, (mean, ci, n) in cells["single"]["report"].items():
        got = cells["packed"]["report"][seed]
        assert got[0] == pytest.approx(mean, rel=1e-5) and got[1] == pytest.approx(ci, rel=1e-4) and got[2] == n


def test_a_packed_optuna_search_proposes_populations_the_same_way_twice_and_tells_every_member(local_ray, tmp_path,
                                                                                                capsys):
    """Optuna over alpha, beta and the temperature, 6 runs in populations of 3 (two Tune trials, the
    second proposed after the first is told): the same sweep twice proposes the same members in the
    same order, and Optuna's study holds every member's final metric, as the member's run reports it."""
    space = {"alpha": {"loguniform": [0.005, 0.1]}, "beta": {"uniform": [0.0005, 0.005]},
             "gumbel_temperature": {"uniform": [0.5, 2.0]}}
    proposed = []
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
        path, sweep_dir = write_sweep(tmp_path / name, "opt", space, set_={"method": "mtnet", "iterations": 20},
                                      num_samples=6, seed=3, pack={"max_members": 3}, max_concurrent_trials=1,
                                      search={"name": "optuna"}, metric="eval_K10_mean")
        sweep_ok(path, sweep_dir)
        manifest = json.loads((sweep_dir / "trials.json").read_text())
        assert sorted(t["status"] for t in manifest.values()) == ["completed"] * 6
        told = json.loads((sweep_dir / "optuna.json").read_text())  # in the order Optuna proposed them
        assert [r["state"] for r in told] == ["COMPLETE"] * 6
        proposed.append([r["params"] for r in told])
        assert sorted(map(str, proposed[-1])) == sorted(str(t["config"]) for t in manifest.values())
        finals = {json.dumps(t["config"], sort_keys=True): json.loads(
            (sweep_dir / "trials" / t["name"] / "results.json").read_text())["results"]["10"]["mean"]
            for t in manifest.values()}
        assert {json.dumps(r["params"], sort_keys=True): r["value"] for r in told} == finals
    assert proposed[0] == proposed[1] and len({m["alpha"] for m in proposed[0]}) == 6
    out = capsys.readouterr().out
    assert "train as populations of 3 run(s), 2 Tune trial(s) (pack.max_members: 3; members proposed by optuna)" in out


def test_a_halving_sweep_narrows_each_population_and_reports_the_survivors(local_ray, tmp_path, capsys):
    """alpha x seed, 4 runs in one population, halving with grace period 10 and reduction factor 2 over
    40 iterations: rungs at 10 and 20 keep 2, then 1. trials.json records the three stopped runs and
    the iteration each stopped at; the report tables the survivor, lists the others with their
    iteration, and names the best run."""
    space = {"alpha": {"grid": [0.003, 0.03]}, "seed": {"grid": [0, 1]}}
    path, sweep_dir = write_sweep(tmp_path, "halve", space, set_={"method": "mtnet", "eval.val_tasks": 40},
                                  scheduler={"name": "halving", "grace_period": 10, "reduction_factor": 2})
    sweep_ok(path, sweep_dir)
    manifest = json.loads((sweep_dir / "trials.json").read_text())
    statuses = sorted(t["status"] for t in manifest.values())
    assert statuses == ["completed", "stopped", "stopped", "stopped"]
    assert sorted(t["stopped_at"] for t in manifest.values() if t["status"] == "stopped") == [10, 10, 20]
    out = capsys.readouterr().out
    assert " | stopped 3 of 4" in out  # the population's progress line
    report = (sweep_dir / "report.md").read_text()
    survivor = next(t["name"] for t in manifest.values() if t["status"] == "completed")
    assert f"Best run at K = 10: trials/{survivor}" in report and report.count("(stopped at iteration") == 3


def test_optuna_samples_every_kind_of_entry_within_its_bounds(local_ray, tmp_path):
    space = {"method": {"choice": ["maml", "mtnet"]}, "alpha": {"loguniform": [0.001, 0.1]},
             "beta": {"uniform": [0.0005, 0.005]}, "inner_steps": {"randint": [1, 3]}}
    path, sweep_dir = write_sweep(tmp_path, "opt", space, set_={"iterations": 20}, num_samples=2,
                                  max_concurrent_trials=2, search={"name": "optuna"}, metric="eval_K10_mean")
    sweep_ok(path, sweep_dir)
    manifest = json.loads((sweep_dir / "trials.json").read_text())
    assert len(manifest) == 2 and {t["status"] for t in manifest.values()} == {"completed"}
    configs = [t["config"] for t in manifest.values()]
    assert len({c["alpha"] for c in configs}) == 2  # sampled, not a grid
    for c in configs:
        assert c["method"] in ("maml", "mtnet") and 0.001 <= c["alpha"] <= 0.1 and 0.0005 <= c["beta"] <= 0.005
        assert c["inner_steps"] in (1, 2)
    _, _, children = mlflow_runs(f"sqlite:///{(tmp_path / 'sweeps').resolve()}/mlflow.db", "opt")
    for t in manifest.values():
        run = children[t["name"]]
        assert float(run.data.params["alpha"]) == pytest.approx(t["config"]["alpha"])
        assert int(run.data.params["inner_steps"]) == t["config"]["inner_steps"]


def test_asha_stops_a_bad_trial_and_records_it(local_ray, tmp_path):
    # Run one after the other, the good trial (alpha 0.01) sets the bar at every rung; MAML with
    # alpha = 10 is far above it at the first rung (iteration 20) and is stopped there.
    path, sweep_dir = write_sweep(tmp_path, "asha", {"alpha": {"grid": [0.01, 10.0]}},
                                  set_={"method": "maml", "iterations": 40, "train.checkpoint_every": 20},
                                  max_concurrent_trials=1,
                                  scheduler={"name": "asha", "grace_period": 20, "reduction_factor": 2})
    sweep_ok(path, sweep_dir)
    status = {t["config"]["alpha"]: t["status"] for t in json.loads((sweep_dir / "trials.json").read_text()).values()}
    assert status == {0.01: "completed", 10.0: "stopped"}
    _, parent, children = mlflow_runs(f"sqlite:///{(tmp_path / 'sweeps').resolve()}/mlflow.db", "asha")
    good, bad = (next(r for n, r in children.items() if n.endswith(f"alpha={a}")) for a in ("0.01", "10"))
    assert (good.info.status, good.data.tags["status"]) == ("FINISHED", "completed")
    assert (bad.info.status, bad.data.tags["status"]) == ("KILLED", "stopped")
    assert parent.data.metrics["trials_stopped"] == 1
    assert "alpha=10 (stopped)" in (sweep_dir / "report.md").read_text()


def test_pooling_matches_the_evaluation_of_all_values_together():
    from pipeline.driver.evaluation import mean_ci95

    rng = np.random.default_rng(0)
    groups = [rng.random(n) * s for n, s in ((600, 1.0), (600, 3.0), (200, 0.5))]
    mean, ci, n = pool([(*mean_ci95(g), len(g)) for g in groups])
    assert n == 1400 and (mean, ci) == pytest.approx(mean_ci95(np.concatenate(groups)), rel=1e-10)


def test_report_combines_seeds_task_by_task_and_survives_list_values_and_early_errors(tmp_path):
    """A sweep directory written by hand: model.hidden (a list) x seed, and a trial that failed
    before writing anything. Seeds evaluated on the same tasks are averaged task by task."""
    from pipeline.sweeps.report import write_report

    rng = np.random.default_rng(1)
    base = to_dict(load_config("sine_quick", {"eval.shots": [10]}))
    space = {"model.hidden": {"grid": [[20, 20], [40, 40]]}, "seed": {"grid": [0, 1]}}
    sweep_dir = tmp_path / "s"
    (sweep_dir / "trials").mkdir(parents=True)
    (sweep_dir / "sweep.yaml").write_text(yaml.safe_dump({"name": "s", "space": space, "base_config": base,
                                                          "report": {"rows": [], "shots": []}}))
    manifest, per_task = {}, {}
    for i, (hidden, seed) in enumerate([(h, s) for h in ([20, 20], [40, 40]) for s in (0, 1)]):
        name = f"0000{i}-hidden={hidden},seed={seed}"
        manifest[f"x_0000{i}"] = {"name": name, "status": "completed", "config": {"model.hidden": hidden, "seed": seed}}
        values = rng.random(600) * (1 + i)
        per_task[(tuple(hidden), seed)] = values
        m, c = mean_ci95(values)
        run = sweep_dir / "trials" / name
        run.mkdir()
        (run / "config.yaml").write_text(yaml.safe_dump({**base, "seed": seed,
                                                          "model": {**base["model"], "hidden": hidden}}))
        (run / "results.json").write_text(json.dumps({"status": "completed", "metric": "query MSE", "results": {
            "10": {"mean": m, "ci95": c, "n": 600, "per_task": values.tolist()}}}))
    manifest["x_00004"] = {"name": "00004-hidden=[80,80],seed=0", "status": "error", "error": "OOM",
                           "config": {"model.hidden": [80, 80], "seed": 0}}
    (sweep_dir / "trials.json").write_text(json.dumps(manifest))
    report = write_report(sweep_dir)
    cells = {tuple(r["model.hidden"]): r for r in pq.read_table(sweep_dir / "report.parquet").to_pylist()}
    for hidden in ((20, 20), (40, 40)):
        expected = mean_ci95((per_task[(hidden, 0)] + per_task[(hidden, 1)]) / 2)
        assert (cells[hidden]["mean"], cells[hidden]["ci95"]) == pytest.approx(expected, rel=1e-10)
        assert cells[hidden]["n"] == 600 and cells[hidden]["trials"] == 2
        assert f"| [{hidden[0]}, {hidden[1]}] | {expected[0]:.3f} ± {expected[1]:.3f} |" in report.text
    assert "00004-hidden=[80,80],seed=0 (error: OOM)" in report.text and "averaged over 2 seeds" in report.text


def test_shipped_sweep_files_validate_and_are_not_experiment_configs(capsys):
    from pipeline.sweeps.spec import load_sweep

    counts = {"robustness_alpha": 54, "sine_models": 21, "polynomial_subspace": 18, "gumbel_temperature": 12,
              "beta": 30}
    for name, n in counts.items():
        sweep = load_sweep(name)
        assert sweep.trial_count() == n and sweep.base["iterations"] == 60000 and sweep.base["meta_batch_size"] == 4
        assert sweep.packed and sum(len(t["members"]) for t in draws.trials(sweep)) == n
    robustness = draws.trials(load_sweep("robustness_alpha"))  # one population of 18 per method
    assert [t["method"] for t in robustness] == ["maml", "tnet", "mtnet"]
    assert all(t["members"] == [{"alpha": a, "seed": s} for a in (10.0, 1.0, 0.1, 0.01, 0.001, 0.0001)
                                for s in (0, 1, 2)] for t in robustness)
    assert load_sweep("robustness_alpha").space["alpha"] == {"grid": [10.0, 1.0, 0.1, 0.01, 0.001, 0.0001]}
    assert load_sweep("polynomial_subspace").base["task"]["name"] == "polynomial"
    assert main(["train", "robustness_alpha"]) == 2
    assert "is a sweep file; run it with `metatrain sweep robustness_alpha`" in capsys.readouterr().err
    assert main(["sweep", "sine_maml"]) == 2
    assert "is an experiment config; train it with" in capsys.readouterr().err


def test_resume_accepts_schema_keys_added_with_their_defaults_and_refuses_real_changes():
    from pipeline.config import ConfigError
    from pipeline.sweeps.driver import _check_unchanged
    from pipeline.sweeps.spec import load_sweep

    now = load_sweep("robustness_alpha").to_dict()
    older = json.loads(json.dumps(now))
    del older["base_config"]["train"]["grad_clip"]  # a key a later version added, still at its default
    del older["resources"]["gpus_per_worker"]
    _check_unchanged(older, now)
    changed = json.loads(json.dumps(now))
    changed["base_config"]["beta"] = 0.01
    with pytest.raises(ConfigError, match=r"--resume: the sweep changed since it started \(base_config.beta\)"):
        _check_unchanged(changed, now)
    added = json.loads(json.dumps(now))
    now_modified = json.loads(json.dumps(now))
    now_modified["base_config"]["train"]["grad_clip"] = 0.5  # new key, not at its default
    del added["base_config"]["train"]["grad_clip"]
    with pytest.raises(ConfigError, match="base_config.train.grad_clip"):
        _check_unchanged(added, now_modified)
