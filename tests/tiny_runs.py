"""Tiny finished runs for the adapt / eval --data / serving tests: a sine run and an Omniglot-layout
image run on a generated image set, each trained for a few iterations in process (no Ray, no MLflow)."""
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.cli import main

ALPHABETS = ("Alpha", "Beta", "Gamma", "Delta")
TEST_ALPHABETS = ("Gamma", "Delta")


def character_image(alphabet: int, character: int, drawer: int, size: int = 36) -> np.ndarray:
    """Dark strokes on white (the raw Omniglot convention): a character's fixed bars, jittered per drawer."""
    rng = np.random.default_rng([alphabet, character])
    jitter = np.random.default_rng([alphabet, character, drawer])
    img = np.full((size, size), 255, np.uint8)
    for _ in range(3):
        r, c = rng.integers(2, size - 10, 2) + jitter.integers(-1, 2, 2)
        h, w = (rng.integers(2, 9, 2))
        img[r:r + h, c:c + w] = 0
    return img


def omniglot_layout(root: Path, alphabets=ALPHABETS, characters: int = 4, drawers: int = 5, size: int = 36) -> Path:
    """<root>/<Alphabet>/characterNN/<drawer>.png"""
    for a, name in enumerate(alphabets):
        for c in range(characters):
            folder = root / name / f"character{c + 1:02d}"
            folder.mkdir(parents=True)
            for d in range(drawers):
                Image.fromarray(character_image(a, c, d, size)).save(folder / f"{c}_{d:02d}.png")
    return root


def train(out: Path, name: str, config: str, sets: dict) -> Path:
    args = ["train", config, "--local", "--set", f"output_dir={out}", "--set", f"run_name={name}",
            "--set", "tracking.enabled=false"]
    for k, v in sets.items():
        args += ["--set", f"{k}={v}"]
    assert main(args) == 0
    return out / name


def sine_run(out: Path) -> Path:
    return train(out, "sine", "sine_quick", {"iterations": 20, "meta_batch_size": 5, "model.hidden": "[20,20]",
                                              "eval.tasks": 12, "eval.shots": "[5,10]", "eval.inner_steps": 2,
                                              "train.log_every": 10, "eval.batch_size": 5})


def image_run(out: Path, data: Path, name: str = "omni", **extra) -> Path:
    sets = {"method": "mtnet", "alpha": 0.4, "task.name": "omniglot", "task.data": f"[{data}]", "task.ways": 3,
            "task.shots": 1, "task.query": 2, "task.split": "alphabet",
            "task.test_alphabets": f"[{','.join(TEST_ALPHABETS)}]", "model.filters": 4, "iterations": 4,
            "meta_batch_size": 2, "eval.tasks": 12, "eval.shots": "[1,2]", "eval.inner_steps": 2,
            "eval.batch_size": 5, "train.log_every": 2, **extra}
    return train(out, name, "sine_quick", sets)
