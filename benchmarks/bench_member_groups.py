"""Members per shard-function call on a CPU: one population's shard (sine 1-40-40-1, meta-batch 4,
K=10; members differing in alpha and seed as in bench_population.py) computed in one call over all
P members, or in equal groups of at most G members (pipeline/shards/stacked.py,
CPU_MEMBERS_PER_CALL), compiled and eager, one thread. Each setting is timed in interleaved rounds
(the median of --rounds rounds of --calls calls), so machine drift hits all alike. Usage:

    python benchmarks/bench_member_groups.py [--size 100] [--groups 100,50,20,10] [--methods maml,mtnet]
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_population import member_cfgs  # noqa: E402

from pipeline.core.meta_batch import map_tree  # noqa: E402
from pipeline.members import PopulationSpec  # noqa: E402
from pipeline.shards.stacked import PopulationShards, member_groups  # noqa: E402


def shard_call(fn, params: dict, batch: dict, most: int, size: int):
    """What PopulationShards.train_shard does with CPU_MEMBERS_PER_CALL = most (here for eager too)."""
    groups = member_groups(size, most)
    if groups is None:
        return fn(params, batch)
    return [fn(map_tree(lambda x: x[g], params), map_tree(lambda x: x[g], batch)) for g in groups]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--groups", default="100,50,20,10")
    ap.add_argument("--methods", default="maml,mtnet")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--calls", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(1)
    groups = [int(g) for g in args.groups.split(",")]
    print(f"torch {torch.__version__}, 1 thread, {platform.machine()}; P = {args.size}; ms per shard call (all "
          f"members), median of {args.rounds} interleaved rounds of {args.calls} calls\n")
    print("| method | path | " + " | ".join(f"{g} per call" for g in groups) + " |")
    print("|---|---|" + "---|" * len(groups))
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods.split(","):
            for compile_ in ("always", "never"):
                torch._dynamo.reset()  # every case its own graphs (Dynamo allows 8 per code object and process)
                cfgs = member_cfgs(method, args.size, 300, compile_, Path(tmp))
                shards = PopulationShards(PopulationSpec.from_configs(cfgs), log=lambda m: None)
                params = {k: torch.stack([v * (1 + 0.01 * i) for i in range(args.size)])
                          for k, v in shards.experiment.init_params().items()}
                fn = shards.fns[False]  # most iterations compute no query-loss curve (curve_at)
                for g in groups:  # compile each group size's graph; warm up
                    for it in range(3):
                        shard_call(fn, params, shards.sample(it, range(4)), g, args.size)
                batches = [shards.sample(100 + it, range(4)) for it in range(args.calls)]  # sampling not timed
                times = {g: [] for g in groups}
                for _ in range(args.rounds):
                    for g in groups:
                        t0 = time.perf_counter()
                        for batch in batches:
                            shard_call(fn, params, batch, g, args.size)
                        times[g].append((time.perf_counter() - t0) / args.calls * 1e3)
                path = "compiled" if compile_ == "always" else "eager"
                print(f"| {method} | {path} | " + " | ".join(f"{statistics.median(times[g]):.2f}" for g in groups)
                      + " |", flush=True)


if __name__ == "__main__":
    main()
