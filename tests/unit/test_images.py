"""Image few-shot tasks on small generated data: rotations, tasks drawn from their split only,
miniImageNet folder errors, batch norm as an explicit choice, and every damaged data file one line
naming it (the real Omniglot data, the Arrow round trip and training runs: tests/integration)."""
import math
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.cli import main
from pipeline.config import ConfigError, load_config
from tasks import make_distribution
from tasks.images import ArrayImages, FewShotImages, ImageSet, pack, read_alphabets, read_class_folders, read_packed
from tasks.sampling import DATA_STREAM, Streams, sample_batch

from helpers import write_mini_folder


def test_rotations_are_extra_classes_and_rotate_every_image():
    # one bright pixel at row 0, column 1: each quarter turn moves it to a known place
    base = np.zeros((8, 8, 8, 1), np.uint8)
    base[:, 0, 1, 0] = 255
    classes = np.repeat([f"A/c{i}" for i in range(4)], 2)
    images = ImageSet(ArrayImages(base), classes, np.repeat("A", 8), (8, 8, 1))
    dist = FewShotImages(images, {"train": ["A/c0", "A/c1", "A/c2", "A/c3"]}, ways=4, rotations=True)
    assert len(dist.splits["train"]) == 16  # 4 characters x 4 rotations
    where = {0: (0, 1), 1: (6, 0), 2: (7, 6), 3: (1, 7)}  # np.rot90 counter-clockwise quarter turns
    seen = set()
    batch = dist.sample(Streams(0, "train", 0, range(40), DATA_STREAM), shots=1, query=1)
    # the sampler's first draw: one uniform per class of the split; a task's classes are the 4 smallest
    keys = Streams(0, "train", 0, range(40), DATA_STREAM).random(16)
    for i in range(40):
        chosen = np.argsort(keys[i])[:4]
        task = {k: v[i] for k, v in batch.items()}
        for label, c in enumerate(chosen):
            k = dist.splits["train"][c][1]
            seen.add(k)
            for x in (task["x_support"][task["y_support"] == label], task["x_query"][task["y_query"] == label]):
                assert x.shape == (1, 1, 8, 8) and x[0, 0][where[k]] == 1.0 and x.sum() == 1.0
    assert seen == {0, 1, 2, 3}


def test_tasks_draw_only_from_their_split():
    # every image of class c is the constant 10 * c: a sampled pixel names its class
    classes = np.repeat([f"A/c{i}" for i in range(10)], 3)
    pixels = np.repeat(np.arange(10, dtype=np.uint8) * 10, 3)[:, None, None, None] * np.ones((1, 8, 8, 1), np.uint8)
    images = ImageSet(ArrayImages(pixels), classes, np.repeat("A", 30), (8, 8, 1))
    splits = {"train": [f"A/c{i}" for i in range(6)], "test": [f"A/c{i}" for i in range(6, 10)]}
    dist = FewShotImages(images, splits, ways=3, rotations=False)
    for split, allowed in (("train", set(range(6))), ("test", set(range(6, 10)))):
        b = sample_batch(dist, seed=0, split=split, iteration=0, indices=range(50), shots=1, query=2)
        seen = {round(v * 25.5) for v in torch.cat([b["x_support"], b["x_query"]], 1).flatten().unique().tolist()}
        assert seen <= allowed and len(seen) == len(allowed), (split, seen)
        # each label is one class throughout a task: support and query of a label share its value
        for t in range(50):
            for label in range(3):
                vals = torch.cat([b["x_support"][t][b["y_support"][t] == label],
                                  b["x_query"][t][b["y_query"][t] == label]]).unique()
                assert len(vals) == 1


def test_miniimagenet_errors_name_the_key(tmp_path):
    write_mini_folder(tmp_path / "mini")
    (tmp_path / "mini" / "val.csv").unlink()
    with pytest.raises(ConfigError, match=r"task.split_dir: no val.csv in"):
        read_class_folders(str(tmp_path / "mini"), "", 84)


def test_batch_norm_is_an_explicit_choice():
    from pipeline.shards.experiment import Experiment

    for choice, has_bn in (("batch", True), ("none", False)):
        cfg = load_config(None, {"task.name": "synthetic_images", "task.shots": 1, "task.query": 2,
                                 "eval.shots": [1], "model.filters": 8, "model.batch_norm": choice})
        exp = Experiment(cfg)
        params = exp.init_params()
        assert any(k.endswith("bn_scale") for k in params) == has_bn
        r = exp.train_shard(params, 0, range(3))
        assert math.isfinite(r.loss_sum) and set(r.grads) == set(params)


# -- every data-file failure is one line naming the file ---------------------------------------
def write_alphabet_folder(root, alphabets=("A", "B"), characters=3, drawers=4):
    """A tiny Omniglot-shaped folder: <root>/<alphabet>/<characterNN>/<drawer>.png."""
    rng = np.random.default_rng(0)
    for a in alphabets:
        for c in range(characters):
            (root / a / f"character{c:02d}").mkdir(parents=True)
            for d in range(drawers):
                pixels = (rng.random((20, 20)) > 0.5).astype(np.uint8) * 255
                Image.fromarray(pixels).save(root / a / f"character{c:02d}" / f"{d:02d}.png")
    return root


def one_line_error(fn, *args):
    with pytest.raises(ConfigError) as e:
        fn(*args)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("task."), msg
    return msg


def test_truncated_and_corrupt_zips_are_one_line_naming_the_file(tmp_path):
    folder = write_alphabet_folder(tmp_path / "omni")
    archive = tmp_path / "omni.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(folder.rglob("*.png")):
            zf.write(p, str(p.relative_to(tmp_path)))
    assert len(read_alphabets([str(archive)], 16).images) == 2 * 3 * 4  # the intact archive reads
    data = archive.read_bytes()
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(data[: len(data) // 2])
    msg = one_line_error(read_alphabets, [str(truncated)], 16)
    assert f"task.data: {truncated} is not a readable zip archive, truncated or corrupt" in msg
    # intact directory, one member's compressed bytes overwritten: that member is named
    with zipfile.ZipFile(archive) as zf:
        info = zf.infolist()[3]
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    corrupt = tmp_path / "corrupt.zip"
    corrupt.write_bytes(data[:start] + bytes(b ^ 0xFF for b in data[start:start + 20]) + data[start + 20:])
    msg = one_line_error(read_alphabets, [str(corrupt)], 16)
    assert f"task.data: {corrupt}:{info.filename} " in msg, msg
    # the CLI: one line, exit 2, nothing written
    out = tmp_path / "o.arrow"
    assert main(["data", "pack", "omniglot", "--src", str(truncated), "--out", str(out)]) == 2
    assert not out.exists()


def test_a_garbage_png_is_one_line_naming_the_file(tmp_path, capsys):
    folder = write_alphabet_folder(tmp_path / "omni")
    bad = folder / "B" / "character01" / "02.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    msg = one_line_error(read_alphabets, [str(folder)], 16)
    assert msg.startswith(f"task.data: {bad} is not a readable image (")
    # miniImageNet images are decoded on first use (in whichever process samples them)
    write_mini_folder(tmp_path / "mini")
    bad = sorted((tmp_path / "mini").rglob("*.jpg"))[0]
    bad.write_bytes(b"not a jpeg")
    msg = one_line_error(lambda: make_distribution(load_config(None, {
        "task.name": "miniimagenet", "task.data": [str(tmp_path / "mini")], "task.ways": 2}).task).images.images.take(
        np.arange(6)))
    assert msg.startswith(f"task.data: {bad} is not a readable image (")
    assert main(["data", "pack", "miniimagenet", "--src", str(tmp_path / "mini"),
                 "--out", str(tmp_path / "m.arrow")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"metatrain: error: task.data: {bad} is not a readable image" in err


@pytest.mark.parametrize("how", ["garbage", "truncated"])
def test_a_damaged_arrow_file_is_one_line_naming_the_file(tmp_path, capsys, how):
    images = read_alphabets([str(write_alphabet_folder(tmp_path / "omni"))], 16)
    good = pack(images, tmp_path / "o.arrow", "omniglot", log=lambda m: None)
    bad = tmp_path / "bad.arrow"
    data = good.read_bytes()
    bad.write_bytes(b"ARROW1\x00\x00" + b"\x17garbage" * 200 if how == "garbage" else data[: len(data) // 2])
    msg = one_line_error(read_packed, str(bad), "omniglot", 16)
    assert msg.startswith(f"task.data: {bad} is not a readable Arrow file, truncated or corrupt (")
    code = main(["train", "sine_quick", "--local", "--set", "task.name=omniglot", "--set", f"task.data=[{bad}]",
                 "--set", "task.image_size=16", "--set", f"output_dir={tmp_path / 'runs'}",
                 "--set", "tracking.enabled=false"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and f"task.data: {bad} is not a readable Arrow file" in err
    assert not (tmp_path / "runs").exists()
