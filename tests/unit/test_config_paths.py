"""A run's config.yaml names data beside the repository relative to it (no machine's directory
layout in run directories), and loads from any working directory to the same files."""
import os

import yaml

from pipeline.config import REPOSITORY, SHARED, load_config, save_config

from helpers import OMNIGLOT, needs_omniglot


@needs_omniglot
def test_saved_data_paths_are_relative_to_the_repository_and_load_from_anywhere(tmp_path, monkeypatch):
    data = (OMNIGLOT / "images_background_small1.zip").resolve()
    cfg = load_config("omniglot_5w1s_cpu", [f"task.data=[{data}]"])
    assert cfg.task.data == [str(data)]  # pinned absolute for workers and trials
    save_config(cfg, tmp_path / "config.yaml")
    written = yaml.safe_load((tmp_path / "config.yaml").read_text())["task"]["data"]
    if SHARED in data.parents:  # the data beside the repository (../shared/data)
        assert written == [os.path.relpath(data, REPOSITORY)] and written[0].startswith("../")
    monkeypatch.chdir(tmp_path)  # elsewhere: a relative path is taken from the repository root
    assert load_config(tmp_path / "config.yaml").task.data == [str(data)]


@needs_omniglot
def test_paths_elsewhere_are_kept_as_they_are(tmp_path):
    data = tmp_path / "mine.zip"
    data.write_bytes((OMNIGLOT / "images_background_small1.zip").read_bytes())
    cfg = load_config("omniglot_5w1s_cpu", [f"task.data=[{data}]"])
    save_config(cfg, tmp_path / "config.yaml")
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["task"]["data"] == [str(data.resolve())]
