"""Using a meta-learned run: the Python API (`load_run(...).adapt(...).predict(...)`) reproduces the
run's own evaluation on the same task, `metatrain adapt` on files equals the API, and every bad
input is one line, exit 2, nothing written."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from pipeline.cli import main
from pipeline.config import ConfigError, load_config
from pipeline.serve.adaptation import load_run
from pipeline.shards.experiment import Experiment

from helpers import episode_files, eval_task, save_grey


@pytest.fixture
def runs(tiny_runs):
    return tiny_runs


def in_run_result(run_dir, shots, index=0):
    return json.loads((run_dir / "results.json").read_text())["results"][str(shots)]["per_task"][index]


@pytest.mark.parametrize("shots", [5, 10])
def test_api_adapting_an_eval_task_reproduces_the_in_run_evaluation(runs, shots):
    run = load_run(runs["sine"])
    task = eval_task(runs["sine"], shots)
    # default seed = eval.seed: the mask noise of evaluation task 0, so the whole task is reproduced
    pred = run.adapt(task["x_support"].numpy(), task["y_support"].numpy()[:, 0]).predict(task["x_query"].numpy())
    mse = float(np.mean((pred["y"].to_numpy() - task["y_query"].numpy()[:, 0]) ** 2))
    assert mse == pytest.approx(in_run_result(runs["sine"], shots), rel=1e-5)
    other_noise = run.adapt(task["x_support"].numpy(), task["y_support"].numpy()[:, 0], seed=7)
    assert not np.allclose(other_noise.predict(task["x_query"].numpy())["y"], pred["y"], rtol=1e-7)
    # adaptation changes the predictions, and more steps change them more
    task = eval_task(runs["sine"], shots)
    x, y, xq = task["x_support"].numpy(), task["y_support"].numpy()[:, 0], task["x_query"].numpy()
    p0, p2, p9 = (run.adapt(x, y, steps=s).predict(xq)["y"].to_numpy() for s in (0, 2, 9))
    assert np.abs(p2 - p0).max() > 1e-4 and np.abs(p9 - p0).max() > np.abs(p2 - p0).max()


def test_api_on_images_reproduces_the_in_run_accuracy(runs):
    run = load_run(runs["image"])
    assert run.classification and run.ways == 3 and (run.channels, run.image_size) == (1, 28)
    for shots in (1, 2):
        task = eval_task(runs["image"], shots)
        names = np.array(["a", "b", "c"])[task["y_support"].numpy()]  # any labels, numbered in sorted order
        pred = run.adapt(task["x_support"].numpy(), names).predict(task["x_query"].numpy())
        assert list(pred.columns) == ["label", "class_index", "probability"]
        accuracy = float((pred["class_index"].to_numpy() == task["y_query"].numpy()).mean())
        assert accuracy == pytest.approx(in_run_result(runs["image"], shots), abs=1e-6)
        # the query loss after adaptation equals the evaluation's for this task (Experiment.eval_shard)
        probs = run.adapt(task["x_support"].numpy(), names).probabilities(task["x_query"].numpy())
        loss = float(-probs[torch.arange(len(probs)), task["y_query"]].log().mean())
        cfg = load_config(runs["image"] / "config.yaml")
        _, curve = Experiment(cfg).eval_shard(run.params, [0], shots=shots, seed=cfg.eval.seed,
                                              inner_steps=cfg.eval.inner_steps, mask_mode=cfg.eval.mask)
        assert loss == pytest.approx(float(curve[0, -1]), rel=1e-5) and loss != pytest.approx(float(curve[0, 0]))
        assert (pred["label"] == np.array(["a", "b", "c"])[pred["class_index"]]).all()
        assert ((pred["probability"] > 1 / 3) & (pred["probability"] <= 1)).all()


def test_api_refuses_more_classes_than_ways_and_wrong_shapes(runs):
    run = load_run(runs["image"])
    x = np.zeros((4, 1, 28, 28), np.float32)
    with pytest.raises(ConfigError, match="4 classes, but the run's model is 3-way"):
        run.adapt(x, ["a", "b", "c", "d"])
    with pytest.raises(ConfigError, match=r"expected images of shape \(n, 1, 28, 28\)"):
        run.adapt(np.zeros((2, 1, 20, 20)), ["a", "b"])
    # fewer classes than ways: probabilities over the support's classes only
    pred = run.adapt(x[:2] + np.arange(2)[:, None, None, None], ["a", "b"]).predict(x)
    assert set(pred["label"]) <= {"a", "b"} and (pred["probability"] >= 0.5).all()


def test_cli_adapt_images_equals_the_api_and_writes_csv(runs, tmp_path, capsys):
    task, names = episode_files(tmp_path, runs["image"])
    out = tmp_path / "pred.csv"
    assert main(["adapt", str(runs["image"]), "--support", str(tmp_path / "support"), "--query",
                 str(tmp_path / "query"), "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "query" in printed.out and "probability" in printed.out and printed.err == ""  # 28x28 grey: no notes
    table = pd.read_csv(out)
    assert list(table.columns) == ["query", "label", "class_index", "probability"]
    assert [p.rsplit("/", 1)[1] for p in table["query"]] == [f"q{i}.png" for i in range(len(task["x_query"]))]
    api = load_run(runs["image"]).adapt(task["x_support"].numpy(), np.array(names)[task["y_support"].numpy()])
    expected = api.predict(task["x_query"].numpy())
    assert list(table["label"]) == list(expected["label"])
    np.testing.assert_allclose(table["probability"], expected["probability"], rtol=1e-6)


def test_cli_adapt_resizes_and_converts_with_a_note(runs, tmp_path, capsys):
    episode_files(tmp_path, runs["image"])
    big = tmp_path / "support" / "cat" / "big.png"
    Image.fromarray(np.full((50, 40), 200, np.uint8)).save(big)
    rgb = tmp_path / "query" / "colour.png"
    Image.fromarray(np.zeros((28, 28, 3), np.uint8)).save(rgb)
    assert main(["adapt", str(runs["image"]), "--support", str(tmp_path / "support"), "--query",
                 str(tmp_path / "query")]) == 0
    err = capsys.readouterr().err.splitlines()
    assert "note: 1 image(s) resized from 40x50 to 28x28 like the run's data" in err
    assert "note: 1 image(s) converted from colour to grey (the run's images have 1 channel)" in err


def test_cli_adapt_regression_equals_the_api(runs, tmp_path, capsys):
    task = eval_task(runs["sine"], 5)
    pd.DataFrame({"x": task["x_support"][:, 0], "y": task["y_support"][:, 0]}).to_csv(tmp_path / "s.csv", index=False)
    pd.DataFrame({"x": task["x_query"][:, 0]}).to_csv(tmp_path / "q.csv", index=False)
    out = tmp_path / "p.csv"
    assert main(["adapt", str(runs["sine"]), "--support", str(tmp_path / "s.csv"), "--query", str(tmp_path / "q.csv"),
                 "--steps", "3", "--out", str(out)]) == 0
    assert "with 3 inner step(s)" in capsys.readouterr().out
    table = pd.read_csv(out)
    expected = load_run(runs["sine"]).adapt(task["x_support"], task["y_support"], steps=3).predict(task["x_query"])
    np.testing.assert_allclose(table["y"], expected["y"], rtol=1e-6)
    np.testing.assert_allclose(table["x"], task["x_query"][:, 0].numpy(), rtol=1e-6)


def bad_image_inputs(tmp, run_dir):
    """(name, mutate files, args, message) of every bad image input."""
    return [
        ("more classes than ways", lambda: save_grey(tmp / "support" / "fox" / "0.png", np.zeros((28, 28), np.uint8)),
         [], "--support: 4 class folders, but the run's model is 3-way (its head has 3 outputs)"),
        ("empty class folder", lambda: [p.unlink() for p in (tmp / "support" / "dog").iterdir()], [],
         "--support: class folder " + str(tmp / "support" / "dog") + " is empty"),
        ("query not an image", lambda: (tmp / "query" / "notes.txt").write_text("hello"), [],
         "--query: " + str(tmp / "query" / "notes.txt") + " is not an image"),
        ("corrupt png", lambda: (tmp / "support" / "cat" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken"), [],
         "is not an image"),
        ("support is a csv", lambda: (tmp / "s.csv").write_text("x,y\n1,2\n"), ["--support", str(tmp / "s.csv")],
         "is not a folder of class sub-folders"),
        ("no class folders", lambda: (tmp / "flat").mkdir(), ["--support", str(tmp / "flat")],
         "has no class sub-folders"),
        ("missing query", lambda: None, ["--query", str(tmp / "nope")], "does not exist"),
        ("negative steps", lambda: None, ["--steps", "-1"], "--steps: must be >= 0"),
    ]


@pytest.mark.parametrize("case", range(8))
def test_bad_image_input_is_one_line_exit_2_nothing_written(runs, tmp_path, capsys, case):
    episode_files(tmp_path, runs["image"])
    name, mutate, args, message = bad_image_inputs(tmp_path, runs["image"])[case]
    mutate()
    out = tmp_path / "pred.csv"
    base = {"--support": str(tmp_path / "support"), "--query": str(tmp_path / "query")}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    argv = ["adapt", str(runs["image"]), *[x for kv in base.items() for x in kv], "--out", str(out)]
    assert main(argv) == 2, name
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("metatrain: error: ") and message in err, (name, err)
    assert not out.exists()


@pytest.mark.parametrize("support,query,message", [
    ("x,z\n1,2\n", "x\n1\n", "--support: {s} has no column 'y' (columns: x, z; expected x, y)"),
    ("x,y\n1,2\n", "u\n1\n", "--query: {q} has no column 'x' (columns: u; expected x)"),
    ("x,y\n1,two\n", "x\n1\n", "--support: {s} row 2 is not numeric in x, y"),
    ("x,y\n", "x\n1\n", "--support: {s} has no rows"),
])
def test_bad_regression_csv_is_one_line_exit_2(runs, tmp_path, capsys, support, query, message):
    s, q, out = tmp_path / "s.csv", tmp_path / "q.csv", tmp_path / "p.csv"
    s.write_text(support)
    q.write_text(query)
    assert main(["adapt", str(runs["sine"]), "--support", str(s), "--query", str(q), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message.format(s=s, q=q) in err, err
    assert not out.exists()


def test_existing_out_is_kept_and_bad_run_dir_is_one_line(runs, tmp_path, capsys):
    s, q, out = tmp_path / "s.csv", tmp_path / "q.csv", tmp_path / "p.csv"
    s.write_text("x,y\n1,2\n")
    q.write_text("x\n1\n")
    out.write_text("precious")
    assert main(["adapt", str(runs["sine"]), "--support", str(s), "--query", str(q), "--out", str(out)]) == 2
    assert "--out: " in capsys.readouterr().err and out.read_text() == "precious"
    assert main(["adapt", str(runs["sine"]), "--support", str(s), "--query", str(q), "--out", str(out), "--force"]) == 0
    assert out.read_text().startswith("x,y")
    assert main(["adapt", str(tmp_path), "--support", str(s), "--query", str(q)]) == 2
    assert "is not a run directory" in capsys.readouterr().err
    state = torch.load(runs["sine"] / "checkpoint.pt", weights_only=True)  # a whole checkpoint, wrong shapes
    state["params"]["l0.W"] = torch.zeros(2, 2)
    torch.save(state, tmp_path / "checkpoint.pt")
    (tmp_path / "config.yaml").write_text((runs["sine"] / "config.yaml").read_text())
    assert main(["adapt", str(tmp_path), "--support", str(s), "--query", str(q)]) == 2
    assert "do not fit the network" in capsys.readouterr().err
