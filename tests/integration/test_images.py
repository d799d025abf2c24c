"""Image few-shot tasks: the Omniglot loader on the real partial data (layout, transforms, splits,
errors), determinism across zip / folder / Arrow, the Arrow round trip, miniImageNet on a generated
folder, the shipped image configs, and a short conv meta-training run on real Omniglot characters
that learns (rotations and split membership on generated images, data-file errors: tests/unit)."""
import io
import zipfile

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from pipeline.cli import main
from pipeline.config import CONFIG_DIR, ConfigError, load_config
from pipeline.distributed.backends import LocalBackend
from pipeline.driver.trainer import Trainer
from tasks import make_distribution
from tasks.images import pack, read_alphabets, read_packed
from tasks.omniglot import split_classes
from tasks.sampling import sample_batch

from helpers import NEW_IN_SMALL2, OMNIGLOT, SMALL1_ALPHABETS, needs_omniglot, write_mini_folder


def zips():
    return [str(OMNIGLOT / "images_background_small1.zip"), str(OMNIGLOT / "images_background_small2.zip")]


def omniglot_cfg(data, **over):
    sets = {"task.name": "omniglot", "task.data": data, "task.rotations": True, "task.shots": 1, "task.query": 1,
            "eval.shots": [1], "task.split": "alphabet", "task.test_alphabets": NEW_IN_SMALL2}
    sets.update(over)
    return load_config(None, sets)


def tasks_of(dist, split="train", iteration=0, indices=range(6), shots=1, query=2):
    return sample_batch(dist, seed=5, split=split, iteration=iteration, indices=indices, shots=shots, query=query)


def same_tasks(a, b):
    return all(torch.equal(a[k], b[k]) for k in a if k != "noise")


# decodes the real Omniglot archives (thousands of images)
@needs_omniglot
def test_omniglot_layout_size_range_and_inversion():
    images = read_alphabets(zips(), 28)
    # 136 + 156 characters, of which Greek and Latin (50) are in both archives: read once
    assert len(images.class_index()) == 242 and len(images.images) == 242 * 20
    assert images.images.array.shape == (4840, 28, 28, 1) and images.images.array.dtype == np.uint8
    assert sorted(set(images.groups)) == sorted(set(SMALL1_ALPHABETS + NEW_IN_SMALL2))
    # the transform by hand for one file: 105x105 black-on-white PNG -> 28x28, inverted
    name = "images_background_small1/Balinese/character01/0108_01.png"
    with zipfile.ZipFile(zips()[0]) as zf, Image.open(io.BytesIO(zf.read(name))) as im:
        assert im.size == (105, 105)
        expected = 255 - np.asarray(im.convert("L").resize((28, 28), Image.LANCZOS))
    idx = images.class_index()["Balinese/character01"]
    assert any(np.array_equal(images.images.array[i, :, :, 0], expected) for i in idx)
    a = images.images.array.astype(float) / 255
    assert a.mean() < 0.2  # strokes are bright on a dark background
    assert np.median(a[:, 0, :, 0]) == 0 and a.max() == 1.0


# decodes the real Omniglot archives (thousands of images)
@needs_omniglot
def test_splits_share_no_class():
    images = read_alphabets(zips(), 28)
    cfg = omniglot_cfg(zips(), **{"task.split": "character", "task.train_characters": 150})
    chars = split_classes(images, cfg.task)
    assert len(chars["train"]) == 150 and len(chars["test"]) == 92 and not set(chars["train"]) & set(chars["test"])
    # the character split is fixed by split_seed, not by the run's seed
    assert split_classes(images, omniglot_cfg(zips(), **{"task.split": "character", "task.train_characters": 150,
                                                         "seed": 9}).task) == chars
    cfg = omniglot_cfg(zips(), **{"task.train_alphabets": SMALL1_ALPHABETS})
    dist = make_distribution(cfg.task)
    group = images.group_of()
    assert {group[c] for c, _ in dist.splits["train"]} == set(SMALL1_ALPHABETS)
    assert {group[c] for c, _ in dist.splits["test"]} == set(NEW_IN_SMALL2)
    assert len(dist.splits["train"]) == 4 * 136 and len(dist.splits["test"]) == 4 * 106
    assert not {c for c, _ in dist.splits["test"]} & {c for c, _ in dist.splits["train"]}
    for split in ("train", "test"):  # (which split a task draws from: test_tasks_draw_only_from_their_split)
        b = tasks_of(dist, split, indices=range(20))
        assert b["x_support"].shape == (20, 5, 1, 28, 28) and b["x_query"].shape == (20, 10, 1, 28, 28)


# decodes the real Omniglot archives (thousands of images)
@needs_omniglot
def test_omniglot_data_errors_are_one_line_and_name_the_key(tmp_path):
    bad = [({"task.test_alphabets": ["Klingon"]}, "task.test_alphabets: unknown alphabet 'Klingon'; allowed: Balinese"),
           ({"task.train_alphabets": ["Sanskrit"]}, "task.train_alphabets: 'Sanskrit' is also a test alphabet"),
           ({"task.split": "character"}, "task.train_characters: 1200 leaves no test characters among the 242"),
           ({"eval.shots": [20]}, "eval.shots: K=20 support + 1 query (task.query) images per class, but a test class "
                                  "has only 20 images"),
           ({"task.ways": 500}, "task.ways: 500-way tasks need 500 classes; the test split has 424")]
    for over, message in bad:
        with pytest.raises(ConfigError, match=None) as e:
            Trainer(omniglot_cfg(zips(), output_dir=str(tmp_path), backend="local", **over), tmp_path / "r")
        assert message in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "r").exists()
    for over, message in [({"task.data": []}, "task.data: omniglot needs the data's location"),
                          ({"task.data": [str(tmp_path / "nope.zip")]}, "nope.zip does not exist"),
                          ({"task.split": "drawer"}, "task.split: unknown split 'drawer'; allowed: "
                                                     "character, alphabet"),
                          ({"model.batch_norm": "running"}, "model.batch_norm: unknown choice 'running'; allowed: "
                                                            "batch, none")]:
        with pytest.raises(ConfigError) as e:
            omniglot_cfg(zips(), **over)
        assert message in str(e.value)


# decodes the real Omniglot archives (thousands of images)
@needs_omniglot
def test_sampling_is_deterministic_from_zip_folder_and_arrow(tmp_path):
    folder = tmp_path / "extracted"
    for z in zips():
        zipfile.ZipFile(z).extractall(folder)
    packed = tmp_path / "omniglot.arrow"
    assert main(["data", "pack", "omniglot", "--src", *zips(), "--out", str(packed)]) == 0
    sources = [zips(), [str(folder)], [str(packed)]]
    dists = [make_distribution(omniglot_cfg(d).task) for d in sources]
    for split in ("train", "test"):
        ref = tasks_of(dists[0], split, iteration=7)
        for d in dists[1:]:
            assert same_tasks(ref, tasks_of(d, split, iteration=7))
        # a task is the same whichever shard samples it
        assert same_tasks(tasks_of(dists[0], split, 7, indices=[3, 4, 5]),
                          {k: v[3:] for k, v in ref.items() if k != "noise"})
        assert not torch.equal(ref["x_support"], tasks_of(dists[0], split, iteration=8)["x_support"])
    # the query set does not move when K changes (one test set serves every K)
    k1, k5 = tasks_of(dists[0], "test", shots=1), tasks_of(dists[0], "test", shots=5)
    assert torch.equal(k1["x_query"], k5["x_query"]) and torch.equal(k1["x_support"][:, :1], k5["x_support"][:, :1])


# decodes the real Omniglot archives (thousands of images)
@needs_omniglot
def test_arrow_round_trip_is_exact_and_memory_mapped(tmp_path, capsys):
    images = read_alphabets(zips(), 28)
    out = tmp_path / "o.arrow"
    pack(images, out, "omniglot", log=lambda m: None)
    back = read_packed(str(out), "omniglot", 28)
    assert np.array_equal(back.images.array, images.images.array)
    assert list(back.classes) == list(images.classes) and list(back.groups) == list(images.groups)
    assert not back.images.array.flags.owndata and not back.images.array.flags.writeable  # a view of the map
    with pytest.raises(ConfigError, match="task.image_size: .* was packed at 28x28"):
        read_packed(str(out), "omniglot", 32)
    with pytest.raises(ConfigError, match="holds omniglot images, not miniimagenet"):
        read_packed(str(out), "miniimagenet", 28)
    assert main(["data", "pack", "omniglot", "--src", *zips(), "--out", str(out)]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert main(["data", "pack", "omniglot", "--src", *zips(), "--out", str(tmp_path / "o.parquet")]) == 2


# decodes 84x84 images and trains a conv4
def test_miniimagenet_folder_with_split_csvs(tmp_path):
    write_mini_folder(tmp_path / "mini")
    cfg = load_config(None, {"task.name": "miniimagenet", "task.data": [str(tmp_path / "mini")], "task.ways": 2,
                             "task.shots": 2, "task.query": 3, "eval.shots": [1, 2], "model.filters": 8,
                             "model.strided": False})
    dist = make_distribution(cfg.task)
    assert [len(dist.splits[s]) for s in ("train", "val", "test")] == [3, 1, 2]
    assert not set(dist.splits["train"]) & set(dist.splits["test"])
    b = tasks_of(dist, "test", shots=2, query=3, indices=range(4))
    assert b["x_support"].shape == (4, 4, 3, 84, 84) and b["x_query"].shape == (4, 6, 3, 84, 84)
    assert 0 <= b["x_support"].min() and b["x_support"].max() <= 1
    # images of one class share its colour: support and query of a label look alike
    s, q = b["x_support"][0].mean((2, 3)), b["x_query"][0].mean((2, 3))
    for label in range(2):
        assert torch.allclose(s[b["y_support"][0] == label].mean(0), q[b["y_query"][0] == label].mean(0), atol=0.05)
    out = tmp_path / "mini.arrow"
    assert main(["data", "pack", "miniimagenet", "--src", str(tmp_path / "mini"), "--out", str(out)]) == 0
    packed = make_distribution(load_config(None, {**{"task.name": "miniimagenet", "task.data": [str(out)],
                                                     "task.ways": 2}}).task)
    assert same_tasks(b, tasks_of(packed, "test", shots=2, query=3, indices=range(4)))
    # a conv4 (32 filters, stride 1 + max-pool) meta-gradient step runs on these tasks
    with Trainer(load_config(None, {**{k: v for k, v in [("task.name", "miniimagenet")]},
                                    "task.data": [str(tmp_path / "mini")], "task.ways": 2, "task.shots": 1,
                                    "task.query": 2, "eval.shots": [1], "eval.tasks": 4, "meta_batch_size": 2,
                                    "iterations": 2, "model.filters": 8, "model.strided": False, "backend": "local",
                                    "output_dir": str(tmp_path), "tracking.enabled": False}),
                 tmp_path / "m", log=lambda m: None) as t:
        res = t.train()
    assert res["status"] == "completed" and 0 <= res["results"]["1"]["mean"] <= 1


@needs_omniglot
@pytest.mark.parametrize("method", ["maml", "mtnet"])
def test_short_conv_meta_training_on_real_omniglot_beats_chance(tmp_path, method):
    cfg = omniglot_cfg(zips(), **{"task.train_alphabets": SMALL1_ALPHABETS, "method": method, "alpha": 0.4,
                                  "meta_batch_size": 16, "iterations": 250, "model.filters": 32,
                                  "eval.inner_steps": 3, "eval.tasks": 200, "train.log_every": 50,
                                  "train.tasks_per_vmap": 8, "backend": "local", "output_dir": str(tmp_path),
                                  "tracking.enabled": False, "train.plots": False})
    with Trainer(cfg, tmp_path / "r", log=lambda m: None) as t:
        untrained = t.evaluate()["1"]
        results = t.train()
    acc = results["results"]["1"]
    print(method, untrained, acc)
    # 5-way 1-shot on alphabets never seen in meta-training: chance is 0.2
    assert acc["mean"] - acc["ci95"] > 0.4 and acc["mean"] > untrained["mean"] + 0.15, (untrained, acc)


THESIS = {  # DESIGN section 4: meta-batch, alpha, inner steps in training and at test, ways, shots
    "omniglot_5w1s": (32, 0.4, 1, 3, 5, 1), "omniglot_20w1s": (16, 0.1, 5, 5, 20, 1),
    "miniimagenet_5w1s": (4, 0.01, 5, 10, 5, 1), "miniimagenet_5w5s": (4, 0.01, 5, 10, 5, 5)}


# decodes the real Omniglot archives (thousands of images)
@needs_omniglot
@pytest.mark.parametrize("name", sorted(THESIS))
def test_shipped_image_configs_hold_the_thesis_settings(tmp_path, name):
    if name.startswith("mini"):
        write_mini_folder(tmp_path / "mini", classes_per_split=(("train", 5), ("val", 1), ("test", 5)), per_class=21)
        data = {"task.data": [str(tmp_path / "mini")]}
    else:
        data = {"task.data": zips(), "task.train_characters": 150}
    cfg = load_config(name, data)
    assert (cfg.meta_batch_size, cfg.alpha, cfg.inner_steps, cfg.eval.inner_steps, cfg.task.ways,
            cfg.task.shots) == THESIS[name]
    assert cfg.iterations == 60000 and cfg.eval.tasks == 600 and cfg.eval.shots == [cfg.task.shots]
    assert cfg.model.batch_norm == "batch" and cfg.model.strided == name.startswith("omniglot")
    assert cfg.model.filters == (64 if name.startswith("omniglot") else 32)
    assert cfg.task.rotations == name.startswith("omniglot") and cfg.ray.gpus_per_worker == 1
    methods = yaml.safe_load((CONFIG_DIR / f"{name}_methods.yaml").read_text())
    assert methods["base"] == name and methods["space"]["method"]["grid"] == ["maml", "metasgd", "tnet", "mtnet", "mc2"]
    Trainer(cfg, tmp_path / "r", backend=LocalBackend(cfg, None))  # the data can serve every task the run asks for
