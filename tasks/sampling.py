"""The one task-sampling path: every task is a pure function of (seed, split, iteration, index).

Whichever process samples task `index` of meta-iteration `iteration`, it gets the same support and
query points and the same Gumbel noise, so results do not depend on how tasks are sharded.

The random numbers come from a counter-based generator (Philox4x32-10, Salmon et al. 2011, the
generator of cuRAND and JAX): value number `position` of a task is a hash of (seed, split,
iteration, index, stream, position), so a whole batch of tasks - of one run or of every member of
a population - is drawn in a few array operations instead of one stateful generator per task.
numpy's own Philox takes one key per generator object, hence the few lines below; they are checked
against Random123's known-answer vectors (tests/unit/test_tasks.py).

The same generator runs on numpy arrays or on torch tensors of any device (`Streams(..., device=)`):
a population on a GPU draws its tasks there. The raw 32-bit words are the same bit for bit; values
are float64 in both, and the transcendental functions of Box-Muller and the logistic may differ in
the last bit of a float64 between numpy and torch (so at most 1 ulp of the float32 a task holds).
Task distributions write their sampling once against `streams.xp`, the array namespace of the
streams (array-api-compat's numpy or torch).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import array_api_compat.numpy as xnp
import array_api_compat.torch as xtorch
import numpy as np
import torch

SPLITS = {"train": 0, "val": 1, "test": 2}
DATA_STREAM, NOISE_STREAM = 0, 1

_M0, _M1 = 0xD2511F53, 0xCD9E8D57  # Philox4x32 multipliers
_W0, _W1 = 0x9E3779B9, 0xBB67AE85  # its Weyl key increments
_LO = 0xFFFFFFFF


def _mulhilo(m: int, c):
    """The (high, low) 32-bit halves of m * c mod 2^64. Words are 32-bit but for the iteration, which
    may be wider (validation tasks use 2^63) and enters the first round's product in full, wrapping
    as numpy's uint64 does. torch has no uint64 arithmetic: its int64 words hold the same bits
    (two's complement), and the product is taken in 16-bit limbs of m, which cannot overflow."""
    if isinstance(c, np.ndarray):
        p = np.uint64(m) * c
        return p >> np.uint64(32), p & np.uint64(_LO)

    def limbs(w):  # m * w for a 32-bit w: (high, low) halves
        q = (m >> 16) * w  # < 2^48
        r = (m & 0xFFFF) * w + ((q & 0xFFFF) << 16)  # < 2^49: the low 48 bits of the product, carried
        return (q >> 16) + (r >> 32), r & _LO

    high, low = limbs(c & _LO)
    return (high + limbs((c >> 32) & _LO)[1]) & _LO, low  # the word's upper half: its product's low bits


def philox4x32(counter: Sequence, key: Sequence, rounds: int = 10) -> list:
    """Philox4x32-R on broadcast arrays of 32-bit words: 4 counter words and 2 key words in, 4 words
    out, elementwise. Words are numpy uint64 arrays or torch int64 tensors holding the same bits."""
    if isinstance(counter[0], torch.Tensor):
        c0, c1, c2, c3, k0, k1 = (torch.as_tensor(w, dtype=torch.int64, device=counter[0].device)
                                  for w in (*counter, *key))
    else:
        c0, c1, c2, c3, k0, k1 = (np.asarray(w, np.uint64) for w in (*counter, *key))
    for r in range(rounds):
        if r:
            k0, k1 = (k0 + _W0) & _LO, (k1 + _W1) & _LO
        (h0, l0), (h1, l1) = _mulhilo(_M0, c0), _mulhilo(_M1, c2)
        c0, c1, c2, c3 = h1 ^ c1 ^ k0, l1, h0 ^ c3 ^ k1, l0
    return [c0, c1, c2, c3]


class Streams:
    """The random streams of N tasks: task i is (seeds[i], split, iterations[i], indices[i]) on
    `stream` (data or noise, so the noise of a task does not shift when its number of support
    points changes).

    Every draw returns an array (N, *shape) and takes the next values of each task's own stream;
    which other tasks share the batch changes nothing. `seed` and `iteration` are one value or one
    per task (a population draws many members' and iterations' tasks in one call). A torch tensor
    `iteration` (with tensor or sequence seed and indices) draws on its device with torch ops only,
    so the draw can be traced into a compiled graph whose iteration is an input."""

    # Values generated at once: the per-call cost of the generator, not its size, dominates a small
    # batch (128 per task ahead); a large one (a population's tasks of many iterations) gets what
    # it asks for, give or take AHEAD_TOTAL values. Which values come out does not depend on it.
    AHEAD, AHEAD_TOTAL = 128, 4096
    CHUNK = 1 << 15  # counters per philox4x32 call

    def __init__(self, seed, split: str, iteration, indices: Sequence[int], stream: int,
                 device: torch.device | str | None = None):
        if isinstance(iteration, torch.Tensor):  # a traced iteration (a population's compiled step):
            # seed, iteration and indices are int64 tensors on the device, built without numpy
            device = iteration.device
            words = (torch.as_tensor(w, dtype=torch.int64, device=device) for w in (indices, iteration, seed))
            index, iterations, seeds = torch.broadcast_tensors(*(w.reshape(-1, 1) for w in words))
            words = (index, iterations, seeds & _LO, seeds >> 32)
        else:
            index = np.asarray(indices, np.uint64).reshape(-1, 1)
            seeds = np.broadcast_to(np.asarray(seed, np.uint64).reshape(-1, 1), index.shape)
            iterations = np.broadcast_to(np.asarray(iteration, np.uint64).reshape(-1, 1), index.shape)
            words = (index, iterations, seeds & np.uint64(_LO), seeds >> np.uint64(32))
            if device is not None:  # the same 64 bits as int64 (two's complement)
                words = tuple(torch.as_tensor(w.astype(np.int64), device=device) for w in words)
        self.n, self.device = index.shape[0], None if device is None else torch.device(device)
        self.xp = xnp if device is None else xtorch  # the namespace of every array the streams return
        self._words, self._tag = words, SPLITS[split] | stream << 8
        self._buffer = self.xp.empty((self.n, 0), dtype=self.xp.float64, device=self.device)  # generated ahead
        self._used = 0  # values taken so far (per task)

    def _generate(self, start: int, count: int):
        """Values at positions [start, start + count) of every task's stream, both even: (N, count).
        Computed CHUNK counters at a time: philox's dozens of temporaries then stay in the core's
        cache on a population's large draws (the values do not depend on it)."""
        xp, blocks = self.xp, count // 2
        position = xp.arange(start // 2, start // 2 + blocks, dtype=xp.int64, device=self.device)
        if self.device is None:
            position = position.astype(np.uint64)
        index, iterations, key0, key1 = self._words
        out = xp.empty((self.n, count), dtype=xp.float64, device=self.device)
        rows = max(1, self.CHUNK // max(blocks, 1))
        for i in range(0, self.n, rows):
            r = slice(i, i + rows)
            w = philox4x32((position, index[r], iterations[r], self._tag), (key0[r], key1[r]))
            hi = xp.stack([w[0], w[2]], axis=-1) >> 5  # 27 + 26 bits per double
            lo = xp.stack([w[1], w[3]], axis=-1) >> 6
            out[r] = xp.astype(xp.reshape((hi << 26) | lo, (-1, count)), xp.float64)
        return (out + 0.5) * 2.0 ** -53

    def random(self, shape=()):
        """Uniform on the open interval (0, 1), 53 random bits each."""
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        count = math.prod(shape)
        if count > self._buffer.shape[1]:  # a whole task's draws usually come from one generator call
            start = self._used + self._buffer.shape[1]
            need = max(count - self._buffer.shape[1], min(self.AHEAD, self.AHEAD_TOTAL // self.n))
            more = self._generate(start, need + need % 2)
            self._buffer = self.xp.concat([self._buffer, more], axis=1)
        out, self._buffer = self._buffer[:, :count], self._buffer[:, count:]
        self._used += count
        return self.xp.reshape(out, (self.n, *shape))

    def uniform(self, low: float, high: float, shape=()):
        return low + (high - low) * self.random(shape)

    def normal(self, shape=()):
        """Standard normal (Box-Muller; two uniforms per value)."""
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        u, xp = self.random((2, *shape)), self.xp
        return xp.sqrt(-2.0 * xp.log(u[:, 0])) * xp.cos(2.0 * math.pi * u[:, 1])

    def logistic(self, shape=()):
        """Logistic(0, 1) = g1 - g2 for independent Gumbel(0, 1) g1, g2: the noise of the two-logit
        Gumbel-softmax [zeta, 0], by inversion of its CDF."""
        u = self.random(shape)
        return self.xp.log(u) - self.xp.log1p(-u)

    def integers(self, high: int, shape=()):
        """Uniform on {0, ..., high - 1} (bias below high / 2^53)."""
        return self.xp.astype(self.xp.floor(self.random(shape) * high), self.xp.int64)

    def permutation(self, n: int):
        """(N, n): a uniformly random permutation of range(n) per task."""
        return self.xp.argsort(self.random(n), axis=1, stable=True)


def class_labels(streams: Streams, ways: int, per_class: int):
    """(N, ways * per_class) labels of N-way tasks, class-major (0, 0, ..., 1, 1, ...), as arrays
    of the streams' kind and device."""
    xp = streams.xp
    return xp.tile(xp.repeat(xp.arange(ways, device=streams.device), per_class), (streams.n, 1))


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
    on_device: bool = False,
) -> dict:
    """Sample tasks `indices` (of one seed and iteration, or `seed[i]` and `iteration[i]` for task i)
    as one batch:
    {"x_support": (B, K, ...), ..., "noise": {name: (B, ...)}}.
    on_device: generate them on `device` (torch) instead of with numpy and copy them over."""
    where = device if on_device else None
    batch = distribution.sample(Streams(seed, split, iteration, indices, DATA_STREAM, where), shots, query, split)
    noise = Streams(seed, split, iteration, indices, NOISE_STREAM, where)
    batch["noise"] = {k: noise.logistic(s) for k, s in sorted((noise_shapes or {}).items())}
    return to_torch(batch, dtype, device)


def to_torch(batch: dict, dtype, device) -> dict:
    out = {}
    for key, value in batch.items():
        if isinstance(value, dict):
            out[key] = to_torch(value, dtype, device)
        else:
            value = value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
            # Labels stay integer; everything else takes the model's float dtype.
            kind = dtype if value.is_floating_point() else torch.long
            out[key] = value.to(device=device, dtype=kind)
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
    on_device: bool = False,
) -> dict:
    """Optimizee problems `indices` (tasks/optimizees.py), stacked: {"theta0": (B, n), ...}, each
    from the same per-task data stream as any task, plus the split they sample data from."""
    streams = Streams(seed, split, iteration, indices, DATA_STREAM, device if on_device else None)
    problems = distribution.sample(streams, steps, split)
    return {**to_torch(problems, dtype, device), "split": split}
