"""Per-iteration cost of the Ray path against the in-process shard function, at equal cores.

Same config, same tasks, same shard function; only where the shards run differs:
  in-process     LocalBackend, torch on all cores
  ray 1x{C}cpu   one worker holding all cores (pure Ray overhead: broadcast, call, gather)
  ray Nx1cpu     N workers sharing the meta-batch (sharding)
Usage:  python benchmarks/bench_ray.py [--reps 8] [--cpus 2]
"""
from __future__ import annotations

import argparse
import statistics
import time

import ray
import torch

from pipeline.config import load_config
from pipeline.distributed.backends import LocalBackend, RayBackend
from pipeline.shards.experiment import Experiment

SETTLE_S, WARMUP = 5.0, 3


def row(name, sets, reps, cpus):
    """Time every placement on the same iterations, interleaved rep by rep so machine noise hits
    all alike; report the median per-iteration time."""
    cfg = load_config(None, sets)
    exp = Experiment(cfg)
    params = exp.init_params()
    torch.set_num_threads(cpus)
    backends = {"in-process": LocalBackend(cfg, exp)}
    for workers, cpw in [(1, float(cpus))] + [(n, 1.0) for n in range(2, cpus + 1)]:
        cfg_r = load_config(None, [*sets, f"ray.workers={workers}", f"ray.cpus_per_worker={cpw}"])
        backends[f"{workers}x{cpw:g}"] = RayBackend(cfg_r, exp, log=lambda m: None)
    # Ray starts idle worker processes in the background for a few seconds after the actors: let
    # them settle, or the first workload's in-process times share the cores with their start-up.
    time.sleep(SETTLE_S)
    times = {k: [] for k in backends}
    for i in range(reps + WARMUP):
        for k, b in backends.items():
            t = time.perf_counter()
            b.meta_gradient(params, i)
            if i >= WARMUP:
                times[k].append(time.perf_counter() - t)
    for b in backends.values():
        b.close()
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med.pop("in-process")
    cells = [f"{1e3 * base:13.1f}"] + [f"{1e3 * t:15.1f} ({t / base:4.2f}x)" for t in med.values()]
    print(f"{name:<34} " + "  ".join(cells), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=8)
    ap.add_argument("--cpus", type=int, default=2, help="cores given to each side")
    ap.add_argument("--conv-reps", type=int, default=5)
    args = ap.parse_args()
    # Logical CPUs for every placement at once; they run one at a time, so each gets the cores.
    ray.init(address="local", num_cpus=2 * args.cpus, include_dashboard=False, logging_level="ERROR")
    heads = ["in-process ms", f"ray 1x{args.cpus}cpu ms (ratio)"] + [f"ray {n}x1cpu ms (ratio)"
                                                                       for n in range(2, args.cpus + 1)]
    print(f"torch {torch.__version__}, ray {ray.__version__}, {args.cpus} cores each side; median per-iteration time; "
          "ratio = time / in-process (lower is better)")
    print(f"{'workload':<34} " + "  ".join(heads))
    sine = ["method=maml", "task.name=sinusoid", "task.shots=10"]
    for mb in (25, 100, 400):
        row(f"sine MLP maml, meta-batch {mb}", [*sine, f"meta_batch_size={mb}"], args.reps, args.cpus)
    conv = ["method=maml", "task.name=synthetic_images", "task.ways=5", "task.shots=1", "task.query=15",
            "alpha=0.4", "model.filters=64", "meta_batch_size=32", "train.tasks_per_vmap=8"]
    row("conv4-64 5w1s q15, mb 32, chunk 8", conv, args.conv_reps, args.cpus)
    ray.shutdown()


if __name__ == "__main__":
    main()
