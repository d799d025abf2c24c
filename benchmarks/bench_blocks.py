"""What bitwise worker-count invariance costs: per-iteration time of 2 Ray shard workers (one core
each) summing fixed blocks of tasks (train.block_tasks: one shard-function call and one result per
block, the driver adding the block sums in a fixed pairwise tree) against today's contiguous ranges
(one call and one result per worker), side by side, interleaved rep by rep; the bytes of results
each iteration brings back; and, on conv4, the scaling from 1 to 2 workers with blocks
(efficiency = time on 1 / (2 x time on 2)).

Usage:  python benchmarks/bench_blocks.py [--reps 10] [--conv-reps 6]
"""
from __future__ import annotations

import argparse
import statistics
import time

import ray
import torch

from pipeline.config import load_config
from pipeline.core.learners import forward  # noqa: F401 - torch's import cost out of the timings
from pipeline.distributed.backends import RayBackend
from pipeline.shards.experiment import Experiment


def timed(sets: list[str], cases: dict[str, list[str]], reps: int) -> dict[str, float]:
    """Median per-iteration seconds of each case (extra config settings), interleaved."""
    exp = Experiment(load_config(None, sets))
    params = exp.init_params()
    backends = {name: RayBackend(load_config(None, [*sets, *extra]), exp, log=lambda m: None)
                for name, extra in cases.items()}
    times = {k: [] for k in backends}
    for i in range(reps + 2):
        for k, b in backends.items():
            t = time.perf_counter()
            b.meta_gradient(params, i)
            if i >= 2:  # warm-up
                times[k].append(time.perf_counter() - t)
    for b in backends.values():
        b.close()
    return {k: statistics.median(v) for k, v in times.items()}


def grad_bytes(sets: list[str]) -> int:
    params = Experiment(load_config(None, sets)).init_params()
    return sum(v.numel() * v.element_size() for v in params.values())


def compare(name: str, sets: list[str], block_sizes: list[int], reps: int) -> None:
    two = ["ray.workers=2", "ray.cpus_per_worker=1"]
    cases = {"ranges": [*two, "train.block_tasks=0"], **{f"blocks of {b}": [*two, f"train.block_tasks={b}"]
                                                         for b in block_sizes}}
    med = timed(sets, cases, reps)
    size = grad_bytes(sets)
    mb = int(next(s.split("=")[1] for s in sets if s.startswith("meta_batch_size=")))
    base = med["ranges"]
    for k, t in med.items():
        results = 2 if k == "ranges" else -(-mb // int(k.split()[-1]))
        print(f"| {name} | {k} | {1e3 * t:.2f} | {t / base:.3f}x | {results} x {size / 1024:.1f} KiB |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--conv-reps", type=int, default=6)
    args = ap.parse_args()
    # logical CPUs for every case at once (they run one at a time, so each gets the two cores)
    ray.init(address="local", num_cpus=12, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    print(f"torch {torch.__version__}, ray {ray.__version__}; 2 workers x 1 CPU; median per-iteration time, "
          f"{args.reps} reps (conv {args.conv_reps}) interleaved; ratio = time / contiguous ranges\n")
    print("| workload | how tasks are summed | ms | ratio | results per iteration (x gradient size) |")
    print("|---|---|---|---|---|")
    sine = ["method=maml", "task.name=sinusoid", "task.shots=10"]
    compare("sine MLP maml, meta-batch 25", [*sine, "meta_batch_size=25"], [13, 5], args.reps)
    compare("sine MLP maml, meta-batch 100", [*sine, "meta_batch_size=100"], [50, 25, 10], args.reps)
    conv = ["method=maml", "task.name=synthetic_images", "task.ways=5", "task.shots=1", "task.query=15",
            "alpha=0.4", "model.filters=64", "meta_batch_size=32", "train.tasks_per_vmap=8"]
    compare("conv4-64 5w1s q15, meta-batch 32", conv, [16, 8], args.conv_reps)
    print("\nScaling with blocks of 8 on conv4 (tasks_per_vmap 8 inside each block):")
    one_two = {f"{n} worker(s)": [f"ray.workers={n}", "ray.cpus_per_worker=1", "train.block_tasks=8"] for n in (1, 2)}
    med = timed(conv, one_two, args.conv_reps)
    t1, t2 = med["1 worker(s)"], med["2 worker(s)"]
    print(f"1 worker {1e3 * t1:.1f} ms, 2 workers {1e3 * t2:.1f} ms: speed-up {t1 / t2:.2f}x, efficiency "
          f"{t1 / (2 * t2):.0%}")
    ray.shutdown()


if __name__ == "__main__":
    main()
