"""The one task-sampling path: every task is a pure function of (seed, split, iteration, index).

Whichever process samples task `index` of meta-iteration `iteration`, it gets the same support and
query points and the same Gumbel noise, so results do not depend on how tasks are sharded.

The random numbers come from a counter-based generator (Philox4x32-10, Salmon et al. 2011, the
generator of cuRAND and JAX): value number `position` of a task is a hash of (seed, split,
iteration, index, stream, position), so a whole batch of tasks - of one run or of every member of
a population - is drawn in a few array operations instead of one stateful generator per task.
numpy's own Philox takes one key per generator object, hence the few lines below; they are checked
against Random123's known-answer vectors (tests/unit/test_tasks.py).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

SPLITS = {"train": 0, "val": 1, "test": 2}
DATA_STREAM, NOISE_STREAM = 0, 1

_M0, _M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)  # Philox4x32 multipliers
_W0, _W1 = np.uint64(0x9E3779B9), np.uint64(0xBB67AE85)  # its Weyl key increments
_LO = np.uint64(0xFFFFFFFF)
_32 = np.uint64(32)


def philox4x32(counter: Sequence[np.ndarray], key: Sequence[np.ndarray], rounds: int = 10) -> list[np.ndarray]:
    """Philox4x32-R on broadcast arrays of 32-bit words (held in uint64): 4 counter words and 2 key
    words in, 4 words out, elementwise."""
    c0, c1, c2, c3 = (np.asarray(c, np.uint64) for c in counter)
    k0, k1 = (np.asarray(k, np.uint64) for k in key)
    for r in range(rounds):
        if r:
            k0, k1 = (k0 + _W0) & _LO, (k1 + _W1) & _LO
        p0, p1 = _M0 * c0, _M1 * c2  # 32 x 32 -> 64-bit products: (hi, lo) halves
        c0, c1, c2, c3 = (p1 >> _32) ^ c1 ^ k0, p1 & _LO, (p0 >> _32) ^ c3 ^ k1, p0 & _LO
    return [c0, c1, c2, c3]


class Streams:
    """The random streams of N tasks: task i is (seeds[i], split, iterations[i], indices[i]) on
    `stream` (data or noise, so the noise of a task does not shift when its number of support
    points changes).

    Every draw returns an array (N, *shape) and takes the next values of each task's own stream;
    which other tasks share the batch changes nothing. `seed` and `iteration` are one value or one
    per task (a population draws many members' and iterations' tasks in one call)."""

    # Values generated at once: the per-call cost of the generator, not its size, dominates a small
    # batch (128 per task ahead); a large one (a population's tasks of many iterations) gets what
    # it asks for, give or take AHEAD_TOTAL values. Which values come out does not depend on it.
    AHEAD, AHEAD_TOTAL = 128, 4096
    CHUNK = 1 << 15  # counters per philox4x32 call

    def __init__(self, seed, split: str, iteration, indices: Sequence[int], stream: int):
        index = np.asarray(indices, np.uint64).reshape(-1, 1)
        seeds = np.broadcast_to(np.asarray(seed, np.uint64).reshape(-1, 1), index.shape)
        iterations = np.broadcast_to(np.asarray(iteration, np.uint64).reshape(-1, 1), index.shape)
        self.n = len(index)
        self._words = (index, iterations, np.uint64(SPLITS[split] | stream << 8))
        self._key = (seeds & _LO, seeds >> _32)
        self._buffer = np.empty((self.n, 0))  # values from position `self._used` on, generated ahead
        self._used = 0  # values taken so far (per task)

    def _generate(self, start: int, count: int) -> np.ndarray:
        """Values at positions [start, start + count) of every task's stream, both even: (N, count).
        Computed CHUNK counters at a time: philox's dozens of temporaries then stay in the core's
        cache on a population's large draws (the values do not depend on it)."""
        blocks = count // 2
        position = np.arange(start // 2, start // 2 + blocks, dtype=np.uint64)
        index, iterations, tag = self._words
        out = np.empty((self.n, count))
        rows = max(1, self.CHUNK // max(blocks, 1))
        for i in range(0, self.n, rows):
            r = slice(i, i + rows)
            w = philox4x32((position, index[r], iterations[r], tag), (self._key[0][r], self._key[1][r]))
            hi = np.stack([w[0], w[2]], -1) >> np.uint64(5)  # 27 + 26 bits per double
            lo = np.stack([w[1], w[3]], -1) >> np.uint64(6)
            out[r] = ((hi << np.uint64(26)) | lo).reshape(-1, count).astype(np.float64)
        return (out + 0.5) * 2.0 ** -53

    def random(self, shape=()) -> np.ndarray:
        """Uniform on the open interval (0, 1), 53 random bits each."""
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        count = math.prod(shape)
        if count > self._buffer.shape[1]:  # a whole task's draws usually come from one generator call
            start = self._used + self._buffer.shape[1]
            need = max(count - self._buffer.shape[1], min(self.AHEAD, self.AHEAD_TOTAL // self.n))
            more = self._generate(start, need + need % 2)
            self._buffer = np.concatenate([self._buffer, more], 1)
        out, self._buffer = self._buffer[:, :count], self._buffer[:, count:]
        self._used += count
        return out.reshape(self.n, *shape)

    def uniform(self, low: float, high: float, shape=()) -> np.ndarray:
        return low + (high - low) * self.random(shape)

    def normal(self, shape=()) -> np.ndarray:
        """Standard normal (Box-Muller; two uniforms per value)."""
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        u = self.random((2, *shape))
        return np.sqrt(-2.0 * np.log(u[:, 0])) * np.cos(2.0 * np.pi * u[:, 1])

    def logistic(self, shape=()) -> np.ndarray:
        """Logistic(0, 1) = g1 - g2 for independent Gumbel(0, 1) g1, g2: the noise of the two-logit
        Gumbel-softmax [zeta, 0], by inversion of its CDF."""
        u = self.random(shape)
        return np.log(u) - np.log1p(-u)

    def integers(self, high: int, shape=()) -> np.ndarray:
        """Uniform on {0, ..., high - 1} (bias below high / 2^53)."""
        return np.floor(self.random(shape) * high).astype(np.int64)

    def permutation(self, n: int) -> np.ndarray:
        """(N, n): a uniformly random permutation of range(n) per task."""
        return np.argsort(self.random(n), axis=1, kind="stable")


def sample_batch(
    distribution,
    *,
    seed,
    split: str,
    iteration,
    indices: Sequence[int],
    shots: int,
    query: int,
    noise_shapes: Mapping[str, tuple[int, ...]] | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> dict:
    """Sample tasks `indices` (of one seed and iteration, or `seed[i]` and `iteration[i]` for task i)
    as one batch:
    {"x_support": (B, K, ...), ..., "noise": {name: (B, ...)}}."""
    batch = distribution.sample(Streams(seed, split, iteration, indices, DATA_STREAM), shots, query, split)
    noise = Streams(seed, split, iteration, indices, NOISE_STREAM)
    batch["noise"] = {k: noise.logistic(s) for k, s in sorted((noise_shapes or {}).items())}
    return to_torch(batch, dtype, device)


def to_torch(batch: dict, dtype, device) -> dict:
    out = {}
    for key, value in batch.items():
        if isinstance(value, dict):
            out[key] = to_torch(value, dtype, device)
        else:
            arr = np.asarray(value)
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
    problems = distribution.sample(Streams(seed, split, iteration, indices, DATA_STREAM), steps, split)
    return {**to_torch(problems, dtype, device), "split": split}
