"""Serving adaptation for real: `metatrain export` writes an MLflow pyfunc model, `mlflow models
serve` (local env, 127.0.0.1, a free port) answers a posted few-shot episode with the same
predictions as the Python API on that episode."""
import base64

import numpy as np
import pandas as pd

from pipeline.cli import main
from pipeline.serve.adaptation import load_run
from pipeline.serve.model_server import ModelServer as Server

from helpers import episode_files


def image_episode(tmp_path, run_dir):
    """Eval task 0 of the run as files, then as the served episode (base64 PNG bytes of those files)."""
    task, names = episode_files(tmp_path, run_dir)
    rows = [("support", folder.name, base64.b64encode(f.read_bytes()).decode())
            for folder in sorted((tmp_path / "support").iterdir()) for f in sorted(folder.iterdir())]
    queries = sorted((tmp_path / "query").iterdir())
    rows += [("query", None, base64.b64encode(f.read_bytes()).decode()) for f in queries]
    return pd.DataFrame(rows, columns=["role", "label", "image"]), task, names


def test_served_image_model_answers_an_episode_like_the_api(tiny_runs, tmp_path, capsys):
    run_dir, model = tiny_runs["image"], tmp_path / "model"
    assert main(["export", str(run_dir), "--out", str(model)]) == 0
    assert "mlflow models serve -m" in capsys.readouterr().out
    assert (model / "MLmodel").is_file() and (model / "artifacts" / "run" / "checkpoint.pt").is_file()
    assert main(["export", str(run_dir), "--out", str(model)]) == 2  # never replaces a model
    assert "exists" in capsys.readouterr().err

    episode, task, names = image_episode(tmp_path, run_dir)
    expected = load_run(run_dir).adapt(task["x_support"].numpy(),
                                       np.array(names)[task["y_support"].numpy()]).predict(task["x_query"].numpy())
    with Server(model, tmp_path / "serve.log") as server:
        print(f"server up after {server.wait():.1f} s")
        status, body = server.post(episode)
        assert status == 200, body
        served = pd.DataFrame(body["predictions"])
        assert list(served["label"]) == list(expected["label"])
        np.testing.assert_allclose(served["probability"], expected["probability"], rtol=1e-6)
        assert (served["class_index"] == expected["class_index"]).all()
        # the steps param overrides eval.inner_steps
        status, body = server.post(episode, {"steps": 0})
        assert status == 200, body
        zero = load_run(run_dir).adapt(task["x_support"].numpy(), np.array(names)[task["y_support"].numpy()],
                                       steps=0).predict(task["x_query"].numpy())
        np.testing.assert_allclose(pd.DataFrame(body["predictions"])["probability"], zero["probability"], rtol=1e-6)
        assert not np.allclose(zero["probability"], expected["probability"], rtol=1e-4)
        # a bad episode is refused with our one-line reason
        status, body = server.post(episode.assign(image="not base64!"))
        assert status >= 400 and "is not base64" in body


def test_served_sine_model_answers_an_episode_like_the_api(tiny_runs, tmp_path):
    run_dir, model = tiny_runs["sine"], tmp_path / "model"
    assert main(["export", str(run_dir), "--out", str(model)]) == 0
    xs, xq = np.linspace(-4.5, 4.5, 8), np.array([-3.0, -0.5, 1.0, 4.0])
    ys = 3 * np.sin(1.1 * xs + 1.0)
    episode = pd.DataFrame({"role": ["support"] * 8 + ["query"] * 4, "x": np.concatenate([xs, xq]),
                            "y": np.concatenate([ys, np.full(4, np.nan)])})
    expected = load_run(run_dir).adapt(xs, ys).predict(xq)
    with Server(model, tmp_path / "serve.log") as server:
        server.wait()
        status, body = server.post(episode)
    assert status == 200, body
    np.testing.assert_allclose(pd.DataFrame(body["predictions"])["y"], expected["y"], rtol=1e-6)


def test_export_refuses_unfinished_runs_in_one_line(tiny_runs, tmp_path, capsys):
    run = tmp_path / "unfinished"
    run.mkdir()
    for name in ("config.yaml", "checkpoint.pt"):
        (run / name).write_bytes((tiny_runs["sine"] / name).read_bytes())
    assert main(["export", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has not finished (no results.json)" in err
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.pt", "config.yaml"]
