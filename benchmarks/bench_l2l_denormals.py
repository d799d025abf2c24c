"""Subnormal floats and the learned optimizer: one training trajectory (5 unrolls of 20 steps, one
MNIST optimizee, one thread) with subnormal numbers flushed to zero - as the optimizer family's
shard functions run (pipeline/shards/optimizer_experiment.py, `flushing_denormals`) - and with PyTorch's
default (kept), side by side, for the untrained optimizer and a meta-trained one (RUN_DIR's
checkpoint), eager and compiled: the mean over the same 6 training trajectories, the two settings
alternating trajectory by trajectory.

    python benchmarks/bench_l2l_denormals.py RUN_DIR    (e.g. benchmarks/l2l_cpu/l2l_mnist_cpu)
"""
from __future__ import annotations

import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from pipeline.config import load_config  # noqa: E402
from pipeline.driver import checkpoint  # noqa: E402
from pipeline.shards.optimizer_experiment import OptimizerExperiment  # noqa: E402

TRAJECTORIES = range(6)  # how many subnormals arise depends on the optimizee: 1.0-1.8x for single ones


def trajectory_seconds(exp: OptimizerExperiment, params: dict, flush: bool, trajectory: int) -> float:
    """Seconds per unroll over one trajectory, the shard function's own flushing bypassed."""
    torch.set_flush_denormal(flush)
    carry, t0 = None, time.perf_counter()
    for u in range(exp.unrolls):
        iteration = trajectory * exp.unrolls + u
        carry = OptimizerExperiment.train_shard.__wrapped__(exp, params, iteration, [0], carry).carry
    torch.set_flush_denormal(False)
    return (time.perf_counter() - t0) / exp.unrolls


def main(run_dir: str) -> int:
    torch.set_num_threads(1)
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, one thread; run {run_dir}")
    print("| optimizer | update step | flushed s/unroll | default s/unroll | default / flushed |")
    # mean seconds per unroll over TRAJECTORIES
    print("|---|---|---|---|---|")
    for compile_ in ("never", "always"):
        cfg = load_config(Path(run_dir) / "config.yaml", {"backend": "local", "tracking.enabled": False,
                                                           "train.compile": compile_})
        exp = OptimizerExperiment(cfg)
        trajectory_seconds(exp, exp.init_params(), True, 0)  # warm-up (and compilation)
        for name, params in (("untrained", exp.init_params()), ("trained", checkpoint.load(run_dir)["params"])):
            times = {True: [], False: []}
            for trajectory in TRAJECTORIES:
                for flush in (True, False):
                    times[flush].append(trajectory_seconds(exp, params, flush, trajectory))
            on, off = sum(times[True]) / len(TRAJECTORIES), sum(times[False]) / len(TRAJECTORIES)
            print(f"| {name} | {'compiled' if compile_ == 'always' else 'eager'} | {on:.3f} | {off:.3f} | "
                  f"{off / on:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
