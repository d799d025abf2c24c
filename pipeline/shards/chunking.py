"""train.tasks_per_vmap: auto - the tasks per vectorised call of a shard function, timed on the
run's first shard like cuDNN's benchmark mode, and the line that reports the choice."""
from __future__ import annotations

import math
import time

# train.tasks_per_vmap: auto. Tasks per vectorised call, timed on the run's first shard like cuDNN's
# benchmark mode: on CPU a conv4 shard in one vmap holds every task's activations at once, out of
# cache, and can be slower than the per-task loop (benchmarks/RESULTS.md); 1 is that loop itself, so
# auto is never slower than it. Sine MLPs pick the whole shard.
CHUNK_CANDIDATES = (16, 8, 4, 2, 1)
CHUNK_TOLERANCE = 0.05  # the largest chunk within 5% of the fastest: fewer calls, and timing noise cannot flip it


def time_chunk_sizes(run, shard_size: int, reps: int = 3) -> dict[int, float]:
    """Seconds per call of run(chunk_size) for the whole shard (key 0) and every candidate chunk
    smaller than the shard, and 1 (the loop) always: the best of `reps` calls after one warm-up
    call, or a single call where one takes over 0.25 s (conv shards: timer noise is small there,
    and the timing costs the run seconds)."""
    times = {}
    for c in dict.fromkeys((0, *[c for c in CHUNK_CANDIDATES if c < shard_size], 1)):
        t0 = time.perf_counter()
        run(c or None)  # warm-up: first-call allocations
        n = reps if time.perf_counter() - t0 < 0.25 else 1
        best = math.inf
        for _ in range(n):
            t0 = time.perf_counter()
            run(c or None)
            best = min(best, time.perf_counter() - t0)
        times[c] = best
    return times


def pick_chunk_size(times: dict[int, float]) -> int:
    """The largest chunk (0 = whole shard first) whose time is within CHUNK_TOLERANCE of the fastest
    and no slower than the per-task loop's (1) as timed: a batched choice is never the slower one
    (a chunk 5% slower than the loop was chosen before: Meta-LSTM Omniglot, 0.95x)."""
    fastest, loop = min(times.values()), times.get(1, math.inf)
    return next(c for c, t in times.items() if t <= fastest * (1 + CHUNK_TOLERANCE) and t <= loop)


def describe_chunk_times(times: dict[int, float], chosen: int) -> str:
    """One line: the choice and every candidate's time per shard call."""
    cells = ", ".join(f"{'whole' if c == 0 else c} {t * 1e3:.1f}" for c, t in times.items())
    return f"train.tasks_per_vmap: auto -> {chosen or 'whole shard'} (ms per shard call: {cells})"
