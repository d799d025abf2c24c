"""Helpers of the sweep tests: a tiny sweep file over the sine_quick config, run in process, and
the MLflow runs it left (one parent run per sweep, its trials as children)."""
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
