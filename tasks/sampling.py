"""The one task-sampling path: every task is a pure function of (seed, split, iteration, index).

Whichever process samples task `index` of meta-iteration `iteration`, it gets the same support and
query points and the same Gumbel noise, so results do not depend on how tasks are sharded.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

SPLITS = {"train": 0, "val": 1, "test": 2}
DATA_STREAM, NOISE_STREAM = 0, 1


def task_rng(seed: int, split: str, iteration: int, index: int, stream: int) -> np.random.Generator:
    """Independent generator for one task; `stream` separates the data from the mask noise so the
    noise of a task does not shift when its number of support points changes."""
    return np.random.default_rng([seed, SPLITS[split], iteration, index, stream])


def logistic_noise(rng: np.random.Generator, shape: Sequence[int]) -> np.ndarray:
    """g1 - g2 for g1, g2 ~ Gumbel(0, 1): the noise of the two-logit Gumbel-softmax [zeta, 0]."""
    g = rng.gumbel(size=(2, *shape))
    return g[0] - g[1]


def sample_batch(
    distribution,
    *,
    seed: int,
    split: str,
    iteration: int,
    indices: Sequence[int],
    shots: int,
    query: int,
    noise_shapes: Mapping[str, tuple[int, ...]] | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> dict:
    """Sample tasks `indices` and stack them: {"x_support": (B, K, ...), ..., "noise": {name: (B, ...)}}."""
    tasks = []
    for index in indices:
        task = distribution.sample(task_rng(seed, split, iteration, index, DATA_STREAM), shots, query, split)
        noise_rng = task_rng(seed, split, iteration, index, NOISE_STREAM)
        task["noise"] = {k: logistic_noise(noise_rng, s) for k, s in sorted((noise_shapes or {}).items())}
        tasks.append(task)
    return _stack(tasks, dtype, device)


def _stack(tasks: list[dict], dtype, device) -> dict:
    out = {}
    for key, value in tasks[0].items():
        if isinstance(value, dict):
            out[key] = _stack([t[key] for t in tasks], dtype, device)
        else:
            arr = np.stack([t[key] for t in tasks])
            # Labels stay integer; everything else takes the model's float dtype.
            kind = torch.long if arr.dtype.kind in "iu" else dtype
            out[key] = torch.as_tensor(arr, dtype=kind, device=device)
    return out


def sample_optimizees(
    distribution,
    *,
    seed: int,
    split: str,
    iteration: int,
    indices: Sequence[int],
    steps: int,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> dict:
    """Optimizee problems `indices` (tasks/optimizees.py), stacked: {"theta0": (B, n), ...}, each
    from the same per-task data stream as any task, plus the split they sample data from."""
    problems = [distribution.sample(task_rng(seed, split, iteration, index, DATA_STREAM), steps, split)
                for index in indices]
    return {**_stack(problems, dtype, device), "split": split}
