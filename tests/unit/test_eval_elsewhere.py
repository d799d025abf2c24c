"""`metatrain eval RUN_DIR --data ...`: the run's own data reproduces the in-run evaluation exactly,
another data set is evaluated on all its classes, --ways / --query / --within-group change the
protocol (and say so), and the within-group protocol draws every class of a task from one group."""
import json

import numpy as np
import pytest

from pipeline.cli import main
from tasks.images import ArrayImages, FewShotImages, ImageSet
from tasks.sampling import sample_batch

from tiny_runs import image_run, omniglot_layout


@pytest.fixture(scope="module")
def runs(tiny_runs, tmp_path_factory):
    root = tmp_path_factory.mktemp("elsewhere")
    other = omniglot_layout(root / "other_set", alphabets=("Epsilon", "Zeta", "Eta"), characters=3, drawers=4)
    small = omniglot_layout(root / "small_groups", alphabets=("Theta", "Iota"), characters=2, drawers=4)
    return {**tiny_runs, "other": other, "small": small}


def per_task(path):
    return {k: r["per_task"] for k, r in json.loads(path.read_text())["results"].items()}


def test_own_data_and_seed_reproduce_the_in_run_evaluation(runs, capsys):
    run = runs["image"]
    assert main(["eval", str(run), "--local", "--data", str(runs["data"]), "--seed", "0"]) == 0
    out = capsys.readouterr().out
    assert ("(the run's own data and split)" in out
            and "3-way, 2 query image(s) per class, classes from any group" in out)
    ev = json.loads((run / "eval-seed0-tasks12.json").read_text())
    assert ev["seed"] == 0 and ev["task"]["split"] == "alphabet" and ev["data"].startswith(str(runs["data"]))
    in_run, again = per_task(run / "results.json"), per_task(run / "eval-seed0-tasks12.json")
    assert set(in_run) == {"1", "2"} and len(in_run["1"]) == 12
    for k in in_run:
        np.testing.assert_allclose(again[k], in_run[k], atol=1e-6, rtol=0)
    assert 0 < np.mean(in_run["1"]) < 1  # a real accuracy, not a constant

    run = runs["sine"]
    assert main(["eval", str(run), "--local", "--data", "sinusoid"]) == 0
    assert "sinusoid (the run's own task)" in capsys.readouterr().out
    in_run, again = per_task(run / "results.json"), per_task(run / "eval-seed0-tasks12.json")
    for k in ("5", "10"):
        np.testing.assert_allclose(again[k], in_run[k], atol=1e-6, rtol=1e-6)


def test_another_data_set_uses_every_class_and_says_so(runs, capsys):
    run = runs["image"]
    assert main(["eval", str(run), "--local", "--data", str(runs["other"]), "--tasks", "10", "--seed", "4"]) == 0
    out = capsys.readouterr().out
    assert f"data: {runs['other']} (every class of it (another data set))" in out and "seed 4" in out
    ev = json.loads((run / "eval-other_set-seed4-tasks10.json").read_text())
    assert ev["task"]["split"] == "all" and ev["task"]["data"] == [str(runs["other"])]
    assert ev["results"]["1"]["n"] == 10 and ev["seed"] == 4
    own = json.loads((run / "results.json").read_text())["results"]["1"]["per_task"][:10]
    assert ev["results"]["1"]["per_task"] != own

    # regression: another task family
    assert main(["eval", str(runs["sine"]), "--local", "--data", "polynomial:1", "--query", "5", "--tasks", "8"]) == 0
    assert "polynomial of order 1" in capsys.readouterr().out
    ev = json.loads((runs["sine"] / "eval-polynomial1-q5-seed0-tasks8.json").read_text())
    assert ev["task"]["name"] == "polynomial" and ev["task"]["order"] == 1 and ev["task"]["query"] == 5


def test_fewer_ways_and_within_group_protocols(runs, capsys):
    run = runs["image"]
    assert main(["eval", str(run), "--local", "--ways", "2", "--within-group", "--tasks", "8"]) == 0
    out = capsys.readouterr().out
    assert "2-way, 2 query image(s) per class, one group (alphabet) per task" in out
    ev = json.loads((run / "eval-2way-within-group-seed0-tasks8.json").read_text())
    assert ev["task"]["ways"] == 2 and ev["task"]["within_group"] is True and ev["results"]["1"]["n"] == 8
    assert set(np.round(np.array(ev["results"]["1"]["per_task"]) * 4).astype(int)) <= set(range(5))  # 4 queries


def grouped_images(groups=("A", "B", "C"), per_group=(4, 6, 2)):
    """Every image's pixels equal its group's number: a task's group is readable from its pixels."""
    images, classes, group_of = [], [], []
    for g, (name, n) in enumerate(zip(groups, per_group)):
        for c in range(n):
            for _ in range(3):
                images.append(np.full((8, 8, 1), 10 * (g + 1), np.uint8))
                classes.append(f"{name}/c{c}")
                group_of.append(name)
    return ImageSet(ArrayImages(np.stack(images)), np.array(classes), np.array(group_of), (8, 8, 1))


@pytest.mark.parametrize("rotations", [False, True])
def test_within_group_draws_every_class_of_a_task_from_one_group(rotations):
    images = grouped_images()
    names = sorted(set(images.classes.tolist()))
    dist = FewShotImages(images, {"train": names, "test": names}, ways=3, rotations=rotations, within_group=True)
    dist.check(split="test", shots=1, query=1)
    batch = sample_batch(dist, seed=1, split="test", iteration=0, indices=range(200), shots=1, query=1)
    groups = np.round(batch["x_support"].numpy().reshape(200, 3, -1).mean(-1) * 255 / 10).astype(int)
    assert (groups == groups[:, :1]).all()  # one group per task
    seen = set(groups[:, 0].tolist())
    # without rotations group C (2 classes) cannot hold a 3-way task; with them it has 8 classes
    assert seen == ({1, 2, 3} if rotations else {1, 2})
    # a group uniformly among those that can hold a task (not by size: group B has 1.5x A's classes):
    # 200 draws, each count within 3 binomial sigmas of 200 / groups
    counts = np.bincount(groups[:, 0], minlength=4)[1:]
    p = 1 / len(seen)
    assert all(abs(counts[g - 1] - 200 * p) <= 3 * np.sqrt(200 * p * (1 - p)) for g in seen), counts
    mixed = FewShotImages(images, {"train": names, "test": names}, ways=3, rotations=rotations)
    batch = sample_batch(mixed, seed=1, split="test", iteration=0, indices=range(200), shots=1, query=1)
    groups = np.round(batch["x_support"].numpy().reshape(200, 3, -1).mean(-1) * 255 / 10).astype(int)
    assert (groups != groups[:, :1]).any(axis=1).mean() > 0.3  # the usual protocol mixes groups


def test_within_group_trains_too(runs, tmp_path):
    run = image_run(tmp_path, runs["data"], name="grouped", **{"task.within_group": "true", "iterations": 2})
    results = json.loads((run / "results.json").read_text())
    assert results["status"] == "completed" and results["results"]["1"]["n"] == 12


@pytest.mark.parametrize("which,args,message", [
    ("image", ["--data", "/no/such/omniglot"], "--data: /no/such/omniglot does not exist"),
    ("image", ["--ways", "5"], "--ways: must be between 2 and the run's 3 (the head's outputs), got 5"),
    ("image", ["--query", "0"], "--query: must be >= 1"),
    ("image", ["--data", "{small}", "--within-group"], "task.within_group: 3-way tasks within one group (alphabet) "
                                                       "need a group of 3 classes; "
                                                       "the largest in the test split has 2"),
    ("image", ["--data", "{small}", "--query", "4"], "eval.shots: K=2 support + 4 query (task.query) images per class"),
    ("sine", ["--within-group"], "--within-group: only image tasks have groups"),
    ("sine", ["--data", "cosine"], "--data: a regression run is evaluated on a task, one of sinusoid, polynomial"),
    ("sine", ["--data", "polynomial:5"], "task.order: polynomial order must be one of 0, 1, 2"),
    ("sine", ["--ways", "2"], "--ways: only image classification runs have ways"),
])
def test_bad_eval_input_is_one_line_exit_2_and_writes_nothing(runs, capsys, which, args, message):
    run = runs[which]
    before = sorted(p.name for p in run.iterdir())
    args = [a.format(small=runs["small"]) for a in args]
    assert main(["eval", str(run), "--local", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("metatrain: error: ") and message in err, err
    assert sorted(p.name for p in run.iterdir()) == before
