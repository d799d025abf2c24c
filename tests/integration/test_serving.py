"""Serving adaptation for real: `metatrain export` writes an MLflow pyfunc model, `mlflow models
serve` (local env, 127.0.0.1, a free port) answers a posted few-shot episode with the same
predictions as the Python API on that episode."""
import base64
import contextlib

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


@contextlib.contextmanager
def serve(run_dir):
    """`metatrain serve RUN_DIR --port 0` in a child process, up to its ready curl line; Ctrl+C'd
    (and its scoring server with it) however the test ends."""
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "serve", str(run_dir), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("curl "):
                break
        else:
            raise AssertionError(f"serve exited {proc.wait()} before its curl line: {lines}")
        yield proc, lines
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()


def curl_and_stop(proc, lines):
    """Run the printed curl line as a user would, then Ctrl+C the server: (answer, serve's output)."""
    import json
    import shlex
    import signal
    import subprocess
    import urllib.request

    url = next(l for l in lines if l.startswith("serving ")).split(" at ")[1].split(" ")[0]
    answer = json.loads(subprocess.run(shlex.split(lines[-1]), capture_output=True, text=True, timeout=120,
                                       check=True).stdout)
    proc.send_signal(signal.SIGINT)
    rest = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, rest
    assert "stopping the model server" in rest
    try:  # the scoring server went with it
        urllib.request.urlopen(url + "/ping", timeout=5)
        raise AssertionError(f"{url} still answers after Ctrl+C")
    except OSError:
        pass
    return answer


def test_serve_answers_its_printed_request_with_a_real_test_task_and_stops_on_ctrl_c(tiny_runs, tmp_path):
    """`metatrain serve` exports the adapt model if needed, prints the URL and a curl line whose
    body is the run's own test task 0 (the pixels of the evaluation's first task: a real episode),
    and the served answer is the Python API's on that episode; Ctrl+C stops both processes."""
    import json
    import shutil

    from pipeline.serve.serving import predict_episode

    from helpers import eval_task

    for kind in ("image", "sine"):
        run_dir = tmp_path / kind
        shutil.copytree(tiny_runs[kind], run_dir, ignore=shutil.ignore_patterns("adapt_model"))
        with serve(run_dir) as (proc, lines):
            assert lines[0].startswith(f"exported {'3-way image' if kind == 'image' else 'regression'}"), lines
            assert lines[-1].endswith(f"-d @{run_dir / 'serve_request.json'}")
            answer = curl_and_stop(proc, lines)
        split = json.loads((run_dir / "serve_request.json").read_text())["dataframe_split"]
        episode = pd.DataFrame(split["data"], columns=split["columns"])
        expected = predict_episode(load_run(run_dir), episode)
        served = pd.DataFrame(answer["predictions"])
        task = eval_task(run_dir, 1)
        if kind == "image":
            assert list(served["label"]) == list(expected["label"])
            np.testing.assert_allclose(served["probability"], expected["probability"], rtol=1e-6)
            import io

            from PIL import Image
            first = np.asarray(Image.open(io.BytesIO(base64.b64decode(episode["image"][0]))), dtype=float) / 255
            np.testing.assert_allclose(1 - first, task["x_support"][0, 0].numpy(), atol=1 / 255)  # Omniglot: inverted
        else:
            np.testing.assert_allclose(served["y"], expected["y"], rtol=1e-6)
            assert (episode["role"] == "support").sum() == 5
        # a second serve reuses the exported model
        with serve(run_dir) as (proc, lines):
            assert lines[0].startswith("serving "), lines
            curl_and_stop(proc, lines)
