"""Omniglot N-way K-shot tasks (Lake et al. 2015): 28x28 grey characters, inverted so strokes are
bright, 90-degree rotations as extra classes (task.rotations), split by character (MAML's 1200 for
training, the rest for testing) or by alphabet."""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from tasks.errors import ConfigError
from tasks.images import FewShotImages, ImageSet, read_alphabets, read_packed


@functools.lru_cache(maxsize=4)
def load(data: tuple[str, ...], size: int, name: str) -> ImageSet:
    """Images of the given roots (folders / zips) or of one packed .arrow file (packed as data set
    `name`), read once per process."""
    if len(data) == 1 and data[0].endswith(".arrow"):
        return read_packed(data[0], name, size)
    if any(d.endswith(".arrow") for d in data):
        raise ConfigError("task.data: a packed .arrow file is the only entry of task.data")
    return read_alphabets(list(data), size, invert=True)


def split_classes(images: ImageSet, task) -> dict[str, list[str]]:
    """Character names of the train and test splits; no character (hence no rotation of it) is in both."""
    characters = sorted(images.class_index())
    alphabet = images.group_of()
    if task.split == "all":  # another data set to evaluate on: every character is a test character
        return {"train": [], "test": characters}
    if task.split == "character":
        if task.train_characters >= len(characters):
            raise ConfigError(f"task.train_characters: {task.train_characters} leaves no test characters among the "
                              f"{len(characters)} in {images.source}")
        perm = np.random.default_rng(task.split_seed).permutation(len(characters))
        train = sorted(characters[i] for i in perm[:task.train_characters])
        return {"train": train, "test": sorted(set(characters) - set(train))}
    alphabets = sorted(set(alphabet.values()))
    for key in ("test_alphabets", "train_alphabets"):
        unknown = [a for a in getattr(task, key) if a not in alphabets]
        if unknown:
            raise ConfigError(f"task.{key}: unknown alphabet {unknown[0]!r}; allowed: {', '.join(alphabets)}")
    if not task.test_alphabets:
        raise ConfigError("task.test_alphabets: the alphabet split needs test alphabets; "
                          f"allowed: {', '.join(alphabets)}")
    both = set(task.test_alphabets) & set(task.train_alphabets)
    if both:
        raise ConfigError(f"task.train_alphabets: {sorted(both)[0]!r} is also a test alphabet")
    train_alphabets = set(task.train_alphabets or [a for a in alphabets if a not in task.test_alphabets])
    return {"train": [c for c in characters if alphabet[c] in train_alphabets],
            "test": [c for c in characters if alphabet[c] in task.test_alphabets]}


def omniglot(task, size: int) -> FewShotImages:
    """The Omniglot task distribution of a task config, its images `size` pixels square."""
    images = load(tuple(str(Path(d).expanduser()) for d in task.data), size, task.name)
    return FewShotImages(images, split_classes(images, task), task.ways, task.rotations, task.within_group,
                         task.device_cache_gb, test_rotations=task.test_rotations, augment=task.augment)
