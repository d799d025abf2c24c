"""train.compile: eager against compiled shard function, side by side in one process, one thread.

For each case: compile time (first call), per-call time of both after warm-up, their ratio, the
break-even number of calls (compile time / time saved per call), and the largest relative
gradient difference. The `auto` threshold of train.compile (pipeline/config.py) is set from the
break-even of these cases.

    python benchmarks/bench_compile.py [--calls 300]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.config import load_config  # noqa: E402
from pipeline.experiment import make_learner  # noqa: E402
from pipeline.meta_batch import CompiledShardFunction, InnerSettings, shard_meta_gradient  # noqa: E402
from tasks import make_distribution  # noqa: E402
from tasks.sampling import sample_batch  # noqa: E402

CASES = [  # (label, config name, overrides, shard size)
    ("MAML sine, 1-40-40-1, meta-batch 4", "sine_maml", ["meta_batch_size=4"], 4),
    ("MT-net sine, K=10, shard of 13 (sine_quick on 2 workers)", "sine_quick", [], 13),
    ("Meta-SGD sine, K=10, shard of 25", "sine_quick", ["method=metasgd"], 25),
]


def timed(fn, calls: int) -> float:
    for _ in range(10):
        fn()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=300)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, {args.calls} timed calls per case\n")
    print("| case | compile s | eager ms/call | compiled ms/call | speed-up | break-even calls | max rel. grad diff |")
    print("|---|---|---|---|---|---|---|")
    for label, name, overrides, shard in CASES:
        cfg = load_config(name, overrides)
        learner = make_learner(cfg)
        params = learner.init_params(cfg.seed, torch.float32)
        inner = InnerSettings(cfg.alpha, cfg.inner_steps, cfg.gumbel_temperature)
        batch = sample_batch(make_distribution(cfg.task), seed=0, split="train", iteration=0, indices=range(shard),
                             shots=cfg.task.shots, query=cfg.task.query,
                             noise_shapes=learner.rule.noise_shapes(params))
        fn = CompiledShardFunction(learner, inner, log=lambda m: None)
        t0 = time.perf_counter()
        got = fn(params, batch)
        compile_s = time.perf_counter() - t0
        want = shard_meta_gradient(learner, inner, params, batch)
        diff = max(((got.grads[k] - g).abs().max() / g.abs().max().clamp_min(1e-12)).item()
                   for k, g in want.grads.items())
        eager = timed(lambda: shard_meta_gradient(learner, inner, params, batch), args.calls)
        compiled = timed(lambda: fn(params, batch), args.calls)
        even = compile_s / (eager - compiled) if eager > compiled else float("inf")
        note = " (fell back to eager)" if fn.eager else ""
        print(f"| {label}{note} | {compile_s:.1f} | {eager * 1e3:.2f} | {compiled * 1e3:.2f} | {eager / compiled:.2f}x "
              f"| {even:,.0f} | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
