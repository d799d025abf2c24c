"""A population's whole iteration (pipeline/driver/population_step.py) against the same population
step by step, side by side in one process on one thread: sine MLP 1-40-40-1 populations (meta-batch
4, K=10, members differing in alpha and seed as in bench_population.py), member-iterations per
second after a warm-up (which holds any compilation).

Cases (rounds interleaved, rates the rounds' medians: the 2-core machine drifts): step by step with
numpy's tasks (task.sample_on: cpu, the CPU's default), eager and compiled (train.compile: always;
members in calls of at most 20 on a CPU); the whole iteration (draw, shard, Adam in one function,
the host reading once per window; tasks drawn by torch), eager and compiled. Compilation happens
in the warm-up and is excluded.

    python benchmarks/bench_whole_iteration.py [--iterations 300] [--sizes 3,18,100] [--methods maml,mtnet]
                                               [--repeats 2]
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_population import member_cfgs, population_rate  # noqa: E402

CASES = (("numpy, step by step, eager", "cpu", "never", False),
         ("numpy, step by step, compiled", "cpu", "always", False), ("whole, eager", "device", "never", True),
         ("whole, compiled", "device", "always", True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--sizes", default="3,18,100")
    ap.add_argument("--methods", default="maml,mtnet")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, {platform.machine()} CPU; {args.iterations} iterations per "
          f"population (20 of warm-up), sine 1-40-40-1, meta-batch 4, K=10; medians of {args.repeats} rounds\n")
    print("| method | P | " + " | ".join(c[0] for c in CASES) + " | whole / step by step, eager | compiled |")
    print("|---|---|" + "---|" * (len(CASES) + 2))
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods.split(","):
            for size in (int(s) for s in args.sizes.split(",")):
                rates = {c[0]: [] for c in CASES}
                for r in range(args.repeats):
                    for name, sample_on, mode, whole in CASES:
                        out = Path(tmp) / f"{method}{size}{r}{sample_on}{mode}{whole}"
                        cfgs = member_cfgs(method, size, args.iterations, mode, out)
                        for c in cfgs:
                            c.task.sample_on = sample_on
                        rates[name].append(population_rate(cfgs, out, 20, whole=whole)[0])
                med = [statistics.median(rates[c[0]]) for c in CASES]
                print(f"| {method} | {size} | " + " | ".join(f"{m:,.0f}" for m in med)
                      + f" | {med[2] / med[0]:.2f}x | {med[3] / med[1]:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
