"""train.compile: eager against compiled shard function, side by side in one process, one thread.

For each case: compile time (first call), per-call time of both after warm-up, their ratio, the
break-even number of calls (compile time / time saved per call), and the largest relative
gradient difference. The `auto` threshold of train.compile (pipeline/config.py) is set from the
break-even of these cases.

Learned optimizers: a training unroll (20 steps of the LSTM on every coordinate and its meta-
gradient) with the update step eager and compiled (train.compile for the optimizer family).

    python benchmarks/bench_compile.py [--calls 300] [--unrolls 10] [--only few_shot|l2l]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.config import load_config  # noqa: E402
from pipeline.core.meta_batch import InnerSettings, shard_meta_gradient  # noqa: E402
from pipeline.driver.families import make_source  # noqa: E402
from pipeline.shards.compiled import CompiledShardFunction  # noqa: E402
from pipeline.shards.experiment import make_learner  # noqa: E402
from tasks import make_distribution  # noqa: E402
from tasks.sampling import sample_batch  # noqa: E402

CASES = [  # (label, config name, overrides, shard size)
    ("MAML sine, 1-40-40-1, meta-batch 4", "sine_maml", ["meta_batch_size=4"], 4),
    ("MT-net sine, K=10, shard of 13 (sine_quick on 2 workers)", "sine_quick", [], 13),
    ("Meta-SGD sine, K=10, shard of 25", "sine_quick", ["method=metasgd"], 25),
]

L2L_CASES = [  # (label, config name, overrides, optimizees in the shard)
    ("l2l MNIST MLP (15,910 coordinates), 1 optimizee (l2l_mnist_cpu on 2 workers)", "l2l_mnist_cpu", [], 1),
    ("l2l quadratic (10 coordinates), 64 optimizees (l2l_quadratic_cpu on 2 workers)", "l2l_quadratic_cpu", [], 64),
]


def max_rel_diff(got: dict, want: dict) -> float:
    """The largest gradient difference relative to each tensor's largest entry."""
    return max(((got[k] - g).abs().max() / g.abs().max().clamp_min(1e-12)).item() for k, g in want.items())


def timed(fn, calls: int, warmup: int = 10) -> float:
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--unrolls", type=int, default=10, help="timed calls per learned-optimizer case")
    ap.add_argument("--only", choices=("few_shot", "l2l"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, {args.calls} timed calls per case "
          f"({args.unrolls} per learned-optimizer case)\n")
    print("| case | compile s | eager ms/call | compiled ms/call | speed-up | break-even calls | max rel. grad diff |")
    print("|---|---|---|---|---|---|---|")
    for label, name, overrides, shard in CASES if args.only != "l2l" else []:
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
        diff = max_rel_diff(got.grads, want.grads)
        eager = timed(lambda: shard_meta_gradient(learner, inner, params, batch), args.calls)
        compiled = timed(lambda: fn(params, batch), args.calls)
        even = compile_s / (eager - compiled) if eager > compiled else float("inf")
        note = " (fell back to eager)" if fn.eager else ""
        print(f"| {label}{note} | {compile_s:.1f} | {eager * 1e3:.2f} | {compiled * 1e3:.2f} | {eager / compiled:.2f}x "
              f"| {even:,.0f} | {diff:.1e} |", flush=True)

    for label, name, overrides, shard in L2L_CASES if args.only != "few_shot" else []:
        eager, fn = (make_source(load_config(name, [*overrides, f"train.compile={c}"]))
                     for c in ("never", "always"))
        fn.update.log = lambda m: None
        params = eager.init_params()
        t0 = time.perf_counter()
        got = fn.train_shard(params, 0, range(shard))
        compile_s = time.perf_counter() - t0
        want = eager.train_shard(params, 0, range(shard))
        diff = max_rel_diff(got.grads, want.grads)
        t_eager = timed(lambda: eager.train_shard(params, 0, range(shard)), args.unrolls, 2)
        t_comp = timed(lambda: fn.train_shard(params, 0, range(shard)), args.unrolls, 2)
        even = compile_s / (t_eager - t_comp) if t_eager > t_comp else float("inf")
        note = " (fell back to eager)" if fn.update.eager else ""
        print(f"| {label}{note} | {compile_s:.1f} | {t_eager * 1e3:.1f} | {t_comp * 1e3:.1f} | {t_eager / t_comp:.2f}x "
              f"| {even:,.0f} | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
