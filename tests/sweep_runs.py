"""Helpers of the sweep tests: a tiny sweep file over the sine_quick config, run in process, and
the MLflow runs it left (one parent run per sweep, its trials as children)."""
import contextlib
import json
import threading
import time

import psutil
import yaml
from mlflow import MlflowClient

from pipeline.sweeps.driver import run_sweep

TINY = {"iterations": 40, "meta_batch_size": 5, "model.hidden": [20, 20], "eval.tasks": 40, "eval.shots": [10],
        "train.log_every": 10, "train.checkpoint_every": 20, "tracking.log_model": False,
        "train.plots": False}  # figures: the two tiny sweeps check them; elsewhere seconds per trial for nothing


def write_sweep(tmp_path, name, space, set_=None, **fields):
    path = tmp_path / f"{name}.yaml"
    spec = {"base": "sine_quick", "name": name, "output_dir": str(tmp_path / "sweeps"), "set": {**TINY, **(set_ or {})},
            "space": space, **fields}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path, tmp_path / "sweeps" / name


def sweep_ok(path, sweep_dir, **kw):
    code = run_sweep(str(path), **kw)
    manifest = sweep_dir / "trials.json"
    assert code == 0, manifest.read_text() if manifest.is_file() else "no trials.json"


def mlflow_runs(uri, experiment):
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id}
    assert len(children) == len(runs) - 1, "every other run is a child of the sweep's run, none twice"
    return client, parents[0], children


def checkpoint_registered(sweep_dir) -> bool:
    """Tune's driver has processed a report that carried a checkpoint (its result.json line names
    the checkpoint): only then does a retried trial restore it. The checkpoint's directory alone
    appears earlier, while the report is still in flight."""
    for path in sweep_dir.glob("tune/*/result.json"):
        for line in path.read_text().splitlines():
            try:
                if json.loads(line).get("checkpoint_dir_name"):
                    return True
            except ValueError:  # a line being written
                pass
    return False


@contextlib.contextmanager
def after_first_checkpoint(sweep_dir, act, timeout: float = 300):
    """While the block runs, a thread calls act() once a trial checkpoint is registered, again until
    it returns something; yields the list of what it returned (empty: it never acted)."""
    done, stop = [], threading.Event()

    def watch():
        deadline = time.time() + timeout
        while time.time() < deadline and not done and not stop.is_set():
            if checkpoint_registered(sweep_dir):
                result = act()
                if result:
                    done.append(result)
            time.sleep(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield done
    finally:
        stop.set()
        thread.join()


def kill_trial_processes() -> list[int]:
    """SIGKILL this test's Tune trial processes (ray::ImplicitFunc); their pids."""
    killed = []
    for p in psutil.Process().children(recursive=True):  # this test's Ray only
        try:
            if (p.cmdline() or [""])[0].startswith("ray::ImplicitFunc"):
                p.kill()
                killed.append(p.pid)
        except psutil.Error:  # gone meanwhile
            pass
    return killed
