"""miniImageNet N-way K-shot tasks (Vinyals et al. 2016, the Ravi & Larochelle split): 84x84 RGB,
classes split 64/16/20 by the standard CSV files (filename,label)."""
from __future__ import annotations

import functools
from pathlib import Path

from tasks.errors import ConfigError
from tasks.images import FewShotImages, ImageSet, read_class_folders, read_packed, read_plain_class_folders


@functools.lru_cache(maxsize=2)
def load(root: str, split_dir: str, size: int, name: str, plain: bool = False) -> ImageSet:
    if root.endswith(".arrow"):
        return read_packed(root, name, size)
    if plain:
        return read_plain_class_folders(root, size)
    return read_class_folders(root, split_dir, size)


def miniimagenet(task, size: int) -> FewShotImages:
    """The miniImageNet task distribution of a task config, its images `size` pixels square."""
    if len(task.data) != 1:
        raise ConfigError(f"task.data: miniImageNet takes one folder (or packed .arrow file), got {task.data}")
    root = Path(task.data[0]).expanduser()
    # split "all" (another data set to evaluate on): a plain folder of class sub-folders will do
    plain = task.split == "all" and root.is_dir() and not (Path(task.split_dir or root) / "train.csv").is_file()
    images = load(str(root), task.split_dir, size, task.name, plain)
    group = images.group_of()
    splits = {s: sorted(c for c, g in group.items() if g == s) for s in ("train", "val", "test")}
    if task.split == "all":
        splits = {"train": [], "val": [], "test": sorted(group)}
    return FewShotImages(images, splits, task.ways, task.rotations, task.within_group,
                         task.device_cache_gb, test_rotations=task.test_rotations, augment=task.augment)
