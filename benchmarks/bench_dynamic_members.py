"""What a dynamic member dimension costs: a population's compiled shard function (MT-net on 10-shot
sine, meta-batch 4, one thread) compiled for one member count (static, as populations that do not
narrow are) against compiled with the member dimension symbolic (populations under `scheduler:
halving`, one graph for every count), at the member counts a 24-member population passes through
with reduction factor 3. Time per shard call of all members (CPU_MEMBERS_PER_CALL applies alike),
median of --rounds interleaved rounds of --calls calls; and each path's compile time with an
empty Inductor cache. Usage: python benchmarks/bench_dynamic_members.py [--rounds 7] [--calls 100]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="inductor-dynamic-"))  # cold compiles

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_population import member_cfgs  # noqa: E402

from pipeline.members import PopulationSpec  # noqa: E402
from pipeline.shards.experiment import Experiment  # noqa: E402
from pipeline.shards.stacked import PopulationShards  # noqa: E402

SIZES = (24, 8, 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=100)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, {platform.machine()}; MT-net sine populations; ms per shard call "
          f"of all members, median of {args.rounds} interleaved rounds of {args.calls} calls", flush=True)
    cfgs = member_cfgs("mtnet", max(SIZES), 100_000, "always", Path(tempfile.mkdtemp()))
    init = Experiment(cfgs[0]).init_params()
    cases, compile_s = {}, {}
    for path in ("static", "dynamic"):
        for size in SIZES:
            shards = PopulationShards(PopulationSpec.from_configs(cfgs[:size]), narrows=path == "dynamic",
                                      log=lambda m: None)
            params = {k: torch.stack([v] * size) for k, v in init.items()}
            t0 = time.perf_counter()
            shards.train_shard(params, 0, range(4))  # compiles (static: each count; dynamic: the first)
            compile_s[(path, size)] = time.perf_counter() - t0
            assert not shards.fns[False].eager, f"{path} P={size}: fell back to eager"
            cases[(path, size)] = (shards, params)
    times = {case: [] for case in cases}
    for _ in range(args.rounds):
        for case, (shards, params) in cases.items():
            t0 = time.perf_counter()
            for it in range(1, args.calls + 1):
                shards.train_shard(params, it, range(4))
            times[case].append((time.perf_counter() - t0) / args.calls * 1e3)
    print("\n| members | static, ms | dynamic, ms | dynamic / static | first call static, s | first call dynamic, s |")
    print("|---|---|---|---|---|---|")
    for size in SIZES:
        s, d = (statistics.median(times[(p, size)]) for p in ("static", "dynamic"))
        print(f"| {size} | {s:.2f} | {d:.2f} | {d / s:.2f}x | {compile_s[('static', size)]:.1f} | "
              f"{compile_s[('dynamic', size)]:.1f} |")


if __name__ == "__main__":
    main()
