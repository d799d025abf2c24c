"""MLflow tracking of `metatrain train` / `resume` runs against a real SQLite store, and the run's plots."""
import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient
from PIL import Image

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.core.learners import forward
from pipeline.driver import checkpoint
from pipeline.driver.trainer import Trainer
from pipeline.serve.adaptation import load_run
from pipeline.shards.experiment import Experiment
from pipeline.tracking import MlflowTracker, resolve_uri
from pipeline.yaml_dataclasses import flatten, to_dict

from helpers import run_patched

SMALL = ["--local", "--set", "iterations=30", "--set", "meta_batch_size=5", "--set", "model.hidden=[20,20]",
         "--set", "eval.tasks=40", "--set", "eval.shots=[5,10]", "--set", "train.log_every=10",
         "--set", "train.checkpoint_every=10"]


def only_run(uri):
    client = MlflowClient(tracking_uri=uri)
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return client, runs[0]


def assert_png(path):
    img = np.asarray(Image.open(path).convert("L"), dtype=float)
    assert img.shape[0] > 200 and img.shape[1] > 300
    assert img.std() > 10  # not a blank canvas


def test_train_logs_params_tags_metrics_artifacts_plots_and_model(tmp_path):
    out = tmp_path / "runs"
    code = main(["train", "sine_quick", *SMALL, "--set", f"output_dir={out}", "--set", "run_name=r"])
    assert code == 0
    run_dir = out / "r"
    uri = f"sqlite:///{out.resolve()}/mlflow.db"
    assert (out / "mlflow.db").is_file()
    cfg = load_config(run_dir / "config.yaml")
    assert cfg.tracking.uri == uri  # recorded, so `resume` finds the store from any working directory
    client, run = only_run(uri)
    assert run.info.status == "FINISHED" and run.info.run_name == "r"
    assert json.loads((run_dir / "mlflow.json").read_text())["run_id"] == run.info.run_id

    # params: the whole flattened config
    expected = {k: str(v) for k, v in flatten(to_dict(cfg)).items()}
    assert run.data.params == expected
    tags = run.data.tags
    assert (tags["method"], tags["task"], tags["seed"], tags["status"]) == ("mtnet", "sinusoid", "0", "completed")
    assert len(tags["git_commit"]) == 40  # this checkout is a git repository

    # per-iteration metrics at every logged iteration, equal to metrics.jsonl
    lines = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    history = client.get_metric_history(run.info.run_id, "meta_loss")
    assert [m.step for m in history] == [10, 20, 30]
    assert [m.value for m in history] == pytest.approx([l["meta_loss"] for l in lines])
    for name in ("query_loss_step0", "query_loss_step1", "tasks_per_s", "updated_fraction", "updated_fraction_l0"):
        assert len(client.get_metric_history(run.info.run_id, name)) == 3, name

    # the final evaluation: scalars equal to results.json, and a table artifact
    results = json.loads((run_dir / "results.json").read_text())
    for k in ("5", "10"):
        assert run.data.metrics[f"eval_K{k}_mean"] == pytest.approx(results["results"][k]["mean"])
        assert run.data.metrics[f"eval_K{k}_ci95"] == pytest.approx(results["results"][k]["ci95"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "results.json", "metrics.jsonl", "checkpoint.pt", "eval_table.json", "plots"} <= artifacts
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert plots == {"plots/learning_curves.png", "plots/updated_fraction.png", "plots/adaptation.png"}
    local = client.download_artifacts(run.info.run_id, "plots")
    for name in ("learning_curves.png", "updated_fraction.png", "adaptation.png"):
        assert_png(f"{local}/{name}")
        assert_png(run_dir / "plots" / name)

    # the logged model is the meta-learned network: same outputs as the checkpoint's parameters
    mlflow.set_tracking_uri(uri)
    model = mlflow.pytorch.load_model(tags["model_uri"])
    params = checkpoint.load(run_dir)["params"]
    x = torch.linspace(-5, 5, 17)[:, None]
    with torch.no_grad():
        assert torch.allclose(model(x), forward(Experiment(cfg).learner.net, params, x), atol=1e-6)

    # ... and the pyfunc model that adapts to a posted episode equals the Python API on that episode
    adapt_model = mlflow.pyfunc.load_model(tags["adapt_model_uri"])
    assert adapt_model.metadata.signature.inputs.input_names() == ["role", "x", "y"]
    xs, xq = np.linspace(-4, 4, 6), np.array([-1.5, 0.25, 3.0])
    ys = 2 * np.sin(xs + 0.5)
    episode = pd.DataFrame({"role": ["support"] * 6 + ["query"] * 3, "x": np.concatenate([xs, xq]),
                            "y": np.concatenate([ys, np.full(3, np.nan)])})
    served = adapt_model.predict(episode)
    expected = load_run(run_dir).adapt(xs, ys).predict(xq)
    np.testing.assert_allclose(served["y"], expected["y"], rtol=1e-6)
    assert np.abs(expected["y"] - load_run(run_dir).adapt(xs, ys, steps=0).predict(xq)["y"]).max() > 1e-5


MNIST_CSV = Path(__file__).resolve().parents[3] / "shared/data/mnist/mnist_5k.csv.gz"


@pytest.mark.skipif(not MNIST_CSV.is_file(), reason="../shared/data/mnist not found")
def test_a_heldout_learned_optimizer_logs_its_unseen_image_losses_and_validation(tmp_path):
    """train.meta_loss: heldout on MNIST optimizees: the unseen-image columns of the evaluation and
    the validation series reach MLflow as results.json and metrics.jsonl hold them."""
    out = tmp_path / "runs"
    sets = {"task.data": [str(MNIST_CSV)], "model.hidden": [5],
            "task.minibatch": 16, "inner_steps": 4, "train.unroll": 4, "iterations": 4, "meta_batch_size": 2,
            "train.meta_loss": "heldout", "train.validate_every": 2, "train.validate_tasks": 2, "eval.tasks": 4,
            "eval.inner_steps": 4, "eval.baselines": {"sgd": 1.0}, "train.log_every": 2,
            "train.checkpoint_every": 2, "output_dir": str(out), "run_name": "h"}
    args = [a for k, v in sets.items() for a in ("--set", f"{k}={json.dumps(v)}")]
    code = main(["train", "l2l_mnist_cpu", "--local", *args])
    assert code == 0
    client, run = only_run(f"sqlite:///{out.resolve()}/mlflow.db")
    results = json.loads((out / "h" / "results.json").read_text())
    for name in ("l2l", "sgd"):
        assert run.data.metrics[f"eval_{name}_unseen_mean"] == pytest.approx(results["results"][name]["unseen"]["mean"])
        assert len(results["results"][name]["unseen"]["loss_per_step"]) == 5  # steps 0..4
    history = client.get_metric_history(run.info.run_id, "validation_loss")
    figure = out / "h" / "plots" / "optimizee_loss.png"  # two panels: minibatch loss, unseen-image loss
    assert_png(figure)
    width, height = Image.open(figure).size
    assert width > 2 * height
    want = results["validation"]["history"]
    assert [m.step for m in history] == [i for i, _ in want] == [2, 4]
    assert [m.value for m in history] == pytest.approx([v for _, v in want])


class Crash(Exception):
    pass


def test_resume_continues_the_same_mlflow_run(tmp_path):
    uri = resolve_uri("", tmp_path)
    cfg = load_config("sine_quick", {"backend": "local", "iterations": 40, "meta_batch_size": 5,
                                     "model.hidden": [20, 20],
                                     "eval.tasks": 30, "eval.shots": [10], "train.log_every": 5,
                                     "train.checkpoint_every": 10, "tracking.uri": uri, "tracking.log_model": False,
                                     "output_dir": str(tmp_path)})
    run_dir = tmp_path / "r"

    def crash_at_25(msg):
        if "it 25/40" in msg:
            raise Crash

    with pytest.raises(Crash):
        Trainer(cfg, run_dir, log=crash_at_25,
                hooks=(MlflowTracker(cfg, uri, run_name="r", log=lambda m: None),)).train()
    client, run = only_run(uri)
    assert run.info.status == "FAILED" and run.data.tags["status"] == "error" and "Crash" in run.data.tags["error"]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "meta_loss")] == [5, 10, 15, 20, 25]

    with Trainer(cfg, run_dir, log=lambda m: None,
                 hooks=(MlflowTracker(cfg, uri, run_name="r", log=lambda m: None),)) as t:
        t.train(resume=True)  # from the checkpoint at iteration 20
    client, run = only_run(uri)  # the same run, reopened: no second run
    assert run.info.status == "FINISHED" and run.data.tags["status"] == "completed"
    assert run.data.tags["resumed_at_iteration"] == "20"
    history = client.get_metric_history(run.info.run_id, "meta_loss")
    assert [m.step for m in history] == [5, 10, 15, 20, 25, 30, 35, 40]  # 25 is not logged twice
    lines = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m.value for m in history] == pytest.approx([l["meta_loss"] for l in lines])


def test_diverged_run_keeps_its_metrics_and_is_marked(tmp_path):
    out = tmp_path / "runs"
    # MAML with alpha = 10 and five inner steps overflows float32 within a few meta-iterations.
    code = main(["train", "sine_quick", *SMALL, "--set", f"output_dir={out}", "--set", "run_name=d",
                 "--set", "method=maml", "--set", "alpha=10", "--set", "inner_steps=5",
                 "--set", "train.max_bad_steps=5", "--set", "tracking.log_model=false"])
    assert code == 1
    client, run = only_run(f"sqlite:///{out.resolve()}/mlflow.db")
    assert run.info.status == "FAILED" and run.data.tags["status"] == "diverged"
    assert run.data.metrics["skipped_steps"] >= 5
    assert {"results.json", "checkpoint.pt", "config.yaml"} <= {a.path for a in client.list_artifacts(run.info.run_id)}


def test_tracking_can_be_switched_off_and_a_dead_server_is_one_line(tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(["train", "sine_quick", *SMALL, "--set", f"output_dir={out}", "--set", "tracking.enabled=false"]) == 0
    assert not (out / "mlflow.db").exists()
    capsys.readouterr()
    code = main(["train", "sine_quick", *SMALL, "--set", f"output_dir={tmp_path / 'other'}",
                 "--tracking-uri", "http://127.0.0.1:9"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "no MLflow server answers at http://127.0.0.1:9" in err
    assert not (tmp_path / "other").exists()


FULL_DISK = """
import errno

from mlflow import MlflowClient

import pipeline.tracking


def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


MlflowClient.log_artifact = disk_full
pipeline.tracking.log_model = disk_full
"""


def test_a_full_disk_while_logging_artifacts_and_the_model_is_one_line_each(tmp_path):
    """The disk fills where the tracking process writes (its artifacts and the model): one line
    each in the run's output, the run completes with its MLflow record FINISHED."""
    out = tmp_path / "runs"
    done = run_patched(tmp_path, FULL_DISK, ["train", "sine_quick", *SMALL, "--set", f"output_dir={out}",
                                             "--set", "run_name=r"])
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stdout + done.stderr
    notes = [l for l in done.stdout.splitlines() if "No space left on device" in l]
    assert len(notes) == 2, done.stdout
    artifacts, model = sorted(notes)
    assert artifacts.startswith("mlflow: artifacts not logged (OSError: [Errno 28] No space left on device); "
                                f"results.json and checkpoint.pt are saved in {out / 'r'}; `metatrain resume")
    assert model.startswith("mlflow: the model could not be logged (OSError: [Errno 28]")
    results = json.loads((out / "r" / "results.json").read_text())
    assert results["status"] == "completed" and results["results"]["10"]["n"] == 40
    client, run = only_run(f"sqlite:///{out.resolve()}/mlflow.db")
    assert run.info.status == "FINISHED" and "eval_K10_mean" in run.data.metrics
